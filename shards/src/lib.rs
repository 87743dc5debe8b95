//! `mdm-shards`: the on-disk contract between ingest and loader.
//!
//! A *shard set* is a folder of Parquet files plus a `manifest.json` written last and
//! atomically. Every file holds rows of one [`RecordKind`] (image, text-image, video) in the
//! versioned schema of its [`Layout`]; every row carries an xxh3 checksum of its columns, and the
//! manifest the sha256 of every file, so [`verify`] can name the shard and row of any damage.
//!
//! ```no_run
//! use mdm_shards::{Body, ImageBody, Layout, Manifest, Record, RecordKind, ShardSet, ShardWriter, WriterOptions};
//! # fn main() -> mdm_shards::Result<()> {
//! let layout = Layout::new(RecordKind::Image, vec![256, 64]).expect("valid layout");
//! let mut w = ShardWriter::try_new("out", layout.clone(), WriterOptions::default())?;
//! w.write(Record {
//!     id: "n01440764/0001".into(),
//!     source: "train/n01440764/0001.JPEG".into(),
//!     source_sha256: [0; 32],
//!     width: 500,
//!     height: 375,
//!     caption: None,
//!     text: None,
//!     body: Body::Image(ImageBody { label: Some(0), crop_box: None, jpegs: vec![vec![0xff, 0xd8], vec![0xff, 0xd8]] }),
//! })?;
//! let mut manifest = Manifest::new(&layout, None);
//! manifest.shards = w.close()?;
//! manifest.stats.inputs = 1;
//! manifest.stats.written = 1;
//! manifest.write("out".as_ref())?;
//!
//! let set = ShardSet::open("out")?;
//! for record in set.records() {
//!     println!("{}", record?.id);
//! }
//! # Ok(()) }
//! ```

mod batch;
pub mod durable;
mod error;
mod manifest;
mod reader;
mod record;
mod schema;
mod verify;
mod writer;

pub use batch::{batch_to_records, records_to_batch};
pub use error::{Error, Result};
pub use manifest::{BuildStats, ClassInfo, Manifest, ShardEntry, TextEncoderInfo, MANIFEST_FILE};
pub use reader::{ShardReader, ShardSet};
pub use record::{Body, EmbeddingDType, ImageBody, Record, TextEmbedding, VideoBody};
pub use schema::{jpeg_column, Layout, RecordKind, FORMAT_VERSION};
pub use verify::{verify, Problem, VerifyReport};
pub use writer::{ShardWriter, WriterOptions};

/// sha256 of `bytes` (the digest recorded as a record's `source_sha256`).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// The length and hex sha256 of a file, read in 1 MiB pieces (the digest a manifest records
/// per shard; also used for weights files).
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<(u64, String)> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex::encode(h.finalize())))
}
