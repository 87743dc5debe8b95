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
//!
//! Pixels are decoded straight into the step's batch tensors ([`StepPixels`]): the reader
//! allocates them, each job carries a [`Target`], the one sample-sized range it may write, and
//! the assembler takes the tensors back once every job of the step has reported.

use std::collections::{BTreeMap, HashMap};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use mdm_shards::{EmbeddingDType, RecordKind};

use crate::batch::{Batch, Pixels, TextBatch};
use crate::decode::{Decoder, Transform};
use crate::error::{Corrupt, Error, Result};
use crate::order::{hash, unit, Cursor, Planned, Planner, StepPlan, TAG_CROP, TAG_FLIP};
use crate::recycle::Pool;
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

/// The pixel tensors of one step, one per resolution, each with room for `samples × sample
/// bytes` in plan order, left uninitialised (zeroing 12 MiB a step cost 4 % of a core) and
/// written in place by the decode workers through [`Target`]s. The assembler sets each
/// tensor's length over the rows that were decoded.
pub(crate) struct StepPixels {
    /// (resolution, empty buffer of that capacity, its base pointer for the targets).
    tensors: Vec<(u32, Vec<u8>, *mut MaybeUninit<u8>)>,
}

// SAFETY: the buffers are written only through `Target`s, whose ranges are disjoint (one per
// slot, handed out once by `StepPixels::new`), and read only after `Arc::try_unwrap` proves
// that every target (each holding an `Arc`) is gone.
unsafe impl Send for StepPixels {}
unsafe impl Sync for StepPixels {}

/// The range of a step tensor that one sample is decoded into; exactly one per slot.
pub(crate) struct Target {
    step: Arc<StepPixels>,
    tensor: usize,
    offset: usize,
    len: usize,
}

impl Target {
    fn pixels(&mut self) -> &mut [MaybeUninit<u8>] {
        let (_, buf, base) = &self.step.tensors[self.tensor];
        assert!(self.offset + self.len <= buf.capacity());
        // SAFETY: in bounds (checked above); no other target covers this range, and the buffer
        // is not read or moved while this target (and its `Arc`) lives; `&mut self` makes the
        // slice unique.
        unsafe { std::slice::from_raw_parts_mut(base.add(self.offset), self.len) }
    }
}

impl StepPixels {
    /// Uninitialised tensors for `plan` (`frames` per sample), and the target of each slot.
    fn new(plan: &StepPlan, frames: usize, pool: &Pool) -> (Arc<StepPixels>, Vec<Target>) {
        let sample_bytes = |res: u32| 3 * (res as usize).pow(2) * frames;
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for p in &plan.samples {
            *counts.entry(p.resolution).or_default() += 1;
        }
        let tensors: Vec<(u32, Vec<u8>, *mut MaybeUninit<u8>)> = counts
            .iter()
            .map(|(&res, &n)| {
                let mut buf = pool.take(n * sample_bytes(res));
                let base = buf.spare_capacity_mut().as_mut_ptr();
                (res, buf, base)
            })
            .collect();
        let step = Arc::new(StepPixels { tensors });
        let mut next: BTreeMap<u32, usize> = BTreeMap::new();
        let targets = plan
            .samples
            .iter()
            .map(|p| {
                let k = next.entry(p.resolution).or_default();
                let len = sample_bytes(p.resolution);
                let target = Target { step: step.clone(), tensor: counts.range(..p.resolution).count(), offset: *k * len, len };
                *k += 1;
                target
            })
            .collect();
        (step, targets)
    }

    fn bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.1.capacity()).sum()
    }

    /// The tensors by resolution (still of length 0), once no target is left.
    fn into_tensors(step: Arc<StepPixels>) -> Result<BTreeMap<u32, Vec<u8>>> {
        let step = Arc::try_unwrap(step).map_err(|_| Error::Pipeline("a step's pixels were still being written when it was assembled".into()))?;
        Ok(step.tensors.into_iter().map(|(res, buf, _)| (res, buf)).collect())
    }
}

pub(crate) struct Job {
    seq: u64,
    slot: usize,
    shard: String,
    row: u64,
    payload: Payload,
    transform: Transform,
    target: Target,
}

/// A decoded sample; its pixels are in the step's tensors.
pub(crate) struct Sample {
    id: String,
    caption: Option<String>,
    label: Option<i32>,
    text: Option<(u32, Vec<u8>)>,
}

impl Sample {
    fn bytes(&self) -> usize {
        self.text.as_ref().map_or(0, |t| t.1.len())
    }
}

pub(crate) enum Msg {
    /// Sent after the step's jobs, so that the assembler holds the last handle on its pixels.
    Step { seq: u64, plan: StepPlan, pixels: Arc<StepPixels> },
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

pub(crate) fn reader(mut planner: Planner, mut fetcher: Fetcher, cfg: Arc<Config>, ch: Channels, shared: Arc<Shared>, pool: Arc<Pool>, stop: Arc<AtomicBool>) {
    for seq in 0.. {
        let t = Instant::now();
        if ch.tokens.send(()).is_err() || stop.load(Relaxed) {
            return;
        }
        add_time(&shared.reader_backpressure_ns, t);
        shared.steps_started.fetch_add(1, Relaxed);
        let plan = planner.next_step();
        let (pixels, targets) = StepPixels::new(&plan, cfg.frames(), &pool);
        shared.hold(pixels.bytes());
        for ((slot, p), target) in plan.samples.iter().enumerate().zip(targets) {
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
                    let job = Job { seq, slot, shard: fetcher.shard_name(p.set, p.shard), row: p.row, payload, transform: cfg.transform(plan.epoch, p), target };
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
        if ch.results.send(Msg::Step { seq, plan, pixels }).is_err() {
            return;
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
        let Job { seq, slot, shard, row, payload, transform, mut target } = job;
        let frames = cfg.frames();
        let side = 3 * (transform.out as usize).pow(2);
        let pixels = target.pixels();
        let mut decoded = if payload.jpegs.is_empty() { Err("no frames".to_string()) } else { Ok(()) };
        for f in 0..frames {
            if decoded.is_err() {
                break;
            }
            // Short clips repeat their last frame.
            let jpeg = &payload.jpegs[f.min(payload.jpegs.len().saturating_sub(1))];
            decoded = decoder.decode_into(jpeg, payload.stored, &transform, &mut pixels[f * side..(f + 1) * side]);
        }
        // The assembler takes the step's tensors back once every target is gone.
        drop(target);
        let payload_bytes = payload.bytes();
        let result = match decoded {
            Ok(()) => {
                let sample = Sample { id: payload.id, caption: payload.caption, label: payload.label, text: payload.text };
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
    plan: Option<(StepPlan, Arc<StepPixels>)>,
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
            Msg::Step { seq, plan, pixels } => pending.entry(seq).or_default().plan = Some((plan, pixels)),
            Msg::Done { seq, slot, result } => {
                pending.entry(seq).or_default().done.insert(slot, result);
            }
        }
        while pending.get(&next).is_some_and(|p| p.plan.as_ref().is_some_and(|(plan, _)| plan.samples.len() == p.done.len())) {
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
    let (plan, pixels) = p.plan.take().expect("complete steps have a plan");
    let mut tensors = StepPixels::into_tensors(pixels)?;
    let sample_bytes = |res: u32| 3 * (res as usize).pow(2) * cfg.frames();
    // The held bytes are those allocated; a skipped sample's range is closed up below.
    let mut held = tensors.values().map(Vec::capacity).sum::<usize>();
    // Index of each slot in its resolution's tensor.
    let mut index: BTreeMap<u32, usize> = BTreeMap::new();
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
    for (slot, planned) in plan.samples.iter().enumerate() {
        let k = index.entry(planned.resolution).or_default();
        let in_tensor = *k;
        *k += 1;
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
                    data: tensors.remove(&planned.resolution).expect("one tensor per resolution of the plan"),
                });
                // Close up behind skipped samples: this one moves to the tensor's next free row.
                let n = sample_bytes(planned.resolution);
                if px.rows.len() != in_tensor {
                    px.data.spare_capacity_mut().copy_within(in_tensor * n..(in_tensor + 1) * n, px.rows.len() * n);
                }
                px.rows.push(row);
                kept.push(sample.text);
            }
        }
    }
    for px in batch.pixels.values_mut() {
        let len = px.rows.len() * px.sample_bytes();
        assert!(len <= px.data.capacity());
        // SAFETY: rows [0, len) of the tensor each hold a sample that decoded without error,
        // which writes all of its bytes (`Decoder::decode_into`), or one moved there from such
        // a row; a failed sample's range is never below `len` once closed up.
        unsafe { px.data.set_len(len) };
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
