"""Goldens for metrics/tests/it/coco.rs: PIL's centre crop + BICUBIC resize and PIL's CMYK and
grayscale JPEG decoding, on small images computed from formulas.

    /work/refvenv/bin/python tools/metrics_fixtures/coco.py metrics/tests/fixtures/coco

Pillow version: printed into metrics/tests/fixtures/coco/README.md by this script.
Writes (all small):
  input.png        53x37 RGB, smooth gradients plus a sharp diagonal edge
  bicubic24.png    its centre 37x37 square (columns 8..45) resized to 24x24, Image.BICUBIC
  bicubic48.png    the same square resized to 48x48 (upsampling), Image.BICUBIC
  cmyk.jpg         40x30 CMYK JPEG (quality 95);  cmyk_rgb.png: Image.open(...).convert("RGB")
  gray.jpg         35x22 L JPEG (quality 95);     gray_rgb.png: Image.open(...).convert("RGB")
"""

import os
import sys

import PIL
from PIL import Image


def pattern(w, h):
    im = Image.new("RGB", (w, h))
    px = im.load()
    for y in range(h):
        for x in range(w):
            edge = 120 if x + 2 * y > 50 else 0
            px[x, y] = ((x * 4 + edge) % 256, (y * 6 + x) % 256, (255 - x * 3 - y * 2 + edge // 2) % 256)
    return im


def main(out):
    os.makedirs(out, exist_ok=True)
    im = pattern(53, 37)
    im.save(os.path.join(out, "input.png"))
    s = min(im.size)
    left, top = (im.size[0] - s) // 2, (im.size[1] - s) // 2
    sq = im.crop((left, top, left + s, top + s))
    sq.resize((24, 24), Image.BICUBIC).save(os.path.join(out, "bicubic24.png"))
    sq.resize((48, 48), Image.BICUBIC).save(os.path.join(out, "bicubic48.png"))

    cmyk = Image.new("CMYK", (40, 30))
    px = cmyk.load()
    for y in range(30):
        for x in range(40):
            px[x, y] = (x * 6, y * 8, (x + y) * 3, 40 if x < 20 else 90)
    cmyk.save(os.path.join(out, "cmyk.jpg"), quality=95)
    Image.open(os.path.join(out, "cmyk.jpg")).convert("RGB").save(os.path.join(out, "cmyk_rgb.png"))

    gray = Image.new("L", (35, 22))
    px = gray.load()
    for y in range(22):
        for x in range(35):
            px[x, y] = (x * 7 + y * 3) % 256
    gray.save(os.path.join(out, "gray.jpg"), quality=95)
    Image.open(os.path.join(out, "gray.jpg")).convert("RGB").save(os.path.join(out, "gray_rgb.png"))

    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(
            "Made by `/work/refvenv/bin/python tools/metrics_fixtures/coco.py metrics/tests/fixtures/coco` "
            f"(Pillow {PIL.__version__}): PIL centre crop + BICUBIC resize, PIL CMYK/grayscale JPEG decoding.\n"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "metrics/tests/fixtures/coco")
