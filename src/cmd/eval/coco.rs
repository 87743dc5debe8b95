//! `mdm eval coco-prep` (being written: issue 16).

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct CocoPrepArgs {}

pub fn run(_a: CocoPrepArgs) -> Result<ExitCode> {
    bail!("mdm eval coco-prep is not built yet")
}
