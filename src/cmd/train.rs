//! `mdm train --config FILE [--resume]`: one training run (see `mdm_trainer::train`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use mdm_trainer::train::{train_from_file, Outcome, RunOptions};

#[derive(Args)]
pub struct TrainArgs {
    /// Run config (TOML; see configs/).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the newest checkpoint in the run folder (exactly: same losses on CPU).
    #[arg(long)]
    resume: bool,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Stop (with a checkpoint) after this many steps of this invocation.
    #[arg(long)]
    stop_after: Option<u64>,
}

pub fn run(a: TrainArgs) -> Result<ExitCode> {
    let opts = RunOptions { resume: a.resume, quiet: a.quiet, stop_after: a.stop_after };
    let outcome = train_from_file(&a.config, &opts).with_context(|| format!("training {}", a.config.display()))?;
    match outcome {
        Outcome::Finished { step, checkpoint } => {
            println!("finished at step {step}: {}", checkpoint.display());
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Interrupted { step, checkpoint } => {
            println!("stopped at step {step}: {} (continue with --resume)", checkpoint.display());
            Ok(ExitCode::from(if a.stop_after.is_some() { 0 } else { 130 }))
        }
    }
}
