//! End-to-end image ingestion on inputs made here: every decode oddity, ImageNet train/val
//! layouts and labels, CC12M tars (broken members, unsafe paths) and tables, determinism
//! across thread counts, parts + merge, and resume after an interrupted run.

use crate::image_common;
use crate::resume_common;
use resume_common::{simulate_crash, snapshot};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image_common::*;
use mdm_ingest::image::Processor;
use mdm_ingest::rejects::{RejectReason, RejectRecord};
use mdm_ingest::settings::{Crop, ImageSettings, Part, SmallPolicy, Validated};
use mdm_ingest::sources::cc12m::{self, Cc12mOptions};
use mdm_ingest::sources::imagenet::{self, ImagenetOptions, Split};
use mdm_ingest::sources::RunOptions;
use mdm_shards::{Body, Manifest, Record, ShardSet};

fn settings() -> ImageSettings {
    ImageSettings { resolution: 64, extra_resolutions: vec![32], shard_inputs: 4, ..ImageSettings::default() }
}

/// Settings as the sources and processors take them.
fn valid(s: ImageSettings) -> Validated<ImageSettings> {
    s.validate().expect("valid settings")
}

fn run_opts(out: &Path, threads: usize, part: Option<Part>) -> RunOptions {
    RunOptions { out: out.to_path_buf(), threads, part, progress: false }
}

fn records(dir: &Path, manifest: &str) -> Vec<Record> {
    let set = ShardSet::open(dir.join(manifest)).expect("open shard set");
    set.records().collect::<Result<Vec<_>, _>>().expect("read records")
}

fn rejects(path: &Path) -> Vec<RejectRecord> {
    std::fs::read_to_string(path)
        .expect("rejects file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("reject line"))
        .collect()
}

fn mean_rgb(j: &[u8], x0: u32, x1: u32) -> [f64; 3] {
    let (w, h, px) = decode(j);
    let mut s = [0f64; 3];
    let mut n = 0f64;
    for y in 0..h {
        for x in x0.min(w)..x1.min(w) {
            let i = ((y * w + x) * 3) as usize;
            for c in 0..3 {
                s[c] += f64::from(px[i + c]);
            }
            n += 1.0;
        }
    }
    s.map(|v| v / n)
}

#[test]
fn oddities_decode_to_the_right_pixels() {
    let mut p = Processor::new(&valid(settings())).unwrap();
    // CMYK (Adobe YCCK) red comes out red
    let out = p.process(&cmyk_red_jpeg(80, 80)).unwrap();
    let m = mean_rgb(&out.jpegs[0], 0, 64);
    assert!(m[0] > 200.0 && m[1] < 50.0 && m[2] < 50.0, "CMYK red decoded as {m:?}");
    // transparent half composited on white, opaque half blue
    let out = p.process(&png_alpha(80, 80)).unwrap();
    let left = mean_rgb(&out.jpegs[0], 0, 20);
    let right = mean_rgb(&out.jpegs[0], 44, 64);
    assert!(left.iter().all(|&v| v > 235.0), "alpha not on white: {left:?}");
    assert!(right[2] > 200.0 && right[0] < 50.0, "opaque part: {right:?}");
    // EXIF orientation 6 on a 120x60 picture: displayed 60x120
    let out = p.process(&with_exif_orientation(&jpeg(120, 60, 5), 6)).unwrap();
    assert_eq!((out.width, out.height), (60, 120));
    // every stored JPEG has the stored resolution, largest first
    for bytes in [progressive_jpeg(160, 100), gray_jpeg(100, 70), png16(90, 70), png_palette(64, 64), webp(70, 70)] {
        let out = p.process(&bytes).unwrap();
        assert_eq!(out.jpegs.len(), 2);
        assert_eq!(decode(&out.jpegs[0]).0, 64);
        assert_eq!(decode(&out.jpegs[0]).1, 64);
        assert_eq!(decode(&out.jpegs[1]).0, 32);
    }
    // palette rows are red / green / blue / yellow bands: the top stays red
    let out = p.process(&png_palette(64, 64)).unwrap();
    let (_, _, px) = decode(&out.jpegs[0]);
    assert!(px[0] > 200 && px[1] < 60, "palette top-left {:?}", &px[..3]);
    // rejects with their reasons
    let full = jpeg(200, 150, 7);
    let cases: Vec<(Vec<u8>, RejectReason)> = vec![
        (Vec::new(), RejectReason::Empty),
        (b"not an image".to_vec(), RejectReason::NotAnImage),
        (full[..full.len() / 2].to_vec(), RejectReason::Corrupt),
        (huge_header_jpeg(60000, 60000), RejectReason::DecompressionBomb),
        (jpeg(16, 16, 1), RejectReason::TooSmall),
        (b"GIF89a\x01\x00\x01\x00".to_vec(), RejectReason::UnsupportedFormat),
    ];
    for (bytes, reason) in cases {
        assert_eq!(p.process(&bytes).unwrap_err().reason, reason);
    }
    // between min_side and R: upscaled, or rejected with small = reject
    assert_eq!(decode(&p.process(&jpeg(40, 50, 1)).unwrap().jpegs[0]).0, 64);
    let strict = ImageSettings { small: SmallPolicy::Reject, ..settings() };
    assert_eq!(Processor::new(&valid(strict)).unwrap().process(&jpeg(40, 50, 1)).unwrap_err().reason, RejectReason::TooSmall);
    // keep aspect: shortest side R, crop box = whole source
    let keep = ImageSettings { crop: Crop::KeepAspect, ..settings() };
    let out = Processor::new(&valid(keep)).unwrap().process(&jpeg(128, 64, 1)).unwrap();
    assert_eq!(out.crop_box, Some([0, 0, 128, 64]));
    assert_eq!((decode(&out.jpegs[0]).0, decode(&out.jpegs[0]).1), (128, 64));
}

#[test]
fn dct_scaling_stays_close_to_full_decode() {
    // smooth content: both paths must agree on what an antialiased 64x64 of it looks like
    let (w, h) = (1024u32, 768u32);
    let px: Vec<u8> = (0..w * h).flat_map(|i| [(i % w * 255 / w) as u8, (i / w * 255 / h) as u8, 128]).collect();
    let big = tj_encode(&px, w, h, turbojpeg::raw::TJPF_TJPF_RGB, turbojpeg::raw::TJSAMP_TJSAMP_420, 0);
    let fast = Processor::new(&valid(settings())).unwrap().process(&big).unwrap();
    let slow = Processor::new(&valid(ImageSettings { dct_scaling: false, ..settings() })).unwrap().process(&big).unwrap();
    let (a, b) = (decode(&fast.jpegs[0]).2, decode(&slow.jpegs[0]).2);
    let mad = a.iter().zip(&b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs()).sum::<f64>() / a.len() as f64;
    assert!(mad < 4.0, "mean abs difference {mad}");
    assert_eq!((fast.width, fast.height), (1024, 768));
}

#[test]
fn imagenet_train_labels_rejects_and_thread_independence() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ILSVRC");
    let (written, reasons) = imagenet_tree(&root);
    let opts = ImagenetOptions { src: root.clone(), split: Split::Train, val_labels: None, synset_order: None };
    let out1 = tmp.path().join("out1");
    let sum = imagenet::ingest(&opts, &valid(settings()), &run_opts(&out1, 1, None)).unwrap();
    assert_eq!(sum.stats.written, written);
    let got: Vec<(&str, u64)> = sum.stats.rejected.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(got, reasons);
    assert_eq!(sum.stats.inputs, written + reasons.iter().map(|r| r.1).sum::<u64>());

    let set = ShardSet::open(&out1).unwrap();
    let classes = set.manifest.classes.clone().unwrap();
    assert_eq!(classes.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["n01440764", "n01443537", "n02102040"]);
    assert_eq!(classes[0].name, "tench, Tinca tinca");
    assert!(set.manifest.settings.as_ref().unwrap()["image"]["resolution"] == 64);
    let recs = records(&out1, "manifest.json");
    assert_eq!(recs.len() as u64, written);
    for r in &recs {
        let Body::Image(img) = &r.body else { panic!("image body") };
        let wnid = r.id.split('/').next().unwrap();
        assert_eq!(img.label, Some(classes.iter().position(|c| c.id == wnid).unwrap() as i32), "{}", r.id);
        assert_eq!(decode(&img.jpegs[0]).0, 64);
        assert_eq!(decode(&img.jpegs[1]).0, 32);
        assert_eq!(r.source_sha256, mdm_shards::sha256(&std::fs::read(root.join(&r.source)).unwrap()));
    }
    let exif = recs.iter().find(|r| r.id.ends_with("_exif")).unwrap();
    assert_eq!((exif.width, exif.height), (60, 120));
    let rj = rejects(&out1.join("rejects.jsonl"));
    assert_eq!(rj.len() as u64, sum.stats.rejected_total());
    assert!(rj.iter().any(|r| r.reason == RejectReason::DecompressionBomb && r.source.ends_with("n02102040_huge.JPEG")));

    // three workers: the same bytes
    let out3 = tmp.path().join("out3");
    imagenet::ingest(&opts, &valid(settings()), &run_opts(&out3, 3, None)).unwrap();
    assert_eq!(snapshot(&out1), snapshot(&out3));
    let report = mdm_shards::verify(&ShardSet::open(&out3).unwrap(), |_| {});
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn imagenet_val_flat_and_sorted() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ILSVRC");
    imagenet_tree(&root);
    let opts = ImagenetOptions { src: root.clone(), split: Split::Val, val_labels: None, synset_order: None };
    let out = tmp.path().join("val");
    let sum = imagenet::ingest(&opts, &valid(settings()), &run_opts(&out, 2, None)).unwrap();
    assert_eq!((sum.stats.written, sum.stats.rejected.get("no-label").copied()), (3, Some(1)));
    let recs = records(&out, "manifest.json");
    // LOC_val_solution: image i has wnid i % 3, sorted wnid index = i % 3
    for r in &recs {
        let i: usize = r.id.trim_start_matches("ILSVRC2012_val_").parse().unwrap();
        let Body::Image(img) = &r.body else { panic!() };
        assert_eq!(img.label, Some((i % 3) as i32));
    }
    // the ground-truth form with integer ids needs the ILSVRC2012_ID order
    let gt = tmp.path().join("ILSVRC2012_validation_ground_truth.txt");
    std::fs::write(&gt, "3\n1\n2\n1\n").unwrap();
    let order = tmp.path().join("order.txt");
    std::fs::write(&order, "n02102040\nn01443537\nn01440764\n").unwrap();
    let o2 = ImagenetOptions { val_labels: Some(gt.clone()), ..opts.clone() };
    assert!(imagenet::ingest(&o2, &valid(settings()), &run_opts(&tmp.path().join("x"), 1, None)).is_err());
    let o3 = ImagenetOptions { val_labels: Some(gt), synset_order: Some(order), ..opts };
    let out3 = tmp.path().join("val3");
    imagenet::ingest(&o3, &valid(settings()), &run_opts(&out3, 1, None)).unwrap();
    let labels: Vec<Option<i32>> = records(&out3, "manifest.json")
        .iter()
        .map(|r| match &r.body {
            Body::Image(i) => i.label,
            _ => None,
        })
        .collect();
    // ids 3,1,2,1 -> n01440764 (0), n02102040 (2), n01443537 (1), n02102040 (2)
    assert_eq!(labels, vec![Some(0), Some(2), Some(1), Some(2)]);

    // the devkit's meta.mat gives the same order: beside the ground truth (found), or as
    // --synset-order. Fixtures made by scipy 1.17.1 (`tests/data/make_meta.py`): the devkit's
    // `synsets` fields, ids 1..3 the classes above, 4 a parent synset; compressed (as MATLAB's
    // default -v7 writes) and plain.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    std::fs::copy(data.join("meta_compressed.mat"), tmp.path().join("meta.mat")).unwrap();
    let out4 = tmp.path().join("val4");
    imagenet::ingest(&o2, &valid(settings()), &run_opts(&out4, 1, None)).unwrap();
    let o5 = ImagenetOptions { synset_order: Some(data.join("meta_plain.mat")), ..o2.clone() };
    let out5 = tmp.path().join("val5");
    imagenet::ingest(&o5, &valid(settings()), &run_opts(&out5, 1, None)).unwrap();
    for out in [&out4, &out5] {
        let got: Vec<Option<i32>> = records(out, "manifest.json")
            .iter()
            .map(|r| match &r.body {
                Body::Image(i) => i.label,
                _ => None,
            })
            .collect();
        assert_eq!(got, labels, "{}", out.display());
    }
    let order = mdm_ingest::sources::mat5::synset_order(&std::fs::read(data.join("meta_compressed.mat")).unwrap()).unwrap();
    assert_eq!(order, ["n02102040", "n01443537", "n01440764", "n01439121"]);
    let vars = mdm_ingest::sources::mat5::read(&std::fs::read(data.join("meta_plain.mat")).unwrap()).unwrap();
    let synsets = &vars[0].1;
    assert_eq!(synsets.field(3, "gloss"), Some(&mdm_ingest::sources::mat5::Value::Char("a soft-finned fish — ü".into())));
    assert_eq!(synsets.field(3, "children"), Some(&mdm_ingest::sources::mat5::Value::Numeric(vec![2.0, 3.0])));
    assert!(mdm_ingest::sources::mat5::read(b"MATLAB 7.3 MAT-file, HDF5").is_err());
}

/// An img2dataset-shaped tar: KEY.jpg/KEY.txt/KEY.json, with a sample without image, a bad
/// caption, a corrupt image and an unsafe member name.
fn cc12m_tar(path: &Path, first: u32, n: u32) {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // raw name bytes, so that unsafe names reach the archive as they would in the wild
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    for i in first..first + n {
        let key = format!("{i:09}");
        add(&format!("{key}.jpg"), &jpeg(96 + i % 7, 80, i as u8));
        add(&format!("{key}.txt"), format!("  caption\tnumber {i}\n").as_bytes());
        add(&format!("{key}.json"), format!("{{\"key\": \"{key}\"}}").as_bytes());
    }
    add(&format!("{:09}.json", first + n), b"{}");
    add(&format!("{:09}.jpg", first + n + 1), &jpeg(90, 90, 1));
    add(&format!("{:09}.txt", first + n + 1), &[0xff, 0xfe, 0x00]);
    add(&format!("{:09}.jpg", first + n + 2), b"\xff\xd8\xff\xe0garbage");
    add(&format!("{:09}.txt", first + n + 2), b"fine caption");
    add("../evil.jpg", &jpeg(90, 90, 1));
    add("/abs/evil.txt", b"x");
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// img2dataset's parquet sidecar of a tar: one row per url (key, status, error_message, url,
/// caption), as its writer makes them.
fn img2dataset_sidecar(path: &Path, rows: &[(String, &str, Option<&str>)]) {
    use arrow::array::{ArrayRef, RecordBatch, StringArray};
    use std::sync::Arc;
    let key = StringArray::from_iter_values(rows.iter().map(|r| r.0.as_str()));
    let url = StringArray::from_iter_values(rows.iter().map(|r| format!("http://example.com/{}.jpg", r.0.trim_start_matches('0'))));
    let caption = StringArray::from_iter_values(rows.iter().map(|r| format!("caption of {}", r.0)));
    let status = StringArray::from_iter_values(rows.iter().map(|r| r.1));
    let message = StringArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>());
    let cols: Vec<(&str, ArrayRef)> =
        vec![("url", Arc::new(url)), ("caption", Arc::new(caption)), ("key", Arc::new(key)), ("status", Arc::new(status)), ("error_message", Arc::new(message))];
    let batch = RecordBatch::try_from_iter(cols).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn cc12m_tars_table_parts_merge_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let tars = tmp.path().join("cc12m");
    std::fs::create_dir_all(&tars).unwrap();
    for t in 0..3u32 {
        cc12m_tar(&tars.join(format!("{t:05}.tar")), t * 100, 5);
    }
    // img2dataset's sidecar of 00000.tar: its 5 good keys, then two urls that never made it
    let mut rows: Vec<(String, &str, Option<&str>)> = (0..5).map(|i| (format!("{i:09}"), "success", None)).collect();
    rows.push(("000000050".into(), "failed_to_download", Some("HTTP Error 404: Not Found")));
    rows.push(("000000051".into(), "failed_to_resize", None));
    img2dataset_sidecar(&tars.join("00000.parquet"), &rows);
    std::fs::write(tars.join("00000_stats.json"), b"{}").unwrap();
    let opts = Cc12mOptions { src: format!("{}/{{00000..00002}}.tar", tars.display()), image_root: None, text: None };
    let full = tmp.path().join("full");
    let sum = cc12m::ingest(&opts, &valid(settings()), &run_opts(&full, 2, None)).unwrap();
    assert_eq!(sum.stats.written, 15);
    let rej = &sum.stats.rejected;
    assert_eq!(rej.get("not-downloaded"), Some(&2));
    assert_eq!(sum.stats.inputs, sum.stats.written + sum.stats.rejected_total());
    let nd: Vec<RejectRecord> = rejects(&sum.rejects).into_iter().filter(|r| r.reason == RejectReason::NotDownloaded).collect();
    let nd: Vec<(&str, &str, &str)> = nd.iter().map(|r| (r.id.as_str(), r.source.as_str(), r.detail.as_str())).collect();
    assert_eq!(
        nd,
        [
            ("000000050", "http://example.com/50.jpg", "HTTP Error 404: Not Found"),
            ("000000051", "http://example.com/51.jpg", "failed_to_resize")
        ]
    );
    assert_eq!(rej.get("missing-image"), Some(&3));
    assert_eq!(rej.get("bad-caption"), Some(&3));
    assert_eq!(rej.get("corrupt").copied().unwrap_or(0) + rej.get("not-an-image").copied().unwrap_or(0), 3);
    assert_eq!(rej.get("unsafe-path"), Some(&6));
    assert!(!tmp.path().join("evil.jpg").exists() && !Path::new("/abs/evil.txt").exists());
    let recs = records(&full, "manifest.json");
    assert_eq!(recs[0].caption.as_deref(), Some("caption number 0"));
    assert_eq!(recs[0].id, "000000000");
    assert_eq!(ShardSet::open(&full).unwrap().manifest.kind, mdm_shards::RecordKind::TextImage);
    // a folder of tars is the same input
    let dir_out = tmp.path().join("dir");
    let o = Cc12mOptions { src: tars.display().to_string(), image_root: None, text: None };
    cc12m::ingest(&o, &valid(settings()), &run_opts(&dir_out, 1, None)).unwrap();
    assert_eq!(snapshot(&full), snapshot(&dir_out));

    // two parts in two folders merge into the full set
    let mut parts = Vec::new();
    for i in 0..2 {
        let dir = tmp.path().join(format!("p{i}"));
        let part = Part { index: i, count: 2 };
        let s = cc12m::ingest(&opts, &valid(settings()), &run_opts(&dir, 1, Some(part))).unwrap();
        let m = Manifest::read(&s.manifest).unwrap();
        assert!(m.shards.iter().all(|e| e.file.starts_with(&part.prefix())));
        parts.push((dir, m));
    }
    let merged_dir = tmp.path().join("merged");
    std::fs::create_dir_all(&merged_dir).unwrap();
    let merged = Manifest::merge(&parts, &merged_dir).unwrap();
    assert_eq!(merged.stats, sum.stats);
    merged.write(&merged_dir).unwrap();
    let mut a: Vec<String> = records(&merged_dir, "manifest.json").into_iter().map(|r| r.id).collect();
    let mut b: Vec<String> = recs.iter().map(|r| r.id.clone()).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);

    // interrupted run: later sidecars gone, one shard renamed without its sidecar, one half-written
    let crashed = tmp.path().join("crashed");
    let reference = simulate_crash(&full, &crashed);
    let resumed = cc12m::ingest(&opts, &valid(settings()), &run_opts(&crashed, 2, None)).unwrap();
    assert_eq!(resumed.resumed_chunks, 1);
    let after: BTreeMap<String, Vec<u8>> = snapshot(&crashed).into_iter().filter(|(n, _)| !n.ends_with(".tmp")).collect();
    assert_eq!(after.keys().collect::<Vec<_>>(), reference.keys().collect::<Vec<_>>());
    assert!(after == reference, "resumed output differs from the uninterrupted one");

    // table form: TSV of (path or url, caption) with a local image root
    let imgs = tmp.path().join("imgs");
    write(&imgs.join("a.jpg"), &jpeg(100, 90, 1));
    write(&imgs.join("example.com/x/b.jpg"), &jpeg(110, 90, 2));
    let tsv = tmp.path().join("table.tsv");
    std::fs::write(
        &tsv,
        "url\tcaption\na.jpg\tan   apple\nhttps://example.com/x/b.jpg\ta  banana\nhttps://example.com/nothere.jpg\tmissing\nmissing.jpg\tgone\na.jpg\t   \n",
    )
    .unwrap();
    let t_out = tmp.path().join("table_out");
    let o = Cc12mOptions { src: tsv.display().to_string(), image_root: Some(imgs), text: None };
    let s = cc12m::ingest(&o, &valid(settings()), &run_opts(&t_out, 2, None)).unwrap();
    assert_eq!(s.stats.written, 2);
    assert_eq!(s.stats.rejected.get("not-downloaded"), Some(&1));
    assert_eq!(s.stats.rejected.get("read-error"), Some(&1));
    assert_eq!(s.stats.rejected.get("bad-caption"), Some(&1));
    let caps: Vec<Option<String>> = records(&t_out, "manifest.json").into_iter().map(|r| r.caption).collect();
    assert_eq!(caps, vec![Some("an apple".to_string()), Some("a banana".to_string())]);
}

#[test]
fn resume_refuses_other_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("ILSVRC");
    imagenet_tree(&root);
    let opts = ImagenetOptions { src: root, split: Split::Train, val_labels: None, synset_order: None };
    let out: PathBuf = tmp.path().join("o");
    imagenet::ingest(&opts, &valid(settings()), &run_opts(&out, 1, None)).unwrap();
    let other = ImageSettings { quality: 50, ..settings() };
    let err = imagenet::ingest(&opts, &valid(other), &run_opts(&out, 1, None)).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");
}
