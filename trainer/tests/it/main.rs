//! The trainer's integration tests, one binary (each test binary links libtorch once).
//! libtorch's random number generator is process-global, so every test that draws holds
//! [`common::torch_rng`] while it runs: a seeded test can never see another test's draws.
//! `dist` runs two ranks over c10d/Gloo in threads of this process.

mod common;
mod diffusion_features;
mod diffusion_tables;
mod dist;
mod fidelity;
mod flops;
mod growth;
mod layout;
mod model_features;
mod train_run;
mod video_model;
