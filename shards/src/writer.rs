//! [`ShardWriter`]: rows in, Parquet shard files out, in the arrow-rs writer style
//! (`try_new`, `write`, `flush`, consuming `close`).
//!
//! Each shard is written under `NAME.parquet.tmp` and renamed to `NAME.parquet` only once
//! complete and synced, so a partial file is never visible under a final name. Rows are
//! buffered into row groups of about `row_group_bytes`; files roll at `max_shard_bytes` or
//! `max_shard_rows`.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};

use crate::batch::records_to_batch;
use crate::error::{io, pq, Error, Result};
use crate::manifest::{ShardEntry, TextEncoderInfo};
use crate::record::Record;
use crate::schema::Layout;

/// Settings of a [`ShardWriter`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// File names are `{prefix}-{index:05}.parquet`. Default `"shard"`.
    pub prefix: String,
    /// Index of the first file. Default 0.
    pub first_index: u32,
    /// Roll to a new file once a file reaches this size. Default 512 MiB.
    pub max_shard_bytes: u64,
    /// Roll to a new file after this many rows. Default: no limit.
    pub max_shard_rows: Option<u64>,
    /// Close a row group once its rows hold this many payload bytes. Default 32 MiB.
    pub row_group_bytes: usize,
    /// Close a row group after this many rows. Default 1024.
    pub row_group_rows: usize,
    /// Encoder of the stored embeddings (text kinds); recorded in each file's metadata.
    pub text_encoder: Option<TextEncoderInfo>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            prefix: "shard".into(),
            first_index: 0,
            max_shard_bytes: 512 << 20,
            max_shard_rows: None,
            row_group_bytes: 32 << 20,
            row_group_rows: 1024,
            text_encoder: None,
        }
    }
}

/// Counts bytes and hashes them on their way to the file.
struct HashingFile {
    inner: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct OpenShard {
    name: String,
    tmp: PathBuf,
    writer: ArrowWriter<HashingFile>,
    rows: u64,
    row_groups: u32,
}

/// Writes records of one [`Layout`] into rolling Parquet shards in a folder.
pub struct ShardWriter {
    dir: PathBuf,
    layout: Layout,
    schema: SchemaRef,
    props: WriterProperties,
    opts: WriterOptions,
    next_index: u32,
    current: Option<OpenShard>,
    pending: Vec<Record>,
    pending_bytes: usize,
    done: Vec<ShardEntry>,
}

impl ShardWriter {
    /// Prepares a writer into `dir` (created if missing). No file is created before the first row.
    pub fn try_new(dir: impl AsRef<Path>, layout: Layout, opts: WriterOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        layout.validate().map_err(|msg| Error::Invalid { path: dir.clone(), msg })?;
        if opts.text_encoder.is_some() && !layout.kind.has_text() {
            return Err(Error::Invalid { path: dir, msg: format!("{} shards carry no text encoder", layout.kind) });
        }
        if opts.row_group_rows == 0 || opts.max_shard_rows == Some(0) {
            return Err(Error::Invalid { path: dir, msg: "row limits must be positive".into() });
        }
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut schema = (*layout.schema()).clone();
        if let Some(enc) = &opts.text_encoder {
            let json = serde_json::to_string(enc).map_err(|source| Error::ManifestJson { path: dir.clone(), source })?;
            schema.metadata.insert("mdm.text_encoder", json);
        }
        let schema = std::sync::Arc::new(schema);
        // Payload columns are incompressible JPEG / fp16 bytes: no compression, no dictionary,
        // no statistics. Small columns get zstd.
        let mut props = WriterProperties::builder()
            .set_compression(Compression::UNCOMPRESSED)
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::None)
            .set_max_row_group_row_count(None)
            .set_max_row_group_bytes(None);
        for name in ["id", "source", "caption"] {
            props = props.set_column_compression(ColumnPath::from(name), Compression::ZSTD(ZstdLevel::default()));
        }
        Ok(ShardWriter {
            next_index: opts.first_index,
            dir,
            layout,
            schema,
            props: props.build(),
            opts,
            current: None,
            pending: Vec::new(),
            pending_bytes: 0,
            done: Vec::new(),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Rows accepted so far (written or buffered).
    pub fn rows(&self) -> u64 {
        self.done.iter().map(|s| s.rows).sum::<u64>()
            + self.current.as_ref().map_or(0, |c| c.rows)
            + self.pending.len() as u64
    }

    /// Shards completed so far (renamed to their final names).
    pub fn finished(&self) -> &[ShardEntry] {
        &self.done
    }

    /// Adds one record; it is validated against the layout first.
    pub fn write(&mut self, record: Record) -> Result<()> {
        record.validate(&self.layout, self.opts.text_encoder.as_ref().map(|e| e.dim))?;
        self.pending_bytes += record.payload_bytes();
        self.pending.push(record);
        let rows_in_file = self.current.as_ref().map_or(0, |c| c.rows) + self.pending.len() as u64;
        let file_full = self.opts.max_shard_rows.is_some_and(|m| rows_in_file >= m);
        if file_full || self.pending.len() >= self.opts.row_group_rows || self.pending_bytes >= self.opts.row_group_bytes {
            self.flush()?;
        }
        if file_full {
            self.finish_shard()?;
        }
        Ok(())
    }

    /// Writes buffered rows as one row group; rolls the file if it reached its size.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let cur = match self.current.take() {
            Some(c) => c,
            None => self.open_shard()?,
        };
        let cur = self.current.insert(cur);
        let batch = records_to_batch(&self.layout, &self.schema, &self.pending, &cur.tmp)?;
        cur.writer.write(&batch).map_err(pq(&cur.tmp))?;
        cur.writer.flush().map_err(pq(&cur.tmp))?;
        cur.rows += self.pending.len() as u64;
        cur.row_groups += 1;
        self.pending.clear();
        self.pending_bytes = 0;
        if cur.writer.bytes_written() as u64 >= self.opts.max_shard_bytes {
            self.finish_shard()?;
        }
        Ok(())
    }

    /// Flushes and completes every file; returns the shards written, in order.
    pub fn close(mut self) -> Result<Vec<ShardEntry>> {
        self.flush()?;
        self.finish_shard()?;
        Ok(std::mem::take(&mut self.done))
    }

    fn open_shard(&mut self) -> Result<OpenShard> {
        let name = format!("{}-{:05}.parquet", self.opts.prefix, self.next_index);
        self.next_index += 1;
        let tmp = self.dir.join(format!("{name}.tmp"));
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let sink = HashingFile { inner: BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new(), bytes: 0 };
        let writer = ArrowWriter::try_new(sink, self.schema.clone(), Some(self.props.clone())).map_err(pq(&tmp))?;
        Ok(OpenShard { name, tmp, writer, rows: 0, row_groups: 0 })
    }

    fn finish_shard(&mut self) -> Result<()> {
        let Some(cur) = self.current.take() else { return Ok(()) };
        let mut sink = cur.writer.into_inner().map_err(pq(&cur.tmp))?;
        sink.flush().map_err(io(&cur.tmp))?;
        let HashingFile { inner, hasher, bytes } = sink;
        let file = inner.into_inner().map_err(|e| Error::Io { path: cur.tmp.clone(), source: e.into_error() })?;
        file.sync_all().map_err(io(&cur.tmp))?;
        let path = self.dir.join(&cur.name);
        crate::durable::persist(&cur.tmp, &path)?;
        self.done.push(ShardEntry {
            file: cur.name,
            rows: cur.rows,
            bytes,
            sha256: hex::encode(hasher.finalize()),
            row_groups: cur.row_groups,
            schema_fingerprint: self.layout.fingerprint(),
        });
        Ok(())
    }
}
