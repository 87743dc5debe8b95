//! Caption embeddings in shards: `--t5` inline at ingest and `embed_shards` (`mdm embed`) on an
//! existing set, with a seeded random tiny T5 made in the test.

use crate::image_common;

use std::path::Path;

use image_common::{jpeg, write};
use mdm_ingest::settings::{ImageSettings, Validated};
use mdm_ingest::sources::cc12m::{self, Cc12mOptions};
use mdm_ingest::sources::RunOptions;
use mdm_ingest::t5::{make_tiny_t5, EncodeOptions, LongCaptions, StorageDtype, T5Device, T5Dtype, TextEncoder};
use mdm_ingest::text::{embed_shards, TextSpec};
use mdm_shards::{EmbeddingDType, Manifest, Record, ShardSet};

const CAPTIONS: [&str; 7] = [
    "a red apple on the table",
    "the dog",
    "a photo of a cat sitting on a chair near the window in the morning light",
    "an old house",
    "a blue car",
    "trees",
    "a man and a woman walking a dog in the park on a sunny day with many people around them",
];

fn settings() -> ImageSettings {
    ImageSettings { resolution: 32, extra_resolutions: vec![], shard_inputs: 4, ..ImageSettings::default() }
}

/// Settings as the sources and processors take them.
fn valid(s: ImageSettings) -> Validated<ImageSettings> {
    s.validate().expect("valid settings")
}

fn run_opts(out: &Path) -> RunOptions {
    RunOptions { out: out.to_path_buf(), threads: 2, part: None, progress: false }
}

fn spec(model: &Path, max_tokens: usize, long: LongCaptions) -> TextSpec {
    TextSpec {
        model_dir: model.to_path_buf(),
        options: EncodeOptions {
            dtype: T5Dtype::F32,
            device: T5Device::Cpu,
            max_tokens,
            long_captions: long,
            batch_size: 3,
            sort_window: 64,
        },
        storage: StorageDtype::F16,
    }
}

/// A TSV of 7 captioned images plus one row without a caption.
fn table(dir: &Path) -> String {
    let mut tsv = String::from("url\tcaption\n");
    for (i, c) in CAPTIONS.iter().enumerate() {
        write(&dir.join(format!("{i}.jpg")), &jpeg(40 + i as u32, 36, i as u8));
        tsv.push_str(&format!("{i}.jpg\t{c}\n"));
    }
    tsv.push_str("0.jpg\t   \n");
    let p = dir.join("table.tsv");
    std::fs::write(&p, tsv).unwrap();
    p.display().to_string()
}

fn records(dir: &Path) -> Vec<Record> {
    ShardSet::open(dir).unwrap().records().collect::<Result<Vec<_>, _>>().unwrap()
}

fn f16s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
}

#[test]
fn inline_embeddings_match_the_encoder_and_carry_provenance() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("t5");
    make_tiny_t5(&model, 11).unwrap();
    let src = table(tmp.path());
    let out = tmp.path().join("out");
    let sp = spec(&model, 128, LongCaptions::Truncate);
    let opts = Cc12mOptions { src: src.clone(), image_root: None, text: Some(sp.clone()) };
    let sum = cc12m::ingest(&opts, &valid(settings()), &run_opts(&out)).unwrap();
    assert_eq!((sum.stats.inputs, sum.stats.written), (8, 7));
    assert_eq!(sum.stats.rejected.get("bad-caption"), Some(&1));
    assert_eq!(sum.t5.map(|t| t.encoded), Some(7));

    let m = Manifest::read(&out.join("manifest.json")).unwrap();
    let enc = m.text_encoder.clone().expect("manifest records the encoder");
    let mut direct = TextEncoder::from_dir(&model, sp.options.clone()).unwrap();
    let p = direct.provenance().clone();
    assert_eq!((enc.weights_sha256.as_str(), enc.tokenizer_sha256.as_str()), (p.weights_sha256.as_str(), p.tokenizer_sha256.as_str()));
    assert_eq!((enc.dim as usize, enc.max_tokens, enc.dtype), (p.dim, 128, EmbeddingDType::F16));
    assert!(m.settings.as_ref().unwrap()["t5"]["provenance"]["weights_sha256"] == p.weights_sha256.as_str());

    // Each stored embedding is the encoder's output for that caption, alone (f16 rounding only).
    let recs = records(&out);
    assert_eq!(recs.len(), 7);
    for r in &recs {
        let t = r.text.as_ref().expect("embedded");
        let e = direct.encode(&[r.caption.as_deref().unwrap()]).unwrap().remove(0).unwrap();
        assert_eq!(t.tokens as usize, e.tokens(), "{}", r.id);
        assert_eq!(t.data.len(), e.tokens() * p.dim * 2, "ragged: real tokens only");
        let got = f16s(&t.data);
        let max = got.iter().zip(&e.states).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0f32, f32::max);
        assert!(max <= 2e-3, "{}: relative diff {max} (f16 storage)", r.id);
    }
    // The shard metadata carries the provenance too.
    let set = ShardSet::open(&out).unwrap();
    assert_eq!(set.reader(0).unwrap().text_encoder(), Some(&enc));

    // Resuming with another encoder is refused; another seed means other weights.
    let other = tmp.path().join("t5b");
    make_tiny_t5(&other, 12).unwrap();
    std::fs::remove_file(out.join("manifest.json")).unwrap();
    let o = Cc12mOptions { src, image_root: None, text: Some(spec(&other, 128, LongCaptions::Truncate)) };
    let err = cc12m::ingest(&o, &valid(settings()), &run_opts(&out)).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");
}

#[test]
fn long_captions_rejected_or_truncated_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("t5");
    make_tiny_t5(&model, 3).unwrap();
    let src = table(tmp.path());
    let tok = TextEncoder::from_dir(&model, spec(&model, 128, LongCaptions::Truncate).options).unwrap();
    let lens: Vec<usize> = tok.tokenize(&CAPTIONS).unwrap().iter().map(|t| t.ids().map_or(0, <[u32]>::len)).collect();
    let limit = 8;
    let long = lens.iter().filter(|&&l| l > limit).count() as u64;
    assert!((2..7).contains(&long), "fixture needs some long captions: {lens:?}");

    let out = tmp.path().join("reject");
    let o = Cc12mOptions { src: src.clone(), image_root: None, text: Some(spec(&model, limit, LongCaptions::Reject)) };
    let s = cc12m::ingest(&o, &valid(settings()), &run_opts(&out)).unwrap();
    assert_eq!(s.stats.rejected.get("long-caption"), Some(&long));
    assert_eq!(s.stats.written, 7 - long);
    assert!(s.stats.balanced());
    let rejects = std::fs::read_to_string(out.join("rejects.jsonl")).unwrap();
    assert_eq!(rejects.lines().filter(|l| l.contains("long-caption")).count() as u64, long);
    assert!(records(&out).iter().all(|r| r.text.as_ref().unwrap().tokens as usize <= limit));

    let out = tmp.path().join("truncate");
    let o = Cc12mOptions { src, image_root: None, text: Some(spec(&model, limit, LongCaptions::Truncate)) };
    let s = cc12m::ingest(&o, &valid(settings()), &run_opts(&out)).unwrap();
    assert_eq!(s.stats.written, 7);
    assert_eq!(s.t5.map(|t| t.truncated), Some(long));
    let recs = records(&out);
    assert_eq!(recs.iter().filter(|r| r.text.as_ref().unwrap().tokens as usize == limit).count() as u64, long + lens.iter().filter(|&&l| l == limit).count() as u64);
}

#[test]
fn embed_an_existing_set_equals_inline_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("t5");
    make_tiny_t5(&model, 5).unwrap();
    let src = table(tmp.path());
    let sp = spec(&model, 128, LongCaptions::Truncate);

    let plain = tmp.path().join("plain");
    cc12m::ingest(&Cc12mOptions { src: src.clone(), image_root: None, text: None }, &valid(settings()), &run_opts(&plain)).unwrap();
    assert!(records(&plain).iter().all(|r| r.text.is_none()));
    let inline = tmp.path().join("inline");
    cc12m::ingest(&Cc12mOptions { src, image_root: None, text: Some(sp.clone()) }, &valid(settings()), &run_opts(&inline)).unwrap();

    let out = tmp.path().join("embedded");
    let s = embed_shards(&plain, &out, &sp, false).unwrap();
    assert_eq!((s.rows, s.written, s.kept), (7, 7, 0));
    // Same records (images, captions, embeddings) as embedding inline at ingest.
    assert_eq!(records(&out), records(&inline));
    let (a, b) = (Manifest::read(&out.join("manifest.json")).unwrap(), Manifest::read(&inline.join("manifest.json")).unwrap());
    assert_eq!(a.text_encoder, b.text_encoder);
    assert_eq!(a.stats, b.stats);
    assert_eq!(a.shards.iter().map(|e| &e.file).collect::<Vec<_>>(), b.shards.iter().map(|e| &e.file).collect::<Vec<_>>());
    // The source's rejects are carried over.
    assert_eq!(std::fs::read_to_string(out.join("rejects.jsonl")).unwrap(), std::fs::read_to_string(plain.join("rejects.jsonl")).unwrap());
    // Embedding again replaces the embeddings (another encoder), never touching the source.
    let other = tmp.path().join("t5b");
    make_tiny_t5(&other, 6).unwrap();
    let again = tmp.path().join("again");
    embed_shards(&out, &again, &spec(&other, 128, LongCaptions::Truncate), false).unwrap();
    let (r1, r2) = (records(&out), records(&again));
    assert!(r1.iter().zip(&r2).all(|(x, y)| x.id == y.id && x.text != y.text));
    assert_ne!(Manifest::read(&again.join("manifest.json")).unwrap().text_encoder, a.text_encoder);

    // Interrupted: manifest not yet written, the last shard missing. A rerun keeps the rest.
    let before: Vec<(String, Vec<u8>)> = a.shards.iter().map(|e| (e.file.clone(), std::fs::read(out.join(&e.file)).unwrap())).collect();
    std::fs::remove_file(out.join("manifest.json")).unwrap();
    std::fs::remove_file(out.join(&a.shards.last().unwrap().file)).unwrap();
    let s = embed_shards(&plain, &out, &sp, false).unwrap();
    assert_eq!(s.kept, a.shards.len() - 1);
    for (f, bytes) in &before {
        assert!(&std::fs::read(out.join(f)).unwrap() == bytes, "{f} differs after resume");
    }

    // Refusals: in place, an image-only set, an existing output.
    assert!(embed_shards(&plain, &plain, &sp, false).unwrap_err().to_string().contains("in place"));
    let e = embed_shards(&plain, &out, &sp, false).unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
}
