"""PIL baseline (the img2dataset path): decode -> resize shortest side to R (Lanczos, antialiased)
-> centre crop RxR -> JPEG encode at quality Q, one process, one thread. Prints images/s.
usage: baseline_pil.py DIR R Q
"""
import glob
import io
import sys
import time

from PIL import Image


def main():
    files = sorted(glob.glob(sys.argv[1] + "/**/*.JPEG", recursive=True))
    r, q = int(sys.argv[2]), int(sys.argv[3])
    data = [open(f, "rb").read() for f in files]
    t = time.perf_counter()
    for b in data:
        im = Image.open(io.BytesIO(b)).convert("RGB")
        w, h = im.size
        s = r / min(w, h)
        im = im.resize((max(r, round(w * s)), max(r, round(h * s))), Image.LANCZOS)
        w, h = im.size
        left, top = (w - r) // 2, (h - r) // 2
        im = im.crop((left, top, left + r, top + r))
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=q)
    dt = time.perf_counter() - t
    print(f"pil {len(data) / dt:.1f} img/s ({len(data)} images, {dt:.2f} s)")


if __name__ == "__main__":
    main()
