//! Training logs: a progress line on stderr, `losses.jsonl` (every step, exact values) and
//! TensorBoard event files (scalars and sample grids) under `RUN/tb/`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use tboard::EventWriter;

use crate::error::{Error, Result};

/// What one optimizer step measured.
#[derive(Debug, Clone)]
pub struct StepLog {
    /// Optimizer steps completed (1-based).
    pub step: u64,
    pub loss: f64,
    /// Per level, outermost first.
    pub level_losses: Vec<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub samples: u64,
    /// Data-parallel runs: each rank's (step seconds, loader-wait seconds), rank order.
    pub ranks: Vec<(f64, f64)>,
    /// Data-parallel runs: seconds of the gradient all-reduce.
    pub comm_secs: f64,
    /// Wall-clock seconds of the whole step (loader, forward/backward, communication, update).
    pub step_secs: f64,
}

/// Writes the logs of one run.
pub struct Logger {
    losses: File,
    losses_path: PathBuf,
    tb: EventWriter<File>,
    tb_dir: PathBuf,
    quiet: bool,
    /// "img" or, for video runs, "clips".
    unit: &'static str,
}

fn tb_err(dir: &Path, e: tboard::Error) -> Error {
    Error::Io { path: dir.to_path_buf(), source: std::io::Error::other(e.to_string()) }
}

impl Logger {
    /// Opens `RUN/losses.jsonl` for appending (a resumed run continues it) and a new
    /// TensorBoard event file under `RUN/tb/`. `video`: speeds are in clips/s.
    pub fn open(run: &Path, quiet: bool, video: bool) -> Result<Self> {
        let losses_path = run.join("losses.jsonl");
        let losses = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&losses_path)
            .map_err(|source| Error::Io { path: losses_path.clone(), source })?;
        let tb_dir = run.join("tb");
        let tb = EventWriter::create(&tb_dir).map_err(|e| tb_err(&tb_dir, e))?;
        Ok(Logger { losses, losses_path, tb, tb_dir, quiet, unit: if video { "clips" } else { "img" } })
    }

    /// Drops `losses.jsonl` lines past `step` (a resume from an earlier checkpoint).
    pub fn truncate_after(run: &Path, step: u64) -> Result<()> {
        let p = run.join("losses.jsonl");
        let Ok(text) = std::fs::read_to_string(&p) else { return Ok(()) };
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .collect();
        let mut out = kept.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        Ok(mdm_shards::durable::write_atomic(&p, out.as_bytes())?)
    }

    /// Records every step in `losses.jsonl` (exact f64 values).
    pub fn step(&mut self, s: &StepLog) -> Result<()> {
        let mut line = serde_json::json!({
            "step": s.step, "loss": s.loss, "levels": s.level_losses, "lr": s.lr,
            "grad_norm": s.grad_norm, "samples": s.samples, "step_s": s.step_secs,
        });
        if !s.ranks.is_empty() {
            line["rank_step_s"] = s.ranks.iter().map(|r| r.0).collect::<Vec<_>>().into();
            line["rank_wait_s"] = s.ranks.iter().map(|r| r.1).collect::<Vec<_>>().into();
            line["comm_s"] = s.comm_secs.into();
        }
        writeln!(self.losses, "{line}").map_err(|source| Error::Io { path: self.losses_path.clone(), source })
    }

    /// The progress line and TensorBoard scalars (every `log_every` steps).
    /// `per_s`: samples (images or clips) per second.
    pub fn report(&mut self, s: &StepLog, total_steps: u64, per_s: f64, wait_frac: f64) -> Result<()> {
        // Data-parallel: the slowest rank, what users debug.
        let slowest = s.ranks.iter().enumerate().max_by(|a, b| a.1 .0.total_cmp(&b.1 .0));
        if !self.quiet {
            let levels: Vec<String> = s.level_losses.iter().map(|l| format!("{l:.4}")).collect();
            let ranks = slowest.map_or(String::new(), |(r, (t, w))| {
                format!(" | slowest rank {r}: step {:.3} s, loader wait {:.3} s; all-reduce {:.3} s", t, w, s.comm_secs)
            });
            eprintln!(
                "step {}/{} loss {:.4} [{}] lr {:.2e} gnorm {:.3} {:.1} {}/s loader wait {:.0}%{ranks}",
                s.step,
                total_steps,
                s.loss,
                levels.join(" "),
                s.lr,
                s.grad_norm,
                per_s,
                self.unit,
                wait_frac * 100.0
            );
        }
        let step = s.step as i64;
        let (tb, dir) = (&mut self.tb, &self.tb_dir);
        let mut put = |tag: &str, v: f64| tb.write_scalar(step, tag, v as f32).map_err(|e| tb_err(dir, e));
        put("loss/total", s.loss)?;
        for (i, l) in s.level_losses.iter().enumerate() {
            put(&format!("loss/level{i}"), *l)?;
        }
        put("optim/lr", s.lr)?;
        put("optim/grad_norm", s.grad_norm)?;
        put(&format!("speed/{}_per_s", self.unit), per_s)?;
        put("speed/loader_wait_frac", wait_frac)?;
        for (r, (t, w)) in s.ranks.iter().enumerate() {
            put(&format!("ranks/step_s/{r}"), *t)?;
            put(&format!("ranks/loader_wait_s/{r}"), *w)?;
        }
        if !s.ranks.is_empty() {
            put("ranks/allreduce_s", s.comm_secs)?;
        }
        self.tb.flush().map_err(|e| tb_err(&self.tb_dir, e))?;
        self.losses.flush().map_err(|source| Error::Io { path: self.losses_path.clone(), source })
    }

    /// A PNG image (e.g. a sample grid) in TensorBoard.
    pub fn image(&mut self, step: u64, tag: &str, width: u32, height: u32, png: Vec<u8>) -> Result<()> {
        self.tb
            .write_image(step as i64, tag, width as i32, height as i32, 3, png)
            .and_then(|_| self.tb.flush())
            .map_err(|e| tb_err(&self.tb_dir, e))
    }
}
