#!/usr/bin/env bash
# Images/s per core: `mdm ingest imagenet` (one worker thread) against the PIL baseline and the
# plain libjpeg-turbo decode+encode bound, on the same generated photos. See bench/RESULTS.md.
# usage: bench/ingest/run.sh [N=500] [R=256] [Q=90]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-500}; R=${2:-256}; Q=${3:-90}
PY=.venv/bin/python
WORK=${BENCH_DIR:-$(mktemp -d)}
[ -d "$WORK/photos/train" ] || $PY bench/ingest/make_photos.py "$WORK/photos" "$N"
cargo build --release -q -p mdm
BIN=target/release/mdm
cat "$WORK"/photos/train/*/* > /dev/null   # warm the page cache for everyone
for run in 1 2 3; do
  rm -rf "$WORK/out"
  t0=$(date +%s.%N)
  taskset -c 0 $BIN ingest imagenet --src "$WORK/photos" --split train --out "$WORK/out" --threads 1 --quiet \
      --resolution "$R" --quality "$Q" > /dev/null
  t1=$(date +%s.%N)
  # The process start alone (the binary links libtorch, whose static initialisers register
  # its operators): the same fixed cost without any image.
  taskset -c 0 $BIN --help > /dev/null
  t2=$(date +%s.%N)
  echo "mdm (1 worker, taskset 1 core) $(echo "$N / ($t1 - $t0)" | bc -l | xargs printf '%.1f') img/s ($N images, end to end incl. parquet)," \
       "process start $(echo "$t2 - $t1" | bc -l | xargs printf '%.2f') s, without it $(echo "$N / ($t1 - $t0 - $t2 + $t1)" | bc -l | xargs printf '%.1f') img/s"
  taskset -c 0 $PY bench/ingest/baseline_pil.py "$WORK/photos" "$R" "$Q"
  taskset -c 0 $PY bench/ingest/bound_turbojpeg.py "$WORK/photos" "$Q"
done
