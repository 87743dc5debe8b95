//! [`Batch`]: what one rank gets for one step.

use std::collections::BTreeMap;

use mdm_shards::EmbeddingDType;

use crate::error::Corrupt;

/// Pixels of the samples of one resolution, uint8, channels RGB.
///
/// Images are `[n, 3, res, res]` (NCHW); video clips `[n, frames, 3, res, res]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pixels {
    pub resolution: u32,
    /// `Some(T)` for video clips.
    pub frames: Option<usize>,
    /// Row of each sample in the batch's per-sample fields (`ids`, `labels`, ...).
    pub rows: Vec<usize>,
    pub data: Vec<u8>,
}

impl Pixels {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// `[n, 3, r, r]` or `[n, T, 3, r, r]`.
    pub fn shape(&self) -> Vec<usize> {
        let r = self.resolution as usize;
        match self.frames {
            None => vec![self.len(), 3, r, r],
            Some(t) => vec![self.len(), t, 3, r, r],
        }
    }

    /// Bytes of one sample.
    pub fn sample_bytes(&self) -> usize {
        3 * (self.resolution as usize).pow(2) * self.frames.unwrap_or(1)
    }

    /// The pixels of the `i`-th sample of this tensor.
    pub fn sample(&self, i: usize) -> &[u8] {
        let n = self.sample_bytes();
        &self.data[i * n..(i + 1) * n]
    }
}

/// T5 embeddings padded to the longest in the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct TextBatch {
    pub dtype: EmbeddingDType,
    pub dim: usize,
    /// Longest token count in the batch (the padded length).
    pub max_tokens: usize,
    /// Real tokens of each sample (0 when the row has no embedding).
    pub tokens: Vec<u32>,
    /// `[batch, max_tokens, dim]` little-endian values of `dtype`; padding is zero.
    pub data: Vec<u8>,
    /// `[batch, max_tokens]`: 1 for a real token, 0 for padding.
    pub mask: Vec<u8>,
}

/// One rank's part of one global step.
///
/// Per-sample fields (`ids` ... `resolutions`) are parallel vectors in the global order.
/// Pixels are grouped by resolution in `pixels`, each tensor listing the rows it holds.
/// A corrupt row skipped under [`crate::CorruptPolicy::Skip`] is missing from every field
/// (the batch is one short) and listed in `skipped`; all other samples keep their places.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub epoch: u64,
    /// Steps yielded before this one since the loader's first start (resumes included).
    pub step: u64,
    /// Epoch position of the global step's first sample.
    pub position: u64,
    /// Samples in the whole global step (all ranks, padding included).
    pub global_batch: u64,
    pub ids: Vec<String>,
    /// Epoch position of each sample (padding: at or past the epoch length).
    pub positions: Vec<u64>,
    /// True for samples repeated to fill the epoch's last batch ([`crate::EpochEnd::Pad`]).
    pub padded: Vec<bool>,
    /// Index of the shard set (builder order) each sample came from.
    pub sets: Vec<usize>,
    pub labels: Vec<Option<i32>>,
    pub captions: Vec<Option<String>>,
    pub resolutions: Vec<u32>,
    pub pixels: BTreeMap<u32, Pixels>,
    pub text: Option<TextBatch>,
    pub skipped: Vec<Corrupt>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// xxh3 of the sample ids in order: one line of the order log.
    pub fn ids_hash(&self) -> u64 {
        ids_hash(&self.ids)
    }

    /// Bytes of pixel and text buffers.
    pub fn bytes(&self) -> usize {
        self.pixels.values().map(|p| p.data.len()).sum::<usize>()
            + self.text.as_ref().map_or(0, |t| t.data.len() + t.mask.len())
    }
}

pub(crate) fn ids_hash(ids: &[String]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for id in ids {
        h.update(&(id.len() as u64).to_le_bytes());
        h.update(id.as_bytes());
    }
    h.digest()
}
