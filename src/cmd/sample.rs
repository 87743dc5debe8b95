//! `mdm sample`: sample a checkpoint into a PNG grid of every level's output (video models: an
//! animated GIF or an MP4 of such grids).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use mdm_ingest::t5::{EncodeOptions, TextEncoder};
use mdm_trainer::diffusion::{SampleOptions, Sampler};
use mdm_trainer::model::Conditioning;
use mdm_ingest::encode::write_mp4;
use mdm_trainer::pictures::{clip_frames, gif_bytes, grid, png_bytes};
use mdm_trainer::sample::Trained;
use mdm_trainer::tch::{Device, Kind, Tensor};
use mdm_trainer::run_config::{CondKind, DeviceChoice};
use mdm_trainer::run_config::pick_device;

#[derive(Clone, Copy, ValueEnum)]
pub enum SamplerKind {
    Ddpm,
    Ddim,
}

impl From<SamplerKind> for Sampler {
    fn from(k: SamplerKind) -> Sampler {
        match k {
            SamplerKind::Ddpm => Sampler::Ddpm,
            SamplerKind::Ddim => Sampler::Ddim { eta: 0.0 },
        }
    }
}

#[derive(Args)]
pub struct SampleArgs {
    /// A checkpoint folder, or a run folder (its newest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text prompt (text models; repeat for several). Needs --t5.
    #[arg(long)]
    prompt: Vec<String>,
    /// The T5 encoder the shards were embedded with (Hugging Face layout).
    #[arg(long)]
    t5: Option<PathBuf>,
    /// Class index (class models; repeat for several).
    #[arg(long)]
    class: Vec<i64>,
    /// Samples per prompt/class (or in all, for unconditional models).
    #[arg(long, default_value_t = 4)]
    count: i64,
    /// Denoising steps (spread evenly over the training schedule's steps).
    #[arg(long, default_value_t = 50)]
    steps: usize,
    /// Classifier-free guidance scale (1 = off).
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    /// Ancestral DDPM, or deterministic DDIM.
    #[arg(long, value_enum, default_value = "ddpm")]
    sampler: SamplerKind,
    /// Seed of the sampling noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    no_ema: bool,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Frames per second of a video model's GIF or MP4.
    #[arg(long, default_value_t = 8.0)]
    fps: f64,
    /// PNG grid (image models); animated GIF (.gif) or MP4 video (.mp4) for video models.
    #[arg(long, required_unless_present = "manifest", conflicts_with = "manifest")]
    out: Option<PathBuf>,
    /// JSON Lines of rows {id, caption | class, file?} (as `mdm eval coco-prep` writes): one PNG
    /// of the outermost level per row into --out-dir, in fixed batches, resumable.
    #[arg(long, requires = "out_dir", conflicts_with_all = ["prompt", "class"])]
    manifest: Option<PathBuf>,
    /// Folder of the --manifest PNGs (and its sample.json of settings).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Rows per sampling batch with --manifest (part of the settings a resume must repeat).
    #[arg(long, default_value_t = 16)]
    batch: usize,
}

pub fn run(a: SampleArgs) -> Result<ExitCode> {
    let device = pick_device(a.device)?;
    if let (Some(manifest), Some(out_dir)) = (&a.manifest, &a.out_dir) {
        let settings = super::sample_manifest::Settings {
            checkpoint: &a.checkpoint,
            t5: a.t5.as_deref(),
            ema: !a.no_ema,
            seed: a.seed,
            batch: a.batch,
            steps: a.steps,
            guidance: a.guidance,
            sampler: a.sampler.into(),
            device,
        };
        return super::sample_manifest::run(manifest, out_dir, &settings);
    }
    let out = a.out.clone().context("give --out FILE (or --manifest FILE --out-dir DIR)")?;
    let s = Trained::load(&a.checkpoint, !a.no_ema, device)?;
    if a.count < 1 {
        bail!("--count must be at least 1");
    }
    let cond = match s.cond_kind() {
        CondKind::Class => {
            if a.class.is_empty() || !a.prompt.is_empty() {
                bail!("this model is class-conditional: give --class N (and no --prompt)");
            }
            let classes = s.model.null_class().unwrap_or(0);
            if let Some(c) = a.class.iter().find(|c| !(0..classes).contains(*c)) {
                bail!("--class {c} is out of range 0..{classes}");
            }
            let labels: Vec<i64> = a.class.iter().flat_map(|c| std::iter::repeat_n(*c, a.count as usize)).collect();
            Conditioning::Class(Tensor::from_slice(&labels).to_device(device))
        }
        CondKind::Text => {
            let t5 = a.t5.as_ref().context("this model is text-conditional: give --prompt TEXT and --t5 MODEL_DIR")?;
            if a.prompt.is_empty() || !a.class.is_empty() {
                bail!("this model is text-conditional: give --prompt TEXT (and no --class)");
            }
            encode_prompts(t5, &a.prompt, a.count, device)?
        }
        CondKind::None => {
            if !a.prompt.is_empty() || !a.class.is_empty() {
                bail!("this model is unconditional: give neither --prompt nor --class");
            }
            Conditioning::None
        }
    };
    let n = match &cond {
        Conditioning::Text { tokens, .. } => tokens.size()[0],
        Conditioning::Class(c) => c.size()[0],
        Conditioning::None => a.count,
    };
    let opts = SampleOptions {
        steps: Some(a.steps),
        sampler: a.sampler.into(),
        guidance_scale: a.guidance,
        threshold: None,
        frames: 1, // Trained::sample sets the model's clip length
    };
    let frames = s.run.frames;
    let ext = |x: &str| out.extension().is_some_and(|e| e.eq_ignore_ascii_case(x));
    let (is_gif, is_mp4) = (ext("gif"), ext("mp4"));
    if frames > 1 && !is_gif && !is_mp4 {
        bail!("this is a video model ({frames} frames per clip): --out must name a .gif or .mp4");
    }
    if frames == 1 && (is_gif || is_mp4) {
        bail!("this is an image model: --out names a PNG grid");
    }
    if !(a.fps > 0.0 && a.fps <= 100.0) {
        bail!("--fps must be in (0, 100]");
    }
    let levels = s.sample(&cond, n, a.seed, &opts)?;
    let write = |bytes: Vec<u8>| std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()));
    let what = if frames > 1 {
        let pictures = clip_frames(&levels, frames)?;
        let clips = format!("clips of {frames} frames at {} fps", a.fps);
        if is_mp4 {
            let codec = write_mp4(&pictures, a.fps, &out)?;
            format!("{clips}, {codec:?}")
        } else {
            write(gif_bytes(&pictures, a.fps)?)?;
            clips
        }
    } else {
        let (w, h, rgb) = grid(&levels)?;
        write(png_bytes(w, h, rgb)?)?;
        format!("samples, {w}x{h}")
    };
    println!(
        "wrote {} ({} levels {:?} × {n} {what}) from {}",
        out.display(),
        levels.len(),
        s.run.sides,
        s.checkpoint.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Encodes each prompt (rounded through f16, as the shards store it), `count` rows each.
pub(crate) fn encode_prompts(t5: &std::path::Path, prompts: &[String], count: i64, device: Device) -> Result<Conditioning> {
    let mut enc = TextEncoder::from_dir(t5, EncodeOptions::default())?;
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let encoded = enc.encode(&refs)?;
    let d = enc.dim() as i64;
    let t = encoded.iter().flatten().map(|e| e.tokens()).max().unwrap_or(1) as i64;
    let (mut tokens, mut masks) = (vec![], vec![]);
    for (p, e) in prompts.iter().zip(&encoded) {
        let e = e.as_ref().with_context(|| format!("prompt {p:?} was rejected by the encoder (too long?)"))?;
        let n = e.tokens() as i64;
        let x = Tensor::from_slice(&e.states).view([1, n, d]).constant_pad_nd([0, 0, 0, t - n]);
        let m = Tensor::ones([1, n], (Kind::Float, Device::Cpu)).constant_pad_nd([0, t - n]);
        for _ in 0..count {
            tokens.push(x.shallow_clone());
            masks.push(m.shallow_clone());
        }
    }
    Ok(Conditioning::Text {
        tokens: Tensor::cat(&tokens, 0).to_kind(Kind::Half).to_kind(Kind::Float).to_device(device),
        mask: Tensor::cat(&masks, 0).to_device(device),
    })
}
