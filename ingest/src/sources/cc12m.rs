//! CC12M (and any captioned image set) in the two forms users have:
//!
//! - img2dataset's webdataset output: `00000.tar`, … holding `KEY.jpg`, `KEY.txt`, `KEY.json`.
//!   `--src` is a folder of tars, a brace pattern (`cc12m/{00000..01242}.tar`) or one tar. A
//!   sample is the run of consecutive members sharing a key (webdataset grouping); `--part I/N`
//!   takes every N-th tar. The rows of a tar's `00000.parquet` sidecar whose status is not
//!   `success` (urls that failed to download or resize, so never in the tar) follow its samples
//!   as `not-downloaded` rejects; the `_stats.json` sidecars are ignored.
//! - a table of (image path or url, caption): `.tsv`, `.csv` (header optional; columns named
//!   `url`/`image`/`path`/`filepath` and `caption`/`text`, else the first two) or `.parquet`.
//!   Relative paths are under `--image-root` (default: the table's folder). Nothing is
//!   downloaded: a url is looked up under the image root as `HOST/PATH` and as its file name,
//!   and rejected as `not-downloaded` when neither exists. `--part I/N` takes every N-th row.
//!
//! Captions are checked as UTF-8 and whitespace-normalised (`bad-caption` otherwise). Shards
//! are `text-image` without embeddings until the T5 step fills them.

use std::fs;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use mdm_shards::RecordKind;

use super::tar::{is_safe_name, webdataset_inputs, webdataset_tars, SampleKind};
use super::RunOptions;
use crate::error::{io, Error};
use crate::pipeline::{self, Build, Input, Media, Payload, Summary};
use crate::rejects::{normalize_caption, Reject, RejectReason};
use crate::settings::{ImageSettings, Validated};

/// Where the data is.
#[derive(Debug, Clone)]
pub struct Cc12mOptions {
    /// Folder of tars, brace pattern, one tar, or a table file.
    pub src: String,
    /// Root of relative image paths of a table.
    pub image_root: Option<PathBuf>,
    /// Embed the captions inline with this T5 encoder (`--t5 DIR`).
    pub text: Option<crate::text::TextSpec>,
}

/// Members of a webdataset sample that hold its image.
const IMAGES: SampleKind = SampleKind { exts: &["jpg", "jpeg", "png", "webp"], what: "image", missing: RejectReason::MissingImage };

/// Scans and ingests.
pub fn ingest(opts: &Cc12mOptions, settings: &Validated<ImageSettings>, run: &RunOptions) -> Result<Summary, Error> {
    let src = Path::new(&opts.src);
    let ext = src.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    let ms = serde_json::json!({ "source": "cc12m", "image": settings });
    let build = run.build(RecordKind::TextImage, Media::Image(settings.clone()), ms, opts.text.clone());
    if !opts.src.contains('{') && matches!(ext.as_str(), "tsv" | "csv" | "parquet") {
        let root = opts.image_root.clone().unwrap_or_else(|| src.parent().map(Path::to_path_buf).unwrap_or_default());
        let rows = read_table(src)?;
        let mine: Vec<(u64, Row)> = rows.into_iter().enumerate().map(|(i, r)| (i as u64, r)).filter(|(i, _)| run.owns(*i)).collect();
        let build = Build { total: Some(mine.len() as u64), ..build };
        let table = src.to_path_buf();
        let inputs = mine.into_iter().map(move |(i, row)| Ok::<Input, Error>(table_input(&table, &root, i, row)));
        return pipeline::run(&build, inputs);
    }
    let inputs = webdataset_inputs(webdataset_tars(&opts.src)?, run, IMAGES);
    pipeline::run(&build, inputs)
}

/// One table row: image path or url, raw caption bytes.
#[derive(Debug, Clone)]
pub struct Row {
    pub image: Option<String>,
    pub caption: Option<Vec<u8>>,
}

fn table_input(table: &Path, root: &Path, i: u64, row: Row) -> Input {
    let tname = table.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let id = format!("{i:09}");
    let image = row.image.unwrap_or_default();
    let source = if image.is_empty() { format!("{tname}:row {}", i + 1) } else { image.clone() };
    let mut input = Input { id, source, label: None, caption: None, payload: Payload::Rejected(Reject::new(RejectReason::Internal, "")) };
    let caption = match row.caption {
        None => Err(Reject::new(RejectReason::BadCaption, format!("{tname}: row {}: no caption", i + 1))),
        Some(b) => normalize_caption(&b),
    };
    let path = if image.is_empty() {
        Err(Reject::new(RejectReason::MissingImage, format!("{tname}: row {}: no image path", i + 1)))
    } else if let Some(rest) = image.strip_prefix("http://").or_else(|| image.strip_prefix("https://")) {
        let rest = rest.split(['?', '#']).next().unwrap_or(rest);
        let base = rest.rsplit('/').next().unwrap_or(rest);
        [root.join(rest), root.join(base)]
            .into_iter()
            .find(|p| is_safe_name(rest) && p.is_file())
            .ok_or_else(|| Reject::new(RejectReason::NotDownloaded, format!("no local file for the url under {}", root.display())))
    } else {
        let p = Path::new(&image);
        Ok(if p.is_absolute() { p.to_path_buf() } else { root.join(p) })
    };
    input.payload = match (path, caption) {
        (Err(r), _) | (_, Err(r)) => Payload::Rejected(r),
        (Ok(p), Ok(c)) => {
            input.caption = Some(c);
            Payload::Path(p)
        }
    };
    input
}

const IMAGE_COLS: [&str; 6] = ["url", "image", "path", "filepath", "image_path", "file"];
const CAPTION_COLS: [&str; 3] = ["caption", "text", "txt"];

/// Reads a TSV/CSV/Parquet table into rows (the table is small next to its images).
pub fn read_table(path: &Path) -> Result<Vec<Row>, Error> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if ext == "parquet" {
        return read_parquet_table(path);
    }
    let sep = if ext == "tsv" { b'\t' } else { b',' };
    let f = fs::File::open(path).map_err(io(path))?;
    let records = split_records(std::io::BufReader::new(f), sep, path)?;
    let mut it = records.into_iter().peekable();
    let (mut ci, mut cc) = (0usize, 1usize);
    if let Some(first) = it.peek() {
        let lower: Vec<String> = first.iter().map(|f| String::from_utf8_lossy(f).trim().to_lowercase()).collect();
        let i = lower.iter().position(|c| IMAGE_COLS.contains(&c.as_str()));
        let c = lower.iter().position(|c| CAPTION_COLS.contains(&c.as_str()));
        if let (Some(i), Some(c)) = (i, c) {
            (ci, cc) = (i, c);
            it.next();
        }
    }
    Ok(it
        .map(|fields| Row {
            image: fields.get(ci).map(|b| String::from_utf8_lossy(b).trim().to_string()),
            caption: fields.get(cc).cloned(),
        })
        .collect())
}

/// Splits delimited text into records of raw fields; `"` quotes (with `""` escapes and
/// embedded newlines) are honoured for CSV, and for TSV only when a field starts with one.
fn split_records<R: BufRead>(r: R, sep: u8, path: &Path) -> Result<Vec<Vec<Vec<u8>>>, Error> {
    let mut out = Vec::new();
    for_each_record(r, sep, path, |record| {
        out.push(record);
        Ok(())
    })?;
    Ok(out)
}

/// Streams the records of delimited text (as [`split_records`] splits them) to `f`, so that
/// tables of millions of rows need not be held whole.
pub(crate) fn for_each_record<R: BufRead>(
    mut r: R,
    sep: u8,
    path: &Path,
    mut f: impl FnMut(Vec<Vec<u8>>) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut line = Vec::new();
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut field = Vec::new();
    let mut in_quotes = false;
    let mut at_start = true;
    let mut row = 0u64;
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line).map_err(|e| Error::Table { path: path.into(), row: row + 1, msg: e.to_string() })?;
        if n == 0 {
            if in_quotes {
                return Err(Error::Table { path: path.into(), row: row + 1, msg: "unterminated quote".into() });
            }
            break;
        }
        let mut i = 0;
        while i < line.len() {
            let b = line[i];
            if in_quotes {
                if b == b'"' {
                    if line.get(i + 1) == Some(&b'"') {
                        field.push(b'"');
                        i += 1;
                    } else {
                        in_quotes = false;
                    }
                } else {
                    field.push(b);
                }
            } else if b == b'"' && at_start {
                in_quotes = true;
            } else if b == sep {
                fields.push(std::mem::take(&mut field));
                at_start = true;
                i += 1;
                continue;
            } else if b == b'\n' || (b == b'\r' && line.get(i + 1) == Some(&b'\n')) {
                // end of record
            } else {
                field.push(b);
            }
            at_start = false;
            i += 1;
        }
        if !in_quotes {
            fields.push(std::mem::take(&mut field));
            at_start = true;
            row += 1;
            let record = std::mem::take(&mut fields);
            if !(record.len() == 1 && record[0].is_empty()) {
                f(record)?;
            }
        }
    }
    Ok(())
}

fn read_parquet_table(path: &Path) -> Result<Vec<Row>, Error> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::DataType;
    let f = fs::File::open(path).map_err(io(path))?;
    let bad = |msg: String| Error::Table { path: path.into(), row: 0, msg };
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| bad(e.to_string()))?;
    let schema = builder.schema().clone();
    let find = |names: &[&str]| schema.fields().iter().position(|f| names.contains(&f.name().to_lowercase().as_str()));
    let ci = find(&IMAGE_COLS).ok_or_else(|| bad(format!("no image column (one of {IMAGE_COLS:?})")))?;
    let cc = find(&CAPTION_COLS).ok_or_else(|| bad(format!("no caption column (one of {CAPTION_COLS:?})")))?;
    let reader = builder.build().map_err(|e| bad(e.to_string()))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let col = |i: usize| -> Result<Vec<Option<Vec<u8>>>, Error> {
            let a = batch.column(i);
            Ok(match a.data_type() {
                DataType::Utf8 => a.as_string::<i32>().iter().map(|v| v.map(|s| s.as_bytes().to_vec())).collect(),
                DataType::LargeUtf8 => a.as_string::<i64>().iter().map(|v| v.map(|s| s.as_bytes().to_vec())).collect(),
                DataType::Binary => a.as_binary::<i32>().iter().map(|v| v.map(<[u8]>::to_vec)).collect(),
                t => return Err(bad(format!("column {} has type {t}, expected a string", schema.field(i).name()))),
            })
        };
        let (imgs, caps) = (col(ci)?, col(cc)?);
        for (img, cap) in imgs.into_iter().zip(caps) {
            rows.push(Row { image: img.map(|b| String::from_utf8_lossy(&b).trim().to_string()), caption: cap });
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_tsv() {
        let csv = b"image,caption\na.jpg,\"a cat, \"\"quoted\"\"\nover lines\"\nb.jpg,plain\n";
        let recs = split_records(&csv[..], b',', Path::new("t.csv")).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1][1], b"a cat, \"quoted\"\nover lines".to_vec());
        let tsv = b"http://x/a.jpg\ta dog\r\nb.jpg\tb\n";
        let recs = split_records(&tsv[..], b'\t', Path::new("t.tsv")).unwrap();
        assert_eq!(recs[0], vec![b"http://x/a.jpg".to_vec(), b"a dog".to_vec()]);
        assert_eq!(recs[1][1], b"b".to_vec());
    }
}
