//! CLIP's image preprocessing of 8-bit RGB images, as `CLIPImageProcessor` does it: the
//! shortest side resized to `shortest_edge` with Pillow's BICUBIC on uint8 (fixed-point
//! coefficients, rounded and clipped after each of the two passes), a centre crop, `x / 255`,
//! and normalisation by the CLIP mean and standard deviation.

use std::path::Path;

use image::RgbImage;
use serde::Deserialize;
use tch::Tensor;

use crate::error::{io, Error, Result};

/// OpenAI CLIP's normalisation (`OPENAI_CLIP_MEAN`, `OPENAI_CLIP_STD`), digits as transformers writes them.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Resized images larger than this are refused (a 1-pixel-high strip would otherwise ask for
/// gigabytes).
const MAX_RESIZED_PIXELS: u64 = 1 << 26;

/// The preprocessing settings (`preprocessor_config.json` where a folder has one).
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// The shortest side after resizing.
    pub shortest_edge: u32,
    /// The centre crop, `(height, width)`.
    pub crop: (u32, u32),
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// CLIPImageProcessor's defaults for a model of `image_size`: resize to it, crop it square.
    pub fn clip(image_size: u32) -> Self {
        Preprocess {
            shortest_edge: image_size,
            crop: (image_size, image_size),
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// Reads `preprocessor_config.json`. Only what CLIP's pipeline does is accepted (BICUBIC
    /// resize of the shortest edge, centre crop, rescale by 1/255, normalisation, RGB); other
    /// settings are refused rather than silently computed differently.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let invalid = |msg: String| Error::Invalid {
            path: path.to_path_buf(),
            msg,
        };
        let f: PreprocessorFile =
            serde_json::from_str(&text).map_err(|e| invalid(format!("not an image processor config: {e}")))?;
        let shortest_edge = match f.size {
            SizeField::Int(s) => s,
            SizeField::Map { shortest_edge: Some(s), .. } => s,
            SizeField::Map { .. } => return Err(invalid("size must give shortest_edge".into())),
        };
        let crop = match f.crop_size {
            SizeField::Int(s) => (s, s),
            SizeField::Map { height: Some(h), width: Some(w), .. } => (h, w),
            SizeField::Map { shortest_edge: Some(s), .. } => (s, s),
            SizeField::Map { .. } => return Err(invalid("crop_size must give height and width".into())),
        };
        let unsupported = [
            (f.resample != 3, "resample other than 3 (BICUBIC)"),
            (!f.do_resize, "do_resize false"),
            (!f.do_center_crop, "do_center_crop false"),
            (!f.do_rescale, "do_rescale false"),
            ((f.rescale_factor - 1.0 / 255.0).abs() > 1e-12, "rescale_factor other than 1/255"),
            (!f.do_normalize, "do_normalize false"),
        ];
        if let Some((_, what)) = unsupported.iter().find(|(bad, _)| *bad) {
            return Err(invalid(format!("unsupported preprocessing: {what}")));
        }
        if shortest_edge == 0 || crop.0 == 0 || crop.1 == 0 {
            return Err(invalid("sizes must be positive".into()));
        }
        if crop.0 > shortest_edge || crop.1 > shortest_edge {
            return Err(invalid(format!(
                "crop {crop:?} larger than the resized shortest edge {shortest_edge} (the padding path is not built)"
            )));
        }
        let three = |v: Vec<f32>, k: &str| -> Result<[f32; 3]> {
            v.try_into().map_err(|_| invalid(format!("{k} must have 3 values")))
        };
        Ok(Preprocess {
            shortest_edge,
            crop,
            mean: three(f.image_mean, "image_mean")?,
            std: three(f.image_std, "image_std")?,
        })
    }

    /// The size `(width, height)` an image of `w × h` is resized to: the shortest side becomes
    /// `shortest_edge`, the other `int(shortest_edge * long / short)`, as transformers computes it.
    pub fn resized_size(&self, w: u32, h: u32) -> (u32, u32) {
        let s = self.shortest_edge as u64;
        let (short, long) = if w <= h { (w, h) } else { (h, w) };
        let long = ((s * long as u64) as f64 / short as f64) as u32;
        if w <= h {
            (self.shortest_edge, long)
        } else {
            (long, self.shortest_edge)
        }
    }

    /// The resized and centre-cropped uint8 image.
    pub fn crop_image(&self, img: &RgbImage) -> Result<RgbImage> {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::Input(format!("image of {w}x{h} pixels")));
        }
        let (rw, rh) = self.resized_size(w, h);
        if (rw as u64) * (rh as u64) > MAX_RESIZED_PIXELS {
            return Err(Error::Input(format!("a {w}x{h} image would be resized to {rw}x{rh}: too elongated")));
        }
        let r = resize_bicubic(img, rw, rh);
        let (ch, cw) = self.crop;
        // transformers' center_crop: top = (H - h) // 2, left = (W - w) // 2
        let (top, left) = ((rh - ch) / 2, (rw - cw) / 2);
        Ok(image::imageops::crop_imm(&r, left, top, cw, ch).to_image())
    }

    /// `pixel_values` `[B, 3, crop_h, crop_w]` f32 of a batch of images.
    pub fn pixel_values(&self, images: &[RgbImage]) -> Result<Tensor> {
        if images.is_empty() {
            return Err(Error::Input("no images".into()));
        }
        let (ch, cw) = (self.crop.0 as usize, self.crop.1 as usize);
        let plane = ch * cw;
        let mut out = vec![0f32; images.len() * 3 * plane];
        for (i, img) in images.iter().enumerate() {
            let c = self.crop_image(img)?;
            let o = &mut out[i * 3 * plane..(i + 1) * 3 * plane];
            for (j, px) in c.pixels().enumerate() {
                for k in 0..3 {
                    // rescale in f64 then f32, normalise in f32, as transformers' numpy code
                    let x = (px[k] as f64 * (1.0 / 255.0)) as f32;
                    o[k * plane + j] = (x - self.mean[k]) / self.std[k];
                }
            }
        }
        Ok(Tensor::from_slice(&out).view([images.len() as i64, 3, ch as i64, cw as i64]))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeField {
    Int(u32),
    Map {
        shortest_edge: Option<u32>,
        height: Option<u32>,
        width: Option<u32>,
    },
}

#[derive(Deserialize)]
struct PreprocessorFile {
    size: SizeField,
    crop_size: SizeField,
    #[serde(default = "bicubic")]
    resample: u32,
    #[serde(default = "yes")]
    do_resize: bool,
    #[serde(default = "yes")]
    do_center_crop: bool,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "one_255")]
    rescale_factor: f64,
    #[serde(default = "yes")]
    do_normalize: bool,
    #[serde(default = "clip_mean")]
    image_mean: Vec<f32>,
    #[serde(default = "clip_std")]
    image_std: Vec<f32>,
}

fn bicubic() -> u32 {
    3
}
fn yes() -> bool {
    true
}
fn one_255() -> f64 {
    1.0 / 255.0
}
fn clip_mean() -> Vec<f32> {
    CLIP_MEAN.to_vec()
}
fn clip_std() -> Vec<f32> {
    CLIP_STD.to_vec()
}

// ---- Pillow's 8-bit resampling (libImaging/Resample.c), BICUBIC with a = -0.5 ----

/// Fraction bits of the fixed-point coefficients (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

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

/// For each output index: the first input index and the fixed-point weights, as Pillow's
/// `precompute_coeffs` and `normalize_coeffs_8bpc` compute them for the box `[0, in_size]`.
fn coefficients(in_size: u32, out_size: u32) -> Vec<(usize, Vec<i32>)> {
    const SUPPORT: f64 = 2.0;
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = SUPPORT * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates; negative values are clamped to 0 either way
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic_filter((x as f64 - center + 0.5) * ss))
                .collect();
            let sum: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|&v| {
                    let v = if sum != 0.0 { v / sum } else { v };
                    let f = v * (1u32 << PRECISION_BITS) as f64;
                    (if f < 0.0 { f - 0.5 } else { f + 0.5 }) as i32
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

/// Rounds a fixed-point sum to 8 bits and clips it (`clip8`).
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `img.resize((w, h), Image.BICUBIC)` of Pillow for an RGB image: a horizontal pass, then a
/// vertical one, each rounding to uint8; a pass whose size does not change is skipped.
pub fn resize_bicubic(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (iw, ih) = img.dimensions();
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut cur = img.clone();
    if w != iw {
        let coeffs = coefficients(iw, w);
        let src = cur.as_raw();
        let mut out = vec![0u8; (w * ih * 3) as usize];
        for y in 0..ih as usize {
            let row = &src[y * iw as usize * 3..(y + 1) * iw as usize * 3];
            for (xx, (xmin, k)) in coeffs.iter().enumerate() {
                let mut acc = [half; 3];
                for (j, &kj) in k.iter().enumerate() {
                    let p = &row[(xmin + j) * 3..(xmin + j) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += p[c] as i32 * kj;
                    }
                }
                let o = (y * w as usize + xx) * 3;
                for c in 0..3 {
                    out[o + c] = clip8(acc[c]);
                }
            }
        }
        cur = RgbImage::from_raw(w, ih, out).expect("buffer of w*h*3");
    }
    if h != ih {
        let coeffs = coefficients(ih, h);
        let src = cur.as_raw();
        let stride = w as usize * 3;
        let mut out = vec![0u8; (w * h * 3) as usize];
        for (yy, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..stride {
                let mut acc = half;
                for (j, &kj) in k.iter().enumerate() {
                    acc += src[(ymin + j) * stride + x] as i32 * kj;
                }
                out[yy * stride + x] = clip8(acc);
            }
        }
        cur = RgbImage::from_raw(w, h, out).expect("buffer of w*h*3");
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_is_transformers() {
        let p = Preprocess::clip(224);
        assert_eq!(p.resized_size(640, 480), (298, 224));
        assert_eq!(p.resized_size(480, 640), (224, 298));
        assert_eq!(p.resized_size(100, 100), (224, 224));
        assert_eq!(p.resized_size(300, 7), (9600, 224));
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(640, 224), (100, 224), (7, 224), (224, 223)] {
            for (_, k) in coefficients(i, o) {
                let s: i64 = k.iter().map(|&x| x as i64).sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= k.len() as i64, "{i}->{o}: {s}");
            }
        }
    }

    #[test]
    fn elongated_images_are_refused() {
        let p = Preprocess::clip(224);
        assert!(p.crop_image(&RgbImage::new(100_000, 2)).is_err());
        assert!(p.crop_image(&RgbImage::new(0, 5)).is_err());
        assert_eq!(p.crop_image(&RgbImage::new(3000, 200)).unwrap().dimensions(), (224, 224));
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 53, image::Rgb([200, 3, 128]));
        let r = resize_bicubic(&img, 224, 320);
        assert!(r.pixels().all(|p| p.0 == [200, 3, 128]));
    }
}
