#!/usr/bin/env python3
"""Writes tests/fixtures/converter/ (needs real torch; run once, on any machine with torch).

- ckpt.pth: an ml-mdm style checkpoint saved by torch.save: {"state_dict": OrderedDict with DDP
  `module.` prefixes, "step": tensor, "epoch": int}; tensors of every dtype the converter maps,
  a transposed (non-contiguous) view, two slices sharing one storage, a 0-d tensor, a Parameter.
- expected.safetensors: the same tensors, prefixes stripped, written by safetensors.torch.
- refused.pth: a checkpoint that pickles an argparse.Namespace (must be refused, not run).
"""
import argparse
import collections
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/converter"
g = torch.Generator().manual_seed(7)
base = torch.randn(6, 5, generator=g)
shared = torch.randn(40, generator=g)
sd = collections.OrderedDict()
sd["module.conv.weight"] = torch.nn.Parameter(torch.randn(4, 3, 3, 3, generator=g))
sd["module.proj.weight_t"] = base.t()
sd["module.half"] = torch.randn(7, generator=g).half()
sd["module.bf16"] = torch.randn(2, 3, generator=g).bfloat16()
sd["module.f64"] = torch.randn(3, generator=g).double()
sd["module.count"] = torch.arange(5, dtype=torch.int64)
sd["module.small_int"] = torch.tensor([1, -2, 3], dtype=torch.int32)
sd["module.flag"] = torch.tensor([True, False])
sd["module.scalar"] = torch.tensor(2.5)
sd["module.shared_a"] = shared[3:13].view(2, 5)
sd["module.shared_b"] = shared[20:32:2]
torch.save({"state_dict": sd, "step": torch.tensor(1234), "epoch": 3}, f"{out}/ckpt.pth")
expected = {k[len("module."):]: v.detach().contiguous().clone() for k, v in sd.items()}
save_file(expected, f"{out}/expected.safetensors")
torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, f"{out}/refused.pth")
print("wrote", out, torch.__version__)
