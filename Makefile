# Two commands on a fresh Debian machine (see README):
#   make demo   set up, build release, run the demo into ./demo-out
#   make test   set up, build, run the whole test suite
.PHONY: setup build demo test clean

setup:
	@bash scripts/setup.sh

build: setup
	@cargo build --release --workspace --all-targets || { echo "[make] cargo build failed: see the error above; 'bash scripts/setup.sh' repairs the toolchain" >&2; exit 1; }

demo: build
	./target/release/mdm demo --out demo-out

test: build
	@cargo test --release --workspace --no-fail-fast || { echo "[make] tests failed: see the failures above" >&2; exit 1; }
	@bash loader/python/test.sh || { echo "[make] Python tests (mdm_loader) failed: see the failures above" >&2; exit 1; }

clean:
	cargo clean
	rm -rf demo-out
