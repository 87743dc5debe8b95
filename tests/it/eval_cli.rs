//! `mdm eval ...` end to end through the binary.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

/// Runs the `mdm` binary with `args`.
fn mdm<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    std::process::Command::new(env!("CARGO_BIN_EXE_mdm")).args(args).output().expect("run mdm")
}

// ---- `mdm eval fid` ----

/// Panics with the command's output unless it succeeded; returns its stdout.
fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn frechet_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("metrics/tests/fixtures/frechet")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read JSON")).expect("JSON")
}

/// Two numpy-written .npz (np.savez_compressed and np.savez) → the references' FID.
#[test]
fn fid_of_numpy_npz_equals_references() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (
        frechet_fixtures().join("d64_full_a.npz"),
        frechet_fixtures().join("d64_full_b.npz"),
    );
    let result = tmp.path().join("r.json");
    let out = mdm([
        OsStr::new("eval"),
        "fid".as_ref(),
        a.as_os_str(),
        b.as_os_str(),
        "--out".as_ref(),
        result.as_os_str(),
    ]);
    let stdout = ok(&out);

    let goldens = read_json(&frechet_fixtures().join("goldens.json"));
    let refs = &goldens["cases"]["d64_full"]["fid"];
    let r = read_json(&result);
    let fid = r["fid"].as_f64().unwrap();
    for name in ["pytorch_fid", "torchmetrics", "clean_fid"] {
        let want = refs[name].as_f64().unwrap();
        assert!((fid - want).abs() <= 1e-6 * want, "{fid} against {name} {want}");
    }
    assert_eq!(stdout.trim(), format!("FID {fid}"));
    assert_eq!(r["dims"], 64);
    assert_eq!(r["a"], a.to_str().unwrap());
    assert!(r["n_a"].is_null() && r["n_b"].is_null() && r["eps"].is_null(), "{r}");
    assert_eq!(r["warnings"], serde_json::json!([]));
}

/// Two folders of PNGs → `mdm eval fid A B` (features, statistics and distance in one command)
/// equals pytorch-fid's `calculate_fid_given_paths` on the same files and weights, within 1e-3
/// relative (metrics/tests/fixtures/e2e, made by tools/metrics_fixtures/e2e.py, whose formulas
/// for the images this test repeats). n < dims + 1 in both cases: the warning path is run too.
#[test]
fn fid_of_two_image_folders_equals_pytorch_fid() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("metrics/tests/fixtures/e2e");
    let golden = read_json(&fx.join("golden.json"));
    let dim = |k: &str| golden[k].as_u64().unwrap() as u32;
    let (n, h, w) = (dim("n"), dim("h"), dim("w"));
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("inception.safetensors");
    mdm_metrics::inception::formula::write(&weights).unwrap();
    // rgb_u8 of tools/metrics_fixtures/resize.py: floor(hash_unit(seed, i) * 256)
    let rgb_u8 = |seed: u32| -> Vec<u8> {
        let u = mdm_metrics::inception::formula::unit(seed, (h * w * 3) as usize);
        u.into_iter().map(|u| (u * 256.0).floor() as u8).collect()
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (dir, base) in [(&a, 5000), (&b, 6000)] {
        std::fs::create_dir(dir).unwrap();
        for k in 0..n {
            let mut px = rgb_u8(base + k);
            if base == 6000 {
                px.iter_mut().for_each(|v| *v = *v / 2 + 64);
            }
            image::RgbImage::from_raw(w, h, px).unwrap().save(dir.join(format!("{k:03}.png"))).unwrap();
        }
    }
    for dims in ["64", "2048"] {
        let want = golden["fid"][dims].as_f64().unwrap();
        let result = tmp.path().join(format!("fid{dims}.json"));
        let out = mdm([
            OsStr::new("eval"), OsStr::new("fid"), a.as_os_str(), b.as_os_str(), OsStr::new("--inception"),
            weights.as_os_str(), OsStr::new("--mode"), OsStr::new("pytorch-fid"), OsStr::new("--dims"), OsStr::new(dims),
            OsStr::new("--device"), OsStr::new("cpu"), OsStr::new("--quiet"), OsStr::new("--out"), result.as_os_str(),
        ]);
        ok(&out);
        let r = read_json(&result);
        let fid = r["fid"].as_f64().unwrap();
        let rel = (fid - want).abs() / want;
        eprintln!("dims {dims}: mdm {fid}, pytorch-fid {want}, relative {rel:.1e}");
        assert!(want > 1.0 && rel <= 1e-3, "dims {dims}: FID {fid} against pytorch-fid's {want} ({rel:.1e} relative)");
        assert_eq!((r["n_a"].as_u64(), r["n_b"].as_u64()), (Some(n as u64), Some(n as u64)), "{r}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("warning"), "n < dims + 1 must be warned about");
    }
}

/// Statistics that record n < dims + 1 are warned about, on stderr and in the JSON.
#[test]
fn fid_warns_on_rank_deficient_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = mdm_metrics::npz::read_stats(&frechet_fixtures().join("d64_rankdef_a.npz")).unwrap();
    s.n = Some(40);
    let a = tmp.path().join("a.npz");
    mdm_metrics::npz::write_stats(&a, &s).unwrap();
    let b = frechet_fixtures().join("d64_rankdef_b.npz");
    let result = tmp.path().join("r.json");
    let out = mdm([
        OsStr::new("eval"),
        "fid".as_ref(),
        a.as_os_str(),
        b.as_os_str(),
        "--out".as_ref(),
        result.as_os_str(),
    ]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning:") && stderr.contains("n = 40 < dims + 1 = 65"),
        "{stderr}"
    );
    let r = read_json(&result);
    assert_eq!(
        (r["n_a"].as_u64(), r["warnings"].as_array().unwrap().len()),
        (Some(40), 1),
        "{r}"
    );
    let want = read_json(&frechet_fixtures().join("goldens.json"))["cases"]["d64_rankdef"]["fid"]["pytorch_fid"]
        .as_f64()
        .unwrap();
    assert!((r["fid"].as_f64().unwrap() - want).abs() <= 1e-4 * want, "{r}");
}

/// An image folder needs the Inception weights; a broken .npz is named in the error.
#[test]
fn fid_input_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let a = frechet_fixtures().join("d64_full_a.npz");
    let out = mdm([
        OsStr::new("eval"),
        "fid".as_ref(),
        a.as_os_str(),
        tmp.path().as_os_str(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--inception"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = tmp.path().join("bad.npz");
    std::fs::write(&bad, b"not a zip").unwrap();
    let out = mdm([OsStr::new("eval"), "fid".as_ref(), a.as_os_str(), bad.as_os_str()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.npz"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- `mdm eval coco-prep` and `mdm eval class-manifest` ----

/// Runs `mdm ARGS`, asserts success, returns stdout and stderr together.
fn coco_ok(args: &[&str]) -> String {
    let out = mdm(args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "mdm {args:?} failed:\n{text}");
    text
}

fn coco_jpeg(w: u32, h: u32, gray: bool) -> Vec<u8> {
    let rgb = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 5) as u8, (y * 3) as u8, ((x + y) * 2) as u8]));
    let img = if gray { image::DynamicImage::ImageLuma8(image::DynamicImage::ImageRgb8(rgb).to_luma8()) } else { rgb.into() };
    let mut c = std::io::Cursor::new(Vec::new());
    img.write_to(&mut c, image::ImageFormat::Jpeg).expect("encode");
    c.into_inner()
}

/// A mini val2014: images 1..=6 with two captions each (3 grayscale, 4 corrupt, 5 missing) and
/// one annotation of an unknown image. Returns (captions JSON, image folder).
fn mini_coco_tree(root: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let images = root.join("val2014");
    std::fs::create_dir_all(&images).expect("mkdir");
    let (mut imgs, mut anns) = (vec![], vec![]);
    for id in 1..=6u64 {
        let name = format!("COCO_val2014_{id:012}.jpg");
        match id {
            4 => std::fs::write(images.join(&name), b"corrupt").expect("write"),
            5 => {}
            _ => std::fs::write(images.join(&name), coco_jpeg(40 + id as u32 * 3, 30 + id as u32, id == 3)).expect("write"),
        }
        imgs.push(serde_json::json!({"id": id, "file_name": name, "width": 1, "height": 1}));
        for k in 0..2 {
            anns.push(serde_json::json!({"id": id * 10 + k, "image_id": id, "caption": format!(" A photo\n of {id}, take {k}. ")}));
        }
    }
    anns.push(serde_json::json!({"id": 999, "image_id": 12345, "caption": "orphan"}));
    let json = root.join("captions_val2014.json");
    std::fs::write(&json, serde_json::json!({"images": imgs, "annotations": anns}).to_string()).expect("write json");
    (json, images)
}

#[test]
fn coco_prep_writes_manifest_refs_and_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    let (json, images) = mini_coco_tree(dir.path());
    let out = dir.path().join("coco");
    let (j, i, o) = (json.to_str().expect("utf8"), images.to_str().expect("utf8"), out.to_str().expect("utf8"));
    let args = ["eval", "coco-prep", "--captions", j, "--images", i, "--out", o, "--n", "6", "--size", "32", "--workers", "2", "--quiet"];
    let text = coco_ok(&args);
    assert!(text.contains("6 pairs = 4 written + 0 kept + 2 rejected"), "{text}");
    assert!(text.contains("COCO_val2014_000000000004.jpg") && text.contains("COCO_val2014_000000000005.jpg"), "rejected paths printed:\n{text}");
    assert!(text.contains("1 annotations name no image"), "{text}");

    let manifest = std::fs::read_to_string(out.join("captions.jsonl")).expect("manifest");
    let rows: Vec<serde_json::Value> = manifest.lines().map(|l| serde_json::from_str(l).expect("row")).collect();
    assert_eq!(rows.len(), 4);
    let mut ids = std::collections::BTreeSet::new();
    for r in &rows {
        let image_id = r["image_id"].as_u64().expect("image_id");
        assert!([1, 2, 3, 6].contains(&image_id), "{r}");
        let id = r["id"].as_str().expect("id");
        assert!(id.starts_with(&format!("{image_id}_")) && ids.insert(id.to_string()), "{r}");
        let caption = r["caption"].as_str().expect("caption");
        assert!(caption.starts_with(&format!("A photo of {image_id}, take ")) && !caption.ends_with(' '), "{r}");
        let file = r["file"].as_str().expect("file");
        assert_eq!(file, format!("{image_id}.png"));
        let png = image::open(out.join("ref").join(file)).expect("reference png");
        assert_eq!((png.width(), png.height(), png.color()), (32, 32, image::ColorType::Rgb8));
    }
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("coco-prep.json")).expect("record")).expect("json");
    assert_eq!(record["counts"]["rejected"], 2);
    assert_eq!(record["counts"]["manifest_rows"], 4);
    assert_eq!(record["counts"]["orphan_annotations"], 1);
    assert_eq!(record["settings"]["size"], 32);

    // Rerun: every reference kept, the same manifest.
    let text = coco_ok(&args);
    assert!(text.contains("6 pairs = 0 written + 4 kept + 2 rejected"), "{text}");
    assert_eq!(std::fs::read_to_string(out.join("captions.jsonl")).expect("manifest"), manifest);

    // Other settings into the same folder are refused; n above the captioned images names numbers.
    let mut other = args;
    other[11] = "16";
    let e = mdm(&other);
    assert!(!e.status.success() && String::from_utf8_lossy(&e.stderr).contains("other settings"), "{e:?}");
    let mut many = args;
    many[9] = "7";
    let e = mdm(&many);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && err.contains("7 pairs") && err.contains("only 6"), "{err}");
}

#[test]
fn class_manifest_is_balanced_in_every_prefix() {
    let dir = tempfile::tempdir().expect("tmp");
    let read = |name: &str, seed: &str| {
        let path = dir.path().join(name);
        coco_ok(&["eval", "class-manifest", "--classes", "10", "--per-class", "3", "--seed", seed, "--out", path.to_str().expect("utf8")]);
        let text = std::fs::read_to_string(&path).expect("manifest");
        let rows: Vec<(String, i64)> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("row");
                (v["id"].as_str().expect("id").to_string(), v["class"].as_i64().expect("class"))
            })
            .collect();
        (text, rows)
    };
    let (text0, rows0) = read("a.jsonl", "0");
    assert_eq!(rows0.len(), 30);
    let mut counts = [0i32; 10];
    for (n, (id, class)) in rows0.iter().enumerate() {
        assert!(id.starts_with(&format!("{class}_")), "{id} {class}");
        counts[*class as usize] += 1;
        let (lo, hi) = (counts.iter().min().expect("min"), counts.iter().max().expect("max"));
        assert!(hi - lo <= 1, "prefix of {} rows unbalanced: {counts:?}", n + 1);
    }
    assert_eq!(counts, [3; 10]);
    let (again, _) = read("b.jsonl", "0");
    assert_eq!(again, text0, "same seed, same file");
    let (_, rows1) = read("c.jsonl", "1");
    assert_ne!(rows1, rows0, "another seed, another order");
    let (mut s0, mut s1) = (rows0.clone(), rows1);
    s0.sort();
    s1.sort();
    assert_eq!(s0, s1, "the same rows and ids whatever the seed");
}

/// Panics with the output unless the command succeeded; returns its stdout (fid-stats tests).
fn fid_stats_ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn fid_stats_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read JSON")).expect("JSON")
}

/// The FID Inception features (`[n, dims]`, row-major) that the Python references gave for the
/// committed PNGs in `mode` (metrics/tests/fixtures/inception, formula weights).
fn fid_stats_goldens(mode: &str, dims: usize) -> Vec<(String, Vec<f32>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("metrics/tests/fixtures/inception");
    let meta = fid_stats_json(&dir.join("features.json"));
    let blob = std::fs::read(dir.join("features.f32")).unwrap();
    let all: Vec<f32> = blob.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    meta["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["mode"] == mode && e["dims"] == dims as u64)
        .map(|e| {
            let off = e["offset"].as_u64().unwrap() as usize;
            (e["image"].as_str().unwrap().to_string(), all[off..off + dims].to_vec())
        })
        .collect()
}

/// fid-stats on a folder with a corrupt image: it is reported by path and counted, the others'
/// statistics are written (mu equal to the references' mean feature), with the JSON beside them;
/// a manifest picks its rows.
#[test]
fn fid_stats_counts_a_corrupt_image_and_writes_stats() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("inception.safetensors");
    mdm_metrics::inception::formula::write(&weights).unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("metrics/tests/fixtures/inception/images");
    let goldens = fid_stats_goldens("torch-fidelity", 64);
    assert_eq!(goldens.len(), 3);
    for (name, _) in &goldens {
        std::fs::copy(src.join(name), images.join(name)).unwrap();
    }
    std::fs::write(images.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(images.join("notes.txt"), b"not an image").unwrap();
    let out = tmp.path().join("stats/s.npz");
    let run = mdm([
        OsStr::new("eval"), OsStr::new("fid-stats"), images.as_os_str(), OsStr::new("--inception"), weights.as_os_str(),
        OsStr::new("--out"), out.as_os_str(), OsStr::new("--mode"), OsStr::new("torch-fidelity"), OsStr::new("--dims"),
        OsStr::new("64"), OsStr::new("--batch"), OsStr::new("2"), OsStr::new("--device"), OsStr::new("cpu"),
        OsStr::new("--workers"), OsStr::new("2"), OsStr::new("--quiet"),
    ]);
    let stdout = fid_stats_ok(&run);
    assert!(stdout.contains("4 images = 3 used + 1 rejected"), "{stdout}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains(&images.join("broken.png").display().to_string()), "{stderr}");

    let info = fid_stats_json(&out.with_extension("json"));
    assert_eq!(info["n"], 3);
    assert_eq!(info["mode"], "torch-fidelity");
    assert_eq!(info["dims"], 64);
    assert!(info["rejected"][0]["file"].as_str().unwrap().ends_with("broken.png"), "{info}");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&weights).unwrap()))
    };
    assert_eq!(info["inception_sha256"], sha.as_str());

    let stats = mdm_metrics::npz::read_stats(&out).unwrap();
    assert_eq!(stats.mu.len(), 64);
    assert_eq!(stats.sigma.len(), 64 * 64);
    let scale = goldens.iter().flat_map(|(_, f)| f).fold(0f32, |m, v| m.max(v.abs())) as f64;
    for d in 0..64 {
        let want = goldens.iter().map(|(_, f)| f[d] as f64).sum::<f64>() / 3.0;
        assert!((stats.mu[d] - want).abs() <= 2e-4 * scale, "mu[{d}] {} vs {want}", stats.mu[d]);
    }

    // a manifest of two rows, relative to its folder
    let manifest = images.join("rows.jsonl");
    let rows: String = goldens[..2].iter().map(|(n, _)| format!("{{\"file\": \"{n}\"}}\n")).collect();
    std::fs::write(&manifest, rows).unwrap();
    let out2 = tmp.path().join("m.npz");
    let stdout = fid_stats_ok(&mdm([
        OsStr::new("eval"), OsStr::new("fid-stats"), manifest.as_os_str(), OsStr::new("--inception"), weights.as_os_str(),
        OsStr::new("--out"), out2.as_os_str(), OsStr::new("--dims"), OsStr::new("64"), OsStr::new("--device"),
        OsStr::new("cpu"), OsStr::new("--quiet"),
    ]));
    assert!(stdout.contains("2 images = 2 used + 0 rejected"), "{stdout}");
    assert_eq!(fid_stats_json(&out2.with_extension("json"))["mode"], "clean");
}

fn clip_fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("metrics/tests/fixtures/clip")
}

fn clip_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read JSON")).expect("JSON")
}

/// Panics with the command's output unless it succeeded; returns its stdout.
fn clip_ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The fixture images as a `mdm sample --manifest` folder, with one missing and one corrupt
/// image added; returns (manifest, images dir).
fn clip_manifest(root: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let g = clip_json(&clip_fixtures().join("golden.json"));
    let dir = root.join("samples");
    std::fs::create_dir_all(&dir).unwrap();
    let mut lines = vec![];
    for (name, cap) in g["images"].as_array().unwrap().iter().zip(g["captions"].as_array().unwrap()) {
        let name = name.as_str().unwrap();
        let id = name.trim_end_matches(".png");
        // the default file name <id>.png
        std::fs::copy(clip_fixtures().join("images").join(name), dir.join(name)).unwrap();
        lines.push(serde_json::json!({"id": id, "caption": cap}).to_string());
    }
    lines.push(serde_json::json!({"id": "gone", "caption": "a missing image"}).to_string());
    std::fs::write(dir.join("broken.png"), b"not a png").unwrap();
    lines.push(serde_json::json!({"id": "b,roken", "caption": "a corrupt image", "file": "broken.png"}).to_string());
    let manifest = root.join("captions.jsonl");
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    (manifest, dir)
}

/// `mdm eval clip` equals torchmetrics' CLIPScore of the fixtures (≤ 1e-3), writes the
/// per-sample CSV and the JSON summary, and counts a missing and a corrupt image by path.
#[test]
fn clip_score_equals_torchmetrics_and_counts_bad_images() {
    let tmp = tempfile::tempdir().unwrap();
    let (manifest, dir) = clip_manifest(tmp.path());
    let g = clip_json(&clip_fixtures().join("golden.json"));
    let csv = tmp.path().join("out/scores.csv");
    let model = clip_fixtures().join("model");
    let out = mdm([
        OsStr::new("eval"),
        "clip".as_ref(),
        manifest.as_os_str(),
        "--images".as_ref(),
        dir.as_os_str(),
        "--clip".as_ref(),
        model.as_os_str(),
        "--out".as_ref(),
        csv.as_os_str(),
        "--batch".as_ref(),
        "2".as_ref(),
        "--device".as_ref(),
        "cpu".as_ref(),
    ]);
    let stdout = clip_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("over 5 images"), "{stdout}");
    assert!(stderr.contains("gone.png") && stderr.contains("broken.png"), "{stderr}");
    assert!(stderr.contains("cut"), "the long caption is reported: {stderr}");

    let want = g["clip_score"].as_f64().unwrap();
    let printed: f64 = stdout.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!((printed - want).abs() <= 1e-3, "printed {printed}, torchmetrics {want}");
    let summary = clip_json(&tmp.path().join("out/scores.json"));
    assert!((summary["clip_score"].as_f64().unwrap() - want).abs() <= 1e-3, "{summary}");
    assert_eq!(
        (summary["n"].as_u64(), summary["rows"].as_u64(), summary["missing"].as_u64(), summary["corrupt"].as_u64()),
        (Some(5), Some(7), Some(1), Some(1))
    );
    assert_eq!(summary["truncated_captions"].as_u64(), Some(1));

    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "id,file,score");
    assert_eq!(lines.len(), 6, "{text}");
    for ((line, name), s) in lines[1..].iter().zip(g["images"].as_array().unwrap()).zip(g["per_sample_scores"].as_array().unwrap()) {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[1], name.as_str().unwrap());
        let got: f64 = f[2].parse().unwrap();
        assert!((got - s.as_f64().unwrap()).abs() <= 1e-3, "{line}: torchmetrics {s}");
    }
}

#[test]
fn clip_input_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (manifest, dir) = clip_manifest(tmp.path());
    let model = clip_fixtures().join("model");
    let run = |m: &std::path::Path, images: &std::path::Path, clip: &std::path::Path| {
        mdm([
            OsStr::new("eval"),
            "clip".as_ref(),
            m.as_os_str(),
            "--images".as_ref(),
            images.as_os_str(),
            "--clip".as_ref(),
            clip.as_os_str(),
            "--device".as_ref(),
            "cpu".as_ref(),
            "--quiet".as_ref(),
        ])
    };
    let err = |o: Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // a CLIP folder without weights names the file
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(model.join("config.json"), empty.join("config.json")).unwrap();
    std::fs::copy(model.join("tokenizer.json"), empty.join("tokenizer.json")).unwrap();
    let e = err(run(&manifest, &dir, &empty));
    assert!(e.contains("model.safetensors"), "{e}");
    // a row without a caption names the manifest and the row
    let nocap = tmp.path().join("nocap.jsonl");
    std::fs::write(&nocap, "{\"id\": \"a\", \"caption\": \"x\"}\n{\"id\": \"b\"}\n").unwrap();
    let e = err(run(&nocap, &dir, &model));
    assert!(e.contains("nocap.jsonl") && e.contains("row 2"), "{e}");
    // nothing scorable is an error, after writing the summary
    let none = tmp.path().join("none.jsonl");
    std::fs::write(&none, "{\"id\": \"gone\", \"caption\": \"x\"}\n").unwrap();
    let e = err(run(&none, &dir, &model));
    assert!(e.contains("no image") && e.contains("gone.png"), "{e}");
}

// ---- tools/convert_inception.py ----

/// The torch-free converter reads both torch file formats that real torch wrote
/// (metrics/tests/fixtures/convert, tools/metrics_fixtures/converter.py): every tensor but
/// `num_batches_tracked`, as f32, equal to what safetensors.torch wrote; the source's sha256
/// goes into the metadata; a pickled object is refused with a message, not constructed.
#[test]
fn inception_converter_reads_both_torch_formats() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fx = root.join("metrics/tests/fixtures/convert");
    let py = root.join(".venv/bin/python");
    assert!(py.exists(), "{} missing: run scripts/setup.sh", py.display());
    let tmp = tempfile::tempdir().unwrap();
    let expected = std::fs::read(fx.join("expected.safetensors")).unwrap();
    let expected = safetensors::SafeTensors::deserialize(&expected).unwrap();
    let mut want: Vec<String> = expected.names().into_iter().map(str::to_string).collect();
    want.sort();
    assert_eq!(want.len(), 7);
    for format in ["legacy", "zip"] {
        let src = fx.join(format!("{format}.pth"));
        let dst = tmp.path().join(format!("{format}.safetensors"));
        let out = std::process::Command::new(&py).arg(root.join("tools/convert_inception.py")).arg(&src).arg(&dst).output().unwrap();
        assert!(out.status.success(), "{format}: {}", String::from_utf8_lossy(&out.stderr));
        let sha = {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(std::fs::read(&src).unwrap()))
        };
        assert!(String::from_utf8_lossy(&out.stdout).contains(&sha), "{format}: the printed sha256 is not the source's");
        let bytes = std::fs::read(&dst).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().and_then(|m| m.get("source_sha256")), Some(&sha), "{format}");
        let got = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = got.names().into_iter().map(str::to_string).collect();
        names.sort();
        assert_eq!(names, want, "{format}: num_batches_tracked dropped, everything else kept");
        for name in &want {
            let (a, b) = (got.tensor(name).unwrap(), expected.tensor(name).unwrap());
            assert_eq!(a.dtype(), safetensors::Dtype::F32, "{format} {name}");
            assert_eq!((a.shape(), a.data()), (b.shape(), b.data()), "{format} {name}: values differ from torch's");
        }
    }
    let out = std::process::Command::new(&py)
        .arg(root.join("tools/convert_inception.py"))
        .arg(fx.join("refused.pth"))
        .arg(tmp.path().join("refused.safetensors"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("refusing to unpickle argparse.Namespace"), "{stderr}");
    assert!(!tmp.path().join("refused.safetensors").exists());
}
