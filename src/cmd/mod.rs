//! One module per subcommand: clap arguments plus a `run` that returns an exit code.

pub mod demo;
pub mod embed;
pub mod eval;
pub mod ingest;
pub mod loader;
pub mod make_tiny_t5;
pub mod model;
pub mod sample;
pub mod sample_manifest;
pub mod shards;
pub mod t5;
pub mod train;
