//! `mdm eval ...` end to end through the binary.

use std::ffi::OsStr;
use std::process::Output;

/// Runs the `mdm` binary with `args`.
fn mdm<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    std::process::Command::new(env!("CARGO_BIN_EXE_mdm")).args(args).output().expect("run mdm")
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
