//! The validated model: one [`LevelSpec`] per nesting level, typed per resolution (no `-1`
//! sentinels), and the block plan ([`LevelSpec::blocks`]) that the model and the FLOP count
//! both build from.

use super::format::{ConfigFile, ModelKind};
use super::DiffusionConfig;

/// One micro-conditioning input: its key and default value.
#[derive(Debug, Clone, PartialEq)]
pub struct Micro {
    pub key: String,
    pub default: f64,
}

/// 2D attention after each ResNet of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attention {
    pub layers: usize,
    /// Text width of the cross-attention (`None`: self-attention only).
    pub cross: Option<i64>,
    /// The 4C FFN after each layer.
    pub ffn: bool,
}

/// Temporal attention blocks after each ResNet of a block (video levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temporal {
    pub layers: usize,
    /// Rotary position encoding of the frame index.
    pub pos_emb: bool,
}

/// One resolution of a level: resolution `r` runs at the level's side `>> r`.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub channels: i64,
    pub resnets: usize,
    /// Where `attention_levels` lists this resolution.
    pub attention: Option<Attention>,
    /// Where `num_temporal_attention_layers` asks for it (video levels).
    pub temporal: Option<Temporal>,
}

/// A level's text conditioning (levels of models without text or classes have none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Text {
    /// Width as it enters the level (ml-mdm's `input_conditioning_feature_dim`).
    pub input_dim: i64,
    /// Width after `lm_proj`: what cross-attention reads.
    pub dim: i64,
    /// The level has `cond_emb` (the innermost level computes the conditioning).
    pub cond_emb: bool,
    pub lm_proj: bool,
    pub lm_head_layers: usize,
    /// Cross-attention honours the padding mask.
    pub masked: bool,
}

/// Everything needed to build one level, derived once from [`super::UNetConfig`].
#[derive(Debug, Clone)]
pub struct LevelSpec {
    /// Highest resolution first.
    pub resolutions: Vec<Resolution>,
    /// A video level: inputs are frames in the batch dimension, `frames` per clip.
    pub temporal: bool,
    pub temporal_dim: i64,
    pub text: Option<Text>,
    /// The mid blocks and the attention of the first (`None`: skipped).
    pub mid: Option<Attention>,
    pub micros: Vec<Micro>,
    pub groups: i64,
    pub dropout: f64,
    /// This level sits inside another one (takes outer features, returns features).
    pub nesting: bool,
    pub nested: Option<NestedSpec>,
}

/// The nesting part of a level: its inner level and adapters.
#[derive(Debug, Clone)]
pub struct NestedSpec {
    pub inner: Box<LevelSpec>,
    pub in_adapter: bool,
    pub skip_normalization: bool,
    pub freeze_inner: bool,
}

/// What a block does after its ResNets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    None,
    /// 3×3 conv, stride 2.
    Down,
    /// Nearest ×2, then a 3×3 conv.
    Up,
}

/// One `ResNetBlock`: its ResNets, what follows each, then the resample.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    /// The resolution it runs at.
    pub resolution: usize,
    /// (in, out) channels of each ResNet.
    pub channels: Vec<(i64, i64)>,
    pub attention: Option<Attention>,
    pub temporal: Option<Temporal>,
    pub resample: Resample,
}

/// A level's blocks in build (and run) order.
#[derive(Debug, Clone)]
pub struct Blocks {
    pub down: Vec<BlockSpec>,
    pub mid: Option<[BlockSpec; 2]>,
    /// From the lowest resolution up; each ResNet eats one skip.
    pub up: Vec<BlockSpec>,
    /// Channels into `norm_out`.
    pub out_channels: i64,
}

impl LevelSpec {
    /// Number of levels from this one inwards.
    pub fn depth(&self) -> usize {
        1 + self.nested.as_ref().map_or(0, |n| n.inner.depth())
    }

    /// The innermost level (which computes the text conditioning).
    pub fn innermost(&self) -> &LevelSpec {
        match &self.nested {
            Some(n) => n.inner.innermost(),
            None => self,
        }
    }

    /// The inner level, when nested.
    pub fn inner(&self) -> Option<&LevelSpec> {
        self.nested.as_ref().map(|n| n.inner.as_ref())
    }

    /// Channels of each resolution, highest first.
    pub fn channels(&self) -> Vec<i64> {
        self.resolutions.iter().map(|r| r.channels).collect()
    }

    /// How much the level downsamples: 2^(resolutions − 1).
    pub fn downsampling(&self) -> i64 {
        1 << (self.resolutions.len() - 1)
    }

    /// ml-mdm's `nest_ratio`: downsampling factor of each inner level w.r.t. this one.
    pub fn nest_ratio(&self) -> Vec<i64> {
        match self.inner() {
            None => vec![],
            Some(inner) => {
                let inner = inner.nest_ratio();
                let mut out = vec![self.downsampling() * inner.first().copied().unwrap_or(1)];
                out.extend(inner);
                out
            }
        }
    }

    /// Per-level scale relative to the innermost level, outermost first: `nest_ratio + [1]`.
    pub fn scales(&self) -> Vec<i64> {
        let mut s = self.nest_ratio();
        s.push(1);
        s
    }

    /// The blocks of this level (without its inner level), with the skip widths resolved:
    /// the down path records conv_in, each ResNet and each downsample; each up ResNet
    /// concatenates the most recent one.
    pub fn blocks(&self) -> Blocks {
        let res = &self.resolutions;
        let n = res.len();
        let mut ch = res[0].channels;
        let mut skips = vec![ch];
        let mut down = vec![];
        for (r, s) in res.iter().enumerate() {
            let mut channels = vec![];
            for _ in 0..s.resnets {
                channels.push((ch, s.channels));
                skips.push(s.channels);
                ch = s.channels;
            }
            let resample = if r + 1 < n { Resample::Down } else { Resample::None };
            if resample == Resample::Down {
                skips.push(ch);
            }
            down.push(BlockSpec { resolution: r, channels, attention: s.attention, temporal: s.temporal, resample });
        }
        let mid = self.mid.map(|a| {
            let first = BlockSpec { resolution: n - 1, channels: vec![(ch, ch)], attention: Some(a), temporal: None, resample: Resample::None };
            let second = BlockSpec { attention: None, ..first.clone() };
            [first, second]
        });
        let mut up = vec![];
        for (r, s) in res.iter().enumerate().rev() {
            let mut channels = vec![];
            for _ in 0..=s.resnets {
                let skip = skips.pop().unwrap_or(0);
                channels.push((ch + skip, s.channels));
                ch = s.channels;
            }
            let resample = if r > 0 { Resample::Up } else { Resample::None };
            up.push(BlockSpec { resolution: r, channels, attention: s.attention, temporal: s.temporal, resample });
        }
        Blocks { down, mid, up, out_channels: ch }
    }
}

/// A validated model config: the model kind, channels and the derived level tree.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub kind: ModelKind,
    pub input_channels: i64,
    pub output_channels: i64,
    pub num_classes: Option<i64>,
    /// Outermost level; inner levels hang below it.
    pub top: LevelSpec,
    /// The config as written (for saving next to checkpoints).
    pub file: ConfigFile,
}

impl ModelConfig {
    /// A video model (`temporal_mode`): inputs are clips, frames in the batch dimension.
    pub fn is_video(&self) -> bool {
        self.top.temporal
    }

    /// The diffusion config of the file, or ml-mdm's published one for this kind of model.
    pub fn diffusion(&self) -> DiffusionConfig {
        self.file.diffusion_config.clone().unwrap_or_else(|| DiffusionConfig::published(self.top.depth()))
    }
}
