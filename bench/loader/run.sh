#!/usr/bin/env bash
# Images/s of mdm-loader (Rust, and the mdm_loader Python package when installed) against
# pyarrow+PIL workers and plain libjpeg-turbo decode, on the
# same 256² JPEG shards, at 1 worker on 1 core and 2 workers on 2 cores (the decode bound at 1
# and 2 threads). See bench/RESULTS.md.
# usage: [REF_PY=python-with-torch] bench/loader/run.sh [N=4096] [RUNS=3]
#   REF_PY adds the torch DataLoader and MosaicML Streaming baselines; such a Python:
#   python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.11.0 mosaicml-streaming pyarrow pillow
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-4096}; RUNS=${2:-3}; BATCH=64
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
    taskset -c "$cpus" $BIN bound "$WORK/shards" "$w"
    taskset -c "$cpus" $BIN loader "$WORK/shards" "$w" "$BATCH" "$STEPS"
    taskset -c "$cpus" $BIN loader "$WORK/shards" "$w" "$BATCH" "$STEPS" --no-verify
    # The mdm_loader Python package, when installed (bash loader/python/test.sh installs it).
    ! $PY -c "import mdm_loader" 2>/dev/null || taskset -c "$cpus" $PY bench/python_loader/mdm_py.py "$WORK/shards" "$w" "$BATCH" "$STEPS"
    taskset -c "$cpus" $PY bench/loader/baseline.py "$WORK/shards" "$w" "$BATCH"
    # With a Python that imports torch (REF_PY): the same baseline under a real torch DataLoader,
    # and MosaicML Streaming over the same JPEG bytes in its MDS format.
    if [ -n "${REF_PY:-}" ]; then
      taskset -c "$cpus" "$REF_PY" bench/loader/baseline.py "$WORK/shards" "$w" "$BATCH"
      taskset -c "$cpus" "$REF_PY" bench/loader/mosaic.py "$WORK/shards" "$WORK/mds" "$w" "$BATCH"
    fi
  done
done
