//! Progressive growth: initialise a NestedUNet from a lower-resolution checkpoint.
//!
//! The lower model's parameters are loaded under the new model's inner prefix
//! (`inner_unet.` once per added level); the new outer levels keep their fresh
//! initialisation, and their adapters are set to zero, so right after growth the inner
//! prediction equals the lower model's. Any lower parameter that does not fit is an error
//! (ml-mdm prints it and trains from random weights instead).
//!
//! [`inflate_from`] does the same from an image checkpoint into a video model (with or
//! without added levels): the temporal attention blocks are the only fresh inner tensors and
//! their output layers (`attn.proj_out`, `mlp.main.3`, the bias of `up_conv`) start at zero,
//! so each block is the identity and the video model first predicts every frame exactly as the
//! image model does.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn::VarStore, Tensor};

use crate::error::{Error, Result};
use crate::weights::{copy_into, read_safetensors};

/// What growth did, by parameter name.
#[derive(Debug, Clone, Default)]
pub struct GrowthReport {
    /// The prefix the lower checkpoint was loaded under (e.g. `inner_unet.`).
    pub prefix: String,
    /// Parameters loaded from the lower checkpoint (new names).
    pub loaded: Vec<String>,
    /// Parameters not loaded (the new outer levels; the temporal blocks when inflating).
    pub fresh: Vec<String>,
    /// Fresh parameters set to zero (adapters; temporal output layers when inflating).
    pub zeroed: Vec<String>,
}

/// Loads `lower` (a safetensors checkpoint of a model with `added_levels` fewer levels)
/// into the inner levels of the model in `vs`.
pub fn grow_from(vs: &VarStore, lower: &Path, added_levels: usize) -> Result<GrowthReport> {
    if added_levels == 0 {
        return Err(Error::input("growth adds at least one level"));
    }
    load_lower(vs, lower, added_levels, false)
}

/// Loads `lower` (an image model's safetensors checkpoint, `added_levels` ≥ 0 fewer levels)
/// into the video model in `vs`; see the module overview.
pub fn inflate_from(vs: &VarStore, lower: &Path, added_levels: usize) -> Result<GrowthReport> {
    load_lower(vs, lower, added_levels, true)
}

fn is_temporal(k: &str) -> bool {
    k.split('.').any(|p| p == "t_attn")
}

fn load_lower(vs: &VarStore, lower: &Path, added_levels: usize, video: bool) -> Result<GrowthReport> {
    let prefix = "inner_unet.".repeat(added_levels);
    let file: BTreeMap<String, Tensor> = read_safetensors(lower)?.into_iter().collect();
    let vars = vs.variables();
    let mut problems = vec![];
    let mut renamed = vec![];
    for (k, t) in &file {
        let new = format!("{prefix}{k}");
        match vars.get(&new) {
            None => problems.push(format!("{k} has no place in the grown model ({new})")),
            Some(v) if v.size() != t.size() => problems.push(format!(
                "{k}: checkpoint {:?}, grown model {:?}",
                t.size(),
                v.size()
            )),
            Some(_) => renamed.push((new, t)),
        }
    }
    let mut inner_missing: Vec<&String> = vars
        .keys()
        .filter(|k| k.starts_with(&prefix) && !file.contains_key(&k[prefix.len()..]) && !(video && is_temporal(k)))
        .collect();
    inner_missing.sort();
    for k in inner_missing {
        problems.push(format!("{k} is not in the checkpoint"));
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(8);
        return Err(Error::Weights {
            path: lower.to_path_buf(),
            msg: format!("{n} problems growing from it: {}", problems.join("; ")),
        });
    }
    copy_into(&vars, renamed.iter().map(|(k, t)| (k.as_str(), *t)));
    let mut loaded: Vec<String> = renamed.into_iter().map(|(k, _)| k).collect();
    loaded.sort();
    let mut fresh: Vec<String> = vars.keys().filter(|k| loaded.binary_search(k).is_err()).cloned().collect();
    fresh.sort();
    // Zeroed among the fresh tensors: the adapters of the added levels and, when inflating, the
    // temporal blocks' output layers and `up_conv`'s bias (its weight must stay non-zero, or no
    // gradient would reach them).
    let zeroed: Vec<String> = fresh
        .iter()
        .filter(|k| {
            let is_adapter = k.split('.').any(|p| p == "in_adapter" || p == "out_adapter");
            let temporal_output = is_temporal(k)
                && (k.contains(".attn.proj_out.") || k.contains(".mlp.main.3.") || k.ends_with(".up_conv.bias"));
            is_adapter || (video && temporal_output)
        })
        .cloned()
        .collect();
    {
        let _g = tch::no_grad_guard();
        for k in &zeroed {
            let _ = vars[k].shallow_clone().zero_();
        }
    }
    Ok(GrowthReport {
        prefix,
        loaded,
        fresh,
        zeroed,
    })
}

impl std::fmt::Display for GrowthReport {
    /// One line per tensor: `loaded NAME`, `fresh NAME` (`fresh NAME (zeroed)` for those set to zero).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "# grown: {} loaded under {:?}, {} fresh", self.loaded.len(), self.prefix, self.fresh.len())?;
        for k in &self.loaded {
            writeln!(f, "loaded\t{k}")?;
        }
        for k in &self.fresh {
            let z = if self.zeroed.contains(k) { " (zeroed)" } else { "" };
            writeln!(f, "fresh\t{k}{z}")?;
        }
        Ok(())
    }
}
