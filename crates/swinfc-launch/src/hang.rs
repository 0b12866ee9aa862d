//! [`HangDetector`]: which worker, if any, has been silent for longer than its phase allows. Pure:
//! the supervisor feeds it heartbeats, reports and exits with the time they were seen, and asks
//! it with the current time, so every rule is tested without processes or clocks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use swinfc_comm::Phase;

/// How many of rank 0's latest step times the step timeout is taken from: enough for a stable
/// p99, and bounded so a long run costs the same per step as a short one.
pub const WINDOW: usize = 256;

/// What the detector knows of one rank in this round.
#[derive(Debug, Clone)]
struct Rank {
    last_beat: Instant,
    /// `None` (setting up) until the first heartbeat, then what the worker says.
    phase: Option<Phase>,
    step: u64,
    done: bool,
}

/// A rank judged hung, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Hang {
    pub rank: usize,
    pub cause: String,
}

#[derive(Debug)]
pub struct HangDetector {
    ranks: Vec<Rank>,
    setup_timeout: Duration,
    step_floor: Duration,
    /// Rank 0's latest step times, oldest first.
    window: VecDeque<f64>,
    /// `max(10 × p99 of the window, floor)`, recomputed when a step time arrives rather than on
    /// every check.
    step_timeout: Duration,
}

impl HangDetector {
    /// A round of `world` ranks started at `now` from `start_step`. Until its first step a rank
    /// gets `setup_timeout` (it compiles and warms up); afterwards, in training, the step timeout.
    pub fn new(
        world: usize,
        start_step: u64,
        setup_timeout: Duration,
        step_floor: Duration,
        now: Instant,
    ) -> Self {
        let rank = Rank {
            last_beat: now,
            phase: None,
            step: start_step,
            done: false,
        };
        HangDetector {
            ranks: vec![rank; world],
            setup_timeout,
            step_floor,
            window: VecDeque::with_capacity(WINDOW),
            step_timeout: step_floor,
        }
    }

    pub fn heartbeat(&mut self, rank: usize, step: u64, phase: Phase, now: Instant) {
        if let Some(r) = self.ranks.get_mut(rank) {
            r.last_beat = now;
            r.phase = Some(phase);
            r.step = step;
        }
    }

    /// Any other sign of life (a report).
    pub fn alive(&mut self, rank: usize, now: Instant) {
        if let Some(r) = self.ranks.get_mut(rank) {
            r.last_beat = now;
        }
    }

    /// Rank 0 completed a step that took `seconds`.
    pub fn step_time(&mut self, seconds: f64) {
        if self.window.len() == WINDOW {
            self.window.pop_front();
        }
        self.window.push_back(seconds);
        let mut sorted: Vec<f64> = self.window.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let p99 = sorted[((sorted.len() - 1) as f64 * 0.99).round() as usize];
        self.step_timeout =
            Duration::try_from_secs_f64(10.0 * p99).map_or(self.step_floor, |t| t.max(self.step_floor));
    }

    /// `rank` exited cleanly: it can no longer hang.
    pub fn done(&mut self, rank: usize) {
        if let Some(r) = self.ranks.get_mut(rank) {
            r.done = true;
        }
    }

    pub fn all_done(&self) -> bool {
        self.ranks.iter().all(|r| r.done)
    }

    /// A rank silent for longer than its phase allows. A suspended process (`suspended(rank)`) is
    /// named first, since it is the cause rather than a victim; otherwise the rank furthest
    /// behind, since the others are waiting for it in a collective.
    pub fn check(&self, now: Instant, suspended: impl Fn(usize) -> bool) -> Option<Hang> {
        let silent: Vec<(usize, &Rank, Duration)> = self
            .ranks
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.done)
            .filter_map(|(rank, r)| {
                let training = r.phase == Some(Phase::Train) && !self.window.is_empty();
                let limit = if training {
                    self.step_timeout
                } else {
                    self.setup_timeout
                };
                let quiet = now.saturating_duration_since(r.last_beat);
                (quiet > limit).then_some((rank, r, quiet))
            })
            .collect();
        let stopped = silent.iter().find(|(rank, ..)| suspended(*rank));
        let (rank, r, quiet) =
            stopped.or_else(|| silent.iter().min_by_key(|(_, r, _)| (r.step, r.last_beat)))?;
        let suffix = if stopped.is_some() {
            ", process is stopped"
        } else {
            ""
        };
        let cause = format!(
            "hung: no progress for {:.0} s in phase {} at step {}{suffix}",
            quiet.as_secs_f64(),
            r.phase.map_or("setup", Phase::as_str),
            r.step
        );
        Some(Hang { rank: *rank, cause })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETUP: Duration = Duration::from_secs(600);
    const FLOOR: Duration = Duration::from_secs(30);
    const S: fn(u64) -> Duration = Duration::from_secs;

    fn detector(world: usize, t0: Instant) -> HangDetector {
        HangDetector::new(world, 0, SETUP, FLOOR, t0)
    }

    #[test]
    fn the_window_is_bounded_and_keeps_the_latest_steps() {
        let t0 = Instant::now();
        let mut d = detector(1, t0);
        // A slow start, then a long run of fast steps: the slow ones leave the window.
        for _ in 0..10 {
            d.step_time(20.0);
        }
        assert_eq!(d.step_timeout, S(200));
        for _ in 0..10 * WINDOW {
            d.step_time(0.5);
        }
        assert!(d.window.len() == WINDOW);
        assert_eq!(d.step_timeout, FLOOR);
        // 10 × p99: a few slow steps among many fast ones count only past the 1% tail.
        d.step_time(10.0);
        assert_eq!(d.step_timeout, FLOOR);
        for _ in 0..5 {
            d.step_time(10.0);
        }
        assert_eq!(d.step_timeout, S(100));
    }

    #[test]
    fn each_phase_gets_its_own_timeout() {
        let t0 = Instant::now();
        let mut d = detector(2, t0);
        let never = |_| false;
        // Setting up: the setup allowance, for every rank.
        assert_eq!(d.check(t0 + SETUP, never), None);
        let hang = d.check(t0 + SETUP + S(1), never).unwrap();
        assert_eq!(hang.rank, 0);
        assert!(hang.cause.contains("phase setup"), "{}", hang.cause);

        // Training before the first step time: still the setup allowance (compilation).
        d.heartbeat(0, 1, Phase::Train, t0);
        d.heartbeat(1, 1, Phase::Train, t0);
        assert_eq!(d.check(t0 + FLOOR * 2, never), None);
        // After it: the step timeout.
        d.step_time(1.0);
        let hang = d.check(t0 + FLOOR + S(1), never).unwrap();
        assert!(hang.cause.contains("phase train at step 1"), "{}", hang.cause);

        // Evaluating and writing the last checkpoint may take long: the setup allowance.
        d.heartbeat(0, 2, Phase::Eval, t0);
        d.heartbeat(1, 2, Phase::Finishing, t0);
        assert_eq!(d.check(t0 + FLOOR * 2, never), None);
        assert!(d.check(t0 + SETUP + S(1), never).is_some());
    }

    #[test]
    fn the_rank_behind_is_blamed_and_a_stopped_process_first() {
        let t0 = Instant::now();
        let mut d = detector(3, t0);
        d.step_time(1.0);
        for rank in 0..3 {
            d.heartbeat(rank, 5, Phase::Train, t0);
        }
        // Rank 2 is one step behind: the others wait for it in the all-reduce.
        d.heartbeat(2, 4, Phase::Train, t0);
        let late = t0 + FLOOR + S(1);
        assert_eq!(d.check(late, |_| false).unwrap().rank, 2);
        // A suspended process is the cause, wherever it is.
        let hang = d.check(late, |rank| rank == 1).unwrap();
        assert_eq!(hang.rank, 1);
        assert!(hang.cause.ends_with("process is stopped"), "{}", hang.cause);
        // Finished ranks and fresh heartbeats are never hung.
        d.done(1);
        d.done(2);
        d.heartbeat(0, 6, Phase::Train, late);
        assert_eq!(d.check(late, |_| true), None);
        assert!(!d.all_done());
        d.done(0);
        assert!(d.all_done());
    }
}
