"""Makes N photo-like JPEGs (~500x375, ~110 KB at quality 95) as an ILSVRC train tree.

Nothing is downloaded: pictures are multi-scale noise with edges and texture, tuned so that the
JPEG size and entropy match typical ImageNet photos (mean ~110 KB at 500x375).
usage: make_photos.py OUT_DIR N
"""
import os
import sys

import numpy as np
from PIL import Image


def photo(rng, w=500, h=375):
    img = np.zeros((h, w, 3), np.float32)
    for scale, amp in ((8, 90.0), (32, 40.0), (96, 22.0), (375, 20.0)):
        gh, gw = max(2, h * scale // 375), max(2, w * scale // 375)
        g = rng.normal(0, 1, (gh, gw, 3)).astype(np.float32)
        up = np.array(Image.fromarray(((g + 4) * 32).clip(0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32)
        img += (up - 128) / 64 * amp
    img += 128
    # a few hard edges (objects)
    for _ in range(6):
        x0, y0 = rng.integers(0, w - 50), rng.integers(0, h - 50)
        img[y0 : y0 + rng.integers(20, 150), x0 : x0 + rng.integers(20, 150)] += rng.normal(0, 50, 3)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def main():
    out, n = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    d = os.path.join(out, "train", "n00000001")
    os.makedirs(d, exist_ok=True)
    sizes = []
    for i in range(n):
        p = os.path.join(d, f"n00000001_{i:05d}.JPEG")
        photo(rng).save(p, quality=95)
        sizes.append(os.path.getsize(p))
    print(f"{n} photos 500x375, mean {np.mean(sizes) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
