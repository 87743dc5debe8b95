//! Hugging Face safetensors checkpoints: a single `model.safetensors` or shards listed in
//! `model.safetensors.index.json`. Only headers are parsed up front; tensor bytes are read
//! on demand, so decoder and `lm_head` tensors are never loaded.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use super::{io_err, T5Error};

/// Largest header we accept (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

#[derive(Debug, Clone, Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<i64>,
    data_offsets: [u64; 2],
}

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    kind: Kind,
    shape: Vec<i64>,
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
}

/// An opened checkpoint directory: tensor names → file, dtype, shape and byte range.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<PathBuf>,
    entries: HashMap<String, Entry>,
}

fn weights_err(path: &Path, msg: impl Into<String>) -> T5Error {
    T5Error::Weights {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn kind_of(dtype: &str) -> Option<(Kind, u64)> {
    Some(match dtype {
        "F32" => (Kind::Float, 4),
        "F16" => (Kind::Half, 2),
        "BF16" => (Kind::BFloat16, 2),
        "F64" => (Kind::Double, 8),
        "I64" => (Kind::Int64, 8),
        "I32" => (Kind::Int, 4),
        _ => return None,
    })
}

fn dtype_name(kind: Kind) -> Option<(&'static str, usize)> {
    Some(match kind {
        Kind::Float => ("F32", 4),
        Kind::Half => ("F16", 2),
        Kind::BFloat16 => ("BF16", 2),
        Kind::Double => ("F64", 8),
        Kind::Int64 => ("I64", 8),
        Kind::Int => ("I32", 4),
        _ => return None,
    })
}

/// Parses one safetensors header; returns tensor entries (offsets made absolute).
fn read_header(path: &Path, file_index: usize) -> Result<Vec<(String, Entry)>, T5Error> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n)
        .map_err(|_| weights_err(path, "not a safetensors file (too short)"))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(weights_err(
            path,
            format!("not a safetensors file (header size {n})"),
        ));
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).map_err(io_err(path))?;
    let header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&buf)
        .map_err(|e| weights_err(path, format!("bad safetensors header: {e}")))?;
    let base = 8 + n;
    let mut out = Vec::with_capacity(header.len());
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        let e: HeaderEntry = serde_json::from_value(v)
            .map_err(|e| weights_err(path, format!("bad header entry {name}: {e}")))?;
        let (kind, size) = kind_of(&e.dtype).ok_or_else(|| {
            weights_err(
                path,
                format!("tensor {name}: unsupported dtype {}", e.dtype),
            )
        })?;
        let numel = e.shape.iter().try_fold(1u64, |acc, &d| {
            u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        });
        let [s, t] = e.data_offsets;
        let ok = numel.and_then(|m| m.checked_mul(size)) == Some(t.wrapping_sub(s))
            && s <= t
            && base + t <= file_len;
        if !ok {
            return Err(weights_err(
                path,
                format!("tensor {name}: offsets do not match its shape"),
            ));
        }
        out.push((
            name,
            Entry {
                file: file_index,
                kind,
                shape: e.shape,
                start: base + s,
                end: base + t,
            },
        ));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or else the shards named by
    /// `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self, T5Error> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.is_file() {
            return Self::open_files(dir, vec![single]);
        }
        if !index.is_file() {
            return Err(weights_err(
                dir,
                "no model.safetensors or model.safetensors.index.json \
                 (only safetensors checkpoints are supported)",
            ));
        }
        let text = std::fs::read_to_string(&index).map_err(io_err(&index))?;
        let idx: Index = serde_json::from_str(&text)
            .map_err(|e| weights_err(&index, format!("malformed index: {e}")))?;
        let mut names: Vec<&String> = idx.weight_map.values().collect();
        names.sort();
        names.dedup();
        let mut files = Vec::with_capacity(names.len());
        for n in names {
            if n.contains('/') || n.contains('\\') || n == ".." {
                return Err(weights_err(
                    &index,
                    format!("shard name {n:?} is not a plain file name"),
                ));
            }
            files.push(dir.join(n));
        }
        let ck = Self::open_files(dir, files)?;
        // Every indexed key must be where the index says.
        for (key, file) in &idx.weight_map {
            match ck.entries.get(key) {
                Some(e) if ck.files[e.file].file_name().and_then(|f| f.to_str()) == Some(file) => {}
                _ => {
                    return Err(weights_err(&index, format!("{key} is not in shard {file}")));
                }
            }
        }
        Ok(ck)
    }

    /// Opens one safetensors file (any name); errors name `path`'s directory.
    pub fn open_file(path: &Path) -> Result<Self, T5Error> {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Self::open_files(&dir, vec![path.to_path_buf()])
    }

    fn open_files(dir: &Path, files: Vec<PathBuf>) -> Result<Self, T5Error> {
        let mut entries = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for (name, e) in read_header(f, i)? {
                if entries.insert(name.clone(), e).is_some() {
                    return Err(weights_err(
                        f,
                        format!("tensor {name} appears in two shards"),
                    ));
                }
            }
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            files,
            entries,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The weight files, in the order hashed by [`Checkpoint::sha256`].
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Shape of a stored tensor.
    pub fn shape(&self, key: &str) -> Option<&[i64]> {
        self.entries.get(key).map(|e| e.shape.as_slice())
    }

    /// Reads one tensor to CPU in its stored dtype; `None` if absent.
    pub fn read(&self, key: &str) -> Result<Option<Tensor>, T5Error> {
        let Some(e) = self.entries.get(key) else {
            return Ok(None);
        };
        let path = &self.files[e.file];
        let mut f = File::open(path).map_err(io_err(path))?;
        f.seek(SeekFrom::Start(e.start)).map_err(io_err(path))?;
        let mut buf = vec![0u8; (e.end - e.start) as usize];
        f.read_exact(&mut buf).map_err(io_err(path))?;
        let t = Tensor::f_from_data_size(&buf, &e.shape, e.kind)?;
        Ok(Some(t))
    }

    /// Path of the file holding `key` (for error messages).
    pub fn file_of(&self, key: &str) -> Option<&Path> {
        self.entries.get(key).map(|e| self.files[e.file].as_path())
    }

    /// sha256 over the weight files' bytes, concatenated in [`Checkpoint::files`] order
    /// (one file: its plain sha256; shards: sorted by file name).
    pub fn sha256(&self) -> Result<String, T5Error> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        for p in &self.files {
            let mut f = File::open(p).map_err(io_err(p))?;
            loop {
                let n = f.read(&mut buf).map_err(io_err(p))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
        Ok(hex::encode(h.finalize()))
    }
}

/// A tensor ready to be written: safetensors dtype name, shape, little-endian bytes.
#[derive(Debug, Clone)]
pub struct TensorBytes {
    pub dtype: &'static str,
    pub shape: Vec<i64>,
    pub data: Vec<u8>,
}

impl TensorBytes {
    /// Copies a CPU or CUDA tensor (f32/f16/bf16/f64/i64/i32) to bytes.
    pub fn from_tensor(t: &Tensor) -> Result<Self, T5Error> {
        let (dtype, size) = dtype_name(t.kind()).ok_or_else(|| {
            T5Error::BadOption(format!("cannot store tensor of kind {:?}", t.kind()))
        })?;
        let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        let numel = t.numel();
        let mut data = vec![0u8; numel * size];
        t.f_copy_data_u8(&mut data, numel)?;
        Ok(TensorBytes {
            dtype,
            shape: t.size(),
            data,
        })
    }
}

/// Writes a safetensors file (tensors in the given order, optional `__metadata__`).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, TensorBytes)],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<(), T5Error> {
    let mut header = serde_json::Map::new();
    if let Some(m) = metadata {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(m).unwrap_or_default(),
        );
    }
    let mut offset = 0u64;
    for (name, t) in tensors {
        let end = offset + t.data.len() as u64;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| weights_err(path, format!("header: {e}")))?;
    // The format pads the header with spaces to a multiple of 8 bytes.
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let f = File::create(path).map_err(io_err(path))?;
    let mut w = std::io::BufWriter::new(f);
    let write = |w: &mut std::io::BufWriter<File>| -> std::io::Result<()> {
        w.write_all(&(h.len() as u64).to_le_bytes())?;
        w.write_all(&h)?;
        for (_, t) in tensors {
            w.write_all(&t.data)?;
        }
        w.flush()
    };
    write(&mut w).map_err(io_err(path))
}
