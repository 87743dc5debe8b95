//! Shard sets on an object store (`s3://bucket/prefix`, or a `manifest.json` under it).
//!
//! Nothing is downloaded whole: the manifest is one GET, each shard's footer two ranged GETs,
//! and a row group only the byte ranges of its projected column chunks. Fetched ranges go
//! through a byte-capped local disk cache (least recently used first out). `object_store`
//! retries timeouts and 5xx answers with exponential backoff.

use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use mdm_shards::{Layout, Manifest, MANIFEST_FILE};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::file::reader::{ChunkReader, Length};

use crate::error::{io, Error, Result};

/// Object-store settings of a loader.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreOptions {
    /// Folder of the local range cache; `None` for none. Default `$TMPDIR/mdm-loader-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Cache size cap in bytes. Default 16 GiB.
    pub cache_bytes: u64,
    /// Retries of a failed request (timeouts, 5xx). Default 10.
    pub max_retries: usize,
    /// First backoff; it doubles per retry up to 10 s. Default 100 ms.
    pub init_backoff: Duration,
    /// Give up retrying a request after this long. Default 3 min.
    pub retry_timeout: Duration,
    /// Timeout of one request. Default 60 s.
    pub request_timeout: Duration,
    /// `object_store` S3 settings applied over the `AWS_*` environment, e.g.
    /// `("aws_endpoint", "http://127.0.0.1:9000")`, `("aws_allow_http", "true")`.
    pub config: Vec<(String, String)>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_dir: Some(std::env::temp_dir().join("mdm-loader-cache")),
            cache_bytes: 16 << 30,
            max_retries: 10,
            init_backoff: Duration::from_millis(100),
            retry_timeout: Duration::from_secs(180),
            request_timeout: Duration::from_secs(60),
            config: Vec::new(),
        }
    }
}

/// True for the URLs the loader reads through an object store.
pub(crate) fn is_url(name: &str) -> bool {
    name.starts_with("s3://")
}

/// A bucket, the runtime its requests run on, and the range cache.
struct Bucket {
    url: String,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    cache: Option<Mutex<DiskCache>>,
}

/// An opened remote shard set.
pub(crate) struct RemoteSet {
    bucket: Bucket,
    /// Key of the manifest's folder.
    dir: Vec<String>,
    pub manifest: Manifest,
}

impl RemoteSet {
    pub(crate) fn open(url: &str, opts: &StoreOptions) -> Result<Self> {
        let store_err = |what: String| Error::Store { url: url.to_string(), what };
        let rest = url.strip_prefix("s3://").ok_or_else(|| store_err("not an s3:// URL".into()))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(store_err("no bucket in the URL".into()));
        }
        let mut parts: Vec<String> = key.split('/').filter(|p| !p.is_empty()).map(String::from).collect();
        if parts.last().is_none_or(|p| !p.ends_with(".json")) {
            parts.push(MANIFEST_FILE.into());
        }
        let manifest_key = parts.join("/");
        parts.pop();
        let retry = RetryConfig {
            backoff: BackoffConfig { init_backoff: opts.init_backoff, max_backoff: Duration::from_secs(10), base: 2.0 },
            max_retries: opts.max_retries,
            retry_timeout: opts.retry_timeout,
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry)
            .with_client_options(ClientOptions::new().with_timeout(opts.request_timeout));
        for (k, v) in &opts.config {
            let key: AmazonS3ConfigKey = k.parse().map_err(|e| store_err(format!("setting {k:?}: {e}")))?;
            builder = builder.with_config(key, v);
        }
        let store: Arc<dyn ObjectStore> = Arc::new(builder.build().map_err(|e| store_err(e.to_string()))?);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| store_err(format!("cannot start the I/O runtime: {e}")))?;
        let cache = match &opts.cache_dir {
            None => None,
            Some(dir) => Some(Mutex::new(DiskCache::open(dir, opts.cache_bytes)?)),
        };
        let bucket = Bucket { url: format!("s3://{bucket}"), store, runtime, cache };
        let bytes = bucket.get(&manifest_key, None)?;
        let manifest_url = format!("{}/{manifest_key}", bucket.url);
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::Store { url: manifest_url.clone(), what: format!("invalid manifest: {e}") })?;
        manifest.validate(FsPath::new(&manifest_url))?;
        Ok(RemoteSet { bucket, dir: parts, manifest })
    }

    /// Object key of shard `index` (its path is relative to the manifest's folder).
    fn shard_key(&self, index: usize) -> String {
        let mut parts = self.dir.clone();
        for p in self.manifest.shards[index].file.split('/') {
            match p {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p.to_string()),
            }
        }
        parts.join("/")
    }

    pub(crate) fn shard_url(&self, index: usize) -> String {
        format!("{}/{}", self.bucket.url, self.shard_key(index))
    }

    /// Reads shard `index`'s footer.
    pub(crate) fn open_shard(self: &Arc<Self>, index: usize) -> Result<RemoteShard> {
        let key = self.shard_key(index);
        let url = self.shard_url(index);
        let bad = |what: String| Error::Shard { shard: url.clone(), what };
        let size = self.manifest.shards[index].bytes;
        if size < 12 {
            return Err(bad(format!("{size} bytes is too small for a Parquet file")));
        }
        let tail = self.bucket.get(&key, Some(size - 8..size))?;
        if tail.len() != 8 || &tail[4..] != b"PAR1" {
            return Err(bad("no Parquet footer (size differs from the manifest, or not Parquet)".into()));
        }
        let len = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as u64;
        if len + 8 > size {
            return Err(bad(format!("footer of {len} bytes does not fit the file")));
        }
        let footer = self.bucket.get(&key, Some(size - 8 - len..size - 8))?;
        let meta = ParquetMetaDataReader::decode_metadata(&footer).map_err(|e| bad(format!("footer: {e}")))?;
        let meta = ArrowReaderMetadata::try_new(Arc::new(meta), ArrowReaderOptions::new()).map_err(|e| bad(format!("footer: {e}")))?;
        let layout = Layout::from_schema(meta.schema()).map_err(bad)?;
        if layout != self.manifest.layout() {
            return Err(bad("shard layout differs from its manifest's".into()));
        }
        Ok(RemoteShard { set: self.clone(), key, url, size, meta })
    }
}

impl Bucket {
    /// `range` of object `key` (all of it for `None`), through the disk cache.
    fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<Bytes> {
        let cache_key = format!("{}/{key}#{range:?}", self.url);
        if let Some(cache) = &self.cache {
            if let Some(bytes) = cache.lock().expect("cache lock").get(&cache_key) {
                return Ok(bytes);
            }
        }
        let path = Path::from(key);
        let fetched = self.runtime.block_on(async {
            match range.clone() {
                Some(r) => self.store.get_range(&path, r).await,
                None => match self.store.get(&path).await {
                    Ok(g) => g.bytes().await,
                    Err(e) => Err(e),
                },
            }
        });
        let bytes = fetched.map_err(|e| Error::Store { url: format!("{}/{key}", self.url), what: e.to_string() })?;
        if let Some(cache) = &self.cache {
            cache.lock().expect("cache lock").put(&cache_key, &bytes)?;
        }
        Ok(bytes)
    }
}

/// One shard of a [`RemoteSet`], its footer read.
pub(crate) struct RemoteShard {
    set: Arc<RemoteSet>,
    key: String,
    url: String,
    size: u64,
    meta: ArrowReaderMetadata,
}

impl RemoteShard {
    pub(crate) fn num_rows(&self) -> u64 {
        self.meta.metadata().file_metadata().num_rows() as u64
    }

    pub(crate) fn row_group_offsets(&self) -> Vec<u64> {
        let mut acc = 0;
        self.meta
            .metadata()
            .row_groups()
            .iter()
            .map(|g| {
                let first = acc;
                acc += g.num_rows() as u64;
                first
            })
            .collect()
    }

    /// Row group `index`, only `columns` when given: fetches just those column chunks.
    pub(crate) fn read_row_group(&self, index: usize, columns: Option<&[&str]>) -> Result<RecordBatch> {
        let bad = |what: String| Error::Shard { shard: self.url.clone(), what };
        let md = self.meta.metadata();
        let rg = md.row_groups().get(index).ok_or_else(|| bad(format!("no row group {index}")))?;
        let mask = match columns {
            None => ProjectionMask::all(),
            Some(cols) => {
                let schema = self.meta.schema();
                let roots = cols.iter().map(|c| schema.index_of(c).map_err(|e| bad(e.to_string()))).collect::<Result<Vec<_>>>()?;
                ProjectionMask::roots(self.meta.parquet_schema(), roots)
            }
        };
        let mut chunks = Vec::new();
        for i in (0..rg.num_columns()).filter(|&i| mask.leaf_included(i)) {
            let (start, len) = rg.column(i).byte_range();
            if start + len > self.size {
                return Err(bad(format!("column chunk {i} of row group {index} ends past the file")));
            }
            chunks.push((start, self.set.bucket.get(&self.key, Some(start..start + len))?));
        }
        let sparse = Sparse { len: self.size, chunks };
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(sparse, self.meta.clone())
            .with_row_groups(vec![index])
            .with_projection(mask)
            .with_batch_size(usize::MAX >> 1)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let batches = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| bad(e.to_string()))?;
        let schema = batches.first().map(|b| b.schema()).unwrap_or_else(|| self.meta.schema().clone());
        arrow::compute::concat_batches(&schema, &batches).map_err(|e| bad(e.to_string()))
    }
}

/// The fetched byte ranges of a file, as a Parquet [`ChunkReader`].
struct Sparse {
    len: u64,
    chunks: Vec<(u64, Bytes)>,
}

impl Sparse {
    fn slice(&self, start: u64, len: Option<usize>) -> parquet::errors::Result<Bytes> {
        for (first, bytes) in &self.chunks {
            if start >= *first && start < first + bytes.len() as u64 {
                let from = (start - first) as usize;
                let to = len.map_or(bytes.len(), |n| from + n);
                if to <= bytes.len() {
                    return Ok(bytes.slice(from..to));
                }
            }
        }
        Err(parquet::errors::ParquetError::General(format!("bytes at {start} were not fetched")))
    }
}

impl Length for Sparse {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for Sparse {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(bytes::Buf::reader(self.slice(start, None)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, Some(length))
    }
}

/// Files named by the hash of their key, evicted least recently used first once their total
/// passes the cap. Several processes may share the folder: a file another one evicted is a miss.
struct DiskCache {
    dir: PathBuf,
    cap: u64,
    bytes: u64,
    tick: u64,
    entries: HashMap<String, (u64, u64)>,
}

impl DiskCache {
    fn open(dir: &FsPath, cap: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut cache = DiskCache { dir: dir.to_path_buf(), cap, bytes: 0, tick: 0, entries: HashMap::new() };
        // Files from earlier runs count, oldest first out.
        let mut old = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let (Ok(m), true) = (e.metadata(), name.ends_with(".bin")) {
                old.push((m.modified().ok(), name, m.len()));
            }
        }
        old.sort();
        for (_, name, len) in old {
            cache.tick += 1;
            cache.bytes += len;
            cache.entries.insert(name, (len, cache.tick));
        }
        cache.evict(0);
        Ok(cache)
    }

    fn name(key: &str) -> String {
        format!("{:016x}.bin", xxhash_rust::xxh3::xxh3_64(key.as_bytes()))
    }

    fn get(&mut self, key: &str) -> Option<Bytes> {
        let name = Self::name(key);
        let (len, _) = *self.entries.get(&name)?;
        let mut data = Vec::with_capacity(len as usize);
        let read = std::fs::File::open(self.dir.join(&name)).and_then(|mut f| f.read_to_end(&mut data));
        if read.is_err() || data.len() as u64 != len {
            self.entries.remove(&name);
            self.bytes -= len;
            return None;
        }
        self.tick += 1;
        self.entries.insert(name, (len, self.tick));
        Some(Bytes::from(data))
    }

    fn put(&mut self, key: &str, bytes: &[u8]) -> Result<()> {
        let len = bytes.len() as u64;
        if len > self.cap {
            return Ok(());
        }
        self.evict(len);
        let name = Self::name(key);
        mdm_shards::durable::write_atomic(&self.dir.join(&name), bytes)?;
        self.tick += 1;
        if let Some((old, _)) = self.entries.insert(name, (len, self.tick)) {
            self.bytes -= old;
        }
        self.bytes += len;
        Ok(())
    }

    /// Drops least recently used files until `incoming` more bytes fit under the cap.
    fn evict(&mut self, incoming: u64) {
        while self.bytes + incoming > self.cap {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.1).map(|(k, _)| k.clone()) else { break };
            let (len, _) = self.entries.remove(&oldest).expect("key just found");
            let _ = std::fs::remove_file(self.dir.join(&oldest));
            self.bytes -= len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_cache_keeps_under_its_cap_and_survives_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = DiskCache::open(tmp.path(), 250).unwrap();
        c.put("a", &[1; 100]).unwrap();
        c.put("b", &[2; 100]).unwrap();
        assert_eq!(c.get("a").unwrap()[..], [1; 100]); // a is now the most recent
        c.put("c", &[3; 100]).unwrap();
        assert!(c.get("b").is_none(), "the least recently used entry stays");
        assert!(c.bytes <= 250);
        drop(c);
        let mut again = DiskCache::open(tmp.path(), 250).unwrap();
        assert_eq!(again.get("c").unwrap()[..], [3; 100]);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
    }

    #[test]
    fn sparse_reader_serves_fetched_ranges_only() {
        let s = Sparse { len: 100, chunks: vec![(10, Bytes::from_static(b"abcdef"))] };
        assert_eq!(&s.get_bytes(12, 3).unwrap()[..], b"cde");
        assert!(s.get_bytes(14, 5).is_err());
        assert!(s.get_bytes(0, 1).is_err());
    }
}
