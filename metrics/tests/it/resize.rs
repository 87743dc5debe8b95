//! Resizers and network inputs against Pillow / torch / torchmetrics / torch-fidelity / clean-fid goldens
//! (`tools/metrics_fixtures/resize.py`; inputs recomputed here from the same integer hash).
//! Tolerance: ≤ 1e-3 on the 0–255 scale (the network inputs, scaled by 1/128 or 2/255, are
//! compared after undoing that scale).

use std::path::PathBuf;

use mdm_metrics::resize::{pil_bicubic, tf1_bilinear, torch_bilinear, torch_bilinear_aa, Mode, INPUT_SIZE};

/// murmur3's finaliser of a·0x9E3779B1 + b·0x85EBCA77 + 0x165667B1, as `hash_u32` in the generator.
pub(crate) fn hash_u32(a: u32, b: u32) -> u32 {
    let mut h = a.wrapping_mul(0x9E37_79B1).wrapping_add(b.wrapping_mul(0x85EB_CA77)).wrapping_add(0x1656_67B1);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}

/// `n` values in [0, 1), exact in f32 (`hash_unit` in the generator).
pub(crate) fn hash_unit(a: u32, n: usize) -> Vec<f32> {
    (0..n).map(|i| (hash_u32(a, i as u32) >> 8) as f32 * (1.0 / 16_777_216.0)).collect()
}

/// An 8-bit RGB image `h × w × 3` (`rgb_u8` in the generator).
pub(crate) fn rgb_u8(seed: u32, h: usize, w: usize) -> Vec<u8> {
    hash_unit(seed, h * w * 3).into_iter().map(|u| (u * 256.0).floor() as u8).collect()
}

pub(crate) fn fixtures(area: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(area)
}

struct Case {
    name: String,
    kind: String,
    seed: u32,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    row_step: usize,
    golden: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let dir = fixtures("resize");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("cases.json")).expect("cases.json")).unwrap();
    let blob = std::fs::read(dir.join("outputs.f32")).expect("outputs.f32");
    let all: Vec<f32> = blob.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let u = |c: &serde_json::Value, k: &str| c[k].as_u64().unwrap() as usize;
    meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let n: usize = c["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).product();
            let off = u(c, "offset");
            Case {
                name: c["name"].as_str().unwrap().to_string(),
                kind: c["kind"].as_str().unwrap().to_string(),
                seed: u(c, "seed") as u32,
                h: u(c, "h"),
                w: u(c, "w"),
                out_h: u(c, "out_h"),
                out_w: u(c, "out_w"),
                row_step: u(c, "row_step"),
                golden: all[off..off + n].to_vec(),
            }
        })
        .collect()
}

/// The kept rows (every `step`-th of each `h × w` plane) of `planes`.
fn keep_rows(planes: &[f32], h: usize, w: usize, step: usize) -> Vec<f32> {
    planes.chunks_exact(h * w).flat_map(|p| p.chunks_exact(w).step_by(step).flatten().copied()).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn resizers_match_pillow_torch_and_torch_fidelity() {
    let cases = cases();
    let mut kinds = std::collections::BTreeSet::new();
    for c in cases.iter().filter(|c| !c.kind.starts_with("input_")) {
        let x: Vec<f32> = hash_unit(c.seed, c.h * c.w).into_iter().map(|u| u * 255.0).collect();
        let f = match c.kind.as_str() {
            "pil_bicubic" => pil_bicubic,
            "torch_bilinear" => torch_bilinear,
            "tf1_bilinear" => tf1_bilinear,
            "torch_bilinear_aa" => torch_bilinear_aa,
            k => panic!("unknown kind {k}"),
        };
        let ours = keep_rows(&f(&x, c.h, c.w, c.out_h, c.out_w), c.out_h, c.out_w, c.row_step);
        let err = max_abs_diff(&ours, &c.golden);
        eprintln!("{}: max |Δ| = {err:.2e} (0–255 scale)", c.name);
        assert!(err <= 1e-3, "{}: max |Δ| {err} > 1e-3", c.name);
        kinds.insert(c.kind.clone());
    }
    assert_eq!(kinds.len(), 4, "every resizer has goldens");
}

#[test]
fn network_inputs_match_each_reference_package() {
    let cases = cases();
    let mut modes = std::collections::BTreeSet::new();
    for c in cases.iter().filter(|c| c.kind.starts_with("input_")) {
        let mode: Mode = c.kind["input_".len()..].parse().unwrap();
        let rgb = rgb_u8(c.seed, c.h, c.w);
        let x = Mode::network_input(mode, &rgb, c.h, c.w);
        assert_eq!(x.len(), 3 * INPUT_SIZE * INPUT_SIZE);
        let ours = keep_rows(&x, INPUT_SIZE, INPUT_SIZE, c.row_step);
        // back to the 0–255 scale: clean/torchmetrics scale by 1/128, pytorch-fid by 2/255
        let unit = if mode == Mode::PytorchFid { 255.0 / 2.0 } else { 128.0 };
        let err = max_abs_diff(&ours, &c.golden) * unit;
        eprintln!("{}: max |Δ| = {err:.2e} (0–255 scale)", c.name);
        assert!(err <= 1e-3, "{}: max |Δ| {err} > 1e-3", c.name);
        modes.insert(mode.name());
    }
    assert_eq!(modes.len(), Mode::ALL.len(), "every mode has goldens");
}
