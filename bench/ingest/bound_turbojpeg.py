"""Bound: plain libjpeg-turbo (TurboJPEG API through ctypes) full-size decode to RGB + encode at
quality Q of the same files, no resize; one thread. Prints images/s.
usage: bound_turbojpeg.py DIR Q
"""
import ctypes
import ctypes.util
import glob
import sys
import time

tj = ctypes.CDLL(ctypes.util.find_library("turbojpeg") or "libturbojpeg.so.0")
tj.tjInitDecompress.restype = ctypes.c_void_p
tj.tjInitCompress.restype = ctypes.c_void_p
TJPF_RGB, TJSAMP_420 = 0, 2


def main():
    files = sorted(glob.glob(sys.argv[1] + "/**/*.JPEG", recursive=True))
    q = int(sys.argv[2])
    data = [open(f, "rb").read() for f in files]
    d, c = ctypes.c_void_p(tj.tjInitDecompress()), ctypes.c_void_p(tj.tjInitCompress())
    w, h, ss, cs = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    t = time.perf_counter()
    for b in data:
        assert tj.tjDecompressHeader3(d, b, ctypes.c_ulong(len(b)), ctypes.byref(w), ctypes.byref(h), ctypes.byref(ss), ctypes.byref(cs)) == 0
        buf = ctypes.create_string_buffer(w.value * h.value * 3)
        assert tj.tjDecompress2(d, b, ctypes.c_ulong(len(b)), buf, w, 0, h, TJPF_RGB, 0) == 0
        out, size = ctypes.POINTER(ctypes.c_ubyte)(), ctypes.c_ulong(0)
        assert tj.tjCompress2(c, buf, w, 0, h, TJPF_RGB, ctypes.byref(out), ctypes.byref(size), TJSAMP_420, q, 0) == 0
        tj.tjFree(out)
    dt = time.perf_counter() - t
    print(f"libjpeg-turbo {len(data) / dt:.1f} img/s ({len(data)} images, {dt:.2f} s)")


if __name__ == "__main__":
    main()
