//! Progressive growth: a NestedUNet initialised from a lower-resolution checkpoint predicts,
//! on its inner level, exactly what the lower model predicts.

use crate::common;

use mdm_trainer::{
    config::{ConfigFile, ModelConfig},
    growth::grow_from,
    model::{Conditioning, MdmUNet, Micros, ModelInput, Trace},
    weights,
};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn nested_toml() -> &'static str {
    r#"
model = "nested_unet"
[unet_config]
resolution_channels = [16, 32]
num_resnets_per_resolution = [1, 1]
attention_levels = []
num_attention_layers = [0, 0]
conditioning_feature_dim = 24
temporal_dim = 64
micro_conditioning = "scale:32"
resnet_config = { num_groups_norm = 8 }
[unet_config.inner_config]
nesting = true
resolution_channels = [16, 32]
num_resnets_per_resolution = [1, 1]
attention_levels = [1]
num_attention_layers = [1, 1]
conditioning_feature_proj_dim = 32
num_lm_head_layers = 1
masked_cross_attention = 1
micro_conditioning = "scale:16"
resnet_config = { num_groups_norm = 8, use_attention_ffn = true }
"#
}

/// The inner level of `nested_toml` as a standalone UNet.
fn lower_config(nested: &ModelConfig) -> ModelConfig {
    let mut f: ConfigFile = nested.file.clone();
    let mut inner = *f.unet_config.inner_config.take().expect("inner");
    inner.nesting = false;
    inner.conditioning_feature_dim = nested.file.unet_config.conditioning_feature_dim;
    f.model = mdm_trainer::config::ModelKind::Unet;
    f.unet_config = inner;
    ModelConfig::from_parsed(f).expect("lower config")
}

#[test]
fn inner_prediction_unchanged_after_growth() {
    let _rng = common::torch_rng();
    tch::manual_seed(7);
    let dir = tempdir();
    let big_cfg = ModelConfig::from_toml_str(nested_toml()).expect("nested config");
    let small_cfg = lower_config(&big_cfg);

    // A trained-looking lower model: randomise everything (including zero-initialised layers).
    let small_vs = VarStore::new(Device::Cpu);
    let small = MdmUNet::new(&small_vs.root(), &small_cfg).expect("small");
    {
        let _g = tch::no_grad_guard();
        for (_, mut v) in small_vs.variables() {
            let r = v.randn_like() * 0.2;
            v.copy_(&r);
        }
    }
    let ckpt = dir.join("small.safetensors");
    weights::save(&small_vs, &ckpt).expect("save");

    let big_vs = VarStore::new(Device::Cpu);
    let big = MdmUNet::new(&big_vs.root(), &big_cfg).expect("big");
    // Make the adapters non-zero first, to see that growth zeroes them.
    {
        let _g = tch::no_grad_guard();
        for (k, mut v) in big_vs.variables() {
            if k.contains("adapter") {
                let r = v.randn_like();
                v.copy_(&r);
            }
        }
    }
    let report = grow_from(&big_vs, &ckpt, 1).expect("grow");
    assert_eq!(
        report.loaded.len(),
        small_vs.variables().len(),
        "every lower tensor is loaded"
    );
    assert!(report.loaded.iter().all(|k| k.starts_with("inner_unet.")));
    assert!(report.fresh.iter().all(|k| !k.starts_with("inner_unet.")) && !report.fresh.is_empty());
    assert_eq!(
        report.loaded.len() + report.fresh.len(),
        big_vs.variables().len()
    );
    assert_eq!(
        report.zeroed,
        vec![
            "in_adapter.bias",
            "in_adapter.weight",
            "out_adapter.bias",
            "out_adapter.weight"
        ]
    );

    let text = report.to_string();
    assert!(text.contains("loaded\tinner_unet.conv_in.weight") && text.contains("fresh\tout_adapter.weight (zeroed)"));

    let b = 2;
    let x_hi = Tensor::randn([b, 3, 32, 32], (Kind::Float, Device::Cpu));
    let x_lo = Tensor::randn([b, 3, 16, 16], (Kind::Float, Device::Cpu));
    let times = Tensor::from_slice(&[5i64, 600]);
    let mask = Tensor::from_slice2(&[[1f32, 1., 1., 0., 0.], [1., 1., 1., 1., 1.]]);
    let cond = Conditioning::Text {
        tokens: Tensor::randn([b, 5, 24], (Kind::Float, Device::Cpu)),
        mask,
    };
    let micros: Micros = [("scale".to_string(), Tensor::from_slice(&[8f32, 30.]))]
        .into_iter()
        .collect();
    let _g = tch::no_grad_guard();
    let lo = small
        .forward(&ModelInput::new(&[x_lo.shallow_clone()], &times, &cond).with_micros(&micros), false, &mut Trace::off())
        .expect("small forward");
    let both = big
        .forward(&ModelInput::new(&[x_hi, x_lo], &times, &cond).with_micros(&micros), false, &mut Trace::off())
        .expect("big forward");
    let d = common::max_abs(&both[1], &lo[0]);
    eprintln!("inner prediction after growth vs lower model: max|diff| = {d:e}");
    assert!(d <= 1e-6, "inner prediction changed by growth: {d}");
    assert!(
        lo[0].abs().max().double_value(&[]) > 1e-3,
        "the lower model's output is not trivial"
    );
}

#[test]
fn growth_rejects_a_checkpoint_that_does_not_fit() {
    let _rng = common::torch_rng();
    let dir = tempdir();
    let big_cfg = ModelConfig::from_toml_str(nested_toml()).expect("nested config");
    let vs = VarStore::new(Device::Cpu);
    let _m = MdmUNet::new(&vs.root(), &big_cfg).expect("big");
    let bad = dir.join("bad.safetensors");
    weights::write_safetensors(
        &bad,
        &[(
            "conv_in.weight".to_string(),
            Tensor::zeros([5, 3, 3, 3], (Kind::Float, Device::Cpu)),
        )],
    )
    .expect("write");
    let err = grow_from(&vs, &bad, 1).expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("bad.safetensors") && msg.contains("conv_in.weight"),
        "{msg}"
    );
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "mdm-trainer-growth-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}
