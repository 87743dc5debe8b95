//! Caption embeddings at ingest time: a [`TextStage`] wraps the T5 [`TextEncoder`] and turns
//! records with captions into records with ragged fp16/bf16 `t5_emb` (real tokens only).
//!
//! Used inline by `mdm ingest cc12m --t5 DIR` (the pipeline's ordered writer embeds batches of
//! records just before writing them) and by [`embed_shards`] (`mdm embed`), which re-embeds an
//! existing text shard set into a new folder, never editing in place.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mdm_shards::{BuildStats, EmbeddingDType, Manifest, Record, ShardSet, ShardWriter, TextEmbedding, TextEncoderInfo};

use crate::chunks::{ChunkLog, Naming};
use crate::error::{io, Error};
use mdm_shards::durable::write_atomic;
use crate::rejects::{RejectReason, RejectRecord};
use crate::t5::{EncodeOptions, StorageDtype, TextEncoder};

/// What to embed with: a Hugging Face T5 folder, encoder options, storage dtype.
#[derive(Debug, Clone)]
pub struct TextSpec {
    pub model_dir: PathBuf,
    pub options: EncodeOptions,
    pub storage: StorageDtype,
}

/// A loaded encoder plus the provenance recorded in manifests and shard metadata.
pub struct TextStage {
    encoder: TextEncoder,
    storage: StorageDtype,
    info: TextEncoderInfo,
}

impl TextStage {
    pub fn load(spec: &TextSpec) -> Result<Self, Error> {
        let encoder = TextEncoder::from_dir(&spec.model_dir, spec.options.clone())?;
        let p = encoder.provenance();
        let info = TextEncoderInfo {
            model_id: p.model_id.clone(),
            weights_sha256: p.weights_sha256.clone(),
            tokenizer_sha256: p.tokenizer_sha256.clone(),
            dtype: match spec.storage {
                StorageDtype::F16 => EmbeddingDType::F16,
                StorageDtype::Bf16 => EmbeddingDType::Bf16,
            },
            max_tokens: u32::try_from(p.max_tokens).map_err(|_| Error::Settings("max tokens too large".into()))?,
            dim: u32::try_from(p.dim).map_err(|_| Error::Settings("model width too large".into()))?,
        };
        Ok(TextStage { encoder, storage: spec.storage, info })
    }

    /// Provenance for the manifest and the shards' metadata.
    pub fn info(&self) -> &TextEncoderInfo {
        &self.info
    }

    /// The encoder settings that change the stored values (part of the run's settings, so a
    /// resume with another encoder is refused).
    pub fn settings(&self) -> serde_json::Value {
        let o = self.encoder.options();
        serde_json::json!({
            "provenance": self.encoder.provenance(),
            "storage_dtype": self.storage.as_str(),
            "long_captions": o.long_captions,
        })
    }

    /// Captions per call of [`TextStage::embed`] that keeps batches full and sorting useful.
    pub fn chunk(&self) -> usize {
        let o = self.encoder.options();
        o.sort_window.max(o.batch_size)
    }

    /// Embeds the records' captions; a record comes back with its text set, or as a reject
    /// (`long-caption` under the reject policy, `bad-caption` when it has no caption).
    pub fn embed(&mut self, records: Vec<Record>) -> Result<Vec<Result<Record, RejectRecord>>, Error> {
        let captions: Vec<&str> = records.iter().map(|r| r.caption.as_deref().unwrap_or("")).collect();
        let encoded = self.encoder.encode(&captions)?;
        let max = self.info.max_tokens;
        Ok(records
            .into_iter()
            .zip(encoded)
            .map(|(mut r, e)| {
                let reject = |r: Record, reason, detail: String| Err(RejectRecord { source: r.source, id: r.id, reason, detail });
                if r.caption.as_deref().is_none_or(str::is_empty) {
                    return reject(r, RejectReason::BadCaption, "no caption to embed".into());
                }
                match e {
                    None => reject(r, RejectReason::LongCaption, format!("more than {max} T5 tokens")),
                    Some(e) => {
                        r.text = Some(TextEmbedding {
                            tokens: e.tokens() as u32,
                            dim: self.info.dim,
                            dtype: self.info.dtype,
                            data: e.to_le_bytes(self.storage),
                        });
                        Ok(r)
                    }
                }
            })
            .collect())
    }

    /// Encoder counters (captions, truncated, tokens, padding computed).
    pub fn stats(&self) -> crate::t5::EncodeStats {
        self.encoder.stats()
    }
}

/// What [`embed_shards`] did.
#[derive(Debug, Clone)]
pub struct EmbedSummary {
    /// Rows read from the source set.
    pub rows: u64,
    pub written: u64,
    /// Newly rejected rows, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Shards found finished by an earlier run and kept.
    pub kept: usize,
    pub manifest: PathBuf,
    pub stats: BuildStats,
}

impl std::fmt::Display for EmbedSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rej: u64 = self.rejected.values().sum();
        write!(f, "rows {} = embedded {} + rejected {}", self.rows, self.written, rej)?;
        if rej > 0 {
            let parts: Vec<String> = self.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
            write!(f, " ({})", parts.join(", "))?;
        }
        write!(f, "; manifest {}", self.manifest.display())?;
        if self.kept > 0 {
            write!(f, "; {} shards kept from an earlier run", self.kept)?;
        }
        Ok(())
    }
}

/// `mdm embed`: reads the text shard set at `src` (a folder or manifest), embeds every caption
/// (replacing embeddings already there), and writes the shards under the same names, a
/// manifest carrying the encoder's provenance and the set's stats (inputs unchanged; rows
/// newly rejected move from written to rejected) and `rejects.jsonl` (the source's rejects,
/// then the new ones) into `out`. Row checksums of the source are verified while reading.
/// A rerun keeps shards whose sidecar shows the same settings.
pub fn embed_shards(src: &Path, out: &Path, spec: &TextSpec, progress: bool) -> Result<EmbedSummary, Error> {
    let set = ShardSet::open(src)?;
    let m = set.manifest.clone();
    if !m.kind.has_text() {
        return Err(Error::Source { path: set.dir.clone(), msg: format!("shards of kind {:?} carry no captions to embed", m.kind) });
    }
    let same = |a: &Path, b: &Path| a.canonicalize().ok().zip(b.canonicalize().ok()).is_some_and(|(a, b)| a == b);
    if same(&set.dir, out) {
        return Err(Error::Settings("--out must differ from the source folder (shards are never edited in place)".into()));
    }
    fs::create_dir_all(out).map_err(io(out))?;
    if out.join(mdm_shards::MANIFEST_FILE).exists() {
        return Err(Error::Source { path: out.join(mdm_shards::MANIFEST_FILE), msg: "already exists; choose an empty --out".into() });
    }
    let mut stage = TextStage::load(spec)?;
    let settings = serde_json::json!({ "source_manifest": set.manifest_path.display().to_string(), "t5": stage.settings() });
    let layout = m.layout();

    let total: u64 = m.shards.iter().map(|s| s.rows).sum();
    let bar = if progress { ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} rows {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let log = ChunkLog::new(out, Naming::SameAs { files: m.shards.iter().map(|e| e.file.clone()).collect() }, settings.clone());
    let mut kept = 0;
    for (i, entry) in m.shards.iter().enumerate() {
        let k = i as u64;
        if log.read(k)?.is_some_and(|s| log.shards_present(&s)) {
            kept += 1;
            bar.inc(entry.rows);
            continue;
        }
        let mut writer = log.writer(k, &layout, Some(stage.info().clone()))?;
        let mut chunk_stats = BuildStats::default();
        let mut rejects = Vec::new();
        let reader = set.reader(i)?;
        let mut batch = Vec::new();
        let chunk = stage.chunk();
        let mut flush = |batch: &mut Vec<Record>, writer: &mut ShardWriter, stats: &mut BuildStats, rejects: &mut Vec<RejectRecord>| -> Result<(), Error> {
            let n = batch.len() as u64;
            for r in stage.embed(std::mem::take(batch))? {
                stats.inputs += 1;
                match r {
                    Ok(rec) => {
                        stats.written += 1;
                        writer.write(rec)?
                    }
                    Err(rej) => {
                        stats.reject(rej.reason.as_str());
                        rejects.push(rej)
                    }
                }
            }
            bar.inc(n);
            Ok(())
        };
        for rec in reader.into_records() {
            batch.push(rec?);
            if batch.len() >= chunk {
                flush(&mut batch, &mut writer, &mut chunk_stats, &mut rejects)?;
            }
        }
        flush(&mut batch, &mut writer, &mut chunk_stats, &mut rejects)?;
        log.seal(k, chunk_stats, writer.close()?, rejects)?;
    }
    let sealed = log.collect(m.shards.len() as u64)?;
    let (shards, new_rejects) = (sealed.shards, sealed.rejects);
    bar.finish_and_clear();

    let mut stats = m.stats.clone();
    let mut rejected = BTreeMap::new();
    for r in &new_rejects {
        *rejected.entry(r.reason.as_str().to_string()).or_insert(0u64) += 1;
        *stats.rejected.entry(r.reason.as_str().to_string()).or_insert(0) += 1;
    }
    let n_rej = new_rejects.len() as u64;
    stats.written = stats.written.saturating_sub(n_rej);
    let written: u64 = shards.iter().map(|s| s.rows).sum();

    // The source's rejects first (the set stays complete), then the new ones.
    let mut lines = Vec::new();
    for name in rejects_files(&set.dir)? {
        let p = set.dir.join(&name);
        lines.extend(fs::read(&p).map_err(io(&p))?);
        if lines.last().is_some_and(|b| *b != b'\n') {
            lines.push(b'\n');
        }
    }
    for r in &new_rejects {
        let line = serde_json::to_string(r).map_err(|e| Error::Source { path: out.to_path_buf(), msg: e.to_string() })?;
        lines.extend_from_slice(line.as_bytes());
        lines.push(b'\n');
    }
    write_atomic(&out.join("rejects.jsonl"), &lines)?;

    let mut manifest = Manifest::new(&layout, Some(stage.info().clone()));
    manifest.classes = m.classes.clone();
    manifest.shards = shards;
    manifest.stats = stats.clone();
    let mut ms = m.settings.clone().unwrap_or(serde_json::json!({}));
    if let Some(o) = ms.as_object_mut() {
        o.insert("embed".into(), settings);
    }
    manifest.settings = Some(ms);
    let path = manifest.write(out)?;
    Ok(EmbedSummary { rows: total, written, rejected, kept, manifest: path, stats })
}

/// `rejects.jsonl` and `rejects.part-*.jsonl` of a folder, sorted.
fn rejects_files(dir: &Path) -> Result<Vec<String>, Error> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("rejects") && n.ends_with(".jsonl"))
        .collect();
    v.sort();
    Ok(v)
}
