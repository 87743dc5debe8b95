"""mdm_loader from Python with bench_loader's settings: batches of BATCH at 256 (uint8 NCHW),
default shuffle, prefetch 4, WORKERS decode threads, epoch_end pad; timed after the first
batch, over STEPS batches; each batch's pixel arrays are fetched (the zero-copy views).
usage: mdm_py.py SHARDS WORKERS BATCH STEPS   (run by bench/loader/run.sh)
"""
import itertools
import sys
import time

import mdm_loader


def main() -> None:
    shards, workers, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    loader = mdm_loader.Loader(shards, batch_size=batch, workers=workers, prefetch=4, epoch_end="pad")
    next(loader).pixels  # the first batch pays for opening files and filling the pipeline
    t, cpu = time.perf_counter(), time.process_time()
    n = 0
    for b in itertools.islice(loader, steps):
        n += sum(len(px) for px in b.pixels.values())
    dt, cpu = time.perf_counter() - t, time.process_time() - cpu
    print(f"mdm_loader (Python) {n / dt:.1f} img/s ({n} images, {workers} workers, {dt:.2f} s, cpu {cpu:.2f} s)")


if __name__ == "__main__":
    main()
