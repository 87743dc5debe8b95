//! `mdm eval clip` (being written: issue 16).

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct ClipArgs {}

pub fn run(_a: ClipArgs) -> Result<ExitCode> {
    bail!("mdm eval clip is not built yet")
}
