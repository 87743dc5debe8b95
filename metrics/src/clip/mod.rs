//! CLIP score of images against captions, equal to torchmetrics' `CLIPScore`.
//!
//! A Hugging Face `CLIPModel` folder (`config.json`, `model.safetensors`, `tokenizer.json`,
//! optionally `preprocessor_config.json` and `tokenizer_config.json`) is read by
//! [`ClipModel::load`]. Images go through CLIPImageProcessor's uint8 pipeline ([`preprocess`]),
//! captions through the fast tokenizer with torchmetrics' cut at 77 tokens ([`tokenizer`]), both
//! through the network ([`model`]). The score of one pair is `100 · cos(image, text)`
//! ([`clip_score`]); torchmetrics reports `max(mean of those, 0)` ([`mean_score`]).
//!
//! ```no_run
//! # fn main() -> mdm_metrics::Result<()> {
//! use mdm_metrics::clip::{clip_score, mean_score, ClipModel};
//! let clip = ClipModel::load("clip-vit-large-patch14".as_ref(), tch::Device::Cpu)?;
//! let img = image::open("cat.png").unwrap().to_rgb8();
//! let scores = clip_score(&clip, &[img], &["a photo of a cat".to_string()])?;
//! println!("CLIP score {:.4}", mean_score(&scores));
//! # Ok(()) }
//! ```

pub mod model;
pub mod preprocess;
pub mod tokenizer;

use std::path::Path;

use image::RgbImage;
use tch::{Device, Kind, Tensor};

pub use model::{ClipConfig, ClipNet};
pub use preprocess::Preprocess;
pub use tokenizer::{ClipTokenizer, TokenBatch};

use crate::error::{Error, Result};

/// A CLIP model with its tokenizer and image preprocessing.
#[derive(Debug)]
pub struct ClipModel {
    pub net: ClipNet,
    pub tokenizer: ClipTokenizer,
    pub preprocess: Preprocess,
}

impl ClipModel {
    /// Loads a Hugging Face `CLIPModel` folder onto `device`. Without a
    /// `preprocessor_config.json` the CLIP defaults for the model's image size are used.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let cfg = ClipConfig::from_file(&dir.join("config.json"))?;
        let pre = dir.join("preprocessor_config.json");
        let preprocess = if pre.is_file() {
            Preprocess::from_file(&pre)?
        } else {
            Preprocess::clip(cfg.vision_config.image_size as u32)
        };
        let size = cfg.vision_config.image_size as u32;
        if preprocess.crop != (size, size) {
            return Err(Error::Invalid {
                path: pre,
                msg: format!("crop {:?} does not fit the model's image_size {size}", preprocess.crop),
            });
        }
        let tokenizer = ClipTokenizer::from_folder(dir, cfg.text_config.max_position_embeddings as usize)?;
        let net = ClipNet::load(cfg, &dir.join("model.safetensors"), device)?;
        Ok(ClipModel {
            net,
            tokenizer,
            preprocess,
        })
    }

    /// `pixel_values` `[B, 3, S, S]` of 8-bit RGB images (on the CPU).
    pub fn pixel_values(&self, images: &[RgbImage]) -> Result<Tensor> {
        self.preprocess.pixel_values(images)
    }

    /// Image embeddings `[B, projection_dim]` (not normalised) of `pixel_values`.
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.net.image_embeds(pixel_values)
    }

    /// Text embeddings `[B, projection_dim]` (not normalised) of captions, batched as
    /// torchmetrics does (see [`tokenizer`]).
    pub fn text_embeds(&self, texts: &[String]) -> Result<Tensor> {
        let b = self.tokenizer.batch(texts)?;
        self.net.text_embeds_of_ids(&b.ids, &b.mask)
    }
}

/// `100 · cos(image, caption)` of each pair, as torchmetrics computes it before averaging
/// (f32 embeddings, each divided by its L2 norm). Not clamped: see [`mean_score`].
pub fn clip_score(model: &ClipModel, images: &[RgbImage], captions: &[String]) -> Result<Vec<f64>> {
    if images.len() != captions.len() {
        return Err(Error::Input(format!(
            "{} images but {} captions",
            images.len(),
            captions.len()
        )));
    }
    if images.is_empty() {
        return Err(Error::Input("no images".into()));
    }
    let img = model.image_embeds(&model.pixel_values(images)?)?;
    let txt = model.text_embeds(captions)?;
    scores_of_embeds(&img, &txt)
}

/// `100 · cos` row by row of two `[B, D]` embedding tensors.
pub fn scores_of_embeds(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
    if a.size() != b.size() || a.dim() != 2 {
        return Err(Error::Input(format!("embeddings {:?} and {:?} differ", a.size(), b.size())));
    }
    let unit = |t: &Tensor| {
        let t = t.to_kind(Kind::Float);
        &t / t.norm_scalaropt_dim(2, [-1i64].as_slice(), true)
    };
    let s = (unit(a) * unit(b)).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float) * 100.0;
    Ok(Vec::<f64>::try_from(s.to_device(Device::Cpu).to_kind(Kind::Double))?)
}

/// torchmetrics' `CLIPScore` of a whole set: `max(mean(scores), 0)` (NaN for no scores).
pub fn mean_score(scores: &[f64]) -> f64 {
    if scores.is_empty() {
        return f64::NAN;
    }
    (scores.iter().sum::<f64>() / scores.len() as f64).max(0.0)
}
