//! `TextEncoder`: captions in, ragged per-caption T5 hidden states out.
//!
//! Captions are tokenized, then batched by token length: within each window of
//! `sort_window` captions they are sorted by length and cut into batches of `batch_size`,
//! so each batch pads only to its own longest caption. Results come back in input order.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::config::T5Config;
use super::model::T5Encoder;
use super::tokenizer::{LongCaptions, T5Tokenizer, Tokenized};
use super::weights::Checkpoint;
use super::{io_err, T5Device, T5Dtype, T5Error, DEFAULT_MAX_TOKENS};

/// Settings of a [`TextEncoder`].
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    pub dtype: T5Dtype,
    pub device: T5Device,
    /// Token limit per caption, `</s>` included.
    pub max_tokens: usize,
    pub long_captions: LongCaptions,
    /// Captions per forward pass.
    pub batch_size: usize,
    /// Captions sorted by length together; 1 disables sorting.
    pub sort_window: usize,
}

impl Default for EncodeOptions {
    /// f32, CUDA when available, 128 tokens, truncate, batches of 64 in windows of 1024.
    fn default() -> Self {
        EncodeOptions {
            dtype: T5Dtype::F32,
            device: T5Device::best_available(),
            max_tokens: DEFAULT_MAX_TOKENS,
            long_captions: LongCaptions::Truncate,
            batch_size: 64,
            sort_window: 1024,
        }
    }
}

/// Dtype of stored embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum StorageDtype {
    F16,
    Bf16,
}

impl StorageDtype {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageDtype::F16 => "f16",
            StorageDtype::Bf16 => "bf16",
        }
    }
}

/// One encoded caption: only its real tokens (`</s>` included), never padding.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Token ids, `</s>` last.
    pub ids: Vec<u32>,
    /// `[ids.len(), dim]` row-major last hidden states, in f32.
    pub states: Vec<f32>,
    pub dim: usize,
    /// Token count before truncation (`== ids.len()` unless truncated).
    pub full_len: usize,
}

impl Encoded {
    /// Number of stored tokens.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }
    pub fn truncated(&self) -> bool {
        self.full_len > self.ids.len()
    }
    /// The states as little-endian f16 or bf16 bytes (`tokens * dim * 2` bytes),
    /// rounded to nearest.
    pub fn to_le_bytes(&self, dtype: StorageDtype) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.states.len() * 2);
        match dtype {
            StorageDtype::F16 => {
                for &x in &self.states {
                    out.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
                }
            }
            StorageDtype::Bf16 => {
                for &x in &self.states {
                    out.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes());
                }
            }
        }
        out
    }
}

/// Counters over everything a [`TextEncoder`] has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EncodeStats {
    pub captions: u64,
    pub encoded: u64,
    /// Captions cut to the limit (policy truncate).
    pub truncated: u64,
    /// Captions dropped for length (policy reject).
    pub rejected: u64,
    /// Real tokens encoded.
    pub tokens: u64,
    /// Token positions computed, padding included.
    pub padded_tokens: u64,
}

/// What produced a set of embeddings; shards whose provenance differs must not be mixed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// `_name_or_path` from config.json, else the model directory's name.
    pub model_id: String,
    /// sha256 of the weight file(s) (shards concatenated in file-name order).
    pub weights_sha256: String,
    /// sha256 of tokenizer.json.
    pub tokenizer_sha256: String,
    /// Compute dtype of the encoder: "f32" or "bf16".
    pub dtype: String,
    /// Token limit per caption, `</s>` included.
    pub max_tokens: usize,
    /// Hidden size (`d_model`).
    pub dim: usize,
}

/// A T5 encoder with its tokenizer, ready to embed captions.
pub struct TextEncoder {
    _vs: nn::VarStore,
    model: T5Encoder,
    tokenizer: T5Tokenizer,
    opts: EncodeOptions,
    provenance: Provenance,
    stats: EncodeStats,
}

impl TextEncoder {
    /// Loads `dir/config.json`, the weights (`model.safetensors` or sharded) and
    /// `dir/tokenizer.json`.
    pub fn from_dir(dir: &Path, opts: EncodeOptions) -> Result<Self, T5Error> {
        let ck = Checkpoint::open(dir)?;
        let dir_name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        Self::from_parts(
            &dir.join("config.json"),
            &ck,
            &dir.join("tokenizer.json"),
            &dir_name,
            opts,
        )
    }

    /// Like [`TextEncoder::from_dir`] with the files given one by one; `fallback_id` is the
    /// model id when the config has no `_name_or_path`.
    pub fn from_parts(
        config: &Path,
        ck: &Checkpoint,
        tokenizer: &Path,
        fallback_id: &str,
        opts: EncodeOptions,
    ) -> Result<Self, T5Error> {
        if opts.batch_size == 0 || opts.sort_window == 0 {
            return Err(T5Error::BadOption(
                "batch size and sort window must be positive".into(),
            ));
        }
        let cfg = T5Config::from_file(config)?;
        let tok =
            T5Tokenizer::from_file(tokenizer)?.with_limit(opts.max_tokens, opts.long_captions)?;
        if tok.vocab_size() > cfg.vocab_size {
            return Err(T5Error::Tokenizer {
                path: tokenizer.to_path_buf(),
                msg: format!(
                    "{} tokens, more than the model's vocab_size {}",
                    tok.vocab_size(),
                    cfg.vocab_size
                ),
            });
        }
        let mut vs = nn::VarStore::new(opts.device.device());
        vs.set_kind(opts.dtype.kind());
        let mut model = T5Encoder::new(&vs.root(), &cfg)?;
        model.load(ck)?;
        let model_id = cfg
            .name_or_path
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| fallback_id.to_string());
        let provenance = Provenance {
            model_id,
            weights_sha256: ck.sha256()?,
            tokenizer_sha256: mdm_shards::sha256_file(tokenizer).map_err(io_err(tokenizer))?.1,
            dtype: opts.dtype.as_str().to_string(),
            max_tokens: opts.max_tokens,
            dim: cfg.d_model,
        };
        Ok(TextEncoder {
            _vs: vs,
            model,
            tokenizer: tok,
            opts,
            provenance,
            stats: EncodeStats::default(),
        })
    }

    pub fn provenance(&self) -> &Provenance {
        &self.provenance
    }
    pub fn stats(&self) -> EncodeStats {
        self.stats
    }
    pub fn options(&self) -> &EncodeOptions {
        &self.opts
    }
    pub fn tokenizer(&self) -> &T5Tokenizer {
        &self.tokenizer
    }
    pub fn model(&self) -> &T5Encoder {
        &self.model
    }
    pub fn model_mut(&mut self) -> &mut T5Encoder {
        &mut self.model
    }
    /// Hidden size of the states.
    pub fn dim(&self) -> usize {
        self.provenance.dim
    }

    /// Tokenizes under the limit and policy (no counters touched).
    pub fn tokenize<S: AsRef<str>>(&self, captions: &[S]) -> Result<Vec<Tokenized>, T5Error> {
        captions
            .iter()
            .enumerate()
            .map(|(i, c)| self.tokenizer.encode(c.as_ref(), i))
            .collect()
    }

    /// Encodes captions, in input order. `None` marks a caption rejected for length
    /// (only under [`LongCaptions::Reject`]).
    pub fn encode<S: AsRef<str>>(
        &mut self,
        captions: &[S],
    ) -> Result<Vec<Option<Encoded>>, T5Error> {
        let toks = self.tokenize(captions)?;
        let mut ids: Vec<Option<&[u32]>> = Vec::with_capacity(toks.len());
        for t in &toks {
            self.stats.captions += 1;
            match t {
                Tokenized::Rejected { .. } => self.stats.rejected += 1,
                Tokenized::Ids { .. } => {
                    self.stats.encoded += 1;
                    if t.truncated() {
                        self.stats.truncated += 1;
                    }
                }
            }
            ids.push(t.ids());
        }
        let states = self.encode_ids(&ids)?;
        Ok(toks
            .iter()
            .zip(states)
            .map(|(t, s)| match (t, s) {
                (Tokenized::Ids { ids, full_len }, Some(states)) => Some(Encoded {
                    ids: ids.clone(),
                    states,
                    dim: self.dim(),
                    full_len: *full_len,
                }),
                _ => None,
            })
            .collect())
    }

    /// Runs the encoder on token id lists (`None` entries are skipped), batched by length;
    /// returns `[len, dim]` f32 states per entry, in input order.
    pub fn encode_ids(&mut self, ids: &[Option<&[u32]>]) -> Result<Vec<Option<Vec<f32>>>, T5Error> {
        let mut out: Vec<Option<Vec<f32>>> = vec![None; ids.len()];
        let live: Vec<usize> = (0..ids.len())
            .filter(|&i| ids[i].is_some_and(|s| !s.is_empty()))
            .collect();
        for window in live.chunks(self.opts.sort_window) {
            let mut order = window.to_vec();
            order.sort_by_key(|&i| ids[i].map_or(0, |s| s.len()));
            for batch in order.chunks(self.opts.batch_size) {
                let rows: Vec<&[u32]> = batch.iter().map(|&i| ids[i].unwrap_or(&[])).collect();
                let states = self.forward_rows(&rows)?;
                for (&i, s) in batch.iter().zip(states) {
                    out[i] = Some(s);
                }
            }
        }
        Ok(out)
    }

    /// One forward pass (linear layers on the real tokens only, attention padded to the
    /// longest row); returns each row's real-token states.
    fn forward_rows(&mut self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>, T5Error> {
        let b = rows.len();
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let d = self.dim();
        let mut flat_ids = vec![0i64; b * t];
        let mut flat_mask = vec![0i64; b * t];
        for (r, row) in rows.iter().enumerate() {
            for (j, &id) in row.iter().enumerate() {
                flat_ids[r * t + j] = i64::from(id);
                flat_mask[r * t + j] = 1;
            }
        }
        let real: usize = rows.iter().map(|r| r.len()).sum();
        self.stats.tokens += real as u64;
        self.stats.padded_tokens += (b * t) as u64;
        let dev = self.opts.device.device();
        let ids = Tensor::f_from_slice(&flat_ids)?
            .f_view([b as i64, t as i64])?
            .f_to_device(dev)?;
        let mask = Tensor::f_from_slice(&flat_mask)?
            .f_view([b as i64, t as i64])?
            .f_to_device(dev)?;
        // [real, d], row after row (the rows are left-aligned).
        let hs = self.model.forward_packed(&ids, &mask)?;
        let hs = hs
            .f_to_kind(Kind::Float)?
            .f_to_device(tch::Device::Cpu)?
            .f_contiguous()?;
        let mut all = vec![0f32; real * d];
        hs.f_copy_data(&mut all, real * d)?;
        let mut at = 0;
        Ok(rows
            .iter()
            .map(|row| {
                let s = all[at * d..(at + row.len()) * d].to_vec();
                at += row.len();
                s
            })
            .collect())
    }
}
