//! `mdm-loader`: streams `mdm-shards` into typed, mixed-resolution training batches with an
//! exactly-once, resumable sample order.
//!
//! - **Order** ([`order`](crate::Shuffle)): a pure function of (seed, epoch, shard sizes,
//!   settings): shards shuffled, blocks of rows shuffled within spans of shards, then a
//!   windowed shuffle. Global step `g` covers a contiguous range of epoch positions; rank `r`
//!   of `W` takes the `r`-th slice of it, so the global order does not depend on the world size
//!   and a run restarted on another number of GPUs continues where it stopped.
//! - **Resume**: [`Loader::state`] is a few integers; a loader built with it yields exactly the
//!   rest of the order, and an optional order log hashes every step's ids to prove it.
//! - **Batches** ([`Batch`]): uint8 NCHW pixels per resolution (`B×T×C×H×W` for video), T5
//!   embeddings padded to the batch's longest with a mask, labels, captions, ids. Each sample's
//!   resolution is drawn from a mixed ratio, or one per step with buckets sized by a pixel budget.
//!   A 64² sample reads `jpeg_64` when stored, else decodes a larger JPEG with DCT scaling.
//! - **Pipeline**: a reader thread, crossbeam decode workers (libjpeg-turbo, writing straight
//!   into the batch tensors), and an ordered assembler; at most `prefetch` steps are in flight,
//!   which bounds memory. [`Loader::stats`] reports throughput, time waiting per stage, samples
//!   per resolution and shuffle quality for the trainer's logs.
//! - **Object store**: `s3://bucket/prefix` sources are read by ranged GETs of just the needed
//!   column chunks, through a size-capped disk cache, with retries on timeouts and 5xx.
//!
//! ```no_run
//! use mdm_loader::{LoaderBuilder, LoaderState};
//! # fn main() -> mdm_loader::Result<()> {
//! let mut loader = LoaderBuilder::new()
//!     .source("shards/cc12m", 2.0)
//!     .source("shards/imagenet", 1.0)
//!     .batch_size(64)
//!     .mixed_ratio(vec![(256, 2.0), (64, 1.0)])
//!     .seed(42)
//!     .rank(0, 8)
//!     .build()?;
//! for batch in loader.by_ref().take(100) {
//!     let batch = batch?;
//!     for (res, px) in &batch.pixels {
//!         println!("{res}: {:?}", px.shape());
//!     }
//! }
//! loader.state().save("loader-state.json".as_ref())?;
//! let again = LoaderBuilder::new().source("shards/cc12m", 2.0).source("shards/imagenet", 1.0)
//!     .batch_size(64).mixed_ratio(vec![(256, 2.0), (64, 1.0)]).seed(42).rank(0, 8)
//!     .resume(Some(LoaderState::load("loader-state.json".as_ref())?))
//!     .build()?;
//! # drop(again); Ok(()) }
//! ```

mod batch;
mod decode;
mod error;
mod loader;
mod order;
mod pipeline;
mod recycle;
mod source;
mod state;
mod stats;
mod store;

pub use batch::{Batch, Pixels, TextBatch};
pub use error::{Corrupt, Error, Result};
pub use loader::{CorruptPolicy, Loader, LoaderBuilder};
pub use order::{Composition, Cursor, EpochEnd, Shuffle};
pub use recycle::Recycler;
pub use state::LoaderState;
pub use stats::Stats;
pub use store::StoreOptions;
