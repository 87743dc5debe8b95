//! The sample order: a pure function of (seed, epoch, shard sizes, settings), never of the
//! world size, worker count or timing.
//!
//! For one shard set and one epoch:
//! 1. the shards are shuffled, then grouped in that order into *spans* of at least
//!    `span_rows` rows;
//! 2. each shard is cut into *blocks* of `block_rows` rows (one row group by default), and the
//!    blocks of each span are shuffled;
//! 3. the resulting stream is cut into *windows* of `window` samples and each window is
//!    permuted: the deterministic form of a shuffle buffer of that size, with random access.
//!
//! Several shard sets are interleaved by a smooth weighted round robin whose state is the count
//! drawn from each set, so the whole order, and the resume cursor, are a handful of integers.
//! Every random choice is a counter-based hash of (seed, what, indices): nothing is sequential.

use serde::{Deserialize, Serialize};

/// Shuffle settings (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shuffle {
    /// Rows per block. Default 1024 (the shard writer's row group size).
    pub block_rows: u64,
    /// Shards are grouped into spans of at least this many rows; blocks mix within a span.
    /// Default 262144.
    pub span_rows: u64,
    /// Samples per shuffle window. Default 8192.
    pub window: u64,
}

impl Default for Shuffle {
    fn default() -> Self {
        Shuffle { block_rows: 1024, span_rows: 1 << 18, window: 8192 }
    }
}

/// What happens to the last samples of an epoch when they do not fill a global batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EpochEnd {
    /// They are not yielded; the next epoch starts.
    Drop,
    /// The batch is filled with the epoch's first samples again, flagged in [`crate::Batch::padded`].
    Pad,
}

/// How samples are grouped into batches and given a resolution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Composition {
    /// `batch_size` samples per rank and step; each sample's resolution is drawn by `ratio`
    /// (ml-mdm's `mixed_ratio`: `[(256, 2.0), (64, 1.0)]` gives two 256 samples per 64 one).
    PerSample { batch_size: u64, ratio: Vec<(u32, f64)> },
    /// One resolution per step, drawn by `ratio`; the step's global batch holds
    /// `pixels / (res * res)` samples (rounded down), which must divide by the world size.
    Buckets { pixels: u64, ratio: Vec<(u32, f64)> },
}

impl Composition {
    pub(crate) fn ratio(&self) -> &[(u32, f64)] {
        match self {
            Composition::PerSample { ratio, .. } | Composition::Buckets { ratio, .. } => ratio,
        }
    }
}

const TAG_SHARDS: u64 = 1;
const TAG_BLOCKS: u64 = 2;
const TAG_WINDOW: u64 = 3;
pub(crate) const TAG_RES: u64 = 4;
pub(crate) const TAG_BUCKET: u64 = 5;
pub(crate) const TAG_FLIP: u64 = 6;
pub(crate) const TAG_CROP: u64 = 7;

/// SplitMix64's finaliser: a bijective mix of 64 bits.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A counter-based random word of `parts`.
pub(crate) fn hash(parts: &[u64]) -> u64 {
    parts.iter().fold(0x6d64_6d2d_6c6f_6164, |h, &p| mix64(h ^ mix64(p.wrapping_add(0x9e37_79b9_7f4a_7c15))))
}

/// Maps a random word to `0..n` (Lemire's multiply-shift).
pub(crate) fn below(h: u64, n: u64) -> u64 {
    ((h as u128 * n as u128) >> 64) as u64
}

/// Maps a random word to `[0, 1)`.
pub(crate) fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Index into `weights` drawn by the random word `h`, proportionally to the weights.
pub(crate) fn weighted(h: u64, weights: impl Iterator<Item = f64> + Clone) -> usize {
    let total: f64 = weights.clone().sum();
    let mut x = unit(h) * total;
    let mut last = 0;
    for (i, w) in weights.enumerate() {
        if x < w {
            return i;
        }
        x -= w;
        last = i;
    }
    last
}

/// Fisher–Yates with counter-based randomness keyed by `key`.
fn permute<T>(items: &mut [T], key: &[u64]) {
    let base = hash(key);
    for k in (1..items.len()).rev() {
        let j = below(hash(&[base, k as u64]), k as u64 + 1) as usize;
        items.swap(k, j);
    }
}

#[derive(Debug, Clone, Copy)]
struct Block {
    shard: u32,
    first_row: u64,
    rows: u64,
}

/// The order of one shard set in one of its epochs: epoch index `i` to (shard, row).
pub(crate) struct EpochOrder {
    key: [u64; 3],
    len: u64,
    window: u64,
    blocks: Vec<Block>,
    starts: Vec<u64>,
    cached_window: Option<(u64, Vec<u32>)>,
}

impl EpochOrder {
    /// `key` is (seed, set index, set epoch).
    pub(crate) fn new(shard_rows: &[u64], shuffle: Option<&Shuffle>, key: [u64; 3]) -> Self {
        let mut shards: Vec<u32> = (0..shard_rows.len() as u32).collect();
        let mut blocks = Vec::new();
        match shuffle {
            None => {
                for (s, &rows) in shard_rows.iter().enumerate() {
                    blocks.push(Block { shard: s as u32, first_row: 0, rows });
                }
            }
            Some(sh) => {
                permute(&mut shards, &[key[0], key[1], key[2], TAG_SHARDS]);
                let mut span = Vec::new();
                let mut span_rows = 0;
                let mut span_index = 0u64;
                for (k, &s) in shards.iter().enumerate() {
                    let rows = shard_rows[s as usize];
                    let mut first = 0;
                    while first < rows {
                        let n = sh.block_rows.min(rows - first);
                        span.push(Block { shard: s, first_row: first, rows: n });
                        first += n;
                    }
                    span_rows += rows;
                    if span_rows >= sh.span_rows || k + 1 == shards.len() {
                        permute(&mut span, &[key[0], key[1], key[2], TAG_BLOCKS, span_index]);
                        blocks.append(&mut span);
                        span_rows = 0;
                        span_index += 1;
                    }
                }
            }
        }
        let mut starts = Vec::with_capacity(blocks.len());
        let mut len = 0;
        for b in &blocks {
            starts.push(len);
            len += b.rows;
        }
        let window = shuffle.map_or(1, |s| s.window.max(1));
        EpochOrder { key, len, window, blocks, starts, cached_window: None }
    }

    /// Shard and row of epoch index `i` (`i < len`).
    pub(crate) fn get(&mut self, i: u64) -> (u32, u64) {
        debug_assert!(i < self.len);
        let w = i / self.window;
        let start = w * self.window;
        let j = if self.window == 1 {
            i
        } else {
            if self.cached_window.as_ref().map(|c| c.0) != Some(w) {
                let m = self.window.min(self.len - start) as u32;
                let mut perm: Vec<u32> = (0..m).collect();
                permute(&mut perm, &[self.key[0], self.key[1], self.key[2], TAG_WINDOW, w]);
                self.cached_window = Some((w, perm));
            }
            start + self.cached_window.as_ref().expect("window just computed").1[(i - start) as usize] as u64
        };
        let b = self.starts.partition_point(|&s| s <= j) - 1;
        let block = self.blocks[b];
        (block.shard, block.first_row + (j - self.starts[b]))
    }
}

/// Where the global order stands: the loader's resume cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    /// Loader epoch.
    pub epoch: u64,
    /// Global samples of this epoch already given out (over all ranks).
    pub position: u64,
    /// Samples drawn from each shard set since the start (its own epochs follow from this).
    pub drawn: Vec<u64>,
    /// `drawn` at the start of this epoch.
    pub epoch_start: Vec<u64>,
}

/// One sample of a planned step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Planned {
    /// Position within the loader epoch; positions at or past the epoch length are padding.
    pub position: u64,
    pub set: usize,
    pub shard: u32,
    pub row: u64,
    pub resolution: u32,
    pub pad: bool,
}

/// The part of one global step that a rank gets.
#[derive(Debug, Clone)]
pub(crate) struct StepPlan {
    pub epoch: u64,
    /// Epoch position of the step's first sample.
    pub position: u64,
    pub global_batch: u64,
    pub samples: Vec<Planned>,
    /// The cursor once this step is consumed.
    pub after: Cursor,
}

/// Sizes and weight of one shard set, as far as the order is concerned.
#[derive(Debug, Clone)]
pub(crate) struct SetShape {
    pub shard_rows: Vec<u64>,
    pub weight: f64,
}

/// Produces the steps of one rank from a cursor.
pub(crate) struct Planner {
    seed: u64,
    shuffle: Option<Shuffle>,
    sets: Vec<SetShape>,
    rows: Vec<u64>,
    epoch_len: u64,
    composition: Composition,
    epoch_end: EpochEnd,
    rank: u64,
    world: u64,
    orders: Vec<Option<(u64, EpochOrder)>>,
    cursor: Cursor,
}

impl Planner {
    pub(crate) fn new(
        seed: u64,
        shuffle: Option<Shuffle>,
        sets: Vec<SetShape>,
        composition: Composition,
        epoch_end: EpochEnd,
        (rank, world): (u64, u64),
        cursor: Option<Cursor>,
    ) -> Self {
        let rows: Vec<u64> = sets.iter().map(|s| s.shard_rows.iter().sum()).collect();
        let cursor = cursor.unwrap_or(Cursor { epoch: 0, position: 0, drawn: vec![0; sets.len()], epoch_start: vec![0; sets.len()] });
        Planner {
            seed,
            shuffle,
            epoch_len: rows.iter().sum(),
            orders: (0..sets.len()).map(|_| None).collect(),
            sets,
            rows,
            composition,
            epoch_end,
            rank,
            world,
            cursor,
        }
    }

    /// Samples per loader epoch: the rows of all sets together.
    pub(crate) fn epoch_len(&self) -> u64 {
        self.epoch_len
    }

    pub(crate) fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// Smooth weighted round robin: the set drawn at epoch position `t`, given the counts
    /// `taken` drawn from each set earlier in the epoch (ties go to the lowest index).
    fn pick(&self, t: u64, taken: impl Fn(usize) -> u64) -> usize {
        let total: f64 = self.sets.iter().map(|s| s.weight).sum();
        let mut best = (f64::NEG_INFINITY, 0);
        for (i, s) in self.sets.iter().enumerate() {
            let current = (t + 1) as f64 * s.weight - taken(i) as f64 * total;
            if current > best.0 {
                best = (current, i);
            }
        }
        best.1
    }

    /// Shard and row of the `k`-th sample ever drawn from set `set`.
    fn locate(&mut self, set: usize, k: u64) -> (u32, u64) {
        let n = self.rows[set];
        let (set_epoch, i) = (k / n, k % n);
        if self.orders[set].as_ref().map(|o| o.0) != Some(set_epoch) {
            let order = EpochOrder::new(&self.sets[set].shard_rows, self.shuffle.as_ref(), [self.seed, set as u64, set_epoch]);
            self.orders[set] = Some((set_epoch, order));
        }
        self.orders[set].as_mut().expect("order just built").1.get(i)
    }

    /// Resolution and global batch size of a step starting at the cursor.
    fn step_shape(&self) -> (Option<u32>, u64) {
        match &self.composition {
            Composition::PerSample { batch_size, .. } => (None, batch_size * self.world),
            Composition::Buckets { pixels, ratio } => {
                let h = hash(&[self.seed, self.cursor.epoch, self.cursor.position, TAG_BUCKET]);
                let res = ratio[weighted(h, ratio.iter().map(|r| r.1))].0;
                (Some(res), pixels / (res as u64 * res as u64))
            }
        }
    }

    /// Plans the next step and advances the cursor past it.
    pub(crate) fn next_step(&mut self) -> StepPlan {
        let (mut bucket, mut global) = self.step_shape();
        if self.epoch_len - self.cursor.position < global && self.epoch_end == EpochEnd::Drop {
            // The dropped samples are drawn, not yielded: every loader epoch draws exactly its
            // length, so one set's epochs stay aligned with the loader's.
            for t in self.cursor.position..self.epoch_len {
                let set = self.pick(t, |i| self.cursor.drawn[i] - self.cursor.epoch_start[i]);
                self.cursor.drawn[set] += 1;
            }
            self.start_epoch(self.cursor.epoch + 1);
            (bucket, global) = self.step_shape();
        }
        let (epoch, position) = (self.cursor.epoch, self.cursor.position);
        let take = global.min(self.epoch_len - position);
        // Every rank walks the whole step (cheap: counts only) and locates its own slice.
        let per_rank = global / self.world;
        let mine = self.rank * per_rank..(self.rank + 1) * per_rank;
        let mut draws = Vec::with_capacity(per_rank as usize);
        for j in 0..take {
            let t = position + j;
            let set = self.pick(t, |i| self.cursor.drawn[i] - self.cursor.epoch_start[i]);
            let k = self.cursor.drawn[set];
            self.cursor.drawn[set] += 1;
            if mine.contains(&j) {
                draws.push((t, set, k, false));
            }
        }
        // Padding: the epoch's first samples again.
        let mut taken = vec![0u64; self.sets.len()];
        for j in take..global {
            let t = j - take;
            let set = self.pick(t, |i| taken[i]);
            let k = self.cursor.epoch_start[set] + taken[set];
            taken[set] += 1;
            if mine.contains(&j) {
                draws.push((position + j, set, k, true));
            }
        }
        let samples = draws
            .into_iter()
            .map(|(t, set, k, pad)| {
                let (shard, row) = self.locate(set, k);
                let resolution = bucket.unwrap_or_else(|| {
                    let ratio = self.composition.ratio();
                    ratio[weighted(hash(&[self.seed, epoch, t, TAG_RES]), ratio.iter().map(|r| r.1))].0
                });
                Planned { position: t, set, shard, row, resolution, pad }
            })
            .collect();
        self.cursor.position += take;
        if self.cursor.position >= self.epoch_len {
            self.start_epoch(epoch + 1);
        }
        StepPlan { epoch, position, global_batch: global, samples, after: self.cursor.clone() }
    }

    fn start_epoch(&mut self, epoch: u64) {
        self.cursor.epoch = epoch;
        self.cursor.position = 0;
        self.cursor.epoch_start = self.cursor.drawn.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shuffle(block_rows: u64, span_rows: u64, window: u64) -> Option<Shuffle> {
        Some(Shuffle { block_rows, span_rows, window })
    }

    #[test]
    fn an_epoch_is_a_permutation_and_depends_on_seed_and_epoch() {
        let rows = [100, 37, 64, 1, 250];
        let n: u64 = rows.iter().sum();
        let all = |key| {
            let mut o = EpochOrder::new(&rows, shuffle(16, 100, 50).as_ref(), key);
            (0..n).map(|i| o.get(i)).collect::<Vec<_>>()
        };
        let a = all([1, 0, 0]);
        let mut sorted = a.clone();
        sorted.sort();
        let expect: Vec<_> = rows.iter().enumerate().flat_map(|(s, &r)| (0..r).map(move |row| (s as u32, row))).collect();
        assert_eq!(sorted, expect);
        assert_eq!(a, all([1, 0, 0]));
        assert_ne!(a, all([2, 0, 0]));
        assert_ne!(a, all([1, 0, 1]));
        // Random access agrees with sequential access.
        let mut o = EpochOrder::new(&rows, shuffle(16, 100, 50).as_ref(), [1, 0, 0]);
        for i in [400, 3, 200, 451, 0] {
            assert_eq!(o.get(i), a[i as usize]);
        }
    }

    #[test]
    fn no_shuffle_is_the_stored_order() {
        let mut o = EpochOrder::new(&[2, 3], None, [9, 0, 0]);
        let got: Vec<_> = (0..5).map(|i| o.get(i)).collect();
        assert_eq!(got, vec![(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]);
    }

    #[test]
    fn weighted_round_robin_keeps_the_ratio_at_every_prefix() {
        let sets = vec![SetShape { shard_rows: vec![1000], weight: 3.0 }, SetShape { shard_rows: vec![1000], weight: 1.0 }];
        let comp = Composition::PerSample { batch_size: 8, ratio: vec![(64, 1.0)] };
        let mut p = Planner::new(7, shuffle(8, 64, 16), sets, comp, EpochEnd::Drop, (0, 1), None);
        let mut counts = [0u64; 2];
        for _ in 0..50 {
            for s in p.next_step().samples {
                counts[s.set] += 1;
            }
            let t = counts[0] + counts[1];
            assert!((counts[0] as i64 - (3 * t / 4) as i64).abs() <= 1, "{counts:?}");
        }
    }
}
