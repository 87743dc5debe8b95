#!/usr/bin/env bash
# Training-step throughput (issue 8): `mdm train`'s step (flat AdamW, clip 2.0, EMA) against the
# same forward/backward with libtorch's per-tensor AdamW, in one process, on synthetic batches.
#
#   bench/train/run.sh cpu    # tiny configs on CPU (what a machine without GPU can measure)
#   bench/train/run.sh cuda   # the published configs at the reference batch sizes, bf16
#
# Prints one JSON line per (config, variant): median step time, img/s, peak RSS, the model
# FLOPs of a step (tflop_per_step: 3 × forward, mdm_trainer::flops), achieved_tflops and, where
# a peak is known, mfu. PEAK_TFLOPS (cuda mode, default 989: H100/H200 dense bf16; 312 for an
# A100) sets the peak; on CPU the MFU is printed only when PEAK_TFLOPS is set.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-cpu}
steps=${STEPS:-15}
# On a GPU machine without Rust, carry a binary built here (TRAIN_BENCH=path) and run it with
# that machine's torch lib/ on LD_LIBRARY_PATH; it loads libtorch_cuda.so itself.
bin=${TRAIN_BENCH:-target/release/examples/train_bench}
if command -v cargo >/dev/null; then cargo build --release -q -p mdm-trainer --example train_bench; fi
case "$mode" in
  cpu)
    for threads in 1 2; do
      for m in tiny_32x32:16 tiny_64x64:16; do
        OMP_NUM_THREADS=$threads "$bin" --device cpu --model "configs/models/${m%%:*}.toml" --batch "${m##*:}" --steps "$steps" ${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"}
      done
      # Text-to-video: 4 clips of 4 frames.
      OMP_NUM_THREADS=$threads "$bin" --device cpu --model configs/models/tiny_video_32x32.toml --batch 4 --frames 4 --steps "$steps" ${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"}
    done
    ;;
  cuda)
    # Reference (ml-mdm on an H100, bf16 autocast, AdamW, clip 2.0, T5 states 128x2048):
    # 64² b32 212.6 img/s (torch.compile), 256² b8 49.0, 1024² b2 5.4 eager.
    # Peak GPU memory: nvidia-smi sampled every 100 ms while each config runs.
    # Then the text-to-video webvid_64x64: 2 clips of 16 frames (32 frames of 64²).
    peak=${PEAK_TFLOPS:-989}
    for m in cc12m_64x64:32:1 cc12m_256x256:8:1 cc12m_1024x1024:2:1 webvid_64x64:2:16; do
      IFS=: read -r name batch frames <<< "$m"
      mem=$(mktemp)
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$mem" &
      smi=$!
      "$bin" --device cuda --precision bf16 --tokens 128 --model "configs/models/$name.toml" --batch "$batch" --frames "$frames" --steps "$steps" --peak-tflops "$peak"
      kill "$smi"
      echo "{\"model\":\"$name\",\"peak_gpu_mem_mib\":$(sort -n "$mem" | tail -1)}"
      rm -f "$mem"
    done
    ;;
  *) echo "usage: $0 cpu|cuda" >&2; exit 2 ;;
esac
