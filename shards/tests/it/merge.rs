//! Part manifests merge into one; incompatible parts are refused.

use crate::common;
use common::*;
use mdm_shards::*;

fn part(dir: &std::path::Path, name: &str, prefix: &str, range: std::ops::Range<u64>, part: u32) -> Manifest {
    let layout = Layout::new(RecordKind::Image, vec![64]).unwrap();
    let opts = WriterOptions { prefix: prefix.into(), max_shard_rows: Some(4), ..Default::default() };
    let mut w = ShardWriter::try_new(dir, layout.clone(), opts).unwrap();
    for i in range.clone() {
        w.write(image_record(i, RecordKind::Image, &[64], 0)).unwrap();
    }
    let mut m = Manifest::new(&layout, None);
    m.shards = w.close().unwrap();
    m.stats.inputs = range.end - range.start;
    m.stats.written = range.end - range.start;
    m.stats.reject("too-small");
    m.settings = Some(serde_json::json!({ "resolution": 64, "part": part }));
    m.write_as(dir, name).unwrap();
    m
}

#[test]
fn parts_in_one_folder_and_in_separate_folders_merge() {
    let tmp = tempfile::tempdir().unwrap();
    // Two parts writing into the same folder with their own prefixes and part manifests.
    let same = tmp.path().join("same");
    part(&same, "manifest.part-0-of-2.json", "part-0-of-2", 0..6, 0);
    part(&same, "manifest.part-1-of-2.json", "part-1-of-2", 6..11, 1);
    // A third part in a folder of its own.
    let other = tmp.path().join("other");
    part(&other, "manifest.json", "part-x", 11..14, 2);

    let parts: Vec<_> = [same.join("manifest.part-0-of-2.json"), same.join("manifest.part-1-of-2.json"), other.clone()]
        .iter()
        .map(|p| {
            let s = ShardSet::open(p).unwrap();
            (s.dir, s.manifest)
        })
        .collect();
    let merged = Manifest::merge(&parts, &same).unwrap();
    assert_eq!(merged.stats.inputs, 17);
    assert_eq!(merged.stats.written, 14);
    assert_eq!(merged.stats.rejected["too-small"], 3);
    assert_eq!(merged.settings, Some(serde_json::json!({ "resolution": 64 })));
    assert!(merged.shards.iter().any(|s| s.file == "../other/part-x-00000.parquet"));
    merged.write(&same).unwrap();
    let ids: Vec<_> = ShardSet::open(&same).unwrap().records().map(|r| r.unwrap().id).collect();
    let want: Vec<_> = (0..14).map(|i| format!("img/{i:06}")).collect();
    assert_eq!(ids, want);
    // Merging a part with itself lists a shard twice.
    let dup = Manifest::merge(&[parts[0].clone(), parts[0].clone()], &same).unwrap_err().to_string();
    assert!(dup.contains("two parts"), "{dup}");
}

#[test]
fn incompatible_parts_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = part(&tmp.path().join("a"), "manifest.json", "a", 0..2, 0);
    let mut b = part(&tmp.path().join("b"), "manifest.json", "b", 2..4, 1);
    b.settings = Some(serde_json::json!({ "resolution": 256, "part": 1 }));
    let err = Manifest::merge(&[(tmp.path().join("a"), a.clone()), (tmp.path().join("b"), b)], tmp.path()).unwrap_err();
    assert!(err.to_string().contains("settings differ"), "{err}");

    let layout = Layout::new(RecordKind::TextImage, vec![64]).unwrap();
    let c = Manifest::new(&layout, None);
    let err = Manifest::merge(&[(tmp.path().join("a"), a), (tmp.path().join("c"), c)], tmp.path()).unwrap_err();
    assert!(err.to_string().contains("text-image"), "{err}");
}
