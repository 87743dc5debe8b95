"""Baseline: the same shards read with pyarrow (one row group at a time, the jpeg_256 column),
decoded with PIL to uint8 CHW numpy arrays and collated into batches, by WORKERS processes.
Uses torch.utils.data.DataLoader when `import torch` works, else a multiprocessing Pool running
the same per-worker function (this machine's CPU .venv cannot import torch; run.sh runs it again
under REF_PY, a Python with torch). Timed after the first batch, like the other loaders.
usage: baseline.py SHARDS WORKERS BATCH
"""
import glob
import io
import sys
import time

import numpy as np
import pyarrow.parquet as pq
from PIL import Image


def row_groups(shards):
    out = []
    for f in sorted(glob.glob(f"{shards}/*.parquet")):
        for g in range(pq.ParquetFile(f).num_row_groups):
            out.append((f, g))
    return out


def decode_group(task):
    """One row group -> list of CHW uint8 arrays (the per-worker work)."""
    f, g = task
    col = pq.ParquetFile(f).read_row_group(g, columns=["jpeg_256"]).column(0)
    return [np.asarray(Image.open(io.BytesIO(b.as_py())).convert("RGB")).transpose(2, 0, 1) for b in col]


def batches(images, batch):
    buf = []
    for img in images:
        buf.append(img)
        if len(buf) == batch:
            yield np.stack(buf)
            buf = []


def main():
    shards, workers, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    tasks = row_groups(shards)
    try:
        import torch.utils.data as tud

        class Groups(tud.Dataset):
            def __len__(self):
                return len(tasks)

            def __getitem__(self, i):
                return decode_group(tasks[i])

        loader = tud.DataLoader(Groups(), batch_size=None, num_workers=workers, collate_fn=lambda x: x)
        how, source = "torch DataLoader", (img for group in loader for img in group)
        pool = None
    except ImportError:
        import multiprocessing as mp

        pool = mp.Pool(workers)
        how, source = "multiprocessing Pool (torch not importable)", (img for group in pool.imap(decode_group, tasks) for img in group)
    # Timed from the first request, worker start included: untiming the first batch would hide
    # all decoding when one row group holds most images (it did: 24k img/s at 1024 images).
    t = time.perf_counter()
    stream = batches(source, batch)
    first = next(stream)
    n = len(first) + sum(len(b) for b in stream)
    dt = time.perf_counter() - t
    assert first.shape[1:] == (3, 256, 256), first.shape
    if pool:
        pool.close()
    print(f"pyarrow+PIL {n / dt:.1f} img/s ({n} images, {workers} workers, {how}, {dt:.2f} s)")


if __name__ == "__main__":
    main()
