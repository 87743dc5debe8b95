//! FID Inception features against pytorch-fid, torchmetrics, torch-fidelity and clean-fid's
//! preprocessing on the same formula weights (`tools/metrics_fixtures/inception.py`).
//!
//! Error measure: per (image, mode, dims) feature vector, max |ours − reference| / max |reference|;
//! the bound is 2e-4.

use mdm_metrics::inception::{formula, load_strict, Dims, FidInception};
use mdm_metrics::resize::{Mode, INPUT_SIZE};
use mdm_metrics::Error;
use tch::{nn, Device, Kind, Tensor};

use crate::resize::{fixtures, rgb_u8};

struct Entry {
    image: String,
    seed: u32,
    h: usize,
    w: usize,
    mode: Mode,
    dims: usize,
    golden: Vec<f32>,
}

/// (name, shape) of each formula tensor in sorted order, and the feature goldens.
fn entries() -> (Vec<(String, Vec<i64>)>, Vec<Entry>) {
    let dir = fixtures("inception");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("features.json")).expect("features.json")).unwrap();
    let blob = std::fs::read(dir.join("features.f32")).expect("features.f32");
    let all: Vec<f32> = blob.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let keys = meta["formula_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let k = k.as_str().unwrap().to_string();
            let shape = meta["formula_shapes"][&k].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect();
            (k, shape)
        })
        .collect();
    let u = |e: &serde_json::Value, k: &str| e[k].as_u64().unwrap() as usize;
    let entries = meta["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let (off, dims) = (u(e, "offset"), u(e, "dims"));
            Entry {
                image: e["image"].as_str().unwrap().to_string(),
                seed: u(e, "seed") as u32,
                h: u(e, "h"),
                w: u(e, "w"),
                mode: e["mode"].as_str().unwrap().parse().unwrap(),
                dims,
                golden: all[off..off + dims].to_vec(),
            }
        })
        .collect();
    (keys, entries)
}

fn formula_net(dir: &std::path::Path) -> (FidInception, nn::VarStore) {
    let path = dir.join("formula.safetensors");
    formula::write(&path).unwrap();
    FidInception::load(&path, Device::Cpu).unwrap()
}

#[test]
fn variable_names_are_pytorch_fids_state_dict_keys() {
    let (keys, _) = entries();
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = FidInception::new(&vs.root());
    let mut ours: Vec<(String, Vec<i64>)> = vs.variables().into_iter().map(|(k, t)| (k, t.size())).collect();
    ours.sort();
    assert_eq!(ours.len(), keys.len());
    for (o, k) in ours.iter().zip(&keys) {
        assert_eq!(o, k, "differs from pytorch-fid's fid_inception_v3().state_dict() (less fc.*, num_batches_tracked)");
    }
}

#[test]
fn features_match_the_references_in_every_mode_and_dims() {
    let tmp = tempfile::tempdir().unwrap();
    let (net, _vs) = formula_net(tmp.path());
    let (_, entries) = entries();
    let mut checked = std::collections::BTreeSet::new();
    for mode in Mode::ALL {
        // one batch of all the images of this mode, in the fixture's order
        let mut images: Vec<(&str, u32, usize, usize)> = Vec::new();
        for e in entries.iter().filter(|e| e.mode == mode) {
            if !images.iter().any(|i| i.0 == e.image) {
                images.push((&e.image, e.seed, e.h, e.w));
            }
        }
        let mut input = Vec::new();
        for &(_, seed, h, w) in &images {
            input.extend(mode.network_input(&rgb_u8(seed, h, w), h, w));
        }
        let n = INPUT_SIZE as i64;
        let x = Tensor::from_slice(&input).reshape([images.len() as i64, 3, n, n]);
        let feats = net.features_upto(&x, Dims::D2048).unwrap();
        assert_eq!(feats.len(), 4);
        for e in entries.iter().filter(|e| e.mode == mode) {
            let i = images.iter().position(|im| im.0 == e.image).unwrap() as i64;
            let d = Dims::ALL.iter().position(|d| d.len() == e.dims).unwrap();
            let ours: Vec<f32> = Vec::try_from(feats[d].get(i).to_kind(Kind::Float)).unwrap();
            let max_ref = e.golden.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(max_ref > 1e-3, "{} {} {}: degenerate golden", e.image, mode, e.dims);
            let err = ours.iter().zip(&e.golden).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / max_ref;
            eprintln!("{} {mode} {}: max|Δ|/max|ref| = {err:.2e}", e.image, e.dims);
            assert!(err <= 2e-4, "{} {mode} {}: relative error {err} > 2e-4", e.image, e.dims);
            checked.insert((mode.name(), e.dims));
        }
    }
    assert_eq!(checked.len(), 4 * Mode::ALL.len(), "every mode × four dims");
    // features() of one block equals the same block of features_upto()
    let x = Tensor::from_slice(&Mode::Clean.network_input(&rgb_u8(7, 8, 8), 8, 8)).reshape([1, 3, 299, 299]);
    let a = net.features(&x, Dims::D192).unwrap();
    let b = &net.features_upto(&x, Dims::D192).unwrap()[1];
    assert_eq!(a.size(), vec![1, 192]);
    assert!(a.allclose(b, 0.0, 0.0, false));
}

/// `load` folds the BatchNorms into the convolutions and runs channels-last; the plain
/// conv → BN → ReLU network (`new` + `load_strict`, not fused) must give the same features.
#[test]
fn folded_network_equals_the_plain_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (fused, _vs) = formula_net(tmp.path());
    let mut vs = nn::VarStore::new(Device::Cpu);
    let plain = FidInception::new(&vs.root());
    load_strict(&mut vs, &tmp.path().join("formula.safetensors")).unwrap();
    let input: Vec<f32> = [3u32, 11].iter().flat_map(|&seed| Mode::Clean.network_input(&rgb_u8(seed, 40, 56), 40, 56)).collect();
    let x = Tensor::from_slice(&input).reshape([2, 3, 299, 299]);
    let a = fused.features_upto(&x, Dims::D2048).unwrap();
    let b = plain.features_upto(&x, Dims::D2048).unwrap();
    for (d, (a, b)) in Dims::ALL.iter().zip(a.iter().zip(&b)) {
        let scale = f64::try_from(b.abs().max()).unwrap();
        let err = f64::try_from((a - b).abs().max()).unwrap() / scale;
        eprintln!("dims {d}: max|fused - plain| / max|plain| = {err:.2e}");
        assert!(scale > 1e-3 && err <= 1e-5, "dims {d}: relative difference {err} > 1e-5");
    }
}

#[test]
fn strict_loading_names_the_file_and_every_bad_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("formula.safetensors");
    formula::write(&good).unwrap();
    let mut ts = Tensor::read_safetensors(&good).unwrap();
    ts.retain(|(k, _)| k != "Mixed_6b.branch7x7_2.conv.weight");
    for (k, t) in ts.iter_mut() {
        if k == "Conv2d_1a_3x3.bn.running_var" {
            *t = Tensor::ones([31], (Kind::Float, Device::Cpu));
        }
    }
    ts.push(("AuxLogits.fc.weight".into(), Tensor::zeros([2], (Kind::Float, Device::Cpu))));
    ts.push(("fc.bias".into(), Tensor::zeros([1008], (Kind::Float, Device::Cpu))));
    let bad = tmp.path().join("bad.safetensors");
    Tensor::write_safetensors(&ts, &bad).unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _net = FidInception::new(&vs.root());
    let err = load_strict(&mut vs, &bad).unwrap_err();
    assert!(matches!(err, Error::Weights { .. }));
    let msg = err.to_string();
    assert!(msg.starts_with(&bad.display().to_string()), "{msg}");
    assert!(msg.contains("1 missing: Mixed_6b.branch7x7_2.conv.weight"), "{msg}");
    assert!(msg.contains("Conv2d_1a_3x3.bn.running_var: [31] in the file, [32] expected"), "{msg}");
    assert!(msg.contains("1 unexpected: AuxLogits.fc.weight"), "{msg}");
    assert!(!msg.contains("fc.bias"), "fc.* is allowed: {msg}");

    let not = tmp.path().join("not.safetensors");
    std::fs::write(&not, b"hello").unwrap();
    assert!(matches!(load_strict(&mut vs, &not), Err(Error::Weights { .. })));
    assert!(matches!(load_strict(&mut vs, &tmp.path().join("absent")), Err(Error::Io { .. })));
    let x = Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    let (net, _vs) = FidInception::load(&good, Device::Cpu).unwrap();
    assert!(matches!(net.features(&x, Dims::D64), Err(Error::Input(_))));
}
