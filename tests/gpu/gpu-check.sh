#!/usr/bin/env bash
# GPU check of swinfc. Not run by CI: needs one NVIDIA GPU and its driver, libnccl (pip's
# nvidia-nccl-cu12/13 ships only libnccl.so.2) and NVRTC (the CUDA toolkit's, or pip's
# nvidia-cuda-nvrtc). Each part runs even when an earlier one failed; the summary at the end
# lists what passed, and the exit status is 1 if anything failed.
#   0. `swinfc bench probe`: one step on the device and on the CPU from the same weights and batch,
#      compared stage by stage (fp32, bf16); passes when no stage parts from the CPU. When fp32
#      parts, again without Burn's fusion, to say whether fusion is at fault.
#   1. NCCL on Burn CUDA tensors (example nccl-check): world size 1, then 2 ranks on one GPU
#      (NCCL_MULTI_RANK_GPU_ENABLE=1, where this NCCL allows it); correctness and bus bandwidth.
#   2. The first step's gradient norm on CUDA and on the CPU from the same weights and data (1e-4
#      relative). `swinfc train` of a tiny synthetic config on the CPU, then on the CUDA backend,
#      train.precision fp32 and bf16: prints the backend used, the losses and the final top-1;
#      passes when the loss goes down and the top-1 is within 15 points of the CPU run's. Then
#      launched `swinfc worker`s summing their gradients with NCCL: two on the GPU where NCCL
#      allows two ranks on one GPU, else one. Two workers on the GPU summing through the TCP ring
#      (`train.gradient_sum: host`) end with the weights of one worker with grad_accum 2 (1e-4).
#   3. Only if this swinfc has `bench train-step`: our Swin-B@384 micro-batch-8 training step,
#      fp32 and bf16, and PyTorch's (bench/torch/train_step.py) on the same GPU, each with its
#      phases, its threads' CPU time, and the GPU's peak memory and mean utilisation (nvidia-smi
#      every 20 ms); then the kernels per step of the tiny bench config (cubecl's kernel log).
#
# Usage, from anywhere:
#   tests/gpu/gpu-check.sh [MB]
#       builds swinfc and nccl-check (cargo, release, CUDA feature), then runs the checks;
#       MB is the all-reduce size of the bandwidth test (default 256).
#   SWINFC_BIN_DIR=DIR tests/gpu/gpu-check.sh [MB]
#       no build: runs the prebuilt `swinfc` and `nccl-check` in DIR (built elsewhere with
#       `cargo build --release --features swinfc-cli/cuda -p swinfc-cli` and
#       `cargo build --release -p swinfc-comm --features cuda --example nccl-check`), for a GPU
#       machine without a Rust toolchain. DIR may hold them gzipped (swinfc.gz, nccl-check.gz).
# Environment: CHECK_STEPS (training steps, default 200), BENCH_STEPS (default 10), CHECK_LOG_DIR
# (keep the training logs there), GPU_CHECK_BACKEND=cpu: the CPU stand-in, on a machine without
# a GPU: every part that does not need CUDA or NCCL runs with the CPU as the device (the probe,
# the training runs and their comparisons, the bench on the tiny config), the rest is skipped,
# so the script's own logic is tested before a device run spends its minutes on it.
set -uo pipefail
# Relative directories are taken from where the script was started.
bin_src=${SWINFC_BIN_DIR:+$(cd "$SWINFC_BIN_DIR" && pwd)}
keep_logs=${CHECK_LOG_DIR:+$(mkdir -p "$CHECK_LOG_DIR" && cd "$CHECK_LOG_DIR" && pwd)}
cd "$(dirname "$0")/../.."
root=$(pwd)
mb=${1:-256}
steps=${CHECK_STEPS:-200}
backend=${GPU_CHECK_BACKEND:-cuda}
case $backend in cuda | cpu) ;; *) echo "GPU_CHECK_BACKEND is cuda or cpu, not $backend" >&2; exit 2 ;; esac
# The environment of the device side of each comparison: the GPU, or the CPU for the stand-in.
device_env=()
[ "$backend" = cpu ] && device_env=(CUDA_VISIBLE_DEVICES=)
bench_steps=${BENCH_STEPS:-10}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Plain log lines (no colour codes), so the losses can be read back.
export NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} RUST_BACKTRACE=0

results=()
pass() { results+=("PASS  $1"); echo "-- PASS: $1"; }
fail() { results+=("FAIL  $1"); echo "-- FAIL: $1"; }
summary() {
  [ -n "$keep_logs" ] && cp "$work"/*.log "$keep_logs"/ 2>/dev/null
  echo "== summary"
  printf '%s\n' "${results[@]}"
  for r in "${results[@]}"; do [[ $r == FAIL* ]] && exit 1; done
  exit 0
}

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: no GPU visible"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo "no PyTorch"

# --- Shared libraries. cudarc dlopens libcuda, libnccl and libnvrtc by name, and never tries
# libnccl.so.2; pip's wheels are not on the loader's path. Links to them go in a run-local dir.
libdir="$work/lib"
mkdir -p "$libdir"
pylib() { # the first file matching $1 under the installed nvidia.* Python packages
  python3 - "$1" 2>/dev/null <<'EOF'
import glob, os, sys
try:
    import nvidia
except ImportError:
    sys.exit(0)
for base in nvidia.__path__:
    hits = sorted(glob.glob(os.path.join(base, "**", sys.argv[1]), recursive=True))
    if hits:
        print(hits[0])
        break
EOF
}
find_lib() { # $1: soname pattern for ldconfig, $2: glob for the toolkit and pip
  local hit
  hit=$(ldconfig -p 2>/dev/null | awk -v p="$1" '$1 ~ p {print $NF; exit}')
  [ -z "$hit" ] && hit=$(ls /usr/local/cuda/lib64/$2 /usr/local/cuda/targets/x86_64-linux/lib/$2 2>/dev/null | head -1)
  [ -z "$hit" ] && hit=$(pylib "$2")
  echo "$hit"
}
nccl=$(find_lib '^libnccl\\.so\\.2$' 'libnccl.so.2')
nvrtc=$(find_lib '^libnvrtc\\.so\\.1[0-9]$' 'libnvrtc.so.1[0-9]')
for pair in "libnccl.so:$nccl" "libnvrtc.so:$nvrtc"; do
  name=${pair%%:*} path=${pair#*:}
  if [ -n "$path" ] && [ -e "$path" ]; then
    ln -sf "$path" "$libdir/$name"
    # NVRTC loads its builtins library from its own directory.
    export LD_LIBRARY_PATH="$libdir:$(dirname "$path")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "$name -> $path"
  else
    echo "$name: not found (ldconfig, /usr/local/cuda, python nvidia.*); the checks needing it will fail"
  fi
done

# --- Binaries.
if [ -n "$bin_src" ]; then
  bindir="$work/bin"
  mkdir -p "$bindir"
  for b in swinfc nccl-check swinfc-launch; do
    if [ ! -e "$bin_src/$b" ] && [ ! -e "$bin_src/$b.gz" ] && [ "$backend" = cpu ]; then continue; fi
    if [ -e "$bin_src/$b.gz" ]; then
      gzip -dc "$bin_src/$b.gz" >"$bindir/$b"
    else
      cp "$bin_src/$b" "$bindir/$b"
    fi
    chmod +x "$bindir/$b"
  done
  swinfc=$bindir/swinfc nccl_check=$bindir/nccl-check launch=$bindir/swinfc-launch
elif [ "$backend" = cpu ]; then
  cargo build --release -p swinfc-cli || { fail "build swinfc"; summary; }
  swinfc=${CARGO_TARGET_DIR:-target}/release/swinfc launch=${CARGO_TARGET_DIR:-target}/release/swinfc-launch
else
  cargo build --release --features swinfc-cli/cuda -p swinfc-cli || { fail "build swinfc"; summary; }
  cargo build --release -p swinfc-comm --features cuda --example nccl-check || { fail "build nccl-check"; summary; }
  target=${CARGO_TARGET_DIR:-target}
  swinfc=$target/release/swinfc nccl_check=$target/release/examples/nccl-check
fi

echo "== 0. probe: one step on $backend against the CPU, stage by stage"
printf '%s\n' "model: {preset: tiny, img_size: 32, embed_dim: 32, branch_dim: 64, ea_memory: 8, num_classes: 6}" \
  "train: {micro_batch: 8}" >"$work/probe.yaml"
precisions=(fp32)
[ "$backend" = cuda ] && precisions=(fp32 bf16)
for precision in "${precisions[@]}"; do
  if timeout 120 "$swinfc" bench probe --backend "$backend" --precision "$precision" --config "$work/probe.yaml"; then
    pass "probe $precision: no stage parts from the CPU"
  else
    fail "probe $precision: see the first stage that parts above"
    # Without Burn's fusion (every operation its own kernel): agreeing there points at fusion.
    if [ "$precision" = fp32 ] && [ "$backend" = cuda ]; then
      echo "-- probe fp32 again, without fusion"
      if timeout 120 "$swinfc" bench probe --backend cuda --no-fusion --config "$work/probe.yaml"; then
        echo "probe fp32 without fusion: no stage parts (the fault is in fusion)"
      else
        echo "probe fp32 without fusion: parts too (the fault is not fusion's alone)"
      fi
    fi
  fi
done

two_ranks=no
if [ "$backend" = cuda ]; then
  echo "== 1. NCCL, world size 1"
  if timeout 90 "$nccl_check" 1 "$mb"; then pass "nccl world 1"; else fail "nccl world 1"; fi

  echo "== 1. NCCL, 2 ranks on one GPU"
  if NCCL_MULTI_RANK_GPU_ENABLE=1 timeout 90 "$nccl_check" 2 "$mb"; then
    two_ranks=yes
    pass "nccl 2 ranks"
  else
    fail "nccl 2 ranks (this NCCL may refuse two ranks on one GPU; see above)"
  fi
else
  echo "== 1. NCCL: skipped on the CPU stand-in"
fi

# --- 2. Training on the CUDA backend.
cat >"$work/tiny.yaml" <<EOF
run: {name: gpu-check, dir: $work/run, seed: 5}
model: {preset: tiny, img_size: 32, embed_dim: 32, branch_dim: 64, ea_memory: 8, num_classes: 6, drop_path: 0.0}
data: {dataset: synthetic, classes: 6, train_per_class: 16, test_per_class: 4, img_size: 36, resize: 36, crop: 32, num_threads: 2}
train: {global_batch: 16, micro_batch: 8, total_steps: $steps, warmup_steps: 2, lr_backbone: 0.05, lr_new: 0.05, grad_clip: 1.0, weight_decay: 0.0001}
eval: {every_steps: 0}
checkpoint: {every_steps: 0, keep_last: 1}
metrics: {listen: '127.0.0.1:0', log_every: 1}
EOF

show_error() { # the first error lines and the end of a failed run's log
  grep -m6 -E 'Error|ERROR|panicked|WARN' "$1"
  echo "..."
  tail -6 "$1"
}

# Reads a training log: prints the backend line and the losses; passes when the mean of the last
# five losses is below the mean of the first five.
check_losses() { # $1 label, $2 log
  local label=$1 log=$2
  grep -m1 'backend:' "$log" | sed 's/^.*backend:/backend:/'
  local losses
  losses=$(grep ' step ' "$log" | grep -oE ' loss=[^ ]+' | cut -d= -f2 | tr '\n' ' ')
  echo "$label losses: $losses"
  if [ -z "$losses" ]; then
    tail -20 "$log"
    fail "$label: no loss logged"
    return
  fi
  if echo "$losses" | awk '{ if (NF < 10) exit 1; f = 0; l = 0;
                             for (i = 1; i <= 5; i++) { f += $i / 5; l += $(NF - 5 + i) / 5 }
                             printf "mean of the first 5 %.4f, of the last 5 %.4f\n", f, l; exit !(l < f) }'; then
    pass "$label: loss goes down"
  else
    tail -5 "$log"
    fail "$label: loss did not go down"
  fi
}

# The first step's gradient norm from the same weights and data must be the CPU's: the model's
# own gradients match on both backends, so a difference points at the flattening, the sum or the
# norm of the gradient on the device (the probe above says which).
echo "== 2. first-step gradient norm, CPU vs $backend, same initial weights"
step1() { # $1: run dir; then environment assignments (CUDA_VISIBLE_DEVICES= runs it on the CPU)
  local dir=$1
  shift
  env "$@" timeout 120 "$swinfc" train "$work/tiny.yaml" --resume none --set train.total_steps=1 \
    --set train.warmup_steps=0 --set train.pretrained="$work/init.safetensors" --set run.dir="$dir" 2>&1 |
    grep -m1 ' step ' | grep -oE 'grad_norm=[^ ]+' | cut -d= -f2
}
CUDA_VISIBLE_DEVICES= timeout 60 "$swinfc" train "$work/tiny.yaml" --resume none --set train.total_steps=1 \
  --set train.warmup_steps=0 --set run.dir="$work/run-init" >/dev/null 2>&1
cp "$work/run-init/checkpoints/step-00000001/model.safetensors" "$work/init.safetensors" 2>/dev/null
cpu_norm=$(step1 "$work/run-cpu" CUDA_VISIBLE_DEVICES=)
device_norm=$(step1 "$work/run-device" "${device_env[@]}")
echo "grad_norm at step 1: cpu ${cpu_norm:-?}, $backend ${device_norm:-?}"
if [ -n "$cpu_norm" ] && [ -n "$device_norm" ] &&
  awk -v a="$cpu_norm" -v b="$device_norm" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-4 * a) }'; then
  pass "step-1 gradient norm: $backend equals CPU (1e-4)"
else
  fail "step-1 gradient norm: $backend differs from CPU by more than 1e-4"
fi

# The final top-1 of the combined head, from the run's summary (`  combined  41.7% ...`).
final_top1() { awk '$1 == "combined" { sub("%", "", $2); print $2; exit }' "$1"; }

train_run() { # $1 label, $2 log; then the command; prints the exit code and the time
  local label=$1 log=$2 start rc
  shift 2
  start=$(date +%s%N)
  timeout 240 "$@" >"$log" 2>&1
  rc=$?
  echo "$label: exit $rc after $((($(date +%s%N) - start) / 1000000)) ms"
  return $rc
}

echo "== 2. swinfc train, cpu, fp32: the reference run ($steps steps)"
cpu_log="$work/train-cpu.log"
if train_run "cpu fp32" "$cpu_log" env CUDA_VISIBLE_DEVICES= "$swinfc" train "$work/tiny.yaml" \
  --resume none --set run.dir="$work/run-cpu-ref"; then
  check_losses "train cpu fp32" "$cpu_log"
else
  show_error "$cpu_log"
  fail "train cpu fp32"
fi
cpu_top1=$(final_top1 "$cpu_log")
echo "cpu final top-1: ${cpu_top1:-?}%"

for precision in "${precisions[@]}"; do
  echo "== 2. swinfc train, $backend, $precision"
  log="$work/train-$precision.log"
  if ! train_run "$backend $precision" "$log" env "${device_env[@]}" "$swinfc" train "$work/tiny.yaml" --resume none \
    --set train.precision=$precision --set run.dir="$work/run-$precision"; then
    show_error "$log"
    fail "train $precision"
    continue
  fi
  check_losses "train $precision" "$log"
  top1=$(final_top1 "$log")
  echo "$backend $precision final top-1: ${top1:-?}% (cpu ${cpu_top1:-?}%)"
  if [ -n "$top1" ] && [ -n "$cpu_top1" ] &&
    awk -v a="$top1" -v b="$cpu_top1" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 15) }'; then
    pass "train $precision: top-1 within 15 points of the CPU run's"
  else
    fail "train $precision: top-1 not within 15 points of the CPU run's"
  fi
done

# Launched workers take the NCCL path (a lone `swinfc train` has nobody to sum with); two of them
# where this NCCL runs two ranks on one GPU, else one.
if [ "$backend" = cuda ]; then
  world=1
  [ $two_ranks = yes ] && world=2
  echo "== 2. $world launched swinfc worker(s) on one GPU, gradients summed with NCCL"
  log="$work/workers.log"
  NCCL_MULTI_RANK_GPU_ENABLE=1 timeout 120 "$nccl_check" spawn $world "$swinfc" worker "$work/tiny.yaml" \
    --resume none --set run.dir="$work/run-workers" >"$log" 2>&1
  rc=$?
  grep -E 'NCCL communicator ready' "$log" | head -2
  if [ $rc -ne 0 ]; then show_error "$log"; fail "$world worker(s): exit $rc"; else check_losses "$world worker(s), NCCL" "$log"; fi
else
  echo "== 2. launched workers with NCCL: skipped on the CPU stand-in"
fi

# Two workers on the one GPU summing through the host and the TCP ring (`train.gradient_sum:
# host`; NCCL refuses two ranks on one GPU) against one worker with grad_accum 2 from the same
# start: the final weights must agree (1e-4 of each tensor's largest value, fp32). The stand-in
# launches two CPU workers instead.
echo "== 2. two workers summing through the TCP ring vs one with grad_accum 2, $backend fp32"
ring_set=(--resume none --set train.total_steps=20 --set train.gradient_sum=host)
train_run "1 worker, grad_accum 2" "$work/accum2.log" env "${device_env[@]}" "$swinfc" train "$work/tiny.yaml" \
  "${ring_set[@]}" --set run.dir="$work/run-accum2"
rc_one=$?
if [ "$backend" = cuda ]; then
  train_run "2 workers, tcp ring" "$work/ring2.log" "$nccl_check" spawn 2 "$swinfc" worker "$work/tiny.yaml" \
    "${ring_set[@]}" --set run.dir="$work/run-ring2"
else
  train_run "2 workers, tcp ring" "$work/ring2.log" "$launch" --cpu 2 "$work/tiny.yaml" \
    "${ring_set[@]}" --set run.dir="$work/run-ring2"
fi
rc_two=$?
final_weights() { ls -d "$1"/checkpoints/step-* 2>/dev/null | tail -1 | sed 's|$|/model.safetensors|'; }
if [ $rc_one -ne 0 ]; then
  show_error "$work/accum2.log"
  fail "1 worker with grad_accum 2: exit $rc_one"
elif [ $rc_two -ne 0 ]; then
  show_error "$work/ring2.log"
  fail "2 workers through the TCP ring: exit $rc_two"
elif python3 tests/gpu/compare_weights.py "$(final_weights "$work/run-ring2")" \
  "$(final_weights "$work/run-accum2")" 1e-4; then
  pass "2 workers through the TCP ring equal 1 worker with grad_accum 2 (1e-4)"
else
  fail "2 workers through the TCP ring differ from 1 worker with grad_accum 2"
fi

# --- 3. The training-step benchmark, ours and PyTorch's, where this build has it.
# Runs a command while nvidia-smi samples the GPU every 20 ms, then prints the peak memory in use
# and the mean utilisation over the run (of the whole GPU: nothing else runs on it).
sampled() { # $1 label; then the command
  local label=$1 samples="$work/smi.csv" sampler="" rc
  shift
  : >"$samples"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 20 >"$samples" 2>/dev/null &
    sampler=$!
  fi
  "$@"
  rc=$?
  if [ -n "$sampler" ]; then kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null; fi
  awk -F', *' -v label="$label" '$2 ~ /^[0-9]+$/ { n++; u += $1; if ($2 > m) m = $2 }
    END { if (n) printf "%s: peak GPU memory %d MiB, mean utilisation %.0f %% (%d samples)\n", label, m, u / n, n
          else printf "%s: no GPU samples (no nvidia-smi)\n", label }' "$samples"
  return $rc
}

if [ "$backend" = cpu ]; then
  echo "== 3. training step, tiny config, cpu (the stand-in's bench)"
  if sampled "swinfc cpu" timeout 120 "$swinfc" bench train-step --config bench/configs/tiny.yaml --steps 2 --warmup 1; then
    pass "bench swinfc cpu"
  else
    fail "bench swinfc cpu"
  fi
  summary
fi
echo "== 3. Swin-B@384 training step, micro-batch 8"
if "$swinfc" bench train-step --help >/dev/null 2>&1 && [ -e bench/configs/swin-b-384.yaml ]; then
  for precision in fp32 bf16; do
    echo "-- swinfc, $precision"
    if sampled "swinfc $precision" timeout 150 "$swinfc" bench train-step --backend cuda --precision "$precision" \
      --config bench/configs/swin-b-384.yaml --steps "$bench_steps"; then
      pass "bench swinfc $precision"
    else
      fail "bench swinfc $precision"
    fi
  done
  for precision in fp32 bf16; do
    echo "-- PyTorch, $precision"
    if sampled "torch $precision" timeout 120 python3 bench/torch/train_step.py --device cuda --precision "$precision" \
      --config bench/configs/swin-b-384.yaml --steps "$bench_steps"; then
      pass "bench torch $precision"
    else
      fail "bench torch $precision"
    fi
  done
else
  echo "skipped: this swinfc has no 'bench train-step' (or bench/configs/swin-b-384.yaml is missing)"
fi

# Kernels per step, from cubecl's kernel log (docs/benchmarks.md): the log's lines after 3 timed
# steps minus after 1, halved. The tiny bench config, so that it costs seconds.
kernels_per_step() { # $1 precision
  local counts=() steps
  for steps in 1 3; do
    rm -f "$work/kernels.log"
    (cd "$work" && printf '[profiling.logger]\nlevel = "minimal"\nfile = "%s"\n' "$work/kernels.log" >cubecl.toml &&
      timeout 120 "$swinfc" bench train-step --backend cuda --precision "$1" --config "$root/bench/configs/tiny.yaml" \
        --steps $steps --warmup 1 >/dev/null 2>&1)
    sleep 1 # the log is written by a background task
    counts+=("$(grep -c Executing "$work/kernels.log" 2>/dev/null || echo 0)")
  done
  rm -f "$work/cubecl.toml"
  echo $(((counts[1] - counts[0]) / 2))
}
for precision in fp32 bf16; do
  echo "== 3. kernels per training step, tiny config, cuda $precision: $(kernels_per_step $precision)"
done

summary
