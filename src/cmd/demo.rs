//! `mdm demo`: the whole story on CPU from synthetic data, downloading nothing:
//! an ImageNet-shaped folder of generated photos → `ingest imagenet` → train a tiny 32² UNet →
//! grow it into a 64²/32² NestedUNet trained on mixed-resolution batches → sample a grid.
//! With `--video`, then: generated mp4 clips → `ingest webvid` with a tiny random T5 → a tiny
//! text-to-video UNet → an animated GIF and the same clips as an MP4.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use clap::Args;
use image::{codecs::jpeg::JpegEncoder, ExtendedColorType, Rgb, RgbImage};
use mdm_ingest::settings::{ImageSettings, VideoSettings};
use mdm_ingest::sources::webvid::{self, WebvidOptions, WebvidSource};
use mdm_ingest::t5::{EncodeOptions, StorageDtype, T5Device};
use mdm_ingest::text::TextSpec;
use mdm_ingest::sources::imagenet::{self, ImagenetOptions, Split};
use mdm_ingest::sources::RunOptions as IngestRun;
use mdm_trainer::diffusion::{SampleOptions, Sampler};
use mdm_trainer::model::Conditioning;
use mdm_trainer::pictures::{clip_frames, gif_bytes, grid, png_bytes};
use mdm_trainer::sample::Trained;
use mdm_trainer::tch::{Device, Tensor};
use mdm_trainer::train::{self, RunOptions};

#[derive(Args)]
pub struct DemoArgs {
    /// Output folder (created; an earlier demo's output there is replaced).
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// Generated photos per class (4 classes).
    #[arg(long, default_value_t = 64)]
    per_class: u32,
    /// Optimizer steps of each stage.
    #[arg(long, default_value_t = 300)]
    steps: u64,
    /// Also the video story (about 4 more minutes; needs the ffmpeg tool, which setup installs).
    #[arg(long)]
    video: bool,
}

const CLASSES: [(&str, &str, [u8; 3]); 4] = [
    ("n00000001", "red disc", [220, 40, 40]),
    ("n00000002", "green square", [40, 180, 60]),
    ("n00000003", "blue disc", [40, 70, 220]),
    ("n00000004", "yellow square", [230, 210, 40]),
];

const TINY_32: &str = include_str!("../../configs/models/tiny_32x32.toml");
const TINY_64: &str = include_str!("../../configs/models/tiny_64x64.toml");
const TINY_VIDEO_32: &str = include_str!("../../configs/models/tiny_video_32x32.toml");

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    ensure!(args.per_class >= 8 && args.steps >= 20, "--per-class must be >= 8 and --steps >= 20");
    let out = std::path::absolute(&args.out)?;
    for sub in ["src", "shards", "runs", "configs", "video-src", "t5"] {
        let p = out.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing old {}", p.display()))?;
        }
    }
    println!("mdm demo: synthetic data on CPU, nothing is downloaded (output in {})\n", out.display());

    println!("1. an ImageNet-shaped folder of generated photos (4 classes × {}, 96×72 JPEGs)", args.per_class);
    let src = out.join("src");
    write_photos(&src, args.per_class)?;

    println!("\n2. $ mdm ingest imagenet --src {} --split train --resolution 64 --extra-resolution 32", src.display());
    let shards = out.join("shards/imagenet");
    let settings = ImageSettings { resolution: 64, extra_resolutions: vec![32], ..ImageSettings::default() }.validate()?;
    let run = IngestRun { out: shards.clone(), threads: 0, part: None, progress: false };
    let opts = ImagenetOptions { src: src.clone(), split: Split::Train, val_labels: None, synset_order: None };
    let summary = imagenet::ingest(&opts, &settings, &run).context("demo ingest")?;
    println!("   {summary}");

    let s1 = write_config(&out, "tiny_32", TINY_32, args.steps, &shards, "resolution = 32\nbatch_size = 16", "lr = 1e-3\nwarmup_steps = 20", None)?;
    println!("\n3. $ mdm train --config {}   (class-conditional 32² UNet, 10% label dropout)", s1.display());
    let quiet = RunOptions { quiet: false, ..Default::default() };
    train::train_from_file(&s1, &quiet).context("demo stage 1")?;
    let (first, last) = loss_trend(&out.join("runs/tiny_32"))?;
    println!("   loss: mean of the first 20 steps {first:.4} → last 20 steps {last:.4}");

    let s2 = write_config(
        &out,
        "tiny_64",
        TINY_64,
        args.steps,
        &shards,
        "batch_size = 12\nmixed_ratio = \"64:2,32:1\"",
        "lr = 1e-3\nwarmup_steps = 20",
        Some(&out.join("runs/tiny_32")),
    )?;
    println!("\n4. $ mdm train --config {}   (64² NestedUNet grown from stage 3; 2:1 mixed 64²/32² batches)", s2.display());
    train::train_from_file(&s2, &quiet).context("demo stage 2")?;
    let (first2, last2) = loss_trend(&out.join("runs/tiny_64"))?;
    println!("   loss: mean of the first 20 steps {first2:.4} → last 20 steps {last2:.4}");

    let grid_path = out.join("samples.png");
    println!("\n5. $ mdm sample --checkpoint {} --class 0 --class 1 --class 2 --class 3 --count 3 --guidance 3 --out {}", out.join("runs/tiny_64").display(), grid_path.display());
    let s = Trained::load(&out.join("runs/tiny_64"), true, Device::Cpu)?;
    let labels: Vec<i64> = (0..4).flat_map(|c| [c, c, c]).collect();
    let cond = Conditioning::Class(Tensor::from_slice(&labels));
    let opts = SampleOptions { steps: Some(50), sampler: Sampler::Ddpm, guidance_scale: 3.0, threshold: None, frames: 1 };
    let levels = s.sample(&cond, labels.len() as i64, 0, &opts)?;
    let (w, h, rgb) = grid(&levels)?;
    std::fs::write(&grid_path, png_bytes(w, h, rgb)?)?;
    println!("   wrote {} (top row 64², bottom row 32²; classes: red disc, green square, blue disc, yellow square, 3 each)", grid_path.display());
    let mut fell = last < first && last2 < first2;
    if args.video {
        fell &= video(&out, args.steps, &opts)?;
    }
    if !fell {
        println!("\nwarning: the loss did not fall in every stage (noisy at this size; try --steps 600)");
    }
    println!("\nTensorBoard logs: {}/runs/*/tb", out.display());
    Ok(ExitCode::SUCCESS)
}

/// Stages 6–10: WebVid-shaped clips → shards with T5 states → a tiny text-to-video UNet → GIF
/// (sampled with `sample_opts`, as the image grid). Returns whether the loss fell.
fn video(out: &Path, steps: u64, sample_opts: &SampleOptions) -> Result<bool> {
    const CLIPS: [(&str, &str, &str); 4] = [("red", "navy", "0x1e1e64"), ("yellow", "green", "0x145a1e"), ("white", "black", "0x101010"), ("cyan", "purple", "0x501e5a")];
    let videos = out.join("video-src/videos");
    std::fs::create_dir_all(&videos)?;
    println!("\n6. WebVid-shaped clips: 16 mp4s of a square moving over a plain background (the ffmpeg tool), and results.csv");
    let mut csv = String::from("videoid,contentUrl,duration,page_dir,name\n");
    let mut i = 0;
    for (fg, bg_name, bg) in CLIPS {
        // Right and left, each at two speeds (px/s).
        for speed in [12, 18, -12, -18] {
            let x = if speed > 0 { format!("mod(t*{speed},48)") } else { format!("48-mod(t*{},48)", -speed) };
            let graph = format!("color=c={bg}:s=64x48:r=10:d=3[bg];color=c={fg}:s=16x16:r=10:d=3[fg];[bg][fg]overlay=x='{x}':y='16+8*sin(t*3)':shortest=1");
            let file = videos.join(format!("{}.mp4", 1000 + i));
            let status = std::process::Command::new("ffmpeg")
                .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", &graph, "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"])
                .arg(&file)
                .status()
                .context("running the ffmpeg tool (scripts/setup.sh installs it)")?;
            ensure!(status.success(), "ffmpeg failed writing {}", file.display());
            let way = if speed > 0 { "right" } else { "left" };
            csv.push_str(&format!("{},https://example.com/{i}.mp4,PT00H00M03S,demo,a {fg} square moving {way} on {bg_name}\n", 1000 + i));
            i += 1;
        }
    }
    let table = out.join("video-src/results.csv");
    std::fs::write(&table, csv)?;

    let t5 = out.join("t5");
    println!("\n7. $ mdm make-tiny-t5 {}   (a seeded random T5 built in code: untrained, for demos only)", t5.display());
    mdm_ingest::t5::make_tiny_t5(&t5, 0)?;

    let shards = out.join("shards/webvid");
    println!("\n8. $ mdm ingest webvid --csv {} --videos {} --frames 4 --fps 4 --resolution 32 --clips-per-video 4 --t5 {}", table.display(), videos.display(), t5.display());
    let settings = VideoSettings { frames: 4, fps: 4.0, resolution: 32, clips_per_video: 4, ..VideoSettings::default() }.validate()?;
    let run = IngestRun { out: shards.clone(), threads: 0, part: None, progress: false };
    let options = EncodeOptions { device: T5Device::Cpu, ..EncodeOptions::default() };
    let text = TextSpec { model_dir: t5.clone(), options, storage: StorageDtype::F16 };
    let opts = WebvidOptions { source: WebvidSource::Csv { csv: table, videos }, text: Some(text) };
    let summary = webvid::ingest(&opts, &settings, &run).context("demo video ingest")?;
    println!("   {summary}");

    let cfg = write_config(out, "tiny_video_32", TINY_VIDEO_32, steps, &shards, "resolution = 32\nbatch_size = 4\nframes = 4", "lr = 5e-4\nwarmup_steps = 20", None)?;
    println!("\n9. $ mdm train --config {}   (text-to-video 32² UNet, temporal attention over 4 frames)", cfg.display());
    train::train_from_file(&cfg, &RunOptions { quiet: false, ..Default::default() }).context("demo video stage")?;
    let (first, last) = loss_trend(&out.join("runs/tiny_video_32"))?;
    println!("   loss: mean of the first 20 steps {first:.4} → last 20 steps {last:.4}");

    let gif = out.join("samples.gif");
    let prompts: Vec<String> = CLIPS.iter().map(|(fg, bgn, _)| format!("a {fg} square moving right on {bgn}")).collect();
    println!("\n10. $ mdm sample --checkpoint {} --prompt ... (4 prompts) --t5 {} --guidance 3 --out {}", out.join("runs/tiny_video_32").display(), t5.display(), gif.display());
    let s = Trained::load(&out.join("runs/tiny_video_32"), true, Device::Cpu)?;
    let cond = super::sample::encode_prompts(&t5, &prompts, 1, Device::Cpu)?;
    let clips = s.sample(&cond, prompts.len() as i64, 0, sample_opts)?;
    let pictures = clip_frames(&clips, s.run.frames)?;
    std::fs::write(&gif, gif_bytes(&pictures, 4.0)?)?;
    println!("   wrote {} (4 clips of 4 frames, looping at 4 fps; prompts: {})", gif.display(), prompts.join("; "));
    let mp4 = out.join("samples.mp4");
    let codec = mdm_ingest::encode::write_mp4(&pictures, 4.0, &mp4)?;
    println!("   wrote {} (the same frames, {codec:?})", mp4.display());
    Ok(last < first)
}

/// Means of `losses.jsonl`'s first and last 20 steps.
fn loss_trend(run: &Path) -> Result<(f64, f64)> {
    let text = std::fs::read_to_string(run.join("losses.jsonl"))?;
    let l: Vec<f64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect();
    ensure!(l.len() >= 20, "too few steps logged");
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    Ok((mean(&l[..20]), mean(&l[l.len() - 20..])))
}

/// A run config for a demo stage, written to `out/configs/NAME.toml` (rerunnable by hand).
#[allow(clippy::too_many_arguments)]
fn write_config(
    out: &Path,
    name: &str,
    model: &str,
    steps: u64,
    shards: &Path,
    data: &str,
    optim: &str,
    grow_from: Option<&Path>,
) -> Result<PathBuf> {
    let dir = out.join("configs");
    std::fs::create_dir_all(&dir)?;
    // The model config beside it, as in configs/models/.
    let model_file = dir.join(format!("{name}_model.toml"));
    std::fs::write(&model_file, model)?;
    let grow = grow_from.map_or(String::new(), |p| format!("[progressive]\ngrow_from = {:?}\n\n", p.display().to_string()));
    let text = format!(
        "# mdm demo, stage {name}\nmodel_file = {:?}\n\n[run]\nout = {:?}\nsteps = {steps}\ndevice = \"cpu\"\nthreads = 1\nlog_every = 25\ncheckpoint_every = 100\n\n[data]\nshards = [{:?}]\n{data}\ncfg_dropout = 0.1\nworkers = 1\n\n[optim]\n{optim}\nema_decay = 0.99\n\n{grow}",
        model_file.display().to_string(),
        out.join("runs").join(name).display().to_string(),
        shards.display().to_string(),
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text)?;
    Ok(p)
}

/// `src/train/<wnid>/*.JPEG` (96×72 photos of a shape on a textured background) and
/// `src/LOC_synset_mapping.txt`.
fn write_photos(src: &Path, per_class: u32) -> Result<()> {
    let mut mapping = String::new();
    for (c, (wnid, name, colour)) in CLASSES.iter().enumerate() {
        mapping.push_str(&format!("{wnid} {name}\n"));
        let dir = src.join("train").join(wnid);
        std::fs::create_dir_all(&dir)?;
        for i in 0..per_class {
            let img = photo(c, *colour, i);
            let mut bytes = vec![];
            JpegEncoder::new_with_quality(&mut bytes, 92).encode(img.as_raw(), img.width(), img.height(), ExtendedColorType::Rgb8)?;
            std::fs::write(dir.join(format!("{wnid}_{i}.JPEG")), bytes)?;
        }
    }
    std::fs::write(src.join("LOC_synset_mapping.txt"), mapping)?;
    Ok(())
}

fn photo(class: usize, colour: [u8; 3], i: u32) -> RgbImage {
    let (w, h) = (96u32, 72u32);
    // Deterministic jitter of position, size and background per image.
    let hash = |k: u32| ((i.wrapping_mul(2_654_435_761) ^ k.wrapping_mul(40_503)) % 1000) as f32 / 1000.0;
    let (cx, cy) = (30.0 + 36.0 * hash(1), 24.0 + 24.0 * hash(2));
    let r = 11.0 + 6.0 * hash(3);
    let bg = [40.0 + 60.0 * hash(4), 40.0 + 60.0 * hash(5), 40.0 + 60.0 * hash(6)];
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
        let inside = if class.is_multiple_of(2) { dx * dx + dy * dy < r * r } else { dx.abs() < r && dy.abs() < r };
        let shade = 0.8 + 0.2 * (y as f32 / h as f32);
        let px = if inside { colour.map(|v| v as f32) } else { bg };
        Rgb(px.map(|v| (v * shade).min(255.0) as u8))
    })
}
