//! The resize and input scaling of each FID protocol, in plain Rust on f32 planes.
//!
//! The three reference packages feed the same network but prepare its 299×299 input differently:
//!
//! | [`Mode`] | resize | scaling to the network's range |
//! | --- | --- | --- |
//! | `Clean` (clean-fid) | Pillow `BICUBIC` on each channel as a mode-`F` image ([`pil_bicubic`]), clipped to 0–255 | `(x − 128) / 128` |
//! | `PytorchFid` (pytorch-fid) | `F.interpolate(bilinear, align_corners=False)` on `x / 255` ([`torch_bilinear`]) | `2x − 1` |
//! | `Torchmetrics` (torchmetrics 1.9 `FrechetInceptionDistance`, its default `antialias=True`) | torch bilinear with antialias ([`torch_bilinear_aa`]) on 0–255 | `(x − 128) / 128` |
//! | `TorchFidelity` (torch-fidelity; torchmetrics with `antialias=False`) | TensorFlow 1.x bilinear ([`tf1_bilinear`]) on 0–255 | `(x − 128) / 128` |
//!
//! Each resizer takes one row-major plane (`h × w`) and returns the `out_h × out_w` plane; they
//! reproduce the reference arithmetic (f64 coefficients and sums in Pillow, f32 in torch and
//! torch-fidelity) so results agree to rounding.
//!
//! (`no_run`: doctest binaries live outside `target/` and miss the libtorch rpath; the unit tests
//! check the same calls.)
//! ```no_run
//! use mdm_metrics::resize::{torch_bilinear, Mode};
//! let plane = vec![0.0f32, 255.0, 255.0, 0.0];
//! let up = torch_bilinear(&plane, 2, 2, 4, 4);
//! assert_eq!(up.len(), 16);
//! let rgb = vec![128u8; 3 * 8 * 8];
//! let x = Mode::Clean.network_input(&rgb, 8, 8);
//! assert_eq!(x.len(), 3 * 299 * 299);
//! assert!(x.iter().all(|v| v.abs() < 1e-6));
//! ```

use std::fmt;
use std::str::FromStr;

/// Side of the square input of the FID Inception network.
pub const INPUT_SIZE: usize = 299;

/// Which reference package's preparation of the network input to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// clean-fid's default (`mode="clean"`): Pillow bicubic in float per channel, clip, (x−128)/128.
    Clean,
    /// pytorch-fid: x/255, torch bilinear (align_corners=False, no antialias), 2x−1.
    PytorchFid,
    /// torchmetrics' `FrechetInceptionDistance` with its default `antialias=True`: torch
    /// antialiased bilinear on 0–255, (x−128)/128 (torch-fidelity's network).
    Torchmetrics,
    /// torch-fidelity's `FeatureExtractorInceptionV3` (and torchmetrics with `antialias=False`):
    /// TF1 bilinear on 0–255, (x−128)/128.
    TorchFidelity,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Clean, Mode::PytorchFid, Mode::Torchmetrics, Mode::TorchFidelity];

    /// The name used on the command line and in the statistics' JSON.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Clean => "clean",
            Mode::PytorchFid => "pytorch-fid",
            Mode::Torchmetrics => "torchmetrics",
            Mode::TorchFidelity => "torch-fidelity",
        }
    }

    /// The network input `[3, 299, 299]` (channel-major, f32, already scaled) of an 8-bit RGB
    /// image given as interleaved `h × w × 3` bytes.
    ///
    /// # Panics
    /// If `rgb.len() != h * w * 3` or a side is zero (a caller's bug, not user input).
    pub fn network_input(self, rgb: &[u8], h: usize, w: usize) -> Vec<f32> {
        assert!(h > 0 && w > 0 && rgb.len() == h * w * 3, "rgb is not {h}×{w}×3");
        let n = INPUT_SIZE;
        let mut out = Vec::with_capacity(3 * n * n);
        let mut plane = vec![0f32; h * w];
        for c in 0..3 {
            for (p, px) in plane.iter_mut().zip(rgb.chunks_exact(3)) {
                *p = px[c] as f32;
            }
            match self {
                Mode::Clean => {
                    let r = pil_bicubic(&plane, h, w, n, n);
                    out.extend(r.into_iter().map(|v| (v.clamp(0.0, 255.0) - 128.0) / 128.0));
                }
                Mode::PytorchFid => {
                    // torchvision's ToTensor divides in f32
                    plane.iter_mut().for_each(|v| *v /= 255.0);
                    let r = torch_bilinear(&plane, h, w, n, n);
                    out.extend(r.into_iter().map(|v| 2.0 * v - 1.0));
                }
                Mode::Torchmetrics => {
                    let r = torch_bilinear_aa(&plane, h, w, n, n);
                    out.extend(r.into_iter().map(|v| (v - 128.0) / 128.0));
                }
                Mode::TorchFidelity => {
                    let r = tf1_bilinear(&plane, h, w, n, n);
                    out.extend(r.into_iter().map(|v| (v - 128.0) / 128.0));
                }
            }
        }
        out
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown mode {s:?}: expected clean, pytorch-fid, torchmetrics or torch-fidelity"))
    }
}

// ---------------------------------------------------------------------------------------------
// Pillow BICUBIC (libImaging/Resample.c, 32-bit float images)

fn bicubic_filter(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per output pixel: first input index and its normalised weights (Pillow's `precompute_coeffs`
/// with the default box `(0, in_size)`).
fn pil_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
    const SUPPORT: f64 = 2.0;
    let scale = in_size as f32 as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let mut k: Vec<f64> =
                (xmin..xmax).map(|x| bicubic_filter((x as f64 - center + 0.5) * ss)).collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|w| *w /= ww);
            }
            (xmin as usize, k)
        })
        .collect()
}

/// Pillow's `Image.resize((out_w, out_h), BICUBIC)` of a mode-`F` (f32) image: separable, the
/// horizontal pass first, sums in f64 stored as f32 after each pass; a pass whose size does not
/// change is skipped, as in Pillow. Values are not clipped.
pub fn pil_bicubic(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "plane is not {h}×{w}");
    let mut cur: Vec<f32>;
    let mut cw = w;
    let horiz = if out_w != w {
        let kx = pil_coeffs(w, out_w);
        cur = Vec::with_capacity(h * out_w);
        for row in src.chunks_exact(w) {
            for (x0, k) in &kx {
                let s: f64 = k.iter().zip(&row[*x0..]).map(|(k, v)| *v as f64 * k).sum();
                cur.push(s as f32);
            }
        }
        cw = out_w;
        Some(cur)
    } else {
        None
    };
    let plane: &[f32] = horiz.as_deref().unwrap_or(src);
    if out_h == h {
        return plane.to_vec();
    }
    let ky = pil_coeffs(h, out_h);
    let mut out = Vec::with_capacity(out_h * cw);
    let mut acc = vec![0f64; cw];
    for (y0, k) in &ky {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for (j, kj) in k.iter().enumerate() {
            let row = &plane[(y0 + j) * cw..(y0 + j + 1) * cw];
            for (a, v) in acc.iter_mut().zip(row) {
                *a += *v as f64 * kj;
            }
        }
        out.extend(acc.iter().map(|a| *a as f32));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// torch bilinear, align_corners=False, antialias=False (aten/src/ATen/native/UpSample.h)

/// Per output index: low index, high index, and their weights (torch's
/// `compute_indices_weights_linear`, f32 as for float tensors).
fn torch_linear_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|i| {
            let real = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (real.floor() as usize).min(in_size - 1);
            let l1 = (real - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// `torch.nn.functional.interpolate(x, size=(out_h, out_w), mode="bilinear",
/// align_corners=False)` of one f32 plane.
pub fn torch_bilinear(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "plane is not {h}×{w}");
    let ky = torch_linear_coeffs(h, out_h);
    let kx = torch_linear_coeffs(w, out_w);
    let mut out = Vec::with_capacity(out_h * out_w);
    for &(y0, y1, h0, h1) in &ky {
        let (r0, r1) = (&src[y0 * w..(y0 + 1) * w], &src[y1 * w..(y1 + 1) * w]);
        for &(x0, x1, w0, w1) in &kx {
            out.push(h0 * (w0 * r0[x0] + w1 * r0[x1]) + h1 * (w0 * r1[x0] + w1 * r1[x1]));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// torch bilinear with antialias=True (aten/src/ATen/native/cpu/UpSampleKernel.cpp, the
// separable "aa" path): a triangle filter widened by the scale when downscaling, f32 weights
// normalised per output, the width pass first, a pass whose size does not change skipped.

fn torch_aa_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = in_size as f32 / out_size as f32;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..out_size)
        .map(|i| {
            let center = scale * (i as f32 + 0.5);
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let mut k: Vec<f32> = (xmin..xmax)
                .map(|j| {
                    let x = ((j as f32 - center + 0.5) * invscale).abs();
                    if x < 1.0 {
                        1.0 - x
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f32 = k.iter().sum();
            if total != 0.0 {
                k.iter_mut().for_each(|w| *w /= total);
            }
            (xmin as usize, k)
        })
        .collect()
}

/// `torch.nn.functional.interpolate(x, size=(out_h, out_w), mode="bilinear",
/// align_corners=False, antialias=True)` of one f32 plane.
pub fn torch_bilinear_aa(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "plane is not {h}×{w}");
    let horiz = (out_w != w).then(|| {
        let kx = torch_aa_coeffs(w, out_w);
        let mut cur = Vec::with_capacity(h * out_w);
        for row in src.chunks_exact(w) {
            for (x0, k) in &kx {
                let mut s = 0f32;
                for (k, v) in k.iter().zip(&row[*x0..]) {
                    s += v * k;
                }
                cur.push(s);
            }
        }
        cur
    });
    let cw = if out_w != w { out_w } else { w };
    let plane: &[f32] = horiz.as_deref().unwrap_or(src);
    if out_h == h {
        return plane.to_vec();
    }
    let ky = torch_aa_coeffs(h, out_h);
    let mut out = Vec::with_capacity(out_h * cw);
    for (y0, k) in &ky {
        let start = out.len();
        out.resize(start + cw, 0.0);
        for (j, kj) in k.iter().enumerate() {
            let row = &plane[(y0 + j) * cw..(y0 + j + 1) * cw];
            for (a, v) in out[start..].iter_mut().zip(row) {
                *a += v * kj;
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// TensorFlow 1.x bilinear as torch-fidelity's interpolate_bilinear_2d_like_tensorflow1x ('slow')

/// Per output index: low index, high index, fraction (`x = i · (in/out)` in f32, no half-pixel
/// centres, low index truncated, high clamped to the last pixel).
fn tf1_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, usize, f32)> {
    let scale = (in_size as f64 / out_size as f64) as f32;
    (0..out_size)
        .map(|i| {
            let x = i as f32 * scale;
            let lo = x as usize;
            let hi = (lo + 1).min(in_size - 1);
            (lo, hi, x - lo as f32)
        })
        .collect()
}

/// torch-fidelity's `interpolate_bilinear_2d_like_tensorflow1x(x, size, align_corners=False)`
/// of one f32 plane: rows are interpolated along x first, then the two rows along y.
pub fn tf1_bilinear(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "plane is not {h}×{w}");
    let ky = tf1_coeffs(h, out_h);
    let kx = tf1_coeffs(w, out_w);
    let mut out = Vec::with_capacity(out_h * out_w);
    for &(y0, y1, dy) in &ky {
        let (r0, r1) = (&src[y0 * w..(y0 + 1) * w], &src[y1 * w..(y1 + 1) * w]);
        for &(x0, x1, dx) in &kx {
            let a = r0[x0] + (r0[x1] - r0[x0]) * dx;
            let b = r1[x0] + (r1[x1] - r1[x0]) * dx;
            out.push(a + (b - a) * dy);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_identity() {
        let p: Vec<f32> = (0..35).map(|i| (i * 37 % 256) as f32).collect();
        assert_eq!(pil_bicubic(&p, 5, 7, 5, 7), p);
        assert_eq!(torch_bilinear(&p, 5, 7, 5, 7), p);
        assert_eq!(tf1_bilinear(&p, 5, 7, 5, 7), p);
        assert_eq!(torch_bilinear_aa(&p, 5, 7, 5, 7), p);
    }

    #[test]
    fn constant_stays_constant() {
        let p = vec![77.0f32; 6 * 9];
        for r in [
            pil_bicubic(&p, 6, 9, 13, 4),
            torch_bilinear(&p, 6, 9, 13, 4),
            tf1_bilinear(&p, 6, 9, 13, 4),
            torch_bilinear_aa(&p, 6, 9, 13, 4),
        ] {
            assert!(r.iter().all(|v| (v - 77.0).abs() < 1e-4), "{r:?}");
        }
    }

    #[test]
    fn mid_grey_maps_to_zero_in_every_mode() {
        let rgb = vec![128u8; 3 * 8 * 8];
        for m in Mode::ALL {
            let x = m.network_input(&rgb, 8, 8);
            assert_eq!(x.len(), 3 * INPUT_SIZE * INPUT_SIZE);
            // pytorch-fid scales 2x/255 - 1, so its grey is 1/255, not 0.
            let tol = if m == Mode::PytorchFid { 1.0 / 255.0 + 1e-6 } else { 1e-6 };
            assert!(x.iter().all(|v| v.abs() <= tol), "{m}");
        }
    }

    #[test]
    fn mode_names_round_trip() {
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>().unwrap(), m);
        }
        assert!("tf".parse::<Mode>().is_err());
    }
}
