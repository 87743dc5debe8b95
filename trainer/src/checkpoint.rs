//! Checkpoints: one folder per step, written atomically.
//!
//! `RUN/checkpoints/step-00001000/` holds `model.safetensors` (ml-mdm key names, fp32),
//! `ema.safetensors`, `optimizer.safetensors` (`exp_avg.<name>`, `exp_avg_sq.<name>`),
//! `state.json` (step, loader cursor, seed) and `config.toml` (the resolved run config). It is
//! written as `step-….partial/`, every file synced, then renamed: a folder without the suffix
//! is always complete. The RNG needs no saved state: every step reseeds libtorch from
//! (seed, step, micro-batch).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use mdm_loader::LoaderState;
use mdm_shards::durable;
use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Tensor};

use crate::error::{Error, Result};
use crate::optim::FlatOptimizer;
use crate::weights::{read_safetensors, write_safetensors};

const FORMAT: &str = "mdm-checkpoint";

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    pub format: String,
    /// Optimizer steps completed.
    pub step: u64,
    pub seed: u64,
    /// Samples trained on so far.
    pub samples: u64,
    pub loader: LoaderState,
    /// How the random streams continue: they are derived from (seed, step, micro-batch).
    pub rng: String,
    pub has_ema: bool,
    /// Ranks of the run that wrote it (0: written before data-parallel runs existed).
    #[serde(default)]
    pub world_size: u64,
    /// Samples per loader step over all ranks (`batch_size` × ranks; 0: unknown).
    #[serde(default)]
    pub global_batch: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// The checkpoint folder of `step` under `run`.
pub fn dir_for(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:08}"))
}

/// Complete checkpoints under `run/checkpoints`, oldest first.
pub fn list(run: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = run.join("checkpoints");
    if !dir.exists() {
        return Ok(vec![]);
    }
    let mut out = vec![];
    for e in fs::read_dir(&dir).map_err(io(&dir))? {
        let e = e.map_err(io(&dir))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("step-").and_then(|n| n.parse::<u64>().ok()) {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint of a run folder; a checkpoint folder is returned as is.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join("state.json").exists() {
        return Ok(path.to_path_buf());
    }
    list(path)?.pop().map(|(_, p)| p).ok_or_else(|| Error::Run {
        path: path.to_path_buf(),
        msg: "neither a checkpoint folder nor a run folder with checkpoints".into(),
    })
}

/// The weights of a checkpoint folder to load: its EMA when `ema` and it has one, else the raw
/// weights.
pub fn weights_file(dir: &Path, ema: bool) -> PathBuf {
    let e = dir.join("ema.safetensors");
    if ema && e.exists() {
        e
    } else {
        dir.join("model.safetensors")
    }
}

/// Model (or EMA) weights as ml-mdm names → tensors: trainable variables from `flat`, the
/// frozen ones from the VarStore.
fn weights_from(vs: &VarStore, opt: &FlatOptimizer, flat: &Tensor) -> Vec<(String, Tensor)> {
    let mut all: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    for (k, t) in opt.named(flat) {
        all.insert(k, t);
    }
    all.into_iter().collect()
}

/// Writes the checkpoint of `state.step` atomically, then deletes all but the newest `keep`.
pub fn save(
    run: &Path,
    vs: &VarStore,
    opt: &FlatOptimizer,
    state: &CheckpointState,
    config_toml: &str,
    keep: usize,
) -> Result<PathBuf> {
    let fin = dir_for(run, state.step);
    let tmp = fin.with_extension("partial");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let mut files = vec![];
    let p = tmp.join("model.safetensors");
    write_safetensors(&p, &weights_from(vs, opt, &opt.master))?;
    files.push(p);
    if let Some(e) = &opt.ema {
        let p = tmp.join("ema.safetensors");
        write_safetensors(&p, &weights_from(vs, opt, e))?;
        files.push(p);
    }
    let mut moments = vec![];
    for (k, t) in opt.named(&opt.exp_avg) {
        moments.push((format!("exp_avg.{k}"), t));
    }
    for (k, t) in opt.named(&opt.exp_avg_sq) {
        moments.push((format!("exp_avg_sq.{k}"), t));
    }
    let p = tmp.join("optimizer.safetensors");
    write_safetensors(&p, &moments)?;
    files.push(p);
    let p = tmp.join("state.json");
    fs::write(&p, serde_json::to_string_pretty(state).expect("state serialises")).map_err(io(&p))?;
    files.push(p);
    let p = tmp.join("config.toml");
    fs::write(&p, config_toml).map_err(io(&p))?;
    files.push(p);
    for f in &files {
        durable::sync_file(f)?;
    }
    durable::sync_dir(&tmp)?;
    if fin.exists() {
        fs::remove_dir_all(&fin).map_err(io(&fin))?;
    }
    durable::persist(&tmp, &fin)?;
    let all = list(run)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        fs::remove_dir_all(old).map_err(io(old))?;
    }
    Ok(fin)
}

/// Removes `*.partial` folders a killed run left behind.
pub fn clean_partial(run: &Path) -> Result<()> {
    let dir = run.join("checkpoints");
    if !dir.exists() {
        return Ok(());
    }
    for e in fs::read_dir(&dir).map_err(io(&dir))? {
        let e = e.map_err(io(&dir))?;
        if e.file_name().to_string_lossy().ends_with(".partial") {
            fs::remove_dir_all(e.path()).map_err(io(&e.path()))?;
        }
    }
    Ok(())
}

/// Reads `state.json` of a checkpoint folder.
pub fn read_state(dir: &Path) -> Result<CheckpointState> {
    let p = dir.join("state.json");
    let text = fs::read_to_string(&p).map_err(io(&p))?;
    let s: CheckpointState =
        serde_json::from_str(&text).map_err(|e| Error::Run { path: p.clone(), msg: e.to_string() })?;
    if s.format != FORMAT {
        return Err(Error::Run { path: p, msg: format!("format {:?}, expected {FORMAT:?}", s.format) });
    }
    Ok(s)
}

/// A new state record.
pub fn new_state(step: u64, seed: u64, samples: u64, loader: LoaderState, has_ema: bool) -> CheckpointState {
    CheckpointState {
        format: FORMAT.into(),
        step,
        seed,
        samples,
        loader,
        rng: "libtorch reseeded per sample from (seed, step, micro, index in the global step)".into(),
        has_ema,
        world_size: 1,
        global_batch: 0,
    }
}

/// Restores weights, EMA and moments of a checkpoint into `vs` and `opt`.
pub fn restore(dir: &Path, vs: &VarStore, opt: &mut FlatOptimizer, state: &CheckpointState) -> Result<()> {
    let p = dir.join("model.safetensors");
    let model: BTreeMap<String, Tensor> = read_safetensors(&p)?.into_iter().collect();
    // Frozen variables come from here; trainable ones from the fp32 master below.
    crate::weights::load_strict_from(vs, &model, &p)?;
    opt.load_named(&opt.master, &model, "model.safetensors")?;
    opt.sync_working();
    if let Some(e) = &opt.ema {
        let p = dir.join("ema.safetensors");
        if !state.has_ema {
            return Err(Error::Run { path: p, msg: "the checkpoint has no EMA but the config asks for one".into() });
        }
        let ema: BTreeMap<String, Tensor> = read_safetensors(&p)?.into_iter().collect();
        opt.load_named(e, &ema, "ema.safetensors").map_err(|e| e.with_path(&p))?;
    }
    let p = dir.join("optimizer.safetensors");
    let m: BTreeMap<String, Tensor> = read_safetensors(&p)?.into_iter().collect();
    let pick = |prefix: &str| -> BTreeMap<String, Tensor> {
        m.iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.shallow_clone())))
            .collect()
    };
    opt.load_named(&opt.exp_avg, &pick("exp_avg."), "optimizer exp_avg").map_err(|e| e.with_path(&p))?;
    opt.load_named(&opt.exp_avg_sq, &pick("exp_avg_sq."), "optimizer exp_avg_sq").map_err(|e| e.with_path(&p))?;
    opt.step = state.step;
    Ok(())
}
