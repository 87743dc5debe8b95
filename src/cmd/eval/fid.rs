//! `mdm eval fid A B [--out result.json]`: the Fréchet distance between two sets of statistics.
//!
//! Each of A and B is a `.npz` of {mu, sigma} (ours from `mdm eval fid-stats`, pytorch-fid's
//! `--save-stats`, clean-fid's) or an image folder / manifest, whose statistics are computed as
//! `fid-stats` does (then `--inception` is needed). Prints `FID <value>`, then any eps fallback
//! and warnings (e.g. n < dims + 1) on stderr; `--out` writes
//! {fid, a, b, n_a, n_b, dims, eps, warnings, terms, a_info, b_info} as JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use mdm_metrics::folder::stats_of_images;
use mdm_metrics::frechet::frechet_distance;
use mdm_metrics::npz::read_stats;
use mdm_metrics::stats::Stats;
use serde_json::{json, Value};

use super::fid_stats::FeatureArgs;

#[derive(Args)]
pub struct FidArgs {
    /// First input: statistics (.npz), or an image folder or JSON Lines manifest.
    pub a: PathBuf,
    /// Second input, as the first.
    pub b: PathBuf,
    /// Write the result as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// How image inputs become features (not needed when both inputs are .npz).
    #[command(flatten)]
    pub features: Features,
}

/// [`FeatureArgs`] with `--inception` optional: `None` when it is not given (both inputs `.npz`).
pub struct Features(pub Option<FeatureArgs>);

impl clap::FromArgMatches for Features {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        match m.value_source("inception") {
            Some(_) => Ok(Features(Some(FeatureArgs::from_arg_matches(m)?))),
            None => Ok(Features(None)),
        }
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for Features {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        FeatureArgs::augment_args(cmd).mut_arg("inception", |a| a.required(false))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// Whether `path` names statistics rather than images: a file ending in `.npz`.
fn is_npz(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz"))
}

/// The statistics of one input and a JSON description of where they came from.
fn load(path: &Path, features: &Features, quiet: bool) -> Result<(Stats, Value)> {
    if is_npz(path) {
        let stats = read_stats(path)?;
        return Ok((stats, json!({ "npz": path })));
    }
    let Features(Some(features)) = features else {
        bail!(
            "{} is not a .npz file: computing its statistics needs --inception W.safetensors",
            path.display()
        );
    };
    let options = features.options()?;
    stats_of_images(path, &options, quiet).with_context(|| format!("statistics of {}", path.display()))
}

pub fn run(a: FidArgs) -> Result<ExitCode> {
    let (sa, info_a) = load(&a.a, &a.features, a.quiet)?;
    let (sb, info_b) = load(&a.b, &a.features, a.quiet)?;
    let d = frechet_distance(&sa, &sb)
        .with_context(|| format!("Fréchet distance of {} and {}", a.a.display(), a.b.display()))?;
    println!("FID {}", d.value);
    if let Some(eps) = d.eps {
        eprintln!("eps {eps:e} was added to both covariance diagonals inside the square root");
    }
    for w in &d.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(out) = &a.out {
        let result = json!({
            "fid": d.value,
            "a": a.a,
            "b": a.b,
            "n_a": sa.n,
            "n_b": sb.n,
            "dims": d.dims,
            "eps": d.eps,
            "warnings": d.warnings,
            "terms": {
                "mean": d.mean_term,
                "trace_a": d.trace_a,
                "trace_b": d.trace_b,
                "trace_sqrt": d.trace_sqrt,
            },
            "a_info": info_a,
            "b_info": info_b,
        });
        std::fs::write(out, serde_json::to_string_pretty(&result)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
