//! `mdm loader order`: one line per step, the same global order on any world size, and
//! `--state-out` / `--state-in` continue exactly where a run stopped.

use std::path::Path;
use std::process::Command;

use image::{codecs::jpeg::JpegEncoder, ExtendedColorType};
use mdm_shards::{Body, ImageBody, Layout, Manifest, Record, RecordKind, ShardWriter, WriterOptions};

fn mdm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mdm"))
}

fn write_set(dir: &Path, n: u64) {
    let layout = Layout::new(RecordKind::Image, vec![32]).unwrap();
    let opts = WriterOptions { max_shard_rows: Some(20), row_group_rows: 8, ..Default::default() };
    let mut w = ShardWriter::try_new(dir, layout.clone(), opts).unwrap();
    for i in 0..n {
        let pixels = vec![(i * 5 % 256) as u8; 32 * 32 * 3];
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 90).encode(&pixels, 32, 32, ExtendedColorType::Rgb8).unwrap();
        let id = format!("s/{i:04}");
        w.write(Record {
            source_sha256: mdm_shards::sha256(id.as_bytes()),
            source: id.clone(),
            id,
            width: 32,
            height: 32,
            caption: None,
            text: None,
            body: Body::Image(ImageBody { label: None, crop_box: None, jpegs: vec![jpeg] }),
        })
        .unwrap();
    }
    let mut m = Manifest::new(&layout, None);
    m.shards = w.close().unwrap();
    m.stats.inputs = n;
    m.stats.written = n;
    m.write(dir).unwrap();
}

/// Runs `mdm loader order` and returns its lines as (step, ids).
fn order(dir: &Path, args: &[&str]) -> Vec<(u64, Vec<String>)> {
    let out = mdm().args(["loader", "order", "--shards"]).arg(dir).args(["--seed", "5"]).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (step, ids) = l.strip_prefix("step ").and_then(|l| l.split_once(": ")).unwrap_or_else(|| panic!("bad line {l:?}"));
            (step.parse().unwrap(), ids.split(' ').map(String::from).collect())
        })
        .collect()
}

#[test]
fn order_is_the_same_on_two_ranks_and_resumes_from_a_state_file() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = tmp.path().join("shards");
    write_set(&shards, 70);
    let whole = order(&shards, &["--batch", "6", "--steps", "11"]);
    assert_eq!(whole.iter().map(|l| l.0).collect::<Vec<_>>(), (0..11).collect::<Vec<_>>());
    assert!(whole.iter().all(|l| l.1.len() == 6));
    // One epoch is 11 steps of 6 (4 of 70 dropped): every id at most once.
    let mut ids: Vec<_> = whole.iter().flat_map(|l| l.1.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 66);

    let ranks: Vec<_> = (0..2).map(|r| order(&shards, &["--batch", "3", "--world", "2", "--rank", &r.to_string(), "--steps", "11"])).collect();
    for (s, line) in whole.iter().enumerate() {
        assert_eq!([ranks[0][s].1.clone(), ranks[1][s].1.clone()].concat(), line.1, "step {s}");
    }

    let state = tmp.path().join("state.json");
    let first = order(&shards, &["--batch", "6", "--steps", "4", "--state-out", state.to_str().unwrap()]);
    let rest = order(&shards, &["--batch", "6", "--steps", "7", "--state-in", state.to_str().unwrap()]);
    assert_eq!([first, rest].concat(), whole);
}
