#!/usr/bin/env bash
# Prints the dependencies that `cargo build -p mdm-loader-py` (what maturin runs) would build with
# other features than `cargo build --workspace`; each one is a rebuild. Empty output: none.
set -euo pipefail
cd "$(dirname "$0")/../.."
tree() { cargo tree -e normal,build -f "{p} [{f}]" --prefix none "$@" | sed 's/ (\*)$//' | sort -u; }
comm -23 <(tree -p mdm-loader-py) <(tree --workspace)
