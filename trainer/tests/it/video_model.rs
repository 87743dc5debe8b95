//! Video models (`temporal_mode`): config rules, the temporal attention block against an
//! independent formulation, clip independence, and inflation from an image checkpoint.

use crate::common;

use mdm_trainer::{
    config::ModelConfig,
    denoiser::{Denoiser, LossOptions, TrainBatch},
    diffusion::NestedDiffusion,
    growth::inflate_from,
    model::{attention::TemporalAttention, Conditioning, Init, MdmUNet, ModelInput, Trace},
    train, weights,
};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// A one-level 16² text UNet; `video` adds temporal attention at the 8² resolution.
fn unet_toml(video: bool) -> String {
    let t = if video {
        "temporal_mode = true\ntemporal_spatial_ds = true\ntemporal_positional_encoding = true\nnum_temporal_attention_layers = [0, 1]\n"
    } else {
        ""
    };
    format!(
        r#"
model = "unet"
[unet_config]
resolution_channels = [32, 64]
num_resnets_per_resolution = [1, 1]
attention_levels = [1]
num_attention_layers = [0, 1]
conditioning_feature_dim = 16
temporal_dim = 64
micro_conditioning = "scale:16"
{t}resnet_config = {{ num_groups_norm = 8 }}
"#
    )
}

fn nested_video_toml() -> &'static str {
    r#"
model = "nested_unet"
[unet_config]
resolution_channels = [32, 64]
num_resnets_per_resolution = [1, 1]
attention_levels = []
num_attention_layers = [0, 0]
conditioning_feature_dim = 16
temporal_dim = 64
micro_conditioning = "scale:32"
temporal_mode = true
temporal_spatial_ds = true
temporal_positional_encoding = true
num_temporal_attention_layers = [0, 1]
resnet_config = { num_groups_norm = 8 }
[unet_config.inner_config]
nesting = true
temporal_dim = 64
resolution_channels = [32, 64]
num_resnets_per_resolution = [1, 1]
attention_levels = [1]
num_attention_layers = [0, 1]
micro_conditioning = "scale:16"
temporal_mode = true
temporal_spatial_ds = true
temporal_positional_encoding = true
num_temporal_attention_layers = [0, 1]
resnet_config = { num_groups_norm = 8 }
"#
}

/// A model built from TOML text: its config, variables and network.
fn build(toml: &str) -> (ModelConfig, VarStore, MdmUNet) {
    let cfg = ModelConfig::from_toml_str(toml).expect("config");
    let vs = VarStore::new(Device::Cpu);
    let model = MdmUNet::new(&vs.root(), &cfg).expect("model");
    (cfg, vs, model)
}

/// Every variable random (zero-initialised layers too), so that every path matters.
fn randomize(vs: &VarStore, scale: f64) {
    let _g = tch::no_grad_guard();
    for (k, mut v) in vs.variables() {
        if k.ends_with("pos_emb.freqs") {
            continue;
        }
        let r = v.randn_like() * scale;
        v.copy_(&r);
    }
}

fn text(clips: i64) -> Conditioning {
    Conditioning::Text {
        tokens: Tensor::randn([clips, 4, 16], (Kind::Float, Device::Cpu)),
        mask: Tensor::ones([clips, 4], (Kind::Float, Device::Cpu)),
    }
}

#[test]
fn config_rules() {
    let _rng = common::torch_rng();
    let ok = ModelConfig::from_toml_str(&unet_toml(true)).expect("video config");
    assert!(ok.is_video());
    let temporal: Vec<usize> = ok.top.resolutions.iter().map(|r| r.temporal.map_or(0, |t| t.layers)).collect();
    assert_eq!(temporal, vec![0, 1]);
    assert!(!ModelConfig::from_toml_str(&unet_toml(false)).expect("image").is_video());
    assert!(ModelConfig::from_toml_str(nested_video_toml()).expect("nested video").is_video());

    let err = |toml: String, needle: &str| {
        let e = ModelConfig::from_toml_str(&toml).expect_err("must be rejected").to_string();
        assert!(e.contains(needle), "expected {needle:?} in: {e}");
    };
    err(unet_toml(true).replace("temporal_spatial_ds = true", "temporal_spatial_ds = false"), "temporal_spatial_ds");
    err(
        unet_toml(false).replace("micro_conditioning", "num_temporal_attention_layers = [0, 1]\nmicro_conditioning"),
        "temporal_mode = true",
    );
    err(unet_toml(true).replace("resolution_channels = [32, 64]", "resolution_channels = [32, 48]").replace("num_groups_norm = 8", "num_groups_norm = 16"), "divisible by 32");
    // Inner and outer levels must agree.
    let inner_off = nested_video_toml()
        .rsplit_once("temporal_mode = true\ntemporal_spatial_ds = true\ntemporal_positional_encoding = true\nnum_temporal_attention_layers = [0, 1]\n")
        .map(|(a, b)| format!("{a}{b}"))
        .expect("split");
    err(inner_off, "agree on temporal_mode");
}

/// The temporal block written out with plain ops: stride-2 conv, attention over frames per
/// pixel with ml-mdm's q·k scaling and an explicit softmax, rotary positions as a complex
/// rotation, MLP, nearest ×2 and conv of what attention and MLP add, residual.
fn reference_block(vars: &std::collections::BTreeMap<String, Tensor>, x: &Tensor, frames: i64) -> Tensor {
    let w = |k: &str| vars.get(&format!("t.{k}")).unwrap_or_else(|| panic!("missing t.{k}")).shallow_clone();
    let h = x.conv2d(&w("down_conv.weight"), Some(&w("down_conv.bias")), [2, 2], [1, 1], [1, 1], 1);
    let (bt, c, hh, ww) = h.size4().expect("4d");
    let b = bt / frames;
    let s = h.view([b, frames, c, hh, ww]).permute([0, 3, 4, 1, 2]).reshape([-1, frames, c]);
    let ln = |t: &Tensor, p: &str| t.layer_norm([c], Some(&w(&format!("{p}.weight"))), Some(&w(&format!("{p}.bias"))), 1e-5, false);
    let qkv = ln(&s, "attn.norm").linear(&w("attn.qkv.weight"), Some(&w("attn.qkv.bias")));
    let qkv = qkv.chunk(3, -1);
    let (heads, ch) = (c / 32, 32);
    let n = s.size()[0];
    let split = |t: &Tensor| t.reshape([n, frames, heads, ch]).permute([0, 2, 1, 3]); // (n,H,T,ch)
    let freqs = w("attn.pos_emb.freqs");
    let angles = Tensor::arange(frames, (Kind::Float, Device::Cpu)).unsqueeze(1) * freqs.unsqueeze(0); // (T, ch/2)
    let rot = Tensor::polar(&angles.ones_like(), &angles);
    let rotary = |t: Tensor| Tensor::view_as_real(&(Tensor::view_as_complex(&t.reshape([n, heads, frames, ch / 2, 2]).contiguous()) * &rot)).reshape([n, heads, frames, ch]);
    let (q, k, v) = (rotary(split(&qkv[0])), rotary(split(&qkv[1])), split(&qkv[2]));
    let scale = 1.0 / (ch as f64).sqrt().sqrt();
    let att = ((&q * scale).matmul(&(&k * scale).transpose(-1, -2))).softmax(-1, Kind::Float);
    let a = att.matmul(&v).permute([0, 2, 1, 3]).reshape([n, frames, c]);
    // ml-mdm: s ← s + attn; s ← s + mlp(s); up_conv(up(s)). Ours: up_conv(up(attn + mlp)).
    let a = a.linear(&w("attn.proj_out.weight"), Some(&w("attn.proj_out.bias")));
    let m = ln(&(&s + &a), "mlp.main.0").linear(&w("mlp.main.1.weight"), Some(&w("mlp.main.1.bias"))).gelu("none");
    let m = m.linear(&w("mlp.main.3.weight"), Some(&w("mlp.main.3.bias")));
    let h = (a + m).reshape([b, hh, ww, frames, c]).permute([0, 3, 4, 1, 2]).reshape([bt, c, hh, ww]);
    let up = h.upsample_nearest2d([2 * hh, 2 * ww], None, None);
    up.conv2d(&w("up_conv.weight"), Some(&w("up_conv.bias")), [1, 1], [1, 1], [1, 1], 1) + x
}

#[test]
fn temporal_block_matches_its_written_out_formula() {
    let _rng = common::torch_rng();
    let vs = VarStore::new(Device::Cpu);
    let block = TemporalAttention::new(&(vs.root() / "t"), 64, true, Init::Random);
    let vars: std::collections::BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "t.attn.norm.bias", "t.attn.norm.weight", "t.attn.pos_emb.freqs", "t.attn.proj_out.bias", "t.attn.proj_out.weight",
            "t.attn.qkv.bias", "t.attn.qkv.weight", "t.down_conv.bias", "t.down_conv.weight", "t.mlp.main.0.bias",
            "t.mlp.main.0.weight", "t.mlp.main.1.bias", "t.mlp.main.1.weight", "t.mlp.main.3.bias", "t.mlp.main.3.weight",
            "t.up_conv.bias", "t.up_conv.weight",
        ]
    );
    // rotary_embedding_torch's frequencies 10000^(−2k/32), stored and not trained.
    let f = &vars["t.attn.pos_emb.freqs"];
    assert!(!f.requires_grad());
    assert!((f.double_value(&[1]) - 10000f64.powf(-2.0 / 32.0)).abs() < 1e-7);
    tch::manual_seed(3);
    randomize(&vs, 0.2);
    let x = Tensor::randn([2 * 5, 64, 8, 8], (Kind::Float, Device::Cpu));
    let _g = tch::no_grad_guard();
    let ours = block.forward(&x, 5);
    let reference = reference_block(&vars, &x, 5);
    let d = common::max_abs(&ours, &reference);
    eprintln!("temporal block vs written-out formula: max|diff| = {d:e}");
    assert!(d < 1e-4, "{d}");
    // Frame order matters (rotary positions): reversing the frames of the input does not just
    // reverse the output.
    let rev = x.view([2, 5, 64, 8, 8]).flip([1]).reshape([10, 64, 8, 8]);
    let out_rev = block.forward(&rev, 5).view([2, 5, 64, 8, 8]).flip([1]).reshape([10, 64, 8, 8]);
    assert!(common::max_abs(&out_rev, &ours) > 1e-3);
}

#[test]
fn clips_stay_apart_and_frames_interact() {
    let _rng = common::torch_rng();
    tch::manual_seed(11);
    let (_, vs, model) = build(&unet_toml(true));
    randomize(&vs, 0.1);
    let (clips, frames) = (2, 3);
    let x = Tensor::randn([clips * frames, 3, 16, 16], (Kind::Float, Device::Cpu));
    let times = Tensor::from_slice(&[10i64, 700]);
    let cond = text(clips);
    let _g = tch::no_grad_guard();
    let run = |x: &Tensor, c: &Conditioning| model.forward(&ModelInput::new(&[x.shallow_clone()], &times, c).with_frames(frames), false, &mut Trace::off()).expect("forward").remove(0);
    let base = run(&x, &cond);
    assert_eq!(base.size(), [6, 3, 16, 16]);

    // Change the last frame of clip 1: clip 0 is untouched, clip 1's first frame changes.
    let x2 = x.copy();
    x2.get(5).copy_(&Tensor::randn([3, 16, 16], (Kind::Float, Device::Cpu)));
    let out = run(&x2, &cond);
    assert!(common::max_abs(&out.narrow(0, 0, 3), &base.narrow(0, 0, 3)) < 1e-6, "clip 0 saw clip 1");
    assert!(common::max_abs(&out.get(3), &base.get(3)) > 1e-4, "frames of a clip do not interact");

    // Change clip 1's caption: clip 0 is untouched.
    let Conditioning::Text { tokens, mask } = &cond else { unreachable!() };
    let t2 = tokens.copy();
    t2.get(1).copy_(&Tensor::randn([4, 16], (Kind::Float, Device::Cpu)));
    let out = run(&x, &Conditioning::Text { tokens: t2, mask: mask.shallow_clone() });
    assert!(common::max_abs(&out.narrow(0, 0, 3), &base.narrow(0, 0, 3)) < 1e-6);
    assert!(common::max_abs(&out.narrow(0, 3, 3), &base.narrow(0, 3, 3)) > 1e-4);

    // An image model takes no clips; rows must be whole clips.
    let (_, _ivs, image_model) = build(&unet_toml(false));
    let e = image_model.forward(&ModelInput::new(&[x.shallow_clone()], &times, &cond).with_frames(3), false, &mut Trace::off()).expect_err("image model with clips").to_string();
    assert!(e.contains("only a video model"), "{e}");
    let e = model.forward(&ModelInput::new(&[x.narrow(0, 0, 5)], &times, &cond).with_frames(3), false, &mut Trace::off()).expect_err("partial clip").to_string();
    assert!(e.contains("whole clips"), "{e}");
}

/// A video model inflated from an image checkpoint predicts every frame as the image model
/// does (one level, and nested with an added outer level: the inner prediction).
#[test]
fn inflated_from_an_image_checkpoint_predicts_like_it() {
    let _rng = common::torch_rng();
    tch::manual_seed(5);
    let dir = tempfile::tempdir().expect("tmp");
    let (_, ivs, image) = build(&unet_toml(false));
    randomize(&ivs, 0.1);
    let ckpt = dir.path().join("image.safetensors");
    weights::save(&ivs, &ckpt).expect("save");

    let (clips, frames) = (2, 3);
    let times = Tensor::from_slice(&[10i64, 700]);
    let cond = text(clips);
    let Conditioning::Text { tokens, mask } = &cond else { unreachable!() };
    let per_frame = Conditioning::Text {
        tokens: tokens.repeat_interleave_self_int(frames, Some(0), None),
        mask: mask.repeat_interleave_self_int(frames, Some(0), None),
    };
    let frame_times = times.repeat_interleave_self_int(frames, Some(0), None);
    let x16 = Tensor::randn([clips * frames, 3, 16, 16], (Kind::Float, Device::Cpu));
    let expected = {
        let _g = tch::no_grad_guard();
        image.forward(&ModelInput::new(&[x16.shallow_clone()], &frame_times, &per_frame), false, &mut Trace::off()).expect("image forward").remove(0)
    };

    // Same levels.
    let (_, vvs, video) = build(&unet_toml(true));
    randomize(&vvs, 0.1);
    let report = inflate_from(&vvs, &ckpt, 0).expect("inflate");
    assert_eq!(report.loaded.len(), ivs.variables().len());
    assert!(!report.fresh.is_empty() && report.fresh.iter().all(|k| k.contains(".t_attn.")), "{:?}", report.fresh);
    // Each fresh temporal block's output layers (3 blocks × proj_out, mlp.main.3 × weight, bias;
    // up_conv's bias).
    assert!(
        report.zeroed.iter().all(|k| k.contains(".t_attn.") && (k.contains(".proj_out.") || k.contains(".mlp.main.3.") || k.ends_with("up_conv.bias")))
            && report.zeroed.len() == 15,
        "{:?}",
        report.zeroed
    );
    let got = {
        let _g = tch::no_grad_guard();
        video.forward(&ModelInput::new(&[x16.shallow_clone()], &times, &cond).with_frames(frames), false, &mut Trace::off()).expect("video forward").remove(0)
    };
    let d = common::max_abs(&got, &expected);
    eprintln!("inflated video model vs image model, per frame: max|diff| = {d:e}");
    assert!(d < 1e-5, "{d}");

    // With an added outer level.
    let (_, nvs, nested) = build(nested_video_toml());
    randomize(&nvs, 0.1);
    let report = inflate_from(&nvs, &ckpt, 1).expect("inflate nested");
    assert!(report.zeroed.iter().any(|k| k == "in_adapter.weight"));
    let x32 = Tensor::randn([clips * frames, 3, 32, 32], (Kind::Float, Device::Cpu));
    let both = {
        let _g = tch::no_grad_guard();
        nested.forward(&ModelInput::new(&[x32, x16.shallow_clone()], &times, &cond).with_frames(frames), false, &mut Trace::off()).expect("nested forward")
    };
    let d = common::max_abs(&both[1], &expected);
    assert!(d < 1e-5, "inner prediction after inflation: {d}");

    // An image checkpoint lacking a non-temporal tensor is still an error.
    let partial = dir.path().join("partial.safetensors");
    let mut kept: Vec<(String, Tensor)> = ivs.variables().into_iter().filter(|(k, _)| k != "conv_in.weight").collect();
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&kept, &partial).expect("write");
    let (_, fvs, _m) = build(&unet_toml(true));
    let e = inflate_from(&fvs, &partial, 0).expect_err("missing tensor").to_string();
    assert!(e.contains("conv_in.weight"), "{e}");
}

/// A training step on clips: one t per clip, finite loss, gradients reach the temporal blocks.
#[test]
fn a_training_step_on_clips() {
    let _rng = common::torch_rng();
    tch::manual_seed(2);
    let (cfg, vs, model) = build(nested_video_toml());
    // (Zero-initialised output layers would stop every gradient before them.)
    randomize(&vs, 0.05);
    let diffusion = NestedDiffusion::for_model(&model, &cfg.diffusion(), Device::Cpu).expect("diffusion");
    let frames = 4;
    // Two clips drawn at 32² and one at 16² (a mixed-resolution batch), frames folded.
    let groups = vec![
        Tensor::rand([2 * frames, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2 - 1,
        Tensor::rand([frames, 3, 16, 16], (Kind::Float, Device::Cpu)) * 2 - 1,
    ];
    let d = Denoiser::new(&model, &diffusion);
    let step = |groups: &[Tensor]| {
        let b = TrainBatch::new(groups.iter().map(|g| g.shallow_clone()).collect(), text(3), frames)?;
        train::forward_backward(&d, &b, &d.draw(&b)?, &LossOptions::default())
    };
    let (loss, levels) = step(&groups).expect("step");
    assert!(loss.is_finite() && loss > 0.0 && levels.len() == 2, "{loss} {levels:?}");
    let vars = vs.variables();
    let g = vars["inner_unet.up_blocks.0.t_attn.0.up_conv.weight"].grad();
    assert!(g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    // Rows that are not whole clips are refused.
    let bad = vec![groups[0].narrow(0, 0, 7), groups[1].shallow_clone()];
    assert!(step(&bad).is_err());
}

/// The whole loop on one clip (a square moving 2 px per frame): the loss at fixed times and
/// noise falls well below its start, and the temporal blocks are trained. (With ml-mdm's own
/// block formula, whose branch keeps `up_conv(up(down_conv(x)))`, this run's activations grew
/// past 1e3 and the loss stalled near 0.42: see `TemporalAttention`.)
#[test]
fn a_video_model_fits_a_moving_square() {
    let _rng = common::torch_rng();
    use mdm_trainer::{optim::FlatOptimizer, run_config::OptimConfig};
    tch::manual_seed(4);
    let (cfg, vs, model) = build(&unet_toml(true));
    let diffusion = NestedDiffusion::for_model(&model, &cfg.diffusion(), Device::Cpu).expect("diffusion");
    let frames = 3;
    let clip = Tensor::full([frames, 3, 16, 16], -0.8, (Kind::Float, Device::Cpu));
    for f in 0..frames {
        let _ = clip.get(f).narrow(1, 5, 6).narrow(2, 2 + 2 * f, 6).fill_(0.9);
    }
    let groups = vec![clip];
    let cond = text(1);
    // Mean loss at four fixed (t, noise) pairs.
    let eval = |model: &MdmUNet| -> f64 {
        let _g = tch::no_grad_guard();
        let mut total = 0.0;
        for (k, t) in [100i64, 300, 600, 900].into_iter().enumerate() {
            tch::manual_seed(1000 + k as i64);
            let clip_t = Tensor::from_slice(&[t]);
            let inputs = diffusion.inputs_grouped(&groups, &clip_t.repeat_interleave_self_int(frames, Some(0), None)).expect("inputs");
            let preds = model.forward(&ModelInput::new(&inputs.x_t, &clip_t, &cond).with_frames(frames), false, &mut Trace::off()).expect("forward");
            total += diffusion.loss(&inputs, &preds).expect("loss").total.mean(Kind::Float).double_value(&[]);
        }
        total / 4.0
    };
    let before = eval(&model);
    let t_attn = "down_blocks.1.t_attn.0.attn.qkv.weight";
    let w0 = vs.variables()[t_attn].copy();
    let oc = OptimConfig { lr: 5e-4, warmup_steps: 0, ema_decay: 0.0, ..OptimConfig::default() };
    let mut opt = FlatOptimizer::new(&vs, &oc, None).expect("optimizer");
    for step in 0..400 {
        tch::manual_seed(step);
        opt.zero_grad();
        let b = TrainBatch::new(groups.iter().map(|g| g.shallow_clone()).collect(), cond.shallow_clone(), frames).expect("batch");
        let d = Denoiser::new(&model, &diffusion);
        train::forward_backward(&d, &b, &d.draw(&b).expect("draws"), &LossOptions::default()).expect("step");
        opt.step(1.0).expect("finite");
    }
    let after = eval(&model);
    eprintln!("fixed-noise loss on the clip: {before:.4} -> {after:.4}");
    assert!(after < 0.4 * before, "{before} -> {after}");
    assert!(common::max_abs(&vs.variables()[t_attn], &w0) > 1e-4, "temporal attention was not trained");
}

/// Autograd through the temporal block against central finite differences (f64).
#[test]
fn temporal_block_gradients_match_finite_differences() {
    let _rng = common::torch_rng();
    tch::manual_seed(8);
    let mut vs = VarStore::new(Device::Cpu);
    let block = TemporalAttention::new(&(vs.root() / "t"), 64, true, Init::Random);
    vs.set_kind(Kind::Double);
    randomize(&vs, 0.3);
    let x = Tensor::randn([2 * 3, 64, 4, 4], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let probe = Tensor::randn([2 * 3, 64, 4, 4], (Kind::Double, Device::Cpu));
    let f = |x: &Tensor| (block.forward(x, 3) * &probe).sum(Kind::Double);
    let y = f(&x);
    let vars = vs.variables();
    let names = ["t.attn.qkv.weight", "t.down_conv.weight", "t.mlp.main.1.weight", "t.attn.norm.weight"];
    let grads = Tensor::run_backward(&[y], &[&x, &vars[names[0]], &vars[names[1]], &vars[names[2]], &vars[names[3]]], false, false);
    let _g = tch::no_grad_guard();
    // Central differences in f64: truncation ~h², roundoff ~1e-16·|f|/h (|f| ~ 1e4 here).
    let h = 1e-5;
    let mut worst: f64 = 0.0;
    for (gi, t) in [&x, &vars[names[0]], &vars[names[1]], &vars[names[2]], &vars[names[3]]].into_iter().enumerate() {
        let flat = t.view([-1]);
        let n = flat.size()[0];
        for k in [0i64, 7, n / 2 + 1, n - 1] {
            let v = flat.double_value(&[k]);
            let _ = flat.get(k).fill_(v + h);
            let up = f(&x).double_value(&[]);
            let _ = flat.get(k).fill_(v - h);
            let down = f(&x).double_value(&[]);
            let _ = flat.get(k).fill_(v);
            let fd = (up - down) / (2.0 * h);
            let ad = grads[gi].view([-1]).double_value(&[k]);
            worst = worst.max((fd - ad).abs() / (1.0 + fd.abs()));
        }
    }
    eprintln!("temporal block: worst relative gradient error {worst:e}");
    assert!(worst < 1e-5, "{worst}");
}

/// `pictures::clip_frames`: frame f is the grid of every level's frame f, clip c in column c.
#[test]
fn clip_frames_are_grids_of_each_frame() {
    let _rng = common::torch_rng();
    use mdm_trainer::pictures::{clip_frames, gif_bytes};
    let (clips, frames) = (2i64, 3i64);
    // Rows are clip-major (clip c, frame f at row c·F + f); each row is one grey level.
    let value = |c: i64, f: i64| -1.0 + 0.25 * (c * frames + f) as f64;
    let level = |side: i64| {
        let rows: Vec<Tensor> = (0..clips * frames).map(|r| Tensor::full([1, 3, side, side], value(r / frames, r % frames), (Kind::Float, Device::Cpu))).collect();
        Tensor::cat(&rows, 0)
    };
    let levels = [level(16), level(8)];
    let pictures = clip_frames(&levels, frames).expect("frames");
    assert_eq!(pictures.len(), 3);
    for (f, p) in pictures.iter().enumerate() {
        // two 16² columns, two rows (levels), 2 px gaps
        assert_eq!(p.dimensions(), (2 * 16 + 3 * 2, 2 * 16 + 3 * 2));
        for c in 0..clips {
            let want = ((value(c, f as i64) + 1.0) * 127.5).round() as u8;
            for row in 0..2 {
                let (x, y) = (2 + c as u32 * 18 + 7, 2 + row * 18 + 7);
                assert_eq!(p.get_pixel(x, y).0, [want; 3], "frame {f} clip {c} level {row}");
            }
        }
        assert_eq!(p.get_pixel(0, 0).0, [255; 3]);
    }
    assert!(clip_frames(&levels, 4).is_err(), "6 rows are not clips of 4 frames");
    assert!(clip_frames(&levels, 0).is_err());
    assert!(gif_bytes(&pictures, 8.0).expect("gif").starts_with(b"GIF89a"));
}
