//! Just enough of the MATLAB 5 MAT-file format to read the ILSVRC2012 devkit's `meta.mat`: a
//! `synsets` struct array whose `ILSVRC2012_ID` and `WNID` fields give the class order that the
//! validation ground-truth file numbers by.
//!
//! The format (MathWorks, "MAT-File Format", version 5): a 128-byte header (text, subsystem
//! offset, version, endian mark `IM` or `MI`), then data elements, each an 8-byte tag (type,
//! byte count) or a 4-byte "small" tag holding up to 4 bytes, padded to 8 bytes.
//! `miCOMPRESSED` elements hold one zlib-compressed element; `miMATRIX` elements hold array
//! flags, dimensions, a name and the class's data. Read here: numeric arrays (as `f64`), char
//! arrays, struct arrays and cell arrays; anything else (sparse, objects) is skipped as
//! [`Value::Other`].

use std::io::Read;

/// A MATLAB array, column-major as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Numeric(Vec<f64>),
    Char(String),
    /// Field names, then one row of field values per element.
    Struct { fields: Vec<String>, elements: Vec<Vec<Value>> },
    Cell(Vec<Value>),
    Other,
}

impl Value {
    /// The value of `field` of struct element `i`.
    pub fn field(&self, i: usize, field: &str) -> Option<&Value> {
        match self {
            Value::Struct { fields, elements } => elements.get(i)?.get(fields.iter().position(|f| f == field)?),
            _ => None,
        }
    }
}

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MI_UTF16: u32 = 17;

const MX_CELL: u8 = 1;
const MX_STRUCT: u8 = 2;
const MX_CHAR: u8 = 4;

/// Nesting limit: `meta.mat` goes three deep (struct → field → numbers).
const MAX_DEPTH: usize = 16;

/// Reads the named top-level variables of a MAT-file (version 5, uncompressed or compressed).
pub fn read(bytes: &[u8]) -> Result<Vec<(String, Value)>, String> {
    if bytes.len() < 128 || !bytes.starts_with(b"MATLAB 5.0 MAT-file") {
        return Err("not a MATLAB 5 MAT-file (v7.3 files are HDF5: re-save with -v7, or give a wnid list)".into());
    }
    let le = match &bytes[126..128] {
        b"IM" => true,
        b"MI" => false,
        m => return Err(format!("bad endian mark {m:?}")),
    };
    let mut r = Reader { b: &bytes[128..], pos: 0, le };
    let mut out = Vec::new();
    while r.pos + 8 <= r.b.len() {
        let (ty, data) = r.element()?;
        match ty {
            MI_COMPRESSED => {
                let mut plain = Vec::new();
                flate2::read::ZlibDecoder::new(data).read_to_end(&mut plain).map_err(|e| format!("compressed element: {e}"))?;
                let mut inner = Reader { b: &plain, pos: 0, le };
                let (ty, data) = inner.element()?;
                if ty == MI_MATRIX {
                    out.push(matrix(data, le, 0)?);
                }
            }
            MI_MATRIX => out.push(matrix(data, le, 0)?),
            _ => {}
        }
    }
    Ok(out)
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    le: bool,
}

impl<'a> Reader<'a> {
    fn u32_at(&self, at: usize) -> Result<u32, String> {
        let s: [u8; 4] = self.b.get(at..at + 4).and_then(|s| s.try_into().ok()).ok_or("truncated tag")?;
        Ok(if self.le { u32::from_le_bytes(s) } else { u32::from_be_bytes(s) })
    }

    /// The next data element: (type, data bytes); the position moves past its padding.
    fn element(&mut self) -> Result<(u32, &'a [u8]), String> {
        let first = self.u32_at(self.pos)?;
        if first >> 16 != 0 {
            // small element: size in the upper half, data in the tag's second word
            let (ty, n) = (first & 0xffff, (first >> 16) as usize);
            if n > 4 {
                return Err(format!("small element of {n} bytes"));
            }
            let data = self.b.get(self.pos + 4..self.pos + 4 + n).ok_or("truncated small element")?;
            self.pos += 8;
            return Ok((ty, data));
        }
        let n = self.u32_at(self.pos + 4)? as usize;
        let start = self.pos + 8;
        let data = self.b.get(start..start + n).ok_or_else(|| format!("element of {n} bytes past the end"))?;
        // compressed elements are not padded
        self.pos = if first == MI_COMPRESSED { start + n } else { start + n.div_ceil(8) * 8 };
        Ok((first, data))
    }
}

/// Numbers of a numeric element of any storage type.
fn numbers(ty: u32, d: &[u8], le: bool) -> Result<Vec<f64>, String> {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            d.chunks_exact($n)
                .map(|c| {
                    let a = c.try_into().expect("chunk size");
                    (if le { <$t>::from_le_bytes(a) } else { <$t>::from_be_bytes(a) }) as f64
                })
                .collect()
        };
    }
    Ok(match ty {
        MI_INT8 => d.iter().map(|&v| f64::from(v as i8)).collect(),
        MI_UINT8 | MI_UTF8 => d.iter().map(|&v| f64::from(v)).collect(),
        MI_INT16 => conv!(i16, 2),
        MI_UINT16 | MI_UTF16 => conv!(u16, 2),
        MI_INT32 => conv!(i32, 4),
        MI_UINT32 => conv!(u32, 4),
        MI_SINGLE => conv!(f32, 4),
        MI_DOUBLE => conv!(f64, 8),
        MI_INT64 => conv!(i64, 8),
        MI_UINT64 => conv!(u64, 8),
        t => return Err(format!("data type {t} is not numeric")),
    })
}

/// One `miMATRIX` element's contents: (name, value).
fn matrix(data: &[u8], le: bool, depth: usize) -> Result<(String, Value), String> {
    if depth > MAX_DEPTH {
        return Err("arrays nested too deep".into());
    }
    if data.is_empty() {
        return Ok((String::new(), Value::Numeric(Vec::new()))); // an empty [] in a struct or cell
    }
    let mut r = Reader { b: data, pos: 0, le };
    let (_, flags) = r.element()?;
    // array flags: the class is the low byte of the first word
    let class = (Reader { b: flags, pos: 0, le }.u32_at(0).map_err(|_| "array flags missing")? & 0xff) as u8;
    let (dty, dims) = r.element()?;
    let count: usize = numbers(dty, dims, le)?.iter().map(|&d| d as usize).product();
    let (_, name) = r.element()?;
    let name = String::from_utf8_lossy(name).into_owned();
    let value = match class {
        MX_CHAR => {
            let (ty, d) = r.element()?;
            let units: Vec<u16> = match ty {
                MI_UTF8 | MI_UINT8 | MI_INT8 => return Ok((name, Value::Char(String::from_utf8_lossy(d).into_owned()))),
                _ => numbers(ty, d, le)?.into_iter().map(|v| v as u16).collect(),
            };
            Value::Char(String::from_utf16_lossy(&units))
        }
        MX_STRUCT => {
            let (_, len) = r.element()?;
            let len = numbers(MI_INT32, len, le)?.first().copied().unwrap_or(0.0) as usize;
            let (_, names) = r.element()?;
            if len == 0 {
                return Err("struct field name length 0".into());
            }
            let fields: Vec<String> =
                names.chunks(len).map(|c| String::from_utf8_lossy(c.split(|&b| b == 0).next().unwrap_or(c)).into_owned()).collect();
            let mut elements = Vec::with_capacity(count);
            for _ in 0..count {
                let mut row = Vec::with_capacity(fields.len());
                for _ in 0..fields.len() {
                    let (ty, d) = r.element()?;
                    row.push(if ty == MI_MATRIX { matrix(d, le, depth + 1)?.1 } else { Value::Other });
                }
                elements.push(row);
            }
            Value::Struct { fields, elements }
        }
        MX_CELL => {
            let mut cells = Vec::with_capacity(count);
            for _ in 0..count {
                let (ty, d) = r.element()?;
                cells.push(if ty == MI_MATRIX { matrix(d, le, depth + 1)?.1 } else { Value::Other });
            }
            Value::Cell(cells)
        }
        6..=15 => {
            let (ty, d) = r.element()?;
            Value::Numeric(numbers(ty, d, le)?)
        }
        _ => Value::Other,
    };
    Ok((name, value))
}

/// The devkit's class order: wnids by `ILSVRC2012_ID` (1, 2, …) from `meta.mat`'s `synsets`.
pub fn synset_order(bytes: &[u8]) -> Result<Vec<String>, String> {
    let vars = read(bytes)?;
    let synsets = vars.iter().find(|(n, _)| n == "synsets").map(|(_, v)| v).ok_or("no `synsets` variable")?;
    let Value::Struct { elements, .. } = synsets else { return Err("`synsets` is not a struct array".into()) };
    let mut pairs = Vec::with_capacity(elements.len());
    for i in 0..elements.len() {
        let id = match synsets.field(i, "ILSVRC2012_ID") {
            Some(Value::Numeric(v)) if v.len() == 1 => v[0],
            _ => return Err(format!("synsets({}): no scalar ILSVRC2012_ID", i + 1)),
        };
        let wnid = match synsets.field(i, "WNID") {
            Some(Value::Char(s)) => s.clone(),
            _ => return Err(format!("synsets({}): no WNID string", i + 1)),
        };
        pairs.push((id as u64, wnid));
    }
    pairs.sort();
    if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("ILSVRC2012_ID {} appears twice ({} and {})", w[0].0, w[0].1, w[1].1));
    }
    // ids 1..=1000 are the classes (1001..=1860 their ancestors); the run of ids from 1 is the order
    let order: Vec<String> = pairs.into_iter().enumerate().take_while(|(k, (id, _))| *id == *k as u64 + 1).map(|(_, (_, w))| w).collect();
    if order.is_empty() {
        return Err("no synset has ILSVRC2012_ID 1".into());
    }
    Ok(order)
}
