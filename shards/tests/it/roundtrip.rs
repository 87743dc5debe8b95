//! Write → read round trips of every record kind, rolling, projection and validation.

use crate::common;
use common::*;
use mdm_shards::*;

fn read_all(dir: &std::path::Path) -> Vec<Record> {
    ShardSet::open(dir).unwrap().records().collect::<Result<Vec<_>>>().unwrap()
}

#[test]
fn image_round_trip_with_rolling_and_row_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(RecordKind::Image, vec![256, 64]).unwrap();
    let records: Vec<_> = (0..53).map(|i| image_record(i, RecordKind::Image, &[256, 64], 0)).collect();
    let opts = WriterOptions { max_shard_rows: Some(20), row_group_rows: 7, ..Default::default() };
    let m = write_set(tmp.path(), &layout, records.clone(), opts);
    assert_eq!(m.shards.iter().map(|s| s.rows).collect::<Vec<_>>(), vec![20, 20, 13]);
    // 20 rows in groups of 7: 7 + 7 + 6.
    assert_eq!(m.shards[0].row_groups, 3);
    assert_eq!(read_all(tmp.path()), records);
    let set = ShardSet::open(tmp.path()).unwrap();
    assert_eq!(set.manifest.stats.rejected.get("too-small"), Some(&1));
    let r = set.reader(1).unwrap();
    assert_eq!(r.row_group_rows(), vec![7, 7, 6]);
    assert_eq!(r.row_group_offsets(), vec![0, 7, 14]);
}

#[test]
fn text_image_round_trip_keeps_ragged_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(RecordKind::TextImage, vec![64]).unwrap();
    let records: Vec<_> = (0..30).map(|i| image_record(i, RecordKind::TextImage, &[64], 16)).collect();
    let opts = WriterOptions { text_encoder: Some(encoder(16)), row_group_rows: 8, ..Default::default() };
    let m = write_set(tmp.path(), &layout, records.clone(), opts);
    assert_eq!(m.text_encoder, Some(encoder(16)));
    let back = read_all(tmp.path());
    assert_eq!(back, records);
    // Ragged: stored bytes are exactly tokens x dim x 2.
    for r in back.iter().filter_map(|r| r.text.as_ref()) {
        assert_eq!(r.data.len(), r.tokens as usize * 16 * 2);
    }
    assert!(back.iter().any(|r| r.text.is_none()));
}

#[test]
fn video_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(RecordKind::Video, vec![256]).unwrap();
    let records: Vec<_> = (0..17).map(|i| video_record(i, 8)).collect();
    let opts = WriterOptions { text_encoder: Some(encoder(8)), row_group_bytes: 2000, ..Default::default() };
    let m = write_set(tmp.path(), &layout, records.clone(), opts);
    assert!(m.shards[0].row_groups > 1, "the byte limit splits row groups");
    assert_eq!(read_all(tmp.path()), records);
}

#[test]
fn projection_reads_only_the_asked_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(RecordKind::Image, vec![256, 64]).unwrap();
    let records: Vec<_> = (0..10).map(|i| image_record(i, RecordKind::Image, &[256, 64], 0)).collect();
    write_set(tmp.path(), &layout, records.clone(), WriterOptions::default());
    let set = ShardSet::open(tmp.path()).unwrap();
    let batch = set.reader(0).unwrap().read_row_group(0, Some(&["id", "jpeg_64"])).unwrap();
    assert_eq!(batch.num_columns(), 2);
    assert_eq!(batch.schema().field(1).name(), "jpeg_64");
    use arrow::array::AsArray;
    let col = batch.column(1).as_binary::<i32>();
    for (i, r) in records.iter().enumerate() {
        let Body::Image(img) = &r.body else { unreachable!() };
        assert_eq!(col.value(i), img.jpegs[1].as_slice());
    }
}

#[test]
fn records_that_do_not_fit_the_layout_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(RecordKind::Image, vec![256, 64]).unwrap();
    let mut w = ShardWriter::try_new(tmp.path(), layout, WriterOptions::default()).unwrap();
    let wrong = image_record(1, RecordKind::Image, &[256], 0);
    let err = w.write(wrong).unwrap_err().to_string();
    assert!(err.contains("img/000001") && err.contains("1 JPEGs for 2"), "{err}");
    let with_text = image_record(1, RecordKind::TextImage, &[256, 64], 4);
    assert!(w.write(with_text).unwrap_err().to_string().contains("no text embeddings"));
    let video = video_record(2, 4);
    assert!(w.write(video).is_err());
    assert_eq!(w.rows(), 0);
    // Nothing was written, so nothing is listed.
    assert!(w.close().unwrap().is_empty());
}

#[test]
fn manifest_rejects_unknown_keys_and_missing_sets() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ShardSet::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("no manifest"), "{err}");
    let layout = Layout::new(RecordKind::Image, vec![64]).unwrap();
    write_set(tmp.path(), &layout, vec![image_record(0, RecordKind::Image, &[64], 0)], WriterOptions::default());
    let path = tmp.path().join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap().replacen("{", "{\n  \"mixed_ratio\": \"2:1\",", 1);
    std::fs::write(&path, text).unwrap();
    let err = ShardSet::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("manifest.json") && err.contains("mixed_ratio"), "{err}");
}
