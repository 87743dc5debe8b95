#!/usr/bin/env bash
# Everything a GPU session should check, as one bounded script (the device budget is minutes).
#
#   bash bench/device_check.sh build   # here: release build, stripped copies in target/carry/
#   bash bench/device_check.sh run     # on the GPU machine (device tool, carry target/carry)
#
# `run`, in order of value, each step under its own timeout (SMOKE_S, TRAIN_S, T5_S seconds):
#   1. CUDA end to end: `mdm demo` makes shards (CPU, 20 steps), then `mdm train` of the tiny
#      class model on CUDA in bf16 and `mdm sample --device cuda`;
#   1b. with 2+ GPUs: `mdm train --nproc <GPUs>` on NCCL (DP_S seconds);
#   2. training-step speed, MFU and peak memory of the published configs (bench/train/run.sh cuda);
#   3. T5-XL bf16 encoder throughput against the issue's H100 figures (bench/t5/run.sh cuda).
# Output goes to $OUT (the device tool's folder) or /tmp/device-check; the log is log.txt there.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
carry=target/carry
case "$mode" in
  build)
    set -e
    cargo build --release -p mdm -p mdm-trainer --bins --example train_bench
    cargo build --release -p mdm-ingest --example t5_bench
    mkdir -p "$carry"
    # Line tables make the binaries 50–75 MB; the device tool carries 64 MiB in all.
    strip -o "$carry/mdm" target/release/mdm
    strip -o "$carry/train_bench" target/release/examples/train_bench
    strip -o "$carry/t5_bench" target/release/examples/t5_bench
    du -ch "$carry"/* | tail -1
    echo "carry: [\"$carry\"]; then: bash bench/device_check.sh run"
    ;;
  run)
    out=${OUT:-/tmp/device-check}
    mkdir -p "$out"
    exec > >(tee "$out/log.txt") 2>&1
    export LD_LIBRARY_PATH=${TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    mdm=$PWD/$carry/mdm
    nvidia-smi -L || echo "no nvidia-smi"
    w=$(mktemp -d)
    echo "== 1. CUDA end to end (mdm train bf16 on cuda, mdm sample --device cuda)"
    (
      set -e
      "$mdm" demo --out "$w/demo" --per-class 8 --steps 20 > "$w/demo.log"
      cat > "$w/cuda.toml" <<EOF
model_file = "$PWD/configs/models/tiny_32x32.toml"
[run]
out = "$w/run"
steps = 30
device = "cuda"
precision = "bf16"
log_every = 10
checkpoint_every = 30
[data]
shards = ["$w/demo/shards/imagenet"]
batch_size = 16
resolution = 32
[optim]
lr = 1e-3
[sample]
every = 30
count = 4
steps = 10
EOF
      "$mdm" train --config "$w/cuda.toml"
      "$mdm" sample --checkpoint "$w/run" --class 0 --class 2 --count 2 --steps 20 --device cuda --out "$out/cuda_samples.png"
    ) &
    pid=$!
    ( sleep "${SMOKE_S:-150}"; kill -TERM $pid 2>/dev/null ) & watchdog=$!
    wait $pid && echo "smoke: ok" || echo "smoke: FAILED (rc $?)"
    kill $watchdog 2>/dev/null
    gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
    echo "== 1b. data-parallel on $gpus GPUs (NCCL; needs >= 2)"
    if [ "$gpus" -ge 2 ] && [ -f "$w/cuda.toml" ]; then
      sed -e "s|out = \"$w/run\"|out = \"$w/run_dp\"|" -e 's/^\[sample\]/[sample]\nevery = 0/' -e '/^every = 30/d' "$w/cuda.toml" > "$w/dp.toml"
      timeout "${DP_S:-120}" "$mdm" train --config "$w/dp.toml" --nproc "$gpus" --dist-timeout 60 && echo "dp: ok" || echo "dp: FAILED (rc $?)"
    else
      echo "dp: skipped (one GPU; NCCL refuses two ranks on one device)"
    fi
    echo "== 2. training steps (bench/train/run.sh cuda)"
    TRAIN_BENCH=$PWD/$carry/train_bench STEPS=${STEPS:-12} timeout "${TRAIN_S:-240}" bench/train/run.sh cuda \
      || echo "train bench: rc $?"
    echo "== 3. T5-XL bf16 (bench/t5/run.sh cuda)"
    T5_BENCH=$PWD/$carry/t5_bench timeout "${T5_S:-150}" bench/t5/run.sh cuda || echo "t5 bench: rc $?"
    rm -rf "$w"
    ;;
  *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac
