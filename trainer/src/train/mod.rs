//! Training runs: `mdm train --config FILE [--resume]`.
//!
//! - [`crate::run_config`]: the run's TOML, validated once and saved resolved;
//! - [`batch`]: loader batches as tensors;
//! - [`crate::optim`]: AdamW, clipping and EMA on one flat buffer (fp32 master for bf16 runs);
//! - [`crate::checkpoint`]: atomic checkpoint folders, keep-last-K, exact resume;
//! - [`log`]: progress line, `losses.jsonl`, TensorBoard.
//!
//! Every sample's time, noise and CFG dropout come from libtorch reseeded with (seed, step,
//! micro-batch, the sample's index in the global step), so they depend neither on what ran
//! before nor on how the step is split over ranks: with the loader's cursor, the weights, the
//! EMA and the moments, a resumed run repeats the uninterrupted run's losses exactly (on CPU;
//! CUDA kernels may not be bitwise deterministic), and N ranks of batch B train as one rank of
//! batch N·B.
//!
//! Data-parallel runs ([`crate::dist`]): rank 0's weights are broadcast at the start; each
//! optimizer step all-reduces one small vector (losses, non-finite and stop flags, per-rank
//! timings) and, after the last micro-batch, the flat fp32 gradient, averaged; every rank
//! then takes the same AdamW step. Rank 0 alone writes logs and checkpoints; a checkpoint
//! ends with a barrier, so it exists only once every rank reached its step.

pub mod batch;
pub mod log;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mdm_loader::{Loader, LoaderBuilder};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::diffusion::{NestedDiffusion, SampleOptions};
use crate::dist::{Group, Launch};
use crate::error::{Error, Result};
use crate::model::MdmUNet;
use crate::pictures::{grid, png_bytes};
use crate::sample::sample_levels;
use crate::checkpoint;
use crate::denoiser::{Denoiser, Draws, LossOptions, TrainBatch};
use crate::optim::FlatOptimizer;
use crate::run_config::{self, pick_device_for, DeviceChoice, Precision, Resolved};
use log::{Logger, StepLog};

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Reached `run.steps`.
    Finished { step: u64, checkpoint: PathBuf },
    /// Stopped by SIGINT/SIGTERM after writing a checkpoint.
    Interrupted { step: u64, checkpoint: PathBuf },
}

/// Options that are not part of the run's config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the newest checkpoint in the run folder.
    pub resume: bool,
    /// No progress lines.
    pub quiet: bool,
    /// Stop after this many steps of this invocation (tests; a checkpoint is written).
    pub stop_after: Option<u64>,
    /// This process's rank in a data-parallel run (`None`: the only one).
    pub launch: Option<Launch>,
    /// Rendezvous and collective timeout of a data-parallel run (default 300 s): a rank that
    /// dies makes the others fail within it.
    pub dist_timeout: Option<Duration>,
}

/// Default [`RunOptions::dist_timeout`].
pub const DEFAULT_DIST_TIMEOUT: Duration = Duration::from_secs(300);

/// A seed for one micro-batch: splitmix64 of (seed, step, micro).
pub fn step_seed(seed: u64, step: u64, micro: u64) -> i64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// The seed of one sample's draws: splitmix64 of (seed, step, micro, index in the global step).
pub fn sample_seed(seed: u64, step: u64, micro: u64, index: u64) -> i64 {
    step_seed(step_seed(seed, step, micro) as u64, index, 0x5A17)
}

/// Draws t, the dropout uniform and every level's noise of each sample from libtorch
/// reseeded with [`sample_seed`]: `index` is each sample's index in the global step (group
/// order), `group_sizes` the samples per level group, `sides` the level sides. A sample of
/// group j has noise at levels j.. (it trains those), `frames` rows each.
#[allow(clippy::too_many_arguments)]
pub fn draw_samples(
    seed: (u64, u64, u64),
    index: &[u64],
    group_sizes: &[i64],
    sides: &[u32],
    frames: i64,
    steps: i64,
    device: Device,
) -> Result<Draws> {
    if group_sizes.iter().sum::<i64>() != index.len() as i64 || group_sizes.len() != sides.len() {
        return Err(Error::input("draws: group sizes do not match the samples or the levels"));
    }
    let levels = sides.len();
    let mut group_of = vec![];
    for (j, &n) in group_sizes.iter().enumerate() {
        group_of.extend(std::iter::repeat_n(j, n as usize));
    }
    let (mut time, mut uniform) = (vec![], vec![]);
    let mut noise: Vec<Vec<Tensor>> = (0..levels).map(|_| vec![]).collect();
    for (&idx, &g) in index.iter().zip(&group_of) {
        tch::manual_seed(sample_seed(seed.0, seed.1, seed.2, idx));
        time.push(Tensor::randint(steps, [1], (Kind::Int64, Device::Cpu)));
        uniform.push(Tensor::rand([1], (Kind::Float, Device::Cpu)));
        for (i, level) in noise.iter_mut().enumerate().skip(g) {
            let s = sides[i] as i64;
            level.push(Tensor::randn([frames, 3, s, s], (Kind::Float, device)));
        }
    }
    let cat = |v: &[Tensor], empty: Tensor| if v.is_empty() { empty } else { Tensor::cat(v, 0) };
    let noise = noise
        .iter()
        .zip(sides)
        .map(|(v, &s)| cat(v, Tensor::zeros([0, 3, s as i64, s as i64], (Kind::Float, device))))
        .collect();
    Ok(Draws {
        time: cat(&time, Tensor::zeros([0], (Kind::Int64, Device::Cpu))).to_device(device),
        uniform: cat(&uniform, Tensor::zeros([0], (Kind::Float, Device::Cpu))).to_device(device),
        noise,
    })
}

/// Each level's share of the global batch: level i trains the samples of groups 0..=i.
pub fn level_shares(global_group_sizes: &[f64]) -> Vec<f64> {
    let total: f64 = global_group_sizes.iter().sum();
    let mut acc = 0.0;
    global_group_sizes
        .iter()
        .map(|n| {
            acc += n;
            if total > 0.0 {
                acc / total
            } else {
                0.0
            }
        })
        .collect()
}

/// A run in progress: model, optimizer, loader and logs.
pub struct Trainer {
    pub run: Resolved,
    pub vs: VarStore,
    pub model: MdmUNet,
    pub diffusion: NestedDiffusion,
    pub opt: FlatOptimizer,
    pub loader: Loader,
    pub device: Device,
    /// The process group of a data-parallel run.
    pub group: Option<Group>,
    /// Rank 0's logs (`None` on the other ranks).
    logger: Option<Logger>,
    samples: u64,
    stop: Arc<AtomicBool>,
    config_toml: String,
    /// Text runs: the T5 states of the first samples this process trained on, which the
    /// TensorBoard sample grids use as their prompts.
    sample_text: Option<crate::model::Conditioning>,
    /// Samples per loader step over all ranks.
    global_batch: u64,
}

/// The run folder as every rank sees it once rank 0 has prepared it, and the process group.
struct Folder {
    group: Option<Group>,
    rank: usize,
    world: usize,
    lead: bool,
    quiet: bool,
    /// Checkpoints of the run folder, oldest first.
    existing: Vec<(u64, PathBuf)>,
}

/// What a fresh start and a resume share before the weights are set: the folder, the device
/// and the model.
struct Setup {
    folder: Folder,
    device: Device,
    vs: VarStore,
    model: MdmUNet,
    diffusion: NestedDiffusion,
    global_batch: u64,
    /// The resolved config as the run folder keeps it ([`config_toml`]).
    config_toml: String,
}

/// Where training starts: the loader position and the samples trained so far.
struct Start {
    opt: FlatOptimizer,
    loader_state: Option<mdm_loader::LoaderState>,
    samples: u64,
}

impl Trainer {
    /// Builds everything for `run`: with `opts.resume`, the newest checkpoint of the run folder
    /// ([`Trainer::resume`]; a folder without one starts fresh), else a fresh start
    /// ([`Trainer::fresh`]), which refuses a folder that has checkpoints.
    pub fn new(run: Resolved, opts: &RunOptions) -> Result<Self> {
        if opts.resume {
            Self::resume(run, opts)
        } else {
            Self::fresh(run, opts)
        }
    }

    /// A fresh start: new weights, grown from a lower stage's checkpoint when the config has
    /// `[progressive]`; writes the resolved config into the run folder.
    pub fn fresh(run: Resolved, opts: &RunOptions) -> Result<Self> {
        let folder = Folder::open(&run, opts)?;
        if !folder.existing.is_empty() {
            return Err(Error::Run {
                path: run.config.run.out.clone(),
                msg: "the run folder has checkpoints: pass --resume to continue, or choose another run.out".into(),
            });
        }
        let setup = Setup::build(&run, opts, folder)?;
        let start = setup.start_fresh(&run)?;
        Self::assemble(run, opts, setup, start)
    }

    /// Continues from the newest checkpoint of the run folder (weights, EMA, moments, loader
    /// position, logs cut back to its step), after checking it is the same run; a folder with
    /// no checkpoint starts fresh.
    pub fn resume(run: Resolved, opts: &RunOptions) -> Result<Self> {
        let setup = Setup::build(&run, opts, Folder::open(&run, opts)?)?;
        let start = match setup.folder.existing.last() {
            Some((_, dir)) => setup.resume_from(&run, dir)?,
            None => setup.start_fresh(&run)?,
        };
        Self::assemble(run, opts, setup, start)
    }

    /// The shared end of both starts: rank 0's state on every rank, the loader, signal
    /// handlers and logs.
    fn assemble(run: Resolved, opts: &RunOptions, setup: Setup, start: Start) -> Result<Self> {
        let Setup { folder: Folder { group, rank, world, lead, quiet, .. }, device, vs, model, diffusion, global_batch, config_toml } = setup;
        let Start { mut opt, loader_state, samples } = start;
        let cfg = &run.config;
        if let Some(g) = &group {
            // Identical start: rank 0's weights, moments and EMA everywhere.
            let _ng = tch::no_grad_guard();
            g.broadcast(&opt.master, 0, "broadcast of rank 0's weights")?;
            g.broadcast(&opt.exp_avg, 0, "broadcast of rank 0's moments")?;
            g.broadcast(&opt.exp_avg_sq, 0, "broadcast of rank 0's moments")?;
            if let Some(e) = &opt.ema {
                g.broadcast(e, 0, "broadcast of rank 0's EMA")?;
            }
            opt.sync_working();
        }
        let loader = build_loader_for(&run, loader_state, rank as u64, world as u64)?;
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // A second signal while the checkpoint is being written exits at once.
            signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))
                .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&stop)))
                .map_err(|source| Error::Io { path: "<signal handler>".into(), source })?;
        }
        let logger = if lead { Some(Logger::open(&cfg.run.out, quiet, run.frames > 1)?) } else { None };
        if !quiet {
            eprintln!(
                "model: {} levels {:?}, {} trainable parameters ({} tensors); device {device:?}, {:?}; {} samples per epoch",
                run.sides.len(),
                run.sides,
                opt.numel(),
                opt.slots.len(),
                cfg.run.precision,
                loader.epoch_len()
            );
            if let (Some(l), Some(g)) = (&opts.launch, &group) {
                eprintln!(
                    "data-parallel ({}): {} ranks, global batch {global_batch}, store at {}:{}, CPU tensors on Gloo, CUDA tensors on {}, timeout {:?}",
                    l.launcher,
                    g.world,
                    l.master_addr,
                    l.master_port,
                    g.cuda_backend(),
                    g.timeout()
                );
            }
        }
        Ok(Trainer {
            run,
            vs,
            model,
            diffusion,
            opt,
            loader,
            device,
            group,
            logger,
            samples,
            stop,
            config_toml,
            sample_text: None,
            global_batch,
        })
    }

    /// Trains up to `run.steps` (or until SIGINT/SIGTERM on any rank, or `stop_after` steps);
    /// writes checkpoints on the way and at the end. A non-finite loss or gradient on any rank
    /// stops the run with an error before the weights change, leaving the last checkpoint as
    /// it was.
    pub fn train(&mut self, opts: &RunOptions) -> Result<Outcome> {
        let total = self.run.config.run.steps;
        let started_at = self.opt.step;
        let (log_every, ckpt_every) = (self.run.config.run.log_every, self.run.config.run.checkpoint_every);
        let mut window = (Instant::now(), self.samples, self.loader.stats().consumer_wait);
        let mut last_ckpt = None;
        while self.opt.step < total {
            let (log, interrupted) = self.step()?;
            let step = self.opt.step;
            if let Some(logger) = &mut self.logger {
                logger.step(&log)?;
                if step.is_multiple_of(log_every) || step == total {
                    let secs = window.0.elapsed().as_secs_f64().max(1e-9);
                    let wait = self.loader.stats().consumer_wait;
                    let wait_frac = (wait - window.2).as_secs_f64() / secs;
                    let img_s = (log.samples - window.1.min(log.samples)) as f64 / secs;
                    logger.report(&log, total, img_s, wait_frac)?;
                    window = (Instant::now(), log.samples, wait);
                }
            }
            let every = self.run.config.sample.every;
            if every > 0 && step.is_multiple_of(every) && self.logger.is_some() {
                self.log_samples()?;
            }
            let stopping = opts.stop_after.is_some_and(|n| step - started_at >= n);
            if step.is_multiple_of(ckpt_every) || step == total || interrupted || stopping {
                last_ckpt = Some(self.save()?);
            }
            if interrupted || stopping {
                let checkpoint = last_ckpt.expect("saved above");
                if interrupted && self.logger.is_some() && !opts.quiet {
                    eprintln!("interrupted: checkpoint {} written", checkpoint.display());
                }
                return Ok(Outcome::Interrupted { step, checkpoint });
            }
        }
        let checkpoint = match last_ckpt {
            Some(c) => c,
            None => checkpoint::resolve(&self.run.config.run.out)?,
        };
        Ok(Outcome::Finished { step: self.opt.step, checkpoint })
    }

    /// One optimizer step over `grad_accum` micro-batches; also says whether any rank was
    /// asked to stop (SIGINT/SIGTERM).
    fn step(&mut self) -> Result<(StepLog, bool)> {
        let started = Instant::now();
        let wait_before = self.loader.stats().consumer_wait;
        let cfg = &self.run.config;
        let step = self.opt.step;
        let accum = cfg.data.grad_accum;
        let levels = self.model.num_levels();
        let world = self.group.as_ref().map_or(1, |g| g.world);
        self.opt.zero_grad();
        let (mut loss, mut per_level) = (0.0, vec![0.0; levels]);
        for micro in 0..accum {
            let batch = self
                .loader
                .next()
                .ok_or_else(|| Error::Batch("the loader stopped".into()))??;
            let tb = batch::to_tensors(&batch, &self.run.sides, self.run.cond, self.run.frames, self.device)?;
            if self.sample_text.is_none() && matches!(tb.cond, crate::model::Conditioning::Text { .. }) {
                self.sample_text = Some(tb.cond.narrow(self.run.config.sample.count.min(tb.len() as i64)));
            }
            let sizes = tb.group_sizes();
            let draws = draw_samples(
                (cfg.run.seed, step, micro),
                &tb.index,
                &sizes,
                &self.run.sides,
                tb.frames,
                self.diffusion.schedule.steps,
                self.device,
            )?;
            let denoiser = Denoiser::new(&self.model, &self.diffusion);
            let (tb, draws, shares) = match &self.run.split {
                // ml-mdm's fixed split (the loader drew every sample at the outermost side),
                // normalised by its nominal shares: no group sizes to gather.
                Some(m) => {
                    let (tb, draws) = denoiser.split(tb, draws, m)?;
                    (tb, draws, m.clone())
                }
                // Levels are normalised by their share of the whole global batch.
                None => {
                    let global = Tensor::from_slice(&sizes.iter().map(|&n| n as f64).collect::<Vec<_>>());
                    if let Some(g) = &self.group {
                        g.all_reduce_sum(&global, &format!("group-size all-reduce at step {}", step + 1))?;
                    }
                    (tb, draws, level_shares(&Vec::<f64>::try_from(&global)?))
                }
            };
            let opts = LossOptions { cfg_dropout: cfg.data.cfg_dropout, shares: Some(shares) };
            let (l, lv) = forward_backward(&denoiser, &tb, &draws, &opts)?;
            loss += l;
            for (acc, t) in per_level.iter_mut().zip(lv) {
                *acc += t;
            }
        }
        let n = accum as f64;
        loss /= n;
        per_level.iter_mut().for_each(|x| *x /= n);
        // One small all-reduce: losses, flags, this rank's step and loader-wait times.
        let step_secs = started.elapsed().as_secs_f64();
        let wait_secs = (self.loader.stats().consumer_wait - wait_before).as_secs_f64();
        let rank = self.group.as_ref().map_or(0, |g| g.rank);
        let nonfinite = !loss.is_finite();
        let mut v = vec![if nonfinite { 0.0 } else { loss }];
        v.extend(per_level.iter().map(|x| if x.is_finite() { *x } else { 0.0 }));
        v.push(nonfinite as u8 as f64);
        v.push(self.stop.load(Ordering::Relaxed) as u8 as f64);
        let mut timing = vec![0.0; 2 * world];
        timing[2 * rank] = step_secs;
        timing[2 * rank + 1] = wait_secs;
        v.extend(timing);
        let stats = Tensor::from_slice(&v);
        if let Some(g) = &self.group {
            g.all_reduce_sum(&stats, &format!("loss all-reduce at step {}", step + 1))?;
        }
        let v = Vec::<f64>::try_from(&stats)?;
        let w = world as f64;
        let (any_nonfinite, stop) = (v[1 + levels] > 0.0, v[2 + levels] > 0.0);
        if !nonfinite {
            loss = v[0] / w;
            per_level = v[1..1 + levels].iter().map(|x| x / w).collect();
        }
        let ranks: Vec<(f64, f64)> = if world > 1 {
            (0..world).map(|r| (v[3 + levels + 2 * r], v[4 + levels + 2 * r])).collect()
        } else {
            vec![]
        };
        let non_finite = |grad_norm: f64, loss: f64| -> Result<(StepLog, bool)> {
            Err(Error::NonFinite {
                step: step + 1,
                loss,
                grad_norm,
                checkpoint: checkpoint::list(&cfg.run.out)?.pop().map(|(_, p)| p),
            })
        };
        if any_nonfinite {
            return non_finite(f64::NAN, if nonfinite { loss } else { f64::NAN });
        }
        let comm = Instant::now();
        let mut g = {
            let _ng = tch::no_grad_guard();
            self.opt.flat_grad(n)
        };
        if let Some(group) = &self.group {
            group.all_reduce_sum(&g, &format!("gradient all-reduce at step {}", step + 1))?;
            let _ng = tch::no_grad_guard();
            g = g / w;
        }
        let comm_secs = if self.group.is_some() { comm.elapsed().as_secs_f64() } else { 0.0 };
        let st = match self.opt.apply(g) {
            Ok(st) => st,
            Err(grad_norm) => return non_finite(grad_norm, loss),
        };
        self.samples += self.global_batch * accum;
        Ok((
            StepLog {
                step: self.opt.step,
                loss,
                level_losses: per_level,
                lr: st.lr,
                grad_norm: st.grad_norm,
                samples: self.samples,
                ranks,
                comm_secs,
                step_secs: started.elapsed().as_secs_f64(),
            },
            stop,
        ))
    }

    /// Writes a checkpoint of the current step (rank 0), then waits for every rank.
    pub fn save(&mut self) -> Result<PathBuf> {
        let cfg = &self.run.config;
        let step = self.opt.step;
        let path = if self.logger.is_some() {
            let mut state = checkpoint::new_state(
                step,
                cfg.run.seed,
                self.samples,
                self.loader.state().clone(),
                self.opt.ema.is_some(),
            );
            state.world_size = self.group.as_ref().map_or(1, |g| g.world) as u64;
            state.global_batch = self.global_batch;
            checkpoint::save(&cfg.run.out, &self.vs, &self.opt, &state, &self.config_toml, cfg.run.keep_checkpoints)?
        } else {
            checkpoint::dir_for(&cfg.run.out, step)
        };
        if let Some(g) = &self.group {
            g.barrier(&format!("checkpoint barrier at step {step}"))?;
        }
        Ok(path)
    }

    /// A sample grid of the EMA (or current) weights into TensorBoard: classes 0..count for
    /// class models, the captions of the first samples trained on for text models. Video
    /// models show the first clip's frames, one column per frame.
    fn log_samples(&mut self) -> Result<()> {
        let sc = self.run.config.sample.clone();
        let _g = tch::no_grad_guard();
        // Swap the EMA in, sample, swap back.
        let backup = self.opt.master.copy();
        if let Some(e) = &self.opt.ema {
            self.opt.master.copy_(e);
            self.opt.sync_working();
        }
        let (cond, n) = self.sample_condition(sc.count)?;
        let frames = self.run.frames;
        let opts = SampleOptions {
            steps: Some(sc.steps),
            sampler: crate::diffusion::Sampler::Ddim { eta: 0.0 },
            guidance_scale: sc.guidance,
            threshold: None,
            frames,
        };
        let seed = step_seed(self.run.config.run.seed, self.opt.step, u64::MAX - 1) as u64;
        let result = sample_levels(&self.model, &self.diffusion, &self.run.sides, &cond, n, seed, &opts, self.device);
        self.opt.master.copy_(&backup);
        self.opt.sync_working();
        let mut levels = result?;
        if frames > 1 {
            levels = levels.iter().map(|l| l.narrow(0, 0, frames)).collect();
        }
        let (w, h, rgb) = grid(&levels)?;
        match &mut self.logger {
            Some(logger) => logger.image(self.opt.step, "samples", w, h, png_bytes(w, h, rgb)?),
            None => Ok(()),
        }
    }

    /// The condition of the TensorBoard samples and their count.
    fn sample_condition(&self, n: i64) -> Result<(crate::model::Conditioning, i64)> {
        use crate::model::Conditioning;
        if let Some(Conditioning::Text { tokens, mask }) = &self.sample_text {
            let t = Conditioning::Text { tokens: tokens.shallow_clone(), mask: mask.shallow_clone() };
            return Ok((t, tokens.size()[0]));
        }
        let cond = match self.run.cond {
            run_config::CondKind::Class => {
                let classes = self.model.null_class().unwrap_or(1);
                Conditioning::Class(Tensor::arange(n, (Kind::Int64, self.device)).remainder(classes))
            }
            run_config::CondKind::None => Conditioning::None,
            run_config::CondKind::Text => {
                let d = self.run.model.top.innermost().text.map_or(0, |t| t.input_dim);
                crate::model::null_condition(
                    &Conditioning::Text {
                        tokens: Tensor::zeros([1, 1, d], (Kind::Float, self.device)),
                        mask: Tensor::ones([1, 1], (Kind::Float, self.device)),
                    },
                    n,
                    None,
                )?
            }
        };
        Ok((cond, n))
    }
}

/// The resolved config as the run folder keeps it (data-parallel runs: with a line naming the
/// ranks and the global batch).
fn config_toml(run: &Resolved, world: usize, global_batch: u64) -> String {
    let cfg = &run.config;
    if world > 1 {
        format!(
            "# data-parallel: {world} ranks x batch_size {} = global batch {global_batch} (x grad_accum {} per optimizer step)\n{}",
            cfg.data.batch_size,
            cfg.data.grad_accum,
            run.to_toml()
        )
    } else {
        run.to_toml()
    }
}

impl Folder {
    /// Joins the process group; rank 0 creates the run folder and removes partial
    /// checkpoints, then every rank lists the checkpoints.
    fn open(run: &Resolved, opts: &RunOptions) -> Result<Folder> {
        let out = &run.config.run.out;
        let group = match &opts.launch {
            Some(l) => Some(Group::connect(l, opts.dist_timeout.unwrap_or(DEFAULT_DIST_TIMEOUT))?),
            None => None,
        };
        let (rank, world) = group.as_ref().map_or((0, 1), |g| (g.rank, g.world));
        let lead = rank == 0;
        let quiet = opts.quiet || !lead;
        if lead {
            std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.clone(), source })?;
            checkpoint::clean_partial(out)?;
        }
        if let Some(g) = &group {
            g.barrier("start-up (rank 0 preparing the run folder)")?;
        }
        let existing = if out.exists() { checkpoint::list(out)? } else { vec![] };
        Ok(Folder { group, rank, world, lead, quiet, existing })
    }
}

impl Setup {
    /// Picks the device (NCCL for a CUDA group), checks every rank has the same config and
    /// builds the model with its seeded initial weights.
    fn build(run: &Resolved, opts: &RunOptions, mut folder: Folder) -> Result<Setup> {
        let cfg = &run.config;
        if let Some(t) = cfg.run.threads {
            tch::set_num_threads(t);
        }
        let device = pick_device_for(cfg.run.device, opts.launch.as_ref().map_or(0, |l| l.local_rank))?;
        if let (Some(g), Device::Cuda(d)) = (&mut folder.group, device) {
            // NCCL for CUDA tensors unless the user asks for Gloo.
            if std::env::var("MDM_DIST_BACKEND").map_or(true, |b| b != "gloo") {
                g.enable_nccl(d)?;
            }
        }
        if let Some(g) = &folder.group {
            g.check_same(config_hash(&run.to_toml()), "the resolved config (rerun every rank with the same config file)")?;
        }
        tch::manual_seed(step_seed(cfg.run.seed, u64::MAX, 0));
        let vs = VarStore::new(device);
        let model = MdmUNet::new(&vs.root(), &run.model)?;
        model.apply_freeze(&vs);
        let diffusion = NestedDiffusion::for_model(&model, &run.model.diffusion(), device)?;
        let global_batch = cfg.data.batch_size * folder.world as u64;
        let config_toml = config_toml(run, folder.world, global_batch);
        Ok(Setup { folder, device, vs, model, diffusion, global_batch, config_toml })
    }

    /// The optimizer over the model's current weights.
    fn optimizer(&self, run: &Resolved) -> Result<FlatOptimizer> {
        let working = (run.config.run.precision == Precision::Bf16).then_some(Kind::BFloat16);
        FlatOptimizer::new(&self.vs, &run.config.optim, working)
    }

    /// Grows the weights from the lower stage (when configured) before the optimizer copies
    /// them; rank 0 writes config.toml and empties the logs.
    fn start_fresh(&self, run: &Resolved) -> Result<Start> {
        if let Some(p) = &run.config.progressive {
            grow(&self.vs, &self.model, p, self.folder.quiet)?;
        }
        let opt = self.optimizer(run)?;
        if self.folder.lead {
            let out = &run.config.run.out;
            mdm_shards::durable::write_atomic(&out.join("config.toml"), self.config_toml.as_bytes())?;
            Logger::truncate_after(out, 0)?;
        }
        Ok(Start { opt, loader_state: None, samples: 0 })
    }

    /// Restores checkpoint `dir` into a new optimizer after checking it belongs to this run;
    /// rank 0 cuts the logs back to its step.
    fn resume_from(&self, run: &Resolved, dir: &std::path::Path) -> Result<Start> {
        let mut opt = self.optimizer(run)?;
        let st = checkpoint::read_state(dir)?;
        check_same_run(dir, run, st.global_batch, self.global_batch)?;
        checkpoint::restore(dir, &self.vs, &mut opt, &st)?;
        if self.folder.lead {
            Logger::truncate_after(&run.config.run.out, st.step)?;
        }
        if !self.folder.quiet {
            eprintln!("resuming from {} (step {})", dir.display(), st.step);
        }
        Ok(Start { opt, loader_state: Some(st.loader), samples: st.samples })
    }
}

/// One micro-batch's [`Denoiser::loss`] (the model computes in its own kind: bf16 for bf16
/// runs), backpropagated as the batch mean. Returns the loss and its per-level parts. For video
/// (`frames` > 1) the groups hold clips' frames: one t per clip, its own noise per frame, the
/// loss averaged over frames.
pub fn forward_backward(denoiser: &Denoiser, batch: &TrainBatch, draws: &Draws, opts: &LossOptions) -> Result<(f64, Vec<f64>)> {
    let terms = denoiser.loss(batch, draws, opts)?;
    let l = terms.total.mean(Kind::Float);
    l.backward();
    // One device-to-host read for the total and every level (one sync, not one per value).
    let mut parts = vec![l.detach()];
    parts.extend(terms.per_level.iter().map(|t| t.detach().mean(Kind::Float)));
    let values = Vec::<f64>::try_from(Tensor::stack(&parts, 0).to_kind(Kind::Double))?;
    Ok((values[0], values[1..].to_vec()))
}

/// Builds the loader for a run (resumed from `state` when given).
pub fn build_loader(run: &Resolved, state: Option<mdm_loader::LoaderState>) -> Result<Loader> {
    build_loader_for(run, state, 0, 1)
}

/// [`build_loader`] for rank `rank` of `world`: its slice of every global step.
pub fn build_loader_for(run: &Resolved, state: Option<mdm_loader::LoaderState>, rank: u64, world: u64) -> Result<Loader> {
    let d = &run.config.data;
    let mut b = LoaderBuilder::new();
    for (i, s) in d.shards.iter().enumerate() {
        b.source(s.clone(), d.weights.as_ref().map_or(1.0, |w| w[i]));
    }
    b.batch_size(d.batch_size)
        .mixed_ratio(run.ratio.clone())
        .seed(run.config.run.seed)
        .rank(rank, world)
        .prefetch(d.prefetch)
        .random_flip(d.random_flip)
        .captions(false)
        .text(run.cond == run_config::CondKind::Text)
        .video_frames(run.frames.max(1) as usize)
        .resume(state);
    if let Some(w) = d.workers {
        b.workers(w);
    }
    Ok(b.build()?)
}

/// A hash of the resolved config, the same in every process (ranks compare it).
fn config_hash(toml: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    toml.hash(&mut h);
    h.finish()
}

/// A resume must continue the same run: only run length, logging and device may change, and
/// the per-rank batch size when the ranks changed but the global batch did not
/// (`saved_global`: the checkpoint's, 0 when unknown).
fn check_same_run(dir: &std::path::Path, run: &Resolved, saved_global: u64, global: u64) -> Result<()> {
    let p = dir.join("config.toml");
    let saved = run_config::TrainConfig::load(&p)?.config;
    if saved_global > 0 && saved_global != global {
        return Err(Error::Run {
            path: dir.join("state.json"),
            msg: format!(
                "the checkpoint was trained with a global batch of {saved_global} samples per loader step, this launch has {global} (ranks x data.batch_size): set data.batch_size so that they match"
            ),
        });
    }
    let batch_may_change = saved_global > 0;
    let norm = |c: &run_config::TrainConfig| {
        let mut c = c.clone();
        if batch_may_change {
            c.data.batch_size = 0;
        }
        c.run.steps = 0;
        c.run.log_every = 1;
        c.run.checkpoint_every = 1;
        c.run.keep_checkpoints = 1;
        c.run.threads = None;
        c.run.device = DeviceChoice::Auto;
        c.sample = Default::default();
        toml::to_string(&c).unwrap_or_default()
    };
    if norm(&saved) != norm(&run.config) {
        return Err(Error::Run {
            path: p,
            msg: "the config differs from the checkpoint's in more than run.steps/logging/device: resume the same run, or start a new run.out".into(),
        });
    }
    Ok(())
}

/// Initialises the inner levels from a lower-resolution stage's checkpoint.
fn grow(vs: &VarStore, model: &MdmUNet, p: &run_config::ProgressiveConfig, quiet: bool) -> Result<()> {
    let dir = checkpoint::resolve(&p.grow_from)?;
    let lower = run_config::TrainConfig::load(&dir.join("config.toml"))?;
    let video_from_image = model.config().is_video() && !lower.model.is_video();
    let added = model
        .num_levels()
        .checked_sub(lower.sides.len())
        .filter(|a| *a > 0 || video_from_image)
        .ok_or_else(|| Error::Run {
            path: dir.clone(),
            msg: format!(
                "a stage with {} levels cannot grow into one with {} (an image stage may also initialise a video model of as many levels)",
                lower.sides.len(),
                model.num_levels()
            ),
        })?;
    if lower.model.is_video() && !model.config().is_video() {
        return Err(Error::Run { path: dir.clone(), msg: "a video stage cannot initialise an image model".into() });
    }
    let weights = checkpoint::weights_file(&dir, p.use_ema);
    let report = if video_from_image {
        crate::growth::inflate_from(vs, &weights, added)?
    } else {
        crate::growth::grow_from(vs, &weights, added)?
    };
    if !quiet {
        eprintln!(
            "grown from {}: {} tensors loaded under {:?}, {} fresh ({} of them zeroed)",
            weights.display(),
            report.loaded.len(),
            report.prefix,
            report.fresh.len(),
            report.zeroed.len()
        );
    }
    Ok(())
}

/// `mdm train`: loads the config, trains, returns how the run ended.
pub fn train_from_file(config: &std::path::Path, opts: &RunOptions) -> Result<Outcome> {
    let run = run_config::TrainConfig::load(config)?;
    let mut t = Trainer::new(run, opts)?;
    t.train(opts)
}
