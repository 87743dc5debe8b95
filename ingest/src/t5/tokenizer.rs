//! T5-style tokenization: `tokenizer.json` through the `tokenizers` crate, `</s>` appended
//! by the file's post-processor, and a token limit (`</s>` included) that either truncates
//! the pieces (so `</s>` survives, as HF does) or rejects the caption.

use std::path::{Path, PathBuf};

use tokenizers::{Normalizer, Tokenizer, TruncationDirection};

use super::{io_err, T5Error, DEFAULT_MAX_TOKENS};

/// What to do with a caption whose tokens (with `</s>`) exceed the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LongCaptions {
    /// Keep the first `max - 1` pieces and `</s>` (HF `truncation=True`).
    #[default]
    Truncate,
    /// Drop the caption (what ml-mdm does).
    Reject,
}

impl std::str::FromStr for LongCaptions {
    type Err = T5Error;
    fn from_str(s: &str) -> Result<Self, T5Error> {
        match s {
            "truncate" => Ok(LongCaptions::Truncate),
            "reject" => Ok(LongCaptions::Reject),
            _ => Err(T5Error::BadOption(format!(
                "long-captions {s:?} (expected truncate or reject)"
            ))),
        }
    }
}

/// One tokenized caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tokenized {
    /// Ids with `</s>`, at most `max_tokens` long. `full_len` is the untruncated length
    /// (equal to `ids.len()` unless truncated).
    Ids { ids: Vec<u32>, full_len: usize },
    /// Over the limit under [`LongCaptions::Reject`]; `full_len` tokens with `</s>`.
    Rejected { full_len: usize },
}

impl Tokenized {
    pub fn ids(&self) -> Option<&[u32]> {
        match self {
            Tokenized::Ids { ids, .. } => Some(ids),
            Tokenized::Rejected { .. } => None,
        }
    }
    pub fn truncated(&self) -> bool {
        matches!(self, Tokenized::Ids { ids, full_len } if ids.len() < *full_len)
    }
}

/// A `tokenizer.json` with T5 conventions and a token limit.
pub struct T5Tokenizer {
    tok: Tokenizer,
    path: PathBuf,
    max_tokens: usize,
    policy: LongCaptions,
    /// Tokens the post-processor adds to one sequence (1 for T5: `</s>`).
    n_special: usize,
}

impl T5Tokenizer {
    /// Loads `tokenizer.json` with the default limit (128) and truncation. Any truncation or
    /// padding configured in the file is cleared; the limit here governs.
    pub fn from_file(path: &Path) -> Result<Self, T5Error> {
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        let mut tok = Tokenizer::from_bytes(&bytes).map_err(|e| T5Error::Tokenizer {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        tok.with_truncation(None).map_err(|e| T5Error::Tokenizer {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        tok.with_padding(None);
        let n_special = tok.get_post_processor().map(|p| {
            use tokenizers::PostProcessor;
            p.added_tokens(false)
        });
        Ok(T5Tokenizer {
            tok,
            path: path.to_path_buf(),
            max_tokens: DEFAULT_MAX_TOKENS,
            policy: LongCaptions::Truncate,
            n_special: n_special.unwrap_or(0),
        })
    }

    /// Sets the token limit (`</s>` included) and the long-caption policy.
    pub fn with_limit(mut self, max_tokens: usize, policy: LongCaptions) -> Result<Self, T5Error> {
        if max_tokens <= self.n_special {
            return Err(T5Error::BadOption(format!(
                "max tokens {max_tokens} leaves no room beside {} special token(s)",
                self.n_special
            )));
        }
        self.max_tokens = max_tokens;
        self.policy = policy;
        Ok(self)
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }
    pub fn policy(&self) -> LongCaptions {
        self.policy
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tok.token_to_id(token)
    }
    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tok
    }

    /// The text after the file's normalizer (NFKC etc.).
    pub fn normalize(&self, text: &str) -> Result<String, T5Error> {
        let mut n = tokenizers::NormalizedString::from(text);
        if let Some(norm) = self.tok.get_normalizer() {
            norm.normalize(&mut n).map_err(|e| T5Error::Tokenize {
                index: 0,
                msg: e.to_string(),
            })?;
        }
        Ok(n.get().to_string())
    }

    /// Ids without any limit and without `</s>`.
    pub fn pieces(&self, text: &str) -> Result<Vec<u32>, T5Error> {
        let enc = self
            .tok
            .encode(text, false)
            .map_err(|e| T5Error::Tokenize {
                index: 0,
                msg: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokenizes one caption under the limit and policy. `index` only labels errors.
    pub fn encode(&self, text: &str, index: usize) -> Result<Tokenized, T5Error> {
        let err = |e: tokenizers::Error| T5Error::Tokenize {
            index,
            msg: e.to_string(),
        };
        let enc = self.tok.encode(text, false).map_err(err)?;
        let full_len = enc.len() + self.n_special;
        if full_len <= self.max_tokens {
            let enc = self.tok.post_process(enc, None, true).map_err(err)?;
            return Ok(Tokenized::Ids {
                ids: enc.get_ids().to_vec(),
                full_len,
            });
        }
        match self.policy {
            LongCaptions::Reject => Ok(Tokenized::Rejected { full_len }),
            LongCaptions::Truncate => {
                let mut enc = enc;
                enc.truncate(
                    self.max_tokens - self.n_special,
                    0,
                    TruncationDirection::Right,
                );
                let enc = self.tok.post_process(enc, None, true).map_err(err)?;
                Ok(Tokenized::Ids {
                    ids: enc.get_ids().to_vec(),
                    full_len,
                })
            }
        }
    }
}
