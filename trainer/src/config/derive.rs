//! Derivation: a parsed [`ConfigFile`] validated once into a [`ModelConfig`], one
//! [`LevelSpec`] per nesting level. Every error names the key it is about.

use std::path::Path;

use super::format::{ConfigFile, IntList, UNetConfig};
use super::spec::{Attention, LevelSpec, Micro, ModelConfig, NestedSpec, Resolution, Temporal, Text};
use super::TEMPORAL_HEAD_CHANNELS;
use crate::error::{Error, Result};

impl ModelConfig {
    /// Reads a `.toml` (our mirror) or `.json` (fixture) config file and validates it.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_parsed(ConfigFile::read(path)?).map_err(|e| e.with_path(path))
    }

    /// Parses TOML text (our mirror format) and validates it.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::from_parsed(ConfigFile::from_toml_str(text)?)
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
        let text_dim = top.innermost().text.map(|t| t.dim);
        let mut level = Some(&top);
        let mut at = String::from("unet_config");
        while let Some(l) = level {
            let attends = l.resolutions.iter().any(|r| r.attention.is_some()) || l.mid.is_some();
            if let (true, Some(t)) = (attends, l.text) {
                if Some(t.dim) != text_dim {
                    return Err(Error::config(
                        format!("{at}.conditioning_feature_dim"),
                        format!("cross-attention here expects width {}, the innermost level produces {text_dim:?}", t.dim),
                    ));
                }
            }
            level = l.inner();
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
    // ≤ 0 in the file: no text conditioning.
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
    if !skip_mid && rc[n - 1] % 32 != 0 {
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
        if ns.inner.innermost().text.is_some_and(|t| !t.cond_emb) {
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
    let text = (input_cond_dim > 0).then_some(Text {
        input_dim: input_cond_dim,
        dim: cond_dim,
        cond_emb: has_cond_emb,
        lm_proj: has_lm_proj,
        lm_head_layers: if has_cond_emb { c.num_lm_head_layers as usize } else { 0 },
        masked: c.masked_cross_attention != 0,
    });
    let attention = |layers: i64| Attention { layers: layers as usize, cross: text.map(|t| t.dim), ffn: c.resnet_config.use_attention_ffn };
    let resolutions = (0..n)
        .map(|r| Resolution {
            channels: rc[r],
            resnets: num_resnets[r] as usize,
            attention: (attention_layers[r] > 0).then(|| attention(attention_layers[r])),
            temporal: (temporal_layers[r] > 0).then_some(Temporal { layers: temporal_layers[r] as usize, pos_emb: c.temporal_positional_encoding }),
        })
        .collect();
    Ok(LevelSpec {
        resolutions,
        temporal: c.temporal_mode,
        temporal_dim,
        text,
        mid: (!skip_mid).then(|| attention(1)),
        micros,
        groups,
        dropout: c.resnet_config.dropout,
        nesting: c.nesting,
        nested,
    })
}
