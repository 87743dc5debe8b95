#!/usr/bin/env python3
"""Convert the FID Inception weights (.pth) to safetensors for `mdm eval fid-stats --inception`.

Sources: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` or torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth` (the same network and tensor names). Keys are kept as
they are (`Conv2d_1a_3x3.conv.weight`, ..., `fc.weight`); `num_batches_tracked` counters are
dropped; float tensors are written as f32.

    python tools/convert_inception.py pt_inception-2015-12-05-6726825d.pth inception.safetensors
    mdm eval fid-stats images/ --inception inception.safetensors --out stats.npz

Needs only numpy. Both torch file formats are read without running their pickle: the zip format
(torch >= 1.6) through tools/convert_mlmdm.py's restricted unpickler, and the legacy format
(a sequence of pickles followed by raw storages, which these 2019 files may use) by the same kind
of unpickler here: it builds tensors and plain containers and refuses every other object. The
sha256 of the source file is stored in the safetensors metadata and printed.
"""
import argparse
import collections
import hashlib
import os
import pickle
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_mlmdm import DTYPES, STORAGES, ConvertError, StorageType, Tensor, cast, load_pth, save_safetensors  # noqa: E402

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# Tensors of pytorch-fid's FID Inception with fc (the Rust loader checks names and shapes).
EXPECTED_TENSORS = 472


class LazyStorage:
    """A legacy storage: its bytes follow the main pickle and are read afterwards."""

    def __init__(self, stype, numel):
        self.stype, self.numel, self.array = stype, numel, None


class LazyTensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def resolve(self):
        array = self.storage.array
        st_dtype = STORAGES[self.storage.stype.name][1]
        n = int(np.prod(self.size)) if self.size else 1
        if n == 0:
            return Tensor(np.zeros(self.size, dtype=array.dtype), st_dtype)
        last = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride))
        if self.offset < 0 or last >= array.size:
            raise ConvertError(f"tensor view (offset {self.offset}, size {self.size}) runs past its storage of {array.size}")
        view = np.lib.stride_tricks.as_strided(
            array[self.offset:], shape=self.size, strides=[s * array.itemsize for s in self.stride])
        return Tensor(view.copy(order="C"), st_dtype)


def _legacy_rebuild_tensor_v2(storage, offset, size, stride, *_rest):
    if not isinstance(storage, LazyStorage):
        raise ConvertError("tensor without a storage")
    return LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data, *_rest):
    return data


class LegacyUnpickler(pickle.Unpickler):
    def __init__(self, f):
        super().__init__(f)
        self.storages = {}

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _legacy_rebuild_tensor_v2
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
        raise ConvertError(f"refusing to unpickle {module}.{name}: only tensors and plain containers are read")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise ConvertError(f"unknown persistent id {pid!r}")
        _, stype, key, _location, numel, view = pid[:6] if len(pid) >= 6 else (*pid, None)
        if not isinstance(stype, StorageType):
            raise ConvertError(f"unknown storage type {stype!r}")
        if view is not None:
            raise ConvertError("storage views are not supported")
        if key not in self.storages:
            self.storages[key] = LazyStorage(stype, numel)
        return self.storages[key]


class _PlainUnpickler(pickle.Unpickler):
    """For the header pickles (magic number, protocol, sys info): builtins only."""

    def find_class(self, module, name):
        raise ConvertError(f"refusing to unpickle {module}.{name} in the file header")


def load_legacy(path):
    with open(path, "rb") as f:
        if _PlainUnpickler(f).load() != LEGACY_MAGIC:
            raise ConvertError("neither a torch zip checkpoint nor a legacy torch file (bad magic number)")
        if _PlainUnpickler(f).load() != 1001:
            raise ConvertError("unsupported legacy protocol version")
        sys_info = _PlainUnpickler(f).load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise ConvertError("big-endian checkpoints are not supported")
        up = LegacyUnpickler(f)
        result = up.load()
        keys = _PlainUnpickler(f).load()
        for key in keys:
            s = up.storages.get(key)
            if s is None:
                raise ConvertError(f"storage {key!r} is listed but not used")
            np_dtype = STORAGES[s.stype.name][0]
            (numel,) = struct.unpack("<q", f.read(8))
            raw = f.read(numel * np.dtype(np_dtype).itemsize)
            if len(raw) != numel * np.dtype(np_dtype).itemsize:
                raise ConvertError(f"storage {key!r} is cut short")
            s.array = np.frombuffer(raw, dtype=np_dtype)

    def resolve(o):
        if isinstance(o, LazyTensor):
            return o.resolve()
        if isinstance(o, dict):
            return type(o)((k, resolve(v)) for k, v in o.items())
        return o

    return resolve(result)


def load_any(path):
    import zipfile

    return load_pth(path) if zipfile.is_zipfile(path) else load_legacy(path)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="pt_inception-2015-12-05-*.pth (pytorch-fid) or torch-fidelity's weights")
    ap.add_argument("dst", help="output .safetensors")
    a = ap.parse_args()
    try:
        sd = load_any(a.src)
    except (ConvertError, OSError, pickle.UnpicklingError, KeyError, EOFError, ValueError, struct.error) as e:
        print(f"error: {a.src}: cannot load: {e}", file=sys.stderr)
        return 1
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, Tensor) for v in sd.values()):
        print(f"error: {a.src}: no state dict of tensors found", file=sys.stderr)
        return 1
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        k = k[len("module."):] if k.startswith("module.") else k
        out[k] = cast(v, "float32")
    digest = sha256(a.src)
    save_safetensors(out, a.dst, {"source": "FID Inception (pt_inception-2015-12-05)",
                                  "converted_from": os.path.basename(a.src), "source_sha256": digest})
    n = sum(v.array.size for v in out.values())
    print(f"{a.dst}: {len(out)} tensors, {n} parameters; source sha256 {digest}")
    if len(out) != EXPECTED_TENSORS:
        print(f"warning: the FID Inception has {EXPECTED_TENSORS} tensors (fc included); "
              "mdm will list what is missing or unexpected", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
