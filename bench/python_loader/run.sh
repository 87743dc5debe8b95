#!/usr/bin/env bash
# Images/s of the mdm_loader Python package against the Rust loader it wraps and a hand-written
# pyarrow + PIL DataLoader, on the same 256² JPEG shards (bench/loader's data), at 1 worker on 1
# core and 2 workers on 2 cores. Needs the wheel installed (loader/python/test.sh does it).
# usage: bench/python_loader/run.sh [N=2048] [RUNS=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-2048}; RUNS=${2:-3}; BATCH=64
PY=.venv/bin/python
WORK=${BENCH_DIR:-$(mktemp -d)}
cargo build --release -q -p mdm-loader --example bench_loader
BIN=target/release/examples/bench_loader
[ -d "$WORK/jpegs" ] || $PY bench/loader/make_jpegs.py "$WORK/jpegs" "$N"
[ -f "$WORK/shards/manifest.json" ] || $BIN make "$WORK/jpegs" "$WORK/shards"
cat "$WORK"/shards/*.parquet > /dev/null   # warm the page cache for everyone
STEPS=$(( N / BATCH - 2 ))   # one epoch, after the warm-up batch
for run in $(seq "$RUNS"); do
  echo "# run $run"
  for cores in "0:1" "0,1:2"; do
    cpus=${cores%%:*}; w=${cores##*:}
    taskset -c "$cpus" $BIN loader "$WORK/shards" "$w" "$BATCH" "$STEPS"
    taskset -c "$cpus" $PY bench/python_loader/mdm_py.py "$WORK/shards" "$w" "$BATCH" "$STEPS"
    taskset -c "$cpus" $PY bench/loader/baseline.py "$WORK/shards" "$w" "$BATCH"
  done
done
