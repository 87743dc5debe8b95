//! Reuse of pixel buffers: a consumer done with a batch hands its buffers back through a
//! [`Recycler`], and the reader builds later steps in them instead of fresh allocations (each
//! fresh 12 MiB buffer is new pages to fault in, and freeing it from another thread is where
//! glibc's per-thread arenas cost the most).

use std::sync::{Mutex, Weak};

/// Spare buffers kept at most; more are freed.
const MAX_SPARE: usize = 8;

#[derive(Default)]
pub(crate) struct Pool {
    spare: Mutex<Vec<Vec<u8>>>,
}

impl Pool {
    /// An empty buffer with room for `cap` bytes: a spare one when one fits (no more than twice
    /// the size, so a small step does not pin a large buffer), else a fresh one.
    pub(crate) fn take(&self, cap: usize) -> Vec<u8> {
        let mut spare = self.spare.lock().expect("pool lock");
        match spare.iter().position(|b| b.capacity() >= cap && b.capacity() <= 2 * cap.max(1)) {
            Some(i) => {
                let mut buf = spare.swap_remove(i);
                buf.clear();
                buf
            }
            None => Vec::with_capacity(cap),
        }
    }

    fn give(&self, buf: Vec<u8>) {
        let mut spare = self.spare.lock().expect("pool lock");
        if spare.len() < MAX_SPARE && buf.capacity() > 0 {
            spare.push(buf);
        }
    }
}

/// Hands pixel buffers back to the loader it came from ([`crate::Loader::recycler`]). Cheap to
/// clone and to keep: once the loader is gone, buffers given to it are simply freed.
#[derive(Clone)]
pub struct Recycler(pub(crate) Weak<Pool>);

impl Recycler {
    pub fn give(&self, buf: Vec<u8>) {
        if let Some(pool) = self.0.upgrade() {
            pool.give(buf);
        }
    }

    /// Gives back every pixel buffer of `batch` (its other fields are dropped).
    pub fn give_batch(&self, batch: crate::Batch) {
        for (_, px) in batch.pixels {
            self.give(px.data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_a_fitting_spare_else_allocates() {
        let pool = Pool::default();
        let a = pool.take(1000);
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(600); // fits: 1000 <= 2 * 600
        assert_eq!((b.as_ptr(), b.len()), (ptr, 0));
        pool.give(b);
        let c = pool.take(400); // 1000 > 2 * 400: not pinned for a small step
        assert_ne!(c.as_ptr(), ptr);
        let d = pool.take(2000); // too small
        assert!(d.capacity() >= 2000);
        assert_eq!(pool.spare.lock().unwrap().len(), 1);
        for _ in 0..20 {
            pool.give(Vec::with_capacity(10));
        }
        assert_eq!(pool.spare.lock().unwrap().len(), MAX_SPARE);
    }
}
