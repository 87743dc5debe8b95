//! `mdm_loader._native`: [`mdm_loader`](mdm_loader) for Python (pyo3, packaged by maturin as
//! the `mdm_loader` package beside this crate).
//!
//! - `Loader(sources, batch_size=..., ...)` takes the options of `LoaderBuilder` with its
//!   defaults, reads `rank`/`world_size` from torchrun's `RANK`/`WORLD_SIZE` when not given, and
//!   iterates [`Batch`]es endlessly, epoch after epoch.
//! - Pixel, embedding and mask arrays are numpy views of the Rust batch's own buffers, with the
//!   `Batch` object as their `.base`: nothing is copied, and `torch.from_numpy` is free.
//! - `state_dict()` / `load_state_dict()` carry the loader cursor as a plain dict (the `Stateful`
//!   protocol of torchdata's `StatefulDataLoader`).
//! - Waiting for a batch releases the GIL and checks for signals every 50 ms, so Ctrl-C raises
//!   `KeyboardInterrupt`; loader errors become `LoaderError` subclasses, corrupt data
//!   `CorruptShardError` with `shard`, `row`, `id` and `what`.

use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::time::Duration;

use mdm_loader as ml;
use mdm_shards::EmbeddingDType;
use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

mod np;
use np::Dtype;

pyo3::create_exception!(mdm_loader, LoaderError, PyException, "An error of building or running an mdm_loader.Loader.");
pyo3::create_exception!(
    mdm_loader,
    CorruptShardError,
    LoaderError,
    "Corrupt shard data; `shard`, `row` (or None), `id` (or None) and `what` name it."
);
pyo3::create_exception!(mdm_loader, ConfigError, LoaderError, "Settings, or shard sets, that cannot work together.");
pyo3::create_exception!(mdm_loader, StateError, LoaderError, "A state dict that does not belong to this loader.");

/// How often a waiting `__next__` looks for signals (Ctrl-C).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

fn py_err(py: Python<'_>, e: ml::Error) -> PyErr {
    let msg = e.to_string();
    match e {
        ml::Error::Corrupt(c) => corrupt(py, msg, c.shard, Some(c.row), c.id, c.what),
        ml::Error::Shard { shard, what } => corrupt(py, msg, shard, None, None, what),
        ml::Error::Shards(mdm_shards::Error::Row { path, row, msg: what }) => corrupt(py, msg, path.display().to_string(), Some(row), None, what),
        ml::Error::Config(_) | ml::Error::Mix { .. } => ConfigError::new_err(msg),
        ml::Error::State(_) => StateError::new_err(msg),
        _ => LoaderError::new_err(msg),
    }
}

fn corrupt(py: Python<'_>, msg: String, shard: String, row: Option<u64>, id: Option<String>, what: String) -> PyErr {
    let err = CorruptShardError::new_err(msg);
    let value = err.value(py);
    let set = || -> PyResult<()> {
        value.setattr("shard", shard)?;
        value.setattr("row", row)?;
        value.setattr("id", id)?;
        value.setattr("what", what)
    };
    match set() {
        Ok(()) => err,
        Err(e) => e,
    }
}

/// A buffer numpy arrays point into. Python may write through them, so after construction no
/// Rust reference to the bytes exists; the allocation is the original `Vec`'s (no copy).
struct Buf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
    /// Where the allocation goes once Python is done with it (pixel buffers: back to the
    /// loader, which builds later steps in it).
    recycler: Option<ml::Recycler>,
}

// SAFETY: a plain heap allocation owned by this value; the bytes are only touched through numpy.
unsafe impl Send for Buf {}
unsafe impl Sync for Buf {}

impl Buf {
    fn new(v: Vec<u8>) -> Self {
        Self::with_recycler(v, None)
    }

    fn recycled(v: Vec<u8>, recycler: &ml::Recycler) -> Self {
        Self::with_recycler(v, Some(recycler.clone()))
    }

    // Not `Buf { recycler, ..Buf::new(v) }`: the fields are Copy, so that would copy the pointer
    // out of a temporary Buf whose drop then frees the allocation (a double free).
    fn with_recycler(v: Vec<u8>, recycler: Option<ml::Recycler>) -> Self {
        let mut v = ManuallyDrop::new(v);
        let ptr = NonNull::new(v.as_mut_ptr()).expect("a Vec's pointer is never null");
        Buf { ptr, len: v.len(), cap: v.capacity(), recycler }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: the parts came from a Vec<u8> in `new`; the arrays that pointed here held a
        // reference to the owner, so they are gone.
        let v = unsafe { Vec::from_raw_parts(self.ptr.as_ptr(), self.len, self.cap) };
        if let Some(r) = &self.recycler {
            r.give(v);
        }
    }
}

impl Buf {
    /// A numpy array of `shape` over this buffer, with `owner` (which owns it) as its base.
    fn view<'py>(&self, owner: &Bound<'py, PyAny>, dtype: Dtype, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: `owner` owns `self`, never mutates or frees it while alive, and the array
        // keeps `owner` alive as its base.
        unsafe { np::view(owner, self.ptr.as_ptr(), self.len, dtype, shape) }
    }
}

/// Owner of a small array built for Python (ids' positions, labels, ...).
#[pyclass(frozen, module = "mdm_loader")]
struct Owned(Buf);

/// A 1-d numpy array of `n` values of `dtype` from their native-endian `bytes`.
fn array1(py: Python<'_>, dtype: Dtype, n: usize, bytes: Vec<u8>) -> PyResult<Bound<'_, PyAny>> {
    let owner = Bound::new(py, Owned(Buf::new(bytes)))?;
    owner.get().0.view(owner.as_any(), dtype, &[n])
}

macro_rules! ne_bytes {
    ($values:expr, $t:ty) => {
        $values.map(|v| <$t>::to_ne_bytes(v)).flatten().collect::<Vec<u8>>()
    };
}

struct PixelBuf {
    resolution: u32,
    shape: Vec<usize>,
    rows: Vec<usize>,
    data: Buf,
}

struct TextBuf {
    dtype: EmbeddingDType,
    shape: [usize; 3],
    tokens: Vec<u32>,
    data: Buf,
    mask: Buf,
}

/// One rank's part of one step; see `mdm_loader.Batch` in `_native.pyi`.
#[pyclass(frozen, module = "mdm_loader", name = "Batch")]
struct Batch {
    #[pyo3(get)]
    epoch: u64,
    #[pyo3(get)]
    step: u64,
    #[pyo3(get)]
    position: u64,
    #[pyo3(get)]
    global_batch: u64,
    #[pyo3(get)]
    ids: Vec<String>,
    positions: Vec<u64>,
    padded: Vec<bool>,
    sets: Vec<usize>,
    labels: Vec<Option<i32>>,
    #[pyo3(get)]
    captions: Vec<Option<String>>,
    resolutions: Vec<u32>,
    pixels: Vec<PixelBuf>,
    text: Option<TextBuf>,
    skipped: Vec<ml::Corrupt>,
}

impl Batch {
    /// The batch for Python; its pixel buffers go back to the loader when the batch and every
    /// array viewing it are gone.
    fn new(b: ml::Batch, recycler: &ml::Recycler) -> Self {
        let pixels = b
            .pixels
            .into_values()
            .map(|p| PixelBuf { resolution: p.resolution, shape: p.shape(), rows: p.rows, data: Buf::recycled(p.data, recycler) })
            .collect();
        let text = b.text.map(|t| TextBuf {
            dtype: t.dtype,
            shape: [t.tokens.len(), t.max_tokens, t.dim],
            tokens: t.tokens,
            data: Buf::new(t.data),
            mask: Buf::new(t.mask),
        });
        Batch {
            epoch: b.epoch,
            step: b.step,
            position: b.position,
            global_batch: b.global_batch,
            ids: b.ids,
            positions: b.positions,
            padded: b.padded,
            sets: b.sets,
            labels: b.labels,
            captions: b.captions,
            resolutions: b.resolutions,
            pixels,
            text,
            skipped: b.skipped,
        }
    }
}

#[pymethods]
impl Batch {
    #[getter]
    fn positions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        array1(py, Dtype::U64, self.positions.len(), ne_bytes!(self.positions.iter().copied(), u64))
    }
    #[getter]
    fn padded<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        array1(py, Dtype::Bool, self.padded.len(), self.padded.iter().map(|&p| p as u8).collect())
    }
    #[getter]
    fn sets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        array1(py, Dtype::I64, self.sets.len(), ne_bytes!(self.sets.iter().map(|&s| s as i64), i64))
    }
    /// Class labels, -1 where a sample has none.
    #[getter]
    fn labels<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        array1(py, Dtype::I64, self.labels.len(), ne_bytes!(self.labels.iter().map(|l| l.map_or(-1, i64::from)), i64))
    }
    #[getter]
    fn resolutions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        array1(py, Dtype::U32, self.resolutions.len(), ne_bytes!(self.resolutions.iter().copied(), u32))
    }
    /// `{resolution: uint8 array}`, `[n, 3, r, r]` or `[n, T, 3, r, r]`, views of the batch.
    #[getter]
    fn pixels<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(slf.py());
        for p in &slf.get().pixels {
            d.set_item(p.resolution, p.data.view(slf.as_any(), Dtype::U8, &p.shape)?)?;
        }
        Ok(d)
    }
    /// `{resolution: int64 array}`: the batch row of each sample in `pixels[resolution]`.
    #[getter]
    fn rows<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for p in &self.pixels {
            d.set_item(p.resolution, array1(py, Dtype::I64, p.rows.len(), ne_bytes!(p.rows.iter().map(|&r| r as i64), i64))?)?;
        }
        Ok(d)
    }
    /// `[batch, max_tokens, dim]` T5 embeddings (float16; bfloat16 as uint16), a view.
    #[getter]
    fn embeddings<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(t) = &slf.get().text else { return Ok(None) };
        let dtype = match t.dtype {
            EmbeddingDType::F16 => Dtype::F16,
            EmbeddingDType::Bf16 => Dtype::U16,
        };
        t.data.view(slf.as_any(), dtype, &t.shape).map(Some)
    }
    /// `"float16"` or `"bfloat16"`, None without embeddings.
    #[getter]
    fn embeddings_dtype(&self) -> Option<&'static str> {
        self.text.as_ref().map(|t| match t.dtype {
            EmbeddingDType::F16 => "float16",
            EmbeddingDType::Bf16 => "bfloat16",
        })
    }
    /// `[batch, max_tokens]` bool, True for a real token, a view.
    #[getter]
    fn mask<'py>(slf: &Bound<'py, Self>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(t) = &slf.get().text else { return Ok(None) };
        t.mask.view(slf.as_any(), Dtype::Bool, &t.shape[..2]).map(Some)
    }
    /// Real tokens of each sample (uint32), None without embeddings.
    #[getter]
    fn tokens<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(t) = &self.text else { return Ok(None) };
        array1(py, Dtype::U32, t.tokens.len(), ne_bytes!(t.tokens.iter().copied(), u32)).map(Some)
    }
    /// Corrupt rows left out of this batch: dicts of `shard`, `row`, `id`, `what`.
    #[getter]
    fn skipped<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for c in &self.skipped {
            let d = PyDict::new(py);
            d.set_item("shard", &c.shard)?;
            d.set_item("row", c.row)?;
            d.set_item("id", &c.id)?;
            d.set_item("what", &c.what)?;
            list.append(d)?;
        }
        Ok(list)
    }
    fn __len__(&self) -> usize {
        self.ids.len()
    }
    fn __repr__(&self) -> String {
        let res: Vec<String> = self.pixels.iter().map(|p| format!("{}: {:?}", p.resolution, p.shape)).collect();
        format!("Batch(epoch={}, step={}, samples={}, pixels={{{}}})", self.epoch, self.step, self.ids.len(), res.join(", "))
    }
}

/// `"path"`, or a list of `"path"` / `("path", weight)`.
fn parse_sources(obj: &Bound<'_, PyAny>) -> PyResult<Vec<(String, f64)>> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(vec![(s.to_str()?.to_string(), 1.0)]);
    }
    let mut out = Vec::new();
    for item in obj.try_iter()? {
        let item = item?;
        if let Ok(s) = item.cast::<PyString>() {
            out.push((s.to_str()?.to_string(), 1.0));
        } else if let Ok(t) = item.cast::<PyTuple>() {
            out.push(t.extract::<(String, f64)>()?);
        } else {
            return Err(PyTypeError::new_err(format!("a source is a path or (path, weight), not {item:?}")));
        }
    }
    Ok(out)
}

/// `"256:2,64:1"` or `[(256, 2.0), (64, 1.0)]`.
fn parse_ratio(obj: &Bound<'_, PyAny>) -> PyResult<Vec<(u32, f64)>> {
    let Ok(s) = obj.cast::<PyString>() else { return obj.extract() };
    s.to_str()?
        .split(',')
        .map(|part| {
            let (res, w) = part.trim().split_once(':').unwrap_or((part.trim(), "1"));
            match (res.parse(), w.parse()) {
                (Ok(res), Ok(w)) => Ok((res, w)),
                _ => Err(ConfigError::new_err(format!("mixed_ratio {part:?}: want RES:WEIGHT, e.g. \"256:2,64:1\""))),
            }
        })
        .collect()
}

/// `True` (default shuffle), `False` (stored order) or a dict of `block_rows`, `span_rows`, `window`.
fn parse_shuffle(obj: &Bound<'_, PyAny>) -> PyResult<Option<ml::Shuffle>> {
    if let Ok(on) = obj.extract::<bool>() {
        return Ok(on.then(ml::Shuffle::default));
    }
    let d = obj.cast::<PyDict>().map_err(|_| PyTypeError::new_err("shuffle is True, False or a dict"))?;
    let mut s = ml::Shuffle::default();
    for (k, v) in d.iter() {
        let k: String = k.extract()?;
        let v: u64 = v.extract()?;
        match k.as_str() {
            "block_rows" => s.block_rows = v,
            "span_rows" => s.span_rows = v,
            "window" => s.window = v,
            _ => return Err(ConfigError::new_err(format!("unknown shuffle key {k:?} (block_rows, span_rows, window)"))),
        }
    }
    Ok(Some(s))
}

/// An integer from torchrun's environment, `default` when unset.
fn env_int(name: &str, default: u64) -> PyResult<u64> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(v) => v.trim().parse().map_err(|_| ConfigError::new_err(format!("environment {name}={v:?} is not a non-negative integer"))),
    }
}

/// The streaming loader; see `mdm_loader.Loader` in `_native.pyi`.
#[pyclass(module = "mdm_loader", name = "Loader")]
struct Loader {
    builder: ml::LoaderBuilder,
    inner: Option<ml::Loader>,
    rank: u64,
    world: u64,
}

impl Loader {
    fn inner(&mut self) -> PyResult<&mut ml::Loader> {
        self.inner.as_mut().ok_or_else(|| LoaderError::new_err("the loader is closed"))
    }

    fn start(&mut self, py: Python<'_>) -> PyResult<()> {
        let old = self.inner.take();
        let builder = &self.builder;
        let built = py.detach(move || {
            drop(old);
            builder.build()
        });
        self.inner = Some(built.map_err(|e| py_err(py, e))?);
        Ok(())
    }
}

#[pymethods]
impl Loader {
    #[new]
    #[pyo3(signature = (
        sources, *, batch_size=32, mixed_ratio=None, buckets=None, seed=0, rank=None, world_size=None,
        workers=None, prefetch=4, shuffle=None, epoch_end="drop", corrupt="skip", verify_checksums=true,
        captions=true, text=true, random_flip=false, random_crop=1.0, video_frames=16,
        row_group_cache_bytes=None, order_log=None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        sources: &Bound<'_, PyAny>,
        batch_size: u64,
        mixed_ratio: Option<&Bound<'_, PyAny>>,
        buckets: Option<u64>,
        seed: u64,
        rank: Option<u64>,
        world_size: Option<u64>,
        workers: Option<usize>,
        prefetch: usize,
        shuffle: Option<&Bound<'_, PyAny>>,
        epoch_end: &str,
        corrupt: &str,
        verify_checksums: bool,
        captions: bool,
        text: bool,
        random_flip: bool,
        random_crop: f64,
        video_frames: usize,
        row_group_cache_bytes: Option<usize>,
        order_log: Option<std::path::PathBuf>,
    ) -> PyResult<Self> {
        let mut b = ml::LoaderBuilder::new();
        for (path, weight) in parse_sources(sources)? {
            b.source(path, weight);
        }
        let rank = match rank {
            Some(r) => r,
            None => env_int("RANK", 0)?,
        };
        let world = match world_size {
            Some(w) => w,
            None => env_int("WORLD_SIZE", 1)?,
        };
        b.batch_size(batch_size).buckets(buckets).seed(seed).rank(rank, world).prefetch(prefetch);
        if let Some(r) = mixed_ratio {
            b.mixed_ratio(parse_ratio(r)?);
        }
        if let Some(w) = workers {
            b.workers(w);
        }
        if let Some(s) = shuffle {
            b.shuffle(parse_shuffle(s)?);
        }
        b.epoch_end(match epoch_end {
            "drop" => ml::EpochEnd::Drop,
            "pad" => ml::EpochEnd::Pad,
            other => return Err(ConfigError::new_err(format!("epoch_end {other:?}: want \"drop\" or \"pad\""))),
        });
        b.corrupt(match corrupt {
            "skip" => ml::CorruptPolicy::Skip,
            "fail" => ml::CorruptPolicy::Fail,
            other => return Err(ConfigError::new_err(format!("corrupt {other:?}: want \"skip\" or \"fail\""))),
        });
        b.verify_checksums(verify_checksums).captions(captions).text(text).random_flip(random_flip);
        b.random_crop(random_crop).video_frames(video_frames).order_log(order_log);
        if let Some(bytes) = row_group_cache_bytes {
            b.row_group_cache_bytes(bytes);
        }
        let mut loader = Loader { builder: b, inner: None, rank, world };
        loader.start(py)?;
        Ok(loader)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// The next batch; waits with the GIL released and raises KeyboardInterrupt on Ctrl-C.
    fn __next__(&mut self, py: Python<'_>) -> PyResult<Batch> {
        let loader = self.inner()?;
        while !py.detach(|| loader.ready_within(SIGNAL_POLL)) {
            py.check_signals()?;
        }
        match loader.next() {
            Some(Ok(batch)) => Ok(Batch::new(batch, &loader.recycler())),
            Some(Err(e)) => Err(py_err(py, e)),
            None => Err(LoaderError::new_err("the loader stopped at an earlier error; load_state_dict() or a new Loader goes on")),
        }
    }

    /// The cursor after the last batch yielded, as a dict of plain values.
    fn state_dict<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let json = self.inner()?.state().to_json();
        py.import("json")?.call_method1("loads", (json,))
    }

    /// Restarts the loader from `state` (from `state_dict()`): the next batch is the one after it.
    fn load_state_dict(&mut self, py: Python<'_>, state: &Bound<'_, PyAny>) -> PyResult<()> {
        let json: String = py.import("json")?.call_method1("dumps", (state,))?.extract()?;
        let state = ml::LoaderState::from_json(&json).map_err(|e| py_err(py, e))?;
        self.builder.resume(Some(state));
        self.start(py)
    }

    /// Counters for logs: batches, samples, samples_per_sec, wait times in seconds, ...
    fn stats<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner()?.stats();
        let d = PyDict::new(py);
        d.set_item("batches", s.batches)?;
        d.set_item("samples", s.samples)?;
        d.set_item("samples_per_resolution", s.samples_per_resolution)?;
        d.set_item("skipped", s.skipped)?;
        d.set_item("elapsed", s.elapsed.as_secs_f64())?;
        d.set_item("samples_per_sec", s.samples_per_sec)?;
        d.set_item("consumer_wait", s.consumer_wait.as_secs_f64())?;
        d.set_item("reader_backpressure", s.reader_backpressure.as_secs_f64())?;
        d.set_item("steps_started", s.steps_started)?;
        d.set_item("reader_io", s.reader_io.as_secs_f64())?;
        d.set_item("reader_wait_workers", s.reader_wait_workers.as_secs_f64())?;
        d.set_item("decode_busy", s.decode_busy.as_secs_f64())?;
        d.set_item("decode_idle", s.decode_idle.as_secs_f64())?;
        d.set_item("in_flight_bytes", s.in_flight_bytes)?;
        d.set_item("peak_in_flight_bytes", s.peak_in_flight_bytes)?;
        d.set_item("peak_cache_bytes", s.peak_cache_bytes)?;
        d.set_item("shuffle_quality", s.shuffle_quality)?;
        Ok(d)
    }

    /// Samples in one loader epoch, over all ranks.
    #[getter]
    fn epoch_len(&mut self) -> PyResult<u64> {
        Ok(self.inner()?.epoch_len())
    }
    #[getter]
    fn rank(&self) -> u64 {
        self.rank
    }
    #[getter]
    fn world_size(&self) -> u64 {
        self.world
    }

    /// Stops the loader's threads; iterating afterwards raises LoaderError.
    fn close(&mut self, py: Python<'_>) {
        let old = self.inner.take();
        py.detach(move || drop(old));
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Loader>()?;
    m.add_class::<Batch>()?;
    m.add("LoaderError", py.get_type::<LoaderError>())?;
    m.add("CorruptShardError", py.get_type::<CorruptShardError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("StateError", py.get_type::<StateError>())?;
    Ok(())
}
