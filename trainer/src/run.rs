//! Whole operations behind `mdm model …`: the parameter table of a config, and one eval
//! forward pass from files (for checking a converted ml-mdm checkpoint).

use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn::VarStore, Device, Kind, Tensor};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{Conditioning, MdmUNet, Micros, ModelInput, Trace};
use crate::weights;

/// The parameter table in the form of the reference `keys_*.tsv`:
/// `name<TAB>shape<TAB>numel` sorted by name, then `# total_params=N entries=M`.
pub fn params_table(cfg: &ModelConfig) -> Result<String> {
    let rows = crate::model::parameter_shapes(cfg)?;
    let mut out = String::new();
    let mut total = 0i64;
    for (name, shape, n) in &rows {
        let s: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        out.push_str(&format!("{name}\t{}\t{n}\n", s.join(",")));
        total += n;
    }
    out.push_str(&format!(
        "# total_params={total} entries={} model={:?} levels={}\n",
        rows.len(),
        cfg.kind,
        cfg.top.depth()
    ));
    Ok(out)
}

/// What [`forward_files`] wrote.
#[derive(Debug)]
pub struct ForwardSummary {
    pub outputs: Vec<(String, Vec<i64>)>,
}

/// Runs one eval forward: the model from `config` with `weights` (strict), inputs named as
/// in the reference fixtures (`x_t.<i>`, `times`, `lm_outputs`, `lm_mask`, `micros.<key>`;
/// or `class_labels` for class-conditional models). Writes `out.<i>` (and every `debug.*`
/// tensor when `debug`) to `out`.
pub fn forward_files(
    config: &Path,
    weights_path: &Path,
    inputs: &Path,
    out: &Path,
    debug: bool,
) -> Result<ForwardSummary> {
    let cfg = ModelConfig::from_file(config)?;
    let vs = VarStore::new(Device::Cpu);
    let model = MdmUNet::new(&vs.root(), &cfg)?;
    weights::load_strict(&vs, weights_path)?;
    let io: BTreeMap<String, Tensor> = weights::read_safetensors(inputs)?.into_iter().collect();
    let bad = |msg: String| Error::Input {
        path: Some(inputs.to_path_buf()),
        msg,
    };
    let mut x_t = vec![];
    for i in 0..model.num_levels() {
        let t = io
            .get(&format!("x_t.{i}"))
            .ok_or_else(|| bad(format!("x_t.{i} missing ({} levels)", model.num_levels())))?;
        x_t.push(t.to_kind(Kind::Float));
    }
    let times = io.get("times").ok_or_else(|| bad("times missing".into()))?;
    if times.is_floating_point() {
        return Err(bad("times must be an integer tensor".into()));
    }
    let cond = match (
        io.get("lm_outputs"),
        io.get("lm_mask"),
        io.get("class_labels"),
    ) {
        (Some(t), Some(m), None) => Conditioning::Text {
            tokens: t.to_kind(Kind::Float),
            mask: m.to_kind(Kind::Float),
        },
        (None, None, Some(c)) => Conditioning::Class(c.to_kind(Kind::Int64)),
        (None, None, None) => Conditioning::None,
        _ => return Err(bad("give lm_outputs with lm_mask, or class_labels".into())),
    };
    let micros: Micros = io
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("micros.")
                .map(|m| (m.to_string(), v.to_kind(Kind::Float)))
        })
        .collect();
    let _g = tch::no_grad_guard();
    let mut trace = if debug { Trace::recording() } else { Trace::off() };
    let outs = model
        .forward(&ModelInput::new(&x_t, times, &cond).with_micros(&micros), false, &mut trace)
        .map_err(|e| e.with_path(inputs))?;
    let dbg = trace.tensors;
    let mut tensors: Vec<(String, Tensor)> = outs
        .into_iter()
        .enumerate()
        .map(|(i, t)| (format!("out.{i}"), t))
        .collect();
    tensors.extend(dbg.into_iter().map(|(k, t)| (format!("debug.{k}"), t)));
    weights::write_safetensors(out, &tensors)?;
    Ok(ForwardSummary {
        outputs: tensors.iter().map(|(k, t)| (k.clone(), t.size())).collect(),
    })
}
