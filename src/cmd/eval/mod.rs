//! `mdm eval`: FID statistics and distance, CLIP score, and the zero-shot COCO preparation.

pub mod classes;
pub mod clip;
pub mod coco;
pub mod fid;
pub mod fid_stats;

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum EvalCmd {
    /// Inception pool3 statistics {mu, sigma} of an image folder or shard manifest, as .npz.
    FidStats(fid_stats::FidStatsArgs),
    /// Fréchet distance between two image folders or .npz statistics.
    Fid(fid::FidArgs),
    /// CLIP score (torchmetrics' CLIPScore) of generated images against their captions.
    Clip(clip::ClipArgs),
    /// The zero-shot COCO protocol: caption manifest and centre-cropped reference images.
    CocoPrep(coco::CocoPrepArgs),
    /// The class-balanced evaluation manifest (ImageNet: 1000 classes x 50) for `mdm sample --manifest`.
    ClassManifest(classes::ClassManifestArgs),
}

pub fn run(cmd: EvalCmd) -> Result<ExitCode> {
    super::keep_freed_memory();
    match cmd {
        EvalCmd::FidStats(a) => fid_stats::run(a),
        EvalCmd::Fid(a) => fid::run(a),
        EvalCmd::Clip(a) => clip::run(a),
        EvalCmd::CocoPrep(a) => coco::run(a),
        EvalCmd::ClassManifest(a) => classes::run(a),
    }
}
