//! `mdm ingest` end to end through the binary: ingest an ILSVRC-shaped tree made here →
//! `mdm shards verify` passes → `inspect` shows the reject counts; `--part` + `shards merge`;
//! and a run killed with SIGKILL mid-run (at a pause of the pipeline's test hook) then rerun
//! gives the same bytes as an uninterrupted run — for ImageNet and for WebVid videos.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common;
use common::{mdm, ok};

fn jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 + seed) as u8, (y * 5) as u8, ((x ^ y) + seed * 3) as u8]));
    let mut c = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut c, image::ImageFormat::Jpeg).expect("encode");
    c.into_inner()
}

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, bytes).expect("write");
}

/// `n` good images over two classes plus a zero-byte file, a non-image and a truncated JPEG.
fn tree(root: &Path, n: u32, side: u32) {
    for i in 0..n {
        let wnid = if i % 2 == 0 { "n01440764" } else { "n01443537" };
        put(&root.join(format!("train/{wnid}/{wnid}_{i:04}.JPEG")), &jpeg(side + i % 5, side * 3 / 4, i));
    }
    put(&root.join("train/n01440764/n01440764_zero.JPEG"), b"");
    put(&root.join("train/n01443537/n01443537_text.JPEG"), b"plain text, not an image");
    let j = jpeg(200, 150, 1);
    put(&root.join("train/n01443537/n01443537_trunc.JPEG"), &j[..j.len() / 3]);
}

/// Runs `mdm ARGS` writing to `killed` under the pipeline's test hook, which blocks the run
/// once it has sealed `chunks` chunks (fewer than the run has), and SIGKILLs it there: always
/// mid-run. Checks that it left those chunks and no manifest, reruns it (without the hook), and
/// asserts that the rerun kept them and gives the same bytes as the uninterrupted run in
/// `reference`.
fn kill_9_then_rerun(killed: &Path, reference: &Path, args: &[String], chunks: u64) {
    let sidecar = |k: u64| killed.join(format!("shard-{k:05}.chunk.json"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_mdm"))
        .args(args)
        .env(mdm_ingest::pipeline::TEST_PAUSE_AFTER_CHUNKS, chunks.to_string())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    let paused = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break Err(format!("the run ended ({status}) before its pause"));
        }
        if sidecar(chunks - 1).exists() {
            // Held there: a run that went on would write the next sidecar or end meanwhile.
            std::thread::sleep(Duration::from_millis(500));
            break match child.try_wait().expect("try_wait") {
                Some(status) => Err(format!("the run ended ({status}) instead of pausing")),
                None if sidecar(chunks).exists() => Err("the run went on past its pause".to_string()),
                None => Ok(()),
            };
        }
        if start.elapsed() > Duration::from_secs(120) {
            break Err("no pause within 120 s".to_string());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    if let Err(e) = paused {
        panic!("{e}");
    }
    assert!(!killed.join("manifest.json").exists() && !sidecar(chunks).exists(), "the run went on past its pause");
    let text = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(text.contains(&format!("; {chunks} chunks kept from an earlier run")), "{text}");
    assert!(snapshot(killed) == snapshot(reference), "resumed output differs from the uninterrupted run");
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file() && !p.to_string_lossy().ends_with(".tmp"))
        .map(|p| (p.file_name().expect("name").to_string_lossy().into_owned(), std::fs::read(&p).expect("read")))
        .collect()
}

#[test]
fn ingest_verify_inspect_parts_merge() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("imagenet");
    tree(&root, 10, 80);
    let out = tmp.path().join("out");
    let (src, outs) = (root.to_str().expect("utf8"), out.to_str().expect("utf8"));
    let common = ["--resolution", "64", "--extra-resolution", "32", "--shard-inputs", "4", "--quiet"];
    let mut args = vec!["ingest", "imagenet", "--src", src, "--split", "train", "--out", outs, "--threads", "2"];
    args.extend(common);
    let text = ok(&args);
    assert!(text.contains("in 13 = written 10 + rejected 3"), "{text}");
    ok(&["shards", "verify", outs]);
    let inspect = ok(&["shards", "inspect", outs]);
    for reason in ["empty", "not-an-image", "corrupt"] {
        assert!(inspect.lines().any(|l| l.contains("rejected") && l.trim_end().ends_with(reason) && l.contains(" 1 ")), "{reason}:\n{inspect}");
    }
    assert_eq!(std::fs::read_to_string(out.join("rejects.jsonl")).expect("rejects").lines().count(), 3);

    // two parts, merged, hold the same rows and stats
    let mut manifests = Vec::new();
    for i in 0..2 {
        let dir = tmp.path().join(format!("part{i}"));
        let part = format!("{i}/2");
        let mut a = vec!["ingest", "imagenet", "--src", src, "--split", "train", "--out", dir.to_str().expect("utf8"), "--part", &part];
        a.extend(common);
        ok(&a);
        manifests.push(dir.join(format!("manifest.part-{i}-of-2.json")).to_string_lossy().into_owned());
    }
    let merged = tmp.path().join("merged");
    let merged_s = merged.to_str().expect("utf8");
    ok(&["shards", "merge", "--out", merged_s, &manifests[0], &manifests[1]]);
    ok(&["shards", "verify", merged_s]);
    let m = ok(&["shards", "inspect", merged_s]);
    assert!(m.contains("inputs      13 = 10 written + 3 rejected"), "{m}");
    // the parts' rejects lists, concatenated in part order: the same 3 lines as the whole run's
    let read = |p: &Path| std::fs::read_to_string(p).expect("rejects");
    let part_rejects: Vec<String> = (0..2).map(|i| read(&tmp.path().join(format!("part{i}/rejects.part-{i}-of-2.jsonl")))).collect();
    assert!(part_rejects.iter().all(|r| !r.is_empty()), "{part_rejects:?}");
    let merged_rejects = read(&merged.join("rejects.jsonl"));
    assert_eq!(merged_rejects, part_rejects.concat());
    let sorted = |s: &str| {
        let mut v: Vec<String> = s.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&merged_rejects), sorted(&read(&out.join("rejects.jsonl"))));
    // a part whose rejects list does not match its manifest is refused
    std::fs::write(tmp.path().join("part1/rejects.part-1-of-2.jsonl"), "").expect("truncate");
    let bad = mdm(&["shards", "merge", "--out", tmp.path().join("merged2").to_str().expect("utf8"), &manifests[0], &manifests[1]]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("lists 0 rejects, its manifest counts"), "{err}");
}

#[test]
fn kill_9_then_rerun_is_byte_identical() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("imagenet");
    tree(&root, 12, 160);
    let src = root.to_str().expect("utf8");
    let args = |out: &str| -> Vec<String> {
        ["ingest", "imagenet", "--src", src, "--split", "train", "--out", out, "--threads", "1", "--shard-inputs", "3", "--quiet", "--resolution", "128"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let reference = tmp.path().join("reference");
    let r: Vec<String> = args(reference.to_str().expect("utf8"));
    ok(&r.iter().map(String::as_str).collect::<Vec<_>>());

    let killed = tmp.path().join("killed");
    let k = args(killed.to_str().expect("utf8"));
    kill_9_then_rerun(&killed, &reference, &k, 2);
}

/// `mdm make-tiny-t5` → `mdm ingest cc12m --t5` embeds inline; `mdm embed` on a plain ingest of
/// the same table gives the same rows; `inspect` shows the encoder; the source is untouched.
#[test]
fn cc12m_with_t5_inline_and_embed() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let mut tsv = String::from("url\tcaption\n");
    for i in 0..6u32 {
        put(&dir.join(format!("img/{i}.jpg")), &jpeg(70 + i, 60, i));
        tsv.push_str(&format!("{i}.jpg\ta small photo number {i} of the dog\n"));
    }
    tsv.push_str("https://example.com/gone.jpg\ta url that was never downloaded\n");
    put(&dir.join("t.tsv"), tsv.as_bytes());
    let t5 = dir.join("t5");
    ok(&["make-tiny-t5", t5.to_str().expect("utf8")]);
    let (table, root, model) = (dir.join("t.tsv"), dir.join("img"), t5.to_str().expect("utf8").to_string());
    let base = |out: &Path| -> Vec<String> {
        ["ingest", "cc12m", "--src", table.to_str().expect("utf8"), "--image-root", root.to_str().expect("utf8"), "--out", out.to_str().expect("utf8")]
            .iter()
            .map(|s| s.to_string())
            .chain(["--resolution", "32", "--shard-inputs", "4", "--quiet", "--t5-device", "cpu"].iter().map(|s| s.to_string()))
            .collect()
    };
    let inline = dir.join("inline");
    let mut a = base(&inline);
    a.extend(["--t5".to_string(), model.clone()]);
    let text = ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(text.contains("in 7 = written 6 + rejected 1 (not-downloaded 1)"), "{text}");
    assert!(text.contains("T5: 6 captions embedded"), "{text}");
    let inspect = ok(&["shards", "inspect", inline.to_str().expect("utf8")]);
    assert!(inspect.contains("f16") && inspect.to_lowercase().contains("encoder"), "{inspect}");

    let plain = dir.join("plain");
    ok(&base(&plain).iter().map(String::as_str).collect::<Vec<_>>());
    let before = snapshot(&plain);
    let embedded = dir.join("embedded");
    let text = ok(&["embed", "--shards", plain.to_str().expect("utf8"), "--out", embedded.to_str().expect("utf8"), "--t5", &model, "--t5-device", "cpu", "--quiet"]);
    assert!(text.contains("rows 6 = embedded 6 + rejected 0"), "{text}");
    assert!(text.contains("set: in 7 = written 6 + rejected 1"), "{text}");
    ok(&["shards", "verify", embedded.to_str().expect("utf8")]);
    assert!(snapshot(&plain) == before, "mdm embed changed its source");
    let (a, b) = (snapshot(&embedded), snapshot(&inline));
    for (name, bytes) in &b {
        if name.ends_with(".parquet") {
            assert!(a.get(name) == Some(bytes), "{name}: embed after ingest differs from inline");
        }
    }
    let out = mdm(&["embed", "--shards", plain.to_str().expect("utf8"), "--out", dir.join("x").to_str().expect("utf8")]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--t5"));
}

/// `mdm ingest webvid`: the CSV + videos folder (settings from TOML, flags over them) →
/// verify/inspect; a run killed with SIGKILL after its third chunk, rerun, gives the same bytes.
#[test]
fn webvid_csv_config_verify_and_kill_9() {
    let tmp = tempfile::tempdir().expect("tmp");
    let videos = tmp.path().join("videos");
    std::fs::create_dir_all(videos.join("page7")).expect("mkdir");
    let mut csv = String::from("videoid,contentUrl,duration,page_dir,name\n");
    for i in 0..6u32 {
        let dir = if i % 2 == 0 { videos.clone() } else { videos.join("page7") };
        let st = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("testsrc=size=96x72:rate=25:duration=2:decimals={}", i % 3))
            .args(["-c:v", "libx264", "-preset", "veryfast", "-g", "10"])
            .arg(dir.join(format!("{}.mp4", 1000 + i)))
            .status()
            .expect("the ffmpeg tool (scripts/setup.sh installs it)");
        assert!(st.success());
        csv.push_str(&format!("{},https://example.com/{i}.mp4,PT00H00M02S,page7,clip number {i}\n", 1000 + i));
    }
    csv.push_str("2000,https://example.com/x.mp4,PT00H00M02S,page7,never downloaded\n");
    let table = tmp.path().join("results.csv");
    put(&table, csv.as_bytes());
    let config = tmp.path().join("video.toml");
    put(&config, b"frames = 4\nfps = 2.0\nresolution = 32\n");
    let args = |out: &Path| -> Vec<String> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        let mut a: Vec<String> = vec!["ingest".into(), "webvid".into(), "--csv".into(), s(&table), "--videos".into(), s(&videos), "--out".into(), s(out)];
        a.extend(["--config", config.to_str().expect("utf8"), "--fps", "4", "--shard-inputs", "1", "--threads", "1", "--quiet"].map(String::from));
        a
    };
    let reference = tmp.path().join("reference");
    let r = args(&reference);
    let text = ok(&r.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(text.contains("in 7 = written 6 + rejected 1 (not-downloaded 1)"), "{text}");
    let refs = reference.to_str().expect("utf8");
    ok(&["shards", "verify", refs]);
    let inspect = ok(&["shards", "inspect", refs]);
    assert!(inspect.contains("video"), "{inspect}");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(reference.join("manifest.json")).expect("manifest")).expect("json");
    let v = &m["settings"]["video"];
    assert_eq!((v["frames"].as_u64(), v["fps"].as_f64(), v["resolution"].as_u64()), (Some(4), Some(4.0), Some(32)), "{m}");

    let killed = tmp.path().join("killed");
    let k = args(&killed);
    kill_9_then_rerun(&killed, &reference, &k, 3);

    // --t5 inline with two clips per video: a caption over the token limit rejects its video
    // (both clips, one reject line under the video id)
    std::fs::copy(videos.join("1000.mp4"), videos.join("1006.mp4")).expect("copy");
    let long = "a very long caption that goes on and on about the clip ".repeat(8);
    csv.push_str(&format!("1006,https://example.com/6.mp4,PT00H00M02S,page7,{long}\n"));
    put(&table, csv.as_bytes());
    let t5 = tmp.path().join("t5");
    ok(&["make-tiny-t5", t5.to_str().expect("utf8")]);
    let embedded = tmp.path().join("t5out");
    let mut a = args(&embedded);
    a.extend(["--clips-per-video", "2", "--t5", t5.to_str().expect("utf8"), "--t5-device", "cpu", "--max-tokens", "24", "--long-captions", "reject"].map(String::from));
    let text = ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(text.contains("in 8 = written 6 + rejected 2 (long-caption 1, not-downloaded 1)"), "{text}");
    assert!(text.contains("T5: 12 captions embedded"), "{text}");
    let emb = embedded.to_str().expect("utf8");
    ok(&["shards", "verify", emb]);
    assert!(ok(&["shards", "inspect", emb]).contains("rows        12"), "12 clips expected");
    let rejects = std::fs::read_to_string(embedded.join("rejects.jsonl")).expect("rejects");
    assert!(rejects.lines().any(|l| l.contains("\"id\":\"1006\"") && l.contains("long-caption")), "{rejects}");
}
