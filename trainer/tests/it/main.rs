//! The trainer's integration tests, one binary (each test binary links libtorch: two links
//! instead of ten, with `tests/dist.rs`). libtorch's random number generator is process-global, so every test holds
//! [`common::torch_rng`] while it runs: a seeded test can never see another test's draws.
//! `tests/dist.rs` (two ranks over c10d/Gloo in threads) stays a binary of its own: run beside
//! these tests in one process it ended in a SIGSEGV after its ranks had finished (cause not
//! found yet).

mod common;
mod diffusion_features;
mod diffusion_tables;
mod fidelity;
mod flops;
mod growth;
mod layout;
mod model_features;
mod train_run;
mod video_model;
