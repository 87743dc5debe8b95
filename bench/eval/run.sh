#!/usr/bin/env bash
# Images/s of `mdm eval fid-stats` against pytorch-fid (`python -m pytorch_fid --save-stats`) on
# the same images, weights and cores, and how far their statistics are apart (pytorch-fid mode).
# Not a test. Weights: the formula stand-in (same cost as the real network; nothing downloaded):
# pytorch-fid finds it as its cached pt_inception .pth, mdm gets it through tools/convert_inception.py.
#
#   bench/eval/run.sh [N_IMAGES=500] [DEVICE=cpu] [THREADS=$(nproc)] [RUNS=1]
# With RUNS > 1 the two commands alternate RUNS times; it prints each run and the medians.
# GPU: bench/eval/run.sh 5000 cuda
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-500}; DEVICE=${2:-cpu}; THREADS=${3:-$(nproc)}; RUNS=${4:-1}
PY=${REF_PYTHON:-/work/refvenv/bin/python}
W=${BENCH_DIR:-/tmp/mdm-bench-eval}
MDM=${MDM:-target/release/mdm}
[ -d "$W/images" ] && [ "$(ls "$W/images" | wc -l)" -eq "$N" ] || { rm -rf "$W"; "$PY" bench/eval/make_inputs.py "$W" "$N"; }
PTH=$(ls "$W"/torch_home/hub/checkpoints/*.pth)
[ -f "$W/inception.safetensors" ] || "$PY" tools/convert_inception.py "$PTH" "$W/inception.safetensors"
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS TORCH_HOME=$W/torch_home
echo "N=$N device=$DEVICE threads=$THREADS ($(nproc) cores visible)"

TIMES=()
for r in $(seq "$RUNS"); do
  t0=$(date +%s.%N)
  "$MDM" eval fid-stats "$W/images" --inception "$W/inception.safetensors" --out "$W/mdm.npz" \
    --mode pytorch-fid --device "$DEVICE" --workers "$THREADS" --batch 50 --quiet
  t1=$(date +%s.%N)
  rm -f "$W/ref.npz"  # pytorch-fid refuses to overwrite
  "$PY" -m pytorch_fid --save-stats "$W/images" "$W/ref.npz" --device "$DEVICE" \
    --num-workers "$THREADS" --batch-size 50 >/dev/null 2>&1
  t2=$(date +%s.%N)
  TIMES+=("$t0" "$t1" "$t2")
done

"$PY" - "$W" "$N" "${TIMES[@]}" <<'PYEOF'
import statistics, sys, numpy as np
w, n, ts = sys.argv[1], int(sys.argv[2]), list(map(float, sys.argv[3:]))
runs = [(ts[i + 1] - ts[i], ts[i + 2] - ts[i + 1]) for i in range(0, len(ts), 3)]
for k, (a, b) in enumerate(runs, 1):
    print(f"run {k}: mdm {n / a:6.1f} img/s, pytorch-fid {n / b:6.1f} img/s, speed-up {b / a:.2f}x")
t_mdm = statistics.median(a for a, _ in runs); t_ref = statistics.median(b for _, b in runs)
ours, ref = np.load(f"{w}/mdm.npz"), np.load(f"{w}/ref.npz")
dmu = np.abs(ours["mu"] - ref["mu"]).max() / np.abs(ref["mu"]).max()
dsig = np.abs(ours["sigma"] - ref["sigma"]).max() / np.abs(ref["sigma"]).max()
print(f"mdm fid-stats, median: {t_mdm:7.2f} s  {n / t_mdm:7.1f} img/s (process start and weight loading included)")
print(f"pytorch-fid, median  : {t_ref:7.2f} s  {n / t_ref:7.1f} img/s (process start and weight loading included)")
print(f"median speed-up {statistics.median(b / a for a, b in runs):.2f}x over {len(runs)} run(s); stats max|dmu|/max|mu| {dmu:.1e}, max|dsigma|/max|sigma| {dsig:.1e}")
PYEOF
