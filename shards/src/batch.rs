//! Conversion between typed [`Record`]s and Arrow record batches of a [`Layout`]'s schema.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, FixedSizeBinaryBuilder, FixedSizeListBuilder, Float32Array,
    Float64Builder, Int32Builder, ListBuilder, RecordBatch, StringBuilder, UInt32Array, UInt64Array,
};
use arrow::datatypes::{Float32Type, Float64Type, Int32Type, SchemaRef, UInt32Type, UInt64Type};

use crate::error::{arrow_err, Error, Result};
use crate::record::{Body, EmbeddingDType, ImageBody, Record, TextEmbedding, VideoBody};
use crate::schema::{jpeg_column, Layout, RecordKind};

/// Builds one batch from `records`, which must already be validated against `layout`.
pub fn records_to_batch(layout: &Layout, schema: &SchemaRef, records: &[Record], path: &Path) -> Result<RecordBatch> {
    let n = records.len();
    let mut id = StringBuilder::with_capacity(n, n * 32);
    let mut source = StringBuilder::with_capacity(n, n * 64);
    let mut sha = FixedSizeBinaryBuilder::with_capacity(n, 32);
    let mut caption = StringBuilder::with_capacity(n, n * 64);
    for r in records {
        id.append_value(&r.id);
        source.append_value(&r.source);
        sha.append_value(r.source_sha256).map_err(arrow_err(path))?;
        caption.append_option(r.caption.as_deref());
    }
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(source.finish()),
        Arc::new(sha.finish()),
        Arc::new(records.iter().map(|r| r.width).collect::<UInt32Array>()),
        Arc::new(records.iter().map(|r| r.height).collect::<UInt32Array>()),
        Arc::new(caption.finish()),
    ];
    let images = || records.iter().filter_map(|r| if let Body::Image(i) = &r.body { Some(i) } else { None });
    let videos = || records.iter().filter_map(|r| if let Body::Video(v) = &r.body { Some(v) } else { None });
    match layout.kind {
        RecordKind::Image | RecordKind::TextImage => {
            let mut label = Int32Builder::with_capacity(n);
            let mut crop = FixedSizeListBuilder::new(Int32Builder::new(), 4);
            for img in images() {
                label.append_option(img.label);
                match img.crop_box {
                    Some(c) => {
                        crop.values().append_slice(&c);
                        crop.append(true);
                    }
                    None => {
                        crop.values().append_nulls(4);
                        crop.append(false);
                    }
                }
            }
            cols.push(Arc::new(label.finish()));
            cols.push(Arc::new(crop.finish()));
            for k in 0..layout.resolutions.len() {
                let total = images().map(|i| i.jpegs[k].len()).sum();
                let mut b = BinaryBuilder::with_capacity(n, total);
                images().for_each(|i| b.append_value(&i.jpegs[k]));
                cols.push(Arc::new(b.finish()));
            }
        }
        RecordKind::Video => {
            cols.push(Arc::new(videos().map(|v| v.clip).collect::<UInt32Array>()));
            cols.push(Arc::new(videos().map(|v| v.fps).collect::<Float32Array>()));
            cols.push(Arc::new(videos().map(|v| v.duration).collect::<arrow::array::Float64Array>()));
            let mut ts = ListBuilder::new(Float64Builder::new());
            let mut frames = ListBuilder::new(BinaryBuilder::new());
            for v in videos() {
                ts.values().append_slice(&v.timestamps);
                ts.append(true);
                v.frames.iter().for_each(|f| frames.values().append_value(f));
                frames.append(true);
            }
            cols.push(Arc::new(ts.finish()));
            cols.push(Arc::new(frames.finish()));
        }
    }
    if layout.kind.has_text() {
        let total = records.iter().map(|r| r.text.as_ref().map_or(0, |t| t.data.len())).sum();
        let mut emb = BinaryBuilder::with_capacity(n, total);
        let mut tokens = Vec::with_capacity(n);
        for r in records {
            tokens.push(r.text.as_ref().map(|t| t.tokens));
            emb.append_option(r.text.as_ref().map(|t| &t.data));
        }
        cols.push(Arc::new(UInt32Array::from(tokens)));
        cols.push(Arc::new(emb.finish()));
    }
    cols.push(Arc::new(records.iter().map(|r| r.checksum(layout.kind)).collect::<UInt64Array>()));
    RecordBatch::try_new(schema.clone(), cols).map_err(arrow_err(path))
}

fn column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| Error::Invalid {
        path: path.to_path_buf(),
        msg: format!("column {name:?} missing"),
    })
}

/// Turns a full (unprojected) batch back into records, with the checksum stored for each.
/// `first_row` is the shard row of the batch's first row, for error messages.
pub fn batch_to_records(
    layout: &Layout,
    batch: &RecordBatch,
    dtype: EmbeddingDType,
    path: &Path,
    first_row: u64,
) -> Result<Vec<(Record, u64)>> {
    let bad_type = |name: &str| Error::Invalid { path: path.to_path_buf(), msg: format!("column {name:?} has the wrong type") };
    macro_rules! col {
        ($name:expr, $as:ident) => {
            column(batch, $name, path)?.$as().ok_or_else(|| bad_type($name))?
        };
        ($name:expr, $as:ident :: <$t:ty>) => {
            column(batch, $name, path)?.$as::<$t>().ok_or_else(|| bad_type($name))?
        };
    }
    let id = col!("id", as_string_opt::<i32>);
    let source = col!("source", as_string_opt::<i32>);
    let sha = col!("source_sha256", as_fixed_size_binary_opt);
    let width = col!("width", as_primitive_opt::<UInt32Type>);
    let height = col!("height", as_primitive_opt::<UInt32Type>);
    let caption = col!("caption", as_string_opt::<i32>);
    let checksum = col!("checksum", as_primitive_opt::<UInt64Type>);
    let text = if layout.kind.has_text() {
        Some((col!("t5_tokens", as_primitive_opt::<UInt32Type>), col!("t5_emb", as_binary_opt::<i32>)))
    } else {
        None
    };
    // Kind-specific columns, looked up once per batch.
    let image_cols = match layout.kind {
        RecordKind::Image | RecordKind::TextImage => {
            let mut jpegs = Vec::with_capacity(layout.resolutions.len());
            for &r in &layout.resolutions {
                jpegs.push(col!(&jpeg_column(r), as_binary_opt::<i32>));
            }
            Some((col!("label", as_primitive_opt::<Int32Type>), col!("crop_box", as_fixed_size_list_opt), jpegs))
        }
        RecordKind::Video => None,
    };
    let video_cols = match layout.kind {
        RecordKind::Video => Some((
            col!("clip", as_primitive_opt::<UInt32Type>),
            col!("fps", as_primitive_opt::<Float32Type>),
            col!("duration", as_primitive_opt::<Float64Type>),
            col!("timestamps", as_list_opt::<i32>),
            col!("frames", as_list_opt::<i32>),
        )),
        _ => None,
    };
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let row = first_row + i as u64;
        let row_err = |msg: &str| Error::Row { path: path.to_path_buf(), row, msg: msg.to_string() };
        let source_sha256: [u8; 32] = sha.value(i).try_into().map_err(|_| row_err("bad source_sha256"))?;
        let body = match (&image_cols, &video_cols) {
            (Some((label, crop, jpegs)), _) => {
                let crop_box = if crop.is_null(i) {
                    None
                } else {
                    let v = crop.value(i);
                    let v = v.as_primitive_opt::<Int32Type>().ok_or_else(|| bad_type("crop_box"))?;
                    Some([v.value(0), v.value(1), v.value(2), v.value(3)])
                };
                let jpegs = jpegs.iter().map(|c| c.value(i).to_vec()).collect();
                Body::Image(ImageBody { label: (!label.is_null(i)).then(|| label.value(i)), crop_box, jpegs })
            }
            (None, Some((clip, fps, duration, ts, frames))) => {
                let ts = ts.value(i);
                let frames = frames.value(i);
                let ts = ts.as_primitive_opt::<Float64Type>().ok_or_else(|| bad_type("timestamps"))?;
                let frames = frames.as_binary_opt::<i32>().ok_or_else(|| bad_type("frames"))?;
                Body::Video(VideoBody {
                    clip: clip.value(i),
                    fps: fps.value(i),
                    duration: duration.value(i),
                    timestamps: ts.values().to_vec(),
                    frames: (0..frames.len()).map(|k| frames.value(k).to_vec()).collect(),
                })
            }
            (None, None) => return Err(row_err("layout has neither image nor video columns")),
        };
        let text = match text {
            Some((tokens, emb)) if !emb.is_null(i) => {
                if tokens.is_null(i) || tokens.value(i) == 0 {
                    return Err(row_err("embedding without a token count"));
                }
                let data = emb.value(i).to_vec();
                let t = tokens.value(i);
                let per_token = t as usize * dtype.size();
                if data.len() % per_token != 0 {
                    return Err(row_err("embedding size is not a multiple of its token count"));
                }
                Some(TextEmbedding { tokens: t, dim: (data.len() / per_token) as u32, dtype, data })
            }
            _ => None,
        };
        let record = Record {
            id: id.value(i).to_string(),
            source: source.value(i).to_string(),
            source_sha256,
            width: width.value(i),
            height: height.value(i),
            caption: (!caption.is_null(i)).then(|| caption.value(i).to_string()),
            text,
            body,
        };
        out.push((record, checksum.value(i)));
    }
    Ok(out)
}
