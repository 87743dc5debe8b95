//! One module per subcommand: clap arguments plus a `run` that returns an exit code.

pub mod demo;
pub mod model;
pub mod shards;
