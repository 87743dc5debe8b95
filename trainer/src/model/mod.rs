//! The denoising network: ml-mdm's `UNet` and `NestedUNet`, with ml-mdm's parameter names.
//!
//! [`MdmUNet`] is the whole model (any nesting depth). Its levels are [`unet::UNetLevel`]s:
//! a plain UNet is one level; a nested one holds its inner level, which computes the text
//! conditioning once and shares it with every outer level.

pub mod attention;
pub mod conditioning;
pub mod embeddings;
pub mod resnet;
pub mod unet;

use std::collections::BTreeMap;

use tch::{nn, Kind, Tensor};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
pub use conditioning::{cfg_dropout, cfg_dropout_with, null_condition, Conditioning};
pub use unet::UNetLevel;
use unet::Shared;

/// Micro-conditioning values by key (e.g. `scale`), each (B,). Missing keys use the level's
/// default.
pub type Micros = BTreeMap<String, Tensor>;

/// Intermediate tensors of one forward pass, keyed like the reference fixtures' `debug.*`
/// (module path with ml-mdm's level prefix, e.g. `inner_unet.down_blocks.0`).
#[derive(Debug, Default)]
pub struct Trace {
    pub(crate) on: bool,
    pub tensors: BTreeMap<String, Tensor>,
}

impl Trace {
    /// Records nothing (the usual forward pass).
    pub fn off() -> Self {
        Trace::default()
    }

    /// Records every tensor it is given.
    pub fn recording() -> Self {
        Trace { on: true, tensors: BTreeMap::new() }
    }

    pub(crate) fn put(&mut self, prefix: &str, name: &str, t: &Tensor) {
        if self.on {
            self.tensors
                .insert(format!("{prefix}{name}"), t.detach().copy());
        }
    }
}

/// The inputs of one forward pass.
pub struct ModelInput<'a> {
    /// One tensor per level, outermost (highest resolution) first; batch sizes may shrink
    /// outwards (ml-mdm's mixed-resolution batches: level i sees the first `x_t[i].size(0)`
    /// samples). For video, a level's clips with their frames in the batch dimension
    /// ((B_i·frames), C, S, S), a clip's frames consecutive.
    pub x_t: &'a [Tensor],
    /// (B,) integer steps, per sample (clip).
    pub times: &'a Tensor,
    /// Per sample (clip).
    pub cond: &'a Conditioning,
    /// Per sample (clip); `None` = every level's defaults.
    pub micros: Option<&'a Micros>,
    /// Frames per clip (1 for images; a video model takes both).
    pub frames: i64,
}

impl<'a> ModelInput<'a> {
    /// Images, default micro-conditioning.
    pub fn new(x_t: &'a [Tensor], times: &'a Tensor, cond: &'a Conditioning) -> Self {
        ModelInput { x_t, times, cond, micros: None, frames: 1 }
    }

    pub fn with_micros(self, micros: &'a Micros) -> Self {
        ModelInput { micros: Some(micros), ..self }
    }

    /// Clips of `frames` frames.
    pub fn with_frames(self, frames: i64) -> Self {
        ModelInput { frames, ..self }
    }
}

/// The state a block needs besides its input.
pub struct Ctx<'a> {
    pub temb: &'a Tensor,
    pub cond: Option<&'a Tensor>,
    pub cond_mask: Option<&'a Tensor>,
    pub train: bool,
    /// Frames per clip (video models; 1 for images). Frames of a clip are consecutive rows.
    pub frames: i64,
}

pub(crate) fn group_norm(p: &nn::Path, groups: i64, channels: i64) -> nn::GroupNorm {
    nn::group_norm(p, groups, channels, Default::default())
}

/// How the layers that PyTorch initialises randomly are built. Layers ml-mdm zero-initialises
/// are zero either way; norms start at (1, 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Init {
    /// PyTorch's defaults (Kaiming-uniform linears and convs, normal embeddings).
    #[default]
    Random,
    /// Zeros everywhere: building a 480M model costs a memset, not minutes of random
    /// numbers (for [`parameter_shapes`], or before loading every weight).
    Zeros,
}

impl Init {
    /// A linear layer with bias.
    pub(crate) fn linear(self) -> nn::LinearConfig {
        match self {
            Init::Random => Default::default(),
            Init::Zeros => nn::LinearConfig {
                ws_init: nn::Init::Const(0.0),
                bs_init: Some(nn::Init::Const(0.0)),
                bias: true,
            },
        }
    }

    /// A k×k conv with the given padding and stride.
    pub(crate) fn conv(self, padding: i64, stride: i64) -> nn::ConvConfig {
        let c = nn::ConvConfig { padding, stride, ..Default::default() };
        match self {
            Init::Random => c,
            Init::Zeros => nn::ConvConfig { ws_init: nn::Init::Const(0.0), bs_init: nn::Init::Const(0.0), ..c },
        }
    }

    /// An embedding table.
    pub(crate) fn embedding(self) -> nn::EmbeddingConfig {
        match self {
            Init::Random => Default::default(),
            Init::Zeros => nn::EmbeddingConfig { ws_init: nn::Init::Const(0.0), ..Default::default() },
        }
    }
}

/// 1×1 conv.
pub(crate) fn conv1x1(p: &nn::Path, cin: i64, cout: i64, init: Init) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, 1, init.conv(0, 1))
}

/// 3×3 conv, padding 1 (pass [`Init::Zeros`] for the layers ml-mdm zero-initialises).
pub(crate) fn conv3(p: &nn::Path, cin: i64, cout: i64, stride: i64, init: Init) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, 3, init.conv(1, stride))
}

/// The parameter table of the model a config builds: (name, shape, numel), sorted by name.
/// The model is built with [`Init::Zeros`] (fast) and dropped.
pub fn parameter_shapes(cfg: &ModelConfig) -> Result<Vec<(String, Vec<i64>, i64)>> {
    let _g = tch::no_grad_guard();
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let _model = MdmUNet::with_init(&vs.root(), cfg, Init::Zeros)?;
    Ok(crate::weights::parameter_table(&vs))
}

/// The whole denoising model: a UNet or a NestedUNet of any depth.
#[derive(Debug)]
pub struct MdmUNet {
    cfg: ModelConfig,
    top: UNetLevel,
}

impl MdmUNet {
    /// Builds the model under `p` (pass `vs.root()` so that names equal ml-mdm's keys) with
    /// PyTorch's random initialisation.
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Result<Self> {
        Self::with_init(p, cfg, Init::Random)
    }

    /// [`MdmUNet::new`] with the given initialisation.
    pub fn with_init(p: &nn::Path, cfg: &ModelConfig, init: Init) -> Result<Self> {
        let top = UNetLevel::new(p, &cfg.top, cfg.input_channels, cfg.output_channels, cfg.num_classes, init);
        Ok(MdmUNet { cfg: cfg.clone(), top })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Number of resolution levels (1 for a UNet).
    pub fn num_levels(&self) -> usize {
        self.cfg.top.depth()
    }

    /// Per-level scale relative to the innermost level, outermost first (`nest_ratio + [1]`).
    pub fn scales(&self) -> Vec<i64> {
        self.cfg.top.scales()
    }

    /// Applies `freeze_inner_unet` of the config: the variables of every frozen level's
    /// inner levels stop requiring gradients. Returns how many tensors were frozen.
    pub fn apply_freeze(&self, vs: &nn::VarStore) -> usize {
        let mut prefixes = vec![];
        let mut prefix = String::new();
        let mut level = Some(&self.cfg.top);
        while let Some(l) = level {
            let Some(n) = &l.nested else { break };
            prefix.push_str("inner_unet.");
            if n.freeze_inner {
                prefixes.push(prefix.clone());
            }
            level = Some(n.inner.as_ref());
        }
        let mut count = 0;
        for (k, v) in vs.variables() {
            if prefixes.iter().any(|p| k.starts_with(p.as_str())) {
                let _ = v.set_requires_grad(false);
                count += 1;
            }
        }
        count
    }

    /// The unconditional class index (class-conditional models).
    pub fn null_class(&self) -> Option<i64> {
        self.cfg.num_classes
    }

    /// Runs the model and returns the prediction of every level, outermost first (float
    /// predictions from a bf16 model too). With `trace` recording, intermediate tensors are
    /// kept in it, keyed like the reference fixtures' `debug.*`.
    pub fn forward(&self, input: &ModelInput, train: bool, trace: &mut Trace) -> Result<Vec<Tensor>> {
        self.check_inputs(input)?;
        let no_micros = Micros::new();
        let micros = input.micros.unwrap_or(&no_micros);
        let frames = input.frames;
        // A model stored in another kind than the inputs (bf16 training) computes in its own
        // kind and returns float predictions.
        let kind = self.top.param_kind();
        if input.x_t.iter().any(|x| x.kind() != kind) {
            let x: Vec<Tensor> = input.x_t.iter().map(|x| x.to_kind(kind)).collect();
            let cond = match input.cond {
                Conditioning::Text { tokens, mask } => {
                    Conditioning::Text { tokens: tokens.to_kind(kind), mask: mask.to_kind(kind) }
                }
                Conditioning::Class(c) => Conditioning::Class(c.shallow_clone()),
                Conditioning::None => Conditioning::None,
            };
            let cast = ModelInput { x_t: &x, cond: &cond, ..*input };
            let outs = self.forward(&cast, train, trace)?;
            return Ok(outs.iter().map(|o| o.to_kind(input.x_t[0].kind())).collect());
        }
        let (cond_emb, tokens, mask) = self.top.conditioning(input.cond, trace, "")?;
        // Per clip → per frame.
        let per_frame = |t: Option<Tensor>| t.map(|t| if frames > 1 { t.repeat_interleave_self_int(frames, Some(0), None) } else { t });
        let (cond_emb, tokens, mask) = (per_frame(cond_emb), per_frame(tokens), per_frame(mask));
        let shared = Shared {
            times: input.times,
            cond_emb: cond_emb.as_ref(),
            tokens: tokens.as_ref(),
            mask: mask.as_ref(),
            micros,
            train,
            frames,
        };
        Ok(self.top.forward_level(input.x_t, None, &shared, trace, "").0)
    }

    fn check_inputs(&self, input: &ModelInput) -> Result<()> {
        let ModelInput { x_t, times, cond, micros, frames } = *input;
        let levels = self.num_levels();
        if frames < 1 || (frames > 1 && !self.cfg.is_video()) {
            return Err(Error::input(format!(
                "{frames} frames per sample: only a video model (temporal_mode) takes clips"
            )));
        }
        if x_t.len() != levels {
            return Err(Error::input(format!(
                "the model has {levels} levels, got {} inputs x_t",
                x_t.len()
            )));
        }
        let scales = self.scales();
        let b = times.size();
        if b.len() != 1 {
            return Err(Error::input(format!("times must be (B,), got {b:?}")));
        }
        // Per clip (times, conditioning, micros) and per frame (x_t rows).
        let clips = b[0];
        let batch = clips * frames;
        let inner_side = x_t[levels - 1].size().get(2).copied().unwrap_or(0);
        let mut prev_b = 0;
        for (i, x) in x_t.iter().enumerate() {
            let s = x.size();
            if s.len() != 4 || s[1] != self.cfg.input_channels || s[2] != s[3] {
                return Err(Error::input(format!(
                    "x_t.{i} must be (B,{},S,S), got {s:?}",
                    self.cfg.input_channels
                )));
            }
            if !x.is_floating_point() {
                return Err(Error::input(format!(
                    "x_t.{i} must be floating point, got {:?}",
                    x.kind()
                )));
            }
            if s[0] % frames != 0 {
                return Err(Error::input(format!(
                    "x_t.{i} has {} rows, not whole clips of {frames} frames",
                    s[0]
                )));
            }
            if s[0] < prev_b || s[0] > batch {
                return Err(Error::input(format!(
                    "x_t.{i} has batch {}: batch sizes must not shrink inwards and not exceed {batch}",
                    s[0]
                )));
            }
            prev_b = s[0];
            if s[2] != inner_side * scales[i] {
                return Err(Error::input(format!(
                    "x_t.{i} has side {}, the nest ratios {scales:?} and the innermost side {inner_side} need {}",
                    s[2],
                    inner_side * scales[i]
                )));
            }
        }
        let mut spec = Some(&self.cfg.top);
        for (i, x) in x_t.iter().enumerate() {
            let Some(l) = spec else { break };
            let f = l.downsampling();
            if x.size()[2] % f != 0 {
                return Err(Error::input(format!("x_t.{i} side {} is not divisible by {f} (its downsampling)", x.size()[2])));
            }
            for (r, res) in l.resolutions.iter().enumerate() {
                let side = x.size()[2] >> r;
                if res.temporal.is_some() && side % 2 != 0 {
                    return Err(Error::input(format!(
                        "x_t.{i}: temporal attention at resolution {r} halves its side {side}, which must be even"
                    )));
                }
            }
            spec = l.inner();
        }
        if x_t[levels - 1].size()[0] != batch {
            return Err(Error::input("the innermost level must have the full batch"));
        }
        match cond {
            Conditioning::Text { tokens, mask } => {
                let ts = tokens.size();
                let Some(text) = self.cfg.top.innermost().text else {
                    return Err(Error::input("this model takes no text conditioning"));
                };
                if ts.len() != 3 || ts[0] != clips || ts[2] != text.input_dim {
                    return Err(Error::input(format!(
                        "lm_outputs must be (B={clips},T,{}), got {ts:?}",
                        text.input_dim
                    )));
                }
                if mask.size() != [ts[0], ts[1]] {
                    return Err(Error::input(format!(
                        "lm_mask must be (B,T)={:?}, got {:?}",
                        &ts[..2],
                        mask.size()
                    )));
                }
            }
            Conditioning::Class(c) => {
                if self.cfg.num_classes.is_none() {
                    return Err(Error::input("this model is not class-conditional"));
                }
                if c.size() != [clips] || c.kind() != Kind::Int64 {
                    return Err(Error::input(format!(
                        "class labels must be (B,) int64, got {:?} {:?}",
                        c.size(),
                        c.kind()
                    )));
                }
            }
            Conditioning::None => {
                if self.cfg.top.innermost().text.is_some() {
                    return Err(Error::input(
                        "this model needs conditioning (text or class)",
                    ));
                }
            }
        }
        for (k, v) in micros.into_iter().flatten() {
            if v.size() != [clips] {
                return Err(Error::input(format!(
                    "micro-conditioning {k:?} must be (B,), got {:?}",
                    v.size()
                )));
            }
        }
        Ok(())
    }
}
