//! Corrupt rows under both policies, and bounded memory under a slow consumer.

use crate::common;
use common::*;
use mdm_loader::{Batch, CorruptPolicy, Error};
use mdm_shards::{Body, RecordKind};

/// 60 rows in shards of 20: row 5 gets a flipped byte in its stored jpeg_64 (checksum
/// mismatch), row 25 (shard 1, row 5) a jpeg_32 that is not a JPEG but checksums right.
fn damaged_set(dir: &std::path::Path) -> mdm_shards::Manifest {
    let mut records: Vec<_> = (0..60).map(|i| record(i, RecordKind::Image, &[64, 32], 0)).collect();
    if let Body::Image(img) = &mut records[25].body {
        img.jpegs[1] = b"\xff\xd8 this is not a JPEG".to_vec();
    }
    let Body::Image(img) = &records[5].body else { unreachable!() };
    let victim = img.jpegs[0].clone();
    let m = write_records(dir, RecordKind::Image, &[64, 32], records, 20, None);
    let shard = dir.join(&m.shards[0].file);
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = bytes.windows(victim.len()).position(|w| w == victim.as_slice()).expect("payload stored verbatim");
    bytes[at + victim.len() / 2] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();
    m
}

fn run(dir: &std::path::Path, policy: CorruptPolicy, steps: usize) -> Vec<Result<Batch, Error>> {
    let mut b = builder(dir);
    b.batch_size(10).corrupt(policy);
    b.build().unwrap().take(steps).collect()
}

#[test]
fn skip_leaves_corrupt_rows_out_and_everything_else_in_place() {
    let (clean, damaged) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_set_with(clean.path(), RecordKind::Image, &[64, 32], 0, 60, 20, None);
    let m = damaged_set(damaged.path());
    let want: Vec<Batch> = run(clean.path(), CorruptPolicy::Skip, 6).into_iter().map(Result::unwrap).collect();
    let mut b = builder(damaged.path());
    b.batch_size(10);
    let mut loader = b.build().unwrap();
    let got: Vec<Batch> = loader.by_ref().take(6).map(Result::unwrap).collect();
    let mut skipped = Vec::new();
    for (w, g) in want.iter().zip(&got) {
        let keep: Vec<usize> = (0..w.len()).filter(|&i| !["img/000005", "img/000025"].contains(&w.ids[i].as_str())).collect();
        assert_eq!(g.ids, keep.iter().map(|&i| w.ids[i].clone()).collect::<Vec<_>>());
        assert_eq!(g.positions, keep.iter().map(|&i| w.positions[i]).collect::<Vec<_>>());
        assert_eq!(g.pixels[&32].data.len(), keep.len() * 3 * 32 * 32);
        assert_pixels_match_ids(g);
        skipped.extend(g.skipped.iter().cloned());
    }
    skipped.sort_by_key(|c| c.id.clone());
    assert_eq!(skipped.len(), 2);
    assert!(skipped[0].shard.ends_with(&m.shards[0].file) && skipped[0].row == 5, "{}", skipped[0]);
    assert!(skipped[0].what.contains("checksum"), "{}", skipped[0]);
    assert!(skipped[1].shard.ends_with(&m.shards[1].file) && skipped[1].row == 5, "{}", skipped[1]);
    assert!(skipped[1].what.contains("JPEG"), "{}", skipped[1]);
    assert_eq!(loader.stats().skipped, 2);
}

#[test]
fn fail_stops_at_the_batch_with_the_corrupt_row() {
    let tmp = tempfile::tempdir().unwrap();
    damaged_set(tmp.path());
    let skip = run(tmp.path(), CorruptPolicy::Skip, 6);
    let first_bad = skip.iter().position(|b| !b.as_ref().unwrap().skipped.is_empty()).unwrap();
    let fail = run(tmp.path(), CorruptPolicy::Fail, 6);
    assert_eq!(fail.len(), first_bad + 1, "the loader goes on after a failure");
    for (f, s) in fail.iter().zip(&skip).take(first_bad) {
        assert_eq!(f.as_ref().unwrap().ids, s.as_ref().unwrap().ids);
    }
    match &fail[first_bad] {
        Err(Error::Corrupt(c)) => {
            let want = &skip[first_bad].as_ref().unwrap().skipped[0];
            assert_eq!((c.shard.as_str(), c.row), (want.shard.as_str(), want.row));
            assert!(format!("{}", Error::Corrupt(c.clone())).contains(&format!("row {}", c.row)));
        }
        other => panic!("expected a corrupt-row error, got {other:?}"),
    }
}

#[test]
fn a_slow_consumer_keeps_memory_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), 200);
    let (prefetch, batch, res) = (2usize, 8usize, 64usize);
    let cache = 100_000;
    let mut b = builder(tmp.path());
    b.batch_size(batch as u64).mixed_ratio(vec![(64, 1.0)]).prefetch(prefetch).verify_checksums(false).row_group_cache_bytes(cache);
    let mut loader = b.build().unwrap();
    for batch in loader.by_ref().take(4) {
        assert_pixels_match_ids(&batch.unwrap());
    }
    // The consumer pauses: the reader must stop exactly `prefetch` steps ahead of it, on a
    // fast machine or a loaded one (it gets up to a minute to get there; once there it is
    // blocked, so no amount of waiting lets a correct reader move on).
    let (yielded, t0) = (4u64, std::time::Instant::now());
    while loader.stats().steps_started < yielded + prefetch as u64 {
        assert!(t0.elapsed() < std::time::Duration::from_secs(60), "reader stuck: {:?}", loader.stats());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(loader.stats().steps_started, yielded + prefetch as u64, "the reader ran past the prefetch");
    for batch in loader.by_ref().take(8) {
        assert_pixels_match_ids(&batch.unwrap());
    }
    let stats = loader.stats();
    assert!(stats.steps_started <= 12 + prefetch as u64, "{stats:?}");
    let largest_jpeg = (0..200).map(|i| jpeg(64, colour(i)).len()).max().unwrap();
    let bound = prefetch * batch * (largest_jpeg + 3 * res * res);
    assert!(stats.peak_in_flight_bytes > 0);
    assert!(stats.peak_in_flight_bytes as usize <= bound, "{} bytes in flight, bound {bound}", stats.peak_in_flight_bytes);
    assert!(stats.peak_cache_bytes as usize <= cache, "row-group cache {} over its cap {cache}", stats.peak_cache_bytes);
}
