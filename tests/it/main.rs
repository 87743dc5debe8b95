//! The workspace's cross-crate tests, one binary with a module per command (as ripgrep does):
//! most run the `mdm` binary itself on generated data.

mod common;
mod eval_cli;
mod ingest_cli;
mod loader_cli;
mod model_cli;
mod t5_cli;
mod train_cli;
mod train_dist;
