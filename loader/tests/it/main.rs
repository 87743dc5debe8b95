//! The loader's integration tests, one binary with a module per topic (as ripgrep does).

mod common;
mod batches;
mod order;
mod ready;
mod robust;
mod s3;
