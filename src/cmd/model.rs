//! `mdm model params|forward`: inspect a model config, run one forward pass from files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use mdm_trainer::config::ModelConfig;

#[derive(Subcommand)]
pub enum ModelCmd {
    /// Print the parameter table (name, shape, numel; ml-mdm's names) and the total.
    Params {
        /// Model config: a TOML mirror of ml-mdm's YAML (configs/models/) or a fixture's *_config.json.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run one eval forward pass on given inputs (x_t.<i>, times, lm_outputs, lm_mask,
    /// micros.<key>) and write out.<i>.
    Forward {
        #[arg(long)]
        config: PathBuf,
        /// Weights as safetensors under ml-mdm's key names (tools/convert_mlmdm.py).
        #[arg(long)]
        weights: PathBuf,
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Also write the intermediate tensors (debug.<module>), as in the reference fixtures.
        #[arg(long)]
        debug: bool,
    },
}

pub fn run(cmd: ModelCmd) -> Result<ExitCode> {
    match cmd {
        ModelCmd::Params { config } => {
            let cfg = ModelConfig::from_file(&config)?;
            print!("{}", mdm_trainer::run::params_table(&cfg)?);
        }
        ModelCmd::Forward {
            config,
            weights,
            inputs,
            out,
            debug,
        } => {
            let s = mdm_trainer::run::forward_files(&config, &weights, &inputs, &out, debug)
                .with_context(|| format!("forward pass of {}", config.display()))?;
            for (name, shape) in &s.outputs {
                println!("{name}\t{shape:?}");
            }
            println!("wrote {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
