//! The real FLAN-T5-XL layout (`flan_t5_xl_config.json`, `keys_flan_t5_xl_encoder.tsv`):
//! our encoder builds exactly those 219 tensors, 1,223,527,424 parameters.
//!
//! Cost choice: the full XL is built once in bf16 with constant init (≈2.4 GB of RAM, no
//! disk); writing and re-reading 2.4 GB of random weights on every CI run would dominate the
//! suite, so the HF-layout write/shard/load path is exercised on an XL-*width* model cut to
//! 2 blocks and a 4096-row embedding (≈109 M parameters, bf16, 3 shards), which covers block 0 (with the relative
//! bias) and a later block at XL shapes.

use crate::t5_common;

use mdm_ingest::t5::{
    tiny_tokenizer_json, write_random_t5, Checkpoint, EncodeOptions, T5Config, T5Device, T5Dtype,
    T5Encoder, TextEncoder,
};
use t5_common::t5_reference;
use tch::{nn, Kind};

const XL_PARAMS: i64 = 1_223_527_424;

fn tsv(dir: &std::path::Path) -> Vec<(String, Vec<i64>, i64)> {
    let text = std::fs::read_to_string(dir.join("keys_flan_t5_xl_encoder.tsv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let shape = f[1].split(',').map(|x| x.parse().unwrap()).collect();
            (f[0].to_string(), shape, f[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn xl_layout_matches_the_key_table() {
    let Some(dir) = t5_reference() else { return };
    let cfg = T5Config::from_file(&dir.join("flan_t5_xl_config.json")).unwrap();
    let want = tsv(&dir);
    assert_eq!(want.len(), 219);
    let got = cfg.encoder_param_shapes();
    assert_eq!(got.len(), want.len());
    for ((k, s), (wk, ws, n)) in got.iter().zip(&want) {
        assert_eq!((k, s), (wk, ws));
        assert_eq!(s.iter().product::<i64>(), *n, "{k}");
    }
    let total: i64 = got.iter().map(|(_, s)| s.iter().product::<i64>()).sum();
    assert_eq!(total, XL_PARAMS);
}

#[test]
fn xl_encoder_builds_with_the_right_parameter_count() {
    let Some(dir) = t5_reference() else { return };
    let cfg = T5Config::from_file(&dir.join("flan_t5_xl_config.json")).unwrap();
    let mut vs = nn::VarStore::new(tch::Device::Cpu);
    vs.set_kind(Kind::BFloat16);
    let enc = T5Encoder::new(&vs.root(), &cfg).unwrap();
    assert_eq!(enc.num_parameters(), XL_PARAMS);
    let want = tsv(&dir);
    let got = enc.named_parameters();
    assert_eq!(got.len(), want.len());
    for ((k, t), (wk, ws, _)) in got.iter().zip(&want) {
        assert_eq!(k, wk);
        assert_eq!(&t.size(), ws, "{k}");
        assert_eq!(t.kind(), Kind::BFloat16);
    }
    // The var store holds exactly these, under the HF names.
    let vars = vs.variables();
    assert_eq!(vars.len(), 219);
    assert!(vars.contains_key("encoder.block.23.layer.1.DenseReluDense.wi_1.weight"));
}

#[test]
fn xl_width_sharded_bf16_checkpoint_round_trips() {
    let Some(dir) = t5_reference() else { return };
    let mut cfg = T5Config::from_file(&dir.join("flan_t5_xl_config.json")).unwrap();
    cfg.num_layers = 2;
    // XL widths everywhere but the embedding table (the tiny tokenizer has < 256 pieces).
    cfg.vocab_size = 4096;
    let model = tempfile::tempdir().unwrap();
    write_random_t5(model.path(), &cfg, 1, T5Dtype::Bf16, 3, &Default::default()).unwrap();
    std::fs::write(model.path().join("tokenizer.json"), tiny_tokenizer_json()).unwrap();
    assert!(model
        .path()
        .join("model-00003-of-00003.safetensors")
        .is_file());
    assert!(!model.path().join("model.safetensors").exists());
    let ck = Checkpoint::open(model.path()).unwrap();
    assert_eq!(ck.files().len(), 3);
    assert_eq!(ck.shape("shared.weight"), Some(&[4096i64, 2048][..]));

    let opts = EncodeOptions {
        dtype: T5Dtype::Bf16,
        device: T5Device::Cpu,
        ..Default::default()
    };
    let mut te = TextEncoder::from_dir(model.path(), opts).unwrap();
    assert_eq!(te.dim(), 2048);
    assert_eq!(te.provenance().dtype, "bf16");
    // Weights arrive bit-exact (bf16 on disk, bf16 in the model).
    let stored = ck
        .read("encoder.block.1.layer.0.SelfAttention.k.weight")
        .unwrap()
        .unwrap();
    let (_, loaded) = te
        .model()
        .named_parameters()
        .into_iter()
        .find(|(k, _)| k == "encoder.block.1.layer.0.SelfAttention.k.weight")
        .unwrap();
    assert!(stored.equal(&loaded));
    let out = te.encode(&["a dog on the beach", "two cats"]).unwrap();
    for e in out.iter().map(|e| e.as_ref().unwrap()) {
        assert_eq!(e.states.len(), e.tokens() * 2048);
        assert!(e.states.iter().all(|x| x.is_finite()));
    }
}
