//! All-reduce bandwidth of the TCP ring on loopback, 2 and 4 processes, 1/16/64/256 MB, in
//! nccl-tests conventions: algbw = size / time, busbw = algbw · 2(W−1)/W.
//!
//! `cargo bench -p swinfc-comm` (set `RING_BENCH_SIZES=1:20,16:5` to change sizes:iterations,
//! `RING_BENCH_WORLDS=2` to run only two ranks, as bench/compare.sh does against gloo).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

fn main() {
    let sizes = std::env::var("RING_BENCH_SIZES").unwrap_or_else(|_| "1:20,16:10,64:5,256:3".into());
    println!(
        "{:>5} {:>8} {:>6} {:>11} {:>12} {:>12}",
        "ranks", "size MB", "iters", "time ms", "algbw GB/s", "busbw GB/s"
    );
    let worlds: Vec<usize> = std::env::var("RING_BENCH_WORLDS")
        .unwrap_or_else(|_| "2,4".into())
        .split(',')
        .map(|w| {
            w.trim()
                .parse()
                .expect("RING_BENCH_WORLDS: comma-separated rank counts")
        })
        .collect();
    for world in worlds {
        let mut job = common::Job::start(world, &["bench", &sizes], &[("COMM_PEER_TIMEOUT_MS", "60000")]);
        let results = job.wait(Duration::from_secs(600));
        common::assert_all_ok(&results);
        for (_, r) in job.reports() {
            let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:>5} {:>8} {:>6} {:>11.2} {:>12.3} {:>12.3}",
                f("world"),
                f("mb"),
                f("iters"),
                f("time_ms"),
                f("algbw_gbs"),
                f("busbw_gbs")
            );
        }
    }
}
