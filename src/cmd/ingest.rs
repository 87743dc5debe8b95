//! `mdm ingest imagenet|cc12m|webvid`: datasets as users have them on disk → shards.
//!
//! Settings come from `--config FILE.toml` (keys of `mdm_ingest::settings::ImageSettings`, or
//! `VideoSettings` for webvid) and are overridden by the flags given, then validated once (into
//! `Validated<_>`, what the sources take); the resolved settings go into the manifest.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use mdm_ingest::settings::{Crop, ImageSettings, Part, ShortPolicy, SmallPolicy, Validated, VideoSettings};
use mdm_ingest::sources::cc12m::{self, Cc12mOptions};
use mdm_ingest::sources::imagenet::{self, ImagenetOptions, Split};
use mdm_ingest::sources::webvid::{self, WebvidOptions, WebvidSource};
use mdm_ingest::sources::RunOptions;
use mdm_ingest::t5::{EncodeOptions, LongCaptions, StorageDtype, T5Device, T5Dtype};
use mdm_ingest::text::TextSpec;

#[derive(Subcommand)]
pub enum IngestCmd {
    /// ImageNet ILSVRC2012: train/<wnid>/, val/ (flat with labels file, or sorted), or the train tar.
    Imagenet(ImagenetArgs),
    /// CC12M: img2dataset webdataset tars (folder, brace pattern, one tar) or a TSV/CSV/Parquet table.
    Cc12m(Cc12mArgs),
    /// WebVid-10M: the CSV with a folder of downloaded videos, or video2dataset tars.
    Webvid(WebvidArgs),
}

/// Output and execution flags of every source.
#[derive(Args)]
pub struct RunArgs {
    /// Output folder (shards, manifest.json, rejects.jsonl).
    #[arg(long)]
    out: PathBuf,
    /// TOML file of settings (the keys of the long flags below, with underscores); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Inputs per shard (fixed boundaries make parts and resume deterministic). Default 8192 images, 1024 videos.
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

impl RunArgs {
    fn options(&self) -> Result<RunOptions> {
        let part = self.part.as_deref().map(Part::parse).transpose()?;
        Ok(RunOptions { out: self.out.clone(), threads: self.threads, part, progress: !self.quiet })
    }
}

/// Settings of the image sources.
#[derive(Args)]
pub struct Common {
    #[command(flatten)]
    run: RunArgs,
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
    small: Option<SmallPolicy>,
    /// Centre crop (default) or keep the aspect and record the crop box.
    #[arg(long, value_enum)]
    crop: Option<Crop>,
    /// Header check: width × height above this is a decompression bomb.
    #[arg(long)]
    max_pixels: Option<u64>,
}

#[derive(Args)]
pub struct ImagenetArgs {
    /// Dataset root (holding train/ and val/, or the Kaggle ILSVRC/Data/CLS-LOC layout), or the train tar.
    #[arg(long)]
    src: PathBuf,
    #[arg(long, value_enum)]
    split: Split,
    /// Validation labels (LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt); found next to the data by default.
    #[arg(long)]
    val_labels: Option<PathBuf>,
    /// Class order of a ground-truth file of integer ILSVRC2012_IDs: the devkit's meta.mat (found beside the ground truth by default) or a text file of wnids in ILSVRC2012_ID order.
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
    pub storage: StorageDtype,
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

#[derive(Args)]
pub struct WebvidArgs {
    /// The WebVid CSV (videoid,contentUrl,duration,page_dir,name); needs --videos.
    #[arg(long, requires = "videos", conflicts_with = "src")]
    csv: Option<PathBuf>,
    /// Folder of downloaded videos: <videoid>.mp4 or <page_dir>/<videoid>.mp4 (also webm, mkv, mov).
    #[arg(long, requires = "csv")]
    videos: Option<PathBuf>,
    /// video2dataset output instead: a folder of tars, a brace pattern, or one tar.
    #[arg(long, required_unless_present = "csv")]
    src: Option<String>,
    #[command(flatten)]
    t5: T5Args,
    #[command(flatten)]
    video: VideoArgs,
}

/// Settings of the video path.
#[derive(Args)]
pub struct VideoArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Frames per clip. Default 16.
    #[arg(long)]
    frames: Option<u32>,
    /// Sampling rate of the stored frames. Default 8.
    #[arg(long)]
    fps: Option<f64>,
    /// Stored resolution R: shortest side to R, centred R×R crop. Default 256.
    #[arg(long)]
    resolution: Option<u32>,
    /// Clip windows per video (start offsets deterministic from the video id and --seed). Default 1.
    #[arg(long)]
    clips_per_video: Option<u32>,
    /// Videos shorter than one clip: reject (`too-short`, default) or loop.
    #[arg(long, value_enum)]
    short: Option<ShortPolicy>,
    /// JPEG quality of the stored frames. Default 90.
    #[arg(long)]
    quality: Option<u8>,
    /// Reject videos whose displayed shortest side is below this (`too-small`). Default 32.
    #[arg(long)]
    min_side: Option<u32>,
    /// Frames of more pixels than this are rejected before decoding. Default 7680×4320.
    #[arg(long)]
    max_pixels: Option<u64>,
    /// Wall-clock limit per video in seconds (`timeout`). Default 60.
    #[arg(long)]
    timeout: Option<f64>,
    /// Seed of the clip start offsets. Default 0.
    #[arg(long)]
    seed: Option<u64>,
}

impl VideoArgs {
    fn resolve(&self) -> Result<(Validated<VideoSettings>, RunOptions)> {
        let mut s = match &self.run.config {
            Some(p) => VideoSettings::from_toml_file(p)?,
            None => VideoSettings::default(),
        };
        let set = |dst: &mut u32, v: Option<u32>| v.into_iter().for_each(|v| *dst = v);
        set(&mut s.frames, self.frames);
        set(&mut s.resolution, self.resolution);
        set(&mut s.clips_per_video, self.clips_per_video);
        set(&mut s.min_side, self.min_side);
        if let Some(v) = self.fps {
            s.fps = v;
        }
        if let Some(p) = self.short {
            s.short = p;
        }
        if let Some(q) = self.quality {
            s.quality = q;
        }
        if let Some(m) = self.max_pixels {
            s.max_pixels = m;
        }
        if let Some(t) = self.timeout {
            s.timeout_secs = t;
        }
        if let Some(v) = self.seed {
            s.seed = v;
        }
        if let Some(n) = self.run.shard_inputs {
            s.shard_inputs = n;
        }
        Ok((s.validate()?, self.run.options()?))
    }
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
        Some(TextSpec { model_dir, options, storage: self.storage })
    }
}

impl Common {
    fn resolve(&self) -> Result<(Validated<ImageSettings>, RunOptions)> {
        let mut s = match &self.run.config {
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
            s.small = p;
        }
        if let Some(c) = self.crop {
            s.crop = c;
        }
        if let Some(m) = self.max_pixels {
            s.max_pixels = m;
        }
        if let Some(n) = self.run.shard_inputs {
            s.shard_inputs = n;
        }
        Ok((s.validate()?, self.run.options()?))
    }
}

pub fn run(cmd: IngestCmd) -> Result<ExitCode> {
    let summary = match cmd {
        IngestCmd::Imagenet(a) => {
            let (settings, run) = a.common.resolve()?;
            let opts = ImagenetOptions {
                src: a.src.clone(),
                split: a.split,
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
        IngestCmd::Webvid(a) => {
            let (settings, run) = a.video.resolve()?;
            let (source, what) = match (a.csv, a.videos, a.src) {
                (Some(csv), Some(videos), _) => (WebvidSource::Csv { csv: csv.clone(), videos }, csv.display().to_string()),
                (_, _, Some(src)) => (WebvidSource::Webdataset(src.clone()), src),
                _ => anyhow::bail!("give --csv FILE --videos DIR, or --src TARS"),
            };
            let opts = WebvidOptions { source, text: a.t5.spec() };
            webvid::ingest(&opts, &settings, &run).with_context(|| format!("ingest webvid {what}"))?
        }
    };
    println!("{summary}");
    println!("rejects: {}", summary.rejects.display());
    Ok(ExitCode::SUCCESS)
}
