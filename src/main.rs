//! `mdm`: the command-line entry point. It only parses the subcommand and dispatches to
//! `cmd::*`, which call into the library crates.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mdm", version, about = "Matryoshka Diffusion Models: shards, loader, trainer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, verify and merge shard sets.
    #[command(subcommand)]
    Shards(cmd::shards::ShardsCmd),
    /// Turn datasets as they sit on disk (ImageNet, CC12M, WebVid) into shards.
    #[command(subcommand)]
    Ingest(cmd::ingest::IngestCmd),
    /// Add or replace T5 caption embeddings of a text shard set (writes a new set).
    Embed(cmd::embed::EmbedArgs),
    /// See and check the loader's sample order.
    #[command(subcommand)]
    Loader(cmd::loader::LoaderCmd),
    /// Run the end-to-end demo on synthetic data (nothing is downloaded).
    Demo(cmd::demo::DemoArgs),
    /// Inspect a (Nested)UNet config, run one forward pass of a (converted ml-mdm) checkpoint.
    #[command(subcommand)]
    Model(cmd::model::ModelCmd),
    /// T5 text encoder: encode caption lines to a safetensors file (ids, mask, hidden states).
    #[command(subcommand)]
    T5(cmd::t5::T5Cmd),
    /// Write a seeded random (untrained) tiny T5 and tokenizer.json, for demos and tests.
    MakeTinyT5(cmd::make_tiny_t5::Args),
    /// Train a (Nested)UNet from shards: checkpoints, exact resume, logs.
    Train(cmd::train::TrainArgs),
    /// Sample a checkpoint into a PNG grid of every level's output (video: animated GIF or MP4).
    Sample(cmd::sample::SampleArgs),
    /// Evaluate generated images: FID statistics and distance, CLIP score, COCO preparation.
    #[command(subcommand)]
    Eval(cmd::eval::EvalCmd),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Before anything asks libtorch about CUDA. Without it, CUDA is simply unavailable.
    if let Err(e) = mdm_trainer::cuda::load_torch_cuda() {
        if std::env::var_os("MDM_DEBUG_CUDA").is_some() {
            eprintln!("libtorch_cuda.so not loaded: {e}");
        }
    }
    let result = match cli.command {
        Command::Shards(c) => cmd::shards::run(c),
        Command::Ingest(c) => cmd::ingest::run(c),
        Command::Embed(a) => cmd::embed::run(a),
        Command::Loader(c) => cmd::loader::run(c),
        Command::Demo(a) => cmd::demo::run(a),
        Command::Model(c) => cmd::model::run(c),
        Command::T5(c) => cmd::t5::run(c),
        Command::MakeTinyT5(a) => cmd::make_tiny_t5::run(a),
        Command::Train(a) => cmd::train::run(a),
        Command::Sample(a) => cmd::sample::run(a),
        Command::Eval(c) => cmd::eval::run(c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
