//! `mdm shards inspect|verify|merge`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use mdm_shards::{Manifest, ShardSet};

#[derive(Subcommand)]
pub enum ShardsCmd {
    /// Summarise a shard set: kind, rows, bytes, resolutions, encoder, rejects by reason.
    Inspect {
        /// Folder with manifest.json, or a manifest file.
        dir: PathBuf,
    },
    /// Recompute file sha256 and row checksums; report every corruption; exit 1 if any.
    Verify {
        dir: PathBuf,
    },
    /// Merge part manifests (folders or files) into OUT/manifest.json.
    Merge {
        /// Folder to write the merged manifest into; shard paths become relative to it.
        #[arg(long)]
        out: PathBuf,
        /// Part manifests, or folders holding manifest.json.
        #[arg(required = true)]
        parts: Vec<PathBuf>,
    },
}

pub fn run(cmd: ShardsCmd) -> Result<ExitCode> {
    match cmd {
        ShardsCmd::Inspect { dir } => {
            let set = ShardSet::open(&dir)?;
            print!("{}", inspect_table(&set));
            Ok(ExitCode::SUCCESS)
        }
        ShardsCmd::Verify { dir } => {
            let set = ShardSet::open(&dir)?;
            let bar = indicatif::ProgressBar::new(set.manifest.shards.len() as u64);
            bar.set_style(indicatif::ProgressStyle::with_template("verify {bar:30} {pos}/{len} shards {elapsed}")?);
            let report = mdm_shards::verify(&set, |_| bar.inc(1));
            bar.finish_and_clear();
            for p in &report.problems {
                println!("CORRUPT {p}");
            }
            println!(
                "{}: {} shards, {} rows, {} checked, {} problems",
                set.manifest_path.display(),
                report.shards,
                report.rows_checked,
                human_bytes(report.bytes_checked),
                report.problems.len()
            );
            Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        ShardsCmd::Merge { out, parts } => {
            let mut loaded = Vec::new();
            for p in &parts {
                let set = ShardSet::open(p).with_context(|| format!("reading part {}", p.display()))?;
                loaded.push((set.dir, set.manifest));
            }
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let merged = Manifest::merge(&loaded, &out)?;
            if out.join(mdm_shards::MANIFEST_FILE).exists() && parts.iter().all(|p| p != &out) {
                bail!("{} already has a manifest.json; refusing to overwrite", out.display());
            }
            let path = merged.write(&out)?;
            println!("merged {} parts: {} shards, {} rows -> {}", parts.len(), merged.shards.len(), merged.rows(), path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The `inspect` summary as text.
pub fn inspect_table(set: &ShardSet) -> String {
    use std::fmt::Write;
    let m = &set.manifest;
    let mut s = String::new();
    let _ = writeln!(s, "shard set   {}", set.manifest_path.display());
    let _ = writeln!(s, "kind        {} (format v{}, schema {})", m.kind, m.version, m.schema_fingerprint);
    let _ = writeln!(s, "resolutions {}", m.resolutions.iter().map(|r| format!("{r}²")).collect::<Vec<_>>().join(", "));
    let _ = writeln!(s, "shards      {}", m.shards.len());
    let _ = writeln!(s, "rows        {}", m.rows());
    let _ = writeln!(s, "bytes       {} ({:.1} KiB/row)", human_bytes(m.bytes()), m.bytes() as f64 / 1024.0 / m.rows().max(1) as f64);
    match &m.text_encoder {
        Some(e) => {
            let _ = writeln!(
                s,
                "encoder     {} ({} x{}, max {} tokens, weights {}…, tokenizer {}…)",
                e.model_id,
                format!("{:?}", e.dtype).to_lowercase(),
                e.dim,
                e.max_tokens,
                &e.weights_sha256.get(..12).unwrap_or(&e.weights_sha256),
                &e.tokenizer_sha256.get(..12).unwrap_or(&e.tokenizer_sha256)
            );
        }
        None if m.kind.has_text() => {
            let _ = writeln!(s, "encoder     none (captions without embeddings)");
        }
        None => {}
    }
    if let Some(c) = &m.classes {
        let _ = writeln!(s, "classes     {}", c.len());
    }
    let st = &m.stats;
    let _ = writeln!(s, "inputs      {} = {} written + {} rejected", st.inputs, st.written, st.rejected_total());
    for (reason, n) in &st.rejected {
        let _ = writeln!(s, "  rejected  {n:>8}  {reason}");
    }
    let _ = writeln!(s, "{:<28} {:>8} {:>11} {:>4}  sha256", "file", "rows", "bytes", "rgs");
    for e in &m.shards {
        let _ = writeln!(s, "{:<28} {:>8} {:>11} {:>4}  {}…", e.file, e.rows, human_bytes(e.bytes), e.row_groups, &e.sha256[..12.min(e.sha256.len())]);
    }
    s
}

pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", units[u]) }
}
