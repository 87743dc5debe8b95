//! `mdm embed`: add or replace T5 caption embeddings of an existing text shard set, writing a
//! new shard set (same shard names) and manifest; the source is never edited.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::ingest::T5Args;

#[derive(Args)]
pub struct EmbedArgs {
    /// Source shard set (folder with manifest.json, or the manifest file).
    #[arg(long)]
    shards: PathBuf,
    /// Output folder (new shards, manifest.json, rejects.jsonl).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    t5: T5Args,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: EmbedArgs) -> Result<ExitCode> {
    let Some(spec) = a.t5.spec() else { bail!("--t5 MODEL_DIR is required") };
    let summary = mdm_ingest::text::embed_shards(&a.shards, &a.out, &spec, !a.quiet)
        .with_context(|| format!("embed {} into {}", a.shards.display(), a.out.display()))?;
    println!("{summary}");
    let s = &summary.stats;
    println!("set: in {} = written {} + rejected {}", s.inputs, s.written, s.rejected_total());
    Ok(ExitCode::SUCCESS)
}
