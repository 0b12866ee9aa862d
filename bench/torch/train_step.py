#!/usr/bin/env python3
"""PyTorch side of `swinfc bench train-step`: the same SwinFC (the parity reference,
tests/fixtures/make_parity.py), the same config, batch and thread count, the same step
(forward + losses, backward, global-norm clip 1.0, SGD momentum 0.9 with the two learning-rate
groups), warm-up excluded; prints the same table, or with --json one object with the same keys.

    python bench/torch/train_step.py --config bench/configs/tiny.yaml --threads 2 [--json]
    python bench/torch/train_step.py --config bench/configs/swin-b-384.yaml --device cuda --precision bf16

Run by hand (PyTorch from PyPI, timm >= 1.0, pyyaml); not a project dependency.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures"))
from make_parity import SwinFC  # noqa: E402  the one PyTorch SwinFC of the project

BACKBONE_ROOTS = ("patch_embed", "layers", "norm")


def percentile(sorted_values, q):
    return float(np.percentile(sorted_values, q * 100)) if sorted_values else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--flops", action="store_true",
                    help="also count the step's matmul/conv FLOPs (forward + backward) in one untimed step")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.config) as f:
        cfg = yaml.safe_load(f)
    mcfg, lcfg, b = cfg["model"], cfg["loss"], int(cfg["train"]["micro_batch"])
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = SwinFC(mcfg, lcfg).to(dev).train()
    # Parameters, activations and gradients in bf16, no autocast, no master copy: the cost of the bf16
    # kernels. Ours now times training's recipe (a bf16 compute copy of f32 master weights), which adds
    # the copy and the f32 update.
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = model.to(dtype)
    backbone = [p for n, p in model.named_parameters() if n.split(".")[0] in BACKBONE_ROOTS]
    new = [p for n, p in model.named_parameters() if n.split(".")[0] not in BACKBONE_ROOTS]
    opt = torch.optim.SGD([{"params": backbone, "lr": 0.002}, {"params": new, "lr": 0.005}],
                          momentum=0.9, weight_decay=1e-4)
    params = [p for p in model.parameters()]
    size = mcfg["img_size"]
    images = torch.randn(b, 3, size, size, device=dev, dtype=dtype)
    labels = torch.tensor([i % min(mcfg["num_classes"], 4) for i in range(b)], device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    phases, last_loss = [], float("nan")
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        out, _ = model.forward_all(images, labels)
        loss = out["loss.total"]
        last_loss = loss.item()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        sync()
        t3 = time.perf_counter()
        opt.step()
        sync()
        t4 = time.perf_counter()
        if step >= args.warmup:
            phases.append({"forward": t1 - t0, "backward": t2 - t1, "grad_sync": t3 - t2, "optimizer": t4 - t3})

    step_flops = None
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with counter:
            out, _ = model.forward_all(images, labels)
            out["loss.total"].backward()
        step_flops = counter.get_total_flops()
        opt.zero_grad(set_to_none=True)

    totals = sorted(sum(p.values()) for p in phases)
    med = percentile(totals, 0.5)
    report = {
        "micro_batch": b, "image_size": size, "parameters": sum(p.numel() for p in params),
        "steps": args.steps, "warmup": args.warmup,
        "step_seconds_median": med, "step_seconds_min": totals[0], "step_seconds_max": totals[-1],
        "step_seconds_p10": percentile(totals, 0.1), "step_seconds_p90": percentile(totals, 0.9),
        "images_per_second": b / med,
        "phases_median": {k: percentile(sorted(p[k] for p in phases), 0.5) for k in phases[0]},
        "last_loss": last_loss,
        "step_gflop": step_flops / 1e9 if step_flops else None,
        "achieved_gflops": step_flops / 1e9 / med if step_flops else None,
        "implementation": f"pytorch {torch.__version__} eager", "config": args.config,
        "device": f"cpu, {torch.get_num_threads()} threads" if dev.type == "cpu" else "cuda:0",
        "precision": args.precision,
    }
    if args.json:
        print(json.dumps(report))
        return
    p = report["phases_median"]
    print(f"{report['implementation']} train step: {args.config}, {report['device']}, {args.precision}")
    print(f"micro-batch {b} at {size}x{size}, {report['parameters'] / 1e6:.2f} M parameters, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    print(f"step seconds  median {med:.4f}  p10 {report['step_seconds_p10']:.4f}  "
          f"p90 {report['step_seconds_p90']:.4f}  min {totals[0]:.4f}  max {totals[-1]:.4f}")
    print(f"images/s      {report['images_per_second']:.2f}")
    if step_flops:
        print(f"matmul/conv work  {report['step_gflop']:.2f} GFLOP per step (fwd+bwd), "
              f"{report['achieved_gflops']:.1f} GFLOP/s achieved")
    print(f"phases (median s)  forward+loss {p['forward']:.4f}  backward {p['backward']:.4f}  "
          f"grad sync+clip {p['grad_sync']:.4f}  optimizer {p['optimizer']:.4f}")


if __name__ == "__main__":
    main()
