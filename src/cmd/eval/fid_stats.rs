//! `mdm eval fid-stats INPUT --inception W.safetensors --out S.npz`: Inception statistics
//! {mu, sigma} of an image folder or manifest, as the `.npz` that pytorch-fid and clean-fid read,
//! plus `S.json` beside it (n, mode, dims, weights sha256, input, rejected images).
//!
//! INPUT is a folder (its `.png`, `.jpg`, `.jpeg`, `.webp` files, not recursive, in sorted order)
//! or a JSON Lines manifest whose rows name a `"file"` relative to the manifest's folder. Images
//! are decoded and resized on worker threads (std threads, a window of batches ahead of the
//! network) and reach the network in input order, so the statistics do not depend on `--workers`.
//! An image that cannot be read is reported by path and counted, never fatal.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex};

use anyhow::{bail, Context, Result};
use clap::Args;
use mdm_metrics::inception::{Dims, FidInception};
use mdm_metrics::resize::{Mode, INPUT_SIZE};
use mdm_metrics::stats::{Accumulator, Stats};
use mdm_trainer::tch::{Device, Tensor};
use mdm_trainer::run_config::DeviceChoice;
use mdm_trainer::run_config::pick_device_for;
use serde_json::json;
use sha2::{Digest, Sha256};

/// Image file extensions read from a folder (case-insensitive).
const EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

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

/// The `--device` value, resolved when the network is loaded.
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

/// The images of INPUT: a folder's image files in sorted order, or a manifest's "file" rows.
pub fn list_images(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_dir() {
        let mut files = vec![];
        for e in std::fs::read_dir(input).with_context(|| format!("reading {}", input.display()))? {
            let p = e.with_context(|| format!("reading {}", input.display()))?.path();
            let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
            if p.is_file() && ext.is_some_and(|e| EXTENSIONS.contains(&e.as_str())) {
                files.push(p);
            }
        }
        files.sort();
        return Ok(files);
    }
    let text = std::fs::read_to_string(input).with_context(|| format!("reading {}", input.display()))?;
    let base = input.parent().unwrap_or(Path::new(""));
    let mut files = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON object", input.display(), i + 1))?;
        let Some(file) = v.get("file").and_then(|f| f.as_str()).filter(|f| !f.is_empty()) else {
            bail!("{}:{}: the row has no \"file\"", input.display(), i + 1);
        };
        files.push(base.join(file));
    }
    Ok(files)
}

/// Decodes one image and makes its network input.
fn prepare(path: &Path, mode: Mode) -> Result<Vec<f32>, String> {
    let img = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?;
    if img.width() == 0 || img.height() == 0 {
        return Err("the image has no pixels".into());
    }
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    Ok(mode.network_input(rgb.as_raw(), h, w))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Statistics of an image folder or manifest, with a JSON description of how they were made.
pub fn stats_of_images(input: &Path, f: &FeatureArgs, quiet: bool) -> Result<(Stats, serde_json::Value)> {
    let files = list_images(input)?;
    if files.is_empty() {
        bail!("{}: no images (.png, .jpg, .jpeg, .webp)", input.display());
    }
    let device = resolve_device(f.device)?;
    let (net, _vs) = FidInception::load(&f.inception, device)
        .with_context(|| format!("loading the FID Inception from {}", f.inception.display()))?;
    let sha = sha256_file(&f.inception)?;
    let batch = f.batch as usize;
    let workers = f.workers.map(|w| w as usize).unwrap_or_else(|| {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    });

    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(files.len() as u64) };
    bar.set_style(indicatif::ProgressStyle::with_template(
        "fid-stats {bar:30} {pos}/{len} images {elapsed} (eta {eta}) {per_sec}",
    )?);

    let mut acc = Accumulator::new(f.dims.len());
    let mut rejected: Vec<(PathBuf, String)> = vec![];
    let mut used = 0usize;
    let side = INPUT_SIZE as i64;
    let mut run_batch = |buf: &mut Vec<f32>, k: usize| -> Result<()> {
        let x = Tensor::from_slice(buf.as_slice()).reshape([k as i64, 3, side, side]);
        let feats = net.features(&x, f.dims)?;
        acc.add(&feats.to_device(Device::Cpu))?;
        buf.clear();
        Ok(())
    };

    // Workers claim indices in order and stay within `window` images of the last one consumed.
    let window = (2 * batch).max(workers * 2);
    let next = AtomicUsize::new(0);
    let consumed = Mutex::new(0usize);
    let moved = Condvar::new();
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::sync_channel::<(usize, Result<Vec<f32>, String>)>(window);
    let result = std::thread::scope(|s| -> Result<()> {
        for _ in 0..workers {
            let tx = tx.clone();
            let (files, next, consumed, moved, stop) = (&files, &next, &consumed, &moved, &stop);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= files.len() || stop.load(Ordering::Relaxed) {
                    break;
                }
                let mut c = consumed.lock().unwrap();
                while i >= *c + window && !stop.load(Ordering::Relaxed) {
                    c = moved.wait(c).unwrap();
                }
                drop(c);
                if tx.send((i, prepare(&files[i], f.mode))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let (mut emit, mut buf, mut in_buf) = (0usize, Vec::with_capacity(batch * 3 * 299 * 299), 0usize);
        let body = (|| -> Result<()> {
            for (i, r) in rx.iter() {
                pending.insert(i, r);
                while let Some(r) = pending.remove(&emit) {
                    match r {
                        Ok(x) => {
                            buf.extend_from_slice(&x);
                            in_buf += 1;
                            used += 1;
                        }
                        Err(e) => {
                            let line = format!("rejected {}: {e}", files[emit].display());
                            if bar.is_hidden() {
                                eprintln!("{line}");
                            } else {
                                bar.println(line);
                            }
                            rejected.push((files[emit].clone(), e));
                        }
                    }
                    emit += 1;
                    *consumed.lock().unwrap() = emit;
                    moved.notify_all();
                    bar.inc(1);
                    if in_buf == batch {
                        run_batch(&mut buf, in_buf)?;
                        in_buf = 0;
                    }
                }
            }
            if in_buf > 0 {
                run_batch(&mut buf, in_buf)?;
            }
            Ok(())
        })();
        if body.is_err() {
            stop.store(true, Ordering::Relaxed);
            moved.notify_all();
            drop(rx);
        }
        body
    });
    bar.finish_and_clear();
    result?;
    if used == 0 {
        bail!("{}: none of the {} images could be read", input.display(), files.len());
    }
    let stats = acc.finish()?;
    let info = json!({
        "n": used,
        "images": files.len(),
        "rejected": rejected.iter().map(|(p, e)| json!({"file": p.display().to_string(), "error": e})).collect::<Vec<_>>(),
        "mode": f.mode.name(),
        "dims": f.dims.len(),
        "inception": f.inception.display().to_string(),
        "inception_sha256": sha,
        "input": input.display().to_string(),
        "device": format!("{device:?}"),
    });
    Ok((stats, info))
}

pub fn run(a: FidStatsArgs) -> Result<ExitCode> {
    let (stats, info) = stats_of_images(&a.input, &a.features, a.quiet)?;
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

    #[test]
    fn manifest_rows_are_relative_to_the_manifest() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("m.jsonl");
        std::fs::write(&m, "{\"file\": \"a/1.png\", \"id\": 1}\n\n{\"file\": \"2.jpg\"}\n").unwrap();
        assert_eq!(list_images(&m).unwrap(), vec![d.path().join("a/1.png"), d.path().join("2.jpg")]);
        std::fs::write(&m, "{\"id\": 1}\n").unwrap();
        assert!(list_images(&m).unwrap_err().to_string().contains("m.jsonl:1"));
    }
}
