#!/usr/bin/env bash
# Images/s of `mdm eval fid-stats` against pytorch-fid (`python -m pytorch_fid --save-stats`) on
# the same images, weights and cores, and how far their statistics are apart (pytorch-fid mode).
# Not a test. Weights: the formula stand-in (same cost as the real network; nothing downloaded):
# pytorch-fid finds it as its cached pt_inception .pth, mdm gets it through tools/convert_inception.py.
#
#   bench/eval/run.sh [N_IMAGES=500] [DEVICE=cpu] [THREADS=$(nproc)]
# GPU: bench/eval/run.sh 5000 cuda
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-500}; DEVICE=${2:-cpu}; THREADS=${3:-$(nproc)}
PY=${REF_PYTHON:-/work/refvenv/bin/python}
W=${BENCH_DIR:-/tmp/mdm-bench-eval}
MDM=${MDM:-target/release/mdm}
[ -d "$W/images" ] && [ "$(ls "$W/images" | wc -l)" -eq "$N" ] || { rm -rf "$W"; "$PY" bench/eval/make_inputs.py "$W" "$N"; }
PTH=$(ls "$W"/torch_home/hub/checkpoints/*.pth)
[ -f "$W/inception.safetensors" ] || "$PY" tools/convert_inception.py "$PTH" "$W/inception.safetensors"
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS TORCH_HOME=$W/torch_home
echo "N=$N device=$DEVICE threads=$THREADS ($(nproc) cores visible)"

t0=$(date +%s.%N)
"$MDM" eval fid-stats "$W/images" --inception "$W/inception.safetensors" --out "$W/mdm.npz" \
  --mode pytorch-fid --device "$DEVICE" --workers "$THREADS" --batch 50 --quiet
t1=$(date +%s.%N)
"$PY" -m pytorch_fid --save-stats "$W/images" "$W/ref.npz" --device "$DEVICE" \
  --num-workers "$THREADS" --batch-size 50 >/dev/null
t2=$(date +%s.%N)

"$PY" - "$W" "$N" "$t0" "$t1" "$t2" <<'PYEOF'
import sys, numpy as np
w, n, t0, t1, t2 = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:])
a, b = np.load(f"{w}/mdm.npz"), np.load(f"{w}/ref.npz")
dmu = np.abs(a["mu"] - b["mu"]).max() / np.abs(b["mu"]).max()
dsig = np.abs(a["sigma"] - b["sigma"]).max() / np.abs(b["sigma"]).max()
print(f"mdm fid-stats : {t1 - t0:7.2f} s  {n / (t1 - t0):7.1f} img/s (process start and weight loading included)")
print(f"pytorch-fid   : {t2 - t1:7.2f} s  {n / (t2 - t1):7.1f} img/s (process start and weight loading included)")
print(f"speed-up {(t2 - t1) / (t1 - t0):.2f}x; stats max|dmu|/max|mu| {dmu:.1e}, max|dsigma|/max|sigma| {dsig:.1e}")
PYEOF
