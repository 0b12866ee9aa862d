#!/usr/bin/env python3
"""Prints the ours/theirs tables of bench/compare.sh from the raw outputs it saved.

    ratios.py train FILE.jsonl...        JSON lines of `swinfc bench train-step` and train_step.py
    ratios.py allreduce RING.txt GLOO.txt tables of `cargo bench -p swinfc-comm` and allreduce_gloo.py
    ratios.py data OURS.txt THEIRS.txt    tables of `cargo bench -p swinfc-data` and data_torchvision.py
    ratios.py ops OURS.txt THEIRS.txt     tables of `swinfc bench ops` and bench/torch/ops.py

Every ratio is ours/theirs in time: below 1 we are faster.
"""
import json
import statistics
import sys


def train(paths):
    print(f"{'config':<8} {'side':<32} {'runs':>4} {'median s':>9} {'min s':>8} {'img/s':>7} "
          f"{'fwd':>7} {'bwd':>7} {'sync':>7} {'opt':>7}")
    for path in paths:
        runs = [json.loads(line) for line in open(path) if line.strip()]
        sides = {}
        for r in runs:
            sides.setdefault(r["implementation"].split()[0], []).append(r)
        name = path.rsplit("/", 1)[-1].removeprefix("train-").removesuffix(".jsonl")
        summary = {}
        for side, rs in sides.items():
            # Median of the runs' medians (robust to one disturbed run), and the best step seen.
            med = statistics.median(r["step_seconds_median"] for r in rs)
            best = min(r["step_seconds_min"] for r in rs)
            ph = {k: statistics.median(r["phases_median"][k] for r in rs) for k in rs[0]["phases_median"]}
            summary[side] = (med, best)
            print(f"{name:<8} {rs[0]['implementation']:<32} {len(rs):>4} {med:>9.4f} {best:>8.4f} "
                  f"{rs[0]['micro_batch'] / med:>7.2f} {ph['forward']:>7.4f} {ph['backward']:>7.4f} "
                  f"{ph['grad_sync']:>7.4f} {ph['optimizer']:>7.4f}")
        if {"swinfc", "pytorch"} <= summary.keys():
            (om, ob), (tm, tb) = summary["swinfc"], summary["pytorch"]
            print(f"{name:<8} ratio ours/pytorch: median {om / tm:.2f}x, best step {ob / tb:.2f}x")


def table_rows(path):
    rows = []
    for line in open(path):
        parts = line.split()
        if len(parts) == 6 and all(p.replace(".", "", 1).isdigit() for p in parts):
            rows.append([float(p) for p in parts])
    return rows


def allreduce(ring, gloo):
    ours = {(r[0], r[1]): r for r in table_rows(ring)}
    theirs = {(r[0], r[1]): r for r in table_rows(gloo)}
    print(f"{'ranks':>5} {'MB':>5} {'ring busbw GB/s':>16} {'gloo busbw GB/s':>16} {'time ours/gloo':>15}")
    for key in sorted(ours.keys() & theirs.keys()):
        o, t = ours[key][5], theirs[key][5]
        print(f"{int(key[0]):>5} {int(key[1]):>5} {o:>16.3f} {t:>16.3f} {t / o:>15.2f}")


def stage_rows(path):
    rows = {}
    for line in open(path):
        for name in ("decode JPEG", "resize 500x375", "rotate + crop", "total: decode"):
            if line.startswith(name):
                rows[name] = float(line.split()[-2])  # ms/image
    return rows


def data(ours_path, theirs_path):
    ours, theirs = stage_rows(ours_path), stage_rows(theirs_path)
    print(f"{'stage (1 thread)':<20} {'ours ms':>9} {'tv ms':>9} {'time ours/tv':>13} {'speed-up':>9}")
    for name in ours:
        if name in theirs:
            print(f"{name:<20} {ours[name]:>9.3f} {theirs[name]:>9.3f} {ours[name] / theirs[name]:>13.2f} "
                  f"{theirs[name] / ours[name]:>8.2f}x")


def op_rows(path):
    rows = {}
    for line in open(path):
        name, _, value = line.rstrip().rpartition(" ")
        try:
            rows[name.strip()] = float(value)
        except ValueError:
            pass  # the header
    return rows


def ops(ours_path, theirs_path):
    ours, theirs = op_rows(ours_path), op_rows(theirs_path)
    print(f"{'op, fwd+bwd':<40} {'burn ms':>9} {'torch ms':>9} {'ours/torch':>11}")
    for name in ours:
        if name in theirs:
            print(f"{name:<40} {ours[name]:>9.3f} {theirs[name]:>9.3f} {ours[name] / theirs[name]:>10.1f}x")


if __name__ == "__main__":
    kind, files = sys.argv[1], sys.argv[2:]
    {"train": lambda: train(files), "allreduce": lambda: allreduce(*files), "data": lambda: data(*files),
     "ops": lambda: ops(*files)}[kind]()
