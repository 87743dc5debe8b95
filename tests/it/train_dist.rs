//! Data-parallel `mdm train` for real: ranks are processes of the binary, rendezvous and Gloo
//! collectives on 127.0.0.1. Two ranks of batch B train exactly as one rank of batch 2B
//! (plain, with gradient accumulation, with mixed-resolution batches); a SIGTERM to one rank
//! stops both at the same step with one checkpoint, resumable on 1 or 2 ranks; a rank killed
//! with SIGKILL makes the other fail, naming it, within the timeout. Both launch paths are
//! covered: torchrun's environment (the test starts each rank) and `--nproc`.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use common::ok;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

const MODELS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/models");

/// An ImageNet-shaped folder of 4 classes (coloured discs and bars on noise-free dark
/// backgrounds) → `mdm ingest imagenet` at 64² and 32².
fn shards(dir: &Path) -> PathBuf {
    for (c, wnid) in ["n01000001", "n01000002", "n01000003", "n01000004"].iter().enumerate() {
        let d = dir.join("src/train").join(wnid);
        std::fs::create_dir_all(&d).expect("mkdir");
        for i in 0..12u32 {
            let col = [[220u8, 40, 40], [40, 180, 60], [40, 70, 220], [230, 210, 40]][c];
            let img = image::RgbImage::from_fn(72, 64, |x, y| {
                let (dx, dy) = (x as i32 - 30 - i as i32, y as i32 - 32);
                let inside = if c % 2 == 0 { dx * dx + dy * dy < 300 } else { dx.abs() < 14 && dy.abs() < 8 };
                image::Rgb(if inside { col } else { [25, 25, 25] })
            });
            let mut buf = Cursor::new(Vec::new());
            image::DynamicImage::ImageRgb8(img).write_to(&mut buf, image::ImageFormat::Jpeg).expect("jpeg");
            std::fs::write(d.join(format!("{wnid}_{i}.JPEG")), buf.into_inner()).expect("write");
        }
    }
    let out = dir.join("shards");
    ok(&[
        "ingest", "imagenet", "--src", s(&dir.join("src")), "--split", "train", "--out", s(&out), "--resolution", "64",
        "--extra-resolution", "32", "--quiet",
    ]);
    out
}

/// A run config: `model` from configs/models, `data` lines added to `[data]`.
fn config(dir: &Path, name: &str, model: &str, batch: u64, steps: u64, data: &str) -> PathBuf {
    let text = format!(
        "model_file = {:?}\n\n[run]\nout = {:?}\nsteps = {steps}\nseed = 7\ndevice = \"cpu\"\nthreads = 1\nlog_every = 5\ncheckpoint_every = 1000\n\n[data]\nshards = [{:?}]\nbatch_size = {batch}\nworkers = 1\ncfg_dropout = 0.25\nrandom_flip = true\n{data}\n\n[optim]\nlr = 2e-3\nwarmup_steps = 3\nweight_decay = 0.01\nema_decay = 0.9\n",
        format!("{MODELS}/{model}"),
        s(&dir.join("runs").join(name)),
        s(&dir.join("shards")),
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).expect("config");
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts rank `rank` of `world` as torchrun would (its environment variables).
fn spawn_rank(cfg: &Path, rank: usize, world: usize, port: u16, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mdm"))
        .args(["train", "--config", s(cfg), "--dist-timeout", "20"])
        .args(extra)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rank")
}

/// Waits for a child at most `limit` (then kills it); returns (exit code, stdout + stderr).
fn finish(mut c: Child, limit: Duration) -> (Option<i32>, String) {
    let t0 = Instant::now();
    while c.try_wait().expect("wait").is_none() {
        if t0.elapsed() > limit {
            let _ = c.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = c.wait_with_output().expect("output");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Two ranks through torchrun's environment variables; both must succeed.
fn run_two_env(cfg: &Path, extra: &[&str]) -> String {
    let port = free_port();
    let kids: Vec<Child> = (0..2).map(|r| spawn_rank(cfg, r, 2, port, extra)).collect();
    let mut all = String::new();
    for (r, k) in kids.into_iter().enumerate() {
        let (code, text) = finish(k, Duration::from_secs(300));
        assert_eq!(code, Some(0), "rank {r} failed:\n{text}");
        all.push_str(&text);
    }
    all
}

/// `losses.jsonl`: (step, loss, per-level losses, gradient norm, samples).
fn losses(run: &Path) -> Vec<(u64, f64, Vec<f64>, f64, u64)> {
    std::fs::read_to_string(run.join("losses.jsonl"))
        .expect("losses.jsonl")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            let levels = v["levels"].as_array().expect("levels").iter().map(|x| x.as_f64().unwrap()).collect();
            (
                v["step"].as_u64().unwrap(),
                v["loss"].as_f64().unwrap(),
                levels,
                v["grad_norm"].as_f64().unwrap(),
                v["samples"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn newest_checkpoint(run: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .expect("checkpoints")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir() && !p.to_string_lossy().ends_with(".partial"))
        .collect();
    dirs.sort();
    dirs.pop().expect("a checkpoint")
}

fn weights(dir: &Path, file: &str) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(dir.join(file)).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let f: Vec<f32> = v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (k, f)
        })
        .collect()
}

/// Tolerances. Losses: per-sample draws are identical, but a batch of 2B and two of B sum
/// their gradients in a different order (and the all-reduce adds the halves), so each step's
/// weights differ by float rounding (~1e-7 relative), and 20 AdamW steps carry that into the
/// losses at ~1e-6; 1e-4 relative leaves a wide margin while any real difference (another
/// sample, another draw, a missing average) moves them by 1e-2 or more. Gradient norms: 1e-3
/// relative — the norm of a sum whose rank halves nearly cancel in some tensors (seen: 1.3e-4
/// at one step of the mixed-resolution run, whose losses agreed to 6e-7). Weights: 1e-5
/// absolute (measured 3.2e-6 plain, 2.4e-6 with accumulation); 5e-5 for mixed-resolution
/// batches (measured 1.7e-5: each level's loss is divided by its share of the batch, ⅓–½ here,
/// which scales the rounding of its gradients, and AdamW's per-parameter normalisation turns
/// that into weight steps of the same relative size).
const LOSS_REL: f64 = 1e-4;
const GRAD_NORM_REL: f64 = 1e-3;
const WEIGHT_ABS: f32 = 1e-5;
const WEIGHT_ABS_MIXED: f32 = 5e-5;

fn assert_same_training(one: &Path, two: &Path, steps: usize) {
    assert_same_training_within(one, two, steps, WEIGHT_ABS)
}

fn assert_same_training_within(one: &Path, two: &Path, steps: usize, weight_abs: f32) {
    let (a, b) = (losses(one), losses(two));
    assert_eq!(a.len(), steps, "{}", one.display());
    assert_eq!(b.len(), steps, "{}", two.display());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0);
        assert_eq!(x.4, y.4, "samples at step {}", x.0);
        let rel = |p: f64, q: f64| (p - q).abs() / p.abs().max(q.abs()).max(1e-12);
        assert!(rel(x.1, y.1) < LOSS_REL, "step {}: loss {} vs {}", x.0, x.1, y.1);
        for (p, q) in x.2.iter().zip(&y.2) {
            assert!(rel(*p, *q) < LOSS_REL, "step {}: level loss {p} vs {q}", x.0);
        }
        assert!(rel(x.3, y.3) < GRAD_NORM_REL, "step {}: grad norm {} vs {}", x.0, x.3, y.3);
    }
    assert!(a.iter().any(|x| (x.1 - a[0].1).abs() > 1e-3), "the run did not train: {a:?}");
    let (ca, cb) = (newest_checkpoint(one), newest_checkpoint(two));
    for file in ["model.safetensors", "ema.safetensors"] {
        let (wa, wb) = (weights(&ca, file), weights(&cb, file));
        assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
        let mut worst = 0f32;
        for (k, va) in &wa {
            for (p, q) in va.iter().zip(&wb[k]) {
                worst = worst.max((p - q).abs());
            }
        }
        assert!(worst <= weight_abs, "{file}: weights differ by {worst}");
    }
}

#[test]
fn two_ranks_train_as_one_rank_with_the_whole_batch() {
    let tmp = tempfile::tempdir().expect("tmp");
    let keep = std::env::var_os("MDM_KEEP_TEST_DIR").map(PathBuf::from);
    let dir = keep.as_deref().unwrap_or(tmp.path());
    shards(dir);
    // Plain: torchrun's environment path.
    let one = config(dir, "one", "tiny_32x32.toml", 4, 20, "resolution = 32");
    let two = config(dir, "two", "tiny_32x32.toml", 2, 20, "resolution = 32");
    ok(&["train", "--config", s(&one), "--quiet"]);
    let text = run_two_env(&two, &[]);
    assert!(text.contains("data-parallel (torchrun): 2 ranks, global batch 4"), "{text}");
    assert_same_training(&dir.join("runs/one"), &dir.join("runs/two"), 20);
    let saved = std::fs::read_to_string(dir.join("runs/two/config.toml")).expect("config");
    assert!(saved.starts_with("# data-parallel: 2 ranks x batch_size 2 = global batch 4"), "{saved}");
    let line = std::fs::read_to_string(dir.join("runs/two/losses.jsonl")).expect("losses");
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(v["rank_step_s"].as_array().map(Vec::len), Some(2), "{v}");
    assert!(v["comm_s"].as_f64().is_some(), "{v}");

    // Gradient accumulation (communication on the last micro-batch only), through --nproc.
    let one = config(dir, "one_acc", "tiny_32x32.toml", 4, 20, "resolution = 32\ngrad_accum = 2");
    let two = config(dir, "two_acc", "tiny_32x32.toml", 2, 20, "resolution = 32\ngrad_accum = 2");
    ok(&["train", "--config", s(&one), "--quiet"]);
    ok(&["train", "--config", s(&two), "--nproc", "2", "--quiet", "--dist-timeout", "30"]);
    assert_same_training(&dir.join("runs/one_acc"), &dir.join("runs/two_acc"), 20);

    // Mixed-resolution batches of a NestedUNet: the ranks' 64²/32² counts differ per step,
    // each level is normalised by its share of the global batch.
    let one = config(dir, "one_mix", "tiny_64x64.toml", 6, 12, "mixed_ratio = \"64:1,32:1\"");
    let two = config(dir, "two_mix", "tiny_64x64.toml", 3, 12, "mixed_ratio = \"64:1,32:1\"");
    ok(&["train", "--config", s(&one), "--quiet"]);
    ok(&["train", "--config", s(&two), "--nproc", "2", "--quiet", "--dist-timeout", "30"]);
    assert_same_training_within(&dir.join("runs/one_mix"), &dir.join("runs/two_mix"), 12, WEIGHT_ABS_MIXED);
}

#[test]
fn sigterm_on_one_rank_stops_both_and_resumes_on_one_or_two_ranks() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    shards(dir);
    let steps = 16;
    let full = config(dir, "full", "tiny_32x32.toml", 2, steps, "resolution = 32");
    run_two_env(&full, &[]);

    let cut = config(dir, "cut", "tiny_32x32.toml", 2, steps, "resolution = 32");
    let port = free_port();
    let kids: Vec<Child> = (0..2).map(|r| spawn_rank(&cut, r, 2, port, &[])).collect();
    let run = dir.join("runs/cut");
    let t0 = Instant::now();
    // SIGTERM to rank 1 alone once a few steps are logged (rank 0 writes the log).
    while std::fs::read_to_string(run.join("losses.jsonl")).map_or(0, |t| t.lines().count()) < 4 {
        assert!(t0.elapsed() < Duration::from_secs(120), "the run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(kids[1].id() as i32, libc::SIGTERM) };
    let mut stopped_at = vec![];
    for (r, k) in kids.into_iter().enumerate() {
        let (code, text) = finish(k, Duration::from_secs(120));
        assert_eq!(code, Some(130), "rank {r}:\n{text}");
        if r == 0 {
            let line = text.lines().find(|l| l.starts_with("stopped at step")).unwrap_or_else(|| panic!("{text}")).to_string();
            stopped_at.push(line);
        }
    }
    let ckpts: Vec<_> = std::fs::read_dir(run.join("checkpoints")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(ckpts.len(), 1, "one checkpoint, not one per rank: {ckpts:?}");
    let k: usize = losses(&run).len();
    assert!(k >= 4 && k < steps as usize, "stopped at {k}: {stopped_at:?}");
    assert!(stopped_at[0].contains(&format!("step {k}")), "{stopped_at:?}");

    // Resume on one rank (batch 4 = the global batch) and on two ranks (batch 2).
    let copy = |to: &str| {
        let dst = dir.join("runs").join(to);
        std::fs::create_dir_all(dst.join("checkpoints")).unwrap();
        let ck = newest_checkpoint(&run);
        let ck_dst = dst.join("checkpoints").join(ck.file_name().unwrap());
        std::fs::create_dir_all(&ck_dst).unwrap();
        for f in std::fs::read_dir(&ck).unwrap() {
            let f = f.unwrap().path();
            let text = std::fs::read(&f).unwrap();
            // The checkpoint's config names the run folder; the copy is another folder.
            let text = if f.extension().is_some_and(|e| e == "toml") {
                String::from_utf8(text).unwrap().replace(s(&run), s(&dst)).into_bytes()
            } else {
                text
            };
            std::fs::write(ck_dst.join(f.file_name().unwrap()), text).unwrap();
        }
        std::fs::copy(run.join("losses.jsonl"), dst.join("losses.jsonl")).unwrap();
        dst
    };
    let r1 = copy("cut1");
    let r2 = copy("cut2");
    let one = config(dir, "cut1", "tiny_32x32.toml", 4, steps, "resolution = 32");
    ok(&["train", "--config", s(&one), "--resume", "--quiet"]);
    let two = config(dir, "cut2", "tiny_32x32.toml", 2, steps, "resolution = 32");
    ok(&["train", "--config", s(&two), "--resume", "--nproc", "2", "--quiet", "--dist-timeout", "30"]);
    let f = dir.join("runs/full");
    assert_same_training(&f, &r1, steps as usize);
    assert_same_training(&f, &r2, steps as usize);
    // The same global sample order: the loader cursors at the end agree.
    let cursor = |run: &Path| {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(newest_checkpoint(run).join("state.json")).unwrap()).unwrap();
        v["loader"].clone()
    };
    assert_eq!(cursor(&f), cursor(&r1));
    assert_eq!(cursor(&f), cursor(&r2));

    // Another global batch is refused with the reason.
    let bad = config(dir, "cut2", "tiny_32x32.toml", 3, steps, "resolution = 32");
    let out = common::mdm(&["train", "--config", s(&bad), "--resume", "--quiet"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("global batch of 4"), "{err}");
}

#[test]
fn a_killed_rank_makes_the_other_fail_naming_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    shards(dir);
    let cfg = config(dir, "kill", "tiny_32x32.toml", 2, 100_000, "resolution = 32");
    let port = free_port();
    let mut kids: Vec<Child> = (0..2).map(|r| spawn_rank(&cfg, r, 2, port, &[])).collect();
    let run = dir.join("runs/kill");
    let t0 = Instant::now();
    while std::fs::read_to_string(run.join("losses.jsonl")).map_or(0, |t| t.lines().count()) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(120), "the run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    kids[1].kill().expect("SIGKILL rank 1");
    let _ = kids[1].wait();
    let killed = Instant::now();
    let (code, text) = finish(kids.remove(0), Duration::from_secs(60));
    let took = killed.elapsed();
    assert!(code.is_some_and(|c| c != 0 && c != 130), "rank 0 must fail: {code:?}\n{text}");
    assert!(took < Duration::from_secs(30), "rank 0 took {took:?} (timeout 20 s)");
    assert!(text.contains("rank 0:") && text.contains("rank 1 (silent for"), "{text}");
}
