//! `mdm train` / `mdm sample` through the binary: a text-conditioned run on shards ingested
//! with a tiny T5 (made here), sampled from a prompt; SIGTERM writes a checkpoint and
//! `--resume` finishes the run.

use std::io::Cursor;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
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

/// Four moving-pattern videos and a WebVid CSV → `ingest webvid --t5` (4 frames of 32²).
fn video_shards(dir: &Path) -> std::path::PathBuf {
    let videos = dir.join("videos");
    std::fs::create_dir_all(&videos).expect("mkdir");
    let mut csv = String::from("videoid,contentUrl,duration,page_dir,name\n");
    for (i, (src, caption)) in [("testsrc", "a test card"), ("testsrc2", "a colourful test card"), ("rgbtestsrc", "red green blue bars"), ("smptebars", "smpte colour bars")]
        .iter()
        .enumerate()
    {
        let st = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("{src}=size=64x48:rate=10:duration=2"))
            .args(["-vf", "scroll=horizontal=0.02", "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"])
            .arg(videos.join(format!("{}.mp4", 100 + i)))
            .status()
            .expect("the ffmpeg tool (scripts/setup.sh installs it)");
        assert!(st.success());
        csv.push_str(&format!("{},https://example.com/{i}.mp4,PT00H00M02S,p,{caption}\n", 100 + i));
    }
    std::fs::write(dir.join("results.csv"), csv).expect("csv");
    if !dir.join("t5").exists() {
        ok(&["make-tiny-t5", s(&dir.join("t5"))]);
    }
    let shards = dir.join("video-shards");
    ok(&[
        "ingest", "webvid", "--csv", s(&dir.join("results.csv")), "--videos", s(&videos), "--out", s(&shards),
        "--frames", "4", "--fps", "4", "--resolution", "32", "--t5", s(&dir.join("t5")), "--t5-device", "cpu", "--quiet",
    ]);
    shards
}

/// A text-to-video run grown from a text image run (inflation), then an animated GIF and an MP4
/// sample.
#[test]
fn video_run_grown_from_an_image_run_then_sample_a_gif() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    // The image stage: tiny_32x32 on text shards, 2 steps.
    let image_shards = text_shards(dir);
    let cfg = text_config(dir, &image_shards, 2, 2);
    ok(&["train", "--config", s(&cfg), "--quiet"]);

    let shards = video_shards(dir);
    let text = format!(
        "model_file = {:?}\n\n[run]\nout = \"video-run\"\nsteps = 3\ndevice = \"cpu\"\nthreads = 1\nlog_every = 1\ncheckpoint_every = 3\n\n[data]\nshards = [{:?}]\nbatch_size = 2\nframes = 4\nworkers = 1\n\n[optim]\nlr = 1e-3\n\n[progressive]\ngrow_from = \"run\"\n",
        concat!(env!("CARGO_MANIFEST_DIR"), "/configs/models/tiny_video_32x32.toml"),
        s(&shards)
    );
    let vcfg = dir.join("video.toml");
    std::fs::write(&vcfg, text).expect("config");
    let out = ok(&["train", "--config", s(&vcfg)]);
    assert!(out.contains("grown from") && out.contains("finished at step 3"), "{out}");
    let saved = std::fs::read_to_string(dir.join("video-run/config.toml")).expect("saved config");
    assert!(saved.contains("frames = 4") && saved.contains("temporal_mode = true"), "{saved}");

    let gif = dir.join("clips.gif");
    let out = ok(&[
        "sample", "--checkpoint", s(&dir.join("video-run")), "--prompt", "a test card", "--t5", s(&dir.join("t5")),
        "--count", "2", "--steps", "3", "--sampler", "ddim", "--fps", "4", "--out", s(&gif),
    ]);
    assert!(out.contains("1 levels [32] × 2 clips of 4 frames at 4 fps"), "{out}");
    use image::AnimationDecoder;
    let frames = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(std::fs::File::open(&gif).expect("gif")))
        .expect("decode")
        .into_frames()
        .collect_frames()
        .expect("frames");
    assert_eq!(frames.len(), 4);
    // Two 32² cells with 2 px gaps, one row (one level).
    assert_eq!(frames[0].buffer().dimensions(), (2 * 32 + 3 * 2, 32 + 2 * 2));
    assert_eq!(frames[0].delay().numer_denom_ms(), (250, 1));
    // The same clips as an MP4, decoded by the ffmpeg tool's ffprobe: 4 frames of the grid.
    let mp4 = dir.join("clips.mp4");
    let out = ok(&[
        "sample", "--checkpoint", s(&dir.join("video-run")), "--prompt", "a test card", "--t5", s(&dir.join("t5")),
        "--count", "2", "--steps", "3", "--sampler", "ddim", "--fps", "4", "--out", s(&mp4),
    ]);
    assert!(out.contains("1 levels [32] × 2 clips of 4 frames at 4 fps, H264"), "{out}");
    let probe = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries", "stream=codec_name,width,height,nb_read_frames,avg_frame_rate", "-of", "csv=p=0"])
        .arg(&mp4)
        .output()
        .expect("ffprobe (installed with the ffmpeg tool)");
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stderr));
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "h264,70,36,4/1,4");
    // A video run stopped after 2 steps and resumed logs the uninterrupted run's losses exactly.
    let losses = |name: &str| -> Vec<String> {
        let cfg = std::fs::read_to_string(&vcfg).expect("config").replace("out = \"video-run\"", &format!("out = \"{name}\""));
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(&p, cfg.replace("steps = 3", "steps = 4")).expect("config");
        if name == "resumed" {
            ok(&["train", "--config", s(&p), "--quiet", "--stop-after", "2"]);
            ok(&["train", "--config", s(&p), "--quiet", "--resume"]);
        } else {
            ok(&["train", "--config", s(&p), "--quiet"]);
        }
        std::fs::read_to_string(dir.join(format!("{name}/losses.jsonl")))
            .expect("losses")
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["loss"].to_string())
            .collect()
    };
    let (whole, resumed) = (losses("whole"), losses("resumed"));
    assert_eq!(whole.len(), 4);
    assert_eq!(whole, resumed);

    // A video model asked for a PNG is refused.
    let o = mdm(&["sample", "--checkpoint", s(&dir.join("video-run")), "--prompt", "x", "--t5", s(&dir.join("t5")), "--out", s(&dir.join("x.png"))]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains(".gif or .mp4"));
}

/// `mdm sample --manifest`: one PNG per row in fixed batches; a rerun redoes only the batches
/// with missing PNGs, with the same noise (the file comes back byte-identical); other settings
/// are refused.
#[test]
fn sample_a_manifest_resumes_batch_exactly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let shards = text_shards(dir);
    let cfg = text_config(dir, &shards, 2, 2);
    ok(&["train", "--config", s(&cfg), "--quiet"]);
    let manifest = dir.join("m.jsonl");
    let rows: String = (0..5).map(|i| format!("{{\"id\": \"r{i}\", \"caption\": \"a {} striped block\"}}\n", ["red", "blue"][i % 2])).collect();
    std::fs::write(&manifest, rows).expect("manifest");
    let out_dir = dir.join("samples");
    let (run, t5) = (dir.join("run"), dir.join("t5"));
    let sample = |extra: &[&str]| {
        let mut args = vec![
            "sample", "--checkpoint", s(&run), "--t5", s(&t5), "--manifest", s(&manifest), "--out-dir",
            s(&out_dir), "--batch", "2", "--steps", "3", "--guidance", "2",
        ];
        args.extend_from_slice(extra);
        mdm(&args)
    };
    let o = sample(&[]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("5 rows = 5 written + 0 already there + 0 rejected"), "{text}");
    let read = |i: usize| std::fs::read(out_dir.join(format!("r{i}.png"))).expect("png");
    let first: Vec<Vec<u8>> = (0..5).map(read).collect();
    for png in &first {
        let img = image::load_from_memory(png).expect("decode").to_rgb8();
        assert_eq!(img.dimensions(), (32, 32));
    }
    // Different batches get different noise: the two red rows of batches 0 and 1 differ.
    assert_ne!(first[0], first[2]);
    // Row 3 lost (batch 1 = rows 2, 3): only it is written again, and equal to the first run's.
    std::fs::remove_file(out_dir.join("r3.png")).expect("rm");
    let o = sample(&[]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(text.contains("5 rows = 1 written + 4 already there + 0 rejected"), "{text}");
    assert_eq!(read(3), first[3], "the resumed batch drew other noise");
    assert!(std::fs::read_dir(&out_dir).expect("ls").all(|e| !e.expect("entry").file_name().to_string_lossy().ends_with(".tmp")));
    // Another seed into the same folder is refused, naming the setting.
    let o = sample(&["--seed", "1"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && err.contains("other settings (seed)"), "{err}");
    // A text model's row without a caption: the error names the file and row.
    std::fs::write(&manifest, "{\"id\": \"x\"}\n").expect("manifest");
    let o = sample(&[]);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && err.contains("m.jsonl row 1 (id \"x\")") && err.contains("needs a \"caption\""), "{err}");
}
