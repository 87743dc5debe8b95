//! Reading and writing model weights as safetensors under ml-mdm's key names.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::{nn::VarStore, Tensor};

use crate::error::{Error, Result};

/// Reads every tensor of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.exists() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    Tensor::read_safetensors(path).map_err(|source| Error::Torch {
        path: Some(path.to_path_buf()),
        source,
    })
}

/// Writes named tensors (sorted by name) as safetensors.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut v: Vec<(&str, Tensor)> = tensors
        .iter()
        .map(|(k, t)| (k.as_str(), t.to_device(tch::Device::Cpu).contiguous()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    Tensor::write_safetensors(&v, path).map_err(|source| Error::Torch {
        path: Some(path.to_path_buf()),
        source,
    })
}

/// Saves every variable of `vs` under its name.
pub fn save(vs: &VarStore, path: &Path) -> Result<()> {
    let vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    write_safetensors(path, &vars)
}

/// Loads a checkpoint strictly: every variable must be present with its shape, and the file
/// may hold nothing else. Values are converted to each variable's kind.
pub fn load_strict(vs: &VarStore, path: &Path) -> Result<()> {
    let file: BTreeMap<String, Tensor> = read_safetensors(path)?.into_iter().collect();
    load_strict_from(vs, &file, path)
}

/// [`load_strict`] of tensors already read from `path` (named in errors).
pub fn load_strict_from(vs: &VarStore, file: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let vars = vs.variables();
    let mut missing: Vec<&String> = vars.keys().filter(|k| !file.contains_key(*k)).collect();
    missing.sort();
    let extra: Vec<&String> = file.keys().filter(|k| !vars.contains_key(*k)).collect();
    let mut msg = vec![];
    if !missing.is_empty() {
        msg.push(format!(
            "{} missing (e.g. {})",
            missing.len(),
            list(&missing)
        ));
    }
    if !extra.is_empty() {
        msg.push(format!(
            "{} unexpected (e.g. {})",
            extra.len(),
            list(&extra)
        ));
    }
    let mut shapes = vec![];
    for (k, v) in &vars {
        if let Some(t) = file.get(k) {
            if t.size() != v.size() {
                shapes.push(format!("{k}: file {:?}, model {:?}", t.size(), v.size()));
            }
        }
    }
    shapes.sort();
    if !shapes.is_empty() {
        msg.push(format!(
            "{} shape mismatches ({})",
            shapes.len(),
            shapes
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if !msg.is_empty() {
        return Err(Error::Weights {
            path: path.to_path_buf(),
            msg: msg.join(", "),
        });
    }
    copy_into(&vars, file.iter().map(|(k, t)| (k.as_str(), t)));
    Ok(())
}

/// Copies tensors into variables of the same name (no gradient tracking).
pub(crate) fn copy_into<'a>(
    vars: &HashMap<String, Tensor>,
    src: impl Iterator<Item = (&'a str, &'a Tensor)>,
) {
    let _g = tch::no_grad_guard();
    for (k, t) in src {
        if let Some(v) = vars.get(k) {
            let mut v = v.shallow_clone();
            v.copy_(&t.to_kind(v.kind()).to_device(v.device()));
        }
    }
}

fn list(v: &[&String]) -> String {
    let mut s: Vec<String> = v.iter().take(5).map(|s| s.to_string()).collect();
    if v.len() > 5 {
        s.push("…".into());
    }
    s.join(", ")
}

/// The parameter table of a var store: (name, shape, numel), sorted by name.
pub fn parameter_table(vs: &VarStore) -> Vec<(String, Vec<i64>, i64)> {
    let mut v: Vec<(String, Vec<i64>, i64)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| {
            let s = t.size();
            let n = s.iter().product();
            (k, s, n)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
