//! Training-step throughput of a model config on synthetic batches (`bench/train/run.sh`).
//!
//! Times full optimizer steps (forward, backward, clip 2.0, AdamW, EMA) of `mdm train`'s step
//! (`Denoiser::loss` through `forward_backward`, + `FlatOptimizer`) and, as the same-process baseline, the same
//! forward/backward with libtorch's per-tensor AdamW (`tch::nn::AdamW`, what a plain tch
//! trainer uses). Prints one JSON line per variant: median step time, img/s, peak memory, and
//! the model FLOPs of a step ([`mdm_trainer::flops`]: 3 × the forward's conv, linear and
//! attention-matmul FLOPs), the achieved TFLOP/s and the MFU against `--peak-tflops`.
//!
//! cargo run --release -p mdm-trainer --example train_bench -- \
//!     --model configs/models/cc12m_64x64.toml --batch 32 --steps 20 --precision bf16
//!
//! Video models (`temporal_mode`): `--frames N` times clips of N frames, `--batch` clips.
//!
//! `--peak-tflops X`: the accelerator's peak for the MFU. Default on CUDA: 989 (H100 SXM dense
//! bf16; the H200 has the same 989); pass 312 for an A100 (bf16 dense), or the figure of
//! your GPU. On CPU the MFU is printed only when `--peak-tflops` is given.

use std::time::Instant;

use mdm_trainer::config::ModelConfig;
use mdm_trainer::diffusion::NestedDiffusion;
use mdm_trainer::model::{Conditioning, MdmUNet};
use mdm_trainer::tch::{self, nn, nn::OptimizerConfig, Device, Kind, Tensor};
use mdm_trainer::run_config::{OptimConfig, Precision};
use mdm_trainer::denoiser::{Denoiser, LossOptions, TrainBatch};
use mdm_trainer::train::forward_backward;
use mdm_trainer::optim::FlatOptimizer;

struct Args {
    model: String,
    batch: i64,
    steps: usize,
    warmup: usize,
    side: i64,
    tokens: i64,
    precision: Precision,
    device: Device,
    baseline: bool,
    frames: i64,
    peak_tflops: Option<f64>,
}

fn parse() -> Args {
    let mut a = Args {
        model: "configs/models/tiny_32x32.toml".into(),
        batch: 8,
        steps: 10,
        warmup: 3,
        side: 0,
        tokens: 128,
        precision: Precision::F32,
        device: Device::cuda_if_available(),
        baseline: true,
        frames: 1,
        peak_tflops: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--model" => a.model = v(),
            "--batch" => a.batch = v().parse().expect("--batch N"),
            "--steps" => a.steps = v().parse().expect("--steps N"),
            "--warmup" => a.warmup = v().parse().expect("--warmup N"),
            "--side" => a.side = v().parse().expect("--side N"),
            "--tokens" => a.tokens = v().parse().expect("--tokens N"),
            "--precision" => {
                a.precision = match v().as_str() {
                    "bf16" => Precision::Bf16,
                    _ => Precision::F32,
                }
            }
            "--device" => {
                a.device = match v().as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda(0),
                    _ => Device::cuda_if_available(),
                }
            }
            "--no-baseline" => a.baseline = false,
            "--frames" => a.frames = v().parse().expect("--frames N"),
            "--peak-tflops" => a.peak_tflops = Some(v().parse().expect("--peak-tflops X")),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn sync(d: Device) {
    if let Device::Cuda(i) = d {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() {
    // Before the first CUDA query (see `mdm_trainer::cuda`).
    let loaded = mdm_trainer::cuda::load_torch_cuda();
    let a = parse();
    if matches!(a.device, Device::Cuda(_)) && !tch::Cuda::is_available() {
        eprintln!("train_bench: --device cuda but libtorch sees no CUDA device ({loaded:?}); put the GPU torch's lib/ on LD_LIBRARY_PATH");
        std::process::exit(2);
    }
    let cfg = ModelConfig::from_file(&a.model).expect("model config");
    let inner = cfg.top.innermost();
    let scales = cfg.top.scales();
    let side = if a.side > 0 {
        a.side
    } else {
        let s = inner.micros.iter().find(|m| m.key == "scale").map_or(64.0, |m| m.default) as i64;
        s * scales[0]
    };
    if a.frames < 1 || (a.frames > 1 && !cfg.is_video()) {
        panic!("--frames {}: only a video model (temporal_mode) takes clips of more than one frame", a.frames);
    }
    // Clips ride in the batch as frames: (B·frames, 3, S, S), conditioning per clip (B).
    let rows = a.batch * a.frames;
    let sides = mdm_trainer::flops::level_sides(&cfg, side);
    let mut groups = vec![Tensor::rand([rows, 3, side, side], (Kind::Float, a.device)) * 2.0 - 1.0];
    for &s in &sides[1..] {
        groups.push(Tensor::zeros([0, 3, s, s], (Kind::Float, a.device)));
    }
    let cond = match cfg.num_classes {
        Some(n) => Conditioning::Class(Tensor::randint(n, [a.batch], (Kind::Int64, a.device))),
        None if inner.text.is_some() => Conditioning::Text {
            tokens: Tensor::randn([a.batch, a.tokens, inner.text.map_or(0, |t| t.input_dim)], (Kind::Float, a.device)),
            mask: Tensor::ones([a.batch, a.tokens], (Kind::Float, a.device)),
        },
        None => Conditioning::None,
    };
    // Model FLOPs of a step: every level sees every sample (all of them are in groups[0]).
    let tokens = match &cond {
        Conditioning::Text { .. } => a.tokens,
        Conditioning::Class(_) => 1,
        Conditioning::None => 0,
    };
    let flops = mdm_trainer::flops::forward_flops(&cfg, &sides, &vec![a.batch; sides.len()], tokens, a.frames)
        .expect("flop count");
    let tflop_per_step = flops.training_step() as f64 / 1e12;
    let peak = a.peak_tflops.or(match a.device {
        Device::Cuda(_) => Some(989.0),
        _ => None,
    });
    let variants: &[&str] = if a.baseline { &["mdm", "tch-adamw"] } else { &["mdm"] };
    for variant in variants {
        tch::manual_seed(0);
        let mut vs = nn::VarStore::new(a.device);
        let model = MdmUNet::new(&vs.root(), &cfg).expect("model");
        let diffusion = NestedDiffusion::for_model(&model, &cfg.diffusion(), a.device).expect("diffusion");
        let ocfg = OptimConfig::default();
        let mut times = vec![];
        let batch = TrainBatch::new(groups.iter().map(|g| g.shallow_clone()).collect(), cond.shallow_clone(), a.frames)
            .expect("batch");
        let batch = &batch;
        let mut step_fn: Box<dyn FnMut() + '_> = if *variant == "mdm" {
            let working = (a.precision == Precision::Bf16).then_some(Kind::BFloat16);
            let mut opt = FlatOptimizer::new(&vs, &ocfg, working).expect("optimizer");
            Box::new(move || {
                opt.zero_grad();
                let d = Denoiser::new(&model, &diffusion);
                forward_backward(&d, batch, &d.draw(batch).expect("draws"), &LossOptions::default()).expect("step");
                opt.step(1.0).expect("finite");
            })
        } else {
            if a.precision == Precision::Bf16 {
                vs.bfloat16();
            }
            let mut opt = nn::AdamW { beta1: 0.9, beta2: 0.999, wd: 0.0, eps: 1e-8, amsgrad: false }
                .build(&vs, ocfg.lr)
                .expect("adamw");
            Box::new(move || {
                opt.zero_grad();
                let d = Denoiser::new(&model, &diffusion);
                forward_backward(&d, batch, &d.draw(batch).expect("draws"), &LossOptions::default()).expect("step");
                opt.clip_grad_norm(ocfg.clip_grad_norm);
                opt.step();
            })
        };
        for i in 0..a.warmup + a.steps {
            sync(a.device);
            let t = Instant::now();
            step_fn();
            sync(a.device);
            if i >= a.warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
        let median = times[times.len() / 2];
        let achieved = tflop_per_step / median;
        let mut line = serde_json::json!({
            "variant": variant, "model": a.model, "batch": a.batch, "side": side,
            "precision": format!("{:?}", a.precision), "device": format!("{:?}", a.device),
            "threads": tch::get_num_threads(), "steps": a.steps, "median_step_s": median,
            "img_per_s": a.batch as f64 / median, "peak_rss_mb": peak_rss_mb(),
            "tflop_per_step": tflop_per_step, "achieved_tflops": achieved,
        });
        if a.frames > 1 {
            // `batch` and `img_per_s` count clips; these count frames.
            line["frames"] = a.frames.into();
            line["frames_per_s"] = (rows as f64 / median).into();
        }
        if let Some(p) = peak {
            line["peak_tflops"] = p.into();
            line["mfu"] = (achieved / p).into();
        }
        println!("{line}");
    }
}
