#!/usr/bin/env python3
"""PyTorch side of `swinfc bench ops`: the same ops on the
same shapes, forward + backward of sum(op(x) * g), median of 20 runs after one warm-up.

    python bench/torch/ops.py [THREADS]
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

if len(sys.argv) > 1:
    torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)


def time_ms(x, op, reps=20):
    g = torch.randn_like(op(x.detach()))

    def run():
        xx = x.detach().requires_grad_()
        (op(xx) * g).sum().backward()
        return xx.grad

    run()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


tokens = torch.randn(8, 1024, 32)
hidden = torch.randn(8, 1024, 128)
scores = torch.randn(512, 1, 16, 16)
q = torch.randn(512, 1, 16, 32)
branch = torch.randn(8, 256, 256)
norm = torch.nn.LayerNorm(32)
fc1, fc2 = torch.nn.Linear(32, 128), torch.nn.Linear(128, 32)
rows = [
    ("layer_norm(32) [8,1024,32]", time_ms(tokens, norm)),
    ("linear 32->128->32 [8,1024,32]", time_ms(tokens, lambda x: fc2(fc1(x)))),
    ("gelu [8,1024,128]", time_ms(hidden, F.gelu)),
    ("softmax(-1) [512,1,16,16]", time_ms(scores, lambda x: x.softmax(-1))),
    ("q@k^T [512,1,16,32]x[512,1,32,16]", time_ms(q, lambda x: x @ x.transpose(2, 3))),
    ("window partition [8,32,32,32]",
     time_ms(tokens, lambda x: x.reshape(8, 8, 4, 8, 4, 32).permute(0, 1, 3, 2, 4, 5).reshape(8, 1024, 32))),
    ("mean over tokens (dim 1) [8,256,256]", time_ms(branch, lambda x: x.mean(1, keepdim=True).repeat(1, 256, 1))),
    ("softmax(dim 1) [8,256,256]", time_ms(branch, lambda x: x.softmax(1))),
]
print(f"{f'op, fwd+bwd (torch, {torch.get_num_threads()} threads)':<40} {'median ms':>10}")
for name, ms in rows:
    print(f"{name:<40} {ms:>10.3f}")
