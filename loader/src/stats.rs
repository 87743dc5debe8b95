//! Counters for the trainer's logs: throughput, time each stage spends waiting, memory in
//! flight and shuffle quality.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A snapshot of [`crate::Loader::stats`].
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub batches: u64,
    pub samples: u64,
    /// Samples yielded at each resolution (side in pixels); they sum to `samples`.
    pub samples_per_resolution: BTreeMap<u32, u64>,
    /// Corrupt rows in the batches yielded (skipped, or the one that failed the run).
    pub skipped: u64,
    pub elapsed: Duration,
    pub samples_per_sec: f64,
    /// Time the consumer waited in `next()` for a batch.
    pub consumer_wait: Duration,
    /// Time the reader waited for the consumer (prefetch full: back-pressure).
    pub reader_backpressure: Duration,
    /// Steps the reader has begun: never more than `prefetch` past the batches yielded.
    pub steps_started: u64,
    /// Time the reader spent reading row groups and extracting payloads.
    pub reader_io: Duration,
    /// Time the reader waited for a free decode worker.
    pub reader_wait_workers: Duration,
    /// Worker time spent decoding, and waiting for work, summed over workers.
    pub decode_busy: Duration,
    pub decode_idle: Duration,
    /// Payload and pixel bytes of steps planned but not yet yielded: now and at the peak.
    pub in_flight_bytes: u64,
    pub peak_in_flight_bytes: u64,
    /// Row-group cache size at the peak.
    pub peak_cache_bytes: u64,
    /// Mean distance, in stored order and divided by the rows of all sets, between consecutive
    /// samples of this rank's order (steps assembled so far, which may run `prefetch` steps
    /// ahead of those yielded): about 1/3 for a uniform shuffle, near 0 for none.
    pub shuffle_quality: f64,
}

#[derive(Default)]
pub(crate) struct Shared {
    pub consumer_wait_ns: AtomicU64,
    pub reader_backpressure_ns: AtomicU64,
    pub steps_started: AtomicU64,
    pub reader_io_ns: AtomicU64,
    pub reader_wait_workers_ns: AtomicU64,
    pub decode_busy_ns: AtomicU64,
    pub decode_idle_ns: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    pub peak_cache: AtomicU64,
    neighbours: Mutex<Neighbours>,
}

#[derive(Default)]
struct Neighbours {
    last: Option<u64>,
    sum: f64,
    pairs: u64,
}

pub(crate) fn add_time(counter: &AtomicU64, since: Instant) {
    counter.fetch_add(since.elapsed().as_nanos() as u64, Relaxed);
}

impl Shared {
    pub(crate) fn hold(&self, bytes: usize) {
        let now = self.in_flight.fetch_add(bytes as u64, Relaxed) + bytes as u64;
        self.peak_in_flight.fetch_max(now, Relaxed);
    }

    pub(crate) fn release(&self, bytes: usize) {
        self.in_flight.fetch_sub(bytes as u64, Relaxed);
    }

    /// Records the stored-order index of each sample yielded, in order.
    pub(crate) fn neighbours(&self, indices: impl Iterator<Item = u64>, rows: u64) {
        let mut n = self.neighbours.lock().expect("stats lock");
        for i in indices {
            if let Some(last) = n.last {
                n.sum += last.abs_diff(i) as f64 / rows.max(1) as f64;
                n.pairs += 1;
            }
            n.last = Some(i);
        }
    }

    pub(crate) fn snapshot(&self, (batches, samples, skipped): (u64, u64, u64), per_resolution: &BTreeMap<u32, u64>, started: Instant) -> Stats {
        let t = |c: &AtomicU64| Duration::from_nanos(c.load(Relaxed));
        let elapsed = started.elapsed();
        let n = self.neighbours.lock().expect("stats lock");
        Stats {
            batches,
            samples,
            samples_per_resolution: per_resolution.clone(),
            skipped,
            elapsed,
            samples_per_sec: samples as f64 / elapsed.as_secs_f64().max(1e-9),
            consumer_wait: t(&self.consumer_wait_ns),
            reader_backpressure: t(&self.reader_backpressure_ns),
            steps_started: self.steps_started.load(Relaxed),
            reader_io: t(&self.reader_io_ns),
            reader_wait_workers: t(&self.reader_wait_workers_ns),
            decode_busy: t(&self.decode_busy_ns),
            decode_idle: t(&self.decode_idle_ns),
            in_flight_bytes: self.in_flight.load(Relaxed),
            peak_in_flight_bytes: self.peak_in_flight.load(Relaxed),
            peak_cache_bytes: self.peak_cache.load(Relaxed),
            shuffle_quality: if n.pairs == 0 { 0.0 } else { n.sum / n.pairs as f64 },
        }
    }
}
