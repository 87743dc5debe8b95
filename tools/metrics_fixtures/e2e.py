#!/usr/bin/env python3
"""Golden for the end-to-end test `fid_of_two_image_folders_equals_pytorch_fid` (tests/it/eval_cli.rs):
pytorch-fid's own command path, `calculate_fid_given_paths([A, B])`, on two folders of PNGs.

    /work/refvenv/bin/python tools/metrics_fixtures/e2e.py metrics/tests/fixtures/e2e

The images are not committed: the Rust test writes the same PNGs from the same formula.
Folder A: N images `rgb_u8(5000 + k, H, W)`; folder B: `rgb_u8(6000 + k, H, W) // 2 + 64` (a
lower-contrast distribution, so the distance is far from zero). Files `{k:03}.png`.
Weights: the formula FID Inception (tools/metrics_fixtures/inception.py), handed to pytorch-fid
through a patched `load_state_dict_from_url`. Output: golden.json with the FID per dims.
"""
import importlib.metadata
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inception import formula_state_dict  # noqa: E402
from resize import rgb_u8  # noqa: E402

N, H, W = 24, 40, 52
DIMS = [64, 2048]


def folder_a(k):
    return rgb_u8(5000 + k, H, W)


def folder_b(k):
    return (rgb_u8(6000 + k, H, W) // 2 + 64).astype(np.uint8)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "metrics/tests/fixtures/e2e"
    os.makedirs(out_dir, exist_ok=True)

    import pytorch_fid.inception as pfi
    import torch
    from PIL import Image
    from pytorch_fid.fid_score import calculate_fid_given_paths

    torch.set_num_threads(2)
    template = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    template.Mixed_5b, template.Mixed_5c = pfi.FIDInceptionA(192, 32), pfi.FIDInceptionA(256, 64)
    template.Mixed_5d = pfi.FIDInceptionA(288, 64)
    template.Mixed_6b, template.Mixed_6c = pfi.FIDInceptionC(768, 128), pfi.FIDInceptionC(768, 160)
    template.Mixed_6d, template.Mixed_6e = pfi.FIDInceptionC(768, 160), pfi.FIDInceptionC(768, 192)
    template.Mixed_7b, template.Mixed_7c = pfi.FIDInceptionE_1(1280), pfi.FIDInceptionE_2(2048)
    sd, _ = formula_state_dict(template.state_dict())
    pfi.load_state_dict_from_url = lambda *a, **k: sd

    fids = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [os.path.join(tmp, "a"), os.path.join(tmp, "b")]
        for d, make in zip(dirs, [folder_a, folder_b]):
            os.makedirs(d)
            for k in range(N):
                Image.fromarray(make(k)).save(os.path.join(d, f"{k:03}.png"))
        for dims in DIMS:
            fids[str(dims)] = float(calculate_fid_given_paths(dirs, 8, "cpu", dims, num_workers=0))
    golden = {
        "n": N, "h": H, "w": W, "fid": fids,
        "versions": {p: importlib.metadata.version(p) for p in ["torch", "pytorch-fid", "numpy", "scipy", "pillow"]},
    }
    with open(os.path.join(out_dir, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("Made by `/work/refvenv/bin/python tools/metrics_fixtures/e2e.py metrics/tests/fixtures/e2e` "
                "(see its docstring): pytorch-fid's `calculate_fid_given_paths` on two folders of formula "
                "PNGs with the formula FID Inception weights; versions in golden.json.\n")
    print(json.dumps(golden))


if __name__ == "__main__":
    main()
