#!/usr/bin/env bash
# Clips/s per core: `mdm ingest webvid` (one worker thread) against the ffmpeg command-line tool
# doing the same extraction (seek, fps filter, scale shortest side, centre crop, JPEG out) of the
# same clip windows of the same generated videos; both pinned to one core with taskset, side by
# side, RUNS times. See bench/RESULTS.md.
# usage: bench/video/run.sh [N=12] [RUNS=3] [F=16] [FPS=8] [R=256]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-12}; RUNS=${2:-3}; F=${3:-16}; FPS=${4:-8}; R=${5:-256}
PY=.venv/bin/python
WORK=${BENCH_DIR:-$(mktemp -d)}
mkdir -p "$WORK/videos"
# WebVid-like inputs: 640x360 H.264 (x264 preset fast, GOP 2 s, B-frames), 25 fps, 12 s, with
# temporal noise so that the bitrate (≈1.5 Mbit/s) is closer to stock footage than a test card.
if [ ! -f "$WORK/results.csv" ]; then
  echo "videoid,contentUrl,duration,page_dir,name" > "$WORK/results.csv.tmp"
  for i in $(seq 1 "$N"); do
    ffmpeg -hide_banner -loglevel error -y -f lavfi -i "testsrc2=size=640x360:rate=25:duration=12" \
      -vf "hue=h=$((i * 29)),noise=alls=12:allf=t" -c:v libx264 -preset fast -crf 23 -g 50 -pix_fmt yuv420p \
      "$WORK/videos/$((100000 + i)).mp4"
    echo "$((100000 + i)),https://example.com/$i.mp4,PT00H00M12S,p,generated clip $i" >> "$WORK/results.csv.tmp"
  done
  mv "$WORK/results.csv.tmp" "$WORK/results.csv"
fi
cargo build --release -q -p mdm
BIN=target/release/mdm
cat "$WORK"/videos/* > /dev/null   # warm the page cache for everyone
rate() { echo "$1 / ($3 - $2)" | bc -l | xargs printf '%.2f'; }
for run in $(seq 1 "$RUNS"); do
  rm -rf "$WORK/out"
  t0=$(date +%s.%N)
  taskset -c 0 $BIN ingest webvid --csv "$WORK/results.csv" --videos "$WORK/videos" --out "$WORK/out" \
      --threads 1 --quiet --frames "$F" --fps "$FPS" --resolution "$R" > /dev/null
  t1=$(date +%s.%N)
  echo "run $run: mdm    (1 worker, taskset 1 core) $(rate "$N" "$t0" "$t1") clips/s ($N clips of $F frames, end to end incl. parquet)"
  # the same windows: each clip's first sampled frame time, from the shards just written
  $PY - "$WORK/out" > "$WORK/starts.txt" <<'PYEOF'
import json, sys, pyarrow.parquet as pq
out = sys.argv[1]
m = json.load(open(f"{out}/manifest.json"))
for s in m["shards"]:
    t = pq.read_table(f"{out}/{s['file']}", columns=["id", "timestamps"])
    for i, ts in zip(t.column("id").to_pylist(), t.column("timestamps").to_pylist()):
        print(i, f"{ts[0]:.6f}")
PYEOF
  rm -rf "$WORK/ff"; mkdir -p "$WORK/ff"
  t0=$(date +%s.%N)
  while read -r id start; do
    mkdir -p "$WORK/ff/$id"
    taskset -c 0 ffmpeg -nostdin -hide_banner -loglevel error -threads 1 -ss "$start" -i "$WORK/videos/$id.mp4" \
      -filter_threads 1 -vf "fps=$FPS,scale=$R:$R:force_original_aspect_ratio=increase,crop=$R:$R" \
      -frames:v "$F" -q:v 3 "$WORK/ff/$id/%02d.jpg"
  done < "$WORK/starts.txt"
  t1=$(date +%s.%N)
  echo "run $run: ffmpeg (-threads 1, taskset 1 core)   $(rate "$N" "$t0" "$t1") clips/s ($(find "$WORK/ff" -name '*.jpg' | wc -l) JPEGs)"
done
