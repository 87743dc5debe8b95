//! The `diffusion_config` section of a model file: ml-mdm's `NestedDiffusionConfig` and
//! `SamplerConfig`, validated here and used by [`crate::diffusion`].

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// ml-mdm's `ScheduleType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScheduleType {
    Cosine,
    Ddpm,
    /// `squaredcos_cap_v2` (DeepFloyd IF, diffusers).
    Deepfloyd,
}

/// ml-mdm's `PredictionType`: what the network outputs (or the loss compares).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PredictionType {
    /// ε.
    Ddpm,
    /// ε as well (ml-mdm treats it like DDPM).
    Ddim,
    /// v = √γ·ε − √(1−γ)·x0.
    VPrediction,
}

/// ml-mdm's `ThresholdType`: how x0 is kept in range while sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ThresholdType {
    None,
    /// Clip to [−1, 1].
    Clip,
    /// Imagen's dynamic thresholding, percentile 0.995, max 100.
    Dynamic,
    /// Dynamic thresholding as in DeepFloyd IF, percentile 0.95, max 1.5.
    DynamicIf,
}

fn d_true() -> bool {
    true
}

/// ml-mdm's `SamplerConfig`; missing keys take ml-mdm's defaults ([`SamplerConfig::default`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    pub num_diffusion_steps: i64,
    pub reproject_signal: bool,
    pub schedule_type: ScheduleType,
    pub prediction_type: PredictionType,
    /// `None` = same as `prediction_type`.
    pub loss_target_type: Option<PredictionType>,
    pub beta_start: f64,
    pub beta_end: f64,
    pub threshold_function: ThresholdType,
    pub rescale_schedule: f64,
    pub rescale_signal: Option<f64>,
    /// Shift each level's log-SNR by its resolution ratio (to `schedule_shifted_power`).
    pub schedule_shifted: bool,
    pub schedule_shifted_power: f64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            num_diffusion_steps: 32,
            reproject_signal: false,
            schedule_type: ScheduleType::Ddpm,
            prediction_type: PredictionType::Ddpm,
            loss_target_type: None,
            beta_start: 1e-4,
            beta_end: 0.02,
            threshold_function: ThresholdType::Clip,
            rescale_schedule: 1.0,
            rescale_signal: None,
            schedule_shifted: false,
            schedule_shifted_power: 1.0,
        }
    }
}

/// ml-mdm's `NestedDiffusionConfig` (a superset of `DiffusionConfig`). Unlike ml-mdm,
/// `mixed_ratio` and `multi_res_weights` are read here (ml-mdm's YAML puts them at the top
/// level, where they are silently ignored).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionConfig {
    pub sampler_config: SamplerConfig,
    #[serde(default)]
    pub model_output_scale: f64,
    #[serde(default = "d_true")]
    pub use_vdm_loss_weights: bool,
    /// Loss on every level (false: only the outermost).
    #[serde(default)]
    pub use_double_loss: bool,
    /// Per-level loss weights, outermost first, e.g. `"16:4:1"`.
    #[serde(default)]
    pub multi_res_weights: Option<String>,
    #[serde(default)]
    pub no_use_residual: bool,
    #[serde(default)]
    pub use_random_interp: bool,
    /// Batch shares, outermost first, e.g. `"2:1"`: the outer level trains on the first 2/3
    /// of each batch, the last 1/3 trains only the inner levels.
    #[serde(default)]
    pub mixed_ratio: Option<String>,
    #[serde(default)]
    pub random_downsample: bool,
    #[serde(default)]
    pub average_downsample: bool,
    #[serde(default)]
    pub mid_downsample: bool,
}

fn parse_ratio(s: &str, field: &str) -> Result<Vec<f64>> {
    s.split(':')
        .map(|x| {
            x.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    Error::Diffusion(format!("{field} {s:?}: {x:?} is not a non-negative number"))
                })
        })
        .collect()
}

impl DiffusionConfig {
    /// The diffusion settings of ml-mdm's published cc12m configs: 64×64 for one level,
    /// 256×256 for two, 1024×1024 (shift power 2) for three or more.
    pub fn published(levels: usize) -> Self {
        DiffusionConfig {
            sampler_config: SamplerConfig {
                num_diffusion_steps: 1000,
                reproject_signal: false,
                schedule_type: ScheduleType::Deepfloyd,
                prediction_type: PredictionType::VPrediction,
                loss_target_type: Some(PredictionType::Ddpm),
                beta_start: 1e-4,
                beta_end: 0.02,
                threshold_function: ThresholdType::Clip,
                rescale_schedule: 1.0,
                rescale_signal: (levels > 1).then_some(1.0),
                schedule_shifted: levels > 1,
                schedule_shifted_power: if levels > 2 { 2.0 } else { 1.0 },
            },
            model_output_scale: 0.0,
            use_vdm_loss_weights: false,
            use_double_loss: levels > 1,
            multi_res_weights: None,
            no_use_residual: levels > 1,
            use_random_interp: false,
            mixed_ratio: None,
            random_downsample: false,
            average_downsample: false,
            mid_downsample: false,
        }
    }

    /// Rejects settings we do not implement (rather than ignoring them).
    pub fn validate(&self) -> Result<()> {
        let s = &self.sampler_config;
        let bad = |m: &str| Err(Error::Diffusion(m.to_string()));
        if s.num_diffusion_steps < 2 {
            return bad("sampler_config.num_diffusion_steps must be >= 2");
        }
        if s.reproject_signal {
            return bad("sampler_config.reproject_signal is not supported");
        }
        if !(s.rescale_schedule > 0.0) || !(s.schedule_shifted_power.is_finite()) {
            return bad(
                "sampler_config.rescale_schedule must be > 0 and schedule_shifted_power finite",
            );
        }
        if s.rescale_signal.is_some_and(|r| !(r > 0.0)) {
            return bad("sampler_config.rescale_signal must be > 0");
        }
        if self.model_output_scale != 0.0 {
            return bad("model_output_scale != 0 is not supported");
        }
        if self.use_vdm_loss_weights {
            return bad(
                "use_vdm_loss_weights is not supported (ml-mdm's published configs set it false)",
            );
        }
        if self.use_random_interp
            || self.random_downsample
            || self.average_downsample
            || self.mid_downsample
        {
            return bad("use_random_interp/random_downsample/average_downsample/mid_downsample are not supported");
        }
        if let Some(w) = &self.multi_res_weights {
            parse_ratio(w, "multi_res_weights")?;
            if !self.use_double_loss {
                return bad("multi_res_weights needs use_double_loss (as in ml-mdm)");
            }
        }
        if let Some(m) = &self.mixed_ratio {
            let r = parse_ratio(m, "mixed_ratio")?;
            if r.iter().sum::<f64>() <= 0.0 || r.first().is_some_and(|&x| x <= 0.0) {
                return bad("mixed_ratio must have a positive first share");
            }
        }
        Ok(())
    }

    /// What the loss compares (ε for ml-mdm's `DDPM`).
    pub fn loss_target(&self) -> PredictionType {
        self.sampler_config
            .loss_target_type
            .unwrap_or(self.sampler_config.prediction_type)
    }

    /// Per-level loss weights for `levels` levels.
    pub fn level_weights(&self, levels: usize) -> Result<Vec<f64>> {
        let w = match &self.multi_res_weights {
            None => vec![1.0; levels],
            Some(s) => parse_ratio(s, "multi_res_weights")?,
        };
        if w.len() != levels {
            return Err(Error::Diffusion(format!(
                "multi_res_weights has {} entries for {levels} levels",
                w.len()
            )));
        }
        Ok(w)
    }

    /// Cumulative batch shares per level (ml-mdm's `mixed_ratio` after `cumsum / total`).
    pub fn mixed_shares(&self, levels: usize) -> Result<Option<Vec<f64>>> {
        let Some(s) = &self.mixed_ratio else {
            return Ok(None);
        };
        let r = parse_ratio(s, "mixed_ratio")?;
        if r.len() != levels {
            return Err(Error::Diffusion(format!(
                "mixed_ratio has {} entries for {levels} levels",
                r.len()
            )));
        }
        let total: f64 = r.iter().sum();
        let mut acc = 0.0;
        Ok(Some(
            r.iter()
                .map(|x| {
                    acc += x;
                    acc / total
                })
                .collect(),
        ))
    }
}
