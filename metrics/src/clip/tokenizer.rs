//! CLIP's byte-level BPE tokenizer from `tokenizer.json` (`CLIPTokenizerFast`), with batches
//! built as torchmetrics builds them: each caption with `<|startoftext|>` and `<|endoftext|>`,
//! padded to the longest of the batch with the pad token, then cut at the model's
//! `max_position_embeddings` (a caption longer than that loses its end, `<|endoftext|>` included).

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::error::{io, Error, Result};

/// CLIPTokenizer's pad token when the folder names none.
pub const DEFAULT_PAD_TOKEN: &str = "<|endoftext|>";

/// A batch of token rows of one length, with the attention mask (1 on real tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    pub ids: Vec<Vec<i64>>,
    pub mask: Vec<Vec<i64>>,
    /// Indices of the captions that were cut at the limit.
    pub truncated: Vec<usize>,
}

/// The tokenizer and the batch rules.
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    tok: Tokenizer,
    path: PathBuf,
    pad_id: u32,
    max_len: usize,
}

impl ClipTokenizer {
    /// Loads `tokenizer.json`; padding and truncation configured in the file are cleared (the
    /// batch rules here govern). `pad_token` names the pad token (from `tokenizer_config.json`
    /// or `special_tokens_map.json`; [`DEFAULT_PAD_TOKEN`] otherwise), `max_len` the limit.
    pub fn from_file(path: &Path, pad_token: &str, max_len: usize) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        let invalid = |msg: String| Error::Invalid {
            path: path.to_path_buf(),
            msg,
        };
        let mut tok = Tokenizer::from_bytes(&bytes).map_err(|e| invalid(format!("not a tokenizer.json: {e}")))?;
        tok.with_truncation(None).map_err(|e| invalid(e.to_string()))?;
        tok.with_padding(None);
        let pad_id = tok
            .token_to_id(pad_token)
            .ok_or_else(|| invalid(format!("pad token {pad_token:?} is not in the vocabulary")))?;
        if max_len == 0 {
            return Err(Error::Input("the token limit must be positive".into()));
        }
        Ok(ClipTokenizer {
            tok,
            path: path.to_path_buf(),
            pad_id,
            max_len,
        })
    }

    /// Loads `tokenizer.json` of a Hugging Face folder, with the pad token its
    /// `tokenizer_config.json` or `special_tokens_map.json` names.
    pub fn from_folder(dir: &Path, max_len: usize) -> Result<Self> {
        let pad = pad_token_of(dir)?;
        Self::from_file(&dir.join("tokenizer.json"), pad.as_deref().unwrap_or(DEFAULT_PAD_TOKEN), max_len)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    pub fn max_len(&self) -> usize {
        self.max_len
    }
    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tok
    }

    /// The ids of one caption with the special tokens, not cut.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tok.encode(text, true).map_err(|e| Error::Invalid {
            path: self.path.clone(),
            msg: format!("cannot tokenize {text:?}: {e}"),
        })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The batch of `texts`: padded to the longest with the pad id (mask 0), then every row cut
    /// to the limit.
    pub fn batch(&self, texts: &[String]) -> Result<TokenBatch> {
        let rows = texts.iter().map(|t| self.encode(t)).collect::<Result<Vec<_>>>()?;
        let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
        let len = longest.min(self.max_len);
        let mut b = TokenBatch {
            ids: Vec::with_capacity(rows.len()),
            mask: Vec::with_capacity(rows.len()),
            truncated: vec![],
        };
        for (i, r) in rows.into_iter().enumerate() {
            if r.len() > len {
                b.truncated.push(i);
            }
            let mut ids: Vec<i64> = r.iter().take(len).map(|&x| x as i64).collect();
            let mut mask = vec![1; ids.len()];
            ids.resize(len, self.pad_id as i64);
            mask.resize(len, 0);
            b.ids.push(ids);
            b.mask.push(mask);
        }
        Ok(b)
    }
}

/// The pad token named by `tokenizer_config.json` or else `special_tokens_map.json` of `dir`
/// (a string or an `{"content": ...}` object), if either file names one.
pub fn pad_token_of(dir: &Path) -> Result<Option<String>> {
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Invalid {
            path: path.clone(),
            msg: format!("not JSON: {e}"),
        })?;
        match v.get("pad_token") {
            Some(serde_json::Value::String(s)) => return Ok(Some(s.clone())),
            Some(o) if o.get("content").and_then(|c| c.as_str()).is_some() => {
                return Ok(o["content"].as_str().map(str::to_string))
            }
            _ => {}
        }
    }
    Ok(None)
}
