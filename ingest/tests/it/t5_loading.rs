//! Loading HF checkpoints: single file and sharded (with decoder/lm_head keys ignored and the
//! `encoder.embed_tokens.weight` alias), error cases (missing keys named, bad shapes,
//! malformed config with its path), and the TextEncoder API (ragged output, provenance,
//! counters).

use crate::t5_common;

use mdm_ingest::t5::{
    make_tiny_t5, write_safetensors, Checkpoint, EncodeOptions, LongCaptions, StorageDtype,
    T5Config, T5Device, T5Dtype, T5Error, TensorBytes, TextEncoder,
};
use t5_common::{read_tensor, t5_reference, tiny_model_dir};
use tch::{Kind, Tensor};

fn cpu_opts() -> EncodeOptions {
    EncodeOptions {
        device: T5Device::Cpu,
        ..EncodeOptions::default()
    }
}

/// All tensors of the fixture checkpoint, as bytes.
fn fixture_tensors(dir: &std::path::Path) -> Vec<(String, TensorBytes)> {
    let file = dir.join("tiny_t5.safetensors");
    let cfg = T5Config::from_file(&dir.join("tiny_t5_config.json")).unwrap();
    let ck = Checkpoint::open_file(&file).unwrap();
    cfg.encoder_param_shapes()
        .into_iter()
        .map(|(k, _)| {
            let t = ck.read(&k).unwrap().unwrap();
            (k, TensorBytes::from_tensor(&t).unwrap())
        })
        .collect()
}

fn junk(shape: &[i64]) -> TensorBytes {
    TensorBytes::from_tensor(&Tensor::ones(shape, (Kind::Float, tch::Device::Cpu))).unwrap()
}

/// The fixture split into two shards the way `save_pretrained` does, with decoder and
/// lm_head tensors, and `shared.weight` stored only under its encoder alias.
fn write_sharded(reference: &std::path::Path, out: &std::path::Path) {
    let mut tensors = fixture_tensors(reference);
    for (k, _) in tensors.iter_mut() {
        if k == "shared.weight" {
            *k = "encoder.embed_tokens.weight".to_string();
        }
    }
    tensors.push((
        "decoder.block.0.layer.0.SelfAttention.q.weight".into(),
        junk(&[64, 64]),
    ));
    tensors.push(("lm_head.weight".into(), junk(&[256, 64])));
    let (a, b) = tensors.split_at(9);
    let mut map = serde_json::Map::new();
    for (name, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        write_safetensors(&out.join(name), part, None).unwrap();
        for (k, _) in part {
            map.insert(k.clone(), name.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(out.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::copy(
        reference.join("tiny_t5_config.json"),
        out.join("config.json"),
    )
    .unwrap();
    std::fs::copy(reference.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
}

const CAPTIONS: [&str; 4] = [
    "A photo of a cat sitting on a red chair.",
    "two dogs playing in the snow",
    "",
    "A large colorful painting of two old men sitting on a wooden bench near the river at sunset",
];

#[test]
fn sharded_checkpoint_gives_the_same_states_as_single_file() {
    let Some(reference) = t5_reference() else {
        return;
    };
    let single = tiny_model_dir(&reference);
    let sharded = tempfile::tempdir().unwrap();
    write_sharded(&reference, sharded.path());
    let a = TextEncoder::from_dir(single.path(), cpu_opts())
        .unwrap()
        .encode(&CAPTIONS)
        .unwrap();
    let mut te = TextEncoder::from_dir(sharded.path(), cpu_opts()).unwrap();
    let b = te.encode(&CAPTIONS).unwrap();
    assert_eq!(
        a, b,
        "sharded and single-file checkpoints must agree exactly"
    );
    // Provenance: shard hash differs from single-file hash; tokenizer hash the same.
    let p = te.provenance();
    assert_eq!(p.dim, 64);
    assert_eq!(p.max_tokens, 128);
    assert_eq!(p.dtype, "f32");
    assert_eq!(p.weights_sha256.len(), 64);
    let ps = TextEncoder::from_dir(single.path(), cpu_opts())
        .unwrap()
        .provenance()
        .clone();
    assert_ne!(ps.weights_sha256, p.weights_sha256);
    assert_eq!(ps.tokenizer_sha256, p.tokenizer_sha256);
    // Provenance round-trips through JSON (the manifest stores it).
    let j = serde_json::to_string(&ps).unwrap();
    assert_eq!(
        serde_json::from_str::<mdm_ingest::t5::Provenance>(&j).unwrap(),
        ps
    );
}

#[test]
fn encode_is_ragged_ordered_and_counted() {
    let Some(reference) = t5_reference() else {
        return;
    };
    let model = tiny_model_dir(&reference);
    let opts = EncodeOptions {
        max_tokens: 16,
        batch_size: 2,
        ..cpu_opts()
    };
    let mut te = TextEncoder::from_dir(model.path(), opts).unwrap();
    let out = te.encode(&CAPTIONS).unwrap();
    let tokenizer = te.tokenizer();
    for (c, e) in CAPTIONS.iter().zip(&out) {
        let e = e.as_ref().unwrap();
        let t = tokenizer.encode(c, 0).unwrap();
        assert_eq!(Some(e.ids.as_slice()), t.ids(), "order restored for {c:?}");
        assert_eq!(*e.ids.last().unwrap(), 1);
        assert_eq!(e.states.len(), e.tokens() * 64);
        assert!(e.tokens() <= 16);
        assert_eq!(e.to_le_bytes(StorageDtype::F16).len(), e.tokens() * 64 * 2);
        let bf = e.to_le_bytes(StorageDtype::Bf16);
        let x0 = half::bf16::from_le_bytes([bf[0], bf[1]]).to_f32();
        assert!((x0 - e.states[0]).abs() <= 0.01 * e.states[0].abs().max(1.0));
    }
    assert!(out[3].as_ref().unwrap().truncated());
    assert_eq!(
        out[2].as_ref().unwrap().tokens(),
        1,
        "empty caption is just </s>"
    );
    let st = te.stats();
    assert_eq!(
        (st.captions, st.encoded, st.truncated, st.rejected),
        (4, 4, 1, 0)
    );

    // Reject policy: the long caption comes back as None and is counted.
    let opts = EncodeOptions {
        max_tokens: 16,
        long_captions: LongCaptions::Reject,
        ..cpu_opts()
    };
    let mut te = TextEncoder::from_dir(model.path(), opts).unwrap();
    let rej = te.encode(&CAPTIONS).unwrap();
    assert!(rej[3].is_none());
    // Other captions unchanged; batches pad differently, so allow float rounding.
    for (a, b) in rej[..3].iter().zip(&out[..3]) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!(a.ids, b.ids);
        let d = a
            .states
            .iter()
            .zip(&b.states)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1e-5, "states moved by {d}");
    }
    let st = te.stats();
    assert_eq!(
        (st.captions, st.encoded, st.truncated, st.rejected),
        (4, 3, 0, 1)
    );
}

#[test]
fn missing_encoder_keys_are_named() {
    let Some(reference) = t5_reference() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tensors: Vec<_> = fixture_tensors(&reference)
        .into_iter()
        .filter(|(k, _)| {
            k != "encoder.block.1.layer.1.DenseReluDense.wi_1.weight"
                && k != "encoder.final_layer_norm.weight"
        })
        .collect();
    write_safetensors(&dir.path().join("model.safetensors"), &tensors, None).unwrap();
    std::fs::copy(
        reference.join("tiny_t5_config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        reference.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let err = TextEncoder::from_dir(dir.path(), cpu_opts()).err().unwrap();
    assert!(
        matches!(err, T5Error::MissingKeys { ref keys, .. } if keys.len() == 2),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("encoder.block.1.layer.1.DenseReluDense.wi_1.weight"),
        "{msg}"
    );
    assert!(msg.contains("encoder.final_layer_norm.weight"), "{msg}");
}

#[test]
fn wrong_shape_is_reported_with_key() {
    let Some(reference) = t5_reference() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = fixture_tensors(&reference);
    for (k, t) in tensors.iter_mut() {
        if k == "encoder.block.0.layer.0.SelfAttention.q.weight" {
            *t = junk(&[64, 32]);
        }
    }
    let file = dir.path().join("model.safetensors");
    write_safetensors(&file, &tensors, None).unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    let cfg = T5Config::from_file(&reference.join("tiny_t5_config.json")).unwrap();
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let mut enc = mdm_ingest::t5::T5Encoder::new(&vs.root(), &cfg).unwrap();
    let err = enc.load(&ck).err().unwrap();
    assert!(matches!(err, T5Error::Shape { .. }), "{err}");
    assert!(err.to_string().contains("SelfAttention.q.weight"), "{err}");
}

#[test]
fn config_errors_are_typed_and_carry_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    std::fs::write(&p, "{\"d_model\": \"wide\"}").unwrap();
    let err = T5Config::from_file(&p).err().unwrap();
    assert!(matches!(err, T5Error::ConfigParse { .. }), "{err}");
    assert!(err.to_string().contains(&p.display().to_string()), "{err}");
    std::fs::write(&p, "{\"feed_forward_proj\": \"gated-tanhmagic\"}").unwrap();
    let err = T5Config::from_file(&p).err().unwrap();
    assert!(matches!(err, T5Error::ConfigValue { .. }), "{err}");
    assert!(err.to_string().contains("gated-tanhmagic"), "{err}");
    std::fs::write(&p, "{\"num_heads\": 0}").unwrap();
    assert!(matches!(
        T5Config::from_file(&p),
        Err(T5Error::ConfigValue { .. })
    ));
    let missing = dir.path().join("nope.json");
    let err = T5Config::from_file(&missing).err().unwrap();
    assert!(matches!(err, T5Error::Io { .. }) && err.to_string().contains("nope.json"));
    // A model directory with no weights at all.
    let err = Checkpoint::open(dir.path()).err().unwrap();
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    // A truncated safetensors file.
    std::fs::write(dir.path().join("model.safetensors"), [1u8, 2, 3]).unwrap();
    let err = Checkpoint::open(dir.path()).err().unwrap();
    assert!(matches!(err, T5Error::Weights { .. }), "{err}");
}

#[test]
fn config_defaults_and_feed_forward_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    std::fs::write(&p, "{}").unwrap();
    let cfg = T5Config::from_file(&p).unwrap();
    // transformers.T5Config defaults (t5-small): relu FFN with `wi`/`wo`.
    assert_eq!(
        (
            cfg.d_model,
            cfg.d_kv,
            cfg.d_ff,
            cfg.num_layers,
            cfg.num_heads
        ),
        (512, 64, 2048, 6, 8)
    );
    assert_eq!(cfg.vocab_size, 32128);
    let ff = cfg.feed_forward().unwrap();
    assert!(!ff.gated);
    assert_eq!(ff.act, mdm_ingest::t5::Activation::Relu);
    let keys: Vec<String> = cfg
        .encoder_param_shapes()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(keys.contains(&"encoder.block.5.layer.1.DenseReluDense.wi.weight".to_string()));
    assert!(!keys.iter().any(|k| k.contains("wi_0")));
    std::fs::write(&p, "{\"feed_forward_proj\": \"gated-gelu\"}").unwrap();
    let ff = T5Config::from_file(&p).unwrap().feed_forward().unwrap();
    assert!(ff.gated);
    assert_eq!(ff.act, mdm_ingest::t5::Activation::GeluTanh);
}

/// A relu (original T5) model runs end to end from the HF layout, and differs from the
/// gated one built from the same seed.
#[test]
fn relu_variant_loads_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = mdm_ingest::t5::tiny_t5_config();
    cfg.feed_forward_proj = "relu".into();
    mdm_ingest::t5::write_random_t5(dir.path(), &cfg, 7, T5Dtype::F32, 1, &Default::default())
        .unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        mdm_ingest::t5::tiny_tokenizer_json(),
    )
    .unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert!(ck.contains("encoder.block.1.layer.1.DenseReluDense.wi.weight"));
    let mut te = TextEncoder::from_dir(dir.path(), cpu_opts()).unwrap();
    let e = te
        .encode(&["a dog on the beach"])
        .unwrap()
        .remove(0)
        .unwrap();
    assert!(e.states.iter().all(|x| x.is_finite()));
    let std = (e.states.iter().map(|x| x * x).sum::<f32>() / e.states.len() as f32).sqrt();
    assert!(std > 0.1, "final norm output has unit-ish scale, got {std}");
}

#[test]
fn make_tiny_t5_is_seeded_and_loadable() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    make_tiny_t5(a.path(), 42).unwrap();
    make_tiny_t5(b.path(), 42).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(a.path().join(f)).unwrap(),
            std::fs::read(b.path().join(f)).unwrap(),
            "{f}"
        );
    }
    let c = tempfile::tempdir().unwrap();
    make_tiny_t5(c.path(), 43).unwrap();
    assert_ne!(
        std::fs::read(a.path().join("model.safetensors")).unwrap(),
        std::fs::read(c.path().join("model.safetensors")).unwrap()
    );
    let cfg_text = std::fs::read_to_string(a.path().join("config.json")).unwrap();
    assert!(cfg_text.contains("UNTRAINED"));
    let mut te = TextEncoder::from_dir(a.path(), cpu_opts()).unwrap();
    assert_eq!(te.provenance().model_id, "mdm/tiny-t5-random");
    let tok = te.tokenizer();
    assert_eq!(tok.token_to_id("<pad>"), Some(0));
    assert_eq!(tok.token_to_id("</s>"), Some(1));
    assert_eq!(tok.token_to_id("<unk>"), Some(2));
    let t = tok.encode("a dog  on the beach", 0).unwrap();
    let ids = t.ids().unwrap();
    assert_eq!(ids.len(), 6, "five ▁word pieces and </s>: {ids:?}");
    assert_eq!(*ids.last().unwrap(), 1);
    let e = te
        .encode(&["A red car, 2 dogs!"])
        .unwrap()
        .remove(0)
        .unwrap();
    assert!(e.states.iter().all(|x| x.is_finite()));
    // The stored weights really are the fixture-like scales (norm weights around 1).
    let ln = read_tensor(
        &a.path().join("model.safetensors"),
        "encoder.final_layer_norm.weight",
    );
    let m = ln.mean(Kind::Double).double_value(&[]);
    assert!((m - 1.0).abs() < 0.1, "{m}");
}
