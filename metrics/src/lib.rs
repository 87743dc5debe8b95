//! Evaluation of generated images, equal to the reference Python packages.
//!
//! - FID: pool3 features of pytorch-fid's FID Inception (`inception`), the resize and input
//!   scaling of each protocol (`resize`: clean-fid, pytorch-fid, torchmetrics), statistics in f64
//!   written as `.npz` (`npz`, `stats`), and the Fréchet distance (`frechet`).
//! - CLIP score: Hugging Face `CLIPModel` in tch (`clip`), torchmetrics' `CLIPScore`.
//! - The zero-shot COCO protocol's caption manifest and reference images (`coco`).
//!
//! The crate depends on no other mdm crate: it reads image folders and caption manifests.

pub mod clip;
pub mod coco;
pub mod error;
pub mod frechet;
pub mod inception;
pub mod npz;
pub mod resize;
pub mod stats;

pub use error::{Error, Result};
