//! [`TrainConfig`]: one training run as a TOML file, validated once into a resolved form
//! (model inline, paths absolute) that is saved beside the run and inside every checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::config::{ConfigFile, ModelConfig};
use crate::error::{Error, Result};

/// A training run: `mdm train --config FILE`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub run: RunConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    /// A model config file (relative to this file), e.g. `models/cc12m_64x64.toml`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_file: Option<PathBuf>,
    /// ... or the model inline (the resolved config always has it inline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ConfigFile>,
    /// Progressive training: initialise from a lower-resolution stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progressive: Option<ProgressiveConfig>,
    #[serde(default)]
    pub sample: SampleConfig,
}

/// Where and how long to run.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The run folder (relative to the config file): config, checkpoints, logs.
    pub out: PathBuf,
    /// Optimizer steps to reach (a resumed run continues up to it).
    pub steps: u64,
    /// Seeds the model's initialisation, the loader order and every step's noise.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub device: DeviceChoice,
    #[serde(default)]
    pub precision: Precision,
    /// Print a progress line (and TensorBoard scalars) every N steps.
    #[serde(default = "d_log_every")]
    pub log_every: u64,
    /// Write a checkpoint every N steps (and at the end, and on SIGINT/SIGTERM).
    #[serde(default = "d_ckpt_every")]
    pub checkpoint_every: u64,
    /// Checkpoints kept (older ones are deleted once a newer one is complete).
    #[serde(default = "d_keep")]
    pub keep_checkpoints: usize,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[serde(default)]
    pub threads: Option<i32>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// Numeric precision of the forward/backward pass.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bf16 weights and activations; the optimizer keeps fp32 master weights and moments.
    Bf16,
}

/// What conditions the model.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CondKind {
    /// Precomputed T5 states from the shards (`t5_emb`).
    Text,
    /// Class labels (ImageNet); the model needs `num_classes`.
    Class,
    /// Unconditional.
    None,
}

/// The shards and how batches are made.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Shard sets (folders with `manifest.json`, relative to the config file, or `s3://` URLs).
    pub shards: Vec<String>,
    /// Mixing weights, one per set (default: equal).
    #[serde(default)]
    pub weights: Option<Vec<f64>>,
    /// Samples per micro-batch.
    pub batch_size: u64,
    /// Side of the outermost level (default: the innermost level's `scale` micro-conditioning
    /// default times the nest ratios, as in ml-mdm's configs).
    #[serde(default)]
    pub resolution: Option<u32>,
    /// Micro-batches per optimizer step.
    #[serde(default = "d_one_u64")]
    pub grad_accum: u64,
    /// Mixed-resolution batches from the loader, e.g. `"256:2,64:1"`: a sample drawn at a
    /// level's resolution trains that level and every level inside it. Default: every sample
    /// at the outermost resolution.
    #[serde(default)]
    pub mixed_ratio: Option<String>,
    /// What conditions the model (default: class for models with `num_classes`, text for
    /// models with a conditioning width, else none).
    #[serde(default)]
    pub conditioning: Option<CondKind>,
    /// Classifier-free guidance training: each sample's condition is replaced by the null
    /// condition with this probability.
    #[serde(default = "d_cfg_dropout")]
    pub cfg_dropout: f64,
    #[serde(default = "d_true")]
    pub random_flip: bool,
    /// Decode workers (default: one per core).
    #[serde(default)]
    pub workers: Option<usize>,
    #[serde(default = "d_prefetch")]
    pub prefetch: usize,
    /// Frames per clip for video models (the clip's first ones; shorter clips repeat their
    /// last). Default 16; image models take none.
    #[serde(default)]
    pub frames: Option<u64>,
}

/// AdamW with linear warmup, gradient clipping and an EMA of the weights. Missing keys take
/// the values of [`OptimConfig::default`].
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    /// Linear warmup from 0 to `lr` over this many steps.
    pub warmup_steps: u64,
    /// Clip the global gradient norm to this (0 = off).
    pub clip_grad_norm: f64,
    /// EMA decay per step (0 = no EMA).
    pub ema_decay: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 5e-5,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            clip_grad_norm: 2.0,
            ema_decay: 0.9999,
        }
    }
}

/// Grow from a lower-resolution stage (ml-mdm's progressive training, done explicitly).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProgressiveConfig {
    /// A checkpoint folder of the lower stage, or a run folder (its latest checkpoint).
    pub grow_from: PathBuf,
    /// Take the lower stage's EMA weights (default) or its raw weights.
    #[serde(default = "d_true")]
    pub use_ema: bool,
}

/// Sample grids written to TensorBoard during training. Missing keys take the values of
/// [`SampleConfig::default`].
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SampleConfig {
    /// Every N steps (0 = never).
    pub every: u64,
    pub count: i64,
    pub steps: usize,
    pub guidance: f64,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig { every: 0, count: 4, steps: 50, guidance: 1.0 }
    }
}

fn d_log_every() -> u64 {
    10
}
fn d_ckpt_every() -> u64 {
    1000
}
fn d_keep() -> usize {
    3
}
fn d_one_u64() -> u64 {
    1
}
fn d_cfg_dropout() -> f64 {
    0.1
}
fn d_true() -> bool {
    true
}
fn d_prefetch() -> usize {
    4
}

/// A validated config with the model built and everything derived.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The resolved config (model inline, paths absolute): what is saved.
    pub config: TrainConfig,
    pub model: ModelConfig,
    pub cond: CondKind,
    /// Side of each level, outermost first.
    pub sides: Vec<u32>,
    /// The loader's resolution ratio: (side, share) per level that receives samples.
    pub ratio: Vec<(u32, f64)>,
    /// Frames per sample: clip length for video models, 1 for image models.
    pub frames: i64,
    /// The model's own `diffusion_config.mixed_ratio` (ml-mdm's), as cumulative shares per
    /// level: each micro-batch, drawn at the outermost side, is split into level groups by
    /// [`crate::denoiser::Denoiser::split`]. `None` with `data.mixed_ratio` or neither.
    pub split: Option<Vec<f64>>,
}

fn bad(field: &str, msg: impl Into<String>) -> Error {
    Error::Config { path: None, field: field.into(), msg: msg.into() }
}

impl TrainConfig {
    /// Reads and validates a config file; relative paths are taken from its folder.
    pub fn load(path: &Path) -> Result<Resolved> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
        let cfg: TrainConfig = toml::from_str(&text)
            .map_err(|e| Error::ConfigParse { path: path.into(), msg: e.to_string() })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        cfg.resolve(&base).map_err(|e| e.with_path(path))
    }

    /// Validates the config and derives everything, once. Relative paths are joined to `base`.
    pub fn resolve(mut self, base: &Path) -> Result<Resolved> {
        let abs = |p: &Path| -> PathBuf {
            let j = if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
            std::path::absolute(&j).unwrap_or(j)
        };
        let file = match (self.model_file.take(), self.model.take()) {
            (Some(f), None) => {
                let f = abs(&f);
                ModelConfig::from_file(&f)?.file
            }
            (None, Some(m)) => m,
            _ => return Err(bad("model_file/model", "give exactly one of model_file = \"...\" or [model]")),
        };
        let model = ModelConfig::from_parsed(file.clone())?;
        self.model = Some(file);
        self.run.out = abs(&self.run.out);
        for s in &mut self.data.shards {
            if !s.contains("://") {
                *s = abs(Path::new(s.as_str())).display().to_string();
            }
        }
        if let Some(p) = &mut self.progressive {
            p.grow_from = abs(&p.grow_from);
        }

        let r = &self.run;
        if r.steps == 0 {
            return Err(bad("run.steps", "must be at least 1"));
        }
        if r.log_every == 0 || r.checkpoint_every == 0 || r.keep_checkpoints == 0 {
            return Err(bad("run", "log_every, checkpoint_every and keep_checkpoints must be at least 1"));
        }
        if r.threads.is_some_and(|t| t < 1) {
            return Err(bad("run.threads", "must be at least 1"));
        }
        let d = &self.data;
        if d.shards.is_empty() {
            return Err(bad("data.shards", "name at least one shard set"));
        }
        if let Some(w) = &d.weights {
            if w.len() != d.shards.len() || w.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                return Err(bad("data.weights", "one positive weight per shard set"));
            }
        }
        if d.batch_size == 0 || d.grad_accum == 0 {
            return Err(bad("data", "batch_size and grad_accum must be at least 1"));
        }
        if !(0.0..1.0).contains(&d.cfg_dropout) {
            return Err(bad("data.cfg_dropout", "must be in [0, 1)"));
        }
        let o = &self.optim;
        let pos = |x: f64| x.is_finite() && x > 0.0;
        if !pos(o.lr) || !pos(o.eps) || !(o.weight_decay >= 0.0) || !(o.clip_grad_norm >= 0.0) {
            return Err(bad("optim", "lr and eps must be > 0; weight_decay and clip_grad_norm >= 0"));
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(bad("optim.betas", "each must be in [0, 1)"));
        }
        if !(0.0..1.0).contains(&o.ema_decay) {
            return Err(bad("optim.ema_decay", "must be in [0, 1)"));
        }
        if self.sample.count < 1 || self.sample.steps < 1 || !(self.sample.guidance >= 1.0) {
            return Err(bad("sample", "count and steps must be >= 1, guidance >= 1"));
        }

        let innermost = model.top.innermost();
        let cond = match (d.conditioning, model.num_classes, innermost.text.is_some()) {
            (None, Some(_), _) => CondKind::Class,
            (None, None, true) => CondKind::Text,
            (None, None, false) => CondKind::None,
            (Some(CondKind::Class), None, _) => {
                return Err(bad("data.conditioning", "class conditioning needs a model with num_classes"))
            }
            (Some(CondKind::Text), Some(_), _) | (Some(CondKind::Text), None, false) => {
                return Err(bad("data.conditioning", "text conditioning needs a text model (conditioning_feature_dim > 0, no num_classes)"))
            }
            (Some(CondKind::None), _, true) | (Some(CondKind::None), Some(_), _) => {
                return Err(bad("data.conditioning", "this model needs conditioning"))
            }
            (Some(c), _, _) => c,
        };
        let scales = model.top.scales();
        let inner_side = match d.resolution {
            Some(r) if r > 0 && r % scales[0] as u32 == 0 => r / scales[0] as u32,
            Some(r) => return Err(bad("data.resolution", format!("{r} is not a positive multiple of the nest ratio {}", scales[0]))),
            None => side_of(&model)?,
        };
        let sides: Vec<u32> = scales.iter().map(|s| (*s as u32) * inner_side).collect();
        let ratio = match &d.mixed_ratio {
            None => vec![(sides[0], 1.0)],
            Some(s) => {
                if model.diffusion().mixed_ratio.is_some() {
                    return Err(bad(
                        "data.mixed_ratio",
                        "the model's diffusion_config.mixed_ratio is set too: use one of them",
                    ));
                }
                parse_ratio(s, &sides)?
            }
        };
        let frames = match (model.is_video(), d.frames) {
            (false, None) => 1,
            (false, Some(_)) => return Err(bad("data.frames", "only video models (temporal_mode) take clips")),
            (true, None) => 16,
            (true, Some(f)) if (2..=1024).contains(&f) => f as i64,
            (true, Some(f)) => return Err(bad("data.frames", format!("{f} is not in 2..=1024 (still images train an image model, which can then initialise a video one)"))),
        };
        if model.is_video() && model.diffusion().mixed_ratio.is_some() {
            return Err(bad(
                "model.diffusion_config.mixed_ratio",
                "video models split batches by clip: use data.mixed_ratio (the loader's) instead",
            ));
        }
        let split = model.diffusion().mixed_shares(sides.len()).map_err(|e| bad("model.diffusion_config.mixed_ratio", e.to_string()))?;
        Ok(Resolved { config: self, model, cond, sides, ratio, frames, split })
    }
}

/// The innermost side. ml-mdm's models do not store their input size; its configs give it
/// as the innermost level's `scale` micro-conditioning default (64 in every published one).
fn side_of(model: &ModelConfig) -> Result<u32> {
    let inner = model.top.innermost();
    inner
        .micros
        .iter()
        .find(|m| m.key == "scale")
        .map(|m| m.default as u32)
        .filter(|s| *s > 0)
        .ok_or_else(|| {
            bad(
                "unet_config.micro_conditioning",
                "give data.resolution, or `scale:<side>` on the innermost level as ml-mdm's configs do",
            )
        })
}

/// `"256:2,64:1"` → [(256, 2.0), (64, 1.0)], each side one of the model's level sides.
pub fn parse_ratio(s: &str, sides: &[u32]) -> Result<Vec<(u32, f64)>> {
    let mut out = vec![];
    for part in s.split(',') {
        let (r, w) = part
            .split_once(':')
            .ok_or_else(|| bad("data.mixed_ratio", format!("{part:?} is not SIDE:SHARE")))?;
        let r: u32 = r.trim().parse().map_err(|_| bad("data.mixed_ratio", format!("{r:?} is not a side")))?;
        let w: f64 = w.trim().parse().map_err(|_| bad("data.mixed_ratio", format!("{w:?} is not a share")))?;
        if !sides.contains(&r) {
            return Err(bad("data.mixed_ratio", format!("side {r} is not a level of the model ({sides:?})")));
        }
        if !(w.is_finite() && w > 0.0) || out.iter().any(|(x, _)| *x == r) {
            return Err(bad("data.mixed_ratio", format!("{part:?}: shares must be > 0, sides distinct")));
        }
        out.push((r, w));
    }
    if out.is_empty() {
        return Err(bad("data.mixed_ratio", "is empty"));
    }
    Ok(out)
}

impl Resolved {
    /// The resolved config as TOML (what is saved).
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.config).expect("a resolved config always serialises")
    }

    /// Level whose side is `side` (outermost = 0).
    pub fn level_of(&self, side: u32) -> Option<usize> {
        self.sides.iter().position(|s| *s == side)
    }
}

/// The device a config asks for (`cuda:0` for CUDA).
pub fn pick_device(choice: DeviceChoice) -> Result<Device> {
    pick_device_for(choice, 0)
}

/// [`pick_device`] for the rank with `local_rank` on its host (`cuda:LOCAL_RANK`).
pub fn pick_device_for(choice: DeviceChoice, local_rank: usize) -> Result<Device> {
    let cuda = || {
        let n = tch::Cuda::device_count() as usize;
        if local_rank >= n {
            return Err(Error::Device(format!("local rank {local_rank} needs cuda:{local_rank}, but libtorch sees {n} CUDA devices")));
        }
        Ok(Device::Cuda(local_rank))
    };
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda if !tch::Cuda::is_available() => {
            Err(Error::Device("run.device = \"cuda\" but libtorch sees no CUDA device".into()))
        }
        DeviceChoice::Cuda => cuda(),
        DeviceChoice::Auto if tch::Cuda::is_available() => cuda(),
        DeviceChoice::Auto => Ok(Device::Cpu),
    }
}
