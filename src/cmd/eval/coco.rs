//! `mdm eval coco-prep`: the caption manifest and reference images of the zero-shot COCO
//! protocol (FID-30K on COCO val2014).
//!
//! The selection and image rules are `mdm_metrics::coco`'s: `--n` distinct val2014 images drawn
//! by a seeded shuffle, one seeded caption each, centre-cropped and resized (CatmullRom, PIL's
//! BICUBIC kernel) to `--size`. The three-command flow:
//!
//! ```text
//! mdm eval coco-prep --captions annotations/captions_val2014.json --images val2014 --out coco30k
//! mdm sample CHECKPOINT --t5 T5_DIR --manifest coco30k/captions.jsonl --out-dir gen
//! mdm eval fid coco30k/ref gen --inception pt_inception.pth
//! mdm eval clip coco30k/captions.jsonl --images gen --clip CLIP_DIR
//! ```
//!
//! The outputs in `--out`: `captions.jsonl` (one row per kept pair: `id`, `caption`, `image_id`,
//! `file` = `<image_id>.png`, `source`), `ref/<file>` (the reference PNGs, same names as the
//! generated ones), and `coco-prep.json` (settings and counts). A rerun keeps every valid PNG in
//! `ref/` and is refused if `coco-prep.json` records other settings (`ref/` would mix two
//! selections). An image that is missing or does not decode is printed and its pair left out of
//! the manifest; only unreadable captions or unwritable outputs stop the run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use mdm_metrics::coco::{self, Captions, RefOptions, RefStatus};
use serde_json::{json, Value};

#[derive(Args)]
pub struct CocoPrepArgs {
    /// COCO captions JSON (captions_val2014.json).
    #[arg(long)]
    captions: PathBuf,
    /// Folder of the images the JSON's file_name entries name (val2014/).
    #[arg(long)]
    images: PathBuf,
    /// Output folder: captions.jsonl, ref/, coco-prep.json.
    #[arg(long)]
    out: PathBuf,
    /// Number of (image, caption) pairs: distinct images, at most the captioned images.
    #[arg(long, default_value_t = 30_000)]
    n: usize,
    /// Seed of the selection (images and captions).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Side of the square reference PNGs.
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Decoding threads (default: the available cores, at most 8).
    #[arg(long)]
    workers: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// The settings a resume must repeat, as recorded in coco-prep.json.
fn settings(a: &CocoPrepArgs) -> Value {
    json!({
        "n": a.n,
        "seed": a.seed,
        "size": a.size,
        "selection": "distinct captioned images by seeded Fisher-Yates shuffle (SplitMix64) of image ids, one seeded caption each",
        "crop": "centre square of the shorter side, offset rounded down",
        "filter": "CatmullRom (cubic convolution a=-0.5, PIL BICUBIC kernel), antialiased",
    })
}

fn check_resume(record: &Path, want: &Value) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(record) else { return Ok(()) };
    let old: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", record.display()))?;
    let key = |v: &Value| ["n", "seed", "size"].map(|k| v.get(k).cloned());
    if old.get("settings").map(key) != Some(key(want)) {
        bail!(
            "{} records other settings ({}); this run asks for {}: use another --out (ref/ would mix two selections)",
            record.display(),
            old.get("settings").unwrap_or(&Value::Null),
            want
        );
    }
    Ok(())
}

pub fn run(a: CocoPrepArgs) -> Result<ExitCode> {
    let workers = a.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)));
    if workers == 0 || a.size == 0 || a.n == 0 {
        bail!("--workers, --size and --n must be at least 1");
    }
    if !a.images.is_dir() {
        bail!("--images {}: not a folder", a.images.display());
    }
    let caps = Captions::read(&a.captions)?;
    if !caps.orphans.is_empty() {
        let shown: Vec<String> = caps.orphans.iter().take(5).map(|o| format!("{} (image {})", o.ann_id, o.image_id)).collect();
        eprintln!(
            "{}: {} annotations name no image and are skipped: {}{}",
            a.captions.display(),
            caps.orphans.len(),
            shown.join(", "),
            if caps.orphans.len() > 5 { ", ..." } else { "" }
        );
    }
    let pairs = caps.select(a.n, a.seed)?;

    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let record = a.out.join("coco-prep.json");
    let want = settings(&a);
    check_resume(&record, &want)?;
    let ref_dir = a.out.join("ref");

    let bar = if a.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(pairs.len() as u64) };
    bar.set_style(indicatif::ProgressStyle::with_template("coco-prep {bar:30} {pos}/{len} images {elapsed} (eta {eta})")?);
    // Rejections are printed as they happen, above the bar.
    let on_done = |r: &mdm_metrics::Result<RefStatus>| {
        if let Err(e) = r {
            bar.suspend(|| eprintln!("rejected: {e}"));
        }
        bar.inc(1);
    };
    let opts = RefOptions { size: a.size, workers };
    let done = coco::prepare_references(&pairs, &a.images, &ref_dir, &opts, &on_done)?;
    bar.finish_and_clear();

    let (mut written, mut kept, mut rejected) = (0usize, 0usize, vec![]);
    let mut rows = vec![];
    for (p, r) in pairs.iter().zip(&done) {
        match r {
            Ok(RefStatus::Written) => written += 1,
            Ok(RefStatus::Kept) => kept += 1,
            Err(e) => {
                rejected.push(json!({"image_id": p.image_id, "source": p.file_name, "error": e.to_string()}));
                continue;
            }
        }
        rows.push(p);
    }
    let manifest = a.out.join("captions.jsonl");
    coco::write_manifest(&manifest, rows.iter().copied())?;

    // PNGs in ref/ outside the manifest would enter FID over ref/.
    let wanted: std::collections::HashSet<String> = rows.iter().map(|p| p.file()).collect();
    let strays = std::fs::read_dir(&ref_dir)
        .with_context(|| format!("listing {}", ref_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.to_ascii_lowercase().ends_with(".png") && !n.starts_with('.') && !wanted.contains(n))
        .count();
    if strays > 0 {
        eprintln!("warning: {} holds {strays} PNGs that are not in the manifest: FID over it would count them", ref_dir.display());
    }

    let summary = json!({
        "captions": a.captions,
        "images": a.images,
        "settings": want,
        "workers": workers,
        "counts": {
            "images": caps.images.len(),
            "captioned_images": caps.captioned(),
            "orphan_annotations": caps.orphans.len(),
            "empty_captions": caps.empty,
            "pairs": pairs.len(),
            "written": written,
            "kept": kept,
            "rejected": rejected.len(),
            "manifest_rows": rows.len(),
            "stray_pngs": strays,
        },
        "rejected": rejected,
    });
    coco::write_atomic(&record, format!("{}\n", serde_json::to_string_pretty(&summary)?).as_bytes())?;
    println!("{} pairs = {written} written + {kept} kept + {} rejected", pairs.len(), rejected.len());
    println!("wrote {} ({} rows), {}, {}", manifest.display(), rows.len(), ref_dir.display(), record.display());
    Ok(ExitCode::SUCCESS)
}
