//! Diffusion features beyond the tables: mixed-resolution batches, level weights, the
//! sampling loop with DDPM/DDIM, guidance and thresholding, the denoiser's loss.

use crate::common;

use mdm_trainer::{
    config::ModelConfig,
    diffusion::{
        sampler::threshold, DiffusionConfig, NestedDiffusion, SampleOptions, Sampler, ThresholdType,
    },
    denoiser::{Denoiser, Draws, LossOptions},
    model::{null_condition, Conditioning, MdmUNet, Micros, ModelInput, Trace},
};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn cpu() -> (Kind, Device) {
    (Kind::Float, Device::Cpu)
}

const NESTED: &str = r#"
model = "nested_unet"
[unet_config]
resolution_channels = [8, 16]
num_resnets_per_resolution = [1, 1]
attention_levels = []
num_attention_layers = [0, 0]
conditioning_feature_dim = 16
temporal_dim = 32
micro_conditioning = "scale:16"
resnet_config = { num_groups_norm = 4 }
[unet_config.inner_config]
nesting = true
resolution_channels = [8, 32]
num_resnets_per_resolution = [1, 1]
attention_levels = [1]
num_attention_layers = [1, 1]
micro_conditioning = "scale:8"
resnet_config = { num_groups_norm = 4 }
[diffusion_config]
use_vdm_loss_weights = false
use_double_loss = true
no_use_residual = true
mixed_ratio = "1:1"
multi_res_weights = "2:1"
[diffusion_config.sampler_config]
num_diffusion_steps = 50
schedule_type = "DEEPFLOYD"
prediction_type = "V_PREDICTION"
loss_target_type = "DDPM"
schedule_shifted = true
"#;

fn setup() -> (VarStore, MdmUNet, NestedDiffusion) {
    tch::manual_seed(11);
    let cfg = ModelConfig::from_toml_str(NESTED).expect("config");
    let vs = VarStore::new(Device::Cpu);
    let model = MdmUNet::new(&vs.root(), &cfg).expect("model");
    {
        let _g = tch::no_grad_guard();
        for (_, mut v) in vs.variables() {
            let r = v.randn_like() * 0.2;
            v.copy_(&r);
        }
    }
    let d = NestedDiffusion::for_model(&model, &cfg.diffusion(), Device::Cpu).expect("diffusion");
    (vs, model, d)
}

fn text(b: i64) -> Conditioning {
    Conditioning::Text {
        tokens: Tensor::randn([b, 4, 16], cpu()),
        mask: Tensor::ones([b, 4], cpu()),
    }
}

/// ml-mdm's `mixed_ratio` ("1:1": cumulative shares [0.5, 1]) as a fixed split of an
/// outermost batch: the outer level trains the first ⌊0.5·B⌋ samples, its loss renormalised
/// by the nominal 0.5 (computed here by hand from ml-mdm's formula on the unsplit batch), and
/// the inner level trains every sample, the pooled ones included, with its own noise.
#[test]
fn mixed_ratio_trains_the_outer_level_on_its_share_only() {
    let _rng = common::torch_rng();
    let (_vs, model, d) = setup();
    assert_eq!(d.scales, vec![2, 1]);
    let m = d.cfg.mixed_shares(2).expect("shares").expect("mixed_ratio is set");
    assert_eq!(m, vec![0.5, 1.0]);
    let den = Denoiser::new(&model, &d);
    let images = Tensor::rand([5, 3, 16, 16], cpu()) * 2.0 - 1.0;
    let cond = text(5);
    let whole = den.batch_of(images.shallow_clone(), cond.shallow_clone()).expect("batch");
    let draws = den.draw(&whole).expect("draws");
    let all_noise: Vec<Tensor> = draws.noise.iter().map(|n| n.copy()).collect();
    let time = draws.time.copy();
    let whole_again = |den: &Denoiser| den.batch_of(images.shallow_clone(), cond.shallow_clone()).unwrap();
    let (batch, cut) = den.split(whole, draws, &m).expect("split");
    // ⌊0.5·5⌋ = 2 samples at 16², the other 3 pooled to 8², order kept.
    assert_eq!(batch.group_sizes(), vec![2, 3]);
    assert!(batch.groups[0].equal(&images.narrow(0, 0, 2)));
    let pooled = images.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None);
    assert!(batch.groups[1].equal(&pooled.narrow(0, 2, 3)));
    assert_eq!(cut.noise[0].size()[0], 2);
    assert!(cut.noise[1].equal(&all_noise[1]));
    let opts = LossOptions { cfg_dropout: 0.0, shares: Some(m.clone()) };
    let loss = den.loss(&batch, &cut, &opts).expect("loss");
    assert_eq!(loss.total.size(), [5]);

    // By hand, as ml-mdm computes it: every level noised on the whole batch, the outer
    // network input narrowed to the first 2 rows, the outer loss of those rows / 0.5 · 2
    // (multi_res_weights "2:1"), zero past them; the inner loss on every row, weight 1.
    let inputs = d.inputs(&images, all_noise, &time).expect("inputs");
    let x = vec![inputs.x_t[0].narrow(0, 0, 2), inputs.x_t[1].shallow_clone()];
    let preds = model.forward(&ModelInput::new(&x, &time, &cond), true, &mut Trace::off()).expect("forward");
    let eps_loss = |i: usize, rows: i64| {
        let (x0, _) = mdm_trainer::diffusion::loss::x0_eps_from_pred(
            &inputs.x_t[i].narrow(0, 0, rows),
            &preds[i],
            &inputs.gamma[i].narrow(0, 0, rows),
            mdm_trainer::diffusion::PredictionType::VPrediction,
        );
        let eps_pred = mdm_trainer::diffusion::loss::pred_from_x0(
            &inputs.x_t[i].narrow(0, 0, rows),
            &x0,
            &inputs.gamma[i].narrow(0, 0, rows),
            mdm_trainer::diffusion::PredictionType::Ddpm,
        );
        (eps_pred - inputs.eps[i].narrow(0, 0, rows)).square().mean_dim([1i64, 2, 3].as_slice(), false, Kind::Float)
    };
    let outer = &loss.per_level[0];
    assert_eq!(outer.narrow(0, 2, 3).abs().sum(Kind::Float).double_value(&[]), 0.0);
    assert!(common::max_abs(&outer.narrow(0, 0, 2), &(eps_loss(0, 2) / 0.5 * 2.0)) < 1e-5);
    assert!(common::max_abs(&loss.per_level[1], &eps_loss(1, 5)) < 1e-5);
    assert!(loss.per_level[1].gt(0.0).all().int64_value(&[]) == 1);
    // Gradients flow.
    loss.total.mean(Kind::Float).backward();

    // A split needs an outermost batch and cumulative shares ending at 1.
    let again = den.split(batch, den.draw(&whole_again(&den)).unwrap(), &m);
    assert!(again.unwrap_err().to_string().contains("outermost"));
    let outer = whole_again(&den);
    let outer_draws = den.draw(&outer).unwrap();
    assert!(den.split(outer, outer_draws, &[0.5, 0.9]).is_err());
}

#[test]
fn sampling_ddpm_ddim_guidance_and_thresholds() {
    let _rng = common::torch_rng();
    let (_vs, model, d) = setup();
    let b = 2;
    let noise = || {
        vec![
            Tensor::randn([b, 3, 16, 16], cpu()),
            Tensor::randn([b, 3, 8, 8], cpu()),
        ]
    };
    let cond = text(b);
    let uncond = Conditioning::Text {
        tokens: Tensor::zeros([b, 1, 16], cpu()),
        mask: Tensor::ones([b, 1], cpu()),
    };
    let micros = Micros::new();

    // DDIM(0) is deterministic given the start noise.
    tch::manual_seed(5);
    let n = noise();
    let opts = SampleOptions {
        steps: Some(5),
        sampler: Sampler::Ddim { eta: 0.0 },
        guidance_scale: 1.0,
        threshold: None,
        frames: 1,
    };
    let a = d
        .sample(
            &model,
            n.iter().map(|t| t.copy()).collect(),
            &cond,
            None,
            &micros,
            &opts,
        )
        .expect("ddim");
    let a2 = d
        .sample(
            &model,
            n.iter().map(|t| t.copy()).collect(),
            &cond,
            None,
            &micros,
            &opts,
        )
        .expect("ddim");
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].size(), vec![b, 3, 16, 16]);
    assert_eq!(common::max_abs(&a[0], &a2[0]), 0.0);
    assert!(a[0].abs().max().double_value(&[]) <= 1.0);

    // Guidance with scale 1 is the plain prediction; other scales change it.
    let guided1 = d
        .sample(
            &model,
            n.iter().map(|t| t.copy()).collect(),
            &cond,
            Some(&uncond),
            &micros,
            &opts,
        )
        .expect("g1");
    assert!(common::max_abs(&guided1[0], &a[0]) < 1e-5);
    let opts3 = SampleOptions {
        guidance_scale: 3.0,
        ..opts.clone()
    };
    let guided3 = d
        .sample(
            &model,
            n.iter().map(|t| t.copy()).collect(),
            &cond,
            Some(&uncond),
            &micros,
            &opts3,
        )
        .expect("g3");
    assert!(common::max_abs(&guided3[0], &a[0]) > 1e-4);
    assert!(
        d.sample(&model, noise(), &cond, None, &micros, &opts3)
            .is_err(),
        "guidance needs an unconditional input"
    );

    // DDPM (ancestral) and DDIM(1) run and stay finite and in range.
    for sampler in [Sampler::Ddpm, Sampler::Ddim { eta: 1.0 }] {
        let o = SampleOptions {
            steps: Some(4),
            sampler,
            guidance_scale: 2.0,
            threshold: Some(ThresholdType::Dynamic),
            frames: 1,
        };
        let s = d
            .sample(&model, noise(), &cond, Some(&uncond), &micros, &o)
            .expect("sample");
        for x in &s {
            assert!(x.isfinite().all().int64_value(&[]) == 1);
        }
    }

    // Thresholds.
    let x = Tensor::randn([2, 3, 8, 8], cpu()) * 4.0;
    let c = threshold(&x, ThresholdType::Clip, 1.0);
    assert!(c.abs().max().double_value(&[]) <= 1.0);
    let dy = threshold(&x, ThresholdType::Dynamic, 1.0);
    assert!(dy.abs().max().double_value(&[]) <= 1.0 + 1e-6);
    // Dynamic thresholding divides by the per-sample 99.5th percentile of |x| (> 1 here).
    let flat = x.reshape([2, -1]).abs();
    let s0 = flat
        .get(0)
        .quantile_scalar(0.995, 0, false, "linear")
        .double_value(&[]);
    let want = x.get(0).clamp(-s0, s0) / s0;
    assert!(common::max_abs(&dy.get(0), &want) < 1e-6);
    let small = Tensor::rand([1, 3, 4, 4], cpu()) * 0.5;
    assert!(
        common::max_abs(&threshold(&small, ThresholdType::Dynamic, 1.0), &small) < 1e-7,
        "s clamps at 1"
    );
}

#[test]
fn timesteps_and_config_validation() {
    let _rng = common::torch_rng();
    let cfg = DiffusionConfig::published(2);
    let d = NestedDiffusion::new(&cfg, &[4, 1], Device::Cpu).expect("diffusion");
    let ts = d.timesteps(10);
    assert_eq!(ts.len(), 11);
    // round(k·1001/11) = 91·k: ml-mdm starts at 910, not 1000.
    assert_eq!((ts[0], ts[1], ts[10]), (910, 819, 0));
    assert!(ts.windows(2).all(|w| w[0] > w[1]));
    let mut bad = cfg.clone();
    bad.mixed_ratio = Some("1:x".into());
    assert!(NestedDiffusion::new(&bad, &[4, 1], Device::Cpu).is_err());
    let mut bad = cfg.clone();
    bad.multi_res_weights = Some("1:2:3".into());
    assert!(
        NestedDiffusion::new(&bad, &[4, 1], Device::Cpu).is_err(),
        "weights need one entry per level"
    );
    let mut bad = cfg;
    bad.use_vdm_loss_weights = true;
    assert!(NestedDiffusion::new(&bad, &[4, 1], Device::Cpu).is_err());
}

/// `Denoiser::loss` on a batch drawn at the outermost level is ml-mdm's full-batch loss
/// (`inputs` → `forward` → `loss`; a model `mixed_ratio` applies only through `split`) with the same draws; with every
/// dropout uniform below `cfg_dropout` it is the loss on the null condition sampling uses.
#[test]
fn the_denoiser_loss_is_the_full_batch_loss_and_drops_to_the_null_condition() {
    let _rng = common::torch_rng();
    let (_vs, model, d) = setup();
    let den = Denoiser::new(&model, &d);
    let images = Tensor::rand([4, 3, 16, 16], cpu()) * 2.0 - 1.0;
    let cond = text(4);
    let batch = den.batch_of(images.shallow_clone(), cond.shallow_clone()).expect("batch");
    assert_eq!(batch.group_sizes(), vec![4, 0]);
    let draws = den.draw(&batch).expect("draws");
    let by_hand = |cond: &Conditioning| {
        let noise = draws.noise.iter().map(|n| n.shallow_clone()).collect();
        let inputs = d.inputs(&images, noise, &draws.time).expect("inputs");
        let preds = model.forward(&ModelInput::new(&inputs.x_t, &inputs.time, cond), true, &mut Trace::off()).expect("forward");
        d.loss(&inputs, &preds).expect("loss").total
    };
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    let got = den.loss(&batch, &draws, &LossOptions::default()).expect("loss").total;
    assert_eq!(got.size(), [4]);
    assert!(diff(&got, &by_hand(&cond)) <= 1e-6, "{}", diff(&got, &by_hand(&cond)));

    let all_dropped = Draws {
        time: draws.time.shallow_clone(),
        uniform: Tensor::zeros([4], cpu()),
        noise: draws.noise.iter().map(|n| n.shallow_clone()).collect(),
    };
    let opts = LossOptions { cfg_dropout: 0.5, shares: None };
    let dropped = den.loss(&batch, &all_dropped, &opts).expect("loss").total;
    let null = null_condition(&cond, 4, model.null_class()).expect("null condition");
    assert!(diff(&dropped, &by_hand(&null)) <= 1e-5, "{}", diff(&dropped, &by_hand(&null)));
    assert!(diff(&dropped, &got) > 1e-4, "dropping the text must change the loss");
    // Uniforms above p keep every condition.
    let kept = Draws { uniform: Tensor::ones([4], cpu()), ..all_dropped };
    assert!(diff(&den.loss(&batch, &kept, &opts).expect("loss").total, &got) <= 1e-6);
    // Draws for another batch size are refused.
    let short = Draws { time: draws.time.narrow(0, 0, 3), uniform: draws.uniform.shallow_clone(), noise: vec![] };
    assert!(den.loss(&batch, &short, &opts).is_err());
}

/// The sampling loop without a network: a denoiser that knows x0 (it returns the prediction
/// `pred_from_x0` gives at each step's γ) leads DDIM(0) from pure noise back to x0 on every
/// level; DDPM gets there too; the loop asks for one prediction per step, at times N−1 … 0.
#[test]
fn the_sampling_loop_recovers_x0_from_an_oracle_denoiser() {
    let _rng = common::torch_rng();
    use mdm_trainer::diffusion::loss::pred_from_x0;
    let (_vs, _model, d) = setup();
    let pt = d.cfg.sampler_config.prediction_type;
    tch::manual_seed(3);
    let outer = Tensor::rand([2, 3, 16, 16], cpu()) * 1.6 - 0.8;
    let x0 = d.pyramid(&outer);
    for sampler in [Sampler::Ddim { eta: 0.0 }, Sampler::Ddpm] {
        let noise: Vec<Tensor> = x0.iter().map(|x| x.randn_like()).collect();
        let mut times = vec![];
        let opts = SampleOptions { steps: Some(10), sampler, ..SampleOptions::default() };
        let out = d
            .sample_with(noise, &opts, |x, time| {
                times.push(time.int64_value(&[0]));
                Ok((0..d.levels())
                    .map(|i| {
                        let g = d.schedule.gamma(i, &(time + 1));
                        pred_from_x0(&x[i], &(&x0[i] / d.signal_scale[i]), &g, pt)
                    })
                    .collect())
            })
            .expect("sample");
        assert_eq!(times, d.timesteps(10).iter().take(10).map(|t| t - 1).collect::<Vec<_>>());
        for (i, (o, x)) in out.iter().zip(&x0).enumerate() {
            let err = common::max_abs(o, x);
            assert!(err < 1e-3, "{sampler:?} level {i}: max error {err}");
        }
    }
    // One noise tensor per level.
    assert!(d.sample_with(vec![], &SampleOptions::default(), |_, _| Ok(vec![])).is_err());
}
