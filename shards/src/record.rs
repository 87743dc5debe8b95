//! Typed rows: what ingest writes and what `ShardReader::records` gives back.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::error::{Error, Result};
use crate::schema::{Layout, RecordKind};

/// Element type of stored T5 embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingDType {
    F16,
    Bf16,
}

impl EmbeddingDType {
    pub fn size(self) -> usize {
        2
    }
}

/// Ragged T5 states of one caption: only real tokens (the `</s>` included), row-major
/// `[tokens, dim]`, little-endian `dtype`.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEmbedding {
    pub tokens: u32,
    pub dim: u32,
    pub dtype: EmbeddingDType,
    pub data: Vec<u8>,
}

impl TextEmbedding {
    pub fn expected_len(&self) -> usize {
        self.tokens as usize * self.dim as usize * self.dtype.size()
    }
}

/// Image payload: one JPEG per stored resolution, in the layout's order (largest first).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBody {
    pub label: Option<i32>,
    /// (x, y, w, h) of the kept region in source pixels, when aspect is kept.
    pub crop_box: Option<[i32; 4]>,
    pub jpegs: Vec<Vec<u8>>,
}

/// One clip of a video: JPEG frames with their source timestamps.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoBody {
    /// Index of the clip within its source video.
    pub clip: u32,
    /// Sampling rate of the stored frames.
    pub fps: f32,
    /// Duration of the source video in seconds.
    pub duration: f64,
    pub timestamps: Vec<f64>,
    pub frames: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Image(ImageBody),
    Video(VideoBody),
}

/// One row of a shard.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Stable id, unique within a shard set.
    pub id: String,
    /// Source path or url.
    pub source: String,
    /// sha256 of the source bytes.
    pub source_sha256: [u8; 32],
    /// Original width and height of the source.
    pub width: u32,
    pub height: u32,
    pub caption: Option<String>,
    pub text: Option<TextEmbedding>,
    pub body: Body,
}

impl Record {
    /// Checks that the record fits `layout` (and `dim`, the encoder width, when known).
    pub fn validate(&self, layout: &Layout, dim: Option<u32>) -> Result<()> {
        let bad = |msg: String| Err(Error::Record { id: self.id.clone(), msg });
        match (&self.body, layout.kind) {
            (Body::Image(img), RecordKind::Image | RecordKind::TextImage) => {
                if img.jpegs.len() != layout.resolutions.len() {
                    return bad(format!(
                        "{} JPEGs for {} stored resolutions {:?}",
                        img.jpegs.len(),
                        layout.resolutions.len(),
                        layout.resolutions
                    ));
                }
                if img.jpegs.iter().any(Vec::is_empty) {
                    return bad("empty JPEG".into());
                }
            }
            (Body::Video(v), RecordKind::Video) => {
                if v.frames.len() != v.timestamps.len() {
                    return bad(format!("{} frames but {} timestamps", v.frames.len(), v.timestamps.len()));
                }
                if v.frames.is_empty() || v.frames.iter().any(Vec::is_empty) {
                    return bad("a clip needs non-empty frames".into());
                }
            }
            (_, kind) => return bad(format!("body does not match record kind {kind}")),
        }
        if let Some(t) = &self.text {
            if !layout.kind.has_text() {
                return bad(format!("{} shards carry no text embeddings", layout.kind));
            }
            if t.data.len() != t.expected_len() {
                return bad(format!(
                    "embedding has {} bytes, expected {} tokens x {} dim x 2",
                    t.data.len(),
                    t.tokens,
                    t.dim
                ));
            }
            if let Some(d) = dim.filter(|&d| d != t.dim) {
                return bad(format!("embedding width {} differs from the encoder's {d}", t.dim));
            }
        }
        Ok(())
    }

    /// Approximate stored size, for row-group and shard sizing.
    pub fn payload_bytes(&self) -> usize {
        let body = match &self.body {
            Body::Image(img) => img.jpegs.iter().map(Vec::len).sum::<usize>(),
            Body::Video(v) => v.frames.iter().map(Vec::len).sum::<usize>() + 8 * v.timestamps.len(),
        };
        body + self.text.as_ref().map_or(0, |t| t.data.len())
            + self.id.len()
            + self.source.len()
            + self.caption.as_ref().map_or(0, String::len)
            + 64
    }

    /// xxh3-64 over the row's columns in schema order (checksum excluded). Each value is
    /// a presence byte (0 = null, 1 = present) followed, when present, by: utf8/binary as
    /// u64-LE length + bytes; numbers as their little-endian bytes; fixed-size values as
    /// their bytes; lists as u64-LE count + each element without presence byte. The text
    /// columns (`t5_tokens`, `t5_emb`) take part only for kinds that have them.
    pub fn checksum(&self, kind: RecordKind) -> u64 {
        let mut h = Xxh3::new();
        let bytes = |h: &mut Xxh3, b: &[u8]| {
            h.update(&(b.len() as u64).to_le_bytes());
            h.update(b);
        };
        let opt_bytes = |h: &mut Xxh3, b: Option<&[u8]>| match b {
            None => h.update(&[0]),
            Some(b) => {
                h.update(&[1]);
                bytes(h, b)
            }
        };
        let present = |h: &mut Xxh3, b: &[u8]| {
            h.update(&[1]);
            h.update(b);
        };
        opt_bytes(&mut h, Some(self.id.as_bytes()));
        opt_bytes(&mut h, Some(self.source.as_bytes()));
        present(&mut h, &self.source_sha256);
        present(&mut h, &self.width.to_le_bytes());
        present(&mut h, &self.height.to_le_bytes());
        opt_bytes(&mut h, self.caption.as_deref().map(str::as_bytes));
        match &self.body {
            Body::Image(img) => {
                match img.label {
                    None => h.update(&[0]),
                    Some(l) => present(&mut h, &l.to_le_bytes()),
                }
                match img.crop_box {
                    None => h.update(&[0]),
                    Some(c) => {
                        h.update(&[1]);
                        c.iter().for_each(|v| h.update(&v.to_le_bytes()));
                    }
                }
                img.jpegs.iter().for_each(|j| opt_bytes(&mut h, Some(j)));
            }
            Body::Video(v) => {
                present(&mut h, &v.clip.to_le_bytes());
                present(&mut h, &v.fps.to_le_bytes());
                present(&mut h, &v.duration.to_le_bytes());
                h.update(&[1]);
                h.update(&(v.timestamps.len() as u64).to_le_bytes());
                v.timestamps.iter().for_each(|t| h.update(&t.to_le_bytes()));
                h.update(&[1]);
                h.update(&(v.frames.len() as u64).to_le_bytes());
                v.frames.iter().for_each(|f| bytes(&mut h, f));
            }
        }
        if kind.has_text() {
            match &self.text {
                None => h.update(&[0, 0]),
                Some(t) => {
                    present(&mut h, &t.tokens.to_le_bytes());
                    opt_bytes(&mut h, Some(&t.data));
                }
            }
        }
        h.digest()
    }
}
