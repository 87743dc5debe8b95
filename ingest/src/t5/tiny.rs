//! `make_tiny_t5`: a seeded random (untrained) T5 in the Hugging Face layout, plus a
//! T5-style `tokenizer.json` built in code, so demos and tests download nothing.

use std::collections::BTreeMap;
use std::path::Path;

use super::config::T5Config;
use super::weights::{write_safetensors, TensorBytes};
use super::{io_err, T5Dtype, T5Error};

/// Said wherever the tiny model is used: its embeddings carry no meaning.
pub const TINY_T5_NOTICE: &str =
    "this T5 encoder is seeded random and UNTRAINED: its text embeddings carry no meaning";

const WORDS: &[&str] = &[
    "a",
    "an",
    "the",
    "of",
    "in",
    "on",
    "at",
    "with",
    "and",
    "or",
    "to",
    "for",
    "from",
    "by",
    "is",
    "are",
    "over",
    "under",
    "near",
    "two",
    "three",
    "man",
    "woman",
    "men",
    "women",
    "child",
    "children",
    "people",
    "person",
    "dog",
    "dogs",
    "cat",
    "cats",
    "bird",
    "birds",
    "horse",
    "car",
    "bus",
    "boat",
    "tree",
    "trees",
    "house",
    "city",
    "street",
    "road",
    "park",
    "beach",
    "sea",
    "river",
    "lake",
    "mountain",
    "mountains",
    "sky",
    "cloud",
    "clouds",
    "sun",
    "sunset",
    "snow",
    "water",
    "field",
    "forest",
    "table",
    "chair",
    "room",
    "window",
    "food",
    "plate",
    "cup",
    "photo",
    "picture",
    "painting",
    "view",
    "background",
    "white",
    "black",
    "red",
    "blue",
    "green",
    "yellow",
    "small",
    "large",
    "big",
    "old",
    "young",
    "new",
    "beautiful",
    "sitting",
    "standing",
    "walking",
    "running",
    "playing",
    "holding",
    "wearing",
    "looking",
    "flying",
    "stock",
    "image",
    "illustration",
    "vector",
    "close",
    "up",
];

const SUBWORDS: &[&str] = &[
    "ing", "ed", "er", "es", "en", "in", "on", "an", "at", "le", "ly", "th", "re", "st", "al",
];

const CHARS: &str =
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-():;/&+%#@*";

/// The tiny tokenizer's `tokenizer.json` text: Unigram over `<pad>`=0, `</s>`=1, `<unk>`=2,
/// `▁`, single characters, `▁word` pieces and subwords; NFKC + space-run collapsing,
/// WhitespaceSplit + Metaspace, and `</s>` appended by TemplateProcessing.
pub fn tiny_tokenizer_json() -> String {
    let mut vocab: Vec<(String, f64)> = vec![
        ("<pad>".into(), 0.0),
        ("</s>".into(), 0.0),
        ("<unk>".into(), 0.0),
        ("\u{2581}".into(), -2.0),
    ];
    for (i, c) in CHARS.chars().enumerate() {
        vocab.push((c.to_string(), -10.0 - 0.01 * i as f64));
    }
    for (i, w) in WORDS.iter().enumerate() {
        vocab.push((format!("\u{2581}{w}"), -4.0 - 0.01 * i as f64));
    }
    for (i, s) in SUBWORDS.iter().enumerate() {
        vocab.push((s.to_string(), -7.0 - 0.01 * i as f64));
    }
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let metaspace = serde_json::json!({"type": "Metaspace", "replacement": "\u{2581}",
        "prepend_scheme": "always", "split": true});
    let j = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<pad>"), special(1, "</s>"), special(2, "<unk>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFKC"},
            {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"}, metaspace
        ]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "</s>", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}},
                     {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}
        },
        "decoder": metaspace,
        "model": {"type": "Unigram", "unk_id": 2, "vocab": vocab, "byte_fallback": false}
    });
    serde_json::to_string_pretty(&j).unwrap_or_default()
}

/// Number of pieces in [`tiny_tokenizer_json`].
fn tiny_vocab_len() -> usize {
    4 + CHARS.chars().count() + WORDS.len() + SUBWORDS.len()
}

/// The tiny model's config: gated-gelu, d_model 64, 4 heads of 16, 2 layers, d_ff 128.
pub fn tiny_t5_config() -> T5Config {
    T5Config {
        vocab_size: tiny_vocab_len().div_ceil(8) * 8,
        d_model: 64,
        d_kv: 16,
        d_ff: 128,
        num_layers: 2,
        num_heads: 4,
        relative_attention_num_buckets: 32,
        relative_attention_max_distance: 128,
        layer_norm_epsilon: 1e-6,
        feed_forward_proj: "gated-gelu".into(),
        pad_token_id: 0,
        eos_token_id: 1,
        name_or_path: Some("mdm/tiny-t5-random".into()),
    }
}

/// SplitMix64: deterministic values independent of libtorch.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Zero mean, unit variance: uniform on [-√3, √3] (cheap enough for XL-sized fills).
    fn unit(&mut self) -> f32 {
        (3f64.sqrt() * (2.0 * self.uniform() - 1.0)) as f32
    }
}

/// Random encoder weights for `cfg` in the HF layout, stored as `dtype`, in checkpoint
/// order: zero-mean uniform noise with HF's init std, norms 1 ± 0.1 (not trivially 1).
pub(crate) fn random_weights(
    cfg: &T5Config,
    seed: u64,
    dtype: T5Dtype,
) -> Vec<(String, TensorBytes)> {
    let mut rng = Rng(seed);
    let d = cfg.d_model as f32;
    cfg.encoder_param_shapes()
        .into_iter()
        .map(|(key, shape)| {
            let n: i64 = shape.iter().product();
            let (mean, std) = if key.ends_with("layer_norm.weight") {
                (1.0, 0.1)
            } else if key.ends_with("relative_attention_bias.weight") || key == "shared.weight" {
                (0.0, 1.0)
            } else if key.ends_with(".q.weight") {
                (0.0, (d * cfg.d_kv as f32).powf(-0.5))
            } else if key.ends_with(".o.weight") {
                (0.0, (cfg.inner_dim() as f32).powf(-0.5))
            } else if key.ends_with(".wo.weight") {
                (0.0, (cfg.d_ff as f32).powf(-0.5))
            } else {
                (0.0, d.powf(-0.5))
            };
            let t = match dtype {
                T5Dtype::F32 => {
                    let mut data = Vec::with_capacity(n as usize * 4);
                    for _ in 0..n {
                        data.extend_from_slice(&(mean + std * rng.unit()).to_le_bytes());
                    }
                    TensorBytes {
                        dtype: "F32",
                        shape,
                        data,
                    }
                }
                T5Dtype::Bf16 => {
                    let mut data = Vec::with_capacity(n as usize * 2);
                    for _ in 0..n {
                        let x = half::bf16::from_f32(mean + std * rng.unit());
                        data.extend_from_slice(&x.to_le_bytes());
                    }
                    TensorBytes {
                        dtype: "BF16",
                        shape,
                        data,
                    }
                }
            };
            (key, t)
        })
        .collect()
}

/// Writes a seeded random (untrained) encoder checkpoint for `cfg` in the HF layout:
/// `config.json` (with `extra` keys merged in) and `model.safetensors`, or, when
/// `shards > 1`, `model-0000N-of-0000M.safetensors` plus `model.safetensors.index.json`.
/// Weights are stored as `dtype`. No tokenizer is written.
pub fn write_random_t5(
    dir: &Path,
    cfg: &T5Config,
    seed: u64,
    dtype: T5Dtype,
    shards: usize,
    extra: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), T5Error> {
    cfg.validate().map_err(T5Error::BadOption)?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut j = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(m) = j.as_object_mut() {
        m.insert("model_type".into(), "t5".into());
        m.insert(
            "architectures".into(),
            serde_json::json!(["T5EncoderModel"]),
        );
        m.insert(
            "torch_dtype".into(),
            (if dtype == T5Dtype::F32 {
                "float32"
            } else {
                "bfloat16"
            })
            .into(),
        );
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&j).unwrap_or_default();
    std::fs::write(&config_path, text + "\n").map_err(io_err(&config_path))?;

    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let weights = random_weights(cfg, seed, dtype);
    let shards = shards.clamp(1, weights.len());
    if shards == 1 {
        return write_safetensors(&dir.join("model.safetensors"), &weights, Some(&meta));
    }
    // Split into `shards` runs of about equal bytes, in checkpoint order.
    let total: usize = weights.iter().map(|(_, t)| t.data.len()).sum();
    let mut groups: Vec<Vec<(String, TensorBytes)>> = vec![Vec::new(); shards];
    let mut acc = 0usize;
    for w in weights {
        let g = (acc * shards / total.max(1)).min(shards - 1);
        acc += w.1.data.len();
        groups[g].push(w);
    }
    let mut weight_map = serde_json::Map::new();
    for (i, g) in groups.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        write_safetensors(&dir.join(&name), g, Some(&meta))?;
        for (k, _) in g {
            weight_map.insert(k.clone(), name.clone().into());
        }
    }
    let index = serde_json::json!({
        "metadata": {"total_size": total},
        "weight_map": weight_map,
    });
    let index_path = dir.join("model.safetensors.index.json");
    let text = serde_json::to_string_pretty(&index).unwrap_or_default();
    std::fs::write(&index_path, text).map_err(io_err(&index_path))
}

/// Writes `dir/config.json`, `dir/model.safetensors` (seeded random, untrained, f32) and
/// `dir/tokenizer.json` (see [`tiny_tokenizer_json`]). The directory is created if needed.
pub fn make_tiny_t5(dir: &Path, seed: u64) -> Result<(), T5Error> {
    let mut extra = serde_json::Map::new();
    extra.insert("_comment".into(), TINY_T5_NOTICE.into());
    extra.insert("dense_act_fn".into(), "gelu_new".into());
    extra.insert("is_gated_act".into(), true.into());
    extra.insert("tie_word_embeddings".into(), false.into());
    extra.insert("mdm_seed".into(), seed.into());
    write_random_t5(dir, &tiny_t5_config(), seed, T5Dtype::F32, 1, &extra)?;
    let tok_path = dir.join("tokenizer.json");
    std::fs::write(&tok_path, tiny_tokenizer_json()).map_err(io_err(&tok_path))
}
