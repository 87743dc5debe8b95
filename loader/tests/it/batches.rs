//! What batches hold: mixed resolutions, buckets, mixed sets, text, video.

use crate::common;
use common::*;
use mdm_loader::{Batch, Error, LoaderBuilder, Shuffle};
use mdm_shards::RecordKind;

#[test]
fn mixed_ratio_holds_and_each_resolution_decodes_right() {
    let tmp = tempfile::tempdir().unwrap();
    // Stored at 64 and 32: 32 reads its own column, 16 decodes jpeg_32 at DCT scale 4/8.
    write_set(tmp.path(), 300);
    let mut b = builder(tmp.path());
    b.batch_size(30).mixed_ratio(vec![(64, 2.0), (32, 1.0), (16, 1.0)]);
    let mut loader = b.build().unwrap();
    let batches: Vec<Batch> = loader.by_ref().take(30).map(Result::unwrap).collect();
    let mut count = std::collections::BTreeMap::new();
    for batch in &batches {
        for (res, px) in &batch.pixels {
            *count.entry(*res).or_insert(0) += px.len();
            assert_eq!(px.data.len(), px.len() * 3 * (*res as usize).pow(2));
            assert!(px.rows.iter().all(|&r| batch.resolutions[r] == *res));
        }
        assert_pixels_match_ids(batch);
    }
    // The trainer's logs see the same split.
    let stats = loader.stats();
    assert_eq!(stats.samples_per_resolution, count.iter().map(|(&r, &n)| (r, n as u64)).collect::<std::collections::BTreeMap<u32, u64>>());
    assert_eq!(stats.samples_per_resolution.values().sum::<u64>(), stats.samples);
    assert_eq!(stats.samples, 900);
    let total = 900.0;
    let share = |r| count[&r] as f64 / total;
    assert!((share(64) - 0.5).abs() < 0.05, "{count:?}");
    assert!((share(32) - 0.25).abs() < 0.05, "{count:?}");
    assert!((share(16) - 0.25).abs() < 0.05, "{count:?}");
}

#[test]
fn a_64_only_set_serves_32_by_dct_scaling_and_crops_stay_inside() {
    let tmp = tempfile::tempdir().unwrap();
    write_set_with(tmp.path(), RecordKind::Image, &[64], 0, 40, 20, None);
    let mut b = builder(tmp.path());
    b.batch_size(10).mixed_ratio(vec![(32, 1.0), (24, 1.0)]).random_crop(0.5).random_flip(true);
    for batch in b.build().unwrap().take(4) {
        assert_pixels_match_ids(&batch.unwrap());
    }
    let err = match builder(tmp.path()).mixed_ratio(vec![(128, 1.0)]).build() {
        Err(e) => e.to_string(),
        Ok(_) => panic!("upsampling accepted"),
    };
    assert!(err.contains("128") && err.contains("largest stored"), "{err}");
}

#[test]
fn buckets_give_one_resolution_per_step_sized_by_the_pixel_budget() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), 400);
    let mut b = builder(tmp.path());
    // 32 * 32 * 24 pixels: 24 samples at 32, 96 at 16, over 2 ranks.
    b.mixed_ratio(vec![(32, 1.0), (16, 1.0)]).buckets(Some(32 * 32 * 24)).rank(1, 2);
    let batches: Vec<Batch> = b.build().unwrap().take(12).map(Result::unwrap).collect();
    let mut seen = std::collections::BTreeSet::new();
    for batch in &batches {
        assert_eq!(batch.pixels.len(), 1);
        let (&res, px) = batch.pixels.iter().next().unwrap();
        seen.insert(res);
        assert_eq!(px.len() as u64, 32 * 32 * 24 / (res as u64 * res as u64) / 2);
    }
    assert_eq!(seen.len(), 2, "both buckets drawn in 12 steps");
    let err = builder(tmp.path()).mixed_ratio(vec![(32, 1.0)]).buckets(Some(32 * 32 * 5)).rank(0, 2).build().err().unwrap();
    assert!(err.to_string().contains("does not split over 2 ranks"), "{err}");
}

#[test]
fn mixed_sets_follow_their_weights_and_cycle_their_own_epochs() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write_set_with(&a, RecordKind::Image, &[32], 0, 40, 20, None);
    write_set_with(&b, RecordKind::Image, &[32], 1000, 200, 50, None);
    let mut builder = LoaderBuilder::new();
    builder
        .source(a.to_str().unwrap(), 3.0)
        .source(b.to_str().unwrap(), 1.0)
        .shuffle(Some(Shuffle { block_rows: 8, span_rows: 64, window: 32 }))
        .batch_size(16);
    let batches: Vec<Batch> = builder.build().unwrap().take(15).map(Result::unwrap).collect();
    let from_a: Vec<u64> = batches.iter().flat_map(|b| b.ids.iter().map(|id| index_of(id)).filter(|&i| i < 1000)).collect();
    assert_eq!(from_a.len(), 15 * 16 * 3 / 4);
    assert!(batches.iter().all(|b| b.sets.iter().zip(&b.ids).all(|(&s, id)| (s == 0) == (index_of(id) < 1000))));
    // Set a (40 rows) went through 4.5 of its own epochs, each a permutation.
    for epoch in from_a.chunks(40).take(4) {
        let mut e = epoch.to_vec();
        e.sort_unstable();
        assert_eq!(e, (0..40).collect::<Vec<_>>());
    }
}

#[test]
fn sets_from_different_text_encoders_are_not_mixed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    write_set_with(&a, RecordKind::TextImage, &[32], 0, 10, 10, Some(encoder(4)));
    let mut other = encoder(4);
    other.model_id = "google/flan-t5-xl".into();
    write_set_with(&b, RecordKind::TextImage, &[32], 0, 10, 10, Some(other));
    let err = LoaderBuilder::new().source(a.to_str().unwrap(), 1.0).source(b.to_str().unwrap(), 1.0).batch_size(2).build().err().unwrap();
    assert!(matches!(err, Error::Mix { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(a.to_str().unwrap()) && msg.contains(b.to_str().unwrap()) && msg.contains("flan-t5-xl"), "{msg}");
}

#[test]
fn text_embeddings_are_padded_to_the_batch_maximum_with_a_mask() {
    let tmp = tempfile::tempdir().unwrap();
    write_set_with(tmp.path(), RecordKind::TextImage, &[32], 0, 30, 15, Some(encoder(4)));
    let mut b = builder(tmp.path());
    b.batch_size(6);
    for batch in b.build().unwrap().take(5) {
        let batch = batch.unwrap();
        let text = batch.text.as_ref().unwrap();
        let max = batch.ids.iter().map(|id| 1 + index_of(id) % 5).max().unwrap() as usize;
        assert_eq!((text.max_tokens, text.dim), (max, 4));
        assert_eq!(text.data.len(), 6 * max * 4 * 2);
        for (row, id) in batch.ids.iter().enumerate() {
            let want = embedding(index_of(id), 4);
            assert_eq!(text.tokens[row], want.tokens);
            let got = &text.data[row * max * 8..(row + 1) * max * 8];
            assert_eq!(&got[..want.data.len()], &want.data[..]);
            assert!(got[want.data.len()..].iter().all(|&v| v == 0));
            let mask = &text.mask[row * max..(row + 1) * max];
            assert_eq!(mask.iter().filter(|&&m| m == 1).count(), want.tokens as usize);
            assert_eq!(batch.captions[row].as_deref(), Some(format!("caption {}", index_of(id)).as_str()));
        }
    }
}

#[test]
fn video_clips_come_as_b_t_c_h_w() {
    let tmp = tempfile::tempdir().unwrap();
    write_set_with(tmp.path(), RecordKind::Video, &[32], 0, 12, 6, Some(encoder(4)));
    let mut b = builder(tmp.path());
    b.batch_size(4).video_frames(4).mixed_ratio(vec![(16, 1.0)]);
    let batch = b.build().unwrap().next().unwrap().unwrap();
    let px = &batch.pixels[&16];
    assert_eq!(px.shape(), vec![4, 4, 3, 16, 16]);
    // Frames get bluer by 30 each; the 4th repeats the 3rd (clips have 3 frames).
    let frame = 3 * 16 * 16;
    let blue = |k: usize, f: usize| px.sample(k)[f * frame + 2 * 256 + 8 * 16 + 8] as i32;
    for k in 0..4 {
        let base = colour(index_of(&batch.ids[px.rows[k]]))[2] as i32;
        assert!((blue(k, 0) - base).abs() <= 8 && (blue(k, 2) - (base + 60).min(255)).abs() <= 8, "sample {k}");
        assert_eq!(blue(k, 3), blue(k, 2));
    }
}

#[test]
fn recycled_pixel_buffers_are_reused_and_rewritten_correctly() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), 200);
    let mut b = builder(tmp.path());
    b.batch_size(10).prefetch(1);
    let mut loader = b.build().unwrap();
    let recycler = loader.recycler();
    // With one step in flight, step k+2 is usually planned after batch k was given back, so it
    // is built in a given-back buffer; the reader may run a step further ahead under load, so
    // the test asks for reuse in most steps, not in each.
    let (mut given, mut reused) = (std::collections::HashSet::new(), 0);
    for _ in 0..12 {
        let batch = loader.next().unwrap().unwrap();
        assert_pixels_match_ids(&batch); // old pixels never show through
        let ptr = batch.pixels[&32].data.as_ptr() as usize;
        reused += usize::from(given.contains(&ptr));
        given.insert(ptr);
        recycler.give_batch(batch);
    }
    assert!(reused >= 6, "only {reused} of 12 steps were built in a given-back buffer");
    // Without recycling the order and pixels are the same (recycling changes nothing else).
    let mut plain = builder(tmp.path());
    plain.batch_size(10).prefetch(1);
    let a: Vec<Vec<String>> = ids(&mut plain.build().unwrap(), 8);
    let mut again = builder(tmp.path());
    again.batch_size(10).prefetch(1);
    let mut l = again.build().unwrap();
    let r = l.recycler();
    let b: Vec<Vec<String>> = (0..8).map(|_| { let x = l.next().unwrap().unwrap(); let ids = x.ids.clone(); r.give_batch(x); ids }).collect();
    assert_eq!(a, b);
    // A recycler outliving its loader just frees.
    drop(l);
    r.give(vec![0u8; 16]);
}
