//! `T5Config`: the subset of a Hugging Face T5 `config.json` that the encoder needs, with
//! the same per-field defaults as `transformers.T5Config` (unknown fields are ignored).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{io_err, T5Error};

/// A Hugging Face T5 `config.json`. Only encoder-relevant fields are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_d_model")]
    pub d_model: usize,
    #[serde(default = "default_d_kv")]
    pub d_kv: usize,
    #[serde(default = "default_d_ff")]
    pub d_ff: usize,
    /// Number of encoder blocks.
    #[serde(default = "default_num_layers")]
    pub num_layers: usize,
    #[serde(default = "default_num_heads")]
    pub num_heads: usize,
    #[serde(default = "default_num_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `"relu"` (original T5), `"gated-gelu"` (FLAN-T5, T5 v1.1), or `[gated-]ACT` with ACT
    /// one of relu, gelu, gelu_new, silu.
    #[serde(default = "default_ff_proj")]
    pub feed_forward_proj: String,
    #[serde(default = "default_pad")]
    pub pad_token_id: usize,
    #[serde(default = "default_eos")]
    pub eos_token_id: usize,
    /// Where the checkpoint came from (the HF model id when saved by `save_pretrained`).
    #[serde(
        default,
        rename = "_name_or_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub name_or_path: Option<String>,
}

fn default_vocab_size() -> usize {
    32128
}
fn default_d_model() -> usize {
    512
}
fn default_d_kv() -> usize {
    64
}
fn default_d_ff() -> usize {
    2048
}
fn default_num_layers() -> usize {
    6
}
fn default_num_heads() -> usize {
    8
}
fn default_num_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff_proj() -> String {
    "relu".to_string()
}
fn default_pad() -> usize {
    0
}
fn default_eos() -> usize {
    1
}

/// Activation inside the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// Exact (erf) GELU.
    Gelu,
    /// Tanh-approximated GELU (HF's `gelu_new`).
    GeluTanh,
    Silu,
}

/// How the feed-forward block is wired: `wo(act(wi x))` or `wo(act(wi_0 x) * wi_1 x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedForward {
    pub act: Activation,
    pub gated: bool,
}

impl T5Config {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, T5Error> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let cfg: T5Config = serde_json::from_str(&text).map_err(|source| T5Error::ConfigParse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate().map_err(|msg| T5Error::ConfigValue {
            path: path.to_path_buf(),
            msg,
        })?;
        Ok(cfg)
    }

    /// Checks sizes are usable and the feed-forward kind is known.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
        ] {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if self.relative_attention_num_buckets < 4 {
            return Err("relative_attention_num_buckets must be at least 4".into());
        }
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets / 4 {
            return Err("relative_attention_max_distance must exceed num_buckets / 4".into());
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            return Err("layer_norm_epsilon must be positive".into());
        }
        self.feed_forward()?;
        Ok(())
    }

    /// Parses `feed_forward_proj` the way `transformers.T5Config` does: an optional `gated-`
    /// prefix and an activation name, with `gated-gelu` meaning the tanh approximation.
    pub fn feed_forward(&self) -> Result<FeedForward, String> {
        let s = self.feed_forward_proj.as_str();
        let (gated, act) = match s.strip_prefix("gated-") {
            Some(a) => (true, a),
            None => (false, s),
        };
        let act = match act {
            "relu" => Activation::Relu,
            // HF special-cases "gated-gelu" to gelu_new (the tanh form) for T5 v1.1 / FLAN.
            "gelu" if gated => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            _ => return Err(format!("unsupported feed_forward_proj {s:?}")),
        };
        Ok(FeedForward { act, gated })
    }

    /// Width of the attention projections (`num_heads * d_kv`).
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// The encoder's parameters as (HF key, shape), in checkpoint order, including
    /// `shared.weight`. `T5Encoder::new` creates exactly these.
    pub fn encoder_param_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let d = self.d_model as i64;
        let inner = self.inner_dim() as i64;
        let ff = self.d_ff as i64;
        let gated = self.feed_forward().map(|f| f.gated).unwrap_or(false);
        let mut out = vec![("shared.weight".to_string(), vec![self.vocab_size as i64, d])];
        for i in 0..self.num_layers {
            let a = format!("encoder.block.{i}.layer.0");
            for n in ["q", "k", "v"] {
                out.push((format!("{a}.SelfAttention.{n}.weight"), vec![inner, d]));
            }
            out.push((format!("{a}.SelfAttention.o.weight"), vec![d, inner]));
            if i == 0 {
                out.push((
                    format!("{a}.SelfAttention.relative_attention_bias.weight"),
                    vec![
                        self.relative_attention_num_buckets as i64,
                        self.num_heads as i64,
                    ],
                ));
            }
            out.push((format!("{a}.layer_norm.weight"), vec![d]));
            let f = format!("encoder.block.{i}.layer.1");
            if gated {
                out.push((format!("{f}.DenseReluDense.wi_0.weight"), vec![ff, d]));
                out.push((format!("{f}.DenseReluDense.wi_1.weight"), vec![ff, d]));
            } else {
                out.push((format!("{f}.DenseReluDense.wi.weight"), vec![ff, d]));
            }
            out.push((format!("{f}.DenseReluDense.wo.weight"), vec![d, ff]));
            out.push((format!("{f}.layer_norm.weight"), vec![d]));
        }
        out.push(("encoder.final_layer_norm.weight".to_string(), vec![d]));
        out
    }
}
