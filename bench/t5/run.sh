#!/usr/bin/env bash
# T5 encoder real tokens/s (issue 5): ours (ingest/examples/t5_bench.rs) against Hugging Face
# transformers' T5EncoderModel (bench/t5/baseline_hf.py) on the same seeded random weights and
# the same token-id rows. See bench/RESULTS.md.
#
#   bench/t5/run.sh cpu    # small config (flan-t5-small shapes), f32, side by side, medians of 3
#   bench/t5/run.sh cuda   # XL config (flan-t5-xl shapes), bf16, ours against the H100 reference
#
# cpu knobs (env): CONFIG=small CAPTIONS=256 BATCH=32 THREADS="1 2" RUNS=3 LENGTHS="cc12m mean32"
#   CORES (taskset list; default the first THREADS cores), HF_VENV=/tmp/mdm-hf-venv (a throwaway
#   venv outside the repo with torch + transformers + safetensors; created when missing).
# cuda knobs (env): T5_BENCH=path (a prebuilt example binary: the GPU machine has no cargo and no
#   network), TORCH_LIB (default /opt/torch/.venv/lib/python3.12/site-packages/torch/lib),
#   CAPTIONS=4096 BATCH=256 WORK=/tmp/mdm-t5-xl; HF_PY=python with transformers to run the
#   baseline there too (skipped when it cannot import transformers).
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:-cpu}
bin=${T5_BENCH:-target/release/examples/t5_bench}
if [ -z "${T5_BENCH:-}" ]; then
  cargo build --release -q -p mdm-ingest --example t5_bench
fi

# median of the numbers on stdin
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
# "<impl> <strategy...>: <N> real tokens/s" lines of a log → "<impl>|<strategy>|<N>"
rates() { sed -nE 's/^(ours|hf) +(.+): +([0-9]+) real tokens\/s.*/\1|\2|\3/p' "$@"; }

case "$mode" in
  cpu)
    CONFIG=${CONFIG:-small}; CAPTIONS=${CAPTIONS:-256}; BATCH=${BATCH:-32}; RUNS=${RUNS:-3}
    THREADS=${THREADS:-1 2}; LENGTHS=${LENGTHS:-cc12m mean32}
    HF_VENV=${HF_VENV:-/tmp/mdm-hf-venv}
    case "$(realpath -m "$HF_VENV")/" in "$(pwd)"/*) echo "HF_VENV must be outside the repo" >&2; exit 2 ;; esac
    if ! "$HF_VENV/bin/python" -c "import torch, transformers, safetensors, numpy" 2>/dev/null; then
      echo "[t5 bench] creating $HF_VENV (torch, transformers, safetensors)" >&2
      python3 -m venv "$HF_VENV"
      # The CPU wheel is ~200 MB; where download.pytorch.org is unreachable, PyPI's default
      # (CUDA) wheel with its nvidia-* dependencies (~5 GB) runs the same CPU kernels.
      "$HF_VENV/bin/pip" install -q --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch \
        || "$HF_VENV/bin/pip" install -q --no-cache-dir torch
      "$HF_VENV/bin/pip" install -q --no-cache-dir transformers safetensors numpy
    fi
    PY="$HF_VENV/bin/python"
    work=${WORK:-$(mktemp -d /tmp/mdm-t5-bench.XXXXXX)}
    echo "# $(date -u '+%F %T') UTC; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); config $CONFIG, $CAPTIONS captions, batch $BATCH, $RUNS runs each, alternating; work dir $work"
    for len in $LENGTHS; do
      d="$work/$CONFIG-$len"
      "$bin" --config "$CONFIG" --captions "$CAPTIONS" --batch "$BATCH" --lengths "$len" \
        --model-dir "$d" --rows-out "$d/rows.json" --hidden-out "$d/hidden.safetensors" --check-rows 8 --prepare-only > /dev/null
      "$PY" bench/t5/baseline_hf.py --model-dir "$d" --rows "$d/rows.json" --hidden "$d/hidden.safetensors" --check-only 2>/dev/null \
        | grep -E '^hf (check|:)'
      for th in $THREADS; do
        cores=${CORES:-0-$((th - 1))}
        log="$work/$CONFIG-$len-t$th.log"; : > "$log"
        echo "## lengths $len, $th thread(s), taskset -c $cores (load $(cut -d' ' -f1 /proc/loadavg))"
        for run in $(seq "$RUNS"); do
          taskset -c "$cores" "$bin" --config "$CONFIG" --captions "$CAPTIONS" --batch "$BATCH" --lengths "$len" \
            --threads "$th" --model-dir "$d" | tee -a "$log" | grep -E '^ours' | sed "s/^/run $run: /"
          taskset -c "$cores" "$PY" bench/t5/baseline_hf.py --model-dir "$d" --rows "$d/rows.json" \
            --batch "$BATCH" --threads "$th" 2>/dev/null | tee -a "$log" | grep -E '^hf' | sed "s/^/run $run: /"
        done
        rates "$log" | awk -F'|' '{print $2}' | awk '!seen[$0]++' | while read -r strat; do
          o=$(rates "$log" | awk -F'|' -v s="$strat" '$1=="ours" && $2==s {print $3}' | median)
          h=$(rates "$log" | awk -F'|' -v s="$strat" '$1=="hf" && $2==s {print $3}' | median)
          if [ "$h" = nan ]; then
            # Ours only (sorted+packed): against transformers' best strategy.
            hb=$(rates "$log" | awk -F'|' '$1=="hf" {print $2}' | awk '!seen[$0]++' | while read -r hs; do
              rates "$log" | awk -F'|' -v s="$hs" '$1=="hf" && $2==s {print $3}' | median; done | sort -g | tail -1)
            printf 'median %-28s ours %7.0f  vs hf best %7.0f real tokens/s  ours/hf-best %.2fx  (ours: %s)\n' "$strat" "$o" "$hb" \
              "$(echo "$o / $hb" | bc -l)" "$(rates "$log" | awk -F'|' -v s="$strat" '$1=="ours" && $2==s {print $3}' | paste -sd, -)"
            continue
          fi
          printf 'median %-28s ours %7.0f  hf %7.0f real tokens/s  ours/hf %.2fx  (ours: %s; hf: %s)\n' "$strat" "$o" "$h" \
            "$(echo "$o / $h" | bc -l)" \
            "$(rates "$log" | awk -F'|' -v s="$strat" '$1=="ours" && $2==s {print $3}' | paste -sd, -)" \
            "$(rates "$log" | awk -F'|' -v s="$strat" '$1=="hf" && $2==s {print $3}' | paste -sd, -)"
        done
      done
      grep -m2 '^bytes/caption' "$log" || true
    done
    ;;
  cuda)
    # Reference (issue 5: transformers, bf16, SDPA, on an H100; caption-like lengths, mean 32
    # tokens; real tokens counted): 23k tokens/s padded to 128, 25k padded to the batch
    # maximum, 85k with length-sorted batches of 256. Target: 1.5x the best = 127.5k.
    TORCH_LIB=${TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}
    export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    CAPTIONS=${CAPTIONS:-4096}; BATCH=${BATCH:-256}
    d=${WORK:-/tmp/mdm-t5-xl}
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    log="$d.log"
    # --window 1024 is TextEncoder's default; the last line sorts all captions at once.
    "$bin" --device cuda --dtype bf16 --config xl --captions "$CAPTIONS" --batch "$BATCH" --lengths mean32 \
      --repeat 3 --model-dir "$d" --rows-out "$d.rows.json" --hidden-out "$d.hidden.safetensors" --check-rows 8 | tee "$log"
    "$bin" --device cuda --dtype bf16 --config xl --captions "$CAPTIONS" --batch "$BATCH" --lengths mean32 \
      --repeat 3 --window "$CAPTIONS" --model-dir "$d" --reuse-model | grep -E 'length-sorted|sorted\+packed' | tee -a "$log"
    rates "$log" | awk -F'|' '$1=="ours"' | while IFS='|' read -r _ strat n; do
      case "$strat" in padded-128) ref=23000 ;; batch-max) ref=25000 ;; *) ref=85000 ;; esac
      printf 'ours %-30s %8.0f real tokens/s = %.2fx the H100 reference for this strategy (%d), %.2fx the best (85k); target 1.5x = 127500\n' \
        "$strat" "$n" "$(echo "$n / $ref" | bc -l)" "$ref" "$(echo "$n / 85000" | bc -l)"
    done
    HF_PY=${HF_PY:-/opt/torch/.venv/bin/python}
    if "$HF_PY" -c "import transformers, safetensors" 2>/dev/null; then
      "$HF_PY" bench/t5/baseline_hf.py --device cuda --dtype bf16 --model-dir "$d" --rows "$d.rows.json" \
        --hidden "$d.hidden.safetensors" --batch "$BATCH" --repeat 3 2>/dev/null | grep -E '^hf'  || echo "(hf baseline failed or mismatched, exit status above)"
    else
      echo "(no transformers for $HF_PY: HF baseline on this GPU not run)"
    fi
    ;;
  *) echo "usage: $0 cpu|cuda" >&2; exit 2 ;;
esac
