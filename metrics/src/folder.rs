//! FID statistics of an image folder or manifest (`mdm eval fid-stats`, and `mdm eval fid` on
//! image inputs).
//!
//! The input is a folder (its `.png`, `.jpg`, `.jpeg`, `.webp` files, not recursive, in sorted
//! order: [`list_images`]) or a JSON Lines manifest whose rows name a `"file"` relative to the
//! manifest's folder. [`stats_of_images`] decodes and resizes the images on worker threads (std
//! threads, a window of batches ahead of the network); they reach the network in input order, so
//! the statistics do not depend on [`FeatureOptions::workers`]. An image that cannot be read is
//! reported by path on stderr and counted in the description, never fatal.
//!
//! ```no_run
//! use std::path::{Path, PathBuf};
//! use mdm_metrics::folder::{stats_of_images, FeatureOptions};
//! use mdm_metrics::inception::Dims;
//! use mdm_metrics::resize::Mode;
//!
//! # fn main() -> mdm_metrics::Result<()> {
//! let o = FeatureOptions {
//!     inception: PathBuf::from("inception.safetensors"),
//!     mode: Mode::Clean,
//!     dims: Dims::D2048,
//!     batch: 50,
//!     device: tch::Device::Cpu,
//!     workers: None,
//! };
//! let (stats, info) = stats_of_images(Path::new("samples/"), &o, true)?;
//! println!("{:?} images, {} features, rejected: {}", stats.n, stats.dims(), info["rejected"]);
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex};

use serde_json::json;
use tch::{Device, Tensor};

use crate::error::{io, Error, Result};
use crate::inception::{Dims, FidInception};
use crate::manifest::{at_line, json_lines};
use crate::resize::{Mode, INPUT_SIZE};
use crate::stats::{Accumulator, Stats};

/// Image file extensions read from a folder (case-insensitive).
const EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

/// How features are computed (`mdm eval fid-stats`'s options).
#[derive(Clone, Debug)]
pub struct FeatureOptions {
    /// FID Inception weights as safetensors (`tools/convert_inception.py`).
    pub inception: PathBuf,
    /// Whose resize and input scaling to reproduce.
    pub mode: Mode,
    /// Feature block (pool3, [`Dims::D2048`], is the usual FID).
    pub dims: Dims,
    /// Images per network batch, at least 1.
    pub batch: usize,
    /// Where the network runs.
    pub device: Device,
    /// Decode/resize threads, at least 1; `None`: the available cores.
    pub workers: Option<usize>,
}

/// The images of `input`: a folder's image files in sorted order, or a manifest's "file" rows
/// (relative to the manifest's folder).
pub fn list_images(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_dir() {
        let mut files = vec![];
        for e in std::fs::read_dir(input).map_err(io(input))? {
            let p = e.map_err(io(input))?.path();
            let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
            if p.is_file() && ext.is_some_and(|e| EXTENSIONS.contains(&e.as_str())) {
                files.push(p);
            }
        }
        files.sort();
        return Ok(files);
    }
    let base = input.parent().unwrap_or(Path::new(""));
    let mut files = vec![];
    for (line, v) in json_lines(input)? {
        let Some(file) = v.get("file").and_then(|f| f.as_str()).filter(|f| !f.is_empty()) else {
            return Err(at_line(input, line, "the row has no \"file\"".into()));
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

/// The progress bar's template (a constant: checked by a test).
const BAR_TEMPLATE: &str = "fid-stats {bar:30} {pos}/{len} images {elapsed} (eta {eta}) {per_sec}";

/// Statistics of an image folder or manifest, with a JSON description of how they were made
/// (`n`, `images`, `rejected` [{file, error}], `mode`, `dims`, `inception`, `inception_sha256`,
/// `input`, `device`). `quiet`: no progress bar (rejected images are still listed on stderr).
pub fn stats_of_images(input: &Path, o: &FeatureOptions, quiet: bool) -> Result<(Stats, serde_json::Value)> {
    if o.batch == 0 {
        return Err(Error::Input("the batch must hold at least 1 image".into()));
    }
    if o.workers == Some(0) {
        return Err(Error::Input("at least 1 worker is needed".into()));
    }
    let files = list_images(input)?;
    if files.is_empty() {
        return Err(Error::Invalid { path: input.to_path_buf(), msg: "no images (.png, .jpg, .jpeg, .webp)".into() });
    }
    let device = o.device;
    let (net, _vs) = FidInception::load(&o.inception, device)?;
    let (_, sha) = mdm_shards::sha256_file(&o.inception).map_err(io(&o.inception))?;
    let batch = o.batch;
    let workers = o.workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));

    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(files.len() as u64) };
    bar.set_style(indicatif::ProgressStyle::with_template(BAR_TEMPLATE).expect("BAR_TEMPLATE is a valid template"));

    let mut acc = Accumulator::new(o.dims.len());
    let mut rejected: Vec<(PathBuf, String)> = vec![];
    let mut used = 0usize;
    let side = INPUT_SIZE as i64;
    let mut run_batch = |buf: &mut Vec<f32>, k: usize| -> Result<()> {
        let x = Tensor::from_slice(buf.as_slice()).reshape([k as i64, 3, side, side]);
        let feats = net.features(&x, o.dims)?;
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
                if tx.send((i, prepare(&files[i], o.mode))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let (mut emit, mut buf, mut in_buf) = (0usize, Vec::with_capacity(batch * 3 * INPUT_SIZE * INPUT_SIZE), 0usize);
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
        return Err(Error::Invalid {
            path: input.to_path_buf(),
            msg: format!("none of the {} images could be read", files.len()),
        });
    }
    let stats = acc.finish()?;
    let info = json!({
        "n": used,
        "images": files.len(),
        "rejected": rejected.iter().map(|(p, e)| json!({"file": p.display().to_string(), "error": e})).collect::<Vec<_>>(),
        "mode": o.mode.name(),
        "dims": o.dims.len(),
        "inception": o.inception.display().to_string(),
        "inception_sha256": sha,
        "input": input.display().to_string(),
        "device": format!("{device:?}"),
    });
    Ok((stats, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_rows_are_relative_to_the_manifest() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("m.jsonl");
        std::fs::write(&m, "{\"file\": \"a/1.png\", \"id\": 1}\n\n{\"file\": \"2.jpg\"}\n").unwrap();
        assert_eq!(list_images(&m).unwrap(), vec![d.path().join("a/1.png"), d.path().join("2.jpg")]);
        std::fs::write(&m, "{\"id\": 1}\n").unwrap();
        assert!(list_images(&m).unwrap_err().to_string().contains("m.jsonl:1: the row has no \"file\""));
    }

    #[test]
    fn folder_lists_images_sorted_and_refuses_bad_options() {
        let d = tempfile::tempdir().unwrap();
        for f in ["b.PNG", "a.jpg", "c.txt"] {
            std::fs::write(d.path().join(f), b"").unwrap();
        }
        std::fs::create_dir(d.path().join("sub.png")).unwrap();
        assert_eq!(list_images(d.path()).unwrap(), vec![d.path().join("a.jpg"), d.path().join("b.PNG")]);
        let o = FeatureOptions {
            inception: d.path().join("none.safetensors"),
            mode: Mode::Clean,
            dims: Dims::D64,
            batch: 0,
            device: Device::Cpu,
            workers: None,
        };
        assert!(matches!(stats_of_images(d.path(), &o, true), Err(Error::Input(_))));
        let o = FeatureOptions { batch: 1, workers: Some(0), ..o };
        assert!(matches!(stats_of_images(d.path(), &o, true), Err(Error::Input(_))));
        let empty = tempfile::tempdir().unwrap();
        let o = FeatureOptions { workers: None, ..o };
        let e = stats_of_images(empty.path(), &o, true).unwrap_err().to_string();
        assert!(e.ends_with(": no images (.png, .jpg, .jpeg, .webp)"), "{e}");
    }

    #[test]
    fn the_bar_template_is_valid() {
        assert!(indicatif::ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
    }
}
