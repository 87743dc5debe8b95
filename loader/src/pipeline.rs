//! The threads behind a [`crate::Loader`]:
//!
//! ```text
//! reader (plan + fetch) --jobs--> decode workers --results--> assembler --batches--> next()
//!        `--------------- step headers, corrupt rows ----------^
//! ```
//!
//! The reader takes a token from a channel of `prefetch` slots before planning each step and
//! `next()` gives one back per batch yielded, so at most `prefetch` steps are in flight: that
//! bounds memory and pushes back on a slow consumer. The assembler puts results back into plan
//! order, so the batches do not depend on the number of workers or their timing.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use mdm_shards::{EmbeddingDType, RecordKind};

use crate::batch::{Batch, Pixels, TextBatch};
use crate::decode::{Decoder, Transform};
use crate::error::{Corrupt, Error, Result};
use crate::order::{hash, unit, Cursor, Planned, Planner, StepPlan, TAG_CROP, TAG_FLIP};
use crate::source::{Fetcher, Payload};
use crate::stats::{add_time, Shared};
use crate::CorruptPolicy;

/// Settings the pipeline threads share.
pub(crate) struct Config {
    pub seed: u64,
    pub kind: RecordKind,
    pub flip: bool,
    /// Smallest crop side (fraction); 1.0 for no crop.
    pub min_crop: f64,
    pub video_frames: usize,
    /// Element type and width of T5 embeddings, when they are read.
    pub text: Option<(EmbeddingDType, usize)>,
    pub corrupt: CorruptPolicy,
    /// Stored-order index of each set's shards' first rows (shuffle quality).
    pub shard_offsets: Vec<Vec<u64>>,
    pub total_rows: u64,
}

impl Config {
    fn transform(&self, epoch: u64, p: &Planned) -> Transform {
        let key = |tag, k| hash(&[self.seed, epoch, p.position, tag, k]);
        let flip = self.flip && key(TAG_FLIP, 0) & 1 == 1;
        let crop = (self.min_crop < 1.0).then(|| {
            let side = self.min_crop + (1.0 - self.min_crop) * unit(key(TAG_CROP, 0));
            (unit(key(TAG_CROP, 1)) * (1.0 - side), unit(key(TAG_CROP, 2)) * (1.0 - side), side)
        });
        Transform { out: p.resolution, flip, crop }
    }

    fn frames(&self) -> usize {
        if self.kind == RecordKind::Video {
            self.video_frames
        } else {
            1
        }
    }
}

pub(crate) struct Job {
    seq: u64,
    slot: usize,
    shard: String,
    row: u64,
    payload: Payload,
    transform: Transform,
}

/// A decoded sample.
pub(crate) struct Sample {
    id: String,
    caption: Option<String>,
    label: Option<i32>,
    text: Option<(u32, Vec<u8>)>,
    pixels: Vec<u8>,
}

impl Sample {
    fn bytes(&self) -> usize {
        self.pixels.len() + self.text.as_ref().map_or(0, |t| t.1.len())
    }
}

pub(crate) enum Msg {
    Step { seq: u64, plan: StepPlan },
    Done { seq: u64, slot: usize, result: std::result::Result<Sample, Corrupt> },
    Fatal(Error),
}

/// What the assembler hands to `next()`: the batch, the cursor after it, and the bytes it holds.
pub(crate) type Assembled = Result<(Batch, Cursor, usize)>;

pub(crate) struct Channels {
    pub tokens: Sender<()>,
    pub jobs: Sender<Job>,
    pub results: Sender<Msg>,
}

pub(crate) fn reader(mut planner: Planner, mut fetcher: Fetcher, cfg: Arc<Config>, ch: Channels, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    for seq in 0.. {
        let t = Instant::now();
        if ch.tokens.send(()).is_err() || stop.load(Relaxed) {
            return;
        }
        add_time(&shared.reader_backpressure_ns, t);
        let plan = planner.next_step();
        let samples = plan.samples.clone();
        let epoch = plan.epoch;
        if ch.results.send(Msg::Step { seq, plan }).is_err() {
            return;
        }
        for (slot, p) in samples.iter().enumerate() {
            let t = Instant::now();
            let fetched = fetcher.fetch(p.set, p.shard, p.row, p.resolution);
            add_time(&shared.reader_io_ns, t);
            shared.peak_cache.fetch_max(fetcher.cached_bytes() as u64, Relaxed);
            let sent = match fetched {
                Err(e) => {
                    let _ = ch.results.send(Msg::Fatal(e));
                    return;
                }
                Ok(Err(corrupt)) => ch.results.send(Msg::Done { seq, slot, result: Err(corrupt) }).is_ok(),
                Ok(Ok(payload)) => {
                    shared.hold(payload.bytes());
                    let job = Job { seq, slot, shard: fetcher.shard_name(p.set, p.shard), row: p.row, payload, transform: cfg.transform(epoch, p) };
                    let t = Instant::now();
                    let ok = ch.jobs.send(job).is_ok();
                    add_time(&shared.reader_wait_workers_ns, t);
                    ok
                }
            };
            if !sent || stop.load(Relaxed) {
                return;
            }
        }
    }
}

pub(crate) fn worker(cfg: Arc<Config>, jobs: Receiver<Job>, results: Sender<Msg>, shared: Arc<Shared>) {
    let mut decoder = match Decoder::new() {
        Ok(d) => d,
        Err(e) => {
            let _ = results.send(Msg::Fatal(Error::Pipeline(e)));
            return;
        }
    };
    loop {
        let t = Instant::now();
        let Ok(job) = jobs.recv() else { return };
        add_time(&shared.decode_idle_ns, t);
        let t = Instant::now();
        let Job { seq, slot, shard, row, payload, transform } = job;
        let frames = cfg.frames();
        let side = 3 * (transform.out as usize).pow(2);
        let mut pixels = vec![0u8; side * frames];
        let mut decoded = if payload.jpegs.is_empty() { Err("no frames".to_string()) } else { Ok(()) };
        for f in 0..frames {
            if decoded.is_err() {
                break;
            }
            // Short clips repeat their last frame.
            let jpeg = &payload.jpegs[f.min(payload.jpegs.len().saturating_sub(1))];
            decoded = decoder.decode_into(jpeg, payload.stored, &transform, &mut pixels[f * side..(f + 1) * side]);
        }
        let payload_bytes = payload.bytes();
        let result = match decoded {
            Ok(()) => {
                let sample = Sample { id: payload.id, caption: payload.caption, label: payload.label, text: payload.text, pixels };
                shared.hold(sample.bytes());
                Ok(sample)
            }
            Err(what) => Err(Corrupt { shard, row, id: Some(payload.id), what }),
        };
        shared.release(payload_bytes);
        add_time(&shared.decode_busy_ns, t);
        if results.send(Msg::Done { seq, slot, result }).is_err() {
            return;
        }
    }
}

#[derive(Default)]
struct Pending {
    plan: Option<StepPlan>,
    done: HashMap<usize, std::result::Result<Sample, Corrupt>>,
}

pub(crate) fn assembler(cfg: Arc<Config>, results: Receiver<Msg>, out: Sender<Assembled>, shared: Arc<Shared>) {
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut next = 0u64;
    for msg in results.iter() {
        match msg {
            Msg::Fatal(e) => {
                let _ = out.send(Err(e));
                return;
            }
            Msg::Step { seq, plan } => pending.entry(seq).or_default().plan = Some(plan),
            Msg::Done { seq, slot, result } => {
                pending.entry(seq).or_default().done.insert(slot, result);
            }
        }
        while pending.get(&next).is_some_and(|p| p.plan.as_ref().is_some_and(|plan| plan.samples.len() == p.done.len())) {
            let p = pending.remove(&next).expect("checked above");
            next += 1;
            let assembled = build(&cfg, p, &shared);
            let failed = assembled.is_err();
            if out.send(assembled).is_err() || failed {
                return;
            }
        }
    }
}

/// Puts a complete step together, in plan order.
fn build(cfg: &Config, mut p: Pending, shared: &Shared) -> Assembled {
    let plan = p.plan.take().expect("complete steps have a plan");
    shared.neighbours(plan.samples.iter().map(|s| cfg.shard_offsets[s.set][s.shard as usize] + s.row), cfg.total_rows);
    let mut batch = Batch {
        epoch: plan.epoch,
        step: 0,
        position: plan.position,
        global_batch: plan.global_batch,
        ids: Vec::new(),
        positions: Vec::new(),
        padded: Vec::new(),
        sets: Vec::new(),
        labels: Vec::new(),
        captions: Vec::new(),
        resolutions: Vec::new(),
        pixels: BTreeMap::new(),
        text: None,
        skipped: Vec::new(),
    };
    let mut kept = Vec::new();
    let mut held = 0;
    for (slot, planned) in plan.samples.iter().enumerate() {
        match p.done.remove(&slot).expect("complete steps have every slot") {
            Err(corrupt) => {
                if cfg.corrupt == CorruptPolicy::Fail {
                    return Err(Error::Corrupt(corrupt));
                }
                batch.skipped.push(corrupt);
            }
            Ok(sample) => {
                held += sample.bytes();
                let row = batch.ids.len();
                batch.ids.push(sample.id);
                batch.positions.push(planned.position);
                batch.padded.push(planned.pad);
                batch.sets.push(planned.set);
                batch.labels.push(sample.label);
                batch.captions.push(sample.caption);
                batch.resolutions.push(planned.resolution);
                let frames = (cfg.kind == RecordKind::Video).then_some(cfg.video_frames);
                let px = batch.pixels.entry(planned.resolution).or_insert_with(|| Pixels {
                    resolution: planned.resolution,
                    frames,
                    rows: Vec::new(),
                    data: Vec::new(),
                });
                px.rows.push(row);
                px.data.extend_from_slice(&sample.pixels);
                kept.push(sample.text);
            }
        }
    }
    if let Some((dtype, dim)) = cfg.text {
        let max_tokens = kept.iter().flatten().map(|t| t.0 as usize).max().unwrap_or(0);
        let row_bytes = max_tokens * dim * 2;
        let mut text = TextBatch {
            dtype,
            dim,
            max_tokens,
            tokens: Vec::with_capacity(kept.len()),
            data: vec![0; kept.len() * row_bytes],
            mask: vec![0; kept.len() * max_tokens],
        };
        for (i, t) in kept.iter().enumerate() {
            let tokens = t.as_ref().map_or(0, |t| t.0);
            text.tokens.push(tokens);
            if let Some((_, data)) = t {
                text.data[i * row_bytes..i * row_bytes + data.len()].copy_from_slice(data);
            }
            text.mask[i * max_tokens..i * max_tokens + tokens as usize].fill(1);
        }
        batch.text = Some(text);
    }
    Ok((batch, plan.after, held))
}
