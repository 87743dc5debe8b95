//! `mdm eval fid-stats` and `mdm eval fid` (being written: issue 16).

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct FidStatsArgs {}

#[derive(Args)]
pub struct FidArgs {}

pub fn run_stats(_a: FidStatsArgs) -> Result<ExitCode> {
    bail!("mdm eval fid-stats is not built yet")
}

pub fn run_fid(_a: FidArgs) -> Result<ExitCode> {
    bail!("mdm eval fid is not built yet")
}
