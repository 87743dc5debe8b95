//! Training runs end to end on CPU with tiny models and generated shards: exact resume,
//! checkpoints, growth with mixed-resolution batches, the NaN guard, CFG dropout, configs.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{codecs::jpeg::JpegEncoder, ExtendedColorType, Rgb, RgbImage};
use mdm_shards::{Body, ImageBody, Layout, Manifest, Record, RecordKind, ShardWriter, WriterOptions};
use mdm_trainer::model::{cfg_dropout, Conditioning, ModelInput, Trace};
use mdm_trainer::tch::{Device, Kind, Tensor};
use mdm_trainer::train::{self, batch, Outcome, RunOptions, Trainer};
use mdm_trainer::{checkpoint, run_config::TrainConfig};
use mdm_trainer::Error;

const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/models");

/// A labelled image shard set (4 classes: coloured squares and discs) at 64 and 32.
fn write_shards(dir: &Path, n: u32) {
    let layout = Layout::new(RecordKind::Image, vec![64, 32]).unwrap();
    let opts = WriterOptions { max_shard_rows: Some(24), row_group_rows: 8, ..WriterOptions::default() };
    let mut w = ShardWriter::try_new(dir, layout.clone(), opts).unwrap();
    for i in 0..n {
        let class = (i % 4) as usize;
        let jpegs = layout
            .resolutions
            .iter()
            .map(|&r| {
                let s = r as f32;
                let c = [[200u8, 40, 40], [40, 180, 60], [40, 70, 220], [230, 210, 40]][class];
                let off = (i % 5) as f32 / 10.0;
                let img = RgbImage::from_fn(r, r, |x, y| {
                    let (dx, dy) = (x as f32 / s - 0.3 - off, y as f32 / s - 0.5);
                    let inside = if class.is_multiple_of(2) { dx * dx + dy * dy < 0.04 } else { dx.abs() < 0.2 && dy.abs() < 0.2 };
                    Rgb(if inside { c } else { [20, 20, 20] })
                });
                let mut out = vec![];
                JpegEncoder::new_with_quality(&mut out, 90)
                    .encode(img.as_raw(), r, r, ExtendedColorType::Rgb8)
                    .unwrap();
                out
            })
            .collect();
        let id = format!("t/{i:04}");
        w.write(Record {
            source_sha256: mdm_shards::sha256(id.as_bytes()),
            source: id.clone(),
            id,
            width: 64,
            height: 64,
            caption: None,
            text: None,
            body: Body::Image(ImageBody { label: Some(class as i32), crop_box: None, jpegs }),
        })
        .unwrap();
    }
    let mut m = Manifest::new(&layout, None);
    m.shards = w.close().unwrap();
    m.stats.inputs = n as u64;
    m.stats.written = n as u64;
    m.write(dir).unwrap();
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    write_shards(&root.join("shards"), 48);
    Fixture { _tmp: tmp, root }
}

/// A config file in `root` for the tiny 32² model; `extra` is appended TOML.
fn config(root: &Path, name: &str, model: &str, run: &str, data: &str, extra: &str) -> PathBuf {
    let text = format!(
        "model_file = \"{MODELS}/{model}\"\n\n[run]\nout = \"runs/{name}\"\ndevice = \"cpu\"\nthreads = 1\nseed = 7\nlog_every = 1\n{run}\n\n[data]\nshards = [\"shards\"]\nworkers = 1\n{data}\n\n{extra}\n"
    );
    let p = root.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn quiet() -> RunOptions {
    RunOptions { quiet: true, ..Default::default() }
}

fn losses(run: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(run.join("losses.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), format!("{} {} {}", v["loss"], v["levels"], v["grad_norm"]))
        })
        .collect()
}

fn tensors(p: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(p).unwrap().into_iter().collect()
}

fn assert_same_tensors(a: &Path, b: &Path) {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, x) in &a {
        assert!(x.equal(&b[k]), "{k} differs");
    }
}

#[test]
fn resume_repeats_the_uninterrupted_run_exactly() {
    let _rng = common::torch_rng();
    let f = fixture();
    let run = "steps = 6\ncheckpoint_every = 4\nkeep_checkpoints = 2";
    let data = "batch_size = 4\ngrad_accum = 2\nresolution = 32\nrandom_flip = true";
    let optim = "[optim]\nlr = 1e-3\nwarmup_steps = 3\nema_decay = 0.9\nweight_decay = 0.01";
    let a = config(&f.root, "a", "tiny_32x32.toml", run, data, optim);
    let b = config(&f.root, "b", "tiny_32x32.toml", run, data, optim);

    let out = train::train_from_file(&a, &quiet()).unwrap();
    let ra = f.root.join("runs/a");
    assert!(matches!(out, Outcome::Finished { step: 6, .. }), "{out:?}");

    // Interrupted after 3 steps (a checkpoint is written), then resumed to the end.
    let stop = RunOptions { stop_after: Some(3), ..quiet() };
    let out = train::train_from_file(&b, &stop).unwrap();
    assert!(matches!(out, Outcome::Interrupted { step: 3, .. }), "{out:?}");
    let rb = f.root.join("runs/b");
    let err = train::train_from_file(&b, &quiet()).expect_err("a second fresh start must be refused");
    assert!(err.to_string().contains("--resume"), "{err}");
    let out = train::train_from_file(&b, &RunOptions { resume: true, ..quiet() }).unwrap();
    assert!(matches!(out, Outcome::Finished { step: 6, .. }), "{out:?}");

    let (la, lb) = (losses(&ra), losses(&rb));
    assert_eq!(la.len(), 6);
    assert_eq!(la, lb, "losses after the resume differ from the uninterrupted run");
    // The loss is not constant (the run trains), and every step has one value per level.
    assert_ne!(la[0].1, la[5].1);

    // Same final weights, EMA and moments; checkpoints kept: the newest 2 (4 and 6; b also 3).
    let ca = checkpoint::list(&ra).unwrap();
    let cb = checkpoint::list(&rb).unwrap();
    assert_eq!(ca.iter().map(|c| c.0).collect::<Vec<_>>(), vec![4, 6]);
    assert_eq!(cb.iter().map(|c| c.0).collect::<Vec<_>>(), vec![4, 6]);
    for file in ["model.safetensors", "ema.safetensors", "optimizer.safetensors"] {
        assert_same_tensors(&ca[1].1.join(file), &cb[1].1.join(file));
    }
    // The EMA lags the weights; the checkpoint holds the resolved config and loader cursor.
    let (m, e) = (tensors(&ca[1].1.join("model.safetensors")), tensors(&ca[1].1.join("ema.safetensors")));
    assert!(m.iter().any(|(k, t)| !t.equal(&e[k])));
    let st = checkpoint::read_state(&ca[1].1).unwrap();
    assert_eq!((st.step, st.samples), (6, 6 * 2 * 4));
    assert_eq!(st.loader.steps, 12);
    let saved = std::fs::read_to_string(ca[1].1.join("config.toml")).unwrap();
    assert!(saved.contains("[model.unet_config]") && !saved.contains("model_file"), "{saved}");
    assert_eq!(saved, std::fs::read_to_string(ra.join("config.toml")).unwrap());
    // TensorBoard event files were written.
    assert!(std::fs::read_dir(ra.join("tb")).unwrap().count() >= 1);
}

#[test]
fn grown_stage_trains_mixed_resolution_batches() {
    let _rng = common::torch_rng();
    let f = fixture();
    let s1 = config(&f.root, "s1", "tiny_32x32.toml", "steps = 2", "batch_size = 4\nresolution = 32", "");
    train::train_from_file(&s1, &quiet()).unwrap();
    let s2 = config(
        &f.root,
        "s2",
        "tiny_64x64.toml",
        "steps = 3",
        "batch_size = 6\nmixed_ratio = \"64:1,32:1\"",
        "[progressive]\ngrow_from = \"runs/s1\"\n\n[sample]\nevery = 3\ncount = 2\nsteps = 2\nguidance = 2.0",
    );
    let run = TrainConfig::load(&s2).unwrap();
    assert_eq!(run.sides, vec![64, 32]);
    assert_eq!(run.ratio, vec![(64, 1.0), (32, 1.0)]);
    let mut t = Trainer::new(run, &quiet()).unwrap();
    // Right after growth the inner level holds stage 1's EMA weights.
    let s1_ema = tensors(&checkpoint::resolve(&f.root.join("runs/s1")).unwrap().join("ema.safetensors"));
    let vars = t.vs.variables();
    for (k, v) in &s1_ema {
        assert!(vars[&format!("inner_unet.{k}")].equal(v), "{k} not grown");
    }
    let out = t.train(&quiet()).unwrap();
    assert!(matches!(out, Outcome::Finished { step: 3, .. }));
    let l = losses(&f.root.join("runs/s2"));
    assert_eq!(l.len(), 3);
    for (_, line) in &l {
        let levels: Vec<f64> = serde_json::from_str(line.split(' ').nth(1).unwrap()).unwrap();
        assert_eq!(levels.len(), 2);
        assert!(levels.iter().all(|x| x.is_finite() && *x > 0.0), "{line}");
    }
    // The loader drew both resolutions: 64² samples train both levels, 32² only the inner.
    let mut loader = train::build_loader(&t.run, None).unwrap();
    let b = loader.next().unwrap().unwrap();
    let tb = batch::to_tensors(&b, &t.run.sides, t.run.cond, t.run.frames, Device::Cpu).unwrap();
    assert_eq!(tb.groups.len(), 2);
    assert_eq!(tb.groups[0].size()[0] + tb.groups[1].size()[0], 6);
    assert_eq!(tb.groups[0].size()[1..], [3, 64, 64]);
    assert_eq!(tb.groups[1].size()[1..], [3, 32, 32]);
    let inputs = t.diffusion.inputs_grouped(&tb.groups, &Tensor::zeros([6], (Kind::Int64, Device::Cpu))).unwrap();
    assert_eq!(inputs.x_t[0].size()[0], tb.groups[0].size()[0]);
    assert_eq!(inputs.x_t[1].size()[0], 6);
    // A sample grid went to TensorBoard at step 3 (2 levels × 2 samples).
    let tb_dir = f.root.join("runs/s2/tb");
    let file = std::fs::read_dir(&tb_dir).unwrap().next().unwrap().unwrap().path();
    let mut tags = vec![];
    for ev in tboard::SummaryReader::new(std::fs::File::open(file).unwrap()) {
        if let Some(tboard::tensorboard::event::What::Summary(s)) = ev.unwrap().what {
            tags.extend(s.value.into_iter().map(|v| v.tag));
        }
    }
    for tag in ["loss/total", "loss/level0", "loss/level1", "optim/lr", "samples"] {
        assert!(tags.iter().any(|t| t == tag), "no {tag} in {tags:?}");
    }
}

/// The model's own `diffusion_config.mixed_ratio` (ml-mdm's) is resolved at config time into
/// a fixed split of each micro-batch (the loader draws every sample at 64²): it changes the
/// outer level's loss against the same run without it, the inner level trains every sample in
/// both, and naming a loader ratio beside it is refused.
#[test]
fn the_models_mixed_ratio_splits_every_micro_batch() {
    let _rng = common::torch_rng();
    let f = fixture();
    let base = std::fs::read_to_string(format!("{MODELS}/tiny_64x64.toml")).unwrap();
    let mixed = base.replace("no_use_residual = true", "no_use_residual = true\nmixed_ratio = \"1:2\"");
    assert_ne!(mixed, base);
    std::fs::write(f.root.join("mixed_model.toml"), mixed).unwrap();
    let write = |name: &str, model: &str, data: &str| {
        let p = f.root.join(format!("{name}.toml"));
        std::fs::write(&p, format!("model_file = \"{model}\"\n[run]\nout = \"runs/{name}\"\ndevice = \"cpu\"\nthreads = 1\nseed = 5\nlog_every = 1\nsteps = 2\n[data]\nshards = [\"shards\"]\nworkers = 1\nbatch_size = 7\ncfg_dropout = 0.0\n{data}\n")).unwrap();
        p
    };
    let plain_model = format!("{MODELS}/tiny_64x64.toml");
    let mixed_model = f.root.join("mixed_model.toml").display().to_string();
    let run = TrainConfig::load(&write("mix", &mixed_model, "")).unwrap();
    let split = run.split.clone().expect("the model's mixed_ratio resolves to a split");
    assert!((split[0] - 1.0 / 3.0).abs() < 1e-12 && split[1] == 1.0, "{split:?}");
    assert_eq!(run.ratio, vec![(64, 1.0)]);
    assert!(TrainConfig::load(&write("plain", &plain_model, "")).unwrap().split.is_none());
    train::train_from_file(&f.root.join("mix.toml"), &quiet()).unwrap();
    train::train_from_file(&f.root.join("plain.toml"), &quiet()).unwrap();
    let levels = |name: &str| -> Vec<Vec<f64>> {
        losses(&f.root.join("runs").join(name))
            .iter()
            .map(|(_, line)| serde_json::from_str(line.split(' ').nth(1).unwrap()).unwrap())
            .collect()
    };
    let (mix, plain) = (levels("mix"), levels("plain"));
    assert_eq!(mix.len(), 2);
    assert!(mix.iter().flatten().all(|x| x.is_finite() && *x > 0.0), "{mix:?}");
    // Step 1, same weights and draws: the outer level saw 2 of 7 samples, renormalised by 1/3.
    assert!((mix[0][0] - plain[0][0]).abs() > 1e-6, "the split was not applied: {mix:?} {plain:?}");
    assert!((mix[0][1] - plain[0][1]).abs() < 1e-6, "the inner level trains every sample: {mix:?} {plain:?}");
    let err = TrainConfig::load(&write("both", &mixed_model, "mixed_ratio = \"64:1,32:1\"")).err().expect("both ratios accepted").to_string();
    assert!(err.contains("use one of them"), "{err}");
}

#[test]
fn non_finite_loss_stops_before_touching_the_last_checkpoint() {
    let _rng = common::torch_rng();
    let f = fixture();
    let c = config(
        &f.root,
        "nan",
        "tiny_32x32.toml",
        "steps = 20\ncheckpoint_every = 1",
        "batch_size = 4\nresolution = 32",
        "[optim]\nlr = 1e30\nclip_grad_norm = 0.0",
    );
    let err = train::train_from_file(&c, &quiet()).expect_err("a 1e30 learning rate must blow up");
    let Error::NonFinite { step, checkpoint: Some(last), .. } = &err else { panic!("{err}") };
    let run = f.root.join("runs/nan");
    let kept: Vec<u64> = checkpoint::list(&run).unwrap().iter().map(|c| c.0).collect();
    assert_eq!(kept, vec![step - 1], "{err}");
    assert_eq!(last, &checkpoint::dir_for(&run, step - 1));
    assert!(checkpoint::read_state(last).is_ok());
}

#[test]
fn cfg_dropout_nulls_the_condition_at_the_set_rate() {
    let _rng = common::torch_rng();
    mdm_trainer::tch::manual_seed(3);
    let n = 4000;
    let tokens = Tensor::ones([n, 5, 8], (Kind::Float, Device::Cpu));
    let mask = Tensor::ones([n, 5], (Kind::Float, Device::Cpu));
    let Conditioning::Text { tokens, mask } =
        cfg_dropout(Conditioning::Text { tokens, mask }, 0.25, None).unwrap()
    else {
        panic!()
    };
    let dropped = tokens.sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float).eq(0.0);
    let rate = dropped.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!((rate - 0.25).abs() < 0.03, "rate {rate}");
    // Dropped rows carry exactly the null condition's mask: the first position only.
    let m = mask.index_select(0, &dropped.nonzero().squeeze_dim(1));
    assert!(m.narrow(1, 0, 1).eq(1.0).all().int64_value(&[]) == 1);
    assert_eq!(m.narrow(1, 1, 4).sum(Kind::Float).double_value(&[]), 0.0);
    // Class labels become the null class at the same rate.
    let labels = Tensor::zeros([n], (Kind::Int64, Device::Cpu));
    let Conditioning::Class(l) = cfg_dropout(Conditioning::Class(labels), 0.25, Some(9)).unwrap() else {
        panic!()
    };
    let rate = l.eq(9).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!((rate - 0.25).abs() < 0.03, "rate {rate}");
}

#[test]
fn configs_are_validated_once_with_clear_errors() {
    let _rng = common::torch_rng();
    let f = fixture();
    let cases = [
        ("[data]\nshards = [\"s\"]\nbatch_size = 2\nbogus = 1", "bogus"),
        ("[data]\nshards = [\"s\"]\nbatch_size = 0\nresolution = 32", "batch_size"),
        ("[data]\nshards = [\"s\"]\nbatch_size = 2\nresolution = 32\ncfg_dropout = 1.5", "cfg_dropout"),
        ("[data]\nshards = [\"s\"]\nbatch_size = 2\nmixed_ratio = \"48:1\"", "mixed_ratio"),
        ("[data]\nshards = [\"s\"]\nbatch_size = 2\nconditioning = \"text\"", "conditioning"),
        ("[data]\nshards = [\"s\"]\nbatch_size = 2\nframes = 4", "only video models"),
        ("[data]\nshards = [\"s\"]\nbatch_size = 2\nframes = 1\n#video", "2..=1024"),
    ];
    for (i, (data, needle)) in cases.iter().enumerate() {
        let p = f.root.join(format!("bad{i}.toml"));
        let model = if data.ends_with("#video") { "tiny_video_32x32" } else { "tiny_32x32" };
        std::fs::write(&p, format!("model_file = \"{MODELS}/{model}.toml\"\n[run]\nout = \"r\"\nsteps = 1\n{data}\n")).unwrap();
        let err = TrainConfig::load(&p).err().unwrap_or_else(|| panic!("case {i} accepted")).to_string();
        assert!(err.contains(needle) && err.contains(&format!("bad{i}.toml")), "case {i}: {err}");
    }
    // Resuming with a changed optimizer is refused; a longer run is allowed.
    let c = config(&f.root, "r", "tiny_32x32.toml", "steps = 1", "batch_size = 2\nresolution = 32", "");
    train::train_from_file(&c, &quiet()).unwrap();
    let c = config(&f.root, "r", "tiny_32x32.toml", "steps = 1", "batch_size = 2\nresolution = 32", "[optim]\nlr = 0.1");
    let err = train::train_from_file(&c, &RunOptions { resume: true, ..quiet() }).err().unwrap();
    assert!(err.to_string().contains("differs"), "{err}");
    let c = config(&f.root, "r", "tiny_32x32.toml", "steps = 2", "batch_size = 2\nresolution = 32", "");
    let out = train::train_from_file(&c, &RunOptions { resume: true, ..quiet() }).unwrap();
    assert!(matches!(out, Outcome::Finished { step: 2, .. }));
}

#[test]
fn bf16_runs_train_from_fp32_master_weights() {
    let _rng = common::torch_rng();
    let f = fixture();
    let run = "steps = 2\ncheckpoint_every = 2";
    let data = "batch_size = 2\nresolution = 32";
    let a = config(&f.root, "f32", "tiny_32x32.toml", run, data, "");
    let b = config(&f.root, "bf16", "tiny_32x32.toml", &format!("{run}\nprecision = \"bf16\""), data, "");
    train::train_from_file(&a, &quiet()).unwrap();
    train::train_from_file(&b, &quiet()).unwrap();
    let (la, lb) = (losses(&f.root.join("runs/f32")), losses(&f.root.join("runs/bf16")));
    let first = |l: &[(u64, String)]| -> f64 { l[0].1.split(' ').next().unwrap().parse().unwrap() };
    let (x, y) = (first(&la), first(&lb));
    // Same weights, batch and noise: only bf16 rounding differs.
    assert!(x.is_finite() && y.is_finite() && (x - y).abs() / x < 0.05, "f32 {x} vs bf16 {y}");
    assert_ne!(la, lb, "bf16 did not change the arithmetic");
    let ckpt = checkpoint::resolve(&f.root.join("runs/bf16")).unwrap();
    for file in ["model.safetensors", "ema.safetensors", "optimizer.safetensors"] {
        assert!(tensors(&ckpt.join(file)).values().all(|t| t.kind() == Kind::Float), "{file} is not fp32");
    }
}

#[test]
fn bf16_forward_agrees_with_f32() {
    let _rng = common::torch_rng();
    use mdm_trainer::config::ModelConfig;
    use mdm_trainer::model::MdmUNet;
    mdm_trainer::tch::manual_seed(0);
    let cfg = ModelConfig::from_file(format!("{MODELS}/tiny_32x32.toml")).unwrap();
    let vs = mdm_trainer::tch::nn::VarStore::new(Device::Cpu);
    let model = MdmUNet::new(&vs.root(), &cfg).unwrap();
    let x = vec![Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu))];
    let t = Tensor::from_slice(&[10i64, 300, 600, 990]);
    let c = Conditioning::Class(Tensor::from_slice(&[0i64, 1, 2, 4]));
    let _g = mdm_trainer::tch::no_grad_guard();
    // Fresh models output zero (zero-initialised conv_out): give every tensor random values.
    for (_, mut v) in vs.variables() {
        let r = v.randn_like() * 0.2;
        v.copy_(&r);
    }
    let a = model.forward(&ModelInput::new(&x, &t, &c), false, &mut Trace::off()).unwrap().remove(0);
    let mut vs = vs;
    vs.bfloat16();
    let b = model.forward(&ModelInput::new(&x, &t, &c), false, &mut Trace::off()).unwrap().remove(0);
    assert_eq!(b.kind(), Kind::Float);
    let rel = ((&a - &b).square().mean(Kind::Float) / a.square().mean(Kind::Float)).sqrt().double_value(&[]);
    assert!(a.abs().mean(Kind::Float).double_value(&[]) > 1e-3);
    assert!(rel < 0.03, "bf16 forward differs from f32 by {rel} (relative RMS)");
}

#[test]
fn every_preset_validates() {
    let _rng = common::torch_rng();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/train");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let run = TrainConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(run.ratio[0].0, run.sides[0], "{}", p.display());
        // A grown stage names a run whose model is one level smaller: its stored side list
        // is the inner part of this one.
        if let Some(g) = &run.config.progressive {
            let lower = run.config.run.out.parent().unwrap().join(g.grow_from.file_name().unwrap());
            assert_eq!(lower, g.grow_from, "{}", p.display());
        }
        n += 1;
    }
    assert!(n >= 10, "only {n} presets");
    // The published stages chain: 64 → 256 → 1024 sides.
    let side = |name: &str| TrainConfig::load(&dir.join(name)).unwrap().sides;
    assert_eq!(side("cc12m_64.toml"), vec![64]);
    assert_eq!(side("cc12m_256.toml"), vec![256, 64]);
    assert_eq!(side("cc12m_1024.toml"), vec![1024, 256, 64]);
    assert_eq!(side("imagenet_256.toml"), vec![256, 64]);
    let video = TrainConfig::load(&dir.join("webvid_64.toml")).unwrap();
    assert!(video.model.is_video() && video.frames == 16 && video.sides == vec![64]);
    let video = TrainConfig::load(&dir.join("webvid_256.toml")).unwrap();
    assert!(video.model.is_video() && video.frames == 16 && video.sides == vec![256, 64]);
    assert_eq!(TrainConfig::load(&dir.join("cc12m_64.toml")).unwrap().frames, 1);
}

/// The WebVid model is the cc12m 64² model plus temporal attention: the image stage's every
/// tensor fits it, and the only new ones are the temporal blocks (what inflation needs); it in
/// turn is the inner level of the 256² video model.
#[test]
fn cc12m_64_inflates_into_webvid_64() {
    let _rng = common::torch_rng();
    use mdm_trainer::config::ModelConfig;
    use mdm_trainer::model::parameter_shapes;
    let image = parameter_shapes(&ModelConfig::from_file(format!("{MODELS}/cc12m_64x64.toml")).unwrap()).unwrap();
    let video = parameter_shapes(&ModelConfig::from_file(format!("{MODELS}/webvid_64x64.toml")).unwrap()).unwrap();
    let video: BTreeMap<String, Vec<i64>> = video.into_iter().map(|(k, s, _)| (k, s)).collect();
    for (k, shape, _) in &image {
        assert_eq!(video.get(k), Some(shape), "{k}");
    }
    let new: Vec<&String> = video.keys().filter(|k| !image.iter().any(|(i, _, _)| i == *k)).collect();
    assert!(!new.is_empty() && new.iter().all(|k| k.contains(".t_attn.")), "{new:?}");
    // Temporal blocks after every ResNet at 32² and 16², down and up: 2 + 2 + 3 + 3 blocks.
    let blocks: std::collections::BTreeSet<String> = new.iter().map(|k| k.split(".t_attn.").next().unwrap().to_string() + &k.split(".t_attn.").nth(1).unwrap()[..1]).collect();
    assert_eq!(blocks.len(), 10, "{blocks:?}");
    // The next stage: webvid_64 grows into webvid_256's inner level.
    let upper = parameter_shapes(&ModelConfig::from_file(format!("{MODELS}/webvid_256x256.toml")).unwrap()).unwrap();
    let upper: BTreeMap<String, Vec<i64>> = upper.into_iter().map(|(k, s, _)| (k, s)).collect();
    for (k, shape) in &video {
        assert_eq!(upper.get(&format!("inner_unet.{k}")), Some(shape), "{k}");
    }
}

#[test]
fn imagenet_64_grows_into_imagenet_256() {
    let _rng = common::torch_rng();
    use mdm_trainer::config::ModelConfig;
    use mdm_trainer::model::parameter_shapes;
    let lower = parameter_shapes(&ModelConfig::from_file(format!("{MODELS}/imagenet_64x64.toml")).unwrap()).unwrap();
    let upper = parameter_shapes(&ModelConfig::from_file(format!("{MODELS}/imagenet_256x256.toml")).unwrap()).unwrap();
    let upper: BTreeMap<String, Vec<i64>> = upper.into_iter().map(|(k, s, _)| (k, s)).collect();
    for (k, shape, _) in &lower {
        assert_eq!(upper.get(&format!("inner_unet.{k}")), Some(shape), "{k}");
    }
    assert!(lower.iter().any(|(k, _, _)| k == "class_emb.weight"));
    assert!(upper.keys().any(|k| !k.starts_with("inner_unet.")));
}

#[test]
fn a_batch_without_outer_samples_trains_the_inner_level_only() {
    let _rng = common::torch_rng();
    use mdm_trainer::config::ModelConfig;
    use mdm_trainer::denoiser::{Denoiser, LossOptions, TrainBatch};
    use mdm_trainer::diffusion::NestedDiffusion;
    use mdm_trainer::model::MdmUNet;
    mdm_trainer::tch::manual_seed(1);
    let cfg = ModelConfig::from_file(format!("{MODELS}/tiny_64x64.toml")).unwrap();
    let vs = mdm_trainer::tch::nn::VarStore::new(Device::Cpu);
    let model = MdmUNet::new(&vs.root(), &cfg).unwrap();
    let diffusion = NestedDiffusion::for_model(&model, &cfg.diffusion(), Device::Cpu).unwrap();
    // A mixed-ratio draw can give no 64² sample at all in a small batch.
    let groups = vec![
        Tensor::zeros([0, 3, 64, 64], (Kind::Float, Device::Cpu)),
        Tensor::rand([3, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0,
    ];
    let cond = Conditioning::Class(Tensor::from_slice(&[0i64, 1, 2]));
    let d = Denoiser::new(&model, &diffusion);
    let tb = TrainBatch::new(groups, cond, 1).unwrap();
    let (loss, levels) = train::forward_backward(&d, &tb, &d.draw(&tb).unwrap(), &LossOptions::default()).unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
    assert_eq!(levels[0], 0.0);
    assert!(levels[1] > 0.0);
    // The outer level gets no gradient, the inner one does (fresh models: at their zero-initialised
    // output convolutions).
    let vars = vs.variables();
    let g = |k: &str| vars[k].grad().abs().sum(Kind::Float).double_value(&[]);
    assert_eq!(g("conv_out.weight"), 0.0);
    assert!(g("inner_unet.conv_out.weight") > 0.0);
}
