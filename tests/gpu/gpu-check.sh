#!/usr/bin/env bash
# GPU check of swinfc-comm's NCCL path. Not run by CI: needs one NVIDIA GPU, its driver, and
# libnccl (e.g. pip's nvidia-nccl-cu12/13, which ships only libnccl.so.2).
#   1. builds with --features cuda;
#   2. world size 1: NCCL all-reduce + broadcast on a Burn CUDA tensor, checked;
#   3. 2 ranks on the same GPU (NCCL_MULTI_RANK_GPU_ENABLE=1) if this NCCL allows it;
#   4. prints bus bandwidth (nccl-tests conventions).
# Usage: tests/gpu/gpu-check.sh [MB]     (default 256)
set -euo pipefail
cd "$(dirname "$0")/../.."
mb=${1:-256}

# cudarc looks for libnccl.so, never libnccl.so.2: give it a link in a run-local directory.
libdir=$(mktemp -d)
trap 'rm -rf "$libdir"' EXIT
nccl=$(ldconfig -p 2>/dev/null | awk '/libnccl\.so\.2 /{print $NF; exit}')
if [ -z "$nccl" ]; then
  nccl=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib", "libnccl.so.2"))' 2>/dev/null || true)
fi
if [ -n "$nccl" ] && [ -e "$nccl" ]; then
  ln -s "$nccl" "$libdir/libnccl.so"
  export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "libnccl: $nccl"
else
  echo "libnccl.so.2 not found (ldconfig, python nvidia.nccl); the check will report it missing"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

cargo build --release -p swinfc-comm --features cuda --example nccl-check
bin=target/release/examples/nccl-check

echo "== world size 1"
"$bin" 1 "$mb"

echo "== 2 ranks on one GPU"
if NCCL_MULTI_RANK_GPU_ENABLE=1 timeout 300 "$bin" 2 "$mb"; then
  echo "2-rank check passed"
else
  echo "2-rank check failed (this NCCL may not allow two ranks on one GPU); see the output above"
fi
