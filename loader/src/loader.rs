//! [`LoaderBuilder`] and [`Loader`]: settings in, batches out.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Select};
use mdm_shards::ShardSet;

use crate::batch::Batch;
use crate::error::{io, Error, Result};
use crate::order::{Composition, EpochEnd, Planner, SetShape, Shuffle};
use crate::pipeline::{self, Assembled, Channels, Config};
use crate::recycle::{Pool, Recycler};
use crate::source::{check_mix, Fetcher, Location, Needs, Set};
use crate::state::LoaderState;
use crate::store::{is_url, RemoteSet, StoreOptions};
use crate::stats::{add_time, Shared, Stats};

/// What a corrupt row (checksum mismatch, undecodable JPEG) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorruptPolicy {
    /// Leave it out of its batch (one sample short; every other sample keeps its place), count
    /// it in [`Stats::skipped`] and name its shard and row in [`Batch::skipped`].
    Skip,
    /// Stop: `next()` returns [`Error::Corrupt`] at that batch.
    Fail,
}

/// Settings of a [`Loader`]; `&mut self` setters, each documenting its default.
#[derive(Debug, Clone)]
pub struct LoaderBuilder {
    sources: Vec<(String, f64)>,
    batch_size: u64,
    ratio: Option<Vec<(u32, f64)>>,
    bucket_pixels: Option<u64>,
    seed: u64,
    rank: u64,
    world: u64,
    workers: usize,
    prefetch: usize,
    shuffle: Option<Shuffle>,
    epoch_end: EpochEnd,
    corrupt: CorruptPolicy,
    verify: bool,
    captions: bool,
    text: bool,
    flip: bool,
    min_crop: f64,
    video_frames: usize,
    cache_bytes: usize,
    resume: Option<LoaderState>,
    order_log: Option<PathBuf>,
    store: StoreOptions,
}

impl Default for LoaderBuilder {
    fn default() -> Self {
        LoaderBuilder {
            sources: Vec::new(),
            batch_size: 32,
            ratio: None,
            bucket_pixels: None,
            seed: 0,
            rank: 0,
            world: 1,
            workers: std::thread::available_parallelism().map_or(4, |n| n.get()),
            prefetch: 4,
            shuffle: Some(Shuffle::default()),
            epoch_end: EpochEnd::Drop,
            corrupt: CorruptPolicy::Skip,
            verify: true,
            captions: true,
            text: true,
            flip: false,
            min_crop: 1.0,
            video_frames: 16,
            cache_bytes: 1 << 30,
            resume: None,
            order_log: None,
            store: StoreOptions::default(),
        }
    }
}

impl LoaderBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a shard set (a folder or manifest path, or an `s3://bucket/prefix` URL) with its
    /// mixing weight. Sets are interleaved by weight, each cycling through its own epochs.
    pub fn source(&mut self, path_or_url: impl Into<String>, weight: f64) -> &mut Self {
        self.sources.push((path_or_url.into(), weight));
        self
    }

    /// Samples per rank and step. Default 32.
    pub fn batch_size(&mut self, n: u64) -> &mut Self {
        self.batch_size = n;
        self
    }

    /// Resolutions with their weights (ml-mdm's `mixed_ratio`). Default: the largest stored
    /// resolution of the first set only.
    pub fn mixed_ratio(&mut self, ratio: Vec<(u32, f64)>) -> &mut Self {
        self.ratio = Some(ratio);
        self
    }

    /// One resolution per step, drawn by the mixed ratio, with a global batch of
    /// `pixels / res²` samples instead of `batch_size × world`. Default: off.
    pub fn buckets(&mut self, pixels: Option<u64>) -> &mut Self {
        self.bucket_pixels = pixels;
        self
    }

    /// Seed of every random choice. Default 0.
    pub fn seed(&mut self, seed: u64) -> &mut Self {
        self.seed = seed;
        self
    }

    /// This process's rank and the world size. Default 0 of 1.
    pub fn rank(&mut self, rank: u64, world: u64) -> &mut Self {
        (self.rank, self.world) = (rank, world);
        self
    }

    /// Decode threads. Default: the available cores.
    pub fn workers(&mut self, n: usize) -> &mut Self {
        self.workers = n;
        self
    }

    /// Steps read and decoded ahead of the consumer. Default 4.
    pub fn prefetch(&mut self, steps: usize) -> &mut Self {
        self.prefetch = steps;
        self
    }

    /// Shuffle settings, `None` for the stored order. Default [`Shuffle::default`].
    pub fn shuffle(&mut self, shuffle: Option<Shuffle>) -> &mut Self {
        self.shuffle = shuffle;
        self
    }

    /// Last partial global batch of an epoch. Default [`EpochEnd::Drop`].
    pub fn epoch_end(&mut self, end: EpochEnd) -> &mut Self {
        self.epoch_end = end;
        self
    }

    /// Default [`CorruptPolicy::Skip`].
    pub fn corrupt(&mut self, policy: CorruptPolicy) -> &mut Self {
        self.corrupt = policy;
        self
    }

    /// Check each row's xxh3 checksum. This reads every column of a row group; without it
    /// only the columns needed are read. Default true.
    pub fn verify_checksums(&mut self, yes: bool) -> &mut Self {
        self.verify = yes;
        self
    }

    /// Read captions. Default true.
    pub fn captions(&mut self, yes: bool) -> &mut Self {
        self.captions = yes;
        self
    }

    /// Read T5 embeddings (text kinds). Default true.
    pub fn text(&mut self, yes: bool) -> &mut Self {
        self.text = yes;
        self
    }

    /// Mirror half of the samples horizontally. Default false.
    pub fn random_flip(&mut self, yes: bool) -> &mut Self {
        self.flip = yes;
        self
    }

    /// Random square crop of side `min_side..=1` (fraction of the image) before resizing;
    /// `1.0` turns it off. Default 1.0.
    pub fn random_crop(&mut self, min_side: f64) -> &mut Self {
        self.min_crop = min_side;
        self
    }

    /// Frames per video clip (the first ones; shorter clips repeat their last). Default 16, as `mdm ingest webvid` stores and `mdm train` expects.
    pub fn video_frames(&mut self, n: usize) -> &mut Self {
        self.video_frames = n;
        self
    }

    /// Memory for decoded-from-Parquet row groups. Default 1 GiB.
    pub fn row_group_cache_bytes(&mut self, bytes: usize) -> &mut Self {
        self.cache_bytes = bytes;
        self
    }

    /// Continue from a saved state. Default: from the start.
    pub fn resume(&mut self, state: Option<LoaderState>) -> &mut Self {
        self.resume = state;
        self
    }

    /// Append one JSON line per batch (epoch, step, position, rank, ids hash) to this file.
    /// Default: none.
    pub fn order_log(&mut self, path: Option<PathBuf>) -> &mut Self {
        self.order_log = path;
        self
    }

    /// Object-store settings for `s3://` sources. Default [`StoreOptions::default`].
    pub fn store_options(&mut self, options: StoreOptions) -> &mut Self {
        self.store = options;
        self
    }

    fn validate(&self) -> Result<()> {
        let bad = |msg: &str| Err(Error::Config(msg.into()));
        if self.world == 0 || self.rank >= self.world {
            return bad(&format!("rank {} is not below world size {}", self.rank, self.world));
        }
        if self.batch_size == 0 || self.workers == 0 || self.prefetch == 0 || self.video_frames == 0 {
            return bad("batch size, workers, prefetch and video frames must be positive");
        }
        if !(self.min_crop > 0.0 && self.min_crop <= 1.0) {
            return bad(&format!("random crop side {} is not in (0, 1]", self.min_crop));
        }
        if self.sources.iter().any(|s| !(s.1 > 0.0 && s.1.is_finite())) {
            return bad("mixing weights must be positive");
        }
        if let Some(s) = &self.shuffle {
            if s.block_rows == 0 || s.window == 0 {
                return bad("shuffle block rows and window must be positive");
            }
        }
        if let Some(r) = &self.ratio {
            if r.is_empty() || r.iter().any(|&(res, w)| res == 0 || !(w > 0.0 && w.is_finite())) {
                return bad("a mixed ratio needs positive resolutions and weights");
            }
        }
        Ok(())
    }

    /// Opens the shard sets, checks the settings against them and starts the threads.
    pub fn build(&self) -> Result<Loader> {
        self.validate()?;
        let sets: Vec<Set> = self.sources.iter().map(|(name, weight)| open_set(name, *weight, &self.store)).collect::<Result<_>>()?;
        let ratio = match &self.ratio {
            Some(r) => r.clone(),
            None => vec![(sets.first().ok_or_else(|| Error::Config("no shard sets given".into()))?.layout().max_resolution(), 1.0)],
        };
        let resolutions: Vec<u32> = ratio.iter().map(|r| r.0).collect();
        check_mix(&sets, &resolutions)?;
        let composition = match self.bucket_pixels {
            None => Composition::PerSample { batch_size: self.batch_size, ratio },
            Some(pixels) => {
                for &r in &resolutions {
                    let global = pixels / (r as u64 * r as u64);
                    if global == 0 || !global.is_multiple_of(self.world) {
                        return Err(Error::Config(format!(
                            "bucket {r}: {pixels} pixels make a global batch of {global}, which does not split over {} ranks",
                            self.world
                        )));
                    }
                }
                Composition::Buckets { pixels, ratio }
            }
        };
        let shapes: Vec<SetShape> = sets
            .iter()
            .map(|s| SetShape { shard_rows: s.manifest.shards.iter().map(|e| e.rows).collect(), weight: s.weight })
            .collect();
        let fingerprint = fingerprint(self, &sets, &composition);
        let cursor = match &self.resume {
            None => None,
            Some(state) => {
                if state.fingerprint != fingerprint {
                    return Err(Error::State(format!(
                        "saved by a loader with other order settings (fingerprint {}, this one {fingerprint}): seed, shard sets, weights, shuffle, mixed ratio, buckets and epoch end must match",
                        state.fingerprint
                    )));
                }
                if state.cursor.drawn.len() != sets.len() || state.cursor.epoch_start.len() != sets.len() {
                    return Err(Error::State(format!("cursor for {} shard sets, this loader has {}", state.cursor.drawn.len(), sets.len())));
                }
                Some(state.cursor.clone())
            }
        };
        let planner = Planner::new(self.seed, self.shuffle.clone(), shapes, composition.clone(), self.epoch_end, (self.rank, self.world), cursor);
        let max_global = match &composition {
            Composition::PerSample { batch_size, .. } => batch_size * self.world,
            Composition::Buckets { pixels, .. } => resolutions.iter().map(|&r| pixels / (r as u64 * r as u64)).max().unwrap_or(0),
        };
        if self.epoch_end == EpochEnd::Drop && planner.epoch_len() < max_global {
            return Err(Error::Config(format!("an epoch of {} samples is shorter than a global batch of {max_global}", planner.epoch_len())));
        }
        let mut state = self.resume.clone().unwrap_or_else(|| LoaderState::new(fingerprint, planner.cursor().clone()));
        state.cursor = planner.cursor().clone();

        let first = &sets[0].manifest;
        let text = match (&first.text_encoder, self.text && first.kind.has_text()) {
            (Some(enc), true) => Some((enc.dtype, enc.dim as usize)),
            _ => None,
        };
        let mut shard_offsets = Vec::new();
        let mut total_rows = 0;
        for s in &sets {
            let offsets = s.manifest.shards.iter().map(|e| {
                let first = total_rows;
                total_rows += e.rows;
                first
            });
            shard_offsets.push(offsets.collect());
        }
        let cfg = Arc::new(Config {
            seed: self.seed,
            kind: first.kind,
            flip: self.flip,
            min_crop: self.min_crop,
            video_frames: self.video_frames,
            text,
            corrupt: self.corrupt,
            shard_offsets,
            total_rows,
        });
        let needs = Needs { resolutions, min_crop: self.min_crop, captions: self.captions, text: text.is_some(), verify: self.verify };
        let epoch_len = planner.epoch_len();
        let fetcher = Fetcher::new(Arc::new(sets), needs, self.cache_bytes);
        let order_log = match &self.order_log {
            None => None,
            Some(p) => Some((p.clone(), File::options().create(true).append(true).open(p).map_err(io(p))?)),
        };

        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (token_tx, tokens) = bounded(self.prefetch);
        let (jobs_tx, jobs_rx) = bounded(2 * self.workers);
        let (results_tx, results_rx) = unbounded();
        let (out_tx, rx) = unbounded();
        let mut threads = Vec::new();
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name).spawn(f).map_err(|e| Error::Pipeline(format!("cannot start a thread: {e}")))
        };
        for i in 0..self.workers {
            let (cfg, jobs, results, shared) = (cfg.clone(), jobs_rx.clone(), results_tx.clone(), shared.clone());
            threads.push(spawn(format!("mdm-loader-decode-{i}"), Box::new(move || pipeline::worker(cfg, jobs, results, shared)))?);
        }
        let ch = Channels { tokens: token_tx, jobs: jobs_tx, results: results_tx };
        let pool = Arc::new(Pool::default());
        let (c, sh, po, st) = (cfg.clone(), shared.clone(), pool.clone(), stop.clone());
        threads.push(spawn("mdm-loader-read".into(), Box::new(move || pipeline::reader(planner, fetcher, c, ch, sh, po, st)))?);
        let (c, sh) = (cfg, shared.clone());
        threads.push(spawn("mdm-loader-assemble".into(), Box::new(move || pipeline::assembler(c, results_rx, out_tx, sh)))?);
        Ok(Loader {
            state,
            rx,
            tokens,
            shared,
            pool,
            stop,
            threads,
            order_log,
            rank: self.rank,
            world: self.world,
            epoch_len,
            failed: false,
            started: Instant::now(),
            batches: 0,
            samples: 0,
            per_resolution: BTreeMap::new(),
            skipped: 0,
        })
    }
}

fn open_set(name: &str, weight: f64, store: &StoreOptions) -> Result<Set> {
    if is_url(name) {
        let remote = RemoteSet::open(name, store)?;
        return Ok(Set { name: name.to_string(), manifest: remote.manifest.clone(), weight, location: Location::Remote(Arc::new(remote)) });
    }
    let set = ShardSet::open(name)?;
    Ok(Set { name: name.to_string(), manifest: set.manifest.clone(), weight, location: Location::Local(set) })
}

/// Hash of everything that decides the global order (and nothing that does not, such as the
/// world size, batch size per rank, workers or where the shards live).
fn fingerprint(b: &LoaderBuilder, sets: &[Set], composition: &Composition) -> String {
    let sets: Vec<_> = sets
        .iter()
        .map(|s| serde_json::json!({ "weight": s.weight, "shards": s.manifest.shards.iter().map(|e| (&e.file, e.rows)).collect::<Vec<_>>() }))
        .collect();
    let buckets = match composition {
        Composition::Buckets { pixels, .. } => Some(*pixels),
        Composition::PerSample { .. } => None,
    };
    let canon = serde_json::json!({
        "seed": b.seed, "shuffle": b.shuffle, "epoch_end": b.epoch_end,
        "ratio": composition.ratio(), "buckets": buckets, "sets": sets,
    });
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(canon.to_string().as_bytes()))
}

/// Iterates batches of this rank, endlessly (epoch after epoch). Dropping it stops its threads.
pub struct Loader {
    state: LoaderState,
    rx: Receiver<Assembled>,
    tokens: Receiver<()>,
    shared: Arc<Shared>,
    pool: Arc<Pool>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    order_log: Option<(PathBuf, File)>,
    rank: u64,
    world: u64,
    epoch_len: u64,
    failed: bool,
    started: Instant,
    batches: u64,
    samples: u64,
    per_resolution: BTreeMap<u32, u64>,
    skipped: u64,
}

impl Loader {
    /// The cursor after the last batch yielded: save it with the checkpoint.
    pub fn state(&self) -> &LoaderState {
        &self.state
    }

    pub fn stats(&self) -> Stats {
        self.shared.snapshot((self.batches, self.samples, self.skipped), &self.per_resolution, self.started)
    }

    /// A handle through which a consumer done with a batch gives its pixel buffers back, so
    /// that later steps are built in them (no fresh pages per step). Optional: batches not
    /// given back are freed as usual.
    pub fn recycler(&self) -> Recycler {
        Recycler(Arc::downgrade(&self.pool))
    }

    /// Samples in one loader epoch (over all ranks): the rows of all sets together.
    pub fn epoch_len(&self) -> u64 {
        self.epoch_len
    }

    /// Waits at most `timeout` for the next batch (or error); true when `next()` will not block.
    /// Lets a caller that must stay responsive (a Python binding checking for Ctrl-C) poll.
    pub fn ready_within(&self, timeout: Duration) -> bool {
        if self.failed || !self.rx.is_empty() {
            return true;
        }
        let t = Instant::now();
        let mut select = Select::new();
        select.recv(&self.rx);
        let ready = select.ready_timeout(timeout).is_ok();
        add_time(&self.shared.consumer_wait_ns, t);
        ready
    }

    fn log(&mut self, batch: &Batch) -> Result<()> {
        let Some((path, file)) = &mut self.order_log else { return Ok(()) };
        let line = serde_json::json!({
            "epoch": batch.epoch, "step": batch.step, "position": batch.position, "rank": self.rank,
            "world": self.world, "samples": batch.len(), "ids_xxh3": format!("{:016x}", batch.ids_hash()),
        });
        writeln!(file, "{line}").and_then(|_| file.flush()).map_err(io(path.as_path()))
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.failed {
            return None;
        }
        let t = Instant::now();
        let received = self.rx.recv();
        add_time(&self.shared.consumer_wait_ns, t);
        if let Ok(Ok((_, _, held))) = &received {
            self.shared.release(*held);
        }
        // Only now may the reader start another step.
        let _ = self.tokens.try_recv();
        let result = match received {
            Err(_) => Err(Error::Pipeline("the loader threads stopped".into())),
            Ok(Err(e)) => {
                self.skipped += matches!(e, Error::Corrupt(_)) as u64;
                Err(e)
            }
            Ok(Ok((mut batch, cursor, _))) => {
                self.skipped += batch.skipped.len() as u64;
                batch.step = self.state.steps;
                self.state.steps += 1;
                self.state.cursor = cursor;
                self.batches += 1;
                self.samples += batch.len() as u64;
                for (&res, px) in &batch.pixels {
                    *self.per_resolution.entry(res).or_default() += px.len() as u64;
                }
                self.log(&batch).map(|_| batch)
            }
        };
        self.failed = result.is_err();
        Some(result)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        // Dropping the receivers unblocks the reader (tokens) and the assembler (batches).
        drop(std::mem::replace(&mut self.tokens, bounded(0).1));
        drop(std::mem::replace(&mut self.rx, bounded(0).1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
