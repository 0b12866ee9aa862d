//! One rank of a multi-process run of the collectives, for this crate's tests and benchmark (not
//! a user tool). Identity comes from the `SWINFC_*` environment like a real worker's; results go
//! to the control server as reports, so the test process can compare ranks.
//!
//! Scenarios (first argument):
//! - `allreduce SIZES`: all-reduce deterministic random vectors of each size (comma-separated),
//!   check against the f64 sum, report a hash of the result.
//! - `broadcast`: f32 and byte broadcasts from every root, checked.
//! - `barrier`: ranks arrive at different times at the ring and the control-server barriers;
//!   nobody may leave before everybody has arrived.
//! - `loop N`: all-reduce N floats until an error (for the killed-peer tests); gives up after 120 s.
//! - `mismatch`: rank 0 all-reduces a different length than the others (must fail everywhere).
//! - `bench MB:ITERS,...`: all-reduce bandwidth; rank 0 reports algbw/busbw per size.
//!
//! `COMM_PEER_TIMEOUT_MS` sets the ring timeout (default 10 000). Exit status 0 on success,
//! 1 on a failed check or error (printed to stderr).

use std::time::{Duration, Instant};

use serde_json::json;
use swinfc_comm::{Collective, CommError, ControlClient, TcpRing, WorkerIdentity};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("comm-peer: {e}");
            std::process::exit(1);
        }
    }
}

/// Uniform in [-1, 1), a pure function of (seed, rank, index), so every rank can recompute
/// every other rank's input to check the sum.
fn value(seed: u64, rank: usize, i: usize) -> f32 {
    let mut z = seed
        ^ (rank as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn fnv(bytes: impl IntoIterator<Item = u8>) -> String {
    let h = bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

fn fail(msg: String) -> CommError {
    CommError::Invalid(msg)
}

fn run(args: &[String]) -> Result<(), CommError> {
    let id = WorkerIdentity::from_env()?;
    let timeout = Duration::from_millis(
        std::env::var("COMM_PEER_TIMEOUT_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000),
    );
    let mut control = ControlClient::connect(&id, Duration::from_secs(30))?;
    let mut ring = TcpRing::connect(&mut control, timeout)?;
    let (rank, world) = (ring.rank(), ring.world_size());
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(0) {
        "allreduce" => {
            for n in arg(1)
                .split(',')
                .map(|s| s.parse::<usize>().map_err(|_| fail(format!("bad size '{s}'"))))
            {
                let n = n?;
                let seed = n as u64;
                let mut buf: Vec<f32> = (0..n).map(|i| value(seed, rank, i)).collect();
                ring.all_reduce_sum_f32(&mut buf)?;
                let mut worst = 0f64;
                for (i, &got) in buf.iter().enumerate() {
                    let xs = (0..world).map(|r| value(seed, r, i) as f64);
                    let (exact, scale) = xs.fold((0.0, 0.0), |(s, a), x| (s + x, a + x.abs()));
                    // Relative to the sum of magnitudes: for values of mixed sign the sum itself can be ~0.
                    worst = worst.max((got as f64 - exact).abs() / scale.max(f64::MIN_POSITIVE));
                }
                let hash = fnv(buf.iter().flat_map(|x| x.to_le_bytes()));
                control
                    .report(json!({"scenario": "allreduce", "n": n, "hash": hash, "max_rel_err": worst}))?;
                if worst > 1e-6 {
                    return Err(fail(format!("n={n}: relative error {worst:e} > 1e-6")));
                }
            }
        }
        "broadcast" => {
            for root in 0..world {
                let n = 300_000 + 7 * root; // several chunks, not a multiple of the chunk size
                let mut buf: Vec<f32> = if rank == root {
                    (0..n).map(|i| value(99, root, i)).collect()
                } else {
                    vec![f32::NAN; n]
                };
                ring.broadcast_f32(root, &mut buf)?;
                if buf
                    .iter()
                    .enumerate()
                    .any(|(i, &x)| x.to_bits() != value(99, root, i).to_bits())
                {
                    return Err(fail(format!("broadcast_f32 from root {root} differs")));
                }
                let want: Vec<u8> = (0..1_000_003 + root).map(|i| (i * 31 + root) as u8).collect();
                let mut bytes = if rank == root { want.clone() } else { vec![7u8; 5] };
                ring.broadcast_bytes(root, &mut bytes)?;
                if bytes != want {
                    return Err(fail(format!(
                        "broadcast_bytes from root {root} differs (len {})",
                        bytes.len()
                    )));
                }
                let mut empty = if rank == root { Vec::new() } else { vec![1u8; 3] };
                ring.broadcast_bytes(root, &mut empty)?;
                if !empty.is_empty() {
                    return Err(fail("empty broadcast_bytes left data".into()));
                }
                control.report(json!({"scenario": "broadcast", "root": root, "hash": fnv(bytes)}))?;
            }
        }
        "barrier" => {
            for (kind, round) in [("ring", 0), ("control", 1)] {
                std::thread::sleep(Duration::from_millis(150 * rank as u64));
                control.kv_set(&format!("arrived/{round}/{rank}"), "1")?;
                match kind {
                    "ring" => ring.barrier()?,
                    _ => control.barrier("peer-barrier", Duration::from_secs(20))?,
                }
                for r in 0..world {
                    if control.kv_get(&format!("arrived/{round}/{r}"))?.is_none() {
                        return Err(fail(format!("{kind} barrier: left before rank {r} arrived")));
                    }
                }
            }
            control.report(json!({"scenario": "barrier", "ok": true}))?;
        }
        "loop" => {
            let n: usize = arg(1).parse().map_err(|_| fail("loop needs a size".into()))?;
            let mut buf = vec![1f32; n];
            let start = Instant::now();
            let mut i = 0u64;
            while start.elapsed() < Duration::from_secs(120) {
                buf.fill(1.0);
                ring.all_reduce_sum_f32(&mut buf)?;
                if i == 0 {
                    control.report(json!({"scenario": "loop", "started": true}))?;
                }
                i += 1;
            }
        }
        "mismatch" => {
            let mut buf = vec![1f32; if rank == 0 { 10 } else { 11 }];
            ring.all_reduce_sum_f32(&mut buf)?;
            return Err(fail("mismatched all-reduce succeeded".into()));
        }
        "bench" => {
            for spec in arg(1).split(',') {
                let (mb, iters) = spec
                    .split_once(':')
                    .and_then(|(m, i)| Some((m.parse::<usize>().ok()?, i.parse::<usize>().ok()?)))
                    .ok_or_else(|| fail(format!("bench sizes are MB:ITERS, got '{spec}'")))?;
                let n = mb * (1 << 20) / 4;
                let mut buf = vec![1f32; n];
                ring.all_reduce_sum_f32(&mut buf)?; // warm-up: page faults, TCP windows
                ring.barrier()?;
                let t = Instant::now();
                for _ in 0..iters {
                    ring.all_reduce_sum_f32(&mut buf)?;
                }
                let secs = t.elapsed().as_secs_f64() / iters as f64;
                // nccl-tests: algbw = bytes / time; busbw = algbw * 2 (W-1) / W for all-reduce.
                let algbw = (n * 4) as f64 / secs / 1e9;
                let busbw = algbw * 2.0 * (world - 1) as f64 / world as f64;
                if rank == 0 {
                    control.report(json!({"world": world, "mb": mb, "iters": iters, "time_ms": secs * 1e3, "algbw_gbs": algbw, "busbw_gbs": busbw}))?;
                }
            }
        }
        other => return Err(fail(format!("unknown scenario '{other}'"))),
    }
    // Leave together, so no rank's exit looks like a failure to a neighbour still reading.
    ring.barrier()?;
    Ok(())
}
