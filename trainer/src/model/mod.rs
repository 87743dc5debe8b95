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
    pub(crate) fn put(&mut self, prefix: &str, name: &str, t: &Tensor) {
        if self.on {
            self.tensors
                .insert(format!("{prefix}{name}"), t.detach().copy());
        }
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

thread_local! {
    /// While set, layers that would be randomly initialised are built with zeros instead
    /// (see [`parameter_shapes`]): building a 480M model then costs a memset, not minutes of
    /// random number generation.
    static ZERO_INIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn zero_init() -> bool {
    ZERO_INIT.with(|z| z.get())
}

/// Default linear config (PyTorch-like Kaiming uniform), or zeros in [`parameter_shapes`].
pub(crate) fn lin() -> nn::LinearConfig {
    if zero_init() { zero_linear() } else { Default::default() }
}

/// 1×1 conv config.
pub(crate) fn conv1x1() -> nn::ConvConfig {
    if zero_init() {
        nn::ConvConfig { ws_init: nn::Init::Const(0.0), bs_init: nn::Init::Const(0.0), ..Default::default() }
    } else {
        Default::default()
    }
}

/// 3×3 conv, padding 1; `zero` for layers ml-mdm zero-initialises.
pub(crate) fn conv3(p: &nn::Path, cin: i64, cout: i64, stride: i64, zero: bool) -> nn::Conv2D {
    if zero || zero_init() {
        let cfg = nn::ConvConfig {
            padding: 1,
            stride,
            ws_init: nn::Init::Const(0.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        return nn::conv2d(p, cin, cout, 3, cfg);
    }
    nn::conv2d(p, cin, cout, 3, nn::ConvConfig { padding: 1, stride, ..Default::default() })
}

/// The parameter table of the model a config builds: (name, shape, numel), sorted by name.
/// The model is built with zero weights (fast) and dropped.
pub fn parameter_shapes(cfg: &ModelConfig) -> Result<Vec<(String, Vec<i64>, i64)>> {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ZERO_INIT.with(|z| z.set(false));
        }
    }
    let _g = tch::no_grad_guard();
    ZERO_INIT.with(|z| z.set(true));
    let _reset = Reset;
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let _model = MdmUNet::new(&vs.root(), cfg)?;
    Ok(crate::weights::parameter_table(&vs))
}

pub(crate) fn zero_conv(p: &nn::Path, cin: i64, cout: i64, k: i64, padding: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        padding,
        ws_init: nn::Init::Const(0.0),
        bs_init: nn::Init::Const(0.0),
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, cfg)
}

pub(crate) fn zero_linear() -> nn::LinearConfig {
    nn::LinearConfig {
        ws_init: nn::Init::Const(0.0),
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    }
}

/// The whole denoising model: a UNet or a NestedUNet of any depth.
#[derive(Debug)]
pub struct MdmUNet {
    cfg: ModelConfig,
    top: UNetLevel,
}

impl MdmUNet {
    /// Builds the model under `p` (pass `vs.root()` so that names equal ml-mdm's keys).
    pub fn new(p: &nn::Path, cfg: &ModelConfig) -> Result<Self> {
        let top = UNetLevel::new(
            p,
            &cfg.top,
            cfg.input_channels,
            cfg.output_channels,
            cfg.num_classes,
        );
        Ok(MdmUNet {
            cfg: cfg.clone(),
            top,
        })
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

    /// Runs the model. `x_t` has one tensor per level, outermost (highest resolution) first;
    /// batch sizes may shrink outwards (ml-mdm's mixed-resolution batches: level i sees the
    /// first `x_t[i].size(0)` samples). `times` (B,) are integer steps. Returns the
    /// prediction of every level, outermost first.
    pub fn forward(
        &self,
        x_t: &[Tensor],
        times: &Tensor,
        cond: &Conditioning,
        micros: &Micros,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        self.forward_frames(x_t, times, cond, micros, train, 1)
    }

    /// [`MdmUNet::forward`] for video clips of `frames` frames: `x_t[i]` holds the frames of
    /// its clips in the batch dimension ((B_i·frames), C, S, S), a clip's frames consecutive;
    /// `times`, `cond` and `micros` are per clip (B). A video model also takes `frames = 1`
    /// (still images).
    pub fn forward_frames(
        &self,
        x_t: &[Tensor],
        times: &Tensor,
        cond: &Conditioning,
        micros: &Micros,
        train: bool,
        frames: i64,
    ) -> Result<Vec<Tensor>> {
        let mut trace = Trace::default();
        self.forward_traced(x_t, times, cond, micros, train, frames, &mut trace)
    }

    /// [`MdmUNet::forward_frames`] that also records intermediate tensors when `trace.on`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_traced(
        &self,
        x_t: &[Tensor],
        times: &Tensor,
        cond: &Conditioning,
        micros: &Micros,
        train: bool,
        frames: i64,
        trace: &mut Trace,
    ) -> Result<Vec<Tensor>> {
        self.check_inputs(x_t, times, cond, micros, frames)?;
        // A model stored in another kind than the inputs (bf16 training) computes in its own
        // kind and returns float predictions.
        let kind = self.top.param_kind();
        if x_t.iter().any(|x| x.kind() != kind) {
            let x: Vec<Tensor> = x_t.iter().map(|x| x.to_kind(kind)).collect();
            let cond = match cond {
                Conditioning::Text { tokens, mask } => {
                    Conditioning::Text { tokens: tokens.to_kind(kind), mask: mask.to_kind(kind) }
                }
                Conditioning::Class(c) => Conditioning::Class(c.shallow_clone()),
                Conditioning::None => Conditioning::None,
            };
            let outs = self.forward_traced(&x, times, &cond, micros, train, frames, trace)?;
            return Ok(outs.iter().map(|o| o.to_kind(x_t[0].kind())).collect());
        }
        let (cond_emb, tokens, mask) = self.top.conditioning(cond, trace, "")?;
        // Per clip → per frame.
        let per_frame = |t: Option<Tensor>| t.map(|t| if frames > 1 { t.repeat_interleave_self_int(frames, Some(0), None) } else { t });
        let (cond_emb, tokens, mask) = (per_frame(cond_emb), per_frame(tokens), per_frame(mask));
        let (outs, _) = self.top.forward_level(
            x_t,
            None,
            times,
            cond_emb.as_ref(),
            tokens.as_ref(),
            mask.as_ref(),
            micros,
            train,
            frames,
            trace,
            "",
        );
        Ok(outs)
    }

    /// Like [`MdmUNet::forward`], recording every tensor that [`Trace`] knows.
    pub fn forward_debug(
        &self,
        x_t: &[Tensor],
        times: &Tensor,
        cond: &Conditioning,
        micros: &Micros,
    ) -> Result<(Vec<Tensor>, BTreeMap<String, Tensor>)> {
        let mut trace = Trace {
            on: true,
            ..Default::default()
        };
        let outs = self.forward_traced(x_t, times, cond, micros, false, 1, &mut trace)?;
        Ok((outs, trace.tensors))
    }

    fn check_inputs(
        &self,
        x_t: &[Tensor],
        times: &Tensor,
        cond: &Conditioning,
        micros: &Micros,
        frames: i64,
    ) -> Result<()> {
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
            let f = 1i64 << (l.resolution_channels.len() - 1);
            if x.size()[2] % f != 0 {
                return Err(Error::input(format!("x_t.{i} side {} is not divisible by {f} (its downsampling)", x.size()[2])));
            }
            for (r, &tl) in l.temporal_layers.iter().enumerate() {
                let side = x.size()[2] >> r;
                if tl > 0 && side % 2 != 0 {
                    return Err(Error::input(format!(
                        "x_t.{i}: temporal attention at resolution {r} halves its side {side}, which must be even"
                    )));
                }
            }
            spec = l.nested.as_ref().map(|n| n.inner.as_ref());
        }
        if x_t[levels - 1].size()[0] != batch {
            return Err(Error::input("the innermost level must have the full batch"));
        }
        match cond {
            Conditioning::Text { tokens, mask } => {
                let ts = tokens.size();
                let innermost = self.cfg.top.innermost();
                if innermost.input_cond_dim <= 0 {
                    return Err(Error::input("this model takes no text conditioning"));
                }
                if ts.len() != 3 || ts[0] != clips || ts[2] != innermost.input_cond_dim {
                    return Err(Error::input(format!(
                        "lm_outputs must be (B={clips},T,{}), got {ts:?}",
                        innermost.input_cond_dim
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
                if self.cfg.top.innermost().cond_dim > 0 {
                    return Err(Error::input(
                        "this model needs conditioning (text or class)",
                    ));
                }
            }
        }
        for (k, v) in micros {
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
