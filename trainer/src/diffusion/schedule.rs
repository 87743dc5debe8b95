//! Noise schedules: the ᾱ ("gamma") table over `N + 1` indices (index 0 = 1, clean) and its
//! per-level shift.

use tch::{Device, Kind, Tensor};

use super::{SamplerConfig, ScheduleType};

/// `squaredcos_cap_v2` in f64: `β_i = min(1 − ᾱ(i/N)/ᾱ((i−1)/N), 0.999)` with
/// `ᾱ(s) = cos((s + 0.008)/1.008 · π/2)²`, `γ = exp(cumsum(log(1 − β)))`, `γ_0 = 1`.
pub fn squaredcos_cap_v2(n: i64) -> Vec<f64> {
    let abar = |s: f64| {
        ((s + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    let mut betas = vec![0.0];
    for i in 0..n {
        let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
        betas.push((1.0 - abar(t2) / abar(t1)).min(0.999));
    }
    cumprod_alphas(&betas)
}

/// ml-mdm's `schedule_ddpm_defults`: linear betas.
pub fn linear_ddpm(n: i64, beta_start: f64, beta_end: f64) -> Vec<f64> {
    let mut betas = vec![0.0];
    for i in 0..n {
        let t = if n > 1 {
            i as f64 / (n - 1) as f64
        } else {
            0.0
        };
        betas.push(beta_start + (beta_end - beta_start) * t);
    }
    cumprod_alphas(&betas)
}

/// ml-mdm's `schedule_cosine` (log-SNR from 5 to −5).
pub fn cosine_logsnr(n: i64) -> Vec<f64> {
    let (lmin, lmax) = (-5.0f64, 5.0f64);
    let b = (-0.5 * lmax).exp().atan();
    let a = (-0.5 * lmin).exp().atan() - b;
    let mut g = vec![1.0];
    for i in 0..n {
        let t = if n > 1 {
            i as f64 / (n - 1) as f64
        } else {
            0.0
        };
        let logsnr = -2.0 * (a * t + b).tan().ln();
        g.push(1.0 / (1.0 + (-logsnr).exp()));
    }
    g
}

fn cumprod_alphas(betas: &[f64]) -> Vec<f64> {
    let mut acc = 0.0;
    betas
        .iter()
        .map(|b| {
            acc += (1.0 - b).ln();
            acc.exp()
        })
        .collect()
}

/// Divides the SNR by `factor` (fp32, as ml-mdm): `γ' = 1/(1 + 1/(snr/factor))`,
/// `snr = γ/(1−γ)`. `factor <= 1` leaves γ unchanged.
pub fn shift_gamma(gamma: &Tensor, factor: f64) -> Tensor {
    if factor > 1.0 {
        let snr = gamma / (gamma.ones_like() - gamma);
        let scaled = snr / factor;
        (scaled.reciprocal() + 1.0).reciprocal()
    } else {
        gamma.shallow_clone()
    }
}

/// The schedule of a nested diffusion: the base table and one shifted table per level.
#[derive(Debug)]
pub struct Schedule {
    /// Number of diffusion steps N.
    pub steps: i64,
    /// Base ᾱ table in f64 (N+1).
    pub gammas_f64: Vec<f64>,
    /// Base table in fp32 after `rescale_schedule` (what the sampler reads), (N+1,).
    pub gammas: Tensor,
    /// Per-level factor `s^p` (1 where unshifted).
    pub shift_factors: Vec<f64>,
    /// Per-level shifted tables (L, N+1).
    pub shifted: Tensor,
    /// ml-mdm's VDM loss weights (N+1,), for completeness.
    pub vdm_loss_weights: Tensor,
}

impl Schedule {
    /// Builds the tables for levels with `scales` (outermost first, innermost 1).
    pub fn new(c: &SamplerConfig, scales: &[i64], device: Device) -> Schedule {
        let n = c.num_diffusion_steps;
        let g64 = match c.schedule_type {
            ScheduleType::Deepfloyd => squaredcos_cap_v2(n),
            ScheduleType::Ddpm => linear_ddpm(n, c.beta_start, c.beta_end),
            ScheduleType::Cosine => cosine_logsnr(n),
        };
        let base = Tensor::from_slice(&g64).to_kind(Kind::Float);
        let gammas = shift_gamma(&base, c.rescale_schedule.powf(c.schedule_shifted_power));
        let shift_factors: Vec<f64> = scales
            .iter()
            .map(|&s| {
                if c.schedule_shifted && s > 1 {
                    (s as f64).powf(c.schedule_shifted_power)
                } else {
                    1.0
                }
            })
            .collect();
        let shifted = Tensor::stack(
            &shift_factors
                .iter()
                .map(|&f| shift_gamma(&gammas, f))
                .collect::<Vec<_>>(),
            0,
        );
        let g = gammas.narrow(0, 2, n - 1);
        let gl = gammas.narrow(0, 1, n - 1);
        let w = &gl * (g.ones_like() - &g) / (gl.ones_like() - &gl) / &g - 1.0;
        let vdm = Tensor::cat(&[w.narrow(0, 0, 1), w.narrow(0, 0, 1), w], 0);
        Schedule {
            steps: n,
            gammas_f64: g64,
            gammas: gammas.to_device(device),
            shift_factors,
            shifted: shifted.to_device(device),
            vdm_loss_weights: vdm.to_device(device),
        }
    }

    /// Shifted γ of `level` at integer indices `idx` (any shape, int64).
    pub fn gamma(&self, level: usize, idx: &Tensor) -> Tensor {
        self.shifted
            .get(level as i64)
            .index_select(0, &idx.flatten(0, -1))
            .view_as(idx)
    }
}
