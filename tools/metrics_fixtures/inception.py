#!/usr/bin/env python3
"""Goldens for metrics/src/inception.rs: FID Inception features in the three protocols.

    /work/refvenv/bin/python tools/metrics_fixtures/inception.py metrics/tests/fixtures/inception

Reference env: torch 2.11 (CPU), pytorch-fid, torchmetrics, torch-fidelity, clean-fid, Pillow,
numpy (exact versions are written into features.json).

Weights: the real network (23.9M parameters) is too big to commit, so every tensor is computed
from a formula that metrics/src/inception.rs (`inception::formula`) computes bit for bit: tensor
t (index in the sorted state_dict keys, `fc.*` and `num_batches_tracked` left out) gets
v = 2 * hash_unit(1000 + t, i) - 1 for element i, then conv weights v * f32(sqrt(6 / fan_in)),
BN weight 1 + v/4, bias v/10, running_mean v/10, running_var 1 + v/2; fc is zero. Those weights
are handed to each package's own model code:

- pytorch-fid: `InceptionV3([0, 1, 2, 3], resize_input=True, normalize_input=True)` (its
  `fid_inception_v3` loads them strictly, through a patched `load_state_dict_from_url`), fed
  `ToTensor(PIL image)`; block outputs pooled with `adaptive_avg_pool2d` as `get_activations` does.
- torchmetrics: `FrechetInceptionDistance(feature=d, feature_extractor_weights_path=...)`'s own
  `inception` (NoTrainInceptionV3, default antialias=True), fed the uint8 image tensor.
- torch-fidelity: its `FeatureExtractorInceptionV3` (TF1 resize), fed the uint8 image tensor.
- clean-fid (mode "clean"): its `ResizeDataset` preprocessing (PIL bicubic per channel in float,
  clip, ToTensor) and its `InceptionV3W` scaling (x - 128) / 128; its network is a TorchScript file
  that cannot be had offline, so the scaled input goes through pytorch-fid's network (the same TF
  graph) with resize_input=False, normalize_input=False.

Inputs: 8-bit RGB images from `rgb_u8` (tools/metrics_fixtures/resize.py; the Rust test computes
the same), written also as PNG under images/ for the CLI tests.
Outputs: features.json (index) and features.f32 (little-endian f32).
"""
import importlib.metadata
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resize import hash_unit, rgb_u8  # noqa: E402

IMAGES = [(201, 32, 32), (202, 45, 60), (203, 299, 299)]  # (seed, h, w)
DIMS = [64, 192, 768, 2048]


def formula_state_dict(template):
    import torch

    keys = sorted(k for k in template if not k.startswith("fc.") and not k.endswith("num_batches_tracked"))
    sd = {}
    for t, k in enumerate(keys):
        shape = tuple(template[k].shape)
        n = int(np.prod(shape))
        v = np.float32(2) * hash_unit(1000 + t, n) - np.float32(1)
        if k.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            val = v * np.float32(math.sqrt(6.0 / fan_in))
        elif k.endswith("bn.weight"):
            val = np.float32(1) + np.float32(0.25) * v
        elif k.endswith("running_var"):
            val = np.float32(1) + np.float32(0.5) * v
        elif k.endswith("bn.bias") or k.endswith("running_mean"):
            val = np.float32(0.1) * v
        else:
            raise SystemExit(f"no formula for {k}")
        assert val.dtype == np.float32
        sd[k] = torch.from_numpy(val.reshape(shape).copy())
    for k, v in template.items():
        if k not in sd:
            sd[k] = torch.zeros_like(v)
    return sd, keys


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "metrics/tests/fixtures/inception"
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)

    import PIL
    import cleanfid
    import pytorch_fid
    import pytorch_fid.inception as pfi
    import torch
    import torch.nn.functional as F
    import torch_fidelity
    import torchmetrics
    import torchvision
    import torchvision.transforms.functional as TF
    from cleanfid.utils import ResizeDataset
    from PIL import Image
    from torchmetrics.image.fid import FrechetInceptionDistance

    torch.set_num_threads(2)
    torch.manual_seed(0)

    # The state_dict layout of pytorch-fid's network, without its download.
    template = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    template.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    template.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    template.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    template.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    template.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    template.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    template.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    template.Mixed_7b = pfi.FIDInceptionE_1(1280)
    template.Mixed_7c = pfi.FIDInceptionE_2(2048)
    sd, keys = formula_state_dict(template.state_dict())
    pfi.load_state_dict_from_url = lambda *a, **k: sd  # fid_inception_v3 loads it strictly
    pth = os.path.join("/tmp", "formula_inception.pth")
    torch.save(sd, pth)

    pfid = pfi.InceptionV3([0, 1, 2, 3], resize_input=True, normalize_input=True).eval()
    pfid_raw = pfi.InceptionV3([0, 1, 2, 3], resize_input=False, normalize_input=False).eval()
    tm = {d: FrechetInceptionDistance(feature=d, feature_extractor_weights_path=pth).inception.eval() for d in DIMS}
    clean_ds = ResizeDataset([], mode="clean")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    tfe = FeatureExtractorInceptionV3("inception-v3-compat", [str(d) for d in DIMS],
                                      feature_extractor_weights_path=pth).eval()

    def pooled(blocks):
        return [F.adaptive_avg_pool2d(b, output_size=(1, 1)).squeeze(3).squeeze(2)[0].numpy() for b in blocks]

    entries, blobs, offset = [], [], 0
    with torch.no_grad():
        for seed, h, w in IMAGES:
            img = rgb_u8(seed, h, w)
            name = f"img_{seed}_{h}x{w}.png"
            Image.fromarray(img).save(os.path.join(out_dir, "images", name))
            pil = Image.open(os.path.join(out_dir, "images", name)).convert("RGB")
            assert (np.array(pil) == img).all()
            feats = {}
            # pytorch-fid
            feats["pytorch-fid"] = pooled(pfid(TF.to_tensor(pil)[None]))
            # torchmetrics: uint8 NCHW
            u8 = torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None]
            feats["torchmetrics"] = [tm[d](u8).reshape(-1).numpy() for d in DIMS]
            feats["torch-fidelity"] = [f[0].numpy() for f in tfe(u8)]
            # clean-fid: ResizeDataset's fn_resize + ToTensor, InceptionV3W's scaling
            x = clean_ds.transforms(clean_ds.fn_resize(np.array(pil)))[None]
            assert x.dtype == torch.float32 and x.shape == (1, 3, 299, 299)
            feats["clean"] = pooled(pfid_raw((x - 128) / 128))
            for mode, per_dim in feats.items():
                for d, f in zip(DIMS, per_dim):
                    f = np.ascontiguousarray(f, dtype="<f4")
                    assert f.shape == (d,), (mode, d, f.shape)
                    entries.append(dict(image=name, seed=seed, h=h, w=w, mode=mode, dims=d, offset=offset,
                                        max_abs=float(np.abs(f).max()), frac_zero=float((f == 0).mean())))
                    blobs.append(f.tobytes())
                    offset += d

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__, "Pillow": PIL.__version__,
                "numpy": np.__version__, "pytorch-fid": pytorch_fid.__version__,
                "torchmetrics": torchmetrics.__version__, "torch-fidelity": torch_fidelity.__version__,
                "clean-fid": importlib.metadata.version("clean-fid")}
    with open(os.path.join(out_dir, "features.f32"), "wb") as f:
        for b in blobs:
            f.write(b)
    with open(os.path.join(out_dir, "features.json"), "w") as f:
        shapes = {k: list(sd[k].shape) for k in keys}
        json.dump({"versions": versions, "formula_keys": keys, "formula_shapes": shapes, "entries": entries}, f, indent=1)
    os.remove(pth)
    print(f"{len(entries)} feature vectors, {len(keys)} formula tensors, {versions}")
    for e in entries:
        print(e["image"], e["mode"], e["dims"], f"max {e['max_abs']:.3g} zeros {e['frac_zero']:.2f}")


if __name__ == "__main__":
    main()
