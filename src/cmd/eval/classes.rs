//! `mdm eval class-manifest`: the class-balanced evaluation manifest of a class-conditional
//! model (ImageNet FID-50K: 1000 classes × 50), for `mdm sample --manifest`.
//!
//! Rows are `{"id": "<class>_<k>", "class": <class>}` for every class and `k` in `0..per-class`.
//! They come in `per-class` rounds, each round every class once in an order shuffled from
//! `(seed, round)`, so any prefix of the file holds every class within one sample of every other
//! (a run cut short is still balanced). The id of a (class, k) row does not depend on the seed
//! or on the other arguments, so manifests of two seeds name the same images.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

#[derive(Args)]
pub struct ClassManifestArgs {
    /// Number of classes (labels 0..classes).
    #[arg(long, default_value_t = 1000)]
    classes: u32,
    /// Samples per class.
    #[arg(long, default_value_t = 50)]
    per_class: u32,
    /// Output JSONL file.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the order within each round.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The rows `(class, k)` in manifest order.
pub fn order(classes: u32, per_class: u32, seed: u64) -> Vec<(u32, u32)> {
    let mut rows = Vec::with_capacity(classes as usize * per_class as usize);
    for k in 0..per_class {
        let mut round: Vec<u32> = (0..classes).collect();
        // One shuffle per round, its seed a hash of (seed, round).
        mdm_metrics::coco::shuffle(&mut round, seed ^ (u64::from(k) + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
        rows.extend(round.into_iter().map(|c| (c, k)));
    }
    rows
}

pub fn run(a: ClassManifestArgs) -> Result<ExitCode> {
    if a.classes == 0 || a.per_class == 0 {
        bail!("--classes and --per-class must be at least 1");
    }
    let mut text = String::new();
    for (c, k) in order(a.classes, a.per_class, a.seed) {
        text.push_str(&json!({"id": format!("{c}_{k}"), "class": c}).to_string());
        text.push('\n');
    }
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    mdm_metrics::coco::write_atomic(&a.out, text.as_bytes())?;
    println!(
        "wrote {}: {} rows = {} classes x {} (seed {})",
        a.out.display(),
        u64::from(a.classes) * u64::from(a.per_class),
        a.classes,
        a.per_class,
        a.seed
    );
    Ok(ExitCode::SUCCESS)
}
