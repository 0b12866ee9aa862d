//! The CPU time of this process's threads between two moments, from Linux's
//! `/proc/self/task/*/stat`: which threads a step keeps busy (the main thread that submits the
//! work, a GPU runtime's device thread, the CPU backend's pool), as performance.md §6 asks of a
//! device run. Elsewhere than on Linux there is nothing to read and the list is empty.

use std::collections::BTreeMap;

use serde::Serialize;

/// One thread's CPU time (user and system) over an interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThreadCpu {
    /// The thread's name (`main` for the process's first thread).
    pub name: String,
    pub tid: u32,
    pub seconds: f64,
}

/// Every thread's name and CPU time in clock ticks at one moment.
pub struct Snapshot(BTreeMap<u32, (String, u64)>);

impl Snapshot {
    pub fn take() -> Self {
        let pid = std::process::id();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Self(BTreeMap::new());
        };
        let threads = tasks
            .flatten()
            .filter_map(|task| {
                let tid = task.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
                let (name, ticks) = parse_stat(&stat)?;
                Some((tid, (if tid == pid { "main".into() } else { name }, ticks)))
            })
            .collect();
        Self(threads)
    }

    /// The threads that used CPU time since this snapshot, busiest first (a thread started
    /// since counts from zero).
    pub fn since(&self) -> Vec<ThreadCpu> {
        // SAFETY: sysconf only reads a constant of the system.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let mut busy: Vec<ThreadCpu> = Self::take()
            .0
            .into_iter()
            .filter_map(|(tid, (name, ticks))| {
                let before = self.0.get(&tid).map_or(0, |(_, t)| *t);
                let used = ticks.saturating_sub(before);
                (used > 0).then(|| ThreadCpu {
                    name,
                    tid,
                    seconds: used as f64 / ticks_per_second,
                })
            })
            .collect();
        busy.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then(a.tid.cmp(&b.tid)));
        busy
    }
}

/// `(name, utime + stime)` from a `stat` line: `tid (name) state ppid …`, where the name may hold
/// spaces and parentheses, so the fields are counted from its last `)`; utime and stime are the
/// 14th and 15th fields.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_the_name_and_the_cpu_ticks() {
        let line = "4242 (cubecl (dev) 0) S 1 4242 4242 0 -1 4194368 2191 0 0 0 150 27 0 0 20 0 31 0";
        assert_eq!(parse_stat(line), Some(("cubecl (dev) 0".into(), 177)));
        assert_eq!(parse_stat("4242 (short) S 1 2"), None);
    }

    /// The calling thread's own CPU time, from the kernel's per-thread clock.
    fn own_cpu_seconds() -> f64 {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
        t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
    }

    /// A thread that burns 300 ms of CPU shows about that much, under its own name, however
    /// loaded the machine is.
    #[test]
    fn a_busy_thread_is_reported_by_name() {
        let before = Snapshot::take();
        let (burnt, done) = std::sync::mpsc::channel();
        let (snapshot_taken, taken) = std::sync::mpsc::channel::<()>();
        let spinner = std::thread::Builder::new()
            .name("spinner".into())
            .spawn(move || {
                let mut x = 0u64;
                while own_cpu_seconds() < 0.3 {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                burnt.send(()).expect("the test waits");
                // Alive until the snapshot is taken.
                taken.recv().expect("the test signals");
                x
            })
            .expect("a thread");
        done.recv().expect("the spinner burns its CPU");
        let busy = before.since();
        snapshot_taken.send(()).expect("the spinner waits");
        spinner.join().expect("the spinner finishes");
        let spinner = busy
            .iter()
            .find(|t| t.name == "spinner")
            .expect("the spinner is listed");
        assert!((0.25..0.5).contains(&spinner.seconds), "{busy:?}");
    }
}
