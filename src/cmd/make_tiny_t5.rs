//! `mdm make-tiny-t5 DIR`: write a seeded random tiny T5 (HF layout) and a T5-style
//! tokenizer.json built in code, for demos that must not download anything.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Folder to write config.json, model.safetensors and tokenizer.json into.
    pub dir: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: Args) -> Result<ExitCode> {
    mdm_ingest::t5::make_tiny_t5(&a.dir, a.seed)?;
    println!("{}: tiny T5 written (seed {})", a.dir.display(), a.seed);
    println!("NOTE: {}", mdm_ingest::t5::TINY_T5_NOTICE);
    Ok(ExitCode::SUCCESS)
}
