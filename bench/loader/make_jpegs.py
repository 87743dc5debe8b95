"""Makes N photo-like 256x256 JPEGs (quality 90) with bench/ingest/make_photos.py's generator.
usage: make_jpegs.py OUT_DIR N
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "ingest"))
from make_photos import photo  # noqa: E402


def main():
    out, n = sys.argv[1], int(sys.argv[2])
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = []
    for i in range(n):
        p = os.path.join(out, f"{i:06d}.jpg")
        photo(rng, 256, 256).save(p, quality=90)
        sizes.append(os.path.getsize(p))
    print(f"{n} photos 256x256, mean {np.mean(sizes) / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
