//! Model and diffusion configuration in ml-mdm's field names.
//!
//! A config file is either our TOML mirror of ml-mdm's YAML (`configs/models/*.toml`) or a
//! reference fixture's `*_config.json` as it is. Both have the same top level: `model`
//! (`unet`, `nested_unet`, `nested2_unet`, …), `unet_config` (ml-mdm's `UNetConfig` /
//! `NestedUNetConfig`, inner levels under `inner_config`) and optionally `diffusion_config`.
//! Unknown keys are an error. [`ModelConfig::from_file`] parses and validates once, deriving
//! one [`LevelSpec`] per nesting level; nothing is mutated afterwards.

pub mod diffusion;

pub use diffusion::DiffusionConfig;

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

/// Head width of temporal attention (ml-mdm's `num_head_channels=32`).
pub const TEMPORAL_HEAD_CHANNELS: i64 = 32;

/// A list of integers written as a list (`[2, 2, 2]`), a single integer, or ml-mdm's
/// comma string (`"2,2,2"`, `""` = empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct IntList(pub Vec<i64>);

impl<'de> Deserialize<'de> for IntList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<i64>),
            One(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::List(v) => Ok(IntList(v)),
            Raw::One(x) => Ok(IntList(vec![x])),
            Raw::Text(s) => {
                let s = s.trim();
                if s.is_empty() {
                    return Ok(IntList(vec![]));
                }
                s.split(',')
                    .map(|x| x.trim().parse::<i64>().map_err(serde::de::Error::custom))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map(IntList)
            }
        }
    }
}

fn default_neg1() -> i64 {
    -1
}
fn default_groups() -> i64 {
    32
}
fn default_one() -> i64 {
    1
}
fn default_channels() -> i64 {
    3
}
fn default_resnets() -> IntList {
    IntList(vec![2])
}
fn default_attention_levels() -> IntList {
    IntList(vec![2, 3])
}
fn default_attention_layers() -> IntList {
    IntList(vec![1])
}
fn default_resolution_channels() -> IntList {
    IntList(vec![128, 256, 256, 512, 1024])
}

/// ml-mdm's `ResNetConfig` (`num_channels`/`output_channels` are filled in per block).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    #[serde(default = "default_neg1")]
    pub num_channels: i64,
    #[serde(default = "default_neg1")]
    pub output_channels: i64,
    /// Groups of the ResNet GroupNorms and `norm_out` (default 32).
    #[serde(default = "default_groups")]
    pub num_groups_norm: i64,
    #[serde(default)]
    pub dropout: f64,
    /// Adds the 4C FFN after each 2D attention layer.
    #[serde(default)]
    pub use_attention_ffn: bool,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        ResNetConfig {
            num_channels: -1,
            output_channels: -1,
            num_groups_norm: 32,
            dropout: 0.0,
            use_attention_ffn: false,
        }
    }
}

/// ml-mdm's `UNetConfig`, extended by the `NestedUNetConfig` fields (which a plain `unet`
/// leaves at their defaults). Defaults are ml-mdm's.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    #[serde(default = "default_resnets")]
    pub num_resnets_per_resolution: IntList,
    /// Width of the time embedding; `None` = 4 × `resolution_channels[0]`.
    #[serde(default)]
    pub temporal_dim: Option<i64>,
    #[serde(default = "default_attention_levels")]
    pub attention_levels: IntList,
    #[serde(default = "default_attention_layers")]
    pub num_attention_layers: IntList,
    #[serde(default)]
    pub num_temporal_attention_layers: Option<IntList>,
    /// Width of the text features (the T5 width); ml-mdm's train script sets it from the
    /// text encoder. Inner levels receive the outer level's effective width.
    #[serde(default = "default_neg1")]
    pub conditioning_feature_dim: i64,
    /// If > 0, `lm_proj` projects the text features to this width.
    #[serde(default = "default_neg1")]
    pub conditioning_feature_proj_dim: i64,
    /// Learned self-attention layers over the (projected) text features.
    #[serde(default)]
    pub num_lm_head_layers: i64,
    /// Non-zero: cross-attention honours the padding mask.
    #[serde(default = "default_one")]
    pub masked_cross_attention: i64,
    #[serde(default = "default_resolution_channels")]
    pub resolution_channels: IntList,
    /// Default false for `unet`, true for nested levels (as in ml-mdm).
    #[serde(default)]
    pub skip_mid_blocks: Option<bool>,
    /// Default false for `unet`, true for nested levels (as in ml-mdm).
    #[serde(default)]
    pub skip_cond_emb: Option<bool>,
    /// True when this level sits inside another one.
    #[serde(default)]
    pub nesting: bool,
    /// `LABEL:DEFAULT,...`, e.g. `scale:64`.
    #[serde(default)]
    pub micro_conditioning: Option<String>,
    #[serde(default)]
    pub temporal_mode: bool,
    #[serde(default)]
    pub temporal_spatial_ds: bool,
    #[serde(default)]
    pub temporal_positional_encoding: bool,
    #[serde(default)]
    pub resnet_config: ResNetConfig,
    /// The next level in (nested models only).
    #[serde(default)]
    pub inner_config: Option<Box<UNetConfig>>,
    /// The inner level receives only the low-resolution image, no outer features.
    #[serde(default)]
    pub skip_inner_unet_input: bool,
    /// False: the outer input is divided by its per-sample std before `conv_in`.
    #[serde(default)]
    pub skip_normalization: bool,
    /// ml-mdm loads an inner checkpoint here (and ignores failures). We only record it: use
    /// [`crate::growth`] to initialise from a lower-resolution checkpoint explicitly.
    #[serde(default)]
    pub initialize_inner_with_pretrained: Option<String>,
    #[serde(default)]
    pub freeze_inner_unet: bool,
    #[serde(default)]
    pub interp_conditioning: bool,
}

/// The model family, in ml-mdm's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Unet,
    NestedUnet,
    Nested2Unet,
    Nested3Unet,
    Nested4Unet,
}

impl ModelKind {
    /// Nesting depth: 0 for `unet`, 1 for `nested_unet`, ...
    /// (`nested_unet` accepts any depth through its `inner_config`, as in ml-mdm).
    pub fn declared_depth(self) -> Option<usize> {
        match self {
            ModelKind::Unet => Some(0),
            ModelKind::NestedUnet => None,
            ModelKind::Nested2Unet => Some(2),
            ModelKind::Nested3Unet => Some(3),
            ModelKind::Nested4Unet => Some(4),
        }
    }
}

/// A config file as written: our TOML mirror or a fixture's `*_config.json`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub model: ModelKind,
    #[serde(default = "default_channels")]
    pub input_channels: i64,
    #[serde(default = "default_channels")]
    pub output_channels: i64,
    pub unet_config: UNetConfig,
    /// Class conditioning (our extension; ml-mdm's is broken): number of classes. A learned
    /// `class_emb` table (with one extra null class for guidance) replaces the text features.
    #[serde(default)]
    pub num_classes: Option<i64>,
    #[serde(default)]
    pub diffusion_config: Option<DiffusionConfig>,
    // Descriptive keys of the reference fixtures' `*_config.json`: accepted, not used.
    #[serde(default, skip_serializing)]
    pub name: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub model_class: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub levels: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub batch_size: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub inputs: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub outputs: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub debug: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub num_parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub num_state_dict_entries: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub init: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub fp32_vs_fp64_max_abs_diff: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub call: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub ml_mdm_commit: Option<serde_json::Value>,
    #[serde(default, skip_serializing)]
    pub torch_version: Option<serde_json::Value>,
}

/// One micro-conditioning input: its key and default value.
#[derive(Debug, Clone, PartialEq)]
pub struct Micro {
    pub key: String,
    pub default: f64,
}

/// Everything needed to build one level, derived once from [`UNetConfig`].
#[derive(Debug, Clone)]
pub struct LevelSpec {
    pub resolution_channels: Vec<i64>,
    pub num_resnets: Vec<i64>,
    /// Attention layers per resolution (0 where the resolution is not in `attention_levels`).
    pub attention_layers: Vec<i64>,
    /// A video level: inputs are frames in the batch dimension, `frames` per clip.
    pub temporal: bool,
    /// Temporal attention blocks per ResNet, per resolution (video levels).
    pub temporal_layers: Vec<i64>,
    /// Rotary position encoding of the frame index in temporal attention.
    pub temporal_pos_emb: bool,
    pub temporal_dim: i64,
    /// Text width as it enters this level's `lm_proj` (ml-mdm's `input_conditioning_feature_dim`).
    pub input_cond_dim: i64,
    /// Effective text width after `lm_proj` (≤ 0: no text conditioning).
    pub cond_dim: i64,
    pub has_lm_proj: bool,
    pub has_cond_emb: bool,
    pub lm_head_layers: i64,
    pub masked_cross_attention: bool,
    pub mid_blocks: bool,
    pub micros: Vec<Micro>,
    pub groups: i64,
    pub dropout: f64,
    pub attention_ffn: bool,
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

    /// ml-mdm's `nest_ratio`: downsampling factor of each inner level w.r.t. this one.
    pub fn nest_ratio(&self) -> Vec<i64> {
        match &self.nested {
            None => vec![],
            Some(n) => {
                let r = 1i64 << (self.resolution_channels.len() - 1);
                let inner = n.inner.nest_ratio();
                let mut out = vec![r * inner.first().copied().unwrap_or(1)];
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

    /// Reads a `.toml` (our mirror) or `.json` (fixture) config file and validates it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let file: ConfigFile = if is_json {
            serde_json::from_str(&text).map_err(|e| Error::ConfigParse {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?
        } else {
            toml::from_str(&text).map_err(|e| Error::ConfigParse {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?
        };
        Self::from_parsed(file).map_err(|e| e.with_path(path))
    }

    /// Parses TOML text (our mirror format) and validates it.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| Error::ConfigParse {
            path: "<toml>".into(),
            msg: e.to_string(),
        })?;
        Self::from_parsed(file)
    }

    /// Validates a parsed file and derives the level tree.
    pub fn from_parsed(file: ConfigFile) -> Result<Self> {
        if file.input_channels <= 0 || file.output_channels <= 0 {
            return Err(Error::config(
                "input_channels/output_channels",
                "must be positive",
            ));
        }
        if let Some(n) = file.num_classes {
            if n <= 0 {
                return Err(Error::config("num_classes", "must be positive"));
            }
            if file.unet_config.conditioning_feature_dim <= 0 {
                return Err(Error::config(
                    "num_classes",
                    "class conditioning needs conditioning_feature_dim > 0 (the class embedding width)",
                ));
            }
        }
        let top = derive_level(&file.unet_config, None, 0, "unet_config")?;
        if let Some(d) = file.model.declared_depth() {
            if top.depth() != d + 1 {
                return Err(Error::config(
                    "model",
                    format!(
                        "{:?} expects {} nested levels, unet_config has {}",
                        file.model,
                        d,
                        top.depth() - 1
                    ),
                ));
            }
        } else if top.depth() < 2 {
            return Err(Error::config(
                "unet_config.inner_config",
                "nested_unet needs an inner_config",
            ));
        }
        // Cross-attention at every level reads the innermost level's (projected) tokens.
        let text_dim = top.innermost().cond_dim;
        let mut level = Some(&top);
        let mut at = String::from("unet_config");
        while let Some(l) = level {
            let attends = l.attention_layers.iter().any(|&n| n > 0) || l.mid_blocks;
            if attends && l.cond_dim > 0 && l.cond_dim != text_dim {
                return Err(Error::config(
                    format!("{at}.conditioning_feature_dim"),
                    format!("cross-attention here expects width {}, the innermost level produces {text_dim}", l.cond_dim),
                ));
            }
            level = l.nested.as_ref().map(|n| n.inner.as_ref());
            at.push_str(".inner_config");
        }
        if let Some(dc) = &file.diffusion_config {
            dc.validate()?;
        }
        Ok(ModelConfig {
            kind: file.model,
            input_channels: file.input_channels,
            output_channels: file.output_channels,
            num_classes: file.num_classes,
            top,
            file,
        })
    }

    /// The diffusion config of the file, or ml-mdm's published one for this kind of model.
    pub fn diffusion(&self) -> DiffusionConfig {
        self.file
            .diffusion_config
            .clone()
            .unwrap_or_else(|| DiffusionConfig::published(self.top.depth()))
    }
}

fn expand(list: &IntList, n: usize, field: &str) -> Result<Vec<i64>> {
    match list.0.len() {
        1 => Ok(vec![list.0[0]; n]),
        k if k == n => Ok(list.0.clone()),
        k => Err(Error::config(
            field,
            format!("has {k} entries, resolution_channels has {n}"),
        )),
    }
}

/// Derives a level. `outer_cond_dim` is the outer level's effective text width (ml-mdm
/// overwrites the inner `conditioning_feature_dim` with it).
fn derive_level(
    c: &UNetConfig,
    outer_cond_dim: Option<i64>,
    depth: usize,
    at: &str,
) -> Result<LevelSpec> {
    let f = |name: &str| format!("{at}.{name}");
    // Video: frames ride in the batch dimension ((B·T), C, H, W) and every level sees every
    // frame (ml-mdm's `temporal_spatial_ds`: levels nest in space only). Unlike ml-mdm, which
    // builds its temporal attention only without `temporal_spatial_ds`, the temporal
    // attention blocks exist wherever `num_temporal_attention_layers` asks for them.
    if c.temporal_mode && !c.temporal_spatial_ds {
        return Err(Error::config(
            f("temporal_spatial_ds"),
            "ml-mdm's temporal downsampling (frames tiled into a grid, resampled in time) is not \
             supported; set temporal_spatial_ds = true (levels nest in space, every level sees every frame)",
        ));
    }
    if !c.temporal_mode && (c.temporal_spatial_ds || c.temporal_positional_encoding) {
        return Err(Error::config(
            f("temporal_mode"),
            "temporal_spatial_ds and temporal_positional_encoding need temporal_mode = true",
        ));
    }
    if c.interp_conditioning {
        return Err(Error::config(f("interp_conditioning"), "not supported"));
    }
    let rc = c.resolution_channels.0.clone();
    let n = rc.len();
    if n == 0 || rc.iter().any(|&x| x <= 0) {
        return Err(Error::config(
            f("resolution_channels"),
            "must be a non-empty list of positive widths",
        ));
    }
    let num_resnets = expand(
        &c.num_resnets_per_resolution,
        n,
        &f("num_resnets_per_resolution"),
    )?;
    if num_resnets.iter().any(|&x| x < 1) {
        return Err(Error::config(
            f("num_resnets_per_resolution"),
            "each level needs at least one ResNet",
        ));
    }
    let layers = expand(&c.num_attention_layers, n, &f("num_attention_layers"))?;
    for &l in &c.attention_levels.0 {
        if l < 0 || l as usize >= n {
            return Err(Error::config(
                f("attention_levels"),
                format!("level {l} out of range 0..{n}"),
            ));
        }
    }
    let attention_layers: Vec<i64> = (0..n)
        .map(|i| {
            if c.attention_levels.0.contains(&(i as i64)) {
                layers[i].max(0)
            } else {
                0
            }
        })
        .collect();
    let temporal_layers = match &c.num_temporal_attention_layers {
        Some(l) if !l.0.is_empty() => expand(l, n, &f("num_temporal_attention_layers"))?,
        _ => vec![0; n],
    };
    if temporal_layers.iter().any(|&l| l < 0) {
        return Err(Error::config(f("num_temporal_attention_layers"), "must be >= 0"));
    }
    if !c.temporal_mode && temporal_layers.iter().any(|&l| l > 0) {
        return Err(Error::config(
            f("num_temporal_attention_layers"),
            "temporal attention needs temporal_mode = true (a video model)",
        ));
    }
    for (i, &ch) in rc.iter().enumerate() {
        if temporal_layers[i] > 0 && ch % TEMPORAL_HEAD_CHANNELS != 0 {
            return Err(Error::config(
                f("num_temporal_attention_layers"),
                format!("temporal attention needs channels divisible by 32 (its head width), level {i} has {ch}"),
            ));
        }
    }
    let is_nested = c.inner_config.is_some();
    let groups = c.resnet_config.num_groups_norm;
    if groups <= 0 {
        return Err(Error::config(
            f("resnet_config.num_groups_norm"),
            "must be positive",
        ));
    }
    for &ch in &rc {
        if ch % groups != 0 {
            return Err(Error::config(
                f("resnet_config.num_groups_norm"),
                format!("{groups} does not divide {ch}"),
            ));
        }
    }
    for (i, &ch) in rc.iter().enumerate() {
        if attention_layers[i] > 0 && (ch % 32 != 0 || ch % 8 != 0) {
            return Err(Error::config(
                f("attention_levels"),
                format!("attention needs channels divisible by 32 (GroupNorm) and 8 (heads), level {i} has {ch}"),
            ));
        }
    }
    if !(0.0..1.0).contains(&c.resnet_config.dropout) {
        return Err(Error::config(
            f("resnet_config.dropout"),
            "must be in [0, 1)",
        ));
    }
    let temporal_dim = c.temporal_dim.unwrap_or(rc[0] * 4);
    if temporal_dim < 8 || temporal_dim % 8 != 0 {
        return Err(Error::config(
            f("temporal_dim"),
            format!("{temporal_dim} must be a positive multiple of 8"),
        ));
    }
    let input_cond_dim = outer_cond_dim.unwrap_or(c.conditioning_feature_dim);
    let cond_dim = if input_cond_dim > 0 && c.conditioning_feature_proj_dim > 0 {
        c.conditioning_feature_proj_dim
    } else {
        input_cond_dim
    };
    let skip_cond_emb = c.skip_cond_emb.unwrap_or(is_nested);
    let skip_mid = c.skip_mid_blocks.unwrap_or(is_nested);
    let has_cond_emb = cond_dim > 0 && !skip_cond_emb;
    let has_lm_proj = has_cond_emb && c.conditioning_feature_proj_dim > 0;
    if c.num_lm_head_layers < 0 {
        return Err(Error::config(f("num_lm_head_layers"), "must be >= 0"));
    }
    if c.num_lm_head_layers > 0 && has_cond_emb && cond_dim % 8 != 0 {
        return Err(Error::config(
            f("num_lm_head_layers"),
            "text self-attention needs a width divisible by 8",
        ));
    }
    let has_attention = attention_layers.iter().any(|&l| l > 0) || !skip_mid;
    if has_attention && rc[n - 1] % 32 != 0 && !skip_mid {
        return Err(Error::config(
            f("skip_mid_blocks"),
            "mid-block attention needs the last width divisible by 32",
        ));
    }
    let micros = match &c.micro_conditioning {
        None => vec![],
        Some(s) => s
            .split(',')
            .map(|item| {
                let (k, v) = item.split_once(':').ok_or_else(|| {
                    Error::config(
                        f("micro_conditioning"),
                        format!("{item:?} is not LABEL:DEFAULT"),
                    )
                })?;
                let default: f64 = v.trim().parse().map_err(|_| {
                    Error::config(f("micro_conditioning"), format!("{v:?} is not a number"))
                })?;
                if k.trim() == "scale" && default == 0.0 {
                    return Err(Error::config(
                        f("micro_conditioning"),
                        "scale default must be non-zero",
                    ));
                }
                Ok(Micro {
                    key: k.trim().to_string(),
                    default,
                })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    if depth > 0 && !c.nesting {
        return Err(Error::config(
            f("nesting"),
            "an inner_config must set nesting: true",
        ));
    }
    if depth == 0 && c.nesting {
        return Err(Error::config(
            f("nesting"),
            "the outermost level must not set nesting",
        ));
    }
    let nested = match &c.inner_config {
        None => None,
        Some(ic) => {
            let inner = derive_level(ic, Some(cond_dim), depth + 1, &format!("{at}.inner_config"))?;
            if inner.temporal != c.temporal_mode {
                return Err(Error::config(
                    f("temporal_mode"),
                    "every level of a nested model must agree on temporal_mode",
                ));
            }
            if inner.temporal_dim != temporal_dim {
                return Err(Error::config(
                    f("temporal_dim"),
                    format!(
                        "{temporal_dim} differs from the inner level's {} (they share cond_emb)",
                        inner.temporal_dim
                    ),
                ));
            }
            Some(NestedSpec {
                inner: Box::new(inner),
                in_adapter: !c.skip_inner_unet_input,
                skip_normalization: c.skip_normalization,
                freeze_inner: c.freeze_inner_unet,
            })
        }
    };
    if let Some(ns) = &nested {
        if ns.inner.innermost().cond_dim > 0 && !ns.inner.innermost().has_cond_emb {
            return Err(Error::config(
                f("inner_config"),
                "the innermost level computes the text conditioning: it must not skip_cond_emb",
            ));
        }
    } else if cond_dim > 0 && !has_cond_emb {
        return Err(Error::config(
            f("skip_cond_emb"),
            "the innermost level computes the text conditioning: it must not skip_cond_emb",
        ));
    }
    Ok(LevelSpec {
        resolution_channels: rc,
        num_resnets,
        attention_layers,
        temporal: c.temporal_mode,
        temporal_layers,
        temporal_pos_emb: c.temporal_positional_encoding,
        temporal_dim,
        input_cond_dim,
        cond_dim,
        has_lm_proj,
        has_cond_emb,
        lm_head_layers: if has_cond_emb {
            c.num_lm_head_layers
        } else {
            0
        },
        masked_cross_attention: c.masked_cross_attention != 0,
        mid_blocks: !skip_mid,
        micros,
        groups,
        dropout: c.resnet_config.dropout,
        attention_ffn: c.resnet_config.use_attention_ffn,
        nesting: c.nesting,
        nested,
    })
}
