//! Diffusion math against ml-mdm's tables (`diffusion_<config>.{safetensors,json}`).
//!
//! Criteria (reference README, "Tolerances"): float tensors |a−b| ≤ 1e-4·max(1,|b|);
//! integer tensors exact. Any fixture of that form is read: the diffusion config and level
//! scales come from its JSON.

#![allow(clippy::needless_range_loop)] // levels index several parallel lists

use crate::common;

use mdm_trainer::diffusion::{
    loss::{target, x0_eps_from_pred},
    DiffusionConfig, NestedDiffusion, PredictionType, Sampler,
};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

fn close(name: &str, k: &str, got: &Tensor, want: &Tensor) {
    let d = common::max_rel1(got, want);
    eprintln!("{name}: {k:32} max|diff|/max(1,|b|) = {d:.3e}");
    assert!(
        d <= TOL,
        "{name}: {k} differs by {d:e} (relative to max(1,|b|)) > {TOL:e}"
    );
}

fn exact(name: &str, k: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{name}: {k} shape");
    let eq = got
        .to_kind(Kind::Int64)
        .eq_tensor(&want.to_kind(Kind::Int64))
        .all()
        .int64_value(&[]);
    assert_eq!(eq, 1, "{name}: {k} differs");
}

fn run(name: &str) {
    let Some(dir) = common::mlmdm_dir(name) else {
        return;
    };
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("diffusion_{name}.json"))).expect("json"),
    )
    .expect("json");
    let cfg: DiffusionConfig =
        serde_json::from_value(meta["diffusion_config"].clone()).expect("diffusion_config parses");
    let scales: Vec<i64> = serde_json::from_value(meta["scales"].clone()).expect("scales");
    let t = common::load(&dir.join(format!("diffusion_{name}.safetensors")));
    let g = |k: &str| common::get(&t, k);
    let d = NestedDiffusion::new(&cfg, &scales, Device::Cpu).expect("diffusion");
    let levels = scales.len();

    // Schedule.
    close(
        name,
        "schedule.gammas_f64",
        &Tensor::from_slice(&d.schedule.gammas_f64),
        g("schedule.gammas_f64"),
    );
    close(
        name,
        "schedule.gammas",
        &d.schedule.gammas,
        g("schedule.gammas"),
    );
    close(
        name,
        "schedule.shifted_gammas",
        &d.schedule.shifted,
        g("schedule.shifted_gammas"),
    );
    close(
        name,
        "schedule.shift_factors",
        &Tensor::from_slice(&d.schedule.shift_factors),
        g("schedule.shift_factors"),
    );
    close(
        name,
        "schedule.vdm_loss_weights",
        &d.schedule.vdm_loss_weights,
        g("schedule.vdm_loss_weights"),
    );
    exact(
        name,
        "schedule.scales",
        &Tensor::from_slice(&d.scales),
        g("schedule.scales"),
    );

    // One training batch.
    let eps: Vec<Tensor> = (0..levels)
        .map(|i| g(&format!("train.eps.{i}")).shallow_clone())
        .collect();
    let inputs = d
        .inputs(g("train.images.0"), eps, g("train.time"))
        .expect("inputs");
    let preds: Vec<Tensor> = (0..levels)
        .map(|i| g(&format!("train.model_out.{i}")).shallow_clone())
        .collect();
    let loss = d.loss(&inputs, &preds).expect("loss");
    for i in 0..levels {
        let k = |s: &str| format!("train.{s}.{i}");
        close(name, &k("images"), &inputs.images[i], g(&k("images")));
        close(name, &k("gamma"), &inputs.gamma[i], g(&k("gamma")));
        close(
            name,
            &k("gamma_last"),
            &inputs.gamma_last[i],
            g(&k("gamma_last")),
        );
        close(name, &k("x_t"), &inputs.x_t[i], g(&k("x_t")));
        close(name, &k("target"), &inputs.targets[i], g(&k("target")));
        let tv = target(
            &inputs.images[i],
            &inputs.eps[i],
            &inputs.gamma[i],
            PredictionType::VPrediction,
        );
        close(name, &k("target_v"), &tv, g(&k("target_v")));
        let (x0, e) = x0_eps_from_pred(
            &inputs.x_t[i],
            &preds[i],
            &inputs.gamma[i],
            PredictionType::VPrediction,
        );
        close(name, &k("x0_from_v"), &x0, g(&k("x0_from_v")));
        close(name, &k("eps_from_v"), &e, g(&k("eps_from_v")));
        close(
            name,
            &k("pred_for_training"),
            &loss.pred_for_training[i],
            g(&k("pred_for_training")),
        );
        close(name, &k("loss"), &loss.per_level[i], g(&k("loss")));
    }
    close(name, "train.loss_total", &loss.total, g("train.loss_total"));

    // One sampling step: DDPM, DDIM(η=0), and the last step (t = 1, no noise).
    for (p, sampler) in [
        ("sample", Sampler::Ddpm),
        ("sample_ddim0", Sampler::Ddim { eta: 0.0 }),
        ("sample_last", Sampler::Ddpm),
    ] {
        let tt = g(&format!("{p}.t"));
        let step_t = tt.int64_value(&[0]);
        exact(
            name,
            &format!("{p}.model_time"),
            &(tt - 1),
            g(&format!("{p}.model_time")),
        );
        let x_t: Vec<Tensor> = (0..levels)
            .map(|i| g(&format!("{p}.x_t.{i}")).shallow_clone())
            .collect();
        let out: Vec<Tensor> = (0..levels)
            .map(|i| g(&format!("{p}.model_out.{i}")).shallow_clone())
            .collect();
        let noise: Option<Vec<Tensor>> = t.contains_key(&format!("{p}.noise.0")).then(|| {
            (0..levels)
                .map(|i| g(&format!("{p}.noise.{i}")).shallow_clone())
                .collect()
        });
        let thresh = cfg.sampler_config.threshold_function;
        let s = d
            .step(
                &x_t,
                &out,
                step_t,
                step_t - 1,
                sampler,
                noise.as_deref(),
                thresh,
            )
            .expect("step");
        for i in 0..levels {
            let b = x_t[i].size()[0];
            let idx = |v: i64| Tensor::full([b], v, (Kind::Int64, Device::Cpu));
            close(
                name,
                &format!("{p}.gamma.{i}"),
                &d.schedule.gamma(i, &idx(step_t)),
                g(&format!("{p}.gamma.{i}")),
            );
            close(
                name,
                &format!("{p}.gamma_last.{i}"),
                &d.schedule.gamma(i, &idx(step_t - 1)),
                g(&format!("{p}.gamma_last.{i}")),
            );
            close(
                name,
                &format!("{p}.x0.{i}"),
                &s.x0[i],
                g(&format!("{p}.x0.{i}")),
            );
            close(
                name,
                &format!("{p}.x_prev.{i}"),
                &s.x_prev[i],
                g(&format!("{p}.x_prev.{i}")),
            );
        }
    }

    // Timesteps.
    let mut n_checked = 0;
    for (k, v) in &t {
        if let Some(n) = k.strip_prefix("timesteps.") {
            let n: usize = n.parse().expect("n");
            exact(name, k, &Tensor::from_slice(&d.timesteps(n)), v);
            n_checked += 1;
        }
    }
    assert!(n_checked > 0, "no timesteps tables");
}

#[test]
fn cc12m_256x256_diffusion_matches_mlmdm() {
    let _rng = common::torch_rng();
    run("cc12m_256x256");
}

#[test]
fn cc12m_1024x1024_diffusion_matches_mlmdm() {
    let _rng = common::torch_rng();
    run("cc12m_1024x1024");
}
