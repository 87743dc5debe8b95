"""Goldens for metrics/tests/it/frechet.rs and tests/eval_cli.rs: Fréchet distances from
pytorch-fid, torchmetrics and clean-fid, statistics from numpy, .npz files written by numpy.

    /work/refvenv/bin/python tools/metrics_fixtures/frechet.py metrics/tests/fixtures/frechet

Package versions: printed into metrics/tests/fixtures/frechet/README.md and goldens.json.

Features are a formula that the Rust test computes too (bit for bit: only IEEE +, -, * and
exact divisions), so only the small d = 64 statistics are committed; the 256- and 2048-d cases
commit only their reference values:

    u(seed, k)   = (splitmix64(seed * 2^32 + k) >> 11) * 2^-53          uniform in [0, 1)
    e[i, j]      = u(seed, i * d + j),   g[i, l] = u(seed + 1000, i * 8 + l)
    x[i, j]      = ((e[i, j] - 0.5) * (1 + (j % 7) / 4) + 0.8 * (g[i, j % 8] - 0.5))
                   + (offset + shift * (j % 5) / 10)

(columns with the same j % 8 share a latent: a covariance with structure.)

Writes:
  goldens.json          per case: seeds, n, d, shift, offset, reference FIDs, numpy's checksums
  features.npz          np.savez: x = features(seed 1, n 50, d 64) f8, x32 = x as f4,
                        xf = Fortran-order copy of x[:, :10], n = int64 scalar 50
  <case>_a.npz / _b.npz (d = 64 cases) np.mean / np.cov of each set: _a by np.savez_compressed
                        (as pytorch-fid --save-stats), _b by np.savez; f8
  <case>_a_f4.npz / _b_f4.npz  the same as f4, _a by np.savez, _b by np.savez_compressed
"""

import importlib.metadata
import json
import os
import sys
import warnings

import numpy as np

MASK = (1 << 64) - 1


def uniform(seed, count):
    k = np.arange(count, dtype=np.uint64) + np.uint64((seed << 32) & MASK)
    with np.errstate(over="ignore"):
        z = k + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def features(seed, n, d, shift=0.0, offset=0.0):
    e = uniform(seed, n * d).reshape(n, d)
    g = uniform(seed + 1000, n * 8).reshape(n, 8)
    j = np.arange(d)
    scale = 1.0 + (j % 7) / 4.0
    t1 = (e - 0.5) * scale
    t2 = 0.8 * (g[:, j % 8] - 0.5)
    t3 = offset + shift * (j % 5) / 10.0
    return (t1 + t2) + t3


# name: (d, (seed, n, shift, offset) of A, of B); d = 64 cases get committed .npz files.
CASES = {
    "d64_full": (64, (1, 500, 0.0, 0.0), (2, 400, 1.0, 0.0)),
    "d64_rankdef": (64, (3, 40, 0.0, 0.0), (4, 30, 0.5, 0.0)),
    "d64_offset": (64, (11, 300, 0.0, 1.0e4), (12, 200, 0.25, 1.0e4)),
    "d256_full": (256, (5, 1000, 0.0, 0.0), (6, 800, 1.0, 0.0)),
    "d256_rankdef": (256, (7, 100, 0.0, 0.0), (8, 120, 0.5, 0.0)),
    "d2048_full": (2048, (9, 2500, 0.0, 0.0), (10, 2300, 0.3, 0.0)),
}


def stats(x):
    return np.mean(x, axis=0), np.cov(x, rowvar=False)


def references(mu1, s1, mu2, s2):
    import torch
    from cleanfid.fid import frechet_distance as cleanfid_fd
    from pytorch_fid.fid_score import calculate_frechet_distance
    from torchmetrics.image.fid import _compute_fid

    out = {}
    for name, f in [("pytorch_fid", calculate_frechet_distance), ("clean_fid", cleanfid_fd)]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = float(f(mu1, s1, mu2, s2))
        except ValueError as e:  # pytorch-fid: "Imaginary component ..." on singular products
            print(f"  {name}: {e}")
            out[name] = None
    t = [torch.from_numpy(np.ascontiguousarray(a)).double() for a in (mu1, s1, mu2, s2)]
    out["torchmetrics"] = float(_compute_fid(*t))
    return out


def main(out):
    import pytorch_fid
    import scipy
    import torch
    import torchmetrics

    os.makedirs(out, exist_ok=True)
    versions = {
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
        "pytorch_fid": pytorch_fid.__version__,
        "clean_fid": importlib.metadata.version("clean-fid"),
        "torchmetrics": torchmetrics.__version__,
    }
    goldens = {"versions": versions, "cases": {}}
    for name, (d, a, b) in CASES.items():
        print(name, flush=True)
        case = {"d": d}
        sets = []
        for tag, (seed, n, shift, offset) in (("a", a), ("b", b)):
            x = features(seed, n, d, shift, offset)
            mu, sigma = stats(x)
            sets.append((mu, sigma))
            case[tag] = {
                "seed": seed, "n": n, "shift": shift, "offset": offset,
                "mu_sum": float(mu.sum()), "sigma_trace": float(np.trace(sigma)),
                "sigma_abs_sum": float(np.abs(sigma).sum()), "sigma_0_1": float(sigma[0, 1]),
            }
            if d == 64:
                save = np.savez_compressed if tag == "a" else np.savez
                save(os.path.join(out, f"{name}_{tag}.npz"), mu=mu, sigma=sigma)
                save32 = np.savez if tag == "a" else np.savez_compressed
                save32(os.path.join(out, f"{name}_{tag}_f4.npz"),
                       mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
        (mu1, s1), (mu2, s2) = sets
        case["mean_term"] = float(((mu1 - mu2) ** 2).sum())
        case["fid"] = references(mu1, s1, mu2, s2)
        if d == 64:
            f4 = [np.load(os.path.join(out, f"{name}_{t}_f4.npz")) for t in "ab"]
            case["fid_f4"] = references(*(f[k].astype(np.float64) for f in f4 for k in ("mu", "sigma")))
        print("  ", case["fid"], flush=True)
        goldens["cases"][name] = case

    x = features(1, 50, 64)
    np.savez(os.path.join(out, "features.npz"), x=x, x32=x.astype(np.float32),
             xf=np.asfortranarray(x[:, :10]), n=np.int64(50))
    with open(os.path.join(out, "goldens.json"), "w") as f:
        json.dump(goldens, f, indent=1)
        f.write("\n")
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("Made by `/work/refvenv/bin/python tools/metrics_fixtures/frechet.py "
                "metrics/tests/fixtures/frechet` (see its docstring) with "
                + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".\n")


if __name__ == "__main__":
    main(sys.argv[1])
