//! Feature statistics {mu, sigma} in f64, and their streaming accumulation.
//!
//! [`Accumulator`] takes `[n, dims]` batches of features (any float kind, any device) and merges
//! per-batch means and centred scatter matrices with Chan et al.'s pairwise update, all in f64:
//! no sum of squares of raw values is ever formed, so a large common offset in the features costs
//! no precision. The result equals numpy's `np.mean(x, 0)` and `np.cov(x, rowvar=False)`.
//!
//! ```no_run
//! use mdm_metrics::stats::Accumulator;
//! use tch::{Kind, Tensor};
//!
//! let mut acc = Accumulator::new(2048);
//! for _ in 0..4 {
//!     acc.add(&Tensor::randn([64, 2048], (Kind::Float, tch::Device::Cpu)))?;
//! }
//! let stats = acc.finish()?;
//! assert_eq!(stats.n, Some(256));
//! # Ok::<(), mdm_metrics::Error>(())
//! ```

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// Mean and covariance of `n` feature vectors of `dims` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub mu: Vec<f64>,
    /// Row-major `dims × dims`, ddof = 1 (numpy's `np.cov(x, rowvar=False)`).
    pub sigma: Vec<f64>,
    /// Number of feature vectors; `None` when read from a file that does not record it.
    pub n: Option<usize>,
}

impl Stats {
    /// The feature dimension (`mu.len()`).
    pub fn dims(&self) -> usize {
        self.mu.len()
    }

    /// Checks that `sigma` is `dims × dims`, that `dims > 0` and that every value is finite.
    pub fn validate(&self) -> Result<()> {
        let d = self.dims();
        if d == 0 {
            return Err(Error::Input("statistics with 0 dimensions".into()));
        }
        if self.sigma.len() != d * d {
            return Err(Error::Input(format!(
                "sigma has {} values, mu has {d}: expected {d} x {d} = {}",
                self.sigma.len(),
                d * d
            )));
        }
        if let Some(i) = self.mu.iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!("mu[{i}] is {}", self.mu[i])));
        }
        if let Some(i) = self.sigma.iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!(
                "sigma[{}, {}] is {}",
                i / d,
                i % d,
                self.sigma[i]
            )));
        }
        Ok(())
    }

    /// Statistics of one `[n, dims]` tensor of features (see [`Accumulator`]).
    pub fn from_features(x: &Tensor) -> Result<Stats> {
        let size = x.size();
        if size.len() != 2 {
            return Err(Error::Input(format!("features must be [n, dims], got {size:?}")));
        }
        let mut acc = Accumulator::new(size[1] as usize);
        acc.add(x)?;
        acc.finish()
    }
}

/// Streaming mean and covariance of feature batches, in f64 on the CPU.
///
/// Each batch is reduced on its own device (CUDA stays on the GPU) to its mean and centred scatter
/// matrix `Σ (x - m_b)(x - m_b)ᵀ`; those are merged on the CPU:
/// `M2 = M2_a + M2_b + δδᵀ · n_a n_b / n` with `δ = m_b - m_a`.
pub struct Accumulator {
    dims: usize,
    n: usize,
    /// `[dims]` f64 on the CPU; `None` until the first non-empty batch.
    mean: Option<Tensor>,
    /// `[dims, dims]` f64 on the CPU: the sum of centred outer products.
    m2: Option<Tensor>,
}

impl Accumulator {
    /// An empty accumulator for features of `dims` values.
    pub fn new(dims: usize) -> Accumulator {
        Accumulator {
            dims,
            n: 0,
            mean: None,
            m2: None,
        }
    }

    /// The feature dimension.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// The number of feature vectors added so far.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Adds a `[n, dims]` batch of features of any float kind; an empty batch is a no-op.
    /// Non-finite values are an error (and leave the accumulator as it was).
    pub fn add(&mut self, x: &Tensor) -> Result<()> {
        let size = x.size();
        if size.len() != 2 || size[1] != self.dims as i64 {
            return Err(Error::Input(format!(
                "features must be [n, {}], got {size:?}",
                self.dims
            )));
        }
        if !x.f_is_floating_point()? {
            return Err(Error::Input(format!(
                "features must be floating point, got {:?}",
                x.kind()
            )));
        }
        let nb = size[0] as usize;
        if nb == 0 {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        // f64 on CUDA is exact enough and saves the copy; other devices may lack f64.
        let dev = match x.device() {
            d @ Device::Cuda(_) => d,
            _ => Device::Cpu,
        };
        let xb = x.f_to_device(dev)?.f_to_kind(Kind::Double)?;
        if !bool::try_from(xb.f_isfinite()?.f_all()?)? {
            return Err(Error::Input("features contain NaN or infinity".into()));
        }
        let mb = xb.f_mean_dim(0, false, Kind::Double)?;
        let c = xb.f_sub(&mb)?;
        let cb = c.f_tr()?.f_matmul(&c)?.f_to_device(Device::Cpu)?;
        let mb = mb.f_to_device(Device::Cpu)?;
        match (&self.mean, &self.m2) {
            (Some(ma), Some(m2a)) => {
                let na = self.n as f64;
                let nbf = nb as f64;
                let n = na + nbf;
                let delta = mb.f_sub(ma)?;
                let mean = ma.f_add(&delta.f_mul_scalar(nbf / n)?)?;
                let m2 = m2a
                    .f_add(&cb)?
                    .f_add(&delta.f_outer(&delta)?.f_mul_scalar(na * nbf / n)?)?;
                self.mean = Some(mean);
                self.m2 = Some(m2);
            }
            _ => {
                self.mean = Some(mb);
                self.m2 = Some(cb);
            }
        }
        self.n += nb;
        Ok(())
    }

    /// Mean and covariance (ddof = 1, symmetrised) of everything added; at least 2 vectors.
    pub fn finish(self) -> Result<Stats> {
        let (mean, m2) = match (self.mean, self.m2) {
            (Some(m), Some(s)) if self.n >= 2 => (m, s),
            _ => {
                return Err(Error::Input(format!(
                    "covariance needs at least 2 feature vectors, got {}",
                    self.n
                )))
            }
        };
        let sigma = m2.f_add(&m2.f_tr()?)?.f_mul_scalar(0.5 / (self.n as f64 - 1.0))?;
        Ok(Stats {
            mu: Vec::<f64>::try_from(&mean)?,
            sigma: Vec::<f64>::try_from(&sigma.f_contiguous()?.f_view([-1])?)?,
            n: Some(self.n),
        })
    }
}
