#!/usr/bin/env bash
# Builds the mdm_loader wheel with maturin (reusing the workspace's release build), installs it
# into ./.venv and runs its pytest suite. Needs `cargo build --release --workspace --all-targets`
# first (the tests run target/release/mdm and target/release/examples/dump_batches).
set -euo pipefail
cd "$(dirname "$0")/../.."
VPY=.venv/bin/python
rm -f target/wheels/mdm_loader-*.whl
# --auditwheel skip: the wheel links the system libturbojpeg that scripts/setup.sh installs.
.venv/bin/maturin build --release --quiet -m loader/python/Cargo.toml -i "$VPY" --out target/wheels --auditwheel skip
$VPY -m pip install -q --no-deps --force-reinstall --disable-pip-version-check target/wheels/mdm_loader-*.whl
$VPY -m pytest -q loader/python/tests "$@"
