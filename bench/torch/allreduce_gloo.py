#!/usr/bin/env python3
"""torch.distributed all-reduce (gloo backend) on loopback, in the conventions of
`cargo bench -p swinfc-comm` (crates/swinfc-comm/benches/ring_bandwidth.rs): f32 sum, MB = 2^20
bytes, one warm-up all-reduce then a barrier, time = mean of ITERS all-reduces,
algbw = bytes / time (GB/s = 1e9 B/s), busbw = algbw * 2 (W-1) / W.

    python bench/torch/allreduce_gloo.py [--world 2] [--sizes 16:5,64:5,256:3] [--json]

Run by hand (PyTorch from PyPI); not a project dependency.
"""
import argparse
import json
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, world, port, sizes, queue):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    # Gloo picks its interface from the hostname unless told: pin it to loopback.
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for mb, iters in sizes:
        buf = torch.ones(mb * (1 << 20) // 4, dtype=torch.float32)
        dist.all_reduce(buf)  # warm-up: page faults, TCP windows
        dist.barrier()
        t = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(buf)
        secs = (time.perf_counter() - t) / iters
        if rank == 0:
            algbw = mb * (1 << 20) / secs / 1e9
            queue.put({"world": world, "mb": mb, "iters": iters, "time_ms": secs * 1e3, "algbw_gbs": algbw,
                       "busbw_gbs": algbw * 2 * (world - 1) / world})
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--sizes", default="16:5,64:5,256:3", help="MB:ITERS,...")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split(":")) for s in args.sizes.split(",")]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(worker, args=(args.world, free_port(), sizes, queue), nprocs=args.world, join=True,
                       start_method="spawn")
    rows = [queue.get() for _ in sizes]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return
    print(f"torch {torch.__version__} gloo all-reduce, loopback")
    print(f"{'ranks':>5} {'size MB':>8} {'iters':>6} {'time ms':>11} {'algbw GB/s':>12} {'busbw GB/s':>12}")
    for r in rows:
        print(f"{r['world']:>5} {r['mb']:>8} {r['iters']:>6} {r['time_ms']:>11.2f} {r['algbw_gbs']:>12.3f} "
              f"{r['busbw_gbs']:>12.3f}")


if __name__ == "__main__":
    main()
