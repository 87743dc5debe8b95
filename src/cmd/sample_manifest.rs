//! `mdm sample --manifest FILE --out-dir DIR`: one PNG (the outermost level) per manifest row,
//! in fixed batches, resumable.
//!
//! The manifest is JSON Lines, one object per row (what `mdm eval coco-prep` writes; read by
//! `mdm_metrics::manifest`):
//! `id` (required, unique; the PNG is `<id>.png` unless `file` names it), `caption` (text
//! models) or `class` (class models), and optional `file` (a plain `.png` file name). Other keys
//! are kept for other tools and ignored here.
//!
//! Rows are cut into batches of `--batch` in manifest order and batch k is sampled from the seed
//! `mix(seed, k)`, so a rerun into the same folder skips the batches whose PNGs all exist and
//! redoes the others with the very same noise: the folder ends equal to an uninterrupted run's.
//! `sample.json` in the folder records the settings; a rerun with other settings is refused.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use mdm_metrics::manifest::{read_manifest, Row};
use mdm_trainer::diffusion::{SampleOptions, Sampler};
use mdm_trainer::model::Conditioning;
use mdm_trainer::sample::Trained;
use mdm_trainer::tch::{Device, Kind, Tensor};
use mdm_trainer::run_config::CondKind;
use serde_json::{json, Value};

/// The seed of batch `k`: splitmix64 of the run seed and the batch index.
pub fn batch_seed(seed: u64, k: u64) -> u64 {
    let mut z = seed ^ k.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) >> 1 // non-negative as i64 for tch::manual_seed
}

/// What the sampler needs besides the manifest (from `mdm sample`'s arguments).
pub struct Settings<'a> {
    pub checkpoint: &'a Path,
    pub t5: Option<&'a Path>,
    pub ema: bool,
    pub seed: u64,
    pub batch: usize,
    pub steps: usize,
    pub guidance: f64,
    pub sampler: Sampler,
    pub device: Device,
}

pub fn run(manifest: &Path, out_dir: &Path, s: &Settings) -> Result<ExitCode> {
    if s.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let rows = read_manifest(manifest)?;
    let sampler = Trained::load(s.checkpoint, s.ema, s.device)?;
    if sampler.run.frames > 1 {
        bail!("--manifest samples image models (this is a video model of {} frames)", sampler.run.frames);
    }
    let kind = sampler.cond_kind();
    for (i, r) in rows.iter().enumerate() {
        let at = || format!("{} row {} (id {:?})", manifest.display(), i + 1, r.id);
        match kind {
            CondKind::Text if r.caption.is_none() => bail!("{}: this model is text-conditional: the row needs a \"caption\"", at()),
            CondKind::Class => {
                let classes = sampler.model.null_class().unwrap_or(0);
                match r.class {
                    None => bail!("{}: this model is class-conditional: the row needs a \"class\"", at()),
                    Some(c) if !(0..classes).contains(&c) => bail!("{}: class {c} is out of range 0..{classes}", at()),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if kind == CondKind::Text && s.t5.is_none() {
        bail!("this model is text-conditional: give --t5 MODEL_DIR (the encoder its shards were embedded with)");
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    check_settings(out_dir, manifest, &rows, s, &sampler.checkpoint)?;

    let opts = SampleOptions { steps: Some(s.steps), sampler: s.sampler, guidance_scale: s.guidance, threshold: None, frames: 1 };
    let mut t5 = match (kind, s.t5) {
        (CondKind::Text, Some(dir)) => Some(mdm_ingest::t5::TextEncoder::from_dir(dir, mdm_ingest::t5::EncodeOptions::default())?),
        _ => None,
    };
    let bar = indicatif::ProgressBar::new(rows.len() as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("sample {bar:30} {pos}/{len} images {elapsed} (eta {eta})")?);
    let (mut written, mut present, mut rejected) = (0usize, 0usize, 0usize);
    for (k, chunk) in rows.chunks(s.batch).enumerate() {
        if chunk.iter().all(|r| out_dir.join(&r.file).is_file()) {
            present += chunk.len();
            bar.inc(chunk.len() as u64);
            continue;
        }
        let (keep, cond) = match kind {
            CondKind::Text => {
                let enc = t5.as_mut().expect("checked above");
                let captions: Vec<&str> = chunk.iter().map(|r| r.caption.as_deref().unwrap_or("")).collect();
                let encoded = enc.encode(&captions)?;
                let mut keep = vec![];
                let mut states = vec![];
                for (r, e) in chunk.iter().zip(&encoded) {
                    match e {
                        Some(e) => {
                            keep.push(r);
                            states.push(e);
                        }
                        None => {
                            bar.suspend(|| eprintln!("{}: id {:?}: caption rejected by the text encoder (too long?); no image", manifest.display(), r.id));
                            rejected += 1;
                        }
                    }
                }
                let d = enc.dim() as i64;
                let t = states.iter().map(|e| e.tokens()).max().unwrap_or(1) as i64;
                let (mut tokens, mut masks) = (vec![], vec![]);
                for e in &states {
                    let n = e.tokens() as i64;
                    tokens.push(Tensor::from_slice(&e.states).view([1, n, d]).constant_pad_nd([0, 0, 0, t - n]));
                    masks.push(Tensor::ones([1, n], (Kind::Float, Device::Cpu)).constant_pad_nd([0, t - n]));
                }
                if keep.is_empty() {
                    bar.inc(chunk.len() as u64);
                    continue;
                }
                // Rounded through f16, as the shards store the embeddings.
                let cond = Conditioning::Text {
                    tokens: Tensor::cat(&tokens, 0).to_kind(Kind::Half).to_kind(Kind::Float).to_device(s.device),
                    mask: Tensor::cat(&masks, 0).to_device(s.device),
                };
                (keep, cond)
            }
            CondKind::Class => {
                let labels: Vec<i64> = chunk.iter().map(|r| r.class.expect("checked above")).collect();
                (chunk.iter().collect(), Conditioning::Class(Tensor::from_slice(&labels).to_device(s.device)))
            }
            CondKind::None => (chunk.iter().collect(), Conditioning::None),
        };
        let levels = sampler.sample(&cond, keep.len() as i64, batch_seed(s.seed, k as u64), &opts)?;
        let outer = levels.first().context("the sampler returned no levels")?;
        let px = ((outer.to_device(Device::Cpu).to_kind(Kind::Float).clamp(-1.0, 1.0) + 1.0) * 127.5)
            .round()
            .to_kind(Kind::Uint8)
            .permute([0, 2, 3, 1])
            .contiguous();
        let side = px.size()[1] as u32;
        for (i, r) in keep.iter().enumerate() {
            let path = out_dir.join(&r.file);
            if path.is_file() {
                present += 1; // written by an earlier, interrupted run with the same noise
                continue;
            }
            let img = px.get(i as i64);
            let mut rgb = vec![0u8; (side * side * 3) as usize];
            let len = rgb.len();
            img.copy_data_u8(&mut rgb, len);
            let png = mdm_trainer::pictures::png_bytes(side, side, rgb)?;
            write_atomic(&path, &png)?;
            written += 1;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    println!(
        "{} rows = {written} written + {present} already there + {rejected} rejected, into {} (from {})",
        rows.len(),
        out_dir.display(),
        sampler.checkpoint.display()
    );
    Ok(if rejected > 0 { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

/// Writes `sample.json` on the first run; refuses a rerun whose settings differ.
fn check_settings(out_dir: &Path, manifest: &Path, rows: &[Row], s: &Settings, checkpoint: &Path) -> Result<()> {
    use sha2::Digest;
    let bytes = std::fs::read(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let checkpoint = std::fs::canonicalize(checkpoint).unwrap_or_else(|_| checkpoint.to_path_buf());
    let record = json!({
        "manifest_sha256": hex::encode(sha2::Sha256::digest(&bytes)),
        "rows": rows.len(),
        "checkpoint": checkpoint.display().to_string(),
        "ema": s.ema,
        "seed": s.seed,
        "batch": s.batch,
        "steps": s.steps,
        "guidance": s.guidance,
        "sampler": s.sampler.name(),
    });
    let path: PathBuf = out_dir.join("sample.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let old: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        let differs: Vec<&str> = ["manifest_sha256", "rows", "checkpoint", "ema", "seed", "batch", "steps", "guidance", "sampler"]
            .into_iter()
            .filter(|k| old.get(*k) != record.get(*k))
            .collect();
        if !differs.is_empty() {
            bail!(
                "{} was sampled with other settings ({}): rerun with the same ones to resume, or choose another --out-dir",
                path.display(),
                differs.join(", ")
            );
        }
        return Ok(());
    }
    write_atomic(&path, format!("{}\n", serde_json::to_string_pretty(&record)?).as_bytes())
}

/// A killed run never leaves a truncated PNG (`mdm_shards::durable`).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(mdm_shards::durable::write_atomic(path, bytes)?)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn batch_seeds_differ_and_fit_i64() {
        let seeds: HashSet<u64> = (0..1000).map(|k| batch_seed(0, k)).collect();
        assert_eq!(seeds.len(), 1000);
        assert!(seeds.iter().all(|&s| s <= i64::MAX as u64));
        assert_ne!(batch_seed(0, 0), batch_seed(1, 0));
    }
}
