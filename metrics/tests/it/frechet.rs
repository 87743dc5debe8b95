//! Statistics, `.npz` and the Fréchet distance against numpy, pytorch-fid, clean-fid and
//! torchmetrics: goldens from `tools/metrics_fixtures/frechet.py`, whose feature formula
//! [`features`] computes bit for bit.

use std::path::{Path, PathBuf};
use std::process::Command;

use mdm_metrics::frechet::frechet_distance;
use mdm_metrics::npz::{self, Array, Values};
use mdm_metrics::stats::{Accumulator, Stats};
use mdm_metrics::Error;
use serde_json::Value;
use tch::{Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/frechet")
}

fn goldens() -> Value {
    let text = std::fs::read_to_string(fixtures().join("goldens.json")).expect("goldens.json");
    serde_json::from_str(&text).expect("goldens.json is JSON")
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn uniform(seed: u64, k: u64) -> f64 {
    (splitmix64((seed << 32).wrapping_add(k)) >> 11) as f64 * 2f64.powi(-53)
}

/// frechet.py's `features(seed, n, d, shift, offset)`, row-major `[n, d]`.
fn features(seed: u64, n: usize, d: usize, shift: f64, offset: f64) -> Vec<f64> {
    let mut x = Vec::with_capacity(n * d);
    for i in 0..n {
        for j in 0..d {
            let e = uniform(seed, (i * d + j) as u64);
            let g = uniform(seed + 1000, (i * 8 + j % 8) as u64);
            let t1 = (e - 0.5) * (1.0 + (j % 7) as f64 / 4.0);
            let t2 = 0.8 * (g - 0.5);
            let t3 = offset + shift * (j % 5) as f64 / 10.0;
            x.push((t1 + t2) + t3);
        }
    }
    x
}

/// The features of one set of a golden case (`case["a"]` or `case["b"]`).
fn set_features(set: &Value, d: usize) -> (Vec<f64>, usize) {
    let n = set["n"].as_u64().unwrap() as usize;
    let x = features(
        set["seed"].as_u64().unwrap(),
        n,
        d,
        set["shift"].as_f64().unwrap(),
        set["offset"].as_f64().unwrap(),
    );
    (x, n)
}

/// Accumulates in uneven batches (1, 7, 100, then 500 at a time).
fn accumulate(x: &[f64], n: usize, d: usize) -> Stats {
    let t = Tensor::from_slice(x).view([n as i64, d as i64]);
    let mut acc = Accumulator::new(d);
    let mut start = 0;
    for size in [1usize, 7, 100].into_iter().chain(std::iter::repeat(500)) {
        if start >= n {
            break;
        }
        let len = size.min(n - start);
        acc.add(&t.narrow(0, start as i64, len as i64)).unwrap();
        start += len;
    }
    acc.finish().unwrap()
}

/// max |a − b| / max |b|.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

fn read(name: &str) -> Stats {
    npz::read_stats(&fixtures().join(name)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn numpy_npz_read_exactly() {
    let arrays = npz::read_npz(&fixtures().join("features.npz")).unwrap();
    let x = features(1, 50, 64, 0.0, 0.0);
    assert_eq!(arrays["x"], Array::f64(vec![50, 64], x.clone()).unwrap());
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    assert_eq!(
        arrays["x32"],
        Array {
            shape: vec![50, 64],
            values: Values::F32(x32)
        }
    );
    // Fortran order, read back in C order.
    let xf: Vec<f64> = (0..50).flat_map(|i| x[i * 64..i * 64 + 10].to_vec()).collect();
    assert_eq!(arrays["xf"], Array::f64(vec![50, 10], xf).unwrap());
    assert_eq!(
        arrays["n"],
        Array {
            shape: vec![],
            values: Values::I64(vec![50])
        }
    );

    // Stats of np.savez_compressed (_a) and np.savez (_b), f8 and f4: the f4 files hold exactly
    // the f8 values rounded to f32.
    for case in ["d64_full", "d64_rankdef", "d64_offset"] {
        for t in ["a", "b"] {
            let s = read(&format!("{case}_{t}.npz"));
            let s4 = read(&format!("{case}_{t}_f4.npz"));
            assert_eq!((s.dims(), s.n, s4.n), (64, None, None));
            let round = |v: &[f64]| v.iter().map(|&x| x as f32 as f64).collect::<Vec<_>>();
            assert_eq!(s4.mu, round(&s.mu), "{case}_{t}");
            assert_eq!(s4.sigma, round(&s.sigma), "{case}_{t}");
        }
    }
}

#[test]
fn accumulator_equals_numpy_mean_cov() {
    let g = goldens();
    let mut worst = (0f64, 0f64);
    for case in ["d64_full", "d64_rankdef", "d64_offset"] {
        for t in ["a", "b"] {
            let set = &g["cases"][case][t];
            let (x, n) = set_features(set, 64);
            let ours = accumulate(&x, n, 64);
            let numpy = read(&format!("{case}_{t}.npz"));
            assert_eq!(ours.n, Some(n));
            let (em, es) = (rel_err(&ours.mu, &numpy.mu), rel_err(&ours.sigma, &numpy.sigma));
            worst = (worst.0.max(em), worst.1.max(es));
            // d64_offset's features sit at 1e4 ± 1: mean and covariance must not lose digits.
            assert!(em <= 1e-12 && es <= 1e-12, "{case}_{t}: mu {em:e}, sigma {es:e}");
        }
    }
    eprintln!(
        "accumulator vs numpy (d = 64): mu {:e}, sigma {:e} relative",
        worst.0, worst.1
    );

    // Any float kind: f32 and f16 batches equal the f64 statistics of the same (rounded) values.
    let (x, n) = set_features(&g["cases"]["d64_full"]["a"], 64);
    let t = Tensor::from_slice(&x).view([n as i64, 64]);
    for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
        let low = t.to_kind(kind);
        let want = Stats::from_features(&low.to_kind(Kind::Double)).unwrap();
        let mut acc = Accumulator::new(64);
        acc.add(&low.narrow(0, 0, 10)).unwrap();
        acc.add(&low.narrow(0, 10, n as i64 - 10)).unwrap();
        let got = acc.finish().unwrap();
        assert!(rel_err(&got.sigma, &want.sigma) <= 1e-12, "{kind:?}");
        assert!(rel_err(&got.mu, &want.mu) <= 1e-14, "{kind:?}");
    }

    // Bad input is an error.
    let mut acc = Accumulator::new(64);
    assert!(matches!(
        acc.add(&Tensor::zeros([3, 63], (Kind::Float, tch::Device::Cpu))),
        Err(Error::Input(_))
    ));
    assert!(matches!(
        acc.add(&Tensor::zeros([3, 64], (Kind::Int64, tch::Device::Cpu))),
        Err(Error::Input(_))
    ));
    let nan = Tensor::full([2, 64], f64::NAN, (Kind::Double, tch::Device::Cpu));
    assert!(matches!(acc.add(&nan), Err(Error::Input(_))));
    acc.add(&t.narrow(0, 0, 1)).unwrap();
    assert!(matches!(acc.finish(), Err(Error::Input(_))));
}

/// Checks our distance against every reference of `refs` ({pytorch_fid, clean_fid, torchmetrics});
/// returns the largest relative error.
fn check(label: &str, ours: f64, refs: &Value, tol: f64) -> f64 {
    let mut worst = 0f64;
    for (name, want) in refs.as_object().unwrap() {
        let want = want.as_f64().unwrap_or_else(|| panic!("{label}: {name} has no value"));
        let e = rel(ours, want);
        assert!(e <= tol, "{label}: {ours} against {name} {want}: {e:e} > {tol:e}");
        worst = worst.max(e);
    }
    worst
}

#[test]
fn fid_of_numpy_stats_equals_references() {
    let g = goldens();
    for case in ["d64_full", "d64_rankdef", "d64_offset"] {
        let golden = &g["cases"][case];
        let tol = if case.contains("rankdef") { 1e-4 } else { 1e-6 };
        let r = frechet_distance(&read(&format!("{case}_a.npz")), &read(&format!("{case}_b.npz"))).unwrap();
        assert_eq!(r.eps, None);
        assert!(rel(r.mean_term, golden["mean_term"].as_f64().unwrap()) <= 1e-12);
        let e = check(case, r.value, &golden["fid"], tol);
        let r4 = frechet_distance(&read(&format!("{case}_a_f4.npz")), &read(&format!("{case}_b_f4.npz"))).unwrap();
        let e4 = check(&format!("{case} f4"), r4.value, &golden["fid_f4"], tol);
        eprintln!("{case}: FID {} ({:e} relative, f4 files {:e})", r.value, e, e4);
    }
}

#[test]
fn fid_of_accumulated_features_equals_references() {
    let g = goldens();
    for case in ["d64_rankdef", "d256_full", "d256_rankdef", "d2048_full"] {
        let golden = &g["cases"][case];
        let d = golden["d"].as_u64().unwrap() as usize;
        let mut stats = Vec::new();
        for t in ["a", "b"] {
            let set = &golden[t];
            let (x, n) = set_features(set, d);
            let t0 = std::time::Instant::now();
            let s = accumulate(&x, n, d);
            eprintln!("{case}_{t}: accumulated in {:?}", t0.elapsed());
            // numpy's checksums of the same statistics.
            let trace: f64 = (0..d).map(|i| s.sigma[i * d + i]).sum();
            let abs: f64 = s.sigma.iter().map(|v| v.abs()).sum();
            assert!(rel(trace, set["sigma_trace"].as_f64().unwrap()) <= 1e-12, "{case}_{t}");
            assert!(rel(abs, set["sigma_abs_sum"].as_f64().unwrap()) <= 1e-12, "{case}_{t}");
            assert!(
                rel(s.sigma[1], set["sigma_0_1"].as_f64().unwrap()) <= 1e-10,
                "{case}_{t}"
            );
            assert!(
                (s.mu.iter().sum::<f64>() - set["mu_sum"].as_f64().unwrap()).abs() <= 1e-11,
                "{case}_{t}"
            );
            stats.push(s);
        }
        let rankdef = case.contains("rankdef");
        let t0 = std::time::Instant::now();
        let r = frechet_distance(&stats[0], &stats[1]).unwrap();
        eprintln!("{case}: distance in {:?}", t0.elapsed());
        let e = check(case, r.value, &golden["fid"], if rankdef { 1e-4 } else { 1e-6 });
        assert_eq!(r.warnings.len(), if rankdef { 2 } else { 0 }, "{:?}", r.warnings);
        eprintln!("{case}: FID {} ({e:e} relative)", r.value);
    }
}

#[test]
fn fid_of_identical_and_shifted_statistics() {
    let g = goldens();
    for case in ["d64_full", "d64_rankdef", "d256_rankdef"] {
        let d = g["cases"][case]["d"].as_u64().unwrap() as usize;
        let (x, n) = set_features(&g["cases"][case]["a"], d);
        let a = accumulate(&x, n, d);
        let same = frechet_distance(&a, &a).unwrap();
        assert!(same.value.abs() <= 1e-9, "{case}: FID(X, X) = {:e}", same.value);
        // Means-only shift: FID = ‖Δμ‖².
        let mut b = a.clone();
        let delta: Vec<f64> = (0..d).map(|j| ((j % 9) as f64 - 4.0) * 0.125).collect();
        b.mu.iter_mut().zip(&delta).for_each(|(m, dl)| *m += dl);
        let want: f64 = delta.iter().map(|v| v * v).sum();
        let shifted = frechet_distance(&a, &b).unwrap();
        assert!(
            (shifted.value - want).abs() <= 1e-9,
            "{case}: {} against {want}",
            shifted.value
        );
        eprintln!(
            "{case}: FID(X, X) = {:e}, shift error {:e}",
            same.value,
            shifted.value - want
        );
    }
    let small = read("d64_full_a.npz");
    let big = Stats {
        mu: vec![0.0; 65],
        sigma: vec![0.0; 65 * 65],
        n: None,
    };
    assert!(matches!(
        frechet_distance(&small, &big),
        Err(Error::DimsMismatch { a: 64, b: 65 })
    ));
}

/// numpy (`.venv/bin/python`) loads what we write, as pytorch-fid and clean-fid index it.
#[test]
fn written_npz_read_by_numpy() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh", python.display());
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.npz");
    let reference = fixtures().join("d64_full_a.npz");
    let mut s = read("d64_full_a.npz");
    s.n = Some(500);
    npz::write_stats(&ours, &s).unwrap();
    assert_eq!(npz::read_stats(&ours).unwrap(), s);
    // No temporary file is left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let script = r#"
import sys
import numpy as np
with np.load(sys.argv[1]) as f:  # pytorch-fid's reading
    mu, sigma, n = f["mu"][:], f["sigma"][:], f["n"]
ref = np.load(sys.argv[2])       # clean-fid's reading
assert mu.dtype == np.float64 and sigma.dtype == np.float64 and n.dtype == np.int64, (mu.dtype, n.dtype)
assert sigma.flags["C_CONTIGUOUS"] and n.shape == () and int(n) == 500
assert np.array_equal(mu, ref["mu"]) and np.array_equal(sigma, ref["sigma"])
print("ok")
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&ours)
        .arg(&reference)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn npz_errors_name_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("only_mu.npz");
    let mu = Array::f64(vec![3], vec![1.0, 2.0, 3.0]).unwrap();
    npz::write_npz(&path, &[("mu", &mu)]).unwrap();
    let e = npz::read_stats(&path).unwrap_err().to_string();
    assert!(e.contains("only_mu.npz") && e.contains("'sigma'"), "{e}");

    let bad_shape = dir.path().join("bad_shape.npz");
    let sigma = Array::f64(vec![2, 2], vec![1.0; 4]).unwrap();
    npz::write_npz(&bad_shape, &[("mu", &mu), ("sigma", &sigma)]).unwrap();
    let e = npz::read_stats(&bad_shape).unwrap_err().to_string();
    assert!(
        e.contains("bad_shape.npz") && e.contains("'sigma'") && e.contains("[2, 2]"),
        "{e}"
    );

    let garbage = dir.path().join("garbage.npz");
    std::fs::write(&garbage, b"not a zip").unwrap();
    let e = npz::read_stats(&garbage).unwrap_err();
    assert!(matches!(&e, Error::Invalid { path, .. } if path == &garbage), "{e}");
    assert!(matches!(
        npz::read_stats(&dir.path().join("missing.npz")),
        Err(Error::Io { .. })
    ));
}
