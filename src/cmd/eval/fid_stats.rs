//! `mdm eval fid-stats INPUT --inception W.safetensors --out S.npz`: Inception statistics
//! {mu, sigma} of an image folder or manifest, as the `.npz` that pytorch-fid and clean-fid read,
//! plus `S.json` beside it (n, mode, dims, weights sha256, input, rejected images).
//!
//! INPUT is a folder (its `.png`, `.jpg`, `.jpeg`, `.webp` files, not recursive, in sorted order)
//! or a JSON Lines manifest whose rows name a `"file"` relative to the manifest's folder. Images
//! are decoded and resized on worker threads (std threads, a window of batches ahead of the
//! network) and reach the network in input order, so the statistics do not depend on `--workers`.
//! An image that cannot be read is reported by path and counted, never fatal. The work is
//! `mdm_metrics::folder`'s; this command parses the flags and writes the files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use mdm_metrics::folder::{stats_of_images, FeatureOptions};
use mdm_metrics::inception::Dims;
use mdm_metrics::resize::Mode;
use mdm_trainer::tch::Device;
use mdm_trainer::run_config::DeviceChoice;
use mdm_trainer::run_config::pick_device_for;

/// How features are computed: shared by `fid-stats` and by `fid` on image folders.
#[derive(Args, Clone, Debug)]
pub struct FeatureArgs {
    /// FID Inception weights as safetensors (`tools/convert_inception.py` makes them from
    /// pytorch-fid's pt_inception-2015-12-05-6726825d.pth or torch-fidelity's weights file).
    #[arg(long)]
    pub inception: PathBuf,
    /// Whose resize and input scaling to reproduce: clean (clean-fid), pytorch-fid, torchmetrics
    /// (its default antialiased resize), torch-fidelity (TF1 resize; torchmetrics with antialias=False).
    #[arg(long, default_value = "clean", value_parser = parse_mode)]
    pub mode: Mode,
    /// Feature block: 64, 192, 768 or 2048 (pool3, the usual FID).
    #[arg(long, default_value = "2048", value_parser = parse_dims)]
    pub dims: Dims,
    /// Images per network batch.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// cpu, cuda, cuda:N, or auto (CUDA when libtorch sees it).
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// Decode/resize threads (default: the available cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub workers: Option<u64>,
}

#[derive(Args)]
pub struct FidStatsArgs {
    /// Folder of images, or a JSON Lines manifest with a "file" per row (relative to it).
    input: PathBuf,
    /// Output statistics (.npz with mu, sigma); the JSON description is written beside it.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    features: FeatureArgs,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// The `--device` value, resolved by [`FeatureArgs::options`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Auto,
    Cpu,
    Cuda(usize),
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

fn parse_dims(s: &str) -> Result<Dims, String> {
    s.parse::<usize>()
        .ok()
        .and_then(Dims::from_len)
        .ok_or_else(|| format!("{s:?}: the FID Inception gives 64, 192, 768 or 2048 features"))
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    match s {
        "auto" => Ok(DeviceSpec::Auto),
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceSpec::Cuda)
            .ok_or_else(|| format!("{s:?}: expected cpu, cuda, cuda:N or auto")),
    }
}

fn resolve_device(d: DeviceSpec) -> Result<Device> {
    Ok(match d {
        DeviceSpec::Auto => pick_device_for(DeviceChoice::Auto, 0)?,
        DeviceSpec::Cpu => Device::Cpu,
        DeviceSpec::Cuda(n) => pick_device_for(DeviceChoice::Cuda, n)?,
    })
}

impl FeatureArgs {
    /// The library's options, with `--device` resolved.
    pub fn options(&self) -> Result<FeatureOptions> {
        Ok(FeatureOptions {
            inception: self.inception.clone(),
            mode: self.mode,
            dims: self.dims,
            batch: self.batch as usize,
            device: resolve_device(self.device)?,
            workers: self.workers.map(|w| w as usize),
        })
    }
}

pub fn run(a: FidStatsArgs) -> Result<ExitCode> {
    let (stats, info) = stats_of_images(&a.input, &a.features.options()?, a.quiet)?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    mdm_metrics::npz::write_stats(&a.out, &stats).with_context(|| format!("writing {}", a.out.display()))?;
    let json_path = a.out.with_extension("json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&info)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let (n, rejected) = (info["n"].as_u64().unwrap_or(0), info["rejected"].as_array().map_or(0, Vec::len));
    println!("{} images = {n} used + {rejected} rejected -> {}", n as usize + rejected, a.out.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_dims_flags() {
        assert_eq!(parse_device("cuda:3"), Ok(DeviceSpec::Cuda(3)));
        assert_eq!(parse_device("cuda"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(parse_device("cpu"), Ok(DeviceSpec::Cpu));
        assert!(parse_device("gpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        assert_eq!(parse_dims("768"), Ok(Dims::D768));
        assert!(parse_dims("1000").is_err());
        assert_eq!(parse_mode("pytorch-fid"), Ok(Mode::PytorchFid));
    }
}
