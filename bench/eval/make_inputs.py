#!/usr/bin/env python3
"""Inputs for bench/eval/run.sh: N smooth random 256x256 PNGs and the formula FID Inception
weights (tools/metrics_fixtures/inception.py) as pytorch-fid's cached pt_inception .pth.

    /work/refvenv/bin/python bench/eval/make_inputs.py OUT_DIR N
"""
import os
import sys

import numpy as np
from PIL import Image

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "tools", "metrics_fixtures"))


def main():
    out, n = sys.argv[1], int(sys.argv[2])
    img_dir = os.path.join(out, "images")
    os.makedirs(img_dir, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        low = rng.uniform(0, 255, size=(16, 16, 3)).astype(np.uint8)
        img = Image.fromarray(low).resize((256, 256), Image.BICUBIC)
        noise = rng.integers(-12, 13, size=(256, 256, 3))
        arr = np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(os.path.join(img_dir, f"{i:05d}.png"))

    import torch
    import pytorch_fid.inception as pfi
    from inception import formula_state_dict

    t = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    t.Mixed_5b, t.Mixed_5c, t.Mixed_5d = pfi.FIDInceptionA(192, 32), pfi.FIDInceptionA(256, 64), pfi.FIDInceptionA(288, 64)
    t.Mixed_6b, t.Mixed_6c = pfi.FIDInceptionC(768, 128), pfi.FIDInceptionC(768, 160)
    t.Mixed_6d, t.Mixed_6e = pfi.FIDInceptionC(768, 160), pfi.FIDInceptionC(768, 192)
    t.Mixed_7b, t.Mixed_7c = pfi.FIDInceptionE_1(1280), pfi.FIDInceptionE_2(2048)
    sd, _ = formula_state_dict(t.state_dict())
    ckpt = os.path.join(out, "torch_home", "hub", "checkpoints")
    os.makedirs(ckpt, exist_ok=True)
    torch.save(sd, os.path.join(ckpt, os.path.basename(pfi.FID_WEIGHTS_URL)))
    print(f"{n} images in {img_dir}; formula weights in {ckpt}")


if __name__ == "__main__":
    main()
