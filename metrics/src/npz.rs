//! numpy's `.npz` (a zip of `.npy` arrays) for FID statistics {mu, sigma[, n]}.
//!
//! Reads what `np.savez` (stored entries) and `np.savez_compressed` (deflated) write: `.npy`
//! format 1.0, 2.0 and 3.0 headers, `f8`, `f4`, `i8`, `i4`, `u8`, `u4` in either byte order, C or
//! Fortran order. Writes format 1.0, little-endian, C order, stored (like `np.savez`), atomically:
//! a temporary file in the same folder, fsync, rename.
//!
//! [`read_stats`] accepts the files of pytorch-fid (`--save-stats`: `mu`, `sigma`) and clean-fid
//! (`mu`, `sigma`); [`write_stats`] adds `n` as an int64 scalar when it is known, which both
//! ignore (they index the file by key).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use crate::error::{io, Error, Result};
use crate::stats::Stats;

/// The values of one array, in the type it was stored with (narrow integers widened).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F64(Vec<f64>),
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One array of an `.npz`: shape (C order) and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub values: Values,
}

impl Array {
    /// A C-order `f64` array; `None` when `values.len()` does not match `shape`.
    pub fn f64(shape: Vec<usize>, values: Vec<f64>) -> Option<Array> {
        (shape.iter().product::<usize>() == values.len()).then_some(Array {
            shape,
            values: Values::F64(values),
        })
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        match &self.values {
            Values::F64(v) => v.len(),
            Values::F32(v) => v.len(),
            Values::I64(v) => v.len(),
        }
    }

    /// Whether the array holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values widened to f64 (exact for f4, and for integers up to 2^53).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.values {
            Values::F64(v) => v.clone(),
            Values::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Values::I64(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }

    /// numpy's `descr` for writing.
    fn descr(&self) -> &'static str {
        match self.values {
            Values::F64(_) => "<f8",
            Values::F32(_) => "<f4",
            Values::I64(_) => "<i8",
        }
    }
}

/// Every array of an `.npz`, by key (the entry name without `.npy`).
pub fn read_npz(path: &Path) -> Result<BTreeMap<String, Array>> {
    let invalid = |msg: String| Error::Invalid {
        path: path.to_path_buf(),
        msg,
    };
    let file = File::open(path).map_err(io(path))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| invalid(format!("not an .npz (zip): {e}")))?;
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| invalid(format!("zip entry {i}: {e}")))?;
        let name = entry.name().to_string();
        let key = name.strip_suffix(".npy").unwrap_or(&name).to_string();
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| invalid(format!("key '{key}': {e}")))?;
        let array = parse_npy(&bytes).map_err(|msg| invalid(format!("key '{key}': {msg}")))?;
        out.insert(key, array);
    }
    Ok(out)
}

/// Writes `arrays` as an `.npz` that `np.load` reads (stored entries, like `np.savez`).
pub fn write_npz(path: &Path, arrays: &[(&str, &Array)]) -> Result<()> {
    write_atomic(path, |file| {
        let mut zip = zip::ZipWriter::new(file);
        let options = zip::write::FileOptions::default()
            .compression_method(zip::CompressionMethod::Stored)
            .large_file(arrays.iter().any(|(_, a)| a.len() * 8 >= u32::MAX as usize));
        for (key, array) in arrays {
            zip.start_file(format!("{key}.npy"), options)
                .map_err(std::io::Error::other)?;
            write_npy(&mut zip, array)?;
        }
        zip.finish().map_err(std::io::Error::other)?;
        Ok(())
    })
}

/// Reads {mu, sigma} (and `n` when present) as written by pytorch-fid, clean-fid or
/// [`write_stats`]; mu must be `[d]`, sigma `[d, d]`, all finite.
pub fn read_stats(path: &Path) -> Result<Stats> {
    let invalid = |msg: String| Error::Invalid {
        path: path.to_path_buf(),
        msg,
    };
    let arrays = read_npz(path)?;
    let keys = || arrays.keys().cloned().collect::<Vec<_>>().join(", ");
    let get = |key: &str| {
        arrays
            .get(key)
            .ok_or_else(|| invalid(format!("no key '{key}' (keys: {})", keys())))
    };
    let (mu, sigma) = (get("mu")?, get("sigma")?);
    if mu.shape.len() != 1 || mu.shape[0] == 0 {
        return Err(invalid(format!("key 'mu': shape {:?}, expected [d]", mu.shape)));
    }
    let d = mu.shape[0];
    if sigma.shape != [d, d] {
        return Err(invalid(format!(
            "key 'sigma': shape {:?}, expected [{d}, {d}] (mu is [{d}])",
            sigma.shape
        )));
    }
    let n = match arrays.get("n") {
        None => None,
        Some(a) => {
            let v = a.to_f64();
            match v[..] {
                [x] if x >= 0.0 && x.fract() == 0.0 && x < 2f64.powi(53) => Some(x as usize),
                _ => {
                    return Err(invalid(format!(
                        "key 'n': expected one non-negative integer, got {v:?}"
                    )))
                }
            }
        }
    };
    let stats = Stats {
        mu: mu.to_f64(),
        sigma: sigma.to_f64(),
        n,
    };
    stats.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(stats)
}

/// Writes {mu (f8 `[d]`), sigma (f8 `[d, d]`), n (i8 scalar, when known)} atomically.
pub fn write_stats(path: &Path, stats: &Stats) -> Result<()> {
    stats.validate()?;
    let d = stats.dims();
    let mu = Array {
        shape: vec![d],
        values: Values::F64(stats.mu.clone()),
    };
    let sigma = Array {
        shape: vec![d, d],
        values: Values::F64(stats.sigma.clone()),
    };
    let n = stats.n.map(|n| Array {
        shape: vec![],
        values: Values::I64(vec![n as i64]),
    });
    let mut arrays = vec![("mu", &mu), ("sigma", &sigma)];
    if let Some(n) = &n {
        arrays.push(("n", n));
    }
    write_npz(path, &arrays)
}

/// Writes durably through [`mdm_shards::durable::write_atomic_with`].
fn write_atomic(path: &Path, write: impl FnOnce(&mut std::io::BufWriter<File>) -> std::io::Result<()>) -> Result<()> {
    Ok(mdm_shards::durable::write_atomic_with(path, write)?)
}

fn write_npy<W: Write>(w: &mut W, array: &Array) -> std::io::Result<()> {
    let shape = match array.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", array.shape[0]),
        _ => format!(
            "({})",
            array.shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        array.descr()
    );
    // numpy pads with spaces so that the data starts at a multiple of 64, then a newline.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    let mut buf = Vec::with_capacity(array.len() * 8);
    match &array.values {
        Values::F64(v) => v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        Values::F32(v) => v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
        Values::I64(v) => v.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes())),
    }
    w.write_all(&buf)
}

/// Parses one `.npy` file held in memory.
fn parse_npy(bytes: &[u8]) -> Result<Array, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an .npy array (bad magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!(".npy format version {v}.{} is not supported", bytes[7])),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| ".npy header is not text")?;
    let dict = parse_header(header)?;
    let descr = match dict.get("descr") {
        Some(Literal::Str(s)) => s.as_str(),
        _ => return Err(format!("header lacks a simple 'descr': {header}")),
    };
    let fortran = match dict.get("fortran_order") {
        Some(Literal::Bool(b)) => *b,
        _ => return Err(format!("header lacks 'fortran_order': {header}")),
    };
    let shape = match dict.get("shape") {
        Some(Literal::Tuple(s)) => s.clone(),
        _ => return Err(format!("header lacks 'shape': {header}")),
    };
    let (order, kind) = descr.split_at(descr.len().min(1));
    let big = match order {
        "<" | "|" => false,
        ">" => true,
        _ => return Err(format!("dtype '{descr}' is not supported")),
    };
    let item = match kind {
        "f8" | "i8" | "u8" => 8,
        "f4" | "i4" | "u4" => 4,
        _ => return Err(format!("dtype '{descr}' is not supported (f8, f4, i8, i4, u8, u4)")),
    };
    let count = shape
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .ok_or("shape overflows")?;
    let data = &bytes[end..];
    if Some(data.len()) != count.checked_mul(item) {
        return Err(format!(
            "{} data bytes for shape {shape:?} of '{descr}' ({count} values)",
            data.len()
        ));
    }
    let word = |c: &[u8]| -> u64 {
        let mut b = [0u8; 8];
        b[..item].copy_from_slice(c);
        if big {
            b[..item].reverse();
        }
        u64::from_le_bytes(b)
    };
    let words = data.chunks_exact(item).map(word);
    let values = match kind {
        "f8" => Values::F64(words.map(f64::from_bits).collect()),
        "f4" => Values::F32(words.map(|w| f32::from_bits(w as u32)).collect()),
        "i8" => Values::I64(words.map(|w| w as i64).collect()),
        "i4" => Values::I64(words.map(|w| w as u32 as i32 as i64).collect()),
        "u4" => Values::I64(words.map(|w| w as i64).collect()),
        _ => Values::I64(
            words
                .map(|w| i64::try_from(w).map_err(|_| format!("u8 value {w} exceeds i64")))
                .collect::<Result<_, _>>()?,
        ),
    };
    let mut array = Array { shape, values };
    if fortran && array.shape.len() > 1 {
        array = to_c_order(array);
    }
    Ok(array)
}

/// Reorders a Fortran-order array's values to C order.
fn to_c_order(a: Array) -> Array {
    let shape = a.shape;
    // Strides of the Fortran layout, indexed by axis.
    let mut fstride = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        fstride[k] = fstride[k - 1] * shape[k - 1];
    }
    let count: usize = shape.iter().product();
    let perm: Vec<usize> = (0..count)
        .map(|mut c| {
            let mut f = 0;
            for k in (0..shape.len()).rev() {
                f += (c % shape[k]) * fstride[k];
                c /= shape[k];
            }
            f
        })
        .collect();
    fn pick<T: Copy>(v: &[T], perm: &[usize]) -> Vec<T> {
        perm.iter().map(|&i| v[i]).collect()
    }
    let values = match &a.values {
        Values::F64(v) => Values::F64(pick(v, &perm)),
        Values::F32(v) => Values::F32(pick(v, &perm)),
        Values::I64(v) => Values::I64(pick(v, &perm)),
    };
    Array { shape, values }
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// Parses the Python dict literal of an `.npy` header: string keys; string, bool or int-tuple values.
fn parse_header(s: &str) -> Result<BTreeMap<String, Literal>, String> {
    let bad = || format!("unreadable .npy header: {}", s.trim_end());
    let mut rest = s.trim().strip_prefix('{').ok_or_else(bad)?;
    let mut out = BTreeMap::new();
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return if r.trim().is_empty() { Ok(out) } else { Err(bad()) };
        }
        let (key, r) = quoted(rest).ok_or_else(bad)?;
        rest = r.trim_start().strip_prefix(':').ok_or_else(bad)?.trim_start();
        let value;
        if rest.starts_with('\'') || rest.starts_with('"') {
            let (v, r) = quoted(rest).ok_or_else(bad)?;
            value = Literal::Str(v);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("True") {
            value = Literal::Bool(true);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("False") {
            value = Literal::Bool(false);
            rest = r;
        } else if let Some(r) = rest.strip_prefix('(') {
            let close = r.find(')').ok_or_else(bad)?;
            let dims = r[..close]
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| t.trim_end_matches('L').parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| bad())?;
            value = Literal::Tuple(dims);
            rest = &r[close + 1..];
        } else {
            // Structured dtypes (a list as 'descr') and anything else.
            return Err(format!("unsupported .npy header: {}", s.trim_end()));
        }
        out.insert(key, value);
        rest = rest.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// A '...' or "..." string at the start of `s` (no escapes: numpy's keys and dtypes have none).
fn quoted(s: &str) -> Option<(String, &str)> {
    let q = s.chars().next().filter(|&c| c == '\'' || c == '"')?;
    let end = s[1..].find(q)? + 1;
    Some((s[1..end].to_string(), &s[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_dict() {
        let d = parse_header("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }   \n").unwrap();
        assert_eq!(d["descr"], Literal::Str("<f8".into()));
        assert_eq!(d["fortran_order"], Literal::Bool(false));
        assert_eq!(d["shape"], Literal::Tuple(vec![3, 4]));
        let d = parse_header("{'descr': '<i8', 'fortran_order': True, 'shape': ()}").unwrap();
        assert_eq!(d["shape"], Literal::Tuple(vec![]));
        assert!(parse_header("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (2,)}").is_err());
    }

    #[test]
    fn npy_round_trip_and_fortran() {
        let a = Array::f64(vec![2, 3], vec![0., 1., 2., 3., 4., 5.]).unwrap();
        let mut buf = std::io::Cursor::new(Vec::new());
        write_npy(&mut buf, &a).unwrap();
        let bytes = buf.into_inner();
        let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        assert_eq!(parse_npy(&bytes).unwrap(), a);
        // The same bytes declared Fortran order are the transpose's values, read back in C order.
        let mut f = bytes.clone();
        let pos = f.windows(5).position(|w| w == b"False").unwrap();
        f.splice(pos..pos + 5, b"True ".iter().copied());
        let t = parse_npy(&f).unwrap();
        assert_eq!(t.values, Values::F64(vec![0., 2., 4., 1., 3., 5.]));
        // Truncated data is an error, not a panic.
        assert!(parse_npy(&bytes[..bytes.len() - 1]).is_err());
    }
}
