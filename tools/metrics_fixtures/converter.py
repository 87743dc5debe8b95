#!/usr/bin/env python3
"""Fixture of the converter test `inception_converter_reads_both_torch_formats` (tests/it/eval_cli.rs):

    /work/refvenv/bin/python tools/metrics_fixtures/converter.py metrics/tests/fixtures/convert

A small state dict with FID Inception key names (not its shapes: the converter does not check
them), saved by real torch in both of its file formats: legacy.pth (the pre-1.6 sequence of
pickles and raw storages, as the 2019 pt_inception file may be) and zip.pth (torch >= 1.6).
It has f32, f64 and f16 tensors, a transposed view, two slices of one storage, a
`num_batches_tracked` counter (which the converter drops) and `fc.*`. expected.safetensors is
what the converter must write: every tensor but the counter, as contiguous f32, written by
safetensors.torch. refused.pth pickles an argparse.Namespace beside its tensors: refused.
"""
import argparse
import collections
import os
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1] if len(sys.argv) > 1 else "metrics/tests/fixtures/convert"
os.makedirs(out, exist_ok=True)
g = torch.Generator().manual_seed(11)
shared = torch.randn(30, generator=g)
sd = collections.OrderedDict()
sd["Conv2d_1a_3x3.conv.weight"] = torch.randn(4, 3, 3, 3, generator=g)
sd["Conv2d_1a_3x3.bn.weight"] = torch.randn(4, generator=g).double()
sd["Conv2d_1a_3x3.bn.bias"] = shared[2:6]
sd["Conv2d_1a_3x3.bn.running_mean"] = shared[10:18:2]
sd["Conv2d_1a_3x3.bn.running_var"] = (torch.rand(4, generator=g) + 0.5).half()
sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = torch.tensor(7)
sd["fc.weight"] = torch.randn(3, 5, generator=g).t()
sd["fc.bias"] = torch.randn(5, generator=g)
torch.save(sd, f"{out}/legacy.pth", _use_new_zipfile_serialization=False)
torch.save(sd, f"{out}/zip.pth")
expected = {k: v.float().contiguous().clone() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
save_file(expected, f"{out}/expected.safetensors")
# an object that unpickling would construct: must be refused, not built
torch.save({"state_dict": {"fc.bias": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, f"{out}/refused.pth")
with open(f"{out}/README.md", "w") as f:
    f.write("Made by `/work/refvenv/bin/python tools/metrics_fixtures/converter.py metrics/tests/fixtures/convert` "
            f"with torch {torch.__version__} (see its docstring).\n")
print("wrote", out, torch.__version__)
