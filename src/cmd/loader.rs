//! `mdm loader order`: print the sample ids a rank gets, step by step, to see and check the
//! order a trainer would get (resumable with the state files a trainer saves).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{ensure, Result};
use clap::Subcommand;
use mdm_loader::{EpochEnd, LoaderBuilder, LoaderState};

#[derive(Subcommand)]
pub enum LoaderCmd {
    /// Print one line per step: `step N: id id ...` (this rank's ids, in order).
    Order {
        /// Shard set folder or manifest (or s3:// URL); repeat to mix several sets.
        #[arg(long, required = true)]
        shards: Vec<String>,
        /// Mixing weight of each --shards, in order (default 1 each).
        #[arg(long, value_delimiter = ',')]
        weights: Vec<f64>,
        /// Samples per rank and step.
        #[arg(long)]
        batch: u64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 1)]
        world: u64,
        #[arg(long, default_value_t = 0)]
        rank: u64,
        /// Steps to print.
        #[arg(long)]
        steps: usize,
        /// Resolution ratio, e.g. `256:2,64:1` (default: the largest stored resolution).
        #[arg(long, value_delimiter = ',', value_parser = parse_ratio)]
        ratio: Vec<(u32, f64)>,
        /// Fill the epoch's last global batch with its first samples instead of dropping it.
        #[arg(long)]
        pad: bool,
        /// Decode threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Continue from this state file (as written by --state-out or a trainer).
        #[arg(long)]
        state_in: Option<PathBuf>,
        /// Write the state after the last printed step here.
        #[arg(long)]
        state_out: Option<PathBuf>,
    },
}

fn parse_ratio(s: &str) -> Result<(u32, f64), String> {
    let (res, w) = s.split_once(':').unwrap_or((s, "1"));
    let res = res.parse().map_err(|_| format!("bad resolution {res:?} in {s:?} (want RES:WEIGHT)"))?;
    let w = w.parse().map_err(|_| format!("bad weight {w:?} in {s:?} (want RES:WEIGHT)"))?;
    Ok((res, w))
}

pub fn run(cmd: LoaderCmd) -> Result<ExitCode> {
    match cmd {
        LoaderCmd::Order { shards, weights, batch, seed, world, rank, steps, ratio, pad, workers, state_in, state_out } => {
            ensure!(weights.is_empty() || weights.len() == shards.len(), "{} weights for {} --shards", weights.len(), shards.len());
            let mut b = LoaderBuilder::new();
            for (i, s) in shards.iter().enumerate() {
                b.source(s.as_str(), weights.get(i).copied().unwrap_or(1.0));
            }
            b.batch_size(batch).seed(seed).rank(rank, world).workers(workers).prefetch(2);
            if !ratio.is_empty() {
                b.mixed_ratio(ratio);
            }
            if pad {
                b.epoch_end(EpochEnd::Pad);
            }
            if let Some(p) = &state_in {
                b.resume(Some(LoaderState::load(p)?));
            }
            let mut loader = b.build()?;
            for batch in loader.by_ref().take(steps) {
                let batch = batch?;
                for c in &batch.skipped {
                    eprintln!("warning: skipped corrupt row {c}");
                }
                println!("step {}: {}", batch.step, batch.ids.join(" "));
            }
            if let Some(p) = &state_out {
                loader.state().save(p)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ratio;

    #[test]
    fn ratio_flag() {
        assert_eq!(parse_ratio("256:2"), Ok((256, 2.0)));
        assert_eq!(parse_ratio("64"), Ok((64, 1.0)));
        assert!(parse_ratio("x:1").unwrap_err().contains("bad resolution"));
    }
}
