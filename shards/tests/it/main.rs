//! The shard format's integration tests, one binary with a module per topic (as ripgrep does).

mod common;
mod integrity;
mod merge;
mod pyarrow;
mod roundtrip;
