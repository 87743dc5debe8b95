#!/usr/bin/env python3
"""Convert an ml-mdm checkpoint (.pth, as written by ml-mdm's `UNet.save`) to safetensors.

ml-mdm saves `{"state_dict": model.state_dict(), ...other items}`. The vision model's keys are
kept as they are (ml-mdm's names are ours); wrapper prefixes from DDP or the diffusion
pipeline (`module.`, `model.`, `vision_model.`) are stripped. Non-persistent buffers do not
appear in a state_dict, so nothing else needs filtering.

    python tools/convert_mlmdm.py vis_model_64x64.pth vis_model_64x64.safetensors
    mdm model forward --config configs/models/cc12m_64x64.toml --weights vis_model_64x64.safetensors ...

By default the checkpoint is opened with `torch.load(weights_only=True)`. ml-mdm checkpoints
that also pickle Python objects (e.g. training arguments) need `--trust-pickle`, which runs
the pickle: use it only on files you trust.
"""
import argparse
import sys

PREFIXES = ("module.", "model.", "vision_model.")


def strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if key.startswith(p):
                key = key[len(p):]
                changed = True
    return key


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="ml-mdm .pth checkpoint")
    ap.add_argument("dst", help="output .safetensors")
    ap.add_argument("--key", default=None, help="entry holding the state dict (default: state_dict / model_state_dict / the file itself)")
    ap.add_argument("--dtype", choices=["keep", "float32", "float16", "bfloat16"], default="float32")
    ap.add_argument("--trust-pickle", action="store_true", help="allow arbitrary pickled objects (weights_only=False)")
    a = ap.parse_args()

    import torch
    from safetensors.torch import save_file

    try:
        ckpt = torch.load(a.src, map_location="cpu", weights_only=not a.trust_pickle)
    except Exception as e:  # noqa: BLE001 - report and stop
        hint = "" if a.trust_pickle else " (if the file pickles other objects and you trust it, add --trust-pickle)"
        print(f"error: {a.src}: cannot load: {e}{hint}", file=sys.stderr)
        return 1

    if a.key is not None:
        if a.key not in ckpt:
            print(f"error: {a.src}: no entry {a.key!r}; entries: {sorted(ckpt)}", file=sys.stderr)
            return 1
        sd = ckpt[a.key]
    elif isinstance(ckpt, dict) and "state_dict" in ckpt:
        sd = ckpt["state_dict"]
    elif isinstance(ckpt, dict) and "model_state_dict" in ckpt:
        sd = ckpt["model_state_dict"]
    else:
        sd = ckpt
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        print(f"error: {a.src}: no state dict of tensors found", file=sys.stderr)
        return 1

    out = {}
    for k, v in sd.items():
        nk = strip(k)
        if nk in out:
            print(f"error: {a.src}: {k!r} and another key both map to {nk!r}", file=sys.stderr)
            return 1
        if a.dtype != "keep" and v.is_floating_point():
            v = v.to(getattr(torch, a.dtype))
        out[nk] = v.detach().contiguous()
    save_file(out, a.dst, metadata={"source": "ml-mdm", "converted_from": a.src})
    n = sum(v.numel() for v in out.values())
    print(f"{a.dst}: {len(out)} tensors, {n} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
