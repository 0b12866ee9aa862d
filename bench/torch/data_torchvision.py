#!/usr/bin/env python3
"""torchvision side of `cargo bench -p swinfc-data`: the same train transform (PIL decode →
Resize((512, 512)) bilinear → RandomRotation(15) → RandomCrop(384) → RandomHorizontalFlip →
ToTensor → Normalize(ImageNet)) on the same JPEGs, which the Rust bench writes with
`DATA_BENCH_JPEG_DIR=DIR cargo bench -p swinfc-data`. Decoded from memory, one thread, per stage;
then a DataLoader over the files with 1 and 2 worker processes (batches of 16).

    python bench/torch/data_torchvision.py DIR [--json]

Run by hand (PyTorch and torchvision from PyPI); not a project dependency.
"""
import argparse
import glob
import io
import json
import os
import time

import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
REPS = 5


def per_image(f, n):
    f(0)  # warm caches and allocator, as the Rust bench
    t = time.perf_counter()
    for r in range(REPS):
        for i in range(n):
            f(i + r)
    return (time.perf_counter() - t) / (REPS * n)


def decode(b):
    return Image.open(io.BytesIO(b)).convert("RGB")  # convert() forces the decode


class Files(torch.utils.data.Dataset):
    def __init__(self, paths, tf):
        self.paths, self.tf = paths, tf

    def __len__(self):
        return 4 * len(self.paths)  # 4 passes, as the Rust loader bench's 4·N images

    def __getitem__(self, i):
        with open(self.paths[i % len(self.paths)], "rb") as f:
            return self.tf(decode(f.read())), 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    paths = sorted(glob.glob(os.path.join(args.dir, "*.jpg")))
    assert paths, f"no JPEGs in {args.dir}: run DATA_BENCH_JPEG_DIR={args.dir} cargo bench -p swinfc-data"
    files = [open(p, "rb").read() for p in paths]
    n = len(files)
    decoded = [decode(b) for b in files]
    resize = T.Resize((512, 512), interpolation=T.InterpolationMode.BILINEAR)
    resized = [resize(d) for d in decoded]
    rest = T.Compose([T.RandomRotation(15), T.RandomCrop(384), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(MEAN, STD)])
    full = T.Compose([resize, rest])

    rows = [
        ("decode JPEG", per_image(lambda i: decode(files[i % n]), n)),
        ("resize 500x375 -> 512x512 (PIL bilinear)", per_image(lambda i: resize(decoded[i % n]), n)),
        ("rotate + crop 384 + flip + normalise", per_image(lambda i: rest(resized[i % n]), n)),
        ("total: decode + resize + rotate + crop", per_image(lambda i: full(decode(files[i % n])), n)),
    ]
    loader_rows = []
    for workers in (1, 2):
        dl = torch.utils.data.DataLoader(Files(paths, full), batch_size=16, num_workers=workers, prefetch_factor=8)
        t = time.perf_counter()
        count = sum(x.shape[0] for x, _ in dl)
        rate = count / (time.perf_counter() - t)
        loader_rows.append((workers, rate))

    if args.json:
        print(json.dumps({"stages": {k: 1 / v for k, v in rows}, "loader": {str(w): r for w, r in loader_rows}}))
        return
    print(f"torchvision {torchvision.__version__} benchmark: {n} JPEGs from {args.dir}, same transform")
    print(f"{'stage (1 thread)':<44} {'ms/image':>10} {'images/s':>12}")
    for name, t in rows:
        print(f"{name:<44} {t * 1e3:>10.3f} {1 / t:>12.1f}")
    print(f"{'DataLoader (batches of 16)':<44} {'workers':>10} {'images/s':>12} {'per worker':>12}")
    for w, r in loader_rows:
        print(f"{'':<44} {w:>10} {r:>12.1f} {r / w:>12.1f}")


if __name__ == "__main__":
    main()
