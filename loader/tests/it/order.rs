//! The global order: exactly once per epoch, independent of world size and worker count, and
//! resumable at any step.

use crate::common;
use common::*;
use mdm_loader::{Batch, EpochEnd, Error, LoaderState, Shuffle};

/// Global steps seen by `world` ranks (each `12 / world` per step), joined in rank order.
fn global_steps(dir: &std::path::Path, world: u64, steps: usize, state: Option<LoaderState>) -> Vec<Vec<String>> {
    let per_rank: Vec<Vec<Vec<String>>> = (0..world)
        .map(|r| {
            let mut b = builder(dir);
            b.batch_size(12 / world).rank(r, world).resume(state.clone());
            ids(&mut b.build().unwrap(), steps)
        })
        .collect();
    (0..steps).map(|s| per_rank.iter().flat_map(|rank| rank[s].clone()).collect()).collect()
}

#[test]
fn world_sizes_1_2_and_3_see_the_same_global_order_once_per_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), 130);
    // 130 rows, global batch 12: 10 steps per epoch, 10 rows dropped at its end.
    let one = global_steps(tmp.path(), 1, 20, None);
    assert_eq!(global_steps(tmp.path(), 2, 20, None), one);
    assert_eq!(global_steps(tmp.path(), 3, 20, None), one);
    for epoch in one.chunks(10) {
        let mut seen: Vec<u64> = epoch.iter().flatten().map(|id| index_of(id)).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 120, "an epoch repeats a sample");
        assert!(seen.iter().all(|&i| i < 130));
    }
    assert_ne!(one[..10], one[10..], "epochs must be shuffled differently");
    let stored: Vec<u64> = one[0].iter().map(|id| index_of(id)).collect();
    assert!(stored.windows(2).any(|w| w[1] != w[0] + 1), "not shuffled: {stored:?}");
}

#[test]
fn killed_and_resumed_on_another_world_size_yields_exactly_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), 130);
    let whole = global_steps(tmp.path(), 1, 25, None);
    for kill_after in [0, 3, 10, 17] {
        let mut b = builder(tmp.path());
        b.batch_size(12).workers(1);
        let mut first = b.build().unwrap();
        let before = ids(&mut first, kill_after);
        let state_file = tmp.path().join("state.json");
        first.state().save(&state_file).unwrap();
        drop(first); // the "kill": its prefetched batches are lost
        let state = LoaderState::load(&state_file).unwrap();
        assert_eq!(state.steps, kill_after as u64);
        for world in [1, 2, 3] {
            let after = global_steps(tmp.path(), world, 25 - kill_after, Some(state.clone()));
            let joined: Vec<_> = before.iter().cloned().chain(after).collect();
            assert_eq!(joined, whole, "killed after {kill_after}, resumed on {world} ranks");
        }
    }
}

#[test]
fn order_log_of_a_resumed_run_equals_the_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), 100);
    let (whole_log, split_log) = (tmp.path().join("whole.log"), tmp.path().join("split.log"));
    let mut b = builder(tmp.path());
    b.batch_size(10);
    let mut whole = b.clone().order_log(Some(whole_log.clone())).build().unwrap();
    ids(&mut whole, 14);
    let mut first = b.clone().order_log(Some(split_log.clone())).build().unwrap();
    ids(&mut first, 6);
    let state = first.state().clone();
    drop(first);
    let mut second = b.clone().workers(5).order_log(Some(split_log.clone())).resume(Some(state)).build().unwrap();
    ids(&mut second, 8);
    let (a, b) = (std::fs::read_to_string(whole_log).unwrap(), std::fs::read_to_string(split_log).unwrap());
    assert_eq!(a.lines().count(), 14);
    assert_eq!(a, b);
}

#[test]
fn workers_do_not_change_batches_and_pixels_belong_to_their_ids() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), 90);
    let run = |workers| -> Vec<Batch> {
        let mut b = builder(tmp.path());
        b.batch_size(16).workers(workers).random_flip(true);
        b.build().unwrap().take(8).map(Result::unwrap).collect()
    };
    let one = run(1);
    assert_eq!(run(4), one);
    for batch in &one {
        assert_eq!(batch.pixels[&32].shape(), vec![16, 3, 32, 32]);
        assert_eq!(batch.labels, batch.ids.iter().map(|id| Some((index_of(id) % 10) as i32)).collect::<Vec<_>>());
        assert_pixels_match_ids(batch);
    }
}

#[test]
fn pad_fills_the_last_batch_with_the_epochs_first_samples() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), 50);
    let mut b = builder(tmp.path());
    b.batch_size(8).epoch_end(EpochEnd::Pad);
    let batches: Vec<Batch> = b.build().unwrap().take(8).map(Result::unwrap).collect();
    // 50 = 6 * 8 + 2: step 6 has 2 real samples and 6 repeated from the epoch's start.
    let last = &batches[6];
    assert_eq!(last.padded, [vec![false; 2], vec![true; 6]].concat());
    assert_eq!(last.ids[2..], batches[0].ids[..6]);
    let epoch: std::collections::HashSet<_> = batches[..6].iter().flat_map(|b| b.ids.clone()).chain(last.ids[..2].to_vec()).collect();
    assert_eq!(epoch.len(), 50);
    assert_eq!((batches[7].epoch, batches[7].position), (1, 0));
}

#[test]
fn a_state_from_other_settings_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), 60);
    let mut loader = builder(tmp.path()).batch_size(6).build().unwrap();
    ids(&mut loader, 2);
    let state = loader.state().clone();
    let err = match builder(tmp.path()).batch_size(6).seed(8).resume(Some(state.clone())).build() {
        Err(e) => e,
        Ok(_) => panic!("a state from another seed was accepted"),
    };
    assert!(matches!(err, Error::State(_)) && err.to_string().contains("seed"), "{err}");
    // The batch size per rank is not part of the order: a bigger one continues it.
    let mut resumed = builder(tmp.path()).batch_size(12).resume(Some(state)).build().unwrap();
    assert_eq!(resumed.next().unwrap().unwrap().position, 12);
}

#[test]
fn shuffle_quality_separates_shuffled_from_stored_order() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), 200);
    let quality = |shuffle: bool| {
        let mut b = builder(tmp.path());
        // One span over all 200 rows: neighbours may come from anywhere.
        b.batch_size(20).shuffle(shuffle.then_some(Shuffle { block_rows: 8, span_rows: 1000, window: 64 }));
        let mut l = b.build().unwrap();
        let first = ids(&mut l, 10);
        (l.stats().shuffle_quality, first)
    };
    let (q, _) = quality(true);
    let (q0, stored) = quality(false);
    assert!(q > 0.25, "shuffled quality {q} (1/3 for a uniform shuffle)");
    assert!(q0 < 0.01, "stored order quality {q0}");
    let stored: Vec<u64> = stored.iter().flatten().map(|id| index_of(id)).collect();
    assert_eq!(stored, (0..200).collect::<Vec<_>>());
}
