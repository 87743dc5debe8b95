//! T5 text encoder for precomputed caption embeddings (FLAN-T5 as in ml-mdm).
//!
//! - [`T5Config`]: Hugging Face `config.json`.
//! - [`T5Encoder`]: the encoder stack in tch, with variables named as the HF checkpoint keys.
//! - [`Checkpoint`]: reads `model.safetensors` or a sharded checkpoint
//!   (`model.safetensors.index.json`), encoder keys only.
//! - [`T5Tokenizer`]: `tokenizer.json` through the `tokenizers` crate, `</s>` appended, with
//!   a token limit that truncates (keeping `</s>`) or rejects.
//! - [`TextEncoder`]: model directory in, ragged per-caption hidden states out, batched by
//!   token length; [`Provenance`] identifies the model, weights, tokenizer and settings.
//! - [`make_tiny_t5`]: a seeded random tiny T5 and tokenizer for demos and tests (untrained).

mod config;
mod encoder;
mod model;
mod tiny;
mod tokenizer;
mod weights;

use std::path::PathBuf;

/// The tch version the encoder is built on, for callers that handle its tensors.
pub use tch;

pub use config::{Activation, FeedForward, T5Config};
pub use encoder::{EncodeOptions, EncodeStats, Encoded, Provenance, StorageDtype, TextEncoder};
pub use model::{relative_position_buckets, T5Debug, T5Encoder};
pub use tiny::{
    make_tiny_t5, tiny_t5_config, tiny_tokenizer_json, write_random_t5, TINY_T5_NOTICE,
};
pub use tokenizer::{LongCaptions, T5Tokenizer, Tokenized};
pub use weights::{write_safetensors, Checkpoint, TensorBytes};

/// Default token limit per caption, `</s>` included (ml-mdm uses 128).
pub const DEFAULT_MAX_TOKENS: usize = 128;

/// Compute precision of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum T5Dtype {
    F32,
    Bf16,
}

impl T5Dtype {
    pub fn kind(self) -> tch::Kind {
        match self {
            T5Dtype::F32 => tch::Kind::Float,
            T5Dtype::Bf16 => tch::Kind::BFloat16,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            T5Dtype::F32 => "f32",
            T5Dtype::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for T5Dtype {
    type Err = T5Error;
    fn from_str(s: &str) -> Result<Self, T5Error> {
        match s {
            "f32" | "fp32" | "float32" => Ok(T5Dtype::F32),
            "bf16" | "bfloat16" => Ok(T5Dtype::Bf16),
            _ => Err(T5Error::BadOption(format!(
                "dtype {s:?} (expected f32 or bf16)"
            ))),
        }
    }
}

/// Where the encoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T5Device {
    Cpu,
    Cuda(usize),
}

impl T5Device {
    /// CUDA device 0 when libtorch sees one, else CPU.
    pub fn best_available() -> Self {
        if tch::Cuda::is_available() {
            T5Device::Cuda(0)
        } else {
            T5Device::Cpu
        }
    }
    pub fn device(self) -> tch::Device {
        match self {
            T5Device::Cpu => tch::Device::Cpu,
            T5Device::Cuda(i) => tch::Device::Cuda(i),
        }
    }
}

impl std::str::FromStr for T5Device {
    type Err = T5Error;
    /// `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when available).
    fn from_str(s: &str) -> Result<Self, T5Error> {
        let dev = match s {
            "cpu" => T5Device::Cpu,
            "auto" => T5Device::best_available(),
            "cuda" => T5Device::Cuda(0),
            _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(i) => T5Device::Cuda(i),
                None => {
                    return Err(T5Error::BadOption(format!(
                        "device {s:?} (expected cpu, cuda, cuda:N or auto)"
                    )))
                }
            },
        };
        if let T5Device::Cuda(i) = dev {
            let n = tch::Cuda::device_count();
            if (i as i64) >= n {
                return Err(T5Error::BadOption(format!(
                    "device {s:?}: libtorch sees {n} CUDA device(s)"
                )));
            }
        }
        Ok(dev)
    }
}

/// Errors of the T5 module; file errors carry the path.
#[derive(Debug, thiserror::Error)]
pub enum T5Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: malformed T5 config: {source}")]
    ConfigParse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: invalid T5 config: {msg}")]
    ConfigValue { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Weights { path: PathBuf, msg: String },
    #[error("{dir}: checkpoint lacks encoder tensor(s): {}", keys.join(", "))]
    MissingKeys { dir: PathBuf, keys: Vec<String> },
    #[error("{path}: tensor {key} has shape {got:?}, the config implies {want:?}")]
    Shape {
        path: PathBuf,
        key: String,
        got: Vec<i64>,
        want: Vec<i64>,
    },
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("tokenizing caption {index}: {msg}")]
    Tokenize { index: usize, msg: String },
    #[error("invalid option: {0}")]
    BadOption(String),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Maps an I/O error on `path` to [`T5Error::Io`].
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> T5Error {
    let path = path.to_path_buf();
    move |source| T5Error::Io { path, source }
}
