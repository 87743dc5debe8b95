//! Shard sets as the loader reads them: open (local folder or object store), check that they
//! can be mixed, and fetch one sample's payload through a byte-capped row-group cache.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BinaryArray, RecordBatch};
use arrow::buffer::Buffer;
use arrow::datatypes::{Int32Type, UInt32Type};
use mdm_shards::{jpeg_column, Layout, Manifest, RecordKind, ShardReader, ShardSet};

use crate::error::{Corrupt, Error, Result};
use crate::store::{RemoteSet, RemoteShard};

/// Where a shard set's files are read from.
pub(crate) enum Location {
    Local(ShardSet),
    Remote(Arc<RemoteSet>),
}

/// One opened shard set.
pub(crate) struct Set {
    /// The manifest path or URL as given.
    pub name: String,
    pub manifest: Manifest,
    pub weight: f64,
    pub location: Location,
}

impl Set {
    pub(crate) fn layout(&self) -> Layout {
        self.manifest.layout()
    }

    fn shard_name(&self, shard: u32) -> String {
        match &self.location {
            Location::Local(set) => set.shard_path(shard as usize).map_or_else(|| format!("shard {shard}"), |p| p.display().to_string()),
            Location::Remote(r) => r.shard_url(shard as usize),
        }
    }

    fn open_shard(&self, shard: u32) -> Result<ShardHandle> {
        match &self.location {
            Location::Local(set) => Ok(ShardHandle::Local(set.reader(shard as usize)?)),
            Location::Remote(r) => Ok(ShardHandle::Remote(r.open_shard(shard as usize)?)),
        }
    }
}

/// Checks that every set can be mixed with the first: same kind and text encoder, and every
/// requested resolution available (stored, or below the largest stored one).
pub(crate) fn check_mix(sets: &[Set], resolutions: &[u32]) -> Result<()> {
    let Some(first) = sets.first() else {
        return Err(Error::Config("no shard sets given".into()));
    };
    for s in sets {
        let mix = |what: String| Err(Error::Mix { a: first.name.clone(), b: s.name.clone(), what });
        if s.manifest.kind != first.manifest.kind {
            return mix(format!("kind {} differs from {}", s.manifest.kind, first.manifest.kind));
        }
        if s.manifest.text_encoder != first.manifest.text_encoder {
            let show = |m: &Manifest| m.text_encoder.as_ref().map_or("none".to_string(), |e| format!("{} ({:?}, dim {})", e.model_id, e.dtype, e.dim));
            return mix(format!("text encoder {} differs from {}", show(&s.manifest), show(&first.manifest)));
        }
        if s.manifest.rows() == 0 {
            return Err(Error::Config(format!("{}: the shard set has no rows", s.name)));
        }
        let max = s.layout().max_resolution();
        if let Some(r) = resolutions.iter().find(|&&r| r > max) {
            return Err(Error::Config(format!("{}: resolution {r} is above the largest stored one ({max})", s.name)));
        }
    }
    Ok(())
}

/// The stored resolution a sample at `res` is decoded from: `res` itself when stored and no
/// crop enlarges it, else the smallest stored side that still covers `res / min_crop`, else
/// the largest.
pub(crate) fn source_resolution(layout: &Layout, res: u32, min_crop: f64) -> u32 {
    if min_crop >= 1.0 && layout.resolutions.contains(&res) {
        return res;
    }
    let need = (res as f64 / min_crop).ceil() as u32;
    layout.resolutions.iter().rev().copied().find(|&r| r >= need).unwrap_or(layout.max_resolution())
}

/// What the reader needs from rows.
#[derive(Debug, Clone)]
pub(crate) struct Needs {
    pub resolutions: Vec<u32>,
    pub min_crop: f64,
    pub captions: bool,
    pub text: bool,
    /// Verify row checksums (reads every column of a row group).
    pub verify: bool,
}

impl Needs {
    /// Columns to project for `layout`, or `None` for all of them.
    fn columns(&self, layout: &Layout) -> Option<Vec<String>> {
        if self.verify {
            return None;
        }
        let mut cols = vec!["id".to_string()];
        if self.captions {
            cols.push("caption".into());
        }
        match layout.kind {
            RecordKind::Video => cols.push("frames".into()),
            RecordKind::Image | RecordKind::TextImage => {
                cols.push("label".into());
                let mut stored: Vec<u32> = self.resolutions.iter().map(|&r| source_resolution(layout, r, self.min_crop)).collect();
                stored.sort_unstable();
                stored.dedup();
                cols.extend(stored.into_iter().map(jpeg_column));
            }
        }
        if self.text && layout.kind.has_text() {
            cols.extend(["t5_tokens".into(), "t5_emb".into()]);
        }
        Some(cols)
    }
}

/// The encoded payload of one sample.
#[derive(Debug, Clone)]
pub(crate) struct Payload {
    pub id: String,
    pub caption: Option<String>,
    pub label: Option<i32>,
    /// Side of the stored JPEGs.
    pub stored: u32,
    /// One JPEG (image) or the clip's frames (video): slices of the row group's buffers, not
    /// copies (a row group stays in memory while a payload of it is in flight).
    pub jpegs: Vec<Buffer>,
    /// T5 tokens and embedding bytes.
    pub text: Option<(u32, Vec<u8>)>,
}

impl Payload {
    pub(crate) fn bytes(&self) -> usize {
        self.jpegs.iter().map(|j| j.len()).sum::<usize>() + self.text.as_ref().map_or(0, |t| t.1.len())
    }
}

pub(crate) enum ShardHandle {
    Local(ShardReader),
    Remote(RemoteShard),
}

impl ShardHandle {
    fn row_group_offsets(&self) -> Vec<u64> {
        match self {
            ShardHandle::Local(r) => r.row_group_offsets(),
            ShardHandle::Remote(r) => r.row_group_offsets(),
        }
    }

    fn num_rows(&self) -> u64 {
        match self {
            ShardHandle::Local(r) => r.num_rows(),
            ShardHandle::Remote(r) => r.num_rows(),
        }
    }

    fn read_row_group(&self, index: usize, columns: Option<&[&str]>) -> Result<RecordBatch> {
        match self {
            ShardHandle::Local(r) => Ok(r.read_row_group(index, columns)?),
            ShardHandle::Remote(r) => r.read_row_group(index, columns),
        }
    }
}

struct Cached {
    batch: Arc<RecordBatch>,
    bytes: usize,
    used: u64,
}

/// Fetches sample payloads; owned by the reader thread.
pub(crate) struct Fetcher {
    sets: Arc<Vec<Set>>,
    needs: Needs,
    handles: HashMap<(usize, u32), (ShardHandle, Vec<u64>)>,
    cache: HashMap<(usize, u32, usize), Cached>,
    cache_bytes: usize,
    cache_cap: usize,
    tick: u64,
}

/// Open shard handles kept at most (file descriptors, footers).
const MAX_HANDLES: usize = 256;

impl Fetcher {
    pub(crate) fn new(sets: Arc<Vec<Set>>, needs: Needs, cache_cap: usize) -> Self {
        Fetcher { sets, needs, handles: HashMap::new(), cache: HashMap::new(), cache_bytes: 0, cache_cap, tick: 0 }
    }

    pub(crate) fn shard_name(&self, set: usize, shard: u32) -> String {
        self.sets[set].shard_name(shard)
    }

    /// Bytes of row groups held in memory now.
    pub(crate) fn cached_bytes(&self) -> usize {
        self.cache_bytes
    }

    fn handle(&mut self, set: usize, shard: u32) -> Result<&(ShardHandle, Vec<u64>)> {
        if !self.handles.contains_key(&(set, shard)) {
            if self.handles.len() >= MAX_HANDLES {
                self.handles.clear();
            }
            let s = &self.sets[set];
            let h = s.open_shard(shard)?;
            let expect = s.manifest.shards[shard as usize].rows;
            if h.num_rows() != expect {
                return Err(Error::Shard { shard: s.shard_name(shard), what: format!("{} rows, the manifest says {expect}", h.num_rows()) });
            }
            let offsets = h.row_group_offsets();
            self.handles.insert((set, shard), (h, offsets));
        }
        Ok(&self.handles[&(set, shard)])
    }

    fn row_group(&mut self, set: usize, shard: u32, rg: usize) -> Result<Arc<RecordBatch>> {
        self.tick += 1;
        if let Some(c) = self.cache.get_mut(&(set, shard, rg)) {
            c.used = self.tick;
            return Ok(c.batch.clone());
        }
        let layout = self.sets[set].layout();
        let cols = self.needs.columns(&layout);
        let names: Option<Vec<&str>> = cols.as_ref().map(|c| c.iter().map(String::as_str).collect());
        let batch = Arc::new(self.handle(set, shard)?.0.read_row_group(rg, names.as_deref())?);
        let bytes = batch.get_array_memory_size();
        while self.cache_bytes + bytes > self.cache_cap && !self.cache.is_empty() {
            let oldest = *self.cache.iter().min_by_key(|(_, c)| c.used).expect("cache is not empty").0;
            self.cache_bytes -= self.cache.remove(&oldest).expect("key just found").bytes;
        }
        self.cache_bytes += bytes;
        self.cache.insert((set, shard, rg), Cached { batch: batch.clone(), bytes, used: self.tick });
        Ok(batch)
    }

    /// The payload of `row` of `shard` of `set`, to be decoded at `res`. The outer error stops
    /// the loader (I/O, wrong file); the inner one is a corrupt row, for the corrupt policy.
    pub(crate) fn fetch(&mut self, set: usize, shard: u32, row: u64, res: u32) -> Result<Result<Payload, Corrupt>> {
        let (rg, first) = {
            let offsets = &self.handle(set, shard)?.1;
            let rg = offsets.partition_point(|&o| o <= row) - 1;
            (rg, offsets[rg])
        };
        let batch = self.row_group(set, shard, rg)?;
        let i = (row - first) as usize;
        let s = &self.sets[set];
        let layout = s.layout();
        let corrupt = |id: Option<String>, what: String| Corrupt { shard: s.shard_name(shard), row, id, what };
        let bad_column = |name: &str| Error::Shard { shard: s.shard_name(shard), what: format!("column {name:?} is missing or of the wrong type") };
        if i >= batch.num_rows() {
            return Err(Error::Shard { shard: s.shard_name(shard), what: format!("row {row} is past its row group") });
        }
        let ids = batch.column_by_name("id").and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| bad_column("id"))?;
        let id = ids.value(i).to_string();
        if self.needs.verify {
            let one = batch.slice(i, 1);
            let dtype = s.manifest.text_encoder.as_ref().map_or(mdm_shards::EmbeddingDType::F16, |e| e.dtype);
            let path = PathBuf::from(s.shard_name(shard));
            match mdm_shards::batch_to_records(&layout, &one, dtype, &path, row) {
                Ok(rows) => {
                    let (record, stored) = &rows[0];
                    if record.checksum(layout.kind) != *stored {
                        return Ok(Err(corrupt(Some(id), "checksum mismatch".into())));
                    }
                }
                Err(e) => return Ok(Err(corrupt(Some(id), e.to_string()))),
            }
        }
        let caption = match self.needs.captions {
            true => {
                let c = batch.column_by_name("caption").and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| bad_column("caption"))?;
                (!c.is_null(i)).then(|| c.value(i).to_string())
            }
            false => None,
        };
        let (stored, jpegs, label) = match layout.kind {
            RecordKind::Video => {
                let frames = batch.column_by_name("frames").and_then(|c| c.as_list_opt::<i32>()).ok_or_else(|| bad_column("frames"))?;
                let list = frames.value(i);
                let list = list.as_binary_opt::<i32>().ok_or_else(|| bad_column("frames"))?;
                (layout.max_resolution(), (0..list.len()).map(|k| value_buffer(list, k)).collect(), None)
            }
            RecordKind::Image | RecordKind::TextImage => {
                let stored = source_resolution(&layout, res, self.needs.min_crop);
                let name = jpeg_column(stored);
                let col = batch.column_by_name(&name).and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(|| bad_column(&name))?;
                let labels = batch.column_by_name("label").and_then(|c| c.as_primitive_opt::<Int32Type>()).ok_or_else(|| bad_column("label"))?;
                (stored, vec![value_buffer(col, i)], (!labels.is_null(i)).then(|| labels.value(i)))
            }
        };
        let text = if self.needs.text && layout.kind.has_text() {
            let tokens = batch.column_by_name("t5_tokens").and_then(|c| c.as_primitive_opt::<UInt32Type>()).ok_or_else(|| bad_column("t5_tokens"))?;
            let emb = batch.column_by_name("t5_emb").and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(|| bad_column("t5_emb"))?;
            match (emb.is_null(i), tokens.is_null(i)) {
                (true, _) => None,
                (false, true) => return Ok(Err(corrupt(Some(id), "embedding without a token count".into()))),
                (false, false) => {
                    let (t, data) = (tokens.value(i), emb.value(i));
                    let dim = s.manifest.text_encoder.as_ref().map_or(0, |e| e.dim as usize);
                    if dim > 0 && data.len() != t as usize * dim * 2 {
                        return Ok(Err(corrupt(Some(id), format!("embedding has {} bytes, not {t} tokens x {dim} x 2", data.len()))));
                    }
                    Some((t, data.to_vec()))
                }
            }
        } else {
            None
        };
        Ok(Ok(Payload { id, caption, label, stored, jpegs, text }))
    }
}

/// Value `i` of `array` as a slice of its values buffer (no copy).
fn value_buffer(array: &BinaryArray, i: usize) -> Buffer {
    let offsets = array.value_offsets();
    let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
    array.values().slice_with_length(start, end - start)
}
