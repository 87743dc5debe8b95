//! The zero-shot COCO protocol: (image, caption) pairs drawn from `captions_val2014.json` and
//! their centre-cropped reference images.
//!
//! Zero-shot FID-30K draws 30k captions of COCO val2014 at random, samples one image per caption
//! and compares the samples with the real images of those captions. The rule here:
//!
//! - **Selection** ([`Captions::select`]): the images that have at least one caption, sorted by
//!   image id, are shuffled with a seeded Fisher–Yates shuffle ([`shuffle`]) and the first `n`
//!   are taken; each takes one of its captions (sorted by annotation id), chosen by a hash of
//!   `(seed, image id)`. So `n` ≤ the number of captioned images (40,504 for val2014) and every
//!   reference image appears once: drawing captions with replacement of images would count some
//!   real images twice in the reference statistics and give two manifest rows the same
//!   reference file. The result depends on `(seed, n)` only, never on the JSON's order, and a
//!   larger `n` extends a smaller one with the same seed.
//! - **Captions**: whitespace is normalised (trimmed, runs of whitespace become one space);
//!   nothing else changes. A caption empty after that is dropped and counted.
//! - **Reference images** ([`reference_image`]): decoded with the `image` crate and converted to
//!   RGB (COCO has grayscale and CMYK JPEGs; EXIF orientation is not applied, as PIL's
//!   `Image.open` does not), centre-cropped to a square of the shorter side (offset
//!   `(long - short) / 2`, rounded down), resized to `size`×`size` with Pillow's `BICUBIC`
//!   reproduced bit for bit ([`pil_bicubic_rgb8`]: cubic convolution with a = −0.5, widened by
//!   the scale factor when downsampling, 8-bit rounding between the horizontal and vertical
//!   passes), so the references equal a PIL `crop` + `resize(BICUBIC)` of the same decoded
//!   pixels. (The `image` crate's `CatmullRom` is the same kernel but keeps f32 between passes
//!   and does not clip there: up to 6 levels apart from PIL at sharp edges.) The JPEG decoder
//!   is `image`'s (zune-jpeg), within a level of libjpeg's.
//! - **Files** ([`prepare_references`]): `<image id>.png` in the reference folder, written to a
//!   temporary name and renamed, so a killed run leaves no partial PNG; a rerun keeps every
//!   existing PNG that decodes at the right size. A missing or undecodable image is reported with
//!   its path and its pair dropped; it never stops the run.
//!
//! ```no_run
//! use mdm_metrics::coco::{self, Captions, RefOptions};
//! # fn main() -> mdm_metrics::Result<()> {
//! let caps = Captions::read("annotations/captions_val2014.json".as_ref())?;
//! let pairs = caps.select(30_000, 0)?;
//! let opts = RefOptions { size: 256, workers: 4 };
//! let done = coco::prepare_references(&pairs, "val2014".as_ref(), "out/ref".as_ref(), &opts, &|_| {})?;
//! let kept: Vec<_> = pairs.iter().zip(&done).filter(|(_, r)| r.is_ok()).map(|(p, _)| p).collect();
//! coco::write_manifest("out/captions.jsonl".as_ref(), kept)?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use image::{ImageEncoder, RgbImage};
use serde::Deserialize;

use crate::error::{io, Error, Result};

/// One entry of the JSON's `images`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CocoImage {
    pub id: u64,
    /// Path relative to the image folder, e.g. `COCO_val2014_000000391895.jpg`.
    pub file_name: String,
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
}

/// One caption (annotation) of an image, whitespace normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caption {
    /// The annotation id.
    pub id: u64,
    pub text: String,
}

/// An image with its captions sorted by annotation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageCaptions {
    pub image: CocoImage,
    pub captions: Vec<Caption>,
}

/// An annotation whose `image_id` names no image of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orphan {
    pub ann_id: u64,
    pub image_id: u64,
}

/// A parsed captions file, in a canonical order (images by id).
#[derive(Debug, Clone)]
pub struct Captions {
    pub path: PathBuf,
    /// Every image of the file sorted by id, with or without captions.
    pub images: Vec<ImageCaptions>,
    /// Annotations of unknown images, sorted by annotation id (skipped, not fatal).
    pub orphans: Vec<Orphan>,
    /// Annotations whose caption is empty after whitespace normalisation (skipped).
    pub empty: usize,
}

#[derive(Deserialize)]
struct RawFile {
    images: Vec<CocoImage>,
    annotations: Vec<RawAnnotation>,
}

#[derive(Deserialize)]
struct RawAnnotation {
    id: u64,
    image_id: u64,
    caption: String,
}

/// Trims and collapses every run of whitespace into one space.
pub fn normalise_caption(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl Captions {
    /// Reads a COCO captions JSON (`images`, `annotations`; other keys are ignored).
    pub fn read(path: &Path) -> Result<Captions> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        Captions::from_json(&bytes, path)
    }

    /// Parses the bytes of a captions JSON; `path` is only named in errors.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Captions> {
        let invalid = |msg: String| Error::Invalid { path: path.to_path_buf(), msg };
        let raw: RawFile = serde_json::from_slice(bytes).map_err(|e| invalid(format!("not a COCO captions file: {e}")))?;
        let mut images: Vec<ImageCaptions> =
            raw.images.into_iter().map(|image| ImageCaptions { image, captions: vec![] }).collect();
        images.sort_by_key(|i| i.image.id);
        if let Some(w) = images.windows(2).find(|w| w[0].image.id == w[1].image.id) {
            return Err(invalid(format!("image id {} appears twice in \"images\"", w[0].image.id)));
        }
        let index: HashMap<u64, usize> = images.iter().enumerate().map(|(i, im)| (im.image.id, i)).collect();
        let (mut orphans, mut empty) = (vec![], 0);
        for a in raw.annotations {
            let Some(&i) = index.get(&a.image_id) else {
                orphans.push(Orphan { ann_id: a.id, image_id: a.image_id });
                continue;
            };
            let text = normalise_caption(&a.caption);
            if text.is_empty() {
                empty += 1;
                continue;
            }
            images[i].captions.push(Caption { id: a.id, text });
        }
        for im in &mut images {
            im.captions.sort_by(|a, b| (a.id, &a.text).cmp(&(b.id, &b.text)));
        }
        orphans.sort_by_key(|o| (o.ann_id, o.image_id));
        Ok(Captions { path: path.to_path_buf(), images, orphans, empty })
    }

    /// The number of images with at least one caption: the most [`Captions::select`] can draw.
    pub fn captioned(&self) -> usize {
        self.images.iter().filter(|i| !i.captions.is_empty()).count()
    }

    /// `n` pairs of distinct images, one caption each, as described in the module docs.
    pub fn select(&self, n: usize, seed: u64) -> Result<Vec<Pair>> {
        let mut pool: Vec<&ImageCaptions> = self.images.iter().filter(|i| !i.captions.is_empty()).collect();
        if n == 0 {
            return Err(Error::Input("the number of pairs must be at least 1".into()));
        }
        if n > pool.len() {
            return Err(Error::Invalid {
                path: self.path.clone(),
                msg: format!(
                    "asked for {n} pairs but only {} of its {} images have a caption (one pair per image)",
                    pool.len(),
                    self.images.len()
                ),
            });
        }
        shuffle(&mut pool, seed);
        Ok(pool[..n]
            .iter()
            .map(|im| {
                let k = below(mix(seed ^ mix(im.image.id ^ 0xC0C0_CA97_10A5_0000)), im.captions.len());
                let c = &im.captions[k];
                Pair { image_id: im.image.id, ann_id: c.id, file_name: im.image.file_name.clone(), caption: c.text.clone() }
            })
            .collect())
    }
}

/// One selected (image, caption) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub image_id: u64,
    /// The annotation id of the caption.
    pub ann_id: u64,
    /// The source image, relative to the image folder.
    pub file_name: String,
    pub caption: String,
}

impl Pair {
    /// The manifest id `<image id>_<annotation id>` (unique: annotation ids are).
    pub fn id(&self) -> String {
        format!("{}_{}", self.image_id, self.ann_id)
    }

    /// The reference (and generated) PNG's name: `<image id>.png`.
    pub fn file(&self) -> String {
        format!("{}.png", self.image_id)
    }

    /// The manifest row: `id`, `caption`, `image_id`, `file`, and `source` (the COCO file name).
    pub fn manifest_row(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id(),
            "caption": self.caption,
            "image_id": self.image_id,
            "file": self.file(),
            "source": self.file_name,
        })
    }
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash of `z`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A number in `0..n` from 64 random bits (multiply-high; the bias is below 2⁻³² for n < 2³²).
fn below(r: u64, n: usize) -> usize {
    ((r as u128 * n as u128) >> 64) as usize
}

/// Seeded Fisher–Yates shuffle: step `i` (from the end) swaps `i` with `below(mix(seed + i), i + 1)`.
/// The same `(seed, len)` always gives the same permutation, on every platform.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let base = mix(seed);
    for i in (1..items.len()).rev() {
        let j = below(mix(base.wrapping_add(i as u64)), i + 1);
        items.swap(i, j);
    }
}

/// How reference images are made.
#[derive(Debug, Clone)]
pub struct RefOptions {
    /// Side of the square PNGs (e.g. 256).
    pub size: u32,
    /// Decoding threads (at least 1).
    pub workers: usize,
}

/// What happened to one reference image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefStatus {
    /// Made and written now.
    Written,
    /// A valid PNG was already there (resume).
    Kept,
}

/// The centre square of the shorter side, resized to `size`×`size` with [`pil_bicubic_rgb8`].
pub fn centre_crop_resize(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let s = w.min(h);
    let crop = image::imageops::crop_imm(img, (w - s) / 2, (h - s) / 2, s, s).to_image();
    if s == size {
        return crop;
    }
    pil_bicubic_rgb8(&crop, size, size)
}

/// Pillow's `Image.resize(size, Image.BICUBIC)` of an RGB image, bit for bit: the cubic
/// convolution kernel (a = −0.5) widened by the scale factor when downsampling, coefficients in
/// f64 rounded to 22-bit fixed point, a horizontal pass then a vertical one, each rounded and
/// clipped to 8 bits (Pillow's `ImagingResample` for 8-bit images).
pub fn pil_bicubic_rgb8(img: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (out_w as usize, out_h as usize);
    let src = img.as_raw();
    // Horizontal: h rows of w pixels → h rows of ow pixels (skipped when the width stays).
    let mid = if ow == w {
        src.clone()
    } else {
        let (bounds, k) = pil_coeffs(w, ow);
        let stride = n_max(&bounds);
        let mut mid = vec![0u8; h * ow * 3];
        for y in 0..h {
            for (x, &(lo, n)) in bounds.iter().enumerate() {
                for c in 0..3 {
                    let acc = (0..n).fold(1i64 << (PRECISION - 1), |acc, i| {
                        acc + i64::from(src[(y * w + lo + i) * 3 + c]) * k[x * stride + i]
                    });
                    mid[(y * ow + x) * 3 + c] = clip8(acc);
                }
            }
        }
        mid
    };
    // Vertical: h rows → oh rows.
    let out = if oh == h {
        mid
    } else {
        let (bounds, k) = pil_coeffs(h, oh);
        let stride = n_max(&bounds);
        let mut out = vec![0u8; oh * ow * 3];
        for (y, &(lo, n)) in bounds.iter().enumerate() {
            for x in 0..ow {
                for c in 0..3 {
                    let acc = (0..n).fold(1i64 << (PRECISION - 1), |acc, i| {
                        acc + i64::from(mid[((lo + i) * ow + x) * 3 + c]) * k[y * stride + i]
                    });
                    out[(y * ow + x) * 3 + c] = clip8(acc);
                }
            }
        }
        out
    };
    RgbImage::from_raw(out_w, out_h, out).unwrap_or_else(|| RgbImage::new(out_w, out_h))
}

/// Pillow's fixed-point precision for 8-bit images: 32 − 8 − 2 bits.
const PRECISION: u32 = 22;

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION).clamp(0, 255) as u8
}

fn n_max(bounds: &[(usize, usize)]) -> usize {
    bounds.iter().map(|b| b.1).max().unwrap_or(0)
}

/// Pillow's bicubic kernel, a = −0.5.
fn bicubic(x: f64) -> f64 {
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

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for `size_in` → `size_out`: per output
/// pixel the first source index and the tap count, and the taps in fixed point (row stride =
/// the largest tap count).
fn pil_coeffs(size_in: usize, size_out: usize) -> (Vec<(usize, usize)>, Vec<i64>) {
    let scale = size_in as f64 / size_out as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(size_out);
    let mut weights: Vec<Vec<f64>> = Vec::with_capacity(size_out);
    for xx in 0..size_out {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates; negative values end at 0 either way.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(size_in as i64) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut k: Vec<f64> = (0..n).map(|x| bicubic((x as f64 + xmin as f64 - center + 0.5) * ss)).collect();
        let total: f64 = k.iter().sum();
        if total != 0.0 {
            k.iter_mut().for_each(|v| *v /= total);
        }
        bounds.push((xmin, n));
        weights.push(k);
    }
    let stride = n_max(&bounds);
    let mut fixed = vec![0i64; size_out * stride];
    for (xx, k) in weights.iter().enumerate() {
        for (i, &v) in k.iter().enumerate() {
            let scaled = v * f64::from(1u32 << PRECISION);
            fixed[xx * stride + i] = if v < 0.0 { (scaled - 0.5) as i64 } else { (scaled + 0.5) as i64 };
        }
    }
    (bounds, fixed)
}

/// Decodes `src` (format from its bytes), converts it to RGB and makes the reference image.
pub fn reference_image(src: &Path, size: u32) -> Result<RgbImage> {
    if size == 0 {
        return Err(Error::Input("the reference size must be at least 1".into()));
    }
    let img = decode(src)?.to_rgb8();
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::Invalid { path: src.to_path_buf(), msg: "the image is empty".into() });
    }
    Ok(centre_crop_resize(&img, size))
}

fn decode(src: &Path) -> Result<image::DynamicImage> {
    let invalid = |e: image::ImageError| Error::Invalid { path: src.to_path_buf(), msg: format!("cannot decode: {e}") };
    let reader = image::ImageReader::open(src).map_err(io(src))?.with_guessed_format().map_err(io(src))?;
    reader.decode().map_err(invalid)
}

/// Whether `path` is a PNG that decodes completely as a `size`×`size` RGB image.
pub fn is_valid_reference(path: &Path, size: u32) -> bool {
    let Ok(reader) = image::ImageReader::open(path).and_then(|r| r.with_guessed_format()) else {
        return false;
    };
    if reader.format() != Some(image::ImageFormat::Png) {
        return false;
    }
    matches!(reader.decode(), Ok(img) if img.width() == size && img.height() == size && img.color() == image::ColorType::Rgb8)
}

/// Writes `img` as an RGB PNG to `dst` durably ([`mdm_shards::durable`]).
pub fn write_png_atomic(img: &RgbImage, dst: &Path) -> Result<()> {
    Ok(mdm_shards::durable::write_atomic_with(dst, |f| {
        image::codecs::png::PngEncoder::new(f)
            .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
            .map_err(std::io::Error::other)
    })?)
}

/// The source path of `pair` under `images`; a `file_name` that leaves the folder is refused.
fn source_path(images: &Path, pair: &Pair) -> Result<PathBuf> {
    let rel = Path::new(&pair.file_name);
    if pair.file_name.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Error::Invalid {
            path: images.join(rel),
            msg: format!("image {}: file_name {:?} is not a path inside the image folder", pair.image_id, pair.file_name),
        });
    }
    Ok(images.join(rel))
}

/// Makes (or keeps) the reference PNG of one pair: `ref_dir/<pair.file()>`.
pub fn prepare_one(pair: &Pair, images: &Path, ref_dir: &Path, size: u32) -> Result<RefStatus> {
    let dst = ref_dir.join(pair.file());
    if is_valid_reference(&dst, size) {
        return Ok(RefStatus::Kept);
    }
    let img = reference_image(&source_path(images, pair)?, size)?;
    write_png_atomic(&img, &dst)?;
    Ok(RefStatus::Written)
}

/// Makes the reference PNGs of `pairs` on `opts.workers` threads; `on_done` is called once per
/// pair as it finishes (for progress). Returns one result per pair, in the order of `pairs`: an
/// `Err` is that pair's image (missing, undecodable, unwritable), never a reason to stop.
/// Fails only when `ref_dir` cannot be created or the options are invalid.
pub fn prepare_references(
    pairs: &[Pair],
    images: &Path,
    ref_dir: &Path,
    opts: &RefOptions,
    on_done: &(dyn Fn(&Result<RefStatus>) + Sync),
) -> Result<Vec<Result<RefStatus>>> {
    if opts.workers == 0 || opts.size == 0 {
        return Err(Error::Input(format!("workers ({}) and size ({}) must be at least 1", opts.workers, opts.size)));
    }
    std::fs::create_dir_all(ref_dir).map_err(io(ref_dir))?;
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, Result<RefStatus>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..opts.workers.min(pairs.len().max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut out = vec![];
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(pair) = pairs.get(i) else { break out };
                        let r = prepare_one(pair, images, ref_dir, opts.size);
                        on_done(&r);
                        out.push((i, r));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    });
    done.sort_by_key(|(i, _)| *i);
    if done.len() != pairs.len() {
        return Err(Error::Input(format!("a reference worker stopped: {} of {} pairs done", done.len(), pairs.len())));
    }
    Ok(done.into_iter().map(|(_, r)| r).collect())
}

/// Writes the JSONL manifest (one [`Pair::manifest_row`] per line) atomically: temp + rename.
pub fn write_manifest<'a>(path: &Path, pairs: impl IntoIterator<Item = &'a Pair>) -> Result<()> {
    let mut text = String::new();
    for p in pairs {
        text.push_str(&p.manifest_row().to_string());
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// Writes `bytes` to `path` durably ([`mdm_shards::durable`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(mdm_shards::durable::write_atomic(path, bytes)?)
}
