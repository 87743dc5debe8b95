//! `mdm train` / `mdm sample` through the binary: a text-conditioned run on shards ingested
//! with a tiny T5 (made here), sampled from a prompt; SIGTERM writes a checkpoint and
//! `--resume` finishes the run.

use std::io::Cursor;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{mdm, ok};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// Captioned photos and a TSV table → `ingest cc12m --t5` at 32² with T5 states.
fn text_shards(dir: &Path) -> std::path::PathBuf {
    let mut tsv = String::from("url\tcaption\n");
    std::fs::create_dir_all(dir.join("img")).expect("mkdir");
    for i in 0..12u32 {
        let c = [[220u8, 40, 40], [40, 70, 220]][(i % 2) as usize];
        let img = image::RgbImage::from_fn(48, 40, |x, y| image::Rgb(if (x + i) % 20 < 10 && y > 10 { c } else { [30, 30, 30] }));
        let mut buf = Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img).write_to(&mut buf, image::ImageFormat::Jpeg).expect("jpeg");
        std::fs::write(dir.join(format!("img/{i}.jpg")), buf.into_inner()).expect("write");
        let colour = ["red", "blue"][(i % 2) as usize];
        tsv.push_str(&format!("{i}.jpg\ta {colour} striped block number {i}\n"));
    }
    std::fs::write(dir.join("t.tsv"), tsv).expect("tsv");
    ok(&["make-tiny-t5", s(&dir.join("t5"))]);
    let shards = dir.join("shards");
    ok(&[
        "ingest", "cc12m", "--src", s(&dir.join("t.tsv")), "--image-root", s(&dir.join("img")), "--out", s(&shards),
        "--resolution", "32", "--t5", s(&dir.join("t5")), "--t5-device", "cpu", "--quiet",
    ]);
    shards
}

/// A text-conditioned tiny 32² UNet (width 64 = the tiny T5's).
fn text_config(dir: &Path, shards: &Path, steps: u64, checkpoint_every: u64) -> std::path::PathBuf {
    // tiny_32x32 without its classes: conditioned on the tiny T5's states instead.
    let model = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/models/tiny_32x32.toml")).expect("model");
    let model: String = model.lines().filter(|l| !l.starts_with("num_classes")).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("model.toml"), model).expect("model config");
    let text = format!(
        "model_file = \"model.toml\"\n\n[run]\nout = \"run\"\nsteps = {steps}\ndevice = \"cpu\"\nthreads = 1\nlog_every = 1\ncheckpoint_every = {checkpoint_every}\n\n[data]\nshards = [{:?}]\nbatch_size = 4\nworkers = 1\ncfg_dropout = 0.2\n\n[optim]\nlr = 1e-3\n",
        s(shards)
    );
    let p = dir.join("train.toml");
    std::fs::write(&p, text).expect("config");
    p
}

#[test]
fn text_run_then_sample_a_prompt_grid() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let shards = text_shards(dir);
    let cfg = text_config(dir, &shards, 4, 2);
    let text = ok(&["train", "--config", s(&cfg)]);
    assert!(text.contains("step 4/4 loss"), "{text}");
    assert!(text.contains("finished at step 4"), "{text}");
    let grid = dir.join("grid.png");
    let text = ok(&[
        "sample", "--checkpoint", s(&dir.join("run")), "--prompt", "a red striped block", "--prompt", "a blue block",
        "--t5", s(&dir.join("t5")), "--count", "2", "--steps", "3", "--guidance", "2", "--sampler", "ddim", "--out", s(&grid),
    ]);
    assert!(text.contains("1 levels [32] × 4 samples"), "{text}");
    let img = image::open(&grid).expect("png").to_rgb8();
    // 4 cells of 32 px with 2 px gaps, one row.
    assert_eq!((img.width(), img.height()), (4 * 32 + 5 * 2, 32 + 2 * 2));
    // A text model asked for a class is refused with a clear message.
    let out = mdm(&["sample", "--checkpoint", s(&dir.join("run")), "--class", "1", "--out", s(&grid)]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--prompt"));
}

#[test]
fn sigterm_checkpoints_and_resume_finishes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let shards = text_shards(dir);
    let cfg = text_config(dir, &shards, 100_000, 100_000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mdm"))
        .args(["train", "--config", s(&cfg), "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let losses = dir.join("run/losses.jsonl");
    let t = Instant::now();
    while std::fs::read_to_string(&losses).map_or(0, |l| l.lines().count()) < 3 {
        assert!(t.elapsed() < Duration::from_secs(120), "no training progress");
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!("mdm train exited early ({st}): {:?}", child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).to_string()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(st.success());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let step: u64 = stdout
        .split("stopped at step ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(step >= 3);
    let ckpt = dir.join(format!("run/checkpoints/step-{step:08}"));
    assert!(ckpt.join("model.safetensors").exists() && ckpt.join("state.json").exists());
    // Resume with a shorter target: a finished run at step + 2.
    let cfg = text_config(dir, &shards, step + 2, 100_000);
    let text = ok(&["train", "--config", s(&cfg), "--resume"]);
    assert!(text.contains("resuming from") && text.contains(&format!("finished at step {}", step + 2)), "{text}");
    let lines = std::fs::read_to_string(&losses).expect("losses").lines().count() as u64;
    assert_eq!(lines, step + 2);
}
