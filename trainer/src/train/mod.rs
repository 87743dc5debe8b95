//! Training runs: `mdm train --config FILE [--resume]`.
//!
//! - [`config`]: the run's TOML, validated once and saved resolved;
//! - [`batch`]: loader batches as tensors, classifier-free-guidance dropout;
//! - [`optim`]: AdamW, clipping and EMA on one flat buffer (fp32 master for bf16 runs);
//! - [`checkpoint`]: atomic checkpoint folders, keep-last-K, exact resume;
//! - [`log`]: progress line, `losses.jsonl`, TensorBoard.
//!
//! Every micro-batch reseeds libtorch from (seed, step, micro), so the noise, times and
//! dropout of a step do not depend on what ran before: with the loader's cursor, the weights,
//! the EMA and the moments, a resumed run repeats the uninterrupted run's losses exactly
//! (on CPU; CUDA kernels may not be bitwise deterministic).

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod log;
pub mod optim;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mdm_loader::{Loader, LoaderBuilder};
use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::diffusion::{NestedDiffusion, SampleOptions};
use crate::error::{Error, Result};
use crate::model::{MdmUNet, Micros};
use crate::sample::{grid, png_bytes, sample_levels};
use config::{DeviceChoice, Precision, Resolved};
use log::{Logger, StepLog};
use optim::FlatOptimizer;

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
}

/// A seed for one micro-batch: splitmix64 of (seed, step, micro).
pub fn step_seed(seed: u64, step: u64, micro: u64) -> i64 {
    let mut z = seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}

/// The device a config asks for.
pub fn pick_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda if !tch::Cuda::is_available() => {
            Err(Error::input("run.device = \"cuda\" but libtorch sees no CUDA device"))
        }
        DeviceChoice::Cuda => Ok(Device::Cuda(0)),
        DeviceChoice::Auto => Ok(Device::cuda_if_available()),
    }
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
    logger: Logger,
    samples: u64,
    stop: Arc<AtomicBool>,
    config_toml: String,
    /// Text runs: the T5 states of the first samples this process trained on, which the
    /// TensorBoard sample grids use as their prompts.
    sample_text: Option<crate::model::Conditioning>,
}

impl Trainer {
    /// Builds everything for `run`: a fresh start (grown from a lower stage if the config says
    /// so) or, with `opts.resume`, the newest checkpoint of the run folder.
    pub fn new(run: Resolved, opts: &RunOptions) -> Result<Self> {
        let cfg = &run.config;
        let out = cfg.run.out.clone();
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(&out).map_err(io(&out))?;
        checkpoint::clean_partial(&out)?;
        let existing = checkpoint::list(&out)?;
        if !opts.resume && !existing.is_empty() {
            return Err(Error::Input {
                path: Some(out.clone()),
                msg: "the run folder has checkpoints: pass --resume to continue, or choose another run.out".into(),
            });
        }
        if let Some(t) = cfg.run.threads {
            tch::set_num_threads(t);
        }
        let device = pick_device(cfg.run.device)?;
        let config_toml = run.to_toml();
        tch::manual_seed(step_seed(cfg.run.seed, u64::MAX, 0));
        let vs = VarStore::new(device);
        let model = MdmUNet::new(&vs.root(), &run.model)?;
        model.apply_freeze(&vs);
        let diffusion = NestedDiffusion::for_model(&model, &run.model.diffusion(), device)?;
        let resume_from = if opts.resume { existing.last().map(|(_, p)| p.clone()) } else { None };
        if resume_from.is_none() {
            if let Some(p) = &cfg.progressive {
                grow(&vs, &model, p, opts.quiet)?;
            }
        }
        let working = (cfg.run.precision == Precision::Bf16).then_some(Kind::BFloat16);
        let mut opt = FlatOptimizer::new(&vs, &cfg.optim, working)?;
        let mut loader_state = None;
        let mut samples = 0;
        match &resume_from {
            Some(dir) => {
                check_same_run(dir, &run)?;
                let st = checkpoint::read_state(dir)?;
                checkpoint::restore(dir, &vs, &mut opt, &st)?;
                loader_state = Some(st.loader);
                samples = st.samples;
                Logger::truncate_after(&out, st.step)?;
                if !opts.quiet {
                    eprintln!("resuming from {} (step {})", dir.display(), st.step);
                }
            }
            None => {
                std::fs::write(out.join("config.toml"), &config_toml).map_err(io(&out.join("config.toml")))?;
                Logger::truncate_after(&out, 0)?;
            }
        }
        let loader = build_loader(&run, loader_state)?;
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // A second signal while the checkpoint is being written exits at once.
            signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))
                .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&stop)))
                .map_err(|source| Error::Io { path: "<signal handler>".into(), source })?;
        }
        let logger = Logger::open(&out, opts.quiet, run.frames > 1)?;
        if !opts.quiet {
            eprintln!(
                "model: {} levels {:?}, {} trainable parameters ({} tensors); device {device:?}, {:?}; {} samples per epoch",
                run.sides.len(),
                run.sides,
                opt.numel(),
                opt.slots.len(),
                cfg.run.precision,
                loader.epoch_len()
            );
        }
        Ok(Trainer { run, vs, model, diffusion, opt, loader, device, logger, samples, stop, config_toml, sample_text: None })
    }

    /// Trains up to `run.steps` (or until SIGINT/SIGTERM, or `stop_after` steps); writes
    /// checkpoints on the way and at the end. A non-finite loss or gradient stops the run with
    /// an error before the weights change, leaving the last checkpoint as it was.
    pub fn train(&mut self, opts: &RunOptions) -> Result<Outcome> {
        let total = self.run.config.run.steps;
        let started_at = self.opt.step;
        let (log_every, ckpt_every) = (self.run.config.run.log_every, self.run.config.run.checkpoint_every);
        let mut window = (Instant::now(), 0u64, self.loader.stats().consumer_wait);
        let mut last_ckpt = None;
        while self.opt.step < total {
            let log = self.step()?;
            self.logger.step(&log)?;
            let step = self.opt.step;
            if step.is_multiple_of(log_every) || step == total {
                let secs = window.0.elapsed().as_secs_f64().max(1e-9);
                let wait = self.loader.stats().consumer_wait;
                let wait_frac = (wait - window.2).as_secs_f64() / secs;
                let img_s = (log.samples - window.1.min(log.samples)) as f64 / secs;
                self.logger.report(&log, total, img_s, wait_frac)?;
                window = (Instant::now(), log.samples, wait);
            }
            let every = self.run.config.sample.every;
            if every > 0 && step.is_multiple_of(every) {
                self.log_samples()?;
            }
            let interrupted = self.stop.load(Ordering::Relaxed);
            let stopping = opts.stop_after.is_some_and(|n| step - started_at >= n);
            if step.is_multiple_of(ckpt_every) || step == total || interrupted || stopping {
                last_ckpt = Some(self.save()?);
            }
            if interrupted || stopping {
                let checkpoint = last_ckpt.expect("saved above");
                if interrupted && !opts.quiet {
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

    /// One optimizer step over `grad_accum` micro-batches.
    fn step(&mut self) -> Result<StepLog> {
        let cfg = &self.run.config;
        let step = self.opt.step;
        let accum = cfg.data.grad_accum;
        let levels = self.model.num_levels();
        self.opt.zero_grad();
        let (mut loss, mut per_level) = (0.0, vec![0.0; levels]);
        for micro in 0..accum {
            let batch = self
                .loader
                .next()
                .ok_or_else(|| Error::input("the loader stopped"))?
                .map_err(|e| Error::input(format!("loader: {e}")))?;
            tch::manual_seed(step_seed(cfg.run.seed, step, micro));
            let tb = batch::to_tensors(&batch, &self.run.sides, self.run.cond, self.run.frames, self.device)?;
            self.samples += tb.len() as u64;
            if self.sample_text.is_none() && matches!(tb.cond, crate::model::Conditioning::Text { .. }) {
                self.sample_text = Some(tb.cond.narrow(self.run.config.sample.count.min(tb.len() as i64)));
            }
            let cond = batch::cfg_dropout(tb.cond, cfg.data.cfg_dropout, self.model.null_class())?;
            let (l, levels) = forward_backward(&self.model, &self.diffusion, &tb.groups, &cond, tb.frames)?;
            loss += l;
            for (acc, t) in per_level.iter_mut().zip(levels) {
                *acc += t;
            }
        }
        let n = accum as f64;
        loss /= n;
        per_level.iter_mut().for_each(|x| *x /= n);
        let stepped = if loss.is_finite() { self.opt.step(n) } else { Err(f64::NAN) };
        let st = match stepped {
            Ok(st) => st,
            Err(grad_norm) => {
                return Err(Error::NonFinite {
                    step: step + 1,
                    loss,
                    grad_norm,
                    checkpoint: checkpoint::list(&cfg.run.out)?.pop().map(|(_, p)| p),
                })
            }
        };
        Ok(StepLog {
            step: self.opt.step,
            loss,
            level_losses: per_level,
            lr: st.lr,
            grad_norm: st.grad_norm,
            samples: self.samples,
        })
    }

    /// Writes a checkpoint of the current step.
    pub fn save(&mut self) -> Result<PathBuf> {
        let cfg = &self.run.config;
        let state = checkpoint::new_state(
            self.opt.step,
            cfg.run.seed,
            self.samples,
            self.loader.state().clone(),
            self.opt.ema.is_some(),
        );
        checkpoint::save(&cfg.run.out, &self.vs, &self.opt, &state, &self.config_toml, cfg.run.keep_checkpoints)
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
            ddim_eta: Some(0.0),
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
        self.logger.image(self.opt.step, "samples", w, h, png_bytes(w, h, rgb)?)
    }

    /// The condition of the TensorBoard samples and their count.
    fn sample_condition(&self, n: i64) -> Result<(crate::model::Conditioning, i64)> {
        use crate::model::Conditioning;
        if let Some(Conditioning::Text { tokens, mask }) = &self.sample_text {
            let t = Conditioning::Text { tokens: tokens.shallow_clone(), mask: mask.shallow_clone() };
            return Ok((t, tokens.size()[0]));
        }
        let cond = match self.run.cond {
            config::CondKind::Class => {
                let classes = self.model.null_class().unwrap_or(1);
                Conditioning::Class(Tensor::arange(n, (Kind::Int64, self.device)).remainder(classes))
            }
            config::CondKind::None => Conditioning::None,
            config::CondKind::Text => {
                let d = self.run.model.top.innermost().input_cond_dim;
                batch::null_condition(
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

/// One micro-batch: draws times and noise (libtorch's RNG), runs the model (which computes
/// in its own kind: bf16 for bf16 runs), backpropagates the batch-mean loss. Returns the loss
/// and its per-level parts. For video (`frames` > 1) the groups hold clips' frames: one t
/// per clip, its own noise per frame, the loss averaged over frames.
pub fn forward_backward(
    model: &MdmUNet,
    diffusion: &NestedDiffusion,
    groups: &[Tensor],
    cond: &crate::model::Conditioning,
    frames: i64,
) -> Result<(f64, Vec<f64>)> {
    let rows = groups.iter().map(|g| g.size()[0]).sum::<i64>();
    let device = groups[0].device();
    let clip_time = Tensor::randint(diffusion.schedule.steps, [rows / frames], (Kind::Int64, device));
    let time = if frames > 1 { clip_time.repeat_interleave_self_int(frames, Some(0), None) } else { clip_time.shallow_clone() };
    let inputs = diffusion.inputs_grouped(groups, &time)?;
    let preds = model.forward_frames(&diffusion.model_inputs(&inputs), &clip_time, cond, &Micros::new(), true, frames)?;
    let terms = diffusion.loss(&inputs, &preds)?;
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
    let d = &run.config.data;
    let mut b = LoaderBuilder::new();
    for (i, s) in d.shards.iter().enumerate() {
        b.source(s.clone(), d.weights.as_ref().map_or(1.0, |w| w[i]));
    }
    b.batch_size(d.batch_size)
        .mixed_ratio(run.ratio.clone())
        .seed(run.config.run.seed)
        .rank(0, 1)
        .prefetch(d.prefetch)
        .random_flip(d.random_flip)
        .captions(false)
        .text(run.cond == config::CondKind::Text)
        .video_frames(run.frames.max(1) as usize)
        .resume(state);
    if let Some(w) = d.workers {
        b.workers(w);
    }
    b.build().map_err(|e| Error::input(format!("loader: {e}")))
}

/// A resume must continue the same run: only run length, logging and device may change.
fn check_same_run(dir: &std::path::Path, run: &Resolved) -> Result<()> {
    let p = dir.join("config.toml");
    let saved = config::TrainConfig::load(&p)?.config;
    let norm = |c: &config::TrainConfig| {
        let mut c = c.clone();
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
        return Err(Error::Input {
            path: Some(p),
            msg: "the config differs from the checkpoint's in more than run.steps/logging/device: resume the same run, or start a new run.out".into(),
        });
    }
    Ok(())
}

/// Initialises the inner levels from a lower-resolution stage's checkpoint.
fn grow(vs: &VarStore, model: &MdmUNet, p: &config::ProgressiveConfig, quiet: bool) -> Result<()> {
    let dir = checkpoint::resolve(&p.grow_from)?;
    let lower = config::TrainConfig::load(&dir.join("config.toml"))?;
    let video_from_image = model.config().is_video() && !lower.model.is_video();
    let added = model
        .num_levels()
        .checked_sub(lower.sides.len())
        .filter(|a| *a > 0 || video_from_image)
        .ok_or_else(|| Error::Input {
            path: Some(dir.clone()),
            msg: format!(
                "a stage with {} levels cannot grow into one with {} (an image stage may also initialise a video model of as many levels)",
                lower.sides.len(),
                model.num_levels()
            ),
        })?;
    if lower.model.is_video() && !model.config().is_video() {
        return Err(Error::Input { path: Some(dir.clone()), msg: "a video stage cannot initialise an image model".into() });
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
    let run = config::TrainConfig::load(config)?;
    let mut t = Trainer::new(run, opts)?;
    t.train(opts)
}
