#!/usr/bin/env python3
"""Goldens for metrics/src/resize.rs: the three FID protocols' resizers and network inputs.

    /work/refvenv/bin/python tools/metrics_fixtures/resize.py metrics/tests/fixtures/resize

Made with the reference env (torch 2.11 CPU, Pillow, numpy, clean-fid, torch-fidelity; the exact
versions are written into cases.json). Inputs are not stored: both sides compute them from
`hash_unit` below (an integer hash, exact in f32), so only the outputs are committed.

- "pil_bicubic": PIL `Image.fromarray(f32 plane)` (mode F) `.resize((ow, oh), Image.BICUBIC)`.
- "torch_bilinear": `F.interpolate(x[None, None], size=(oh, ow), mode="bilinear", align_corners=False)`.
- "torch_bilinear_aa": the same with antialias=True (torchmetrics' default resize).
- "tf1_bilinear": torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x(..., align_corners=False)`.
- "input_<mode>": the network input [3, 299, 299] of an 8-bit RGB image, made by the reference
  package's own code: clean-fid's `make_resizer("PIL", False, "bicubic", (299, 299))` then its
  (x - 128) / 128; pytorch-fid's ToTensor + its model's interpolate + 2x - 1; torchmetrics'
  NoTrainInceptionV3 (antialias=True) and torch-fidelity's resize, each + (x - 128) / 128 as their
  forward does.

Outputs: cases.json (one entry per case: kind, sizes, row_step, offset into outputs.f32) and
outputs.f32 (little-endian f32). Large outputs keep every `row_step`-th row only.
"""
import importlib.metadata
import json
import os
import sys

import numpy as np

M32 = 0xFFFFFFFF


def hash_u32(a, b):
    """murmur3's finaliser of a*0x9E3779B1 + b*0x85EBCA77 + 0x165667B1 (mod 2^32)."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    h = (a * np.uint64(0x9E3779B1) + b * np.uint64(0x85EBCA77) + np.uint64(0x165667B1)) & np.uint64(M32)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & np.uint64(M32)
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & np.uint64(M32)
    h ^= h >> np.uint64(16)
    return h


def hash_unit(a, n):
    """n values in [0, 1), exact in f32: (hash(a, i) >> 8) / 2^24 for i in 0..n."""
    h = hash_u32(a, np.arange(n, dtype=np.uint64))
    return ((h >> np.uint64(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)).astype(np.float32)


def plane(seed, h, w):
    """A float plane in [0, 255): hash_unit * 255 in f32."""
    return (hash_unit(seed, h * w) * np.float32(255.0)).reshape(h, w)


def rgb_u8(seed, h, w):
    """An 8-bit RGB image h x w x 3: floor(hash_unit * 256)."""
    return np.floor(hash_unit(seed, h * w * 3) * np.float32(256.0)).astype(np.uint8).reshape(h, w, 3)


# (kind, seed, h, w, out_h, out_w, row_step)
PLANE_CASES = [
    (16, 12, 29, 41, 1),   # up, non-square
    (50, 37, 13, 9, 1),    # down ~4x: wide support
    (31, 64, 47, 20, 1),   # up in y, down in x
    (32, 24, 299, 299, 11), # the real upscale
    (300, 256, 299, 299, 13),  # slight down in y, up in x
    (9, 300, 9, 150, 1),   # one axis unchanged (Pillow skips that pass)
]
IMAGE_CASES = [(20, 28, 37), (64, 64, 37), (333, 300, 37)]  # (h, w, row_step)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "metrics/tests/fixtures/resize"
    os.makedirs(out_dir, exist_ok=True)

    import PIL
    import torch
    import torch.nn.functional as F
    import torchvision.transforms.functional as TF
    import cleanfid
    import torch_fidelity
    import pytorch_fid
    from PIL import Image
    from cleanfid.resize import make_resizer
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    torch.set_num_threads(1)
    cases, blobs, offset = [], [], 0

    def add(name, kind, h, w, oh, ow, step, arr, **extra):
        nonlocal offset
        arr = np.ascontiguousarray(arr, dtype="<f4")
        kept = arr[..., ::step, :]
        cases.append(dict(name=name, kind=kind, h=h, w=w, out_h=oh, out_w=ow, row_step=step,
                          shape=list(kept.shape), offset=offset, **extra))
        blobs.append(kept.tobytes())
        offset += kept.size

    for i, (h, w, oh, ow, step) in enumerate(PLANE_CASES):
        seed = 100 + i
        x = plane(seed, h, w)
        pil = np.asarray(Image.fromarray(x, mode="F").resize((ow, oh), Image.BICUBIC), dtype=np.float32)
        add(f"pil_{h}x{w}_{oh}x{ow}", "pil_bicubic", h, w, oh, ow, step, pil, seed=seed)
        t = torch.from_numpy(x)[None, None]
        tb = F.interpolate(t, size=(oh, ow), mode="bilinear", align_corners=False)[0, 0].numpy()
        add(f"torch_{h}x{w}_{oh}x{ow}", "torch_bilinear", h, w, oh, ow, step, tb, seed=seed)
        tf = interpolate_bilinear_2d_like_tensorflow1x(t, size=(oh, ow), align_corners=False)[0, 0].numpy()
        add(f"tf1_{h}x{w}_{oh}x{ow}", "tf1_bilinear", h, w, oh, ow, step, tf, seed=seed)
        aa = F.interpolate(t, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()
        add(f"aa_{h}x{w}_{oh}x{ow}", "torch_bilinear_aa", h, w, oh, ow, step, aa, seed=seed)

    for i, (h, w, step) in enumerate(IMAGE_CASES):
        seed = 200 + i
        img = rgb_u8(seed, h, w)
        # clean-fid (mode "clean"): its resizer, then the (x - 128) / 128 of its Inception wrapper
        fn = make_resizer("PIL", False, "bicubic", (299, 299))
        clean = fn(img).astype(np.float32).transpose(2, 0, 1)
        clean = (torch.from_numpy(clean) - 128) / 128
        add(f"clean_{h}x{w}", "input_clean", h, w, 299, 299, step, clean.numpy(), seed=seed)
        # pytorch-fid: ImagePathDataset's ToTensor, then InceptionV3.forward's resize and 2x - 1
        x = TF.to_tensor(Image.fromarray(img))[None]
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        add(f"pytorch_fid_{h}x{w}", "input_pytorch-fid", h, w, 299, 299, step, (2 * x - 1)[0].numpy(), seed=seed)
        # torchmetrics (NoTrainInceptionV3, antialias=True): uint8 to f32, antialiased bilinear
        u = torch.from_numpy(img).permute(2, 0, 1)[None].to(torch.float32)
        x = F.interpolate(u, size=(299, 299), mode="bilinear", align_corners=False, antialias=True)
        add(f"torchmetrics_{h}x{w}", "input_torchmetrics", h, w, 299, 299, step, ((x - 128) / 128)[0].numpy(), seed=seed)
        # torch-fidelity: uint8 to f32, TF1 resize, (x - 128) / 128
        x = interpolate_bilinear_2d_like_tensorflow1x(u, size=(299, 299), align_corners=False)
        add(f"torch_fidelity_{h}x{w}", "input_torch-fidelity", h, w, 299, 299, step, ((x - 128) / 128)[0].numpy(), seed=seed)

    versions = {"torch": torch.__version__, "Pillow": PIL.__version__, "numpy": np.__version__,
                "clean-fid": importlib.metadata.version("clean-fid"), "torch-fidelity": torch_fidelity.__version__,
                "pytorch-fid": pytorch_fid.__version__, "torchmetrics": __import__("torchmetrics").__version__}
    with open(os.path.join(out_dir, "outputs.f32"), "wb") as f:
        for b in blobs:
            f.write(b)
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump({"versions": versions, "cases": cases}, f, indent=1)
    print(f"{len(cases)} cases, {offset * 4} bytes, {versions}")


if __name__ == "__main__":
    main()
