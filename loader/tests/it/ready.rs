//! `Loader::ready_within`: a bounded wait that says true once
//! `next()` will not block (what the Python binding waits on between signal checks).

use crate::common;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn ready_within_reports_a_batch_that_next_returns_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    write_set(tmp.path(), 40);
    let mut b = builder(tmp.path());
    b.batch_size(4).workers(1).prefetch(1);
    let mut loader = b.build().unwrap();
    let t = Instant::now();
    while !loader.ready_within(Duration::from_millis(1)) {
        assert!(t.elapsed() < Duration::from_secs(30), "no batch became ready");
    }
    // Ready means next() returns at once with the batch.
    let t = Instant::now();
    let batch = loader.next().unwrap().unwrap();
    assert!(t.elapsed() < Duration::from_millis(200), "next() blocked after ready_within said true");
    assert_eq!(batch.len(), 4);
}
