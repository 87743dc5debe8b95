//! Tar helpers: member-name safety, webdataset brace patterns and sample grouping (images for
//! img2dataset, videos for video2dataset), the failed downloads listed in their parquet
//! sidecars, and a producer thread that turns a streaming tar walk into an iterator for the
//! pipeline (bounded, so memory stays bounded). Members are only ever read into memory: nothing from a tar is written to disk,
//! and a member whose name is absolute or contains `..` is rejected as `unsafe-path`.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crossbeam_channel::{bounded, Sender};

use crate::error::{io, Error};
use crate::pipeline::{Input, Payload};
use crate::rejects::{normalize_caption, Reject, RejectReason};

/// Whether a member name is a plain relative path (no root, no `..`, no drive prefix).
pub fn is_safe_member(name: &Path) -> bool {
    !name.as_os_str().is_empty() && name.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Raw member name as stored in the header (the `tar` crate refuses `..` in `path()`,
/// which would hide the member instead of rejecting it).
pub fn member_name<R: std::io::Read>(entry: &::tar::Entry<'_, R>) -> String {
    String::from_utf8_lossy(&entry.path_bytes()).into_owned()
}

/// Whether a raw member name is safe (checks the bytes, so `..` is seen).
pub fn is_safe_name(name: &str) -> bool {
    !name.starts_with('/') && !name.contains('\\') && is_safe_member(Path::new(name)) && !name.split('/').any(|s| s == "..")
}

/// Expands one `{A..B}` range (zero padding kept from A), as webdataset users write shard lists:
/// `cc12m/{00000..01242}.tar`. Patterns without braces come back as they are.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, Error> {
    let bad = |msg: &str| Error::Settings(format!("pattern {pattern:?}: {msg}"));
    let Some(open) = pattern.find('{') else { return Ok(vec![pattern.to_string()]) };
    let close = pattern[open..].find('}').map(|c| open + c).ok_or_else(|| bad("unclosed brace"))?;
    let inner = &pattern[open + 1..close];
    let (pre, post) = (&pattern[..open], &pattern[close + 1..]);
    let mut out = Vec::new();
    if let Some((a, b)) = inner.split_once("..") {
        let width = a.len();
        let (lo, hi): (u64, u64) = (a.parse().map_err(|_| bad("bad start"))?, b.parse().map_err(|_| bad("bad end"))?);
        if hi < lo || hi - lo > 10_000_000 {
            return Err(bad("empty or huge range"));
        }
        for i in lo..=hi {
            for rest in expand_braces(post)? {
                out.push(format!("{pre}{i:0width$}{rest}"));
            }
        }
    } else {
        for alt in inner.split(',') {
            for rest in expand_braces(post)? {
                out.push(format!("{pre}{alt}{rest}"));
            }
        }
    }
    Ok(out)
}

/// Runs `produce` on its own thread and yields what it sends, in order. The producer stops
/// (its sends fail) as soon as the consumer is dropped.
pub fn produced<F>(produce: F) -> impl Iterator<Item = Result<Input, Error>> + Send
where
    F: FnOnce(&Sender<Result<Input, Error>>) -> Result<(), Error> + Send + 'static,
{
    let (tx, rx) = bounded(64);
    std::thread::spawn(move || {
        if let Err(e) = produce(&tx) {
            let _ = tx.send(Err(e));
        }
    });
    rx.into_iter()
}

/// Opens a tar file for streaming.
pub fn open(path: &Path) -> Result<::tar::Archive<std::io::BufReader<std::fs::File>>, Error> {
    let f = std::fs::File::open(path).map_err(crate::error::io(path))?;
    Ok(::tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, f)))
}

/// Sorted `*.tar` files of a folder.
pub fn tars_in(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(crate::error::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "tar") && p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

/// The samples of this part's tars (every N-th tar of `tars` under `--part I/N`), streamed.
pub fn webdataset_inputs(tars: Vec<PathBuf>, run: &super::RunOptions, kind: SampleKind) -> impl Iterator<Item = Result<Input, Error>> + Send {
    let mine: Vec<PathBuf> = tars.into_iter().enumerate().filter(|(u, _)| run.owns(*u as u64)).map(|(_, t)| t).collect();
    produced(move |tx| {
        for t in &mine {
            if !read_webdataset(t, tx, &kind)? {
                return Ok(());
            }
            for input in not_downloaded(t)? {
                if tx.send(Ok(input)).is_err() {
                    return Ok(());
                }
            }
        }
        Ok(())
    })
}

/// The inputs that never reached a tar: img2dataset (and video2dataset) write beside each
/// `00000.tar` a `00000.parquet` with one row per url of that shard (`key`, `status`,
/// `error_message`, `url`, ...); a row whose status is not `success` has no sample in the tar
/// and becomes a `not-downloaded` reject (id = key, source = url, detail = the error message),
/// in the sidecar's row order, so that the summary accounts for every url of the original list.
/// A tar without a sidecar gives none; a sidecar without a `status` column is an error.
pub fn not_downloaded(tar: &Path) -> Result<Vec<Input>, Error> {
    use arrow::array::AsArray;
    use arrow::datatypes::DataType;
    let path = tar.with_extension("parquet");
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&path)(e)),
    };
    let bad = |row: u64, msg: String| Error::Table { path: path.clone(), row, msg };
    let whole = |msg: String| Error::Source { path: path.clone(), msg };
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .map_err(|e| whole(format!("not a readable img2dataset sidecar: {e}")))?;
    let names = ["key", "status", "error_message", "url"];
    let fields = builder.schema().fields().clone();
    let wanted: Vec<usize> = fields.iter().enumerate().filter(|(_, f)| names.contains(&f.name().as_str())).map(|(i, _)| i).collect();
    if !fields.iter().any(|f| f.name() == "status") {
        return Err(whole("no `status` column: not an img2dataset sidecar (move it away from the tars)".into()));
    }
    let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), wanted);
    let reader = builder.with_projection(mask).build().map_err(|e| whole(e.to_string()))?;
    let tar_name = tar.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let side_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut out = Vec::new();
    let mut row = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| bad(row + 1, e.to_string()))?;
        let col = |name: &str| -> Result<Vec<Option<String>>, Error> {
            let Some(a) = batch.column_by_name(name) else { return Ok(vec![None; batch.num_rows()]) };
            Ok(match a.data_type() {
                DataType::Utf8 => a.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect(),
                DataType::LargeUtf8 => a.as_string::<i64>().iter().map(|v| v.map(str::to_string)).collect(),
                DataType::Null => vec![None; batch.num_rows()],
                t => return Err(bad(row + 1, format!("column {name} has type {t}, expected a string"))),
            })
        };
        let (keys, statuses, messages, urls) = (col("key")?, col("status")?, col("error_message")?, col("url")?);
        for (((key, status), message), url) in keys.into_iter().zip(statuses).zip(messages).zip(urls) {
            row += 1;
            let status = status.unwrap_or_default();
            if status == "success" {
                continue;
            }
            let detail = match message.filter(|m| !m.trim().is_empty()) {
                Some(m) => m,
                None if status.is_empty() => "no status".to_string(),
                None => status,
            };
            let reject = Reject::new(RejectReason::NotDownloaded, detail);
            out.push(Input {
                id: key.filter(|k| !k.is_empty()).unwrap_or_else(|| format!("{tar_name}:row {row}")),
                source: url.filter(|u| !u.is_empty()).unwrap_or_else(|| format!("{side_name}:row {row}")),
                label: None,
                caption: None,
                payload: Payload::Rejected(reject),
            });
        }
    }
    Ok(out)
}

/// Members of one sample, in tar order.
struct Sample {
    key: String,
    members: Vec<(String, Result<Vec<u8>, String>)>,
}

/// Which member of a webdataset sample is its payload.
#[derive(Debug, Clone, Copy)]
pub struct SampleKind {
    /// Extensions (lower case, after the key's first dot) of the payload member.
    pub exts: &'static [&'static str],
    /// "image", "video": for reject details.
    pub what: &'static str,
    /// Reason of a sample without a payload member.
    pub missing: RejectReason,
}

/// A webdataset source (`--src`): a brace pattern, a folder of tars or one tar; every tar must exist.
pub fn webdataset_tars(src: &str) -> Result<Vec<PathBuf>, Error> {
    let path = Path::new(src);
    let tars: Vec<PathBuf> = if src.contains('{') {
        expand_braces(src)?.into_iter().map(PathBuf::from).collect()
    } else if path.is_dir() {
        tars_in(path)?
    } else {
        vec![path.to_path_buf()]
    };
    if tars.is_empty() {
        return Err(Error::Source { path: path.to_path_buf(), msg: "no .tar files".into() });
    }
    for t in &tars {
        if !t.is_file() {
            return Err(Error::Source { path: t.clone(), msg: "tar not found".into() });
        }
    }
    Ok(tars)
}

/// Streams one webdataset tar (a sample is the run of consecutive members sharing a key: `KEY.jpg`,
/// `KEY.txt`, `KEY.json`); returns false when the consumer is gone.
pub fn read_webdataset(path: &Path, tx: &Sender<Result<Input, Error>>, kind: &SampleKind) -> Result<bool, Error> {
    let tar_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut archive = open(path)?;
    let entries = archive.entries().map_err(io(path))?;
    let mut current: Option<Sample> = None;
    let send = |input: Input| tx.send(Ok(input)).is_ok();
    for e in entries {
        let mut e = match e {
            Ok(e) => e,
            Err(err) => {
                // A broken header ends what can be read of this tar; what was read counts.
                if let Some(s) = current.take() {
                    if !send(sample_input(&tar_name, s, kind)) {
                        return Ok(false);
                    }
                }
                let r = Reject::new(RejectReason::ReadError, format!("tar stops here: {err}"));
                let input = Input { id: format!("{tar_name}:?"), source: format!("{tar_name}:?"), label: None, caption: None, payload: Payload::Rejected(r) };
                return Ok(send(input));
            }
        };
        if !e.header().entry_type().is_file() {
            continue;
        }
        let name = member_name(&e);
        if !is_safe_name(&name) {
            let r = Reject::new(RejectReason::UnsafePath, "absolute or .. member name; never written");
            let input = Input { id: name.clone(), source: format!("{tar_name}:{name}"), label: None, caption: None, payload: Payload::Rejected(r) };
            if !send(input) {
                return Ok(false);
            }
            continue;
        }
        let (dir, base) = name.rsplit_once('/').map_or(("", name.as_str()), |(d, b)| (d, b));
        let (stem, _) = base.split_once('.').unwrap_or((base, ""));
        let key = if dir.is_empty() { stem.to_string() } else { format!("{dir}/{stem}") };
        let mut buf = Vec::with_capacity(e.size() as usize);
        let data = e.read_to_end(&mut buf).map(|_| buf).map_err(|err| err.to_string());
        if current.as_ref().is_some_and(|s| s.key != key) {
            if let Some(s) = current.take() {
                if !send(sample_input(&tar_name, s, kind)) {
                    return Ok(false);
                }
            }
        }
        current.get_or_insert_with(|| Sample { key: key.clone(), members: Vec::new() }).members.push((name, data));
    }
    if let Some(s) = current.take() {
        if !send(sample_input(&tar_name, s, kind)) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn sample_input(tar_name: &str, s: Sample, kind: &SampleKind) -> Input {
    let ext_of = |n: &str| n.rsplit('/').next().and_then(|b| b.split_once('.')).map(|(_, e)| e.to_lowercase()).unwrap_or_default();
    let image = s.members.iter().find(|(n, _)| kind.exts.contains(&ext_of(n).as_str()));
    let text = s.members.iter().find(|(n, _)| ext_of(n) == "txt");
    let source = format!("{tar_name}:{}", image.map_or(s.key.as_str(), |(n, _)| n.as_str()));
    let mut input = Input { id: s.key.clone(), source, label: None, caption: None, payload: Payload::Rejected(Reject::new(RejectReason::Internal, "")) };
    let caption = match text {
        None => Err(Reject::new(RejectReason::BadCaption, "no .txt member")),
        Some((_, Err(e))) => Err(Reject::new(RejectReason::ReadError, format!("caption member: {e}"))),
        Some((_, Ok(b))) => normalize_caption(b),
    };
    input.payload = match (image, caption) {
        (None, _) => Payload::Rejected(Reject::new(
            kind.missing,
            format!("no {} member among {:?}", kind.what, s.members.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()),
        )),
        (Some((_, Err(e))), _) => Payload::Rejected(Reject::new(RejectReason::ReadError, e.clone())),
        (_, Err(r)) => Payload::Rejected(r),
        (Some((_, Ok(bytes))), Ok(c)) => {
            input.caption = Some(c);
            Payload::Bytes(bytes.clone())
        }
    };
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_and_safety() {
        assert_eq!(expand_braces("a/{008..011}.tar").unwrap(), vec!["a/008.tar", "a/009.tar", "a/010.tar", "a/011.tar"]);
        assert_eq!(expand_braces("x.tar").unwrap(), vec!["x.tar"]);
        assert_eq!(expand_braces("{a,b}/{0..1}").unwrap(), vec!["a/0", "a/1", "b/0", "b/1"]);
        assert!(expand_braces("{0..").is_err());
        assert!(is_safe_name("00000/000000001.jpg"));
        assert!(!is_safe_name("/etc/passwd"));
        assert!(!is_safe_name("../x.jpg"));
        assert!(!is_safe_name("a/../../x.jpg"));
    }
}
