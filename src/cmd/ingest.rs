//! `mdm ingest imagenet|cc12m`: datasets as users have them on disk → shards.
//!
//! Image settings come from `--config FILE.toml` (keys of `mdm_ingest::settings::ImageSettings`)
//! and are overridden by the flags given; the resolved settings go into the manifest.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use mdm_ingest::settings::{Crop, ImageSettings, Part, SmallPolicy};
use mdm_ingest::sources::cc12m::{self, Cc12mOptions};
use mdm_ingest::sources::imagenet::{self, ImagenetOptions, Split};
use mdm_ingest::sources::RunOptions;
use mdm_ingest::t5::{EncodeOptions, LongCaptions, StorageDtype, T5Device, T5Dtype};
use mdm_ingest::text::TextSpec;

#[derive(Subcommand)]
pub enum IngestCmd {
    /// ImageNet ILSVRC2012: train/<wnid>/, val/ (flat with labels file, or sorted), or the train tar.
    Imagenet(ImagenetArgs),
    /// CC12M: img2dataset webdataset tars (folder, brace pattern, one tar) or a TSV/CSV/Parquet table.
    Cc12m(Cc12mArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SplitArg {
    Train,
    Val,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CropArg {
    Center,
    KeepAspect,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SmallArg {
    Upscale,
    Reject,
}

/// Settings shared by all sources.
#[derive(Args)]
pub struct Common {
    /// Output folder (shards, manifest.json, rejects.jsonl).
    #[arg(long)]
    out: PathBuf,
    /// TOML file of image settings; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Stored resolution R (R×R JPEG). Default 256.
    #[arg(long)]
    resolution: Option<u32>,
    /// Extra, lower resolution from the same decode (repeatable).
    #[arg(long = "extra-resolution")]
    extra_resolution: Vec<u32>,
    /// JPEG quality of the stored images. Default 90.
    #[arg(long)]
    quality: Option<u8>,
    /// Reject pictures whose shortest side is below this (`too-small`). Default 32.
    #[arg(long)]
    min_side: Option<u32>,
    /// Pictures between min-side and the resolution: upscale (default) or reject.
    #[arg(long, value_enum)]
    small: Option<SmallArg>,
    /// Centre crop (default) or keep the aspect and record the crop box.
    #[arg(long, value_enum)]
    crop: Option<CropArg>,
    /// Header check: width × height above this is a decompression bomb.
    #[arg(long)]
    max_pixels: Option<u64>,
    /// Inputs per shard (fixed boundaries make parts and resume deterministic). Default 8192.
    #[arg(long)]
    shard_inputs: Option<u64>,
    /// Worker threads (default: all cores). The output does not depend on it.
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Process slice I of N (0-based), e.g. 3/16 from a Slurm array or Kubernetes indexed job.
    #[arg(long)]
    part: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
pub struct ImagenetArgs {
    /// Dataset root (holding train/ and val/, or the Kaggle ILSVRC/Data/CLS-LOC layout), or the train tar.
    #[arg(long)]
    src: PathBuf,
    #[arg(long, value_enum)]
    split: SplitArg,
    /// Validation labels (LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt); found next to the data by default.
    #[arg(long)]
    val_labels: Option<PathBuf>,
    /// wnids in ILSVRC2012_ID order (from the devkit's meta.mat), for a ground-truth file of integers.
    #[arg(long)]
    synset_order: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args)]
pub struct Cc12mArgs {
    /// Folder of tars, a brace pattern such as 'cc12m/{00000..01242}.tar', one tar, or a table (.tsv/.csv/.parquet).
    #[arg(long)]
    src: String,
    /// Root of the table's relative image paths (default: the table's folder).
    #[arg(long)]
    image_root: Option<PathBuf>,
    #[command(flatten)]
    t5: T5Args,
    #[command(flatten)]
    common: Common,
}

/// The T5 encoder that embeds captions (inline at ingest, or `mdm embed`).
#[derive(Args)]
pub struct T5Args {
    /// Hugging Face T5 folder (config.json, model.safetensors or sharded, tokenizer.json);
    /// captions are embedded and stored ragged in the shards.
    #[arg(long = "t5", value_name = "MODEL_DIR")]
    pub model: Option<PathBuf>,
    /// Compute dtype of the encoder: f32 or bf16.
    #[arg(long = "t5-dtype", default_value = "f32")]
    pub dtype: T5Dtype,
    /// Stored dtype of the embeddings.
    #[arg(long = "t5-storage", value_enum, default_value = "f16")]
    pub storage: StorageArg,
    /// cpu, cuda, cuda:N or auto (CUDA when available).
    #[arg(long = "t5-device", default_value = "auto")]
    pub device: T5Device,
    /// Token limit per caption, </s> included.
    #[arg(long, default_value_t = mdm_ingest::t5::DEFAULT_MAX_TOKENS)]
    pub max_tokens: usize,
    /// Longer captions: truncate (default) or reject (`long-caption`, what ml-mdm does).
    #[arg(long, default_value = "truncate")]
    pub long_captions: LongCaptions,
    /// Captions per forward pass (sorted by length within windows of 16 batches).
    #[arg(long = "t5-batch", default_value_t = 64)]
    pub batch: usize,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StorageArg {
    F16,
    Bf16,
}

impl T5Args {
    /// The spec, when `--t5` was given.
    pub fn spec(&self) -> Option<TextSpec> {
        let model_dir = self.model.clone()?;
        let options = EncodeOptions {
            dtype: self.dtype,
            device: self.device,
            max_tokens: self.max_tokens,
            long_captions: self.long_captions,
            batch_size: self.batch,
            sort_window: self.batch.saturating_mul(16),
        };
        let storage = match self.storage {
            StorageArg::F16 => StorageDtype::F16,
            StorageArg::Bf16 => StorageDtype::Bf16,
        };
        Some(TextSpec { model_dir, options, storage })
    }
}

impl Common {
    fn resolve(&self) -> Result<(ImageSettings, RunOptions)> {
        let mut s = match &self.config {
            Some(p) => ImageSettings::from_toml_file(p)?,
            None => ImageSettings::default(),
        };
        if let Some(r) = self.resolution {
            s.resolution = r;
        }
        if !self.extra_resolution.is_empty() {
            s.extra_resolutions = self.extra_resolution.clone();
        }
        if let Some(q) = self.quality {
            s.quality = q;
        }
        if let Some(m) = self.min_side {
            s.min_side = m;
        }
        if let Some(p) = self.small {
            s.small = match p {
                SmallArg::Upscale => SmallPolicy::Upscale,
                SmallArg::Reject => SmallPolicy::Reject,
            };
        }
        if let Some(c) = self.crop {
            s.crop = match c {
                CropArg::Center => Crop::Center,
                CropArg::KeepAspect => Crop::KeepAspect,
            };
        }
        if let Some(m) = self.max_pixels {
            s.max_pixels = m;
        }
        if let Some(n) = self.shard_inputs {
            s.shard_inputs = n;
        }
        s.validate()?;
        let part = self.part.as_deref().map(Part::parse).transpose()?;
        let run = RunOptions { out: self.out.clone(), threads: self.threads, part, progress: !self.quiet };
        Ok((s, run))
    }
}

pub fn run(cmd: IngestCmd) -> Result<ExitCode> {
    let summary = match cmd {
        IngestCmd::Imagenet(a) => {
            let (settings, run) = a.common.resolve()?;
            let opts = ImagenetOptions {
                src: a.src.clone(),
                split: match a.split {
                    SplitArg::Train => Split::Train,
                    SplitArg::Val => Split::Val,
                },
                val_labels: a.val_labels,
                synset_order: a.synset_order,
            };
            imagenet::ingest(&opts, &settings, &run).with_context(|| format!("ingest imagenet {}", a.src.display()))?
        }
        IngestCmd::Cc12m(a) => {
            let (settings, run) = a.common.resolve()?;
            let opts = Cc12mOptions { src: a.src.clone(), image_root: a.image_root, text: a.t5.spec() };
            cc12m::ingest(&opts, &settings, &run).with_context(|| format!("ingest cc12m {}", a.src))?
        }
    };
    println!("{summary}");
    println!("rejects: {}", summary.rejects.display());
    Ok(ExitCode::SUCCESS)
}
