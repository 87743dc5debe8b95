#!/usr/bin/env bash
# Data-parallel training (issue 14): the same global batch on 1 rank and on N ranks through
# `mdm train --nproc`, on real shards; median step time (steps 5.., wall clock of rank 0),
# median gradient all-reduce time per step (Gloo) and the per-rank step time.
#
#   bench/train/dist.sh cpu [RUNS=3]     # tiny_32 (b16) and tiny_64 NestedUNet (b12, mixed),
#                                        # 1 rank x 2 threads vs 2 ranks x 1 thread, generated data
#   bench/train/dist.sh cuda SHARDS [N=8]  # cc12m_64 on a GPU node: 1 GPU vs N GPUs
#
# Prints one JSON line per (config, ranks). See bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-cpu}
BIN=${MDM:-target/release/mdm}
if command -v cargo >/dev/null; then cargo build --release -q --bin mdm; fi
WORK=${BENCH_DIR:-$(mktemp -d)}
STEPS=${STEPS:-30}

# Median of a losses.jsonl field over steps 5.. .
summary() { # run-dir label ranks
  python3 - "$1" "$2" "$3" <<'PY'
import json, statistics, sys
run, label, ranks = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [json.loads(l) for l in open(f"{run}/losses.jsonl")][4:]
med = lambda k: statistics.median(r[k] for r in rows) if rows and k in rows[0] else None
out = {"config": label, "ranks": ranks, "steps": len(rows), "step_s": med("step_s"),
       "img_per_s": rows[0]["samples"] and (rows[-1]["samples"] - rows[0]["samples"]) / sum(r["step_s"] for r in rows[1:]),
       "allreduce_s": med("comm_s")}
if ranks > 1:
    out["slowest_rank_compute_s"] = statistics.median(max(r["rank_step_s"]) for r in rows)
    out["allreduce_frac"] = out["allreduce_s"] / out["step_s"]
print(json.dumps(out))
PY
}

config() { # name model batch extra-data-lines threads device shards
  cat > "$WORK/$1.toml" <<TOML
model_file = "$PWD/configs/models/$2"

[run]
out = "$WORK/runs/$1"
steps = $STEPS
device = "$6"
threads = $5
log_every = 1000
checkpoint_every = 100000

[data]
shards = ["$7"]
batch_size = $3
workers = 1
$4

[optim]
lr = 1e-4
TOML
}

case "$mode" in
  cpu)
    RUNS=${2:-3}
    if [ ! -f "$WORK/shards/manifest.json" ]; then
      for c in 1 2 3 4; do
        mkdir -p "$WORK/src/train/n0100000$c"
        ffmpeg -loglevel error -f lavfi -i "testsrc=size=72x64:rate=1,hue=h=$((c * 90))" -frames:v 64 "$WORK/src/train/n0100000$c/img_%03d.JPEG"
      done
      "$BIN" ingest imagenet --src "$WORK/src" --split train --out "$WORK/shards" --resolution 64 --extra-resolution 32 --quiet
    fi
    for run in $(seq "$RUNS"); do
      for spec in "tiny_32x32.toml:16:resolution = 32" "tiny_64x64.toml:12:mixed_ratio = \"64:2,32:1\""; do
        IFS=: read -r model batch extra <<< "$spec"
        name=${model%%x*}
        rm -rf "$WORK/runs"
        config "${name}_1" "$model" "$batch" "$extra" 2 cpu "$WORK/shards"
        "$BIN" train --config "$WORK/${name}_1.toml" --quiet
        summary "$WORK/runs/${name}_1" "$name b$batch" 1
        config "${name}_2" "$model" $((batch / 2)) "$extra" 1 cpu "$WORK/shards"
        "$BIN" train --config "$WORK/${name}_2.toml" --nproc 2 --quiet
        summary "$WORK/runs/${name}_2" "$name b$batch" 2
      done
    done
    ;;
  cuda)
    SHARDS=${2:?usage: $0 cuda SHARDS [N]}; N=${3:-8}
    # cc12m_64 at ml-mdm's per-GPU batch 32 (bf16): global batch 32 on 1 GPU, 32*N on N GPUs
    # (461M fp32 gradients = 1.8 GB all-reduced per step).
    for ranks in 1 "$N"; do
      rm -rf "$WORK/runs"
      config "c64_$ranks" cc12m_64x64.toml 32 'resolution = 64' 8 cuda "$SHARDS"
      sed -i 's/^\[run\]/[run]\nprecision = "bf16"/' "$WORK/c64_$ranks.toml"
      "$BIN" train --config "$WORK/c64_$ranks.toml" --nproc "$ranks" --quiet
      summary "$WORK/runs/c64_$ranks" "cc12m_64 b32/GPU" "$ranks"
    done
    ;;
  *) echo "usage: $0 cpu [RUNS] | cuda SHARDS [N]" >&2; exit 2 ;;
esac
