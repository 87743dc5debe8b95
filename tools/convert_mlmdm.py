#!/usr/bin/env python3
"""Convert an ml-mdm checkpoint (.pth, as written by ml-mdm's `UNet.save`) to safetensors.

ml-mdm saves `{"state_dict": model.state_dict(), ...other items}`. The vision model's keys are
kept as they are (ml-mdm's names are ours); wrapper prefixes from DDP or the diffusion
pipeline (`module.`, `model.`, `vision_model.`) are stripped.

    python tools/convert_mlmdm.py vis_model_64x64.pth vis_model_64x64.safetensors
    mdm model forward --config configs/models/cc12m_64x64.toml --weights vis_model_64x64.safetensors ...

Needs only numpy: the .pth (torch's zip format, torch >= 1.6) is read directly, and its pickle
is run by a restricted unpickler that builds tensors and plain containers and refuses every
other object (the same guarantee as torch.load(weights_only=True), without importing torch).
Entries the unpickler refuses are reported by name; tensors stay exact (f32, f16, bf16, ints).
"""
import argparse
import collections
import json
import pickle
import struct
import sys
import zipfile

import numpy as np

PREFIXES = ("module.", "model.", "vision_model.")

# torch storage class name -> (numpy dtype of the raw bytes, safetensors dtype)
STORAGES = {
    "FloatStorage": ("<f4", "F32"),
    "DoubleStorage": ("<f8", "F64"),
    "HalfStorage": ("<f2", "F16"),
    "BFloat16Storage": ("<u2", "BF16"),
    "LongStorage": ("<i8", "I64"),
    "IntStorage": ("<i4", "I32"),
    "ShortStorage": ("<i2", "I16"),
    "CharStorage": ("i1", "I8"),
    "ByteStorage": ("u1", "U8"),
    "BoolStorage": ("?", "BOOL"),
}
# torch.<dtype> names (newer pickles pass a dtype to UntypedStorage rebuilds)
DTYPES = {
    "float32": "FloatStorage", "float": "FloatStorage", "float64": "DoubleStorage", "double": "DoubleStorage",
    "float16": "HalfStorage", "half": "HalfStorage", "bfloat16": "BFloat16Storage",
    "int64": "LongStorage", "long": "LongStorage", "int32": "IntStorage", "int": "IntStorage",
    "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
}


class ConvertError(Exception):
    pass


class Tensor:
    """A tensor read from the checkpoint: raw values (numpy) and the safetensors dtype."""

    def __init__(self, array, st_dtype):
        self.array = array
        self.dtype = st_dtype


class StorageType:
    def __init__(self, name):
        self.name = name


def _rebuild_tensor_v2(storage, offset, size, stride, *_rest):
    array, st_dtype = storage
    size, stride = tuple(size), tuple(stride)
    n = 1
    for s in size:
        n *= s
    if n == 0:
        return Tensor(np.zeros(size, dtype=array.dtype), st_dtype)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if offset < 0 or last >= array.size:
        raise ConvertError(f"tensor view (offset {offset}, size {size}, stride {stride}) runs past its storage of {array.size}")
    item = array.itemsize
    view = np.lib.stride_tricks.as_strided(array[offset:], shape=size, strides=[s * item for s in stride])
    return Tensor(view.copy(order="C"), st_dtype)


def _rebuild_parameter(data, *_rest):
    return data


class Unpickler(pickle.Unpickler):
    def __init__(self, f, zf, root):
        super().__init__(f)
        self.zf, self.root, self.cache = zf, root, {}

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGES:
            return StorageType(name)
        if module == "torch" and name in DTYPES:
            return StorageType(DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "builtins" and name in ("set", "frozenset", "tuple", "list", "dict", "slice"):
            return getattr(__import__("builtins"), name)
        raise ConvertError(
            f"refusing to unpickle {module}.{name}: only tensors and plain containers are read "
            "(re-save the checkpoint with just its state_dict)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise ConvertError(f"unknown persistent id {pid!r}")
        _, stype, key, _location, _numel = pid[:5]
        if not isinstance(stype, StorageType):
            raise ConvertError(f"unknown storage type {stype!r}")
        if key not in self.cache:
            np_dtype, st_dtype = STORAGES[stype.name]
            raw = self.zf.read(f"{self.root}/data/{key}")
            self.cache[key] = (np.frombuffer(raw, dtype=np_dtype), st_dtype)
        return self.cache[key]


def load_pth(path):
    if not zipfile.is_zipfile(path):
        raise ConvertError("not a torch zip checkpoint (files from torch < 1.6 need re-saving with a newer torch)")
    with zipfile.ZipFile(path) as zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl")]
        if len(pkls) != 1:
            raise ConvertError(f"expected one data.pkl in the archive, found {len(pkls)}")
        root = pkls[0][: -len("/data.pkl")]
        order = f"{root}/byteorder"
        if order in zf.namelist() and zf.read(order).strip() != b"little":
            raise ConvertError("big-endian checkpoints are not supported")
        with zf.open(pkls[0]) as f:
            return Unpickler(f, zf, root).load()


def strip(key):
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if key.startswith(p):
                key = key[len(p):]
                changed = True
    return key


def bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(f32):
    # round to nearest even, NaN kept NaN
    u = f32.astype(np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(f32), np.uint16(0x7FC0), rounded)


def cast(t, dtype):
    floating = t.dtype in ("F32", "F64", "F16", "BF16")
    if dtype == "keep" or not floating:
        return t
    f32 = bf16_to_f32(t.array) if t.dtype == "BF16" else t.array.astype(np.float32)
    if dtype == "float32":
        return Tensor(f32, "F32")
    if dtype == "float16":
        return Tensor(f32.astype("<f2"), "F16")
    return Tensor(f32_to_bf16(f32), "BF16")


def save_safetensors(tensors, path, metadata):
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, t in tensors.items():
        b = np.ascontiguousarray(t.array).astype(t.array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": t.dtype, "shape": list(t.array.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="ml-mdm .pth checkpoint")
    ap.add_argument("dst", help="output .safetensors")
    ap.add_argument("--key", default=None, help="entry holding the state dict (default: state_dict / model_state_dict / the file itself)")
    ap.add_argument("--dtype", choices=["keep", "float32", "float16", "bfloat16"], default="float32")
    a = ap.parse_args()

    try:
        ckpt = load_pth(a.src)
    except (ConvertError, OSError, pickle.UnpicklingError, KeyError, EOFError, ValueError) as e:
        print(f"error: {a.src}: cannot load: {e}", file=sys.stderr)
        return 1

    if a.key is not None:
        if not isinstance(ckpt, dict) or a.key not in ckpt:
            entries = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
            print(f"error: {a.src}: no entry {a.key!r}; entries: {entries}", file=sys.stderr)
            return 1
        sd = ckpt[a.key]
    elif isinstance(ckpt, dict) and "state_dict" in ckpt:
        sd = ckpt["state_dict"]
    elif isinstance(ckpt, dict) and "model_state_dict" in ckpt:
        sd = ckpt["model_state_dict"]
    else:
        sd = ckpt
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, Tensor) for v in sd.values()):
        print(f"error: {a.src}: no state dict of tensors found", file=sys.stderr)
        return 1

    out = {}
    for k, v in sd.items():
        nk = strip(k)
        if nk in out:
            print(f"error: {a.src}: {k!r} and another key both map to {nk!r}", file=sys.stderr)
            return 1
        out[nk] = cast(v, a.dtype)
    save_safetensors(out, a.dst, {"source": "ml-mdm", "converted_from": str(a.src)})
    n = sum(v.array.size for v in out.values())
    print(f"{a.dst}: {len(out)} tensors, {n} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
