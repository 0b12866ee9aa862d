//! GPU check of the NCCL path (run by `tests/gpu/gpu-check.sh`, not by CI): an all-reduce on a
//! Burn CUDA tensor with `WORLD` ranks on GPU 0, each a process joined through the control server.
//!
//! `cargo run --release -p swinfc-comm --features cuda --example nccl-check -- WORLD [MB]`
//!
//! `nccl-check spawn WORLD PROGRAM ARGS...` instead runs WORLD copies of another worker program
//! (`swinfc worker CONFIG`) against a control server hosted here, so the GPU check can train with
//! NCCL on several ranks without the launcher.

use std::process::Command;
use std::time::{Duration, Instant};

use burn::backend::Cuda;
use burn::backend::cuda::CudaDevice;
use burn::tensor::Tensor;
use swinfc_comm::nccl::{NcclComm, libraries_present};
use swinfc_comm::{CommError, ControlClient, ControlServer, JobToken, WorkerIdentity};

const T: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = if std::env::var("SWINFC_RANK").is_ok() {
        worker(&args)
    } else {
        launch(&args)
    };
    if let Err(e) = r {
        eprintln!("nccl-check: {e}");
        std::process::exit(1);
    }
}

fn launch(args: &[String]) -> Result<(), CommError> {
    let (world, program, args): (&str, std::path::PathBuf, &[String]) = match args {
        [mode, world, program, rest @ ..] if mode == "spawn" => (world.as_str(), program.into(), rest),
        _ => {
            let exe = std::env::current_exe().map_err(|e| CommError::Io {
                peer: "current_exe".into(),
                source: e,
            })?;
            (args.first().map_or("1", String::as_str), exe, args)
        }
    };
    let world: usize = world.parse().unwrap_or(1);
    println!("libraries present (libcuda, libnccl): {:?}", libraries_present());
    let token = JobToken::generate()?;
    let server = ControlServer::spawn_in_thread(
        "127.0.0.1:0"
            .parse()
            .map_err(|_| CommError::Invalid("addr".into()))?,
        token.clone(),
        world,
        0,
    )?;
    let mut children = Vec::new();
    for rank in 0..world {
        let id = WorkerIdentity {
            rank,
            local_rank: rank,
            world_size: world,
            master_addr: "127.0.0.1".into(),
            master_port: server.local_addr().port(),
            job_token: token.to_hex(),
            restart_round: 0,
        };
        children.push(
            Command::new(&program)
                .args(args)
                .envs(id.to_env())
                .spawn()
                .map_err(|e| CommError::Io {
                    peer: "spawn".into(),
                    source: e,
                })?,
        );
    }
    let mut ok = true;
    for mut c in children {
        ok &= c.wait().map(|s| s.success()).unwrap_or(false);
    }
    if ok {
        Ok(())
    } else {
        Err(CommError::Invalid(format!(
            "a rank of the {world}-rank check failed"
        )))
    }
}

fn worker(args: &[String]) -> Result<(), CommError> {
    let id = WorkerIdentity::from_env()?;
    let mb: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(256);
    let mut control = ControlClient::connect(&id, T)?;
    let mut nccl = NcclComm::connect(&mut control, 0, T)?;
    let (rank, world) = (nccl.rank(), nccl.world_size());
    let dev = CudaDevice::new(0);

    // Correctness: rank r contributes r+1 everywhere; the sum is W(W+1)/2.
    let n = 1_000_003;
    let t = Tensor::<Cuda, 1>::ones([n], &dev).mul_scalar((rank + 1) as f32);
    nccl.all_reduce_sum_tensor(&t, T)?;
    let got: Vec<f32> = t
        .into_data()
        .to_vec()
        .map_err(|e| CommError::Invalid(format!("{e:?}")))?;
    let want = (world * (world + 1) / 2) as f32;
    if got.iter().any(|&x| x != want) {
        return Err(CommError::Invalid(format!(
            "rank {rank}: all-reduce gave {:?}, want {want}",
            &got[..4]
        )));
    }
    let mut bc = Tensor::<Cuda, 1>::ones([n], &dev).mul_scalar((rank + 1) as f32);
    nccl.broadcast_tensor(0, &bc, T)?;
    bc = bc.sum();
    let s: Vec<f32> = bc
        .into_data()
        .to_vec()
        .map_err(|e| CommError::Invalid(format!("{e:?}")))?;
    if s[0] != n as f32 {
        return Err(CommError::Invalid(format!(
            "rank {rank}: broadcast sum {} want {n}",
            s[0]
        )));
    }
    println!("rank {rank}/{world}: all-reduce and broadcast correct");

    // Bandwidth, nccl-tests conventions.
    let elems = mb * (1 << 20) / 4;
    let big = Tensor::<Cuda, 1>::zeros([elems], &dev);
    nccl.all_reduce_sum_tensor(&big, T)?;
    let iters = 20;
    let start = Instant::now();
    for _ in 0..iters {
        nccl.all_reduce_sum_tensor(&big, T)?;
    }
    let secs = start.elapsed().as_secs_f64() / iters as f64;
    let algbw = (elems * 4) as f64 / secs / 1e9;
    let busbw = algbw * 2.0 * (world - 1) as f64 / world as f64;
    if rank == 0 {
        println!(
            "world {world}, {mb} MB: {:.3} ms, algbw {algbw:.2} GB/s, busbw {busbw:.2} GB/s",
            secs * 1e3
        );
    }
    Ok(())
}
