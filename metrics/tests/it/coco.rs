//! The zero-shot COCO preparation on a mini COCO made here: selection independent of the JSON's
//! order, caption normalisation, orphans and counts, crop geometry, grayscale, bad and missing
//! images, resume.

use std::io::Cursor;
use std::path::Path;

use image::{GrayImage, Rgb, RgbImage};
use mdm_metrics::coco::{self, Captions, Orphan, RefOptions, RefStatus};
use mdm_metrics::Error;
use serde_json::{json, Value};

fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut c = Cursor::new(Vec::new());
    img.write_to(&mut c, format).expect("encode");
    c.into_inner()
}

fn rgb_jpeg(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 + seed) as u8, (y * 5) as u8, ((x ^ y) + seed * 3) as u8]));
    encode(img.into(), image::ImageFormat::Jpeg)
}

fn gray_jpeg(w: u32, h: u32) -> Vec<u8> {
    encode(GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 3 + y * 2) as u8])).into(), image::ImageFormat::Jpeg)
}

/// Images 1..=8 (8 has no caption), 4 corrupt, 5 missing; annotation 900 names unknown image 999,
/// annotation 31 is only whitespace. Returns the JSON (images and annotations in file order).
fn mini_coco(dir: &Path) -> Value {
    std::fs::create_dir_all(dir).expect("mkdir");
    let files: [(u64, Option<Vec<u8>>); 8] = [
        (1, Some(rgb_jpeg(37, 23, 1))),
        (2, Some(gray_jpeg(19, 41))),
        (3, Some(rgb_jpeg(64, 48, 3))),
        (4, Some(b"not a jpeg at all".to_vec())),
        (5, None),
        (6, Some(rgb_jpeg(33, 33, 6))),
        (7, Some(gray_jpeg(50, 21))),
        (8, Some(rgb_jpeg(20, 30, 8))),
    ];
    let mut images = vec![];
    for (id, bytes) in files {
        let name = format!("COCO_val2014_{id:012}.jpg");
        if let Some(b) = bytes {
            std::fs::write(dir.join(&name), b).expect("write image");
        }
        images.push(json!({"id": id, "file_name": name, "width": 0, "height": 0, "license": 3}));
    }
    let mut annotations = vec![];
    for id in 1..=7u64 {
        for k in 0..(1 + id % 3) {
            let ann = id * 10 + k;
            annotations.push(json!({"id": ann, "image_id": id, "caption": format!("  image {id}\n caption\t{k}  ")}));
        }
    }
    annotations.push(json!({"id": 900, "image_id": 999, "caption": "an orphan"}));
    annotations.push(json!({"id": 31, "image_id": 3, "caption": " \n\t "}));
    json!({"info": {"year": 2014}, "images": images, "licenses": [], "annotations": annotations})
}

/// The same content with both lists reversed.
fn reversed(v: &Value) -> Value {
    let mut v = v.clone();
    for key in ["images", "annotations"] {
        v[key].as_array_mut().expect("array").reverse();
    }
    v
}

fn parse(v: &Value) -> Captions {
    Captions::from_json(v.to_string().as_bytes(), Path::new("captions.json")).expect("parse")
}

#[test]
fn selection_depends_on_seed_not_on_json_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let v = mini_coco(dir.path());
    let (a, b) = (parse(&v), parse(&reversed(&v)));
    assert_eq!(a.images, b.images);
    for seed in [0, 1, 7] {
        assert_eq!(a.select(5, seed).expect("select"), b.select(5, seed).expect("select"), "seed {seed}");
    }
    let s0 = a.select(7, 0).expect("select");
    let s1 = a.select(7, 1).expect("select");
    assert_ne!(s0, s1, "another seed draws another order or other captions");
    // A smaller n is a prefix of a larger one with the same seed.
    assert_eq!(a.select(3, 0).expect("select")[..], s0[..3]);
    // All 7 captioned images once each, each with one of its own captions.
    let mut ids: Vec<u64> = s0.iter().map(|p| p.image_id).collect();
    ids.sort();
    assert_eq!(ids, (1..=7).collect::<Vec<_>>());
    for p in &s0 {
        assert!(p.ann_id / 10 == p.image_id && p.caption.starts_with(&format!("image {} caption ", p.image_id)), "{p:?}");
        assert_eq!(p.file(), format!("{}.png", p.image_id));
        assert_eq!(p.id(), format!("{}_{}", p.image_id, p.ann_id));
        assert_eq!(p.file_name, format!("COCO_val2014_{:012}.jpg", p.image_id));
    }
    // The caption choice varies with the seed somewhere (images 2, 5 have three captions).
    let anns = |seed| a.select(7, seed).expect("select").into_iter().map(|p| (p.image_id, p.ann_id)).collect::<std::collections::BTreeSet<_>>();
    assert!((0..8).any(|s| anns(s) != anns(0)), "the caption picked per image never changes with the seed");
}

#[test]
fn counts_orphans_empty_captions_and_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let caps = parse(&mini_coco(dir.path()));
    assert_eq!(caps.images.len(), 8);
    assert_eq!(caps.captioned(), 7);
    assert_eq!(caps.orphans, vec![Orphan { ann_id: 900, image_id: 999 }]);
    assert_eq!(caps.empty, 1);
    assert_eq!(caps.images[0].captions[1].text, "image 1 caption 1", "whitespace trimmed and collapsed");
    assert!(caps.images[7].captions.is_empty());

    let e = caps.select(8, 0).expect_err("8 > 7 captioned images");
    let msg = e.to_string();
    assert!(msg.contains("captions.json") && msg.contains("8 pairs") && msg.contains("only 7 of its 8 images"), "{msg}");
    assert!(matches!(caps.select(0, 0), Err(Error::Input(_))));

    for (what, bad) in [
        ("annotations", json!({"images": []})),
        ("images", json!({"annotations": []})),
        ("caption", json!({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "image_id": 1}]})),
        ("file_name", json!({"images": [{"id": 1}], "annotations": []})),
    ] {
        let e = Captions::from_json(bad.to_string().as_bytes(), Path::new("x/bad.json")).expect_err(what);
        let msg = e.to_string();
        assert!(matches!(e, Error::Invalid { .. }) && msg.contains("x/bad.json") && msg.contains(what), "{what}: {msg}");
    }
    let dup = json!({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}], "annotations": []});
    let msg = Captions::from_json(dup.to_string().as_bytes(), Path::new("d.json")).expect_err("dup").to_string();
    assert!(msg.contains("image id 1 appears twice"), "{msg}");
    let missing = Captions::read(&dir.path().join("nope.json")).expect_err("missing file");
    assert!(matches!(missing, Error::Io { ref path, .. } if path.ends_with("nope.json")), "{missing}");
}

#[test]
fn shuffle_is_a_seeded_permutation() {
    let perm = |seed| {
        let mut v: Vec<u32> = (0..100).collect();
        coco::shuffle(&mut v, seed);
        v
    };
    let p = perm(3);
    let mut sorted = p.clone();
    sorted.sort();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    assert_eq!(p, perm(3));
    assert_ne!(p, perm(4));
    assert_ne!(p, (0..100).collect::<Vec<_>>());
}

const M: Rgb<u8> = Rgb([255, 0, 255]);
const Q: [Rgb<u8>; 4] = [Rgb([200, 10, 10]), Rgb([10, 200, 10]), Rgb([10, 10, 200]), Rgb([230, 230, 30])];

/// A `w`×`h` PNG-exact image whose centre square (offset rounded down) has four quadrant colours
/// and whose margins are magenta.
fn quadrants(w: u32, h: u32) -> RgbImage {
    let s = w.min(h);
    let (x0, y0) = ((w - s) / 2, (h - s) / 2);
    RgbImage::from_fn(w, h, |x, y| {
        if x < x0 || y < y0 || x >= x0 + s || y >= y0 + s {
            return M;
        }
        let (qx, qy) = (((x - x0) * 2 / s) as usize, ((y - y0) * 2 / s) as usize);
        Q[qy * 2 + qx]
    })
}

#[test]
fn centre_crop_takes_the_middle_square_rounded_down() {
    let dir = tempfile::tempdir().expect("tmp");
    // Odd margins: 31×20 crops columns 5..25, 20×33 crops rows 6..26.
    for (w, h) in [(31, 20), (20, 33), (20, 20)] {
        let img = quadrants(w, h);
        let path = dir.path().join(format!("q{w}x{h}.png"));
        img.save(&path).expect("save");
        let same = coco::reference_image(&path, 20).expect("reference");
        assert_eq!(same, quadrants(20, 20), "{w}x{h} at its own size is exactly the centre square");

        // Downsampled 2×: pixels at least the kernel's reach (2 output pixels) from a quadrant
        // edge are their quadrant's colour.
        let small = coco::reference_image(&path, 10).expect("reference");
        assert_eq!(small.dimensions(), (10, 10));
        let far = |v: u32| !(3..7).contains(&v);
        let mut worst = 0i32;
        for (x, y, p) in small.enumerate_pixels().filter(|(x, y, _)| far(*x) && far(*y)) {
            let q = Q[(y as usize / 5) * 2 + x as usize / 5];
            worst = worst.max((0..3).map(|c| (p[c] as i32 - q[c] as i32).abs()).max().unwrap_or(0));
        }
        assert!(worst <= 1, "{w}x{h}: interior pixels off their quadrant by {worst}");
    }
}

#[test]
fn grayscale_becomes_rgb() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("g.jpg");
    std::fs::write(&path, gray_jpeg(19, 41)).expect("write");
    let img = coco::reference_image(&path, 16).expect("reference");
    assert_eq!(img.dimensions(), (16, 16));
    assert!(img.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    assert!(img.pixels().any(|p| p[0] > 40), "not all black");
}

#[test]
fn references_counts_rejects_and_resume() {
    let dir = tempfile::tempdir().expect("tmp");
    let images = dir.path().join("val2014");
    let refs = dir.path().join("out/ref");
    let caps = parse(&mini_coco(&images));
    let pairs = caps.select(7, 0).expect("select");
    let opts = RefOptions { size: 16, workers: 3 };
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let on_done = |_: &mdm_metrics::Result<RefStatus>| {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let done = coco::prepare_references(&pairs, &images, &refs, &opts, &on_done).expect("prepare");
    assert_eq!(done.len(), 7);
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 7);
    for (p, r) in pairs.iter().zip(&done) {
        match (p.image_id, r) {
            (4, Err(e @ Error::Invalid { path, .. })) => assert!(path.ends_with("COCO_val2014_000000000004.jpg"), "{e}"),
            (5, Err(e @ Error::Io { path, .. })) => assert!(path.ends_with("COCO_val2014_000000000005.jpg"), "{e}"),
            (4 | 5, r) => panic!("image {} should be rejected: {r:?}", p.image_id),
            (_, Ok(RefStatus::Written)) => {
                let img = image::open(refs.join(p.file())).expect("open").to_rgb8();
                assert_eq!(img.dimensions(), (16, 16));
            }
            (_, r) => panic!("image {}: {r:?}", p.image_id),
        }
    }
    let mut names: Vec<String> =
        std::fs::read_dir(&refs).expect("ls").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["1.png", "2.png", "3.png", "6.png", "7.png"], "no temporary files left");

    // Resume: valid PNGs are kept byte for byte; a broken one and one of the wrong size are redone.
    let before = std::fs::read(refs.join("1.png")).expect("read");
    std::fs::write(refs.join("3.png"), b"truncated").expect("break");
    RgbImage::new(8, 8).save(refs.join("6.png")).expect("wrong size");
    let again = coco::prepare_references(&pairs, &images, &refs, &opts, &|_| {}).expect("prepare");
    let status = |id| pairs.iter().zip(&again).find(|(p, _)| p.image_id == id).map(|(_, r)| r.as_ref().ok().copied());
    assert_eq!(status(1), Some(Some(RefStatus::Kept)));
    assert_eq!(status(2), Some(Some(RefStatus::Kept)));
    assert_eq!(status(7), Some(Some(RefStatus::Kept)));
    assert_eq!(status(3), Some(Some(RefStatus::Written)));
    assert_eq!(status(6), Some(Some(RefStatus::Written)));
    assert_eq!(status(4), Some(None));
    assert_eq!(std::fs::read(refs.join("1.png")).expect("read"), before);
    assert!(coco::is_valid_reference(&refs.join("6.png"), 16));

    // A file_name that leaves the image folder is a rejected pair, not a read outside it.
    let mut escape = pairs[0].clone();
    escape.file_name = "../val2014/COCO_val2014_000000000001.jpg".into();
    escape.image_id = 77;
    let r = coco::prepare_one(&escape, &images, &refs, 16);
    assert!(matches!(r, Err(Error::Invalid { .. })), "{r:?}");
}

#[test]
fn manifest_rows() {
    let dir = tempfile::tempdir().expect("tmp");
    let caps = parse(&mini_coco(dir.path()));
    let pairs = caps.select(4, 2).expect("select");
    let path = dir.path().join("captions.jsonl");
    coco::write_manifest(&path, &pairs).expect("write");
    let text = std::fs::read_to_string(&path).expect("read");
    let rows: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(rows.len(), 4);
    for (row, p) in rows.iter().zip(&pairs) {
        assert_eq!(row["id"], json!(p.id()));
        assert_eq!(row["caption"], json!(p.caption));
        assert_eq!(row["image_id"], json!(p.image_id));
        assert_eq!(row["file"], json!(format!("{}.png", p.image_id)));
    }
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/coco").join(name)
}

/// Largest per-channel difference between two RGB images of one size.
fn max_diff(a: &RgbImage, b: &RgbImage) -> i32 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| (*x as i32 - *y as i32).abs()).max().unwrap_or(0)
}

/// Against PIL (tools/metrics_fixtures/coco.py): the centre crop of a 53×37 image (smooth
/// ramps, wrap-around edges, a sharp diagonal) resized with `Image.BICUBIC` to 24 (down) and
/// 48 (up): bit for bit. The `image` crate's CatmullRom, the same kernel without PIL's 8-bit
/// rounding between passes, is measurably off, which is why it is not used.
#[test]
fn crop_resize_matches_pil_bicubic() {
    let input = fixture("input.png");
    for size in [24, 48] {
        let ours = coco::reference_image(&input, size).expect("reference");
        let pil = image::open(fixture(&format!("bicubic{size}.png"))).expect("golden").to_rgb8();
        assert_eq!(max_diff(&ours, &pil), 0, "size {size}: not PIL's bytes");

        let src = image::open(&input).expect("input").to_rgb8();
        let sq = image::imageops::crop_imm(&src, 8, 0, 37, 37).to_image();
        let cr = image::imageops::resize(&sq, size, size, image::imageops::FilterType::CatmullRom);
        let d = max_diff(&cr, &pil);
        eprintln!("size {size}: CatmullRom is {d} levels from PIL at most");
        assert!(d > 0);
    }
}

/// CMYK and grayscale JPEGs decode to RGB as PIL's `convert("RGB")` does (the decoders' IDCTs
/// differ: measured 1 level at most).
#[test]
fn cmyk_and_gray_jpegs_decode_like_pil() {
    for (name, size, tol) in [("cmyk", (40, 30), 2), ("gray", (35, 22), 2)] {
        let s = size.0.min(size.1);
        let ours = coco::reference_image(&fixture(&format!("{name}.jpg")), s).expect("decode");
        let pil = image::open(fixture(&format!("{name}_rgb.png"))).expect("golden").to_rgb8();
        let pil = coco::centre_crop_resize(&pil, s);
        let d = max_diff(&ours, &pil);
        eprintln!("{name} JPEG: max |ours - PIL| = {d}");
        assert!(d <= tol, "{name}: {d} levels from PIL");
    }
}
