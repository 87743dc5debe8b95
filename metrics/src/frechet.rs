//! The Fréchet distance between two Gaussians, ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr √(Σ1 Σ2), in f64.
//!
//! pytorch-fid takes `scipy.linalg.sqrtm(Σ1 Σ2)`, a complex Schur-based square root whose
//! imaginary drift it discards; torchmetrics sums the square roots of `eigvals(Σ1 Σ2)`. Both are
//! the trace of √(√Σ1 Σ2 √Σ1), a symmetric positive semi-definite matrix, which is what we compute,
//! without complex arithmetic:
//!
//! 1. `Σk = Vk diag(wk) Vkᵀ` (symmetric eigendecompositions, `wk` clamped at 0), so
//!    `√Σk = Vk diag(√wk) Vkᵀ`;
//! 2. `√Σ1 Σ2 √Σ1 = AAᵀ` with `A = √Σ1 √Σ2`, whose singular values equal those of
//!    `B = diag(√w1) (V1ᵀ V2) diag(√w2)` (orthogonal factors drop out);
//! 3. tr √(√Σ1 Σ2 √Σ1) = Σ σ(B), the sum of B's singular values.
//!
//! Taking singular values of B rather than eigenvalues of AAᵀ keeps the null directions of
//! rank-deficient covariances at rounding level (ε‖Σ‖) instead of its square root (√ε‖Σ‖), so
//! FID(X, X) stays ~1e-13 even when n < dims.
//!
//! As in pytorch-fid, `eps · I` (eps = 1e-6) is added to both covariances inside the square root
//! only when the decomposition fails or is not finite; the distance reports it.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::stats::Stats;

/// The diagonal offset pytorch-fid's `calculate_frechet_distance` falls back to.
pub const EPS: f64 = 1e-6;

/// A Fréchet distance with its terms and whatever should be said about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Distance {
    /// ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr √(Σ1 Σ2).
    pub value: f64,
    /// ‖μ1 − μ2‖².
    pub mean_term: f64,
    /// tr Σ1 and tr Σ2.
    pub trace_a: f64,
    pub trace_b: f64,
    /// tr √(Σ1 Σ2).
    pub trace_sqrt: f64,
    /// The offset added to both covariance diagonals inside the square root, when one was needed.
    pub eps: Option<f64>,
    /// The feature dimension.
    pub dims: usize,
    /// Rank-deficient covariances (n < dims + 1), non-PSD inputs, the eps fallback.
    pub warnings: Vec<String>,
}

/// The Fréchet distance between the Gaussians of `a` and `b` (see the module docs).
///
/// Errors: [`Error::DimsMismatch`] for different dimensions, [`Error::Input`] for statistics that
/// are malformed or not finite.
pub fn frechet_distance(a: &Stats, b: &Stats) -> Result<Distance> {
    if a.dims() != b.dims() {
        return Err(Error::DimsMismatch {
            a: a.dims(),
            b: b.dims(),
        });
    }
    a.validate()
        .map_err(|e| Error::Input(format!("first statistics: {e}")))?;
    b.validate()
        .map_err(|e| Error::Input(format!("second statistics: {e}")))?;
    let d = a.dims();
    let _guard = tch::no_grad_guard();
    let mut warnings = Vec::new();
    for (name, s) in [("first", a), ("second", b)] {
        if let Some(n) = s.n.filter(|&n| n < d + 1) {
            warnings.push(format!(
                "{name} statistics: n = {n} < dims + 1 = {}: the covariance is rank-deficient, \
                 so FID is strongly biased (use at least {} samples)",
                d + 1,
                d + 1
            ));
        }
    }

    let mean_term: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace = |s: &Stats| (0..d).map(|i| s.sigma[i * d + i]).sum::<f64>();
    let (trace_a, trace_b) = (trace(a), trace(b));
    let s1 = sym(&a.sigma, d)?;
    let s2 = sym(&b.sigma, d)?;

    let (trace_sqrt, eps) = match trace_sqrt_product(&s1, &s2, &mut warnings) {
        Ok(t) => (t, None),
        Err(why) => {
            warnings.push(format!(
                "the square root of sigma1 sigma2 failed ({why}); adding {EPS:e} to the diagonal of both covariances"
            ));
            let eye = Tensor::f_eye(d as i64, (Kind::Double, Device::Cpu))?.f_mul_scalar(EPS)?;
            let t = trace_sqrt_product(&s1.f_add(&eye)?, &s2.f_add(&eye)?, &mut warnings)
                .map_err(|why| Error::Input(format!("the square root of sigma1 sigma2 failed even with eps: {why}")))?;
            (t, Some(EPS))
        }
    };
    Ok(Distance {
        value: mean_term + trace_a + trace_b - 2.0 * trace_sqrt,
        mean_term,
        trace_a,
        trace_b,
        trace_sqrt,
        eps,
        dims: d,
        warnings,
    })
}

/// A `d × d` f64 CPU tensor of a row-major covariance, symmetrised ((S + Sᵀ)/2).
fn sym(sigma: &[f64], d: usize) -> Result<Tensor> {
    let s = Tensor::from_slice(sigma).f_view([d as i64, d as i64])?;
    Ok(s.f_add(&s.f_tr()?)?.f_mul_scalar(0.5)?)
}

/// tr √(√Σ1 Σ2 √Σ1) as the sum of the singular values of diag(√w1) V1ᵀV2 diag(√w2).
/// `Err` (a reason) when a decomposition fails or gives non-finite values.
fn trace_sqrt_product(s1: &Tensor, s2: &Tensor, warnings: &mut Vec<String>) -> Result<f64, String> {
    let root = |s: &Tensor, name: &str, warnings: &mut Vec<String>| -> Result<(Tensor, Tensor), String> {
        let (w, v) = s.f_linalg_eigh("L").map_err(|e| format!("eigh of {name}: {e}"))?;
        finite(&w, name)?;
        finite(&v, name)?;
        let wv = Vec::<f64>::try_from(&w).map_err(|e| e.to_string())?;
        let (lo, hi) = wv
            .iter()
            .fold((f64::INFINITY, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x.abs())));
        // Rounding leaves eigenvalues of about -d·ε·‖Σ‖ in null directions; more is not a covariance.
        if lo < -1e-6 * hi {
            warnings.push(format!(
                "{name} is not positive semi-definite (eigenvalue {lo:e}, largest {hi:e}); negative eigenvalues are taken as 0"
            ));
        }
        let r = w.f_clamp_min(0.0).and_then(|w| w.f_sqrt()).map_err(|e| e.to_string())?;
        Ok((r, v))
    };
    let (r1, v1) = root(s1, "sigma1", warnings)?;
    let (r2, v2) = root(s2, "sigma2", warnings)?;
    let b = (|| -> Result<Tensor, tch::TchError> {
        r1.f_unsqueeze(1)?
            .f_mul(&v1.f_tr()?.f_matmul(&v2)?)?
            .f_mul(&r2.f_unsqueeze(0)?)
    })()
    .map_err(|e| e.to_string())?;
    let (_, sv, _) = b.f_svd(true, false).map_err(|e| format!("svd: {e}"))?;
    finite(&sv, "the singular values")?;
    let t = sv
        .f_sum(Kind::Double)
        .and_then(|t| f64::try_from(&t))
        .map_err(|e| e.to_string())?;
    Ok(t)
}

fn finite(t: &Tensor, name: &str) -> Result<(), String> {
    let ok = t
        .f_isfinite()
        .and_then(|f| f.f_all())
        .and_then(|f| bool::try_from(&f))
        .map_err(|e| e.to_string())?;
    if ok {
        Ok(())
    } else {
        Err(format!("{name}: not finite"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(v: &[f64], n: Option<usize>) -> Stats {
        let d = v.len();
        let mut sigma = vec![0.0; d * d];
        for (i, x) in v.iter().enumerate() {
            sigma[i * d + i] = *x;
        }
        Stats {
            mu: vec![0.0; d],
            sigma,
            n,
        }
    }

    #[test]
    fn diagonal_closed_form() {
        // For commuting covariances FID = Σ (√a − √b)².
        let a = diag(&[1.0, 4.0, 9.0], Some(100));
        let b = diag(&[4.0, 1.0, 0.0], Some(100));
        let r = frechet_distance(&a, &b).unwrap();
        let want = 1.0 + 1.0 + 9.0;
        assert!((r.value - want).abs() < 1e-12, "{r:?}");
        assert!(r.warnings.is_empty() && r.eps.is_none());
    }

    #[test]
    fn mismatch_and_warnings() {
        let a = diag(&[1.0, 1.0], Some(2));
        let b = diag(&[1.0, 1.0, 1.0], None);
        assert!(matches!(
            frechet_distance(&a, &b),
            Err(Error::DimsMismatch { a: 2, b: 3 })
        ));
        let r = frechet_distance(&a, &a).unwrap();
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        let mut bad = a.clone();
        bad.sigma[0] = f64::NAN;
        assert!(matches!(frechet_distance(&bad, &a), Err(Error::Input(_))));
    }
}
