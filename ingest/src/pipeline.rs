//! The bounded, ordered, resumable build: read → decode/resize/encode on N workers → ordered write.
//!
//! The same machinery serves images and videos ([`Media`]): an input (a picture, a video) is
//! the unit of ordering, chunking, accounting and resume; it becomes one record (a picture),
//! `clips_per_video` records (a video) or one reject.
//!
//! A source yields [`Input`]s in a deterministic order (already sliced to this `--part`).
//! Input `seq` belongs to chunk `seq / shard_inputs`; chunk k is written by its own
//! [`ShardWriter`] as `PREFIX-{k:05}.parquet` (no file when all its inputs were rejected) and,
//! once that file is renamed into place, a sidecar `PREFIX-{k:05}.chunk.json` (atomic) records
//! its shard entry, stats and rejects. A rerun after a crash skips the chunks whose sidecar
//! exists (their inputs are read past, not decoded) and redoes the rest; the manifest and
//! `rejects.jsonl` are written last from all sidecars, so an interrupted and an uninterrupted
//! run leave the same bytes.
//!
//! Memory is bounded: a token channel admits at most `8 × threads` inputs between reader and
//! writer, whatever the dataset size; results are reordered by `seq`, so the output does not
//! depend on the thread count.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use crossbeam_channel::{bounded, Receiver, Sender};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mdm_shards::{
    Body, BuildStats, ClassInfo, ImageBody, Layout, Manifest, Record, RecordKind, ShardWriter, VideoBody,
};

use mdm_shards::durable::write_atomic;

use crate::chunks::{ChunkLog, Naming};
use crate::error::{io, Error};
use crate::image::Processor;
use crate::rejects::{Reject, RejectReason, RejectRecord};
use crate::settings::{ImageSettings, Part, Validated, VideoSettings};
use crate::video::VideoProcessor;
use crate::text::{TextSpec, TextStage};

/// Where an input's bytes are.
#[derive(Debug)]
pub enum Payload {
    /// A local file, read by the worker.
    Path(PathBuf),
    /// Bytes already read (tar member).
    Bytes(Vec<u8>),
    /// Rejected by the source before decoding (no label, bad caption, unsafe path, ...).
    Rejected(Reject),
}

/// One input as a source yields it.
#[derive(Debug)]
pub struct Input {
    pub id: String,
    pub source: String,
    pub label: Option<i32>,
    pub caption: Option<String>,
    pub payload: Payload,
}

/// What the workers make of the inputs, under settings already validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Media {
    /// Pictures: one record of JPEGs per input.
    Image(Validated<ImageSettings>),
    /// Videos: one record of JPEG frames per clip window.
    Video(Validated<VideoSettings>),
}

impl Media {
    /// Stored resolutions, largest first.
    pub fn resolutions(&self) -> Vec<u32> {
        match self {
            Media::Image(s) => s.resolutions(),
            Media::Video(s) => vec![s.resolution],
        }
    }

    /// Inputs per chunk (shard).
    pub fn shard_inputs(&self) -> u64 {
        match self {
            Media::Image(s) => s.shard_inputs,
            Media::Video(s) => s.shard_inputs,
        }
    }

    fn unit(&self) -> &'static str {
        match self {
            Media::Image(_) => "images",
            Media::Video(_) => "videos",
        }
    }
}

/// Everything a build needs but its inputs.
#[derive(Debug, Clone)]
pub struct Build {
    pub out: PathBuf,
    pub kind: RecordKind,
    pub media: Media,
    pub part: Option<Part>,
    pub classes: Option<Vec<ClassInfo>>,
    /// Resolved settings stored in the manifest (source kind, image settings, part).
    pub manifest_settings: serde_json::Value,
    pub threads: usize,
    pub progress: bool,
    /// Number of inputs of this part when known up front (for the ETA).
    pub total: Option<u64>,
    /// Embed captions with this T5 encoder (text kinds only).
    pub text: Option<TextSpec>,
}

impl Build {
    fn prefix(&self) -> String {
        self.part.map_or_else(|| "shard".to_string(), |p| p.prefix())
    }

    /// Name of the manifest this build writes.
    pub fn manifest_name(&self) -> String {
        self.part.map_or_else(
            || mdm_shards::MANIFEST_FILE.to_string(),
            |p| format!("manifest.part-{}-of-{}.json", p.index, p.count),
        )
    }

    /// Name of the rejects list this build writes.
    pub fn rejects_name(&self) -> String {
        self.part
            .map_or_else(|| "rejects.jsonl".to_string(), |p| format!("rejects.part-{}-of-{}.jsonl", p.index, p.count))
    }

    /// The chunk log of this build's output: `PREFIX-{k:05}.parquet` sealed by
    /// `PREFIX-{k:05}.chunk.json`, under the manifest settings.
    fn chunk_log(&self) -> ChunkLog {
        ChunkLog::new(&self.out, Naming::Numbered { prefix: self.prefix() }, self.manifest_settings.clone())
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub stats: BuildStats,
    pub shards: usize,
    pub manifest: PathBuf,
    pub rejects: PathBuf,
    /// Chunks found complete from an earlier run and kept.
    pub resumed_chunks: u64,
    /// Encoder counters of this run (captions embedded now, not in kept chunks).
    pub t5: Option<crate::t5::EncodeStats>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.stats;
        write!(f, "in {} = written {} + rejected {}", s.inputs, s.written, s.rejected_total())?;
        if !s.rejected.is_empty() {
            let parts: Vec<String> = s.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
            write!(f, " ({})", parts.join(", "))?;
        }
        write!(f, "; {} shards, manifest {}", self.shards, self.manifest.display())?;
        if self.resumed_chunks > 0 {
            write!(f, "; {} chunks kept from an earlier run", self.resumed_chunks)?;
        }
        if let Some(t) = &self.t5 {
            write!(f, "; T5: {} captions embedded, {} truncated, {} tokens", t.encoded, t.truncated, t.tokens)?;
        }
        Ok(())
    }
}

enum Outcome {
    /// The records of one input (one picture, or the clips of one video).
    Written(Written),
    Rejected(RejectRecord),
}

/// The records of one input, with the input's id and source (for a reject of them all).
struct Written {
    id: String,
    source: String,
    records: Vec<Record>,
}

struct OpenChunk {
    k: u64,
    writer: Option<ShardWriter>,
    stats: BuildStats,
    rejects: Vec<RejectRecord>,
    /// Inputs waiting for their caption embeddings (in order).
    pending: Vec<Written>,
}

impl OpenChunk {
    /// Counts one written input and writes its records.
    fn accept(&mut self, records: Vec<Record>) -> Result<(), Error> {
        self.stats.inputs += 1;
        self.stats.written += 1;
        if let Some(w) = self.writer.as_mut() {
            for r in records {
                w.write(r)?;
            }
        }
        Ok(())
    }

    fn pending_records(&self) -> usize {
        self.pending.iter().map(|p| p.records.len()).sum()
    }

    fn reject(&mut self, r: RejectRecord) {
        self.stats.reject(r.reason.as_str());
        self.rejects.push(r);
    }

    /// Embeds and writes the pending records.
    fn flush(&mut self, text: &mut Option<TextStage>) -> Result<(), Error> {
        let Some(stage) = text.as_mut() else { return Ok(()) };
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let sizes: Vec<usize> = pending.iter().map(|p| p.records.len()).collect();
        let heads: Vec<(String, String)> = pending.iter().map(|p| (p.id.clone(), p.source.clone())).collect();
        let mut results = stage.embed(pending.into_iter().flat_map(|p| p.records).collect())?.into_iter();
        // An input is written when all its records got embeddings (they share one caption).
        for (n, (id, source)) in sizes.into_iter().zip(heads) {
            let group: Vec<Result<Record, RejectRecord>> = results.by_ref().take(n).collect();
            match group.into_iter().collect::<Result<Vec<Record>, RejectRecord>>() {
                Ok(records) => self.accept(records)?,
                Err(rej) => self.reject(RejectRecord { id, source, ..rej }),
            }
        }
        Ok(())
    }
}

/// Test hook, not for normal use: with `MDM_TEST_PAUSE_AFTER_CHUNKS=N` (N ≥ 1) in its
/// environment, a run blocks forever once it has sealed N chunks, before anything else is
/// written, so that a test can SIGKILL it at a known point (`tests/it/ingest_cli.rs`). Read once
/// per run, when its writer starts; unset, or not a positive number, it changes nothing.
#[doc(hidden)]
pub const TEST_PAUSE_AFTER_CHUNKS: &str = "MDM_TEST_PAUSE_AFTER_CHUNKS";

/// The state of the [`TEST_PAUSE_AFTER_CHUNKS`] hook in one run.
struct TestPause {
    after: Option<u64>,
    sealed: u64,
}

impl TestPause {
    fn from_env() -> Self {
        let after = std::env::var(TEST_PAUSE_AFTER_CHUNKS).ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0);
        TestPause { after, sealed: 0 }
    }

    /// Counts one sealed chunk; blocks forever at the N-th.
    fn sealed_one(&mut self) {
        self.sealed += 1;
        if self.after == Some(self.sealed) {
            loop {
                std::thread::park();
            }
        }
    }
}

/// Runs a build over `inputs` (this part's, in order). Errors of the iterator stop the run.
pub fn run<I>(build: &Build, inputs: I) -> Result<Summary, Error>
where
    I: Iterator<Item = Result<Input, Error>> + Send,
{
    let mut text = match &build.text {
        Some(spec) if build.kind.has_text() => Some(TextStage::load(spec)?),
        Some(_) => return Err(Error::Settings("T5 embeddings need a captioned source".into())),
        None => None,
    };
    // The encoder's provenance is part of the settings: a resume with another one is refused.
    let with_text;
    let build = match &text {
        Some(stage) => {
            let mut b = build.clone();
            if let Some(o) = b.manifest_settings.as_object_mut() {
                o.insert("t5".into(), stage.settings());
            }
            with_text = b;
            &with_text
        }
        None => build,
    };
    let encoder_info = text.as_ref().map(|t| t.info().clone());
    let layout = Layout::new(build.kind, build.media.resolutions()).map_err(Error::Settings)?;
    fs::create_dir_all(&build.out).map_err(io(&build.out))?;
    let n = build.media.shard_inputs();
    let threads = build.threads.max(1);

    // Chunks finished by an earlier run form a prefix 0..done.
    let done = build.chunk_log().done_prefix()?;
    let first_seq = done * n;

    let bar = if build.progress { ProgressBar::with_draw_target(build.total, ProgressDrawTarget::stderr()) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {} {{per_sec}} ETA {{eta}} {{msg}}",
            build.media.unit()
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(first_seq.min(build.total.unwrap_or(u64::MAX)));

    let window = 8 * threads;
    let (token_tx, token_rx) = bounded::<()>(window);
    for _ in 0..window {
        let _ = token_tx.send(());
    }
    let (in_tx, in_rx) = bounded::<(u64, Input)>(2 * threads);
    let (out_tx, out_rx) = bounded::<(u64, Result<Outcome, Error>)>(2 * threads);

    let result = std::thread::scope(|scope| -> Result<(u64, u64), Error> {
        let reader = scope.spawn(move || read_inputs(inputs, first_seq, in_tx, token_rx));
        let mut workers = Vec::new();
        for _ in 0..threads {
            let (rx, tx) = (in_rx.clone(), out_tx.clone());
            let (media, kind) = (&build.media, build.kind);
            workers.push(scope.spawn(move || work(media, kind, rx, tx)));
        }
        drop(in_rx);
        drop(out_tx);
        let written = write_ordered(build, &layout, &mut text, first_seq, out_rx, token_tx, &bar);
        // Unblock and join everything before looking at the results.
        let total = reader.join().map_err(|_| Error::Codec("reader thread panicked".into()))?;
        for w in workers {
            w.join().map_err(|_| Error::Codec("worker thread panicked".into()))?;
        }
        let total = total?;
        written?;
        Ok((total, done))
    });
    bar.finish_and_clear();
    let (total, resumed) = result?;
    let mut summary = finish(build, encoder_info, total, resumed)?;
    summary.t5 = text.as_ref().map(TextStage::stats);
    Ok(summary)
}

fn read_inputs<I>(inputs: I, first_seq: u64, tx: Sender<(u64, Input)>, tokens: Receiver<()>) -> Result<u64, Error>
where
    I: Iterator<Item = Result<Input, Error>>,
{
    let mut seq = 0u64;
    for item in inputs {
        let item = item?;
        // (A stopped writer reports why.)
        if seq >= first_seq && (tokens.recv().is_err() || tx.send((seq, item)).is_err()) {
            return Ok(seq);
        }
        seq += 1;
    }
    Ok(seq)
}

/// Per-thread state of a worker.
enum Worker {
    Image(Processor),
    Video(VideoProcessor),
}

impl Worker {
    fn new(media: &Media) -> Result<Self, Error> {
        Ok(match media {
            Media::Image(s) => Worker::Image(Processor::new(s).map_err(|e| Error::Codec(e.to_string()))?),
            Media::Video(s) => Worker::Video(VideoProcessor::new(s)?),
        })
    }
}

fn work(media: &Media, kind: RecordKind, rx: Receiver<(u64, Input)>, tx: Sender<(u64, Result<Outcome, Error>)>) {
    let mut worker = match Worker::new(media) {
        Ok(w) => w,
        Err(e) => {
            let _ = tx.send((u64::MAX, Err(e)));
            return;
        }
    };
    for (seq, input) in rx {
        let outcome = process_one(&mut worker, kind, input);
        if tx.send((seq, Ok(outcome))).is_err() {
            return;
        }
    }
}

fn process_one(worker: &mut Worker, kind: RecordKind, input: Input) -> Outcome {
    let Input { id, source, label, caption, payload } = input;
    let reject = |r: Reject, id: String, source: String| {
        Outcome::Rejected(RejectRecord { source, id, reason: r.reason, detail: r.detail })
    };
    let bytes = match payload {
        Payload::Rejected(r) => return reject(r, id, source),
        Payload::Bytes(b) => b,
        Payload::Path(p) => match fs::read(&p) {
            Ok(b) => b,
            Err(e) => return reject(Reject::new(RejectReason::ReadError, e.to_string()), id, source),
        },
    };
    let caption = if kind.has_text() { caption } else { None };
    let sha = mdm_shards::sha256(&bytes);
    let record = |id: String, width: u32, height: u32, body: Body| Record {
        id,
        source: source.clone(),
        source_sha256: sha,
        width,
        height,
        caption: caption.clone(),
        text: None,
        body,
    };
    match worker {
        Worker::Image(processor) => match processor.process(&bytes) {
            Err(r) => reject(r, id, source),
            Ok(p) => {
                let body = Body::Image(ImageBody { label, crop_box: p.crop_box, jpegs: p.jpegs });
                let records = vec![record(id.clone(), p.width, p.height, body)];
                Outcome::Written(Written { id, source: source.clone(), records })
            }
        },
        Worker::Video(processor) => match processor.process(&bytes, &id) {
            Err(r) => reject(r, id, source),
            Ok(v) => {
                let single = v.clips.len() == 1;
                let fps = v.fps;
                let records = v
                    .clips
                    .into_iter()
                    .map(|c| {
                        let clip_id = if single { id.clone() } else { format!("{id}#{}", c.index) };
                        let body = VideoBody { clip: c.index, fps, duration: v.duration, timestamps: c.timestamps, frames: c.frames };
                        record(clip_id, v.width, v.height, Body::Video(body))
                    })
                    .collect();
                Outcome::Written(Written { id, source: source.clone(), records })
            }
        },
    }
}

fn write_ordered(
    build: &Build,
    layout: &Layout,
    text: &mut Option<TextStage>,
    first_seq: u64,
    rx: Receiver<(u64, Result<Outcome, Error>)>,
    tokens: Sender<()>,
    bar: &ProgressBar,
) -> Result<(), Error> {
    let mut pause = TestPause::from_env();
    let n = build.media.shard_inputs();
    let mut pending: BTreeMap<u64, Outcome> = BTreeMap::new();
    let mut next = first_seq;
    let mut chunk: Option<OpenChunk> = None;
    for (seq, outcome) in rx {
        pending.insert(seq, outcome?);
        while let Some(outcome) = pending.remove(&next) {
            let k = next / n;
            let c = match chunk.take() {
                Some(c) => c,
                None => open_chunk(build, layout, encoder_of(text), k)?,
            };
            let c = chunk.insert(c);
            match outcome {
                Outcome::Written(w) if text.is_some() => {
                    c.pending.push(w);
                    if c.pending_records() >= text.as_ref().map_or(1, TextStage::chunk) {
                        c.flush(text)?;
                    }
                }
                Outcome::Written(w) => c.accept(w.records)?,
                Outcome::Rejected(r) => c.reject(r),
            }
            if next % n == n - 1 {
                if let Some(c) = chunk.take() {
                    close_chunk(build, c, text)?;
                    pause.sealed_one();
                }
            }
            next += 1;
            bar.inc(1);
            let _ = tokens.send(());
        }
    }
    if let Some(c) = chunk.take() {
        close_chunk(build, c, text)?;
        pause.sealed_one();
    }
    Ok(())
}

fn encoder_of(text: &Option<TextStage>) -> Option<mdm_shards::TextEncoderInfo> {
    text.as_ref().map(|t| t.info().clone())
}

fn open_chunk(build: &Build, layout: &Layout, encoder: Option<mdm_shards::TextEncoderInfo>, k: u64) -> Result<OpenChunk, Error> {
    let writer = build.chunk_log().writer(k, layout, encoder)?;
    Ok(OpenChunk { k, writer: Some(writer), stats: BuildStats::default(), rejects: Vec::new(), pending: Vec::new() })
}

fn close_chunk(build: &Build, mut c: OpenChunk, text: &mut Option<TextStage>) -> Result<(), Error> {
    c.flush(text)?;
    let shards = match c.writer.take() {
        Some(w) => w.close()?,
        None => Vec::new(),
    };
    build.chunk_log().seal(c.k, c.stats, shards, c.rejects)
}

/// Manifest and rejects list from all sidecars of this part.
fn finish(build: &Build, encoder: Option<mdm_shards::TextEncoderInfo>, total: u64, resumed: u64) -> Result<Summary, Error> {
    let layout = Layout::new(build.kind, build.media.resolutions()).map_err(Error::Settings)?;
    let n = build.media.shard_inputs();
    let chunks = total.div_ceil(n);
    let mut manifest = Manifest::new(&layout, encoder);
    manifest.classes = build.classes.clone();
    manifest.settings = Some(build.manifest_settings.clone());
    let sealed = build.chunk_log().collect(chunks)?;
    manifest.shards = sealed.shards;
    manifest.stats = sealed.stats;
    let mut rejects = Vec::new();
    for r in &sealed.rejects {
        let line = serde_json::to_string(r).map_err(|e| Error::Source { path: build.out.clone(), msg: e.to_string() })?;
        rejects.extend_from_slice(line.as_bytes());
        rejects.push(b'\n');
    }
    if manifest.stats.inputs != total {
        return Err(Error::Resume {
            path: build.out.clone(),
            msg: format!("sidecars account for {} inputs, the source has {total}", manifest.stats.inputs),
        });
    }
    let rejects_path = build.out.join(build.rejects_name());
    write_atomic(&rejects_path, &rejects)?;
    let manifest_path = manifest.write_as(&build.out, &build.manifest_name())?;
    Ok(Summary {
        shards: manifest.shards.len(),
        stats: manifest.stats,
        manifest: manifest_path,
        rejects: rejects_path,
        resumed_chunks: resumed,
        t5: None,
    })
}
