#!/usr/bin/env bash
# Runs each benchmark on our side and on PyTorch's, back to back in one run on this machine, and
# prints the ratios ours/theirs in time (lower is better). Run by hand, not by CI.
#
#   bench/compare.sh [train|ops|allreduce|data|all]      (default all)
#
# Environment: PYTHON (an interpreter with torch, timm, torchvision, pyyaml; default python3),
# THREADS (default nproc), ROUNDS (alternating ours/theirs runs per config, default 3),
# TINY_STEPS / SMALL_STEPS (timed steps per run, default 10 / 5), OUT (raw results, default
# target/bench-compare).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-$(nproc)}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-${CARGO_TARGET_DIR:-target}/bench-compare}
what=${1:-all}
mkdir -p "$OUT"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load:$(cut -d' ' -f1-3 /proc/loadavg)"

if [[ $what == train || $what == all ]]; then
    cargo build --release -p swinfc-cli
    swinfc=${CARGO_TARGET_DIR:-target}/release/swinfc
    for cfg in tiny small; do
        steps=$([[ $cfg == tiny ]] && echo "${TINY_STEPS:-10}" || echo "${SMALL_STEPS:-5}")
        : >"$OUT/train-$cfg.jsonl"
        for _ in $(seq "$ROUNDS"); do
            "$swinfc" bench train-step --config "bench/configs/$cfg.yaml" --threads "$THREADS" \
                --steps "$steps" --json >>"$OUT/train-$cfg.jsonl"
            "$PYTHON" bench/torch/train_step.py --config "bench/configs/$cfg.yaml" --threads "$THREADS" \
                --steps "$steps" --json >>"$OUT/train-$cfg.jsonl"
        done
    done
    "$PYTHON" bench/ratios.py train "$OUT"/train-tiny.jsonl "$OUT"/train-small.jsonl
fi

if [[ $what == ops || $what == all ]]; then
    cargo build --release -p swinfc-cli
    "${CARGO_TARGET_DIR:-target}/release/swinfc" bench ops --threads "$THREADS" | tee "$OUT/ops-ours.txt"
    "$PYTHON" bench/torch/ops.py "$THREADS" | tee "$OUT/ops-torch.txt"
    "$PYTHON" bench/ratios.py ops "$OUT/ops-ours.txt" "$OUT/ops-torch.txt"
fi

if [[ $what == allreduce || $what == all ]]; then
    sizes=${ALLREDUCE_SIZES:-16:5,64:5,256:3}
    RING_BENCH_WORLDS=2 RING_BENCH_SIZES=$sizes cargo bench -p swinfc-comm | tee "$OUT/ring.txt"
    "$PYTHON" bench/torch/allreduce_gloo.py --sizes "$sizes" | tee "$OUT/gloo.txt"
    "$PYTHON" bench/ratios.py allreduce "$OUT/ring.txt" "$OUT/gloo.txt"
fi

if [[ $what == data || $what == all ]]; then
    jpegs="$OUT/jpegs"
    DATA_BENCH_JPEG_DIR="$jpegs" cargo bench -p swinfc-data | tee "$OUT/data-ours.txt"
    "$PYTHON" bench/torch/data_torchvision.py "$jpegs" | tee "$OUT/data-torchvision.txt"
    "$PYTHON" bench/ratios.py data "$OUT/data-ours.txt" "$OUT/data-torchvision.txt"
fi
