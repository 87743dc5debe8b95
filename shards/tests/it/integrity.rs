//! Corruption is found and located; interrupted writes leave nothing visible.

use crate::common;
use common::*;
use mdm_shards::*;

#[test]
fn flipped_payload_byte_is_reported_with_shard_and_row() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(RecordKind::Image, vec![128, 32]).unwrap();
    let records: Vec<_> = (0..40).map(|i| image_record(i, RecordKind::Image, &[128, 32], 0)).collect();
    let opts = WriterOptions { max_shard_rows: Some(25), row_group_rows: 10, ..Default::default() };
    let m = write_set(tmp.path(), &layout, records.clone(), opts);
    assert!(verify(&ShardSet::open(tmp.path()).unwrap(), |_| {}).ok());

    // Row 33 of the set is row 8 of the second shard; flip a byte inside its 32² JPEG.
    let Body::Image(img) = &records[33].body else { unreachable!() };
    let shard = tmp.path().join(&m.shards[1].file);
    let mut file = std::fs::read(&shard).unwrap();
    let at = file.windows(img.jpegs[1].len()).position(|w| w == img.jpegs[1].as_slice()).expect("payload stored verbatim");
    file[at + 17] ^= 0x40;
    std::fs::write(&shard, file).unwrap();

    let report = verify(&ShardSet::open(tmp.path()).unwrap(), |_| {});
    assert!(!report.ok());
    let rows: Vec<_> = report.problems.iter().filter(|p| p.row.is_some()).collect();
    assert_eq!(rows.len(), 1, "{:?}", report.problems);
    assert_eq!(rows[0].shard, m.shards[1].file);
    assert_eq!(rows[0].row, Some(8));
    assert_eq!(rows[0].id.as_deref(), Some("img/000033"));
    assert!(report.problems.iter().any(|p| p.row.is_none() && p.what.contains("sha256")));
    assert!(report.problems.iter().all(|p| p.shard == m.shards[1].file));
    assert_eq!(report.rows_checked, 40);
    // Reading the damaged row through the record iterator is an error naming the row too.
    let err = ShardSet::open(tmp.path()).unwrap().records().find_map(|r| r.err()).unwrap().to_string();
    assert!(err.contains("row 8") && err.contains("checksum"), "{err}");
}

#[test]
fn truncated_shard_is_reported_not_panicked() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(RecordKind::Image, vec![64]).unwrap();
    let records: Vec<_> = (0..12).map(|i| image_record(i, RecordKind::Image, &[64], 0)).collect();
    let m = write_set(tmp.path(), &layout, records, WriterOptions::default());
    let shard = tmp.path().join(&m.shards[0].file);
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&shard).unwrap().set_len(len / 2).unwrap();
    let report = verify(&ShardSet::open(tmp.path()).unwrap(), |_| {});
    assert!(report.problems.iter().any(|p| p.what.contains("size")));
    assert!(report.problems.iter().any(|p| p.what.contains("footer")));
}

#[test]
fn interrupted_write_leaves_no_visible_shard_and_no_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(RecordKind::Image, vec![64]).unwrap();
    let opts = WriterOptions { max_shard_rows: Some(10), row_group_rows: 4, ..Default::default() };
    let mut w = ShardWriter::try_new(tmp.path(), layout, opts).unwrap();
    for i in 0..17 {
        w.write(image_record(i, RecordKind::Image, &[64], 0)).unwrap();
    }
    assert_eq!(w.finished().len(), 1);
    // As if killed: no destructor, no close.
    std::mem::forget(w);
    let mut names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    // The finished shard is complete under its final name; the open one only under .tmp.
    assert_eq!(names, vec!["shard-00000.parquet", "shard-00001.parquet.tmp"]);
    assert!(ShardReader::open(tmp.path().join("shard-00000.parquet")).unwrap().num_rows() == 10);
    assert!(ShardSet::open(tmp.path()).unwrap_err().to_string().contains("no manifest"));
}
