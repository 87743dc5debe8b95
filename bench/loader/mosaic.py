"""Baseline: MosaicML Streaming over the same JPEG bytes, converted once to its MDS format, read
the way its documentation shows: a StreamingDataset (local folder, shuffled) under a
torch DataLoader with WORKERS workers, each sample decoded with PIL to a uint8 CHW array and
collated into batches of BATCH. Needs torch and mosaicml-streaming (not in the project's .venv,
whose torch cannot be imported; run.sh uses REF_PY for it).
usage: mosaic.py SHARDS MDS_DIR WORKERS BATCH
"""
import glob
import io
import os
import shutil
import sys
import time

import numpy as np
import pyarrow.parquet as pq
from PIL import Image


def convert(shards, out):
    """The shards' jpeg_256 bytes, unchanged, as MDS 'bytes' samples (no re-encoding)."""
    from streaming import MDSWriter

    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    n = 0
    with MDSWriter(out=tmp, columns={"jpeg": "bytes"}, size_limit=1 << 26) as w:
        for f in sorted(glob.glob(f"{shards}/*.parquet")):
            for b in pq.read_table(f, columns=["jpeg_256"]).column(0):
                w.write({"jpeg": b.as_py()})
                n += 1
    os.rename(tmp, out)
    print(f"converted {n} images to MDS in {out}")


def main():
    shards, mds, workers, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if not os.path.exists(mds):
        convert(shards, mds)
    import torch.utils.data as tud
    from streaming import StreamingDataset

    class Images(StreamingDataset):
        def __getitem__(self, i):
            raw = super().__getitem__(i)["jpeg"]
            return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).transpose(2, 0, 1)

    # A fresh shared-memory prefix each run: Streaming keeps state in /dev/shm between processes.
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = Images(local=mds, shuffle=True, shuffle_seed=0, batch_size=batch)
    loader = tud.DataLoader(ds, batch_size=batch, num_workers=workers, drop_last=True)
    it = iter(loader)
    first = next(it)  # opening the stream and starting the workers
    assert tuple(first.shape[1:]) == (3, 256, 256), first.shape
    t = time.perf_counter()
    n = sum(len(b) for b in it)
    dt = time.perf_counter() - t
    print(f"MosaicML Streaming {n / dt:.1f} img/s ({n} images, {workers} workers, torch DataLoader, {dt:.2f} s)")


if __name__ == "__main__":
    main()
