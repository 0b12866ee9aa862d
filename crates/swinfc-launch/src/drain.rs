//! [`Drain`]: the job stopping on a signal. The first signal picks a step every rank stops after
//! and a deadline; a second one shortens the deadline, a third ends it at once. Copies of one
//! scheduler event (Slurm signals every process of a job, and workers pass theirs on) count once,
//! and are written to the event log once.

use std::time::{Duration, Instant};

use swinfc_comm::Signal;

/// After a second signal, the drain gets at most this much longer.
pub const SECOND_SIGNAL_GRACE: Duration = Duration::from_secs(5);
/// Signals this close to the first one are copies of it.
pub const SAME_EVENT: Duration = Duration::from_secs(2);

/// The step every rank stops after, when the highest step any rank has reported is `reported`.
/// A worker reads the launcher's commands before each step, so the step it is running when the
/// command arrives always runs to its end: the next one is the first that every rank can still
/// stop after (asking for `reported + 1` would be honoured only by a rank that had not yet
/// started it, so the workers would stop a step later than logged).
pub fn stop_step(reported: u64) -> u64 {
    reported + 2
}

#[derive(Debug, Clone)]
pub struct Drain {
    /// The signal that decides what happens after the drain (a SIGUSR1 asks for a requeue).
    signal: Signal,
    stop_after: u64,
    started: Instant,
    deadline: Instant,
    signals: u32,
    /// Whether the first scheduler event is in the event log yet.
    recorded: bool,
}

impl Drain {
    /// `signal` arrived at `now`: every rank stops after step `stop_after`, within `grace`.
    pub fn start(signal: Signal, stop_after: u64, now: Instant, grace: Duration) -> Drain {
        Drain {
            signal,
            stop_after,
            started: now,
            deadline: now + grace,
            signals: 1,
            recorded: false,
        }
    }

    pub fn stop_after(&self) -> u64 {
        self.stop_after
    }

    /// The signal that started the drain (or the scheduler's own, if a worker's copy came first).
    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// Another signal while draining. Returns how many distinct signals there have been when this
    /// one shortened the deadline, `None` when it was a copy of the first.
    pub fn another(&mut self, signal: Signal, now: Instant) -> Option<u32> {
        if signal == Signal::WorkerAsked || now.saturating_duration_since(self.started) < SAME_EVENT {
            // The scheduler's own signal names the event better than a worker's copy of it, and a
            // SIGUSR1 among the copies still asks for the requeue.
            if signal == Signal::Usr1 || (self.signal == Signal::WorkerAsked && signal != Signal::WorkerAsked)
            {
                self.signal = signal;
            }
            return None;
        }
        self.signals += 1;
        let limit = if self.signals == 2 {
            now + SECOND_SIGNAL_GRACE
        } else {
            now
        };
        self.deadline = self.deadline.min(limit);
        Some(self.signals)
    }

    /// The signal to write to the event log for the event that started the drain, once. A
    /// scheduler's signal is written at once. A worker's request waits up to [`SAME_EVENT`] (or
    /// until the drain `ended`): Slurm signals a job's workers a moment before its launcher, and
    /// the launcher's own copy then names the event.
    pub fn take_unrecorded(&mut self, now: Instant, ended: bool) -> Option<Signal> {
        let waited = now.saturating_duration_since(self.started) >= SAME_EVENT;
        if self.recorded || (self.signal == Signal::WorkerAsked && !waited && !ended) {
            return None;
        }
        self.recorded = true;
        Some(self.signal)
    }

    /// The drain ran out of time: the workers are stopped and the previous checkpoint stands.
    pub fn expired(&self, now: Instant) -> bool {
        now > self.deadline
    }

    /// Whether the job should be put back in the queue once drained (Slurm's time-limit warning).
    pub fn requeue(&self) -> bool {
        self.signal == Signal::Usr1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(60);

    #[test]
    fn copies_of_the_first_signal_count_once() {
        let t0 = Instant::now();
        let mut d = Drain::start(Signal::Term, 8, t0, GRACE);
        assert_eq!(d.another(Signal::Term, t0 + Duration::from_secs(1)), None);
        // A worker passing a signal on is always a copy, however late.
        assert_eq!(d.another(Signal::WorkerAsked, t0 + Duration::from_secs(30)), None);
        assert!(!d.expired(t0 + GRACE) && d.expired(t0 + GRACE + Duration::from_millis(1)));
        assert_eq!(d.stop_after(), 8);
        assert!(!d.requeue());
        // Slurm sends USR1 to the launcher and TERM elsewhere: the USR1 still asks for a requeue.
        d.another(Signal::Usr1, t0 + Duration::from_secs(1));
        assert!(d.requeue());
    }

    #[test]
    fn a_second_signal_shortens_the_deadline_and_a_third_ends_it() {
        let t0 = Instant::now();
        let mut d = Drain::start(Signal::Int, 3, t0, GRACE);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(d.another(Signal::Int, t1), Some(2));
        assert!(!d.expired(t1 + SECOND_SIGNAL_GRACE));
        assert!(d.expired(t1 + SECOND_SIGNAL_GRACE + Duration::from_millis(1)));
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(d.another(Signal::Int, t2), Some(3));
        assert!(d.expired(t2 + Duration::from_millis(1)));
        // A later signal never moves the deadline out again.
        let mut late = Drain::start(Signal::Term, 3, t0, Duration::from_secs(3));
        assert_eq!(late.another(Signal::Term, t0 + SAME_EVENT), Some(2));
        assert!(late.expired(t0 + Duration::from_secs(3) + Duration::from_millis(1)));
    }

    /// `scancel`: Slurm's SIGTERM reaches the workers (which pass it on as SIGUSR2) a moment
    /// before the launcher. One event, named by the scheduler's signal.
    #[test]
    fn a_workers_copy_first_is_recorded_as_the_schedulers_signal_once() {
        let t0 = Instant::now();
        let mut d = Drain::start(Signal::WorkerAsked, 5, t0, GRACE);
        assert_eq!(
            d.take_unrecorded(t0, false),
            None,
            "wait for the launcher's own copy"
        );
        assert_eq!(
            d.another(Signal::WorkerAsked, t0 + Duration::from_millis(1)),
            None
        );
        assert_eq!(d.another(Signal::Term, t0 + Duration::from_millis(2)), None);
        assert_eq!(d.signal(), Signal::Term);
        assert_eq!(
            d.take_unrecorded(t0 + Duration::from_millis(3), false),
            Some(Signal::Term)
        );
        assert_eq!(
            d.take_unrecorded(t0 + Duration::from_millis(4), true),
            None,
            "once"
        );

        // A worker signalled by hand: no scheduler copy follows; written after SAME_EVENT, or
        // when the drain ends first.
        let mut d = Drain::start(Signal::WorkerAsked, 5, t0, GRACE);
        assert_eq!(
            d.take_unrecorded(t0 + SAME_EVENT - Duration::from_millis(1), false),
            None
        );
        assert_eq!(
            d.take_unrecorded(t0 + SAME_EVENT, false),
            Some(Signal::WorkerAsked)
        );
        let mut d = Drain::start(Signal::WorkerAsked, 5, t0, GRACE);
        assert_eq!(d.take_unrecorded(t0, true), Some(Signal::WorkerAsked));

        // The scheduler's signal first: written at once; the workers' copies are not events.
        let mut d = Drain::start(Signal::Usr1, 5, t0, GRACE);
        assert_eq!(d.take_unrecorded(t0, false), Some(Signal::Usr1));
        assert_eq!(d.another(Signal::WorkerAsked, t0), None);
        assert_eq!(d.signal(), Signal::Usr1);
        assert!(d.requeue());
    }
}
