//! The chunk log of a resumable build, shared by the ingest pipeline and `mdm embed`.
//!
//! An output folder is written chunk by chunk: chunk k has its own [`ShardWriter`] (one shard
//! file, or none when every input was rejected) and, once that file is in place, a sidecar
//! (atomic write) that seals the chunk: its shard entries, stats and rejects, and the build's
//! settings. A rerun keeps the sealed chunks written with the same settings and redoes the
//! rest; the manifest and the rejects list come last, from the sidecars alone
//! ([`ChunkLog::collect`]), so an interrupted and an uninterrupted run leave the same bytes.

use std::fs;
use std::path::{Path, PathBuf};

use mdm_shards::durable::write_atomic;
use mdm_shards::{BuildStats, Layout, ShardEntry, ShardWriter, TextEncoderInfo, WriterOptions};
use serde::{Deserialize, Serialize};

use crate::error::{io, Error};
use crate::rejects::RejectRecord;

/// How chunks and their files are named.
#[derive(Debug, Clone)]
pub enum Naming {
    /// Chunk k writes `PREFIX-{k:05}.parquet`, sealed by `PREFIX-{k:05}.chunk.json` (ingest).
    Numbered { prefix: String },
    /// Chunk k rewrites source shard `files[k]` under the same name, sealed by
    /// `.FILE.embed.json` (`mdm embed`).
    SameAs { files: Vec<String> },
}

/// The sidecar of one sealed chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    pub chunk: u64,
    pub settings: serde_json::Value,
    pub stats: BuildStats,
    pub shards: Vec<ShardEntry>,
    pub rejects: Vec<RejectRecord>,
}

/// Everything the sealed chunks hold, in chunk order.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub shards: Vec<ShardEntry>,
    pub stats: BuildStats,
    pub rejects: Vec<RejectRecord>,
}

/// The chunks of one output folder built with one set of settings.
#[derive(Debug, Clone)]
pub struct ChunkLog {
    out: PathBuf,
    naming: Naming,
    settings: serde_json::Value,
}

impl ChunkLog {
    pub fn new(out: &Path, naming: Naming, settings: serde_json::Value) -> Self {
        ChunkLog { out: out.to_path_buf(), naming, settings }
    }

    pub fn settings(&self) -> &serde_json::Value {
        &self.settings
    }

    /// The sidecar of chunk `k`.
    pub fn sidecar(&self, k: u64) -> PathBuf {
        match &self.naming {
            Naming::Numbered { prefix } => self.out.join(format!("{prefix}-{k:05}.chunk.json")),
            Naming::SameAs { files } => {
                let file = files.get(k as usize).map_or_else(|| format!("chunk-{k:05}"), |f| f.clone());
                self.out.join(format!(".{file}.embed.json"))
            }
        }
    }

    /// The shard file prefix and index chunk `k` writes.
    fn shard_name(&self, k: u64) -> Result<(String, u32), Error> {
        let index = || u32::try_from(k).map_err(|_| Error::Settings(format!("chunk index {k} too large")));
        match &self.naming {
            Naming::Numbered { prefix } => Ok((prefix.clone(), index()?)),
            Naming::SameAs { files } => match files.get(k as usize).and_then(|f| split_name(f)) {
                Some(name) => Ok(name),
                None => Ok(("shard".to_string(), index()?)),
            },
        }
    }

    /// Chunk `k`'s sidecar: `None` when the chunk is not sealed; an error when the sidecar
    /// cannot be read, belongs to another chunk or was written with other settings.
    pub fn read(&self, k: u64) -> Result<Option<Sealed>, Error> {
        let path = self.sidecar(k);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let s: Sealed = serde_json::from_slice(&bytes).map_err(|e| Error::Resume { path: path.clone(), msg: e.to_string() })?;
        if s.chunk != k {
            return Err(Error::Resume { path, msg: format!("sidecar says chunk {}, expected {k}", s.chunk) });
        }
        if s.settings != self.settings {
            return Err(Error::Resume {
                path,
                msg: "it was written with other settings; use a fresh --out or the same settings".into(),
            });
        }
        Ok(Some(s))
    }

    /// How many chunks from 0 on are sealed (a build resumes after them).
    pub fn done_prefix(&self) -> Result<u64, Error> {
        let mut k = 0;
        while self.read(k)?.is_some() {
            k += 1;
        }
        Ok(k)
    }

    /// Whether every shard a sealed chunk lists is in the folder.
    pub fn shards_present(&self, s: &Sealed) -> bool {
        s.shards.iter().all(|e| self.out.join(&e.file).exists())
    }

    /// The writer of chunk `k`: one shard file, however large.
    pub fn writer(&self, k: u64, layout: &Layout, text_encoder: Option<TextEncoderInfo>) -> Result<ShardWriter, Error> {
        let (prefix, first_index) = self.shard_name(k)?;
        let opts = WriterOptions {
            prefix,
            first_index,
            max_shard_bytes: u64::MAX,
            max_shard_rows: None,
            text_encoder,
            ..WriterOptions::default()
        };
        Ok(ShardWriter::try_new(&self.out, layout.clone(), opts)?)
    }

    /// Seals chunk `k` once its shard file is closed.
    pub fn seal(&self, k: u64, stats: BuildStats, shards: Vec<ShardEntry>, rejects: Vec<RejectRecord>) -> Result<(), Error> {
        let sealed = Sealed { chunk: k, settings: self.settings.clone(), stats, shards, rejects };
        let path = self.sidecar(k);
        let json = serde_json::to_vec(&sealed).map_err(|e| Error::Source { path: path.clone(), msg: e.to_string() })?;
        Ok(write_atomic(&path, &json)?)
    }

    /// Chunks 0..`chunks`, every one sealed with its shards present.
    pub fn collect(&self, chunks: u64) -> Result<Collected, Error> {
        let mut all = Collected::default();
        for k in 0..chunks {
            let path = self.sidecar(k);
            let s = self.read(k)?.ok_or_else(|| Error::Resume { path: path.clone(), msg: "the chunk was never sealed".into() })?;
            if let Some(missing) = s.shards.iter().find(|e| !self.out.join(&e.file).exists()) {
                return Err(Error::Resume { path: self.out.join(&missing.file), msg: "shard listed in its sidecar is missing".into() });
            }
            all.shards.extend(s.shards);
            all.stats.add(&s.stats);
            all.rejects.extend(s.rejects);
        }
        Ok(all)
    }
}

/// `PREFIX-NNNNN.parquet` → (PREFIX, NNNNN).
pub fn split_name(file: &str) -> Option<(String, u32)> {
    let stem = file.strip_suffix(".parquet")?;
    let (prefix, idx) = stem.rsplit_once('-')?;
    if prefix.contains('/') || idx.len() < 5 {
        return None;
    }
    Some((prefix.to_string(), idx.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(dir: &Path, settings: serde_json::Value) -> ChunkLog {
        ChunkLog::new(dir, Naming::Numbered { prefix: "shard".into() }, settings)
    }

    #[test]
    fn sealed_chunks_form_a_prefix_and_other_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = log(dir.path(), serde_json::json!({"a": 1}));
        assert_eq!(l.done_prefix().unwrap(), 0);
        let stats = |n| BuildStats { inputs: n, written: n, ..BuildStats::default() };
        l.seal(0, stats(3), vec![], vec![]).unwrap();
        l.seal(2, stats(4), vec![], vec![]).unwrap();
        // Chunk 1 is missing: a resume redoes it and everything after it.
        assert_eq!(l.done_prefix().unwrap(), 1);
        assert!(l.collect(3).is_err());
        l.seal(1, stats(5), vec![], vec![]).unwrap();
        assert_eq!(l.done_prefix().unwrap(), 3);
        assert_eq!(l.collect(3).unwrap().stats.inputs, 12);
        assert!(dir.path().join("shard-00001.chunk.json").exists());
        let other = log(dir.path(), serde_json::json!({"a": 2}));
        let e = other.done_prefix().unwrap_err().to_string();
        assert!(e.contains("shard-00000.chunk.json") && e.contains("other settings"), "{e}");
        // A sidecar of the wrong chunk is named.
        fs::copy(l.sidecar(0), l.sidecar(3)).unwrap();
        assert!(l.read(3).unwrap_err().to_string().contains("chunk 0, expected 3"));
    }

    #[test]
    fn embed_chunks_keep_their_source_names() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec!["cc-00007.parquet".to_string(), "odd.parquet".to_string()];
        let l = ChunkLog::new(dir.path(), Naming::SameAs { files }, serde_json::json!({}));
        assert_eq!(l.sidecar(0), dir.path().join(".cc-00007.parquet.embed.json"));
        assert_eq!(l.shard_name(0).unwrap(), ("cc".to_string(), 7));
        assert_eq!(l.shard_name(1).unwrap(), ("shard".to_string(), 1));
        assert_eq!(split_name("a/b-00001.parquet"), None);
        assert_eq!(split_name("x-12.parquet"), None);
    }
}
