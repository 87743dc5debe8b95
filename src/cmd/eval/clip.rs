//! `mdm eval clip MANIFEST --images DIR --clip CLIPDIR`: torchmetrics' CLIP score of generated
//! images against their manifest captions.
//!
//! MANIFEST is the JSON Lines of `mdm sample --manifest` (rows `id`, `caption`, optional `file`,
//! default `<id>.png` inside DIR). Writes per-sample scores (`id,file,score`, score = 100·cos,
//! unclamped) as CSV and a JSON summary beside it; prints `CLIP score <mean> over N images`,
//! the mean clamped at 0 as torchmetrics' `CLIPScore` does. A missing or undecodable image is
//! reported by path and counted, never fatal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use mdm_metrics::clip::{mean_score, scores_of_embeds, ClipModel};
use mdm_metrics::manifest::{read_manifest, Row};
use mdm_trainer::tch::Tensor;
use mdm_trainer::run_config::DeviceChoice;
use mdm_trainer::run_config::pick_device;
use serde_json::json;

#[derive(Args)]
pub struct ClipArgs {
    /// JSON Lines of rows {id, caption, file?} (what `mdm sample --manifest` read).
    manifest: PathBuf,
    /// Folder of the images (`file`, or `<id>.png`, of each row).
    #[arg(long)]
    images: PathBuf,
    /// Hugging Face CLIPModel folder: config.json, model.safetensors, tokenizer.json
    /// (preprocessor_config.json and tokenizer_config.json are read when present).
    #[arg(long)]
    clip: PathBuf,
    /// Per-sample CSV; the JSON summary is written beside it with the extension .json.
    /// Default: DIR/clip_scores.csv.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Images per model batch.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Why an image was not scored.
enum Bad {
    Missing,
    Corrupt(String),
}

fn load_image(path: &Path) -> Result<image::RgbImage, Bad> {
    if !path.is_file() {
        return Err(Bad::Missing);
    }
    let img = image::open(path).map_err(|e| Bad::Corrupt(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(Bad::Corrupt("the image has no pixels".into()));
    }
    Ok(img.to_rgb8())
}

/// A CSV field, quoted when it needs to be.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn run(a: ClipArgs) -> Result<ExitCode> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let device = pick_device(a.device)?;
    let rows = read_manifest(&a.manifest)?;
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.caption.is_none()) {
        bail!("{}: row {} (id {:?}) has no \"caption\"", a.manifest.display(), i + 1, r.id);
    }
    if !a.images.is_dir() {
        bail!("{}: not a folder of images", a.images.display());
    }
    let out = a.out.clone().unwrap_or_else(|| a.images.join("clip_scores.csv"));
    let summary_path = out.with_extension("json");
    let clip = ClipModel::load(&a.clip, device).with_context(|| format!("loading CLIP from {}", a.clip.display()))?;

    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(rows.len() as u64)
    };
    bar.set_style(indicatif::ProgressStyle::with_template("clip {bar:30} {pos}/{len} images {elapsed} (eta {eta})")?);
    let (mut scored, mut missing, mut corrupt) = (Vec::<(&Row, f64)>::new(), vec![], vec![]);
    let mut truncated = 0usize;
    for chunk in rows.chunks(a.batch) {
        let (mut ok, mut pixels) = (vec![], vec![]);
        for r in chunk {
            let path = a.images.join(&r.file);
            let px = load_image(&path).and_then(|img| {
                clip.pixel_values(std::slice::from_ref(&img)).map_err(|e| Bad::Corrupt(e.to_string()))
            });
            match px {
                Ok(p) => {
                    ok.push(r);
                    pixels.push(p);
                }
                Err(Bad::Missing) => {
                    bar.suspend(|| eprintln!("missing image {}", path.display()));
                    missing.push(path);
                }
                Err(Bad::Corrupt(e)) => {
                    bar.suspend(|| eprintln!("corrupt image {}: {e}", path.display()));
                    corrupt.push(path);
                }
            }
        }
        if !ok.is_empty() {
            let captions: Vec<String> = ok.iter().map(|r| r.caption.clone().unwrap_or_default()).collect();
            let tokens = clip.tokenizer.batch(&captions)?;
            truncated += tokens.truncated.len();
            let txt = clip.net.text_embeds_of_ids(&tokens.ids, &tokens.mask)?;
            let img = clip.image_embeds(&Tensor::cat(&pixels, 0))?;
            let s = scores_of_embeds(&img, &txt)?;
            scored.extend(ok.into_iter().zip(s));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();

    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut csv = String::from("id,file,score\n");
    for (r, s) in &scored {
        csv += &format!("{},{},{s:.6}\n", csv_field(&r.id), csv_field(&r.file));
    }
    std::fs::write(&out, csv).with_context(|| format!("writing {}", out.display()))?;
    let scores: Vec<f64> = scored.iter().map(|(_, s)| *s).collect();
    let mean = mean_score(&scores);
    let cfg = clip.net.config();
    let summary = json!({
        "clip_score": if scores.is_empty() { None } else { Some(mean) },
        "n": scores.len(),
        "rows": rows.len(),
        "missing": missing.len(),
        "corrupt": corrupt.len(),
        "bad_images": missing.iter().chain(&corrupt).map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "truncated_captions": truncated,
        "manifest": a.manifest.display().to_string(),
        "images": a.images.display().to_string(),
        "clip": a.clip.display().to_string(),
        "scores_csv": out.display().to_string(),
        "model": {
            "image_size": cfg.vision_config.image_size,
            "patch_size": cfg.vision_config.patch_size,
            "projection_dim": cfg.projection_dim,
            "max_tokens": cfg.text_config.max_position_embeddings,
        },
        "device": format!("{device:?}"),
        "definition": "torchmetrics CLIPScore: max(mean over samples of 100*cos(image, caption), 0); per-sample scores unclamped",
    });
    let mut f = std::fs::File::create(&summary_path).with_context(|| format!("writing {}", summary_path.display()))?;
    writeln!(f, "{}", serde_json::to_string_pretty(&summary)?)?;

    if truncated > 0 {
        eprintln!(
            "warning: {truncated} caption(s) longer than {} tokens were cut, as torchmetrics cuts them",
            cfg.text_config.max_position_embeddings
        );
    }
    if !missing.is_empty() || !corrupt.is_empty() {
        eprintln!("warning: {} missing and {} corrupt image(s) not scored", missing.len(), corrupt.len());
    }
    if scores.is_empty() {
        bail!("no image of {} could be scored (see {})", a.manifest.display(), summary_path.display());
    }
    println!("CLIP score {mean:.4} over {} images", scores.len());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("a1"), "a1");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
