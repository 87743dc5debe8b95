//! The model config file as written: our TOML mirror of ml-mdm's YAML, or a reference
//! fixture's `*_config.json`. Field names and defaults are ml-mdm's; unknown keys are an error.

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

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

/// ml-mdm's `ResNetConfig` (`num_channels`/`output_channels` are filled in per block).
/// Missing keys take the values of [`ResNetConfig::default`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResNetConfig {
    pub num_channels: i64,
    pub output_channels: i64,
    /// Groups of the ResNet GroupNorms and `norm_out`.
    pub num_groups_norm: i64,
    pub dropout: f64,
    /// Adds the 4C FFN after each 2D attention layer.
    pub use_attention_ffn: bool,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        ResNetConfig { num_channels: -1, output_channels: -1, num_groups_norm: 32, dropout: 0.0, use_attention_ffn: false }
    }
}

/// ml-mdm's `UNetConfig`, extended by the `NestedUNetConfig` fields (which a plain `unet`
/// leaves at their defaults). Missing keys take ml-mdm's defaults ([`UNetConfig::default`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNetConfig {
    pub num_resnets_per_resolution: IntList,
    /// Width of the time embedding; `None` = 4 × `resolution_channels[0]`.
    pub temporal_dim: Option<i64>,
    pub attention_levels: IntList,
    pub num_attention_layers: IntList,
    pub num_temporal_attention_layers: Option<IntList>,
    /// Width of the text features (the T5 width; ≤ 0: none); ml-mdm's train script sets it
    /// from the text encoder. Inner levels receive the outer level's effective width.
    pub conditioning_feature_dim: i64,
    /// If > 0, `lm_proj` projects the text features to this width.
    pub conditioning_feature_proj_dim: i64,
    /// Learned self-attention layers over the (projected) text features.
    pub num_lm_head_layers: i64,
    /// Non-zero: cross-attention honours the padding mask.
    pub masked_cross_attention: i64,
    pub resolution_channels: IntList,
    /// Default false for `unet`, true for nested levels (as in ml-mdm).
    pub skip_mid_blocks: Option<bool>,
    /// Default false for `unet`, true for nested levels (as in ml-mdm).
    pub skip_cond_emb: Option<bool>,
    /// True when this level sits inside another one.
    pub nesting: bool,
    /// `LABEL:DEFAULT,...`, e.g. `scale:64`.
    pub micro_conditioning: Option<String>,
    pub temporal_mode: bool,
    pub temporal_spatial_ds: bool,
    pub temporal_positional_encoding: bool,
    pub resnet_config: ResNetConfig,
    /// The next level in (nested models only).
    pub inner_config: Option<Box<UNetConfig>>,
    /// The inner level receives only the low-resolution image, no outer features.
    pub skip_inner_unet_input: bool,
    /// False: the outer input is divided by its per-sample std before `conv_in`.
    pub skip_normalization: bool,
    /// ml-mdm loads an inner checkpoint here (and ignores failures). We only record it: use
    /// [`crate::growth`] to initialise from a lower-resolution checkpoint explicitly.
    pub initialize_inner_with_pretrained: Option<String>,
    pub freeze_inner_unet: bool,
    pub interp_conditioning: bool,
}

impl Default for UNetConfig {
    fn default() -> Self {
        UNetConfig {
            num_resnets_per_resolution: IntList(vec![2]),
            temporal_dim: None,
            attention_levels: IntList(vec![2, 3]),
            num_attention_layers: IntList(vec![1]),
            num_temporal_attention_layers: None,
            conditioning_feature_dim: -1,
            conditioning_feature_proj_dim: -1,
            num_lm_head_layers: 0,
            masked_cross_attention: 1,
            resolution_channels: IntList(vec![128, 256, 256, 512, 1024]),
            skip_mid_blocks: None,
            skip_cond_emb: None,
            nesting: false,
            micro_conditioning: None,
            temporal_mode: false,
            temporal_spatial_ds: false,
            temporal_positional_encoding: false,
            resnet_config: ResNetConfig::default(),
            inner_config: None,
            skip_inner_unet_input: false,
            skip_normalization: false,
            initialize_inner_with_pretrained: None,
            freeze_inner_unet: false,
            interp_conditioning: false,
        }
    }
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

fn three() -> i64 {
    3
}

/// A model config file: `model` (`unet`, `nested_unet`, …), `unet_config` (inner levels under
/// `inner_config`) and optionally `diffusion_config`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub model: ModelKind,
    #[serde(default = "three")]
    pub input_channels: i64,
    #[serde(default = "three")]
    pub output_channels: i64,
    pub unet_config: UNetConfig,
    /// Class conditioning (our extension; ml-mdm's is broken): number of classes. A learned
    /// `class_emb` table (with one extra null class for guidance) replaces the text features.
    #[serde(default)]
    pub num_classes: Option<i64>,
    #[serde(default)]
    pub diffusion_config: Option<super::DiffusionConfig>,
}

/// Top-level keys of the reference fixtures' `*_config.json` that describe the fixture, not
/// the model: dropped from a `.json` file before it is read as a [`ConfigFile`].
pub const FIXTURE_ONLY_KEYS: &[&str] = &[
    "name",
    "model_class",
    "levels",
    "batch_size",
    "inputs",
    "outputs",
    "debug",
    "num_parameters",
    "num_state_dict_entries",
    "init",
    "fp32_vs_fp64_max_abs_diff",
    "call",
    "ml_mdm_commit",
    "torch_version",
];

impl ConfigFile {
    /// Reads a `.toml` (our mirror) or `.json` (fixture) file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let parse = |msg: String| Error::ConfigParse { path: path.to_path_buf(), msg };
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
            let mut value: serde_json::Value = serde_json::from_str(&text).map_err(|e| parse(e.to_string()))?;
            if let Some(top) = value.as_object_mut() {
                top.retain(|k, _| !FIXTURE_ONLY_KEYS.contains(&k.as_str()));
            }
            serde_json::from_value(value).map_err(|e| parse(e.to_string()))
        } else {
            toml::from_str(&text).map_err(|e| parse(e.to_string()))
        }
    }

    /// Parses TOML text (our mirror format).
    pub fn from_toml_str(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::ConfigParse { path: "<toml>".into(), msg: e.to_string() })
    }
}
