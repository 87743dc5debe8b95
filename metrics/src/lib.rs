//! Evaluation of generated images, equal to the reference Python packages.
//!
//! - FID: pool3 features of pytorch-fid's FID Inception (`inception`), the resize and input
//!   scaling of each protocol (`resize`: clean-fid, pytorch-fid, torchmetrics), statistics in f64
//!   written as `.npz` (`npz`, `stats`), and the Fréchet distance (`frechet`).
//! - Statistics of an image folder or manifest: ordered, multi-threaded decoding into the FID
//!   Inception, with a progress bar and the rejected images listed (`folder`).
//! - CLIP score: Hugging Face `CLIPModel` in tch (`clip`), torchmetrics' `CLIPScore`.
//! - The JSON Lines caption/class manifest that sampling and the CLIP score read (`manifest`).
//! - The zero-shot COCO protocol's caption manifest and reference images (`coco`).
//!
//! The crate depends on no other mdm crate but `mdm-shards` (its durable file writes): it reads
//! image folders and caption manifests.

pub mod clip;
pub mod coco;
pub mod error;
pub mod folder;
pub mod frechet;
pub mod inception;
pub mod manifest;
pub mod npz;
pub mod resize;
pub mod stats;

pub use error::{Error, Result};
