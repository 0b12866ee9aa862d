//! The TCP ring across real processes on loopback.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Job, assert_all_ok};
use swinfc_comm::ServerEvent;

#[test]
fn all_reduce_matches_f64_sum_and_is_bit_identical_for_2_3_4_ranks() {
    for world in [2, 3, 4] {
        let mut job = Job::start(world, &["allreduce", "1,7,1000,300001,10000000"], &[]);
        let results = job.wait(Duration::from_secs(240));
        assert_all_ok(&results);
        // Every rank reported each size once, with the same hash.
        let mut hashes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (_, r) in job.reports() {
            assert!(r["max_rel_err"].as_f64().unwrap() <= 1e-6, "{r}");
            hashes
                .entry(r["n"].as_u64().unwrap())
                .or_default()
                .push(r["hash"].as_str().unwrap().to_string());
        }
        assert_eq!(
            hashes.keys().copied().collect::<Vec<_>>(),
            vec![1, 7, 1000, 300_001, 10_000_000]
        );
        for (n, h) in hashes {
            assert_eq!(h.len(), world, "world {world}, n {n}");
            assert!(
                h.iter().all(|x| *x == h[0]),
                "world {world}, n {n}: results differ across ranks: {h:?}"
            );
        }
    }
}

#[test]
fn broadcast_from_every_root() {
    for world in [2, 3] {
        let mut job = Job::start(world, &["broadcast"], &[]);
        let results = job.wait(Duration::from_secs(120));
        assert_all_ok(&results);
        assert_eq!(job.reports().len(), world * world);
    }
}

#[test]
fn ring_and_control_barriers_hold_everyone() {
    let mut job = Job::start(4, &["barrier"], &[]);
    let results = job.wait(Duration::from_secs(120));
    assert_all_ok(&results);
    assert_eq!(job.reports().len(), 4);
}

#[test]
fn mismatched_lengths_fail_on_every_rank() {
    let mut job = Job::start(3, &["mismatch"], &[("COMM_PEER_TIMEOUT_MS", "5000")]);
    let results = job.wait(Duration::from_secs(60));
    for (rank, (st, err)) in results.iter().enumerate() {
        assert!(st.is_some_and(|s| !s.success()), "rank {rank} should fail");
        assert!(
            err.contains("rank"),
            "rank {rank}: error should name a peer: {err}"
        );
    }
    assert!(results.iter().any(|(_, e)| e.contains("mismatch")), "{results:?}");
}

fn started(job: &mut Job, world: usize) {
    let ok = job.events_until(Duration::from_secs(60), |ev| {
        ev.iter()
            .filter(|e| matches!(e, ServerEvent::Report { record, .. } if record["started"] == true))
            .count()
            == world
    });
    assert!(ok, "peers did not start: {:?}", job.events);
}

#[test]
fn killed_peer_makes_the_others_fail_within_the_timeout() {
    let timeout_ms = 3000;
    let mut job = Job::start(3, &["loop", "1000000"], &[("COMM_PEER_TIMEOUT_MS", "3000")]);
    started(&mut job, 3);
    let t = Instant::now();
    job.children[1].kill().unwrap(); // SIGKILL mid-operation
    let results = job.wait(Duration::from_millis(timeout_ms + 5000));
    let elapsed = t.elapsed();
    for rank in [0, 2] {
        let (st, err) = &results[rank];
        assert!(
            st.is_some_and(|s| !s.success()),
            "rank {rank} should have failed, got {st:?}: {err}"
        );
        assert!(
            err.contains("rank "),
            "rank {rank}: error should name a peer: {err}"
        );
    }
    assert!(
        elapsed < Duration::from_millis(timeout_ms + 2000),
        "took {elapsed:?}"
    );
    // The control server noticed which rank went away.
    assert!(
        job.events
            .iter()
            .any(|e| matches!(e, ServerEvent::Disconnected { rank: 1, .. })),
        "{:?}",
        job.events
    );
}

#[test]
fn hung_peer_makes_the_others_fail_within_the_timeout() {
    // A stopped (not dead) process keeps its sockets open: only the timeout can catch it.
    let mut job = Job::start(3, &["loop", "1000000"], &[("COMM_PEER_TIMEOUT_MS", "2000")]);
    started(&mut job, 3);
    let pid = job.children[2].id().to_string();
    let t = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut done = [false; 2];
    while done.iter().any(|d| !d) && Instant::now() < deadline {
        for (i, rank) in [0, 1].into_iter().enumerate() {
            if !done[i] {
                done[i] = job.children[rank].try_wait().unwrap().is_some();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = t.elapsed();
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    let results = job.wait(Duration::from_secs(5));
    assert!(
        done.iter().all(|d| *d),
        "ranks 0 and 1 still running after {elapsed:?}"
    );
    for rank in [0, 1] {
        let (st, err) = &results[rank];
        assert!(st.is_some_and(|s| !s.success()), "rank {rank}: {st:?} {err}");
    }
    // Timeout is 2 s per blocked read; the failure then travels the ring at once.
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    // A stall propagates around the ring, so every blocked read times out at about the same
    // moment: the first to fire names the neighbour it waited for (rank 2, or a rank that was
    // itself waiting for rank 2). The others then see closed links.
    assert!(
        results[..2]
            .iter()
            .any(|(_, e)| e.contains("timed out") && e.contains("rank ")),
        "{results:?}"
    );
}
