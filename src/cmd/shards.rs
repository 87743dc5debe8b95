//! `mdm shards inspect|verify|merge`.

use std::path::{Path, PathBuf};
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
    /// Merge part manifests (folders or files) into OUT/manifest.json, and their rejects lists
    /// into OUT/rejects.jsonl (in part order).
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
            let mut rejects = Vec::new();
            for p in &parts {
                let set = ShardSet::open(p).with_context(|| format!("reading part {}", p.display()))?;
                rejects.push((rejects_file(&set.manifest_path), set.manifest.stats.rejected_total()));
                loaded.push((set.dir, set.manifest));
            }
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let merged = Manifest::merge(&loaded, &out)?;
            if out.join(mdm_shards::MANIFEST_FILE).exists() && parts.iter().all(|p| p != &out) {
                bail!("{} already has a manifest.json; refusing to overwrite", out.display());
            }
            // The rejects first, the manifest last (as ingest does): a merged manifest always
            // has its rejects list beside it.
            let rejects_path = out.join("rejects.jsonl");
            merge_rejects(&rejects, &rejects_path)?;
            let path = merged.write(&out)?;
            println!(
                "merged {} parts: {} shards, {} rows, {} rejects -> {}",
                parts.len(),
                merged.shards.len(),
                merged.rows(),
                merged.stats.rejected_total(),
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The rejects list written beside a manifest: `rejects.jsonl` beside `manifest.json`,
/// `rejects.part-I-of-N.jsonl` beside `manifest.part-I-of-N.json` (the names `mdm ingest` and
/// `mdm embed` use).
fn rejects_file(manifest: &Path) -> PathBuf {
    let name = manifest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let middle = name.strip_prefix("manifest").and_then(|r| r.strip_suffix(".json")).unwrap_or("");
    manifest.with_file_name(format!("rejects{middle}.jsonl"))
}

/// Concatenates the parts' rejects lists, in part order, into `out` (durably:
/// `mdm_shards::durable`). Each list must hold one line per reject its manifest counts, so that the
/// merged `rejects.jsonl` accounts for `in = written + rejected`; a part without rejects may
/// lack the file.
fn merge_rejects(parts: &[(PathBuf, u64)], out: &Path) -> Result<()> {
    use std::io::{BufRead, Write};
    // A part's problem, kept here so its message names the part, not the temporary file.
    let mut bad_part: Option<anyhow::Error> = None;
    let written = mdm_shards::durable::write_atomic_with(out, |w| {
        for (path, expected) in parts {
            let file = match std::fs::File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && *expected == 0 => continue,
                Err(e) => {
                    bad_part = Some(anyhow::Error::new(e).context(format!("reading {} ({expected} rejects in its manifest)", path.display())));
                    return Err(std::io::Error::other("a part's rejects list"));
                }
            };
            let mut lines = 0u64;
            for line in std::io::BufReader::new(file).split(b'\n') {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        bad_part = Some(anyhow::Error::new(e).context(format!("reading {}", path.display())));
                        return Err(std::io::Error::other("a part's rejects list"));
                    }
                };
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                w.write_all(&line)?;
                w.write_all(b"\n")?;
                lines += 1;
            }
            if lines != *expected {
                bad_part = Some(anyhow::anyhow!("{} lists {lines} rejects, its manifest counts {expected}", path.display()));
                return Err(std::io::Error::other("a part's rejects list"));
            }
        }
        Ok(())
    });
    match (bad_part, written) {
        (Some(e), _) => Err(e),
        (None, r) => Ok(r?),
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
