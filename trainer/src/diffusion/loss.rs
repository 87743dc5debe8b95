//! One training batch of ml-mdm's `NestedDiffusion.get_loss`.
//!
//! One `t` per sample for all levels; level i's image is the average pool of level i−1; each
//! level has its own noise and its own (shifted) γ; the network predicts v; the loss is the
//! MSE in ε space, per sample, summed over levels with optional weights. A batch comes as
//! level groups (samples drawn at each level's side); a level that trains only part of the
//! batch has its loss renormalised by its share. [`crate::denoiser::Denoiser::loss`] runs
//! these with the network; ml-mdm's `mixed_ratio` is a fixed split into such groups
//! ([`crate::denoiser::Denoiser::split`]).

use tch::{Device, Kind, Tensor};

use super::schedule::Schedule;
use super::{DiffusionConfig, PredictionType};
use crate::error::{Error, Result};
use crate::model::MdmUNet;

/// The diffusion process of a (nested) model with the given level scales.
#[derive(Debug)]
pub struct NestedDiffusion {
    pub cfg: DiffusionConfig,
    pub schedule: Schedule,
    /// Level scales, outermost first (`nest_ratio + [1]`).
    pub scales: Vec<i64>,
    /// Per-level signal divisor (ml-mdm's `rescale_signal`; the level scale for unshifted
    /// nested schedules; 1 when shifted).
    pub signal_scale: Vec<f64>,
    pub weights: Vec<f64>,
}

/// Everything computed before the network runs.
#[derive(Debug)]
pub struct TrainInputs {
    /// (B,) int64; the model receives it as is.
    pub time: Tensor,
    /// Per level (B,): γ at `t+1` and at `t`.
    pub gamma: Vec<Tensor>,
    pub gamma_last: Vec<Tensor>,
    pub images: Vec<Tensor>,
    pub eps: Vec<Tensor>,
    pub x_t: Vec<Tensor>,
    /// Per level: the loss target (ε for `loss_target_type = DDPM`).
    pub targets: Vec<Tensor>,
    /// Grouped inputs: each level's share of the whole global batch (all ranks), which its
    /// loss is renormalised by; `None`: this batch's own shares.
    pub shares: Option<Vec<f64>>,
}

/// The loss of one batch.
#[derive(Debug)]
pub struct LossTerms {
    /// Per level (B,): per-sample MSE, weighted; for a level that trains part of the batch,
    /// renormalised by its share and zero for the samples it does not train.
    pub per_level: Vec<Tensor>,
    /// (B,): sum over levels.
    pub total: Tensor,
    /// Per level: the prediction converted to the target space.
    pub pred_for_training: Vec<Tensor>,
}

fn b4(g: &Tensor) -> Tensor {
    g.view([-1, 1, 1, 1])
}

/// x0 and ε from a prediction of type `kind` (ml-mdm's `get_x0_eps_from_pred`); `g` (B,).
pub fn x0_eps_from_pred(
    x_t: &Tensor,
    pred: &Tensor,
    g: &Tensor,
    kind: PredictionType,
) -> (Tensor, Tensor) {
    let g = b4(g);
    let sg = g.sqrt();
    let s1g = (g.ones_like() - &g).sqrt();
    let x0 = match kind {
        PredictionType::Ddpm | PredictionType::Ddim => (x_t - pred * &s1g) / &sg,
        PredictionType::VPrediction => x_t * &sg - pred * &s1g,
    };
    let eps = (x_t - &x0 * &sg) / &s1g;
    (x0, eps)
}

/// The prediction of type `kind` that corresponds to `x0` at `x_t` (`get_pred_from_x0_xt`).
pub fn pred_from_x0(x_t: &Tensor, x0: &Tensor, g: &Tensor, kind: PredictionType) -> Tensor {
    let g = b4(g);
    let sg = g.sqrt();
    let s1g = (g.ones_like() - &g).sqrt();
    match kind {
        PredictionType::Ddpm | PredictionType::Ddim => (x_t - x0 * &sg) / &s1g,
        PredictionType::VPrediction => (&sg * x_t - x0) / &s1g,
    }
}

/// The training target of type `kind` (`get_prediction_targets`).
pub fn target(images: &Tensor, eps: &Tensor, g: &Tensor, kind: PredictionType) -> Tensor {
    match kind {
        PredictionType::Ddpm | PredictionType::Ddim => eps.shallow_clone(),
        PredictionType::VPrediction => {
            let g = b4(g);
            g.sqrt() * eps - (g.ones_like() - &g).sqrt() * images
        }
    }
}

impl NestedDiffusion {
    /// The diffusion for levels with `scales` (outermost first; `[1]` for a plain UNet).
    pub fn new(cfg: &DiffusionConfig, scales: &[i64], device: Device) -> Result<Self> {
        cfg.validate()?;
        let levels = scales.len();
        if levels == 0 || scales[levels - 1] != 1 {
            return Err(Error::Diffusion(format!(
                "scales {scales:?} must end with 1"
            )));
        }
        let sc = &cfg.sampler_config;
        let signal_scale = scales
            .iter()
            .map(|&s| {
                if levels == 1 {
                    sc.rescale_signal.unwrap_or(1.0)
                } else if sc.schedule_shifted {
                    1.0
                } else {
                    s as f64
                }
            })
            .collect();
        Ok(NestedDiffusion {
            schedule: Schedule::new(sc, scales, device),
            scales: scales.to_vec(),
            signal_scale,
            weights: cfg.level_weights(levels)?,
            cfg: cfg.clone(),
        })
    }

    /// For the model built from `model`'s config.
    pub fn for_model(model: &MdmUNet, cfg: &DiffusionConfig, device: Device) -> Result<Self> {
        Self::new(cfg, &model.scales(), device)
    }

    pub fn levels(&self) -> usize {
        self.scales.len()
    }

    /// The image pyramid: level i = avg_pool(level i−1, ratio).
    pub fn pyramid(&self, images: &Tensor) -> Vec<Tensor> {
        let mut out = vec![images.shallow_clone()];
        for i in 1..self.levels() {
            let rr = self.scales[i - 1] / self.scales[i];
            let prev = &out[i - 1];
            out.push(prev.avg_pool2d([rr, rr], [rr, rr], [0, 0], false, true, None));
        }
        out
    }

    /// Noisy inputs and targets for given images (level 0), per-level noise and times: the
    /// grouped inputs of a batch drawn wholly at the outermost level.
    pub fn inputs(&self, images: &Tensor, eps: Vec<Tensor>, time: &Tensor) -> Result<TrainInputs> {
        self.inputs_grouped_with(&self.outer_groups(images)?, time, Some(eps))
    }

    /// Level groups for images (B, C, S, S) all drawn at the outermost level: the images,
    /// then an empty group per inner level.
    pub fn outer_groups(&self, images: &Tensor) -> Result<Vec<Tensor>> {
        let s = images.size();
        if s.len() != 4 {
            return Err(Error::input(format!("images must be (B, C, S, S), got {s:?}")));
        }
        let mut groups = vec![images.shallow_clone()];
        for &sc in &self.scales[1..] {
            let side = s[2] * sc / self.scales[0];
            groups.push(Tensor::zeros([0, s[1], side, side], (images.kind(), images.device())));
        }
        Ok(groups)
    }

    /// Draws t and the noise (libtorch's RNG), then [`NestedDiffusion::inputs`].
    pub fn sample_inputs(&self, images: &Tensor) -> Result<TrainInputs> {
        let b = images.size()[0];
        let time = Tensor::randint(self.schedule.steps, [b], (Kind::Int64, images.device()));
        let eps = self
            .pyramid(images)
            .iter()
            .map(|x| x.randn_like())
            .collect();
        self.inputs(images, eps, &time)
    }

    /// Inputs for a batch whose samples start at different levels (the loader's
    /// mixed-resolution batches): `groups[i]` holds the samples drawn at level i's side
    /// (possibly none). Level i trains on the samples of groups 0..=i, the outer ones
    /// average-pooled down, so `x_t[i]` has their count of rows; `time` covers the whole batch
    /// in group order. Draws the noise with libtorch's RNG.
    pub fn inputs_grouped(&self, groups: &[Tensor], time: &Tensor) -> Result<TrainInputs> {
        self.inputs_grouped_with(groups, time, None)
    }

    /// [`NestedDiffusion::inputs_grouped`] with given noise (one tensor per level, shaped like
    /// that level's images), e.g. drawn per sample so that it does not depend on the batch.
    pub fn inputs_grouped_with(&self, groups: &[Tensor], time: &Tensor, noise: Option<Vec<Tensor>>) -> Result<TrainInputs> {
        if groups.len() != self.levels() {
            return Err(Error::input(format!("{} image groups for {} levels", groups.len(), self.levels())));
        }
        let mut images: Vec<Tensor> = vec![];
        for (i, g) in groups.iter().enumerate() {
            let x = match images.last() {
                None => g.shallow_clone(),
                Some(prev) => {
                    let rr = self.scales[i - 1] / self.scales[i];
                    let pooled = prev.avg_pool2d([rr, rr], [rr, rr], [0, 0], false, true, None);
                    Tensor::cat(&[&pooled, g], 0)
                }
            };
            images.push(x);
        }
        let b = time.size()[0];
        if images.last().map(|x| x.size()[0]) != Some(b) {
            return Err(Error::input("time must have one entry per sample of all groups"));
        }
        if let Some(noise) = &noise {
            if noise.len() != images.len() || noise.iter().zip(&images).any(|(e, x)| e.size() != x.size()) {
                return Err(Error::input("noise must have one tensor per level with that level's image shape"));
            }
        }
        let (mut gamma, mut gamma_last, mut x_t, mut targets, mut eps) = (vec![], vec![], vec![], vec![], vec![]);
        let tgt = self.cfg.loss_target();
        for (i, x) in images.iter().enumerate() {
            let n = x.size()[0];
            let t = time.narrow(0, 0, n);
            let e = match &noise {
                Some(noise) => noise[i].to_kind(x.kind()),
                None => x.randn_like(),
            };
            let g = self.schedule.gamma(i, &(&t + 1));
            let gl = self.schedule.gamma(i, &t);
            let xs = x / self.signal_scale[i];
            let gb = b4(&g);
            x_t.push(gb.sqrt() * &xs + (gb.ones_like() - &gb).sqrt() * &e);
            targets.push(target(&xs, &e, &g, tgt));
            gamma.push(g);
            gamma_last.push(gl);
            eps.push(e);
        }
        Ok(TrainInputs { time: time.shallow_clone(), gamma, gamma_last, images, eps, x_t, targets, shares: None })
    }

    /// The loss given the network's predictions (one per level, each with the rows of that
    /// level's `x_t`, as returned by the model on `inputs.x_t`).
    pub fn loss(&self, inputs: &TrainInputs, preds: &[Tensor]) -> Result<LossTerms> {
        let b = inputs.time.size()[0];
        if preds.len() != self.levels() {
            return Err(Error::input(format!(
                "{} predictions for {} levels",
                preds.len(),
                self.levels()
            )));
        }
        let pt = self.cfg.sampler_config.prediction_type;
        let tt = self.cfg.loss_target();
        let mut per_level = vec![];
        let mut pft = vec![];
        for i in 0..self.levels() {
            // This level's rows: the whole batch, or the samples of groups 0..=i.
            let rows = inputs.x_t[i].size()[0];
            let p = preds[i].shallow_clone();
            if p.size()[0] != rows {
                return Err(Error::input(format!(
                    "prediction {i} has batch {}, expected {rows}",
                    p.size()[0]
                )));
            }
            let x_t = &inputs.x_t[i];
            let g = &inputs.gamma[i];
            let pred = if pt == tt {
                p
            } else {
                let (x0, _) = x0_eps_from_pred(x_t, &p.to_kind(x_t.kind()), g, pt);
                pred_from_x0(x_t, &x0, g, tt)
            };
            let mut l = if i == 0 || self.cfg.use_double_loss {
                (&pred - &inputs.targets[i]).square().mean_dim(
                    [1i64, 2, 3].as_slice(),
                    false,
                    Kind::Float,
                )
            } else {
                pred.sum(Kind::Float) * 0.0 * Tensor::ones([rows], (Kind::Float, pred.device()))
            };
            // The level's share of the batch is rows/b, or of the global batch (or ml-mdm's
            // nominal split) when given; renormalise by it (as ml-mdm's mixed_ratio does) and
            // leave the samples the level does not train at zero.
            if rows < b || inputs.shares.is_some() {
                let share = inputs.shares.as_ref().map_or(rows as f64 / b as f64, |s| s[i]);
                l = if rows > 0 { l / share } else { l };
                l = l.constant_pad_nd([0, b - rows]);
            }
            per_level.push(l * self.weights[i]);
            pft.push(pred);
        }
        let total = per_level
            .iter()
            .skip(1)
            .fold(per_level[0].shallow_clone(), |a, l| a + l);
        Ok(LossTerms {
            per_level,
            total,
            pred_for_training: pft,
        })
    }
}
