//! Sampling: one DDPM/DDIM step on all levels jointly (a pure function of the prediction),
//! ml-mdm's timesteps, x0 thresholding, classifier-free guidance and the sampling loop.

use tch::{Kind, Tensor};

use super::loss::{x0_eps_from_pred, NestedDiffusion};
use super::ThresholdType;
use crate::error::{Error, Result};
use crate::model::{Conditioning, MdmUNet, Micros, ModelInput, Trace};

/// The result of one step: per level, the (thresholded) x0 estimate and x at the earlier time.
#[derive(Debug)]
pub struct StepOutput {
    pub x0: Vec<Tensor>,
    pub x_prev: Vec<Tensor>,
}

/// The update rule of a sampling step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// Ancestral DDPM: the posterior mean plus its noise.
    Ddpm,
    /// DDIM with η (0: deterministic; 1: DDPM's variance).
    Ddim { eta: f64 },
}

impl Sampler {
    /// The name recorded beside samples: `ddpm`, `ddim(eta=…)`.
    pub fn name(&self) -> String {
        match self {
            Sampler::Ddpm => "ddpm".into(),
            Sampler::Ddim { eta } => format!("ddim(eta={eta})"),
        }
    }
}

/// How to sample.
#[derive(Debug, Clone)]
pub struct SampleOptions {
    /// `None`: every step N..1 (ml-mdm's default); `Some(n)`: n steps on
    /// [`NestedDiffusion::timesteps`]`(n)`.
    pub steps: Option<usize>,
    pub sampler: Sampler,
    /// Classifier-free guidance scale (1 = off).
    pub guidance_scale: f64,
    /// Overrides the config's `threshold_function`.
    pub threshold: Option<ThresholdType>,
    /// Frames per clip (video models): the noise rows are clips' frames, consecutive.
    pub frames: i64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            steps: Some(250),
            sampler: Sampler::Ddpm,
            guidance_scale: 1.0,
            threshold: None,
            frames: 1,
        }
    }
}

/// Imagen's dynamic thresholding: per sample, s = quantile(|x|, p) clamped to [1, max];
/// x ← clamp(x, −s, s)/s.
pub fn dynamic_threshold(x: &Tensor, percentile: f64, max: f64) -> Tensor {
    let kind = x.kind();
    let size = x.size();
    let flat = x.to_kind(Kind::Float).reshape([size[0], -1]);
    let s = flat
        .abs()
        .quantile_scalar(percentile, 1, true, "linear")
        .clamp(1.0, max);
    let neg = -&s;
    flat.clamp_tensor(Some(&neg), Some(&s))
        .divide(&s)
        .reshape(size.as_slice())
        .to_kind(kind)
}

/// ml-mdm's `clip_sample`: thresholds x0 in the unscaled signal space (`scale` = the
/// level's signal divisor).
pub fn threshold(x0: &Tensor, kind: ThresholdType, scale: f64) -> Tensor {
    match kind {
        ThresholdType::None => x0.shallow_clone(),
        ThresholdType::Clip => (x0 * scale).clip(-1.0, 1.0) / scale,
        ThresholdType::Dynamic => dynamic_threshold(&(x0 * scale), 0.995, 100.0) / scale,
        ThresholdType::DynamicIf => dynamic_threshold(&(x0 * scale), 0.95, 1.5) / scale,
    }
}

impl NestedDiffusion {
    /// ml-mdm's `set_timesteps(n)`: `round(arange(n+1)·(N+1)/(n+1))`, reversed (N … 0).
    pub fn timesteps(&self, n: usize) -> Vec<i64> {
        let ratio = (self.schedule.steps + 1) as f64 / (n + 1) as f64;
        (0..=n)
            .rev()
            .map(|i| (i as f64 * ratio).round_ties_even() as i64)
            .collect()
    }

    /// One step from `t` to `t_last` given the network's prediction on each level (pure but
    /// for `noise`: pass `Some` for a DDPM/DDIM(η>0) step that adds noise). ml-mdm's
    /// `NestedSampler.get_xt_minus_1` → `get_prediction_xt_last`; γ = γ'[t], γ_last = γ'[t_last].
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        x_t: &[Tensor],
        pred: &[Tensor],
        t: i64,
        t_last: i64,
        sampler: Sampler,
        noise: Option<&[Tensor]>,
        thresh: ThresholdType,
    ) -> Result<StepOutput> {
        if x_t.len() != self.levels()
            || pred.len() != self.levels()
            || noise.is_some_and(|n| n.len() != self.levels())
        {
            return Err(Error::input(
                "step needs one x_t, prediction (and noise) per level",
            ));
        }
        if !(0..t).contains(&t_last) || t > self.schedule.steps {
            return Err(Error::input(format!(
                "step from t={t} to {t_last} is out of range"
            )));
        }
        let pt = self.cfg.sampler_config.prediction_type;
        let (mut x0s, mut xs) = (vec![], vec![]);
        for i in 0..self.levels() {
            let b = x_t[i].size()[0];
            let dev = x_t[i].device();
            let idx = |v: i64| Tensor::full([b], v, (Kind::Int64, dev));
            let g = self.schedule.gamma(i, &idx(t)).view([-1, 1, 1, 1]);
            let gl = self.schedule.gamma(i, &idx(t_last)).view([-1, 1, 1, 1]);
            let alpha = &g / &gl;
            let beta = alpha.ones_like() - &alpha;
            let one_g = g.ones_like() - &g;
            let one_gl = gl.ones_like() - &gl;
            let mut beta_tilde = &beta * &one_gl / &one_g;
            let (x0, _) =
                x0_eps_from_pred(&x_t[i], &pred[i].to_kind(x_t[i].kind()), &g.view([-1]), pt);
            let x0 = threshold(&x0, thresh, self.signal_scale[i]);
            let mut add_noise = noise.is_some();
            let mut x = match sampler {
                Sampler::Ddpm => {
                    &x0 * &beta * gl.sqrt() / &one_g + &x_t[i] * alpha.sqrt() * &one_gl / &one_g
                }
                Sampler::Ddim { eta } => {
                    let eps = (&x_t[i] - &x0 * g.sqrt()) / one_g.sqrt();
                    if eta > 0.0 {
                        beta_tilde = beta_tilde * (eta * eta);
                        &x0 * gl.sqrt() + eps * (&one_gl - &beta_tilde).sqrt()
                    } else {
                        add_noise = false;
                        &x0 * gl.sqrt() + eps * one_gl.sqrt()
                    }
                }
            };
            if add_noise {
                if let Some(n) = noise {
                    x = x + beta_tilde.sqrt() * &n[i];
                }
            }
            x0s.push(x0);
            xs.push(x);
        }
        Ok(StepOutput {
            x0: x0s,
            x_prev: xs,
        })
    }

    /// Runs the model with classifier-free guidance: `uncond + s·(cond − uncond)` on every
    /// level. `uncond` is the empty (or negative) prompt, or the null class. `time`, the
    /// conditions and `micros` are per clip of `frames` frames (1 for images).
    #[allow(clippy::too_many_arguments)]
    pub fn guided_prediction(
        &self,
        model: &MdmUNet,
        x_t: &[Tensor],
        time: &Tensor,
        cond: &Conditioning,
        uncond: Option<&Conditioning>,
        micros: &Micros,
        guidance_scale: f64,
        frames: i64,
    ) -> Result<Vec<Tensor>> {
        match uncond {
            Some(u) if guidance_scale != 1.0 => {
                let both = Conditioning::cat(u, cond)?;
                let x2: Vec<Tensor> = x_t.iter().map(|x| Tensor::cat(&[x, x], 0)).collect();
                let t2 = Tensor::cat(&[time, time], 0);
                let m2: Micros = micros
                    .iter()
                    .map(|(k, v)| (k.clone(), Tensor::cat(&[v, v], 0)))
                    .collect();
                let input = ModelInput::new(&x2, &t2, &both).with_micros(&m2).with_frames(frames);
                let p = model.forward(&input, false, &mut Trace::off())?;
                Ok(p.iter()
                    .map(|p| {
                        let c = p.chunk(2, 0);
                        &c[0] + (&c[1] - &c[0]) * guidance_scale
                    })
                    .collect())
            }
            _ => model.forward(&ModelInput::new(x_t, time, cond).with_micros(micros).with_frames(frames), false, &mut Trace::off()),
        }
    }

    /// Samples from Gaussian noise on every level with the model: [`NestedDiffusion::sample_with`]
    /// over its [`NestedDiffusion::guided_prediction`]. `noise[i]` is level i's start
    /// (B,C,S_i,S_i), B = clips × `opts.frames`. Returns every level's final sample, clipped
    /// to [−1, 1] (outermost first).
    pub fn sample(
        &self,
        model: &MdmUNet,
        noise: Vec<Tensor>,
        cond: &Conditioning,
        uncond: Option<&Conditioning>,
        micros: &Micros,
        opts: &SampleOptions,
    ) -> Result<Vec<Tensor>> {
        if opts.guidance_scale != 1.0 && uncond.is_none() {
            return Err(Error::input(
                "guidance needs an unconditional (empty/negative prompt or null class) input",
            ));
        }
        self.sample_with(noise, opts, |x, time| {
            self.guided_prediction(model, x, time, cond, uncond, micros, opts.guidance_scale, opts.frames)
        })
    }

    /// The sampling loop over any denoiser: `denoise(x_t, time)` returns every level's
    /// prediction (of the config's `prediction_type`) for the network time `time` (B,) =
    /// t − 1 per clip. Draws each step's noise with libtorch's RNG; [`Sampler::Ddim`] with
    /// η = 0 draws none.
    pub fn sample_with(
        &self,
        noise: Vec<Tensor>,
        opts: &SampleOptions,
        mut denoise: impl FnMut(&[Tensor], &Tensor) -> Result<Vec<Tensor>>,
    ) -> Result<Vec<Tensor>> {
        let _guard = tch::no_grad_guard();
        let thresh = opts
            .threshold
            .unwrap_or(self.cfg.sampler_config.threshold_function);
        let steps = match opts.steps {
            None => self.timesteps(self.schedule.steps as usize),
            Some(n) if n >= 1 => self.timesteps(n),
            Some(_) => return Err(Error::input("sampling needs at least one step")),
        };
        let mut x = noise;
        if x.len() != self.levels() {
            return Err(Error::input(format!("{} noise tensors for {} levels", x.len(), self.levels())));
        }
        if opts.frames < 1 || x[0].size()[0] % opts.frames != 0 {
            return Err(Error::input(format!("{} noise rows are not whole clips of {} frames", x[0].size()[0], opts.frames)));
        }
        let b = x[0].size()[0] / opts.frames;
        for w in steps.windows(2) {
            let (t, t_last) = (w[0], w[1]);
            let time = Tensor::full([b], t - 1, (Kind::Int64, x[0].device()));
            let pred = denoise(&x, &time)?;
            // ml-mdm adds noise on every step but t = 1 (at t_last = 0 its scale is 0).
            let noise: Option<Vec<Tensor>> =
                (t != 1 && opts.sampler != Sampler::Ddim { eta: 0.0 }).then(|| x.iter().map(|v| v.randn_like()).collect());
            x = self.step(&x, &pred, t, t_last, opts.sampler, noise.as_deref(), thresh)?.x_prev;
        }
        Ok(x.iter()
            .zip(&self.signal_scale)
            .map(|(v, s)| (v * *s).clip(-1.0, 1.0))
            .collect())
    }
}
