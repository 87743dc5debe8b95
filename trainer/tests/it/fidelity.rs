//! Forward pass against ml-mdm's goldens (`tiny_unet_*`, `tiny_nested_unet_*`).
//!
//! Criterion (reference README, table "Tolerances"): for `out.*`, `out_default_micros.*` and
//! `debug.*`, max|a−b| ≤ 1e-4 in fp32 on CPU. The test reads any fixture of that form: the
//! model comes from `<name>_config.json`, the inputs are every `x_t.i`, `times`,
//! `lm_outputs`, `lm_mask` and `micros.<key>` of `<name>_io.safetensors`, and every
//! `out.*`/`debug.*` tensor there is compared.

use crate::common;

use mdm_trainer::{
    config::ModelConfig,
    model::{Conditioning, MdmUNet, Micros, ModelInput, Trace},
    weights,
};
use tch::{nn::VarStore, Device};

const TOL: f64 = 1e-4;

fn run(name: &str) {
    let Some(dir) = common::mlmdm_dir(name) else {
        return;
    };
    let cfg = ModelConfig::from_file(dir.join(format!("{name}_config.json"))).expect("config");
    let vs = VarStore::new(Device::Cpu);
    let model = MdmUNet::new(&vs.root(), &cfg).expect("model");
    weights::load_strict(&vs, &dir.join(format!("{name}_weights.safetensors")))
        .expect("weights load strictly");
    let io = common::load(&dir.join(format!("{name}_io.safetensors")));

    let x_t: Vec<_> = (0..model.num_levels())
        .map(|i| common::get(&io, &format!("x_t.{i}")).shallow_clone())
        .collect();
    assert!(
        !io.contains_key(&format!("x_t.{}", model.num_levels())),
        "fixture has more levels than the config"
    );
    let times = common::get(&io, "times");
    let cond = Conditioning::Text {
        tokens: common::get(&io, "lm_outputs").shallow_clone(),
        mask: common::get(&io, "lm_mask").shallow_clone(),
    };
    let micros: Micros = io
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("micros.")
                .map(|m| (m.to_string(), v.shallow_clone()))
        })
        .collect();
    let _g = tch::no_grad_guard();
    let mut trace = Trace::recording();
    let outs = model
        .forward(&ModelInput::new(&x_t, times, &cond).with_micros(&micros), false, &mut trace)
        .expect("forward");
    let debug = trace.tensors;
    let outs_default = model
        .forward(&ModelInput::new(&x_t, times, &cond), false, &mut Trace::recording())
        .expect("forward");

    let mut worst = (0.0f64, String::new());
    let mut checked = 0;
    for (k, want) in &io {
        let got = if let Some(i) = k.strip_prefix("out.") {
            &outs[i.parse::<usize>().expect("level")]
        } else if let Some(i) = k.strip_prefix("out_default_micros.") {
            &outs_default[i.parse::<usize>().expect("level")]
        } else if let Some(m) = k.strip_prefix("debug.") {
            debug
                .get(m)
                .unwrap_or_else(|| panic!("{name}: we do not record {k}"))
        } else {
            continue;
        };
        let d = common::max_abs(got, want);
        eprintln!("{name}: {k:40} max|diff| = {d:.3e}");
        assert!(d <= TOL, "{name}: {k} differs by {d:e} > {TOL:e}");
        if d > worst.0 {
            worst = (d, k.clone());
        }
        checked += 1;
    }
    assert!(
        checked >= 2 * model.num_levels(),
        "too few tensors compared"
    );
    eprintln!(
        "{name}: {checked} tensors within {TOL:e}; worst {} at {}",
        worst.0, worst.1
    );
}

#[test]
fn tiny_unet_matches_mlmdm() {
    let _rng = common::torch_rng();
    run("tiny_unet");
}

#[test]
fn tiny_nested_unet_matches_mlmdm() {
    let _rng = common::torch_rng();
    run("tiny_nested_unet");
}
