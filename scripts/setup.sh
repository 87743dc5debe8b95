#!/usr/bin/env bash
# One-time, idempotent setup for a fresh Debian machine (also fast when already done):
#   1. Debian packages the crates need (FFmpeg dev libraries, clang, libjpeg-turbo, ...);
#   2. ./.venv with PyTorch 2.11.0 (libtorch for tch, without its CUDA wheels) and pyarrow;
#   3. .venv/libtorch -> site-packages/torch, which .cargo/config.toml points LIBTORCH at.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
fail() { printf '\033[1;31m[setup] FAILED:\033[0m %s\n' "$1" >&2; printf '        fix: %s\n' "$2" >&2; exit 1; }

TORCH_VERSION=2.11.0
APT_PKGS=(pkg-config clang libclang-dev nasm ffmpeg libavcodec-dev libavformat-dev libavutil-dev
          libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev libturbojpeg0-dev
          python3-venv protobuf-compiler)

# 1. Debian packages
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq || fail "apt-get update" "check the network / apt sources, or run as root"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]}" "install them by hand with apt-get and rerun"
fi

# 2. Python venv with libtorch and pyarrow
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv 2>/dev/null || { rm -rf .venv; "$PY" -m venv --without-pip .venv && \
    curl -sS https://bootstrap.pypa.io/get-pip.py | .venv/bin/python; } \
    || fail "python venv" "apt-get install python3-venv (or set PYTHON=/path/to/python3)"
fi
VPY=.venv/bin/python
have_torch=$($VPY -c "import importlib.metadata as m; print(m.version('torch'))" 2>/dev/null || true)
if [[ "$have_torch" != "$TORCH_VERSION"* ]]; then
  say "installing torch==$TORCH_VERSION (no CUDA wheels, ~1.3 GB) into .venv"
  $VPY -m pip install -q --no-cache-dir --disable-pip-version-check --no-deps "torch==$TORCH_VERSION" \
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85 \
    || fail "pip install torch==$TORCH_VERSION" "check PyPI access; tch 0.24 needs exactly this version"
fi
# pyarrow/numpy/safetensors: interop tests; pillow: ingest bench baseline; the rest: `import torch`
# (tools/convert_mlmdm.py; on a CPU-only venv `import torch` still needs the CUDA libraries).
if ! $VPY -c "import pyarrow, numpy, safetensors, PIL, typing_extensions, sympy, networkx, jinja2, fsspec, filelock" 2>/dev/null; then
  say "installing pyarrow, numpy, safetensors, pillow and torch's Python dependencies into .venv"
  $VPY -m pip install -q --no-cache-dir --disable-pip-version-check pyarrow numpy safetensors pillow typing_extensions filelock sympy networkx jinja2 fsspec \
    || fail "pip install (Python test dependencies)" "check PyPI access"
fi

# moto: the S3-compatible server the loader's object-store tests start on loopback.
if ! $VPY -c "import moto.server" 2>/dev/null; then
  say "installing moto[server] (S3 test server) into .venv"
  $VPY -m pip install -q --no-cache-dir --disable-pip-version-check "moto[server]" \
    || fail "pip install moto[server]" "check PyPI access"
fi

# maturin and pytest: build and test the mdm_loader Python package (loader/python).
if ! $VPY -c "import maturin, pytest" 2>/dev/null; then
  say "installing maturin and pytest into .venv"
  $VPY -m pip install -q --no-cache-dir --disable-pip-version-check "maturin>=1.9,<2" pytest \
    || fail "pip install maturin pytest" "check PyPI access"
fi

# 3. Stable path for LIBTORCH (the site-packages path depends on the Python version)
TORCH_DIR=$($VPY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/torch
[ -f "$TORCH_DIR/lib/libtorch_cpu.so" ] || fail "libtorch not found in $TORCH_DIR" "rm -rf .venv and rerun"
ln -sfn "$TORCH_DIR" .venv/libtorch
say "ready: LIBTORCH=.venv/libtorch (torch $($VPY -c 'import importlib.metadata as m; print(m.version("torch"))'))"
