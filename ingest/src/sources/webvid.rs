//! WebVid-10M in the two forms users have:
//!
//! - the CSV (`videoid,contentUrl,duration,page_dir,name`, header required, any column order)
//!   with a folder of downloaded videos, each at `<videos>/<videoid>.<ext>` or
//!   `<videos>/<page_dir>/<videoid>.<ext>` (ext: mp4, webm, mkv, mov). Nothing is downloaded:
//!   a row without a file is rejected as `not-downloaded`, a repeated video id as `duplicate`
//!   (the first row is kept). `--part I/N` takes every N-th row; the CSV is streamed, and only
//!   this part's rows are held.
//! - video2dataset's webdataset output: tars of `KEY.mp4`, `KEY.txt`, `KEY.json` (a folder,
//!   a brace pattern or one tar); `--part I/N` takes every N-th tar.
//!
//! The caption is the `name` column (or the `.txt` member), whitespace-normalised
//! (`bad-caption` otherwise). The id of a record is the video id (the tar key), with `#c`
//! appended when `clips_per_video` > 1. Shards are `video` records; with `--t5` the captions
//! are embedded inline, as for CC12M.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use mdm_shards::RecordKind;

use super::cc12m::for_each_record;
use super::tar::{is_safe_name, webdataset_inputs, webdataset_tars, SampleKind};
use super::RunOptions;
use crate::error::{io, Error};
use crate::pipeline::{self, Build, Input, Media, Payload, Summary};
use crate::rejects::{normalize_caption, Reject, RejectReason};
use crate::settings::{Validated, VideoSettings};
use crate::text::TextSpec;

/// Where the videos are.
#[derive(Debug, Clone)]
pub enum WebvidSource {
    /// The WebVid CSV and the folder the videos were downloaded to.
    Csv { csv: PathBuf, videos: PathBuf },
    /// video2dataset tars: a folder, a brace pattern or one tar.
    Webdataset(String),
}

/// What to ingest.
#[derive(Debug, Clone)]
pub struct WebvidOptions {
    pub source: WebvidSource,
    /// Embed the captions inline with this T5 encoder (`--t5 DIR`).
    pub text: Option<TextSpec>,
}

/// Extensions a downloaded video may have, in lookup order.
pub const VIDEO_EXTS: [&str; 4] = ["mp4", "webm", "mkv", "mov"];

/// Members of a video2dataset sample that hold its video.
const VIDEOS: SampleKind = SampleKind { exts: &VIDEO_EXTS, what: "video", missing: RejectReason::MissingVideo };

/// Scans and ingests.
pub fn ingest(opts: &WebvidOptions, settings: &Validated<VideoSettings>, run: &RunOptions) -> Result<Summary, Error> {
    let ms = serde_json::json!({ "source": "webvid", "video": settings });
    let build = run.build(RecordKind::Video, Media::Video(settings.clone()), ms, opts.text.clone());
    match &opts.source {
        WebvidSource::Webdataset(src) => pipeline::run(&build, webdataset_inputs(webdataset_tars(src)?, run, VIDEOS)),
        WebvidSource::Csv { csv, videos } => {
            let rows = read_csv(csv, run)?;
            let build = Build { total: Some(rows.len() as u64), ..build };
            let csv_name = csv.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let videos = videos.clone();
            if !videos.is_dir() {
                return Err(Error::Source { path: videos, msg: "videos folder not found".into() });
            }
            pipeline::run(&build, rows.into_iter().map(move |row| Ok(row_input(&csv_name, &videos, row))))
        }
    }
}

/// One CSV row of this part.
#[derive(Debug, Clone)]
struct Row {
    /// 1-based data row number (header excluded).
    number: u64,
    videoid: String,
    page_dir: String,
    name: Vec<u8>,
    duplicate: bool,
}

/// Reads this part's rows; a header naming `videoid` and `name` is required.
fn read_csv(path: &Path, run: &RunOptions) -> Result<Vec<Row>, Error> {
    let f = std::fs::File::open(path).map_err(io(path))?;
    let mut cols: Option<(usize, usize, Option<usize>)> = None;
    let mut seen: HashSet<u64> = HashSet::new();
    let mut rows = Vec::new();
    let mut n = 0u64;
    for_each_record(std::io::BufReader::with_capacity(1 << 20, f), b',', path, |fields| {
        let Some((ci, cn, cp)) = cols else {
            let lower: Vec<String> = fields.iter().map(|f| String::from_utf8_lossy(f).trim().to_lowercase()).collect();
            let find = |name: &str| lower.iter().position(|c| c == name);
            let (Some(ci), Some(cn)) = (find("videoid"), find("name")) else {
                return Err(Error::Table { path: path.into(), row: 1, msg: format!("header {lower:?} lacks videoid and name") });
            };
            cols = Some((ci, cn, find("page_dir")));
            return Ok(());
        };
        let get = |i: usize| fields.get(i).map(|b| String::from_utf8_lossy(b).trim().to_string()).unwrap_or_default();
        let videoid = get(ci);
        let mut h = DefaultHasher::new();
        videoid.hash(&mut h);
        let duplicate = !seen.insert(h.finish());
        if run.owns(n) {
            let page_dir = cp.map(get).unwrap_or_default();
            rows.push(Row { number: n + 1, videoid, page_dir, name: fields.get(cn).cloned().unwrap_or_default(), duplicate });
        }
        n += 1;
        Ok(())
    })?;
    if cols.is_none() {
        return Err(Error::Table { path: path.into(), row: 0, msg: "empty CSV (no header)".into() });
    }
    Ok(rows)
}

fn row_input(csv_name: &str, videos: &Path, row: Row) -> Input {
    let at = format!("{csv_name}:row {}", row.number);
    let mut input = Input { id: row.videoid.clone(), source: at.clone(), label: None, caption: None, payload: Payload::Rejected(Reject::new(RejectReason::Internal, "")) };
    let reject = |reason, detail: String| Payload::Rejected(Reject::new(reason, detail));
    input.payload = if row.videoid.is_empty() {
        reject(RejectReason::MissingVideo, format!("{at}: no videoid"))
    } else if row.duplicate {
        reject(RejectReason::Duplicate, format!("{at}: videoid {} seen in an earlier row", row.videoid))
    } else if !is_safe_name(&row.videoid) || row.videoid.contains('/') || !(row.page_dir.is_empty() || is_safe_name(&row.page_dir)) {
        reject(RejectReason::UnsafePath, format!("{at}: videoid or page_dir is not a plain relative name"))
    } else {
        match normalize_caption(&row.name) {
            Err(r) => Payload::Rejected(r),
            Ok(caption) => match find_video(videos, &row) {
                None => reject(
                    RejectReason::NotDownloaded,
                    format!("{at}: no {}.{{{}}} under {} or its page_dir", row.videoid, VIDEO_EXTS.join(","), videos.display()),
                ),
                Some(rel) => {
                    input.caption = Some(caption);
                    input.source = rel.clone();
                    Payload::Path(videos.join(rel))
                }
            },
        }
    };
    input
}

/// `<videoid>.<ext>` or `<page_dir>/<videoid>.<ext>` under the videos folder (relative path).
fn find_video(videos: &Path, row: &Row) -> Option<String> {
    let dirs: &[&str] = if row.page_dir.is_empty() { &[""] } else { &["", row.page_dir.as_str()] };
    for dir in dirs {
        for ext in VIDEO_EXTS {
            let rel = if dir.is_empty() { format!("{}.{ext}", row.videoid) } else { format!("{dir}/{}.{ext}", row.videoid) };
            if videos.join(&rel).is_file() {
                return Some(rel);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(out: &Path) -> RunOptions {
        RunOptions { out: out.to_path_buf(), threads: 1, part: None, progress: false }
    }

    #[test]
    fn csv_rows_layouts_and_rejects() {
        let tmp = tempfile::tempdir().unwrap();
        let csv = tmp.path().join("w.csv");
        std::fs::write(&csv, "name,page_dir,videoid\n\"a, b\",p1,v1\nc,../up,v2\nd,p1,v1\ne,p1,v3\n").unwrap();
        let rows = read_csv(&csv, &run(tmp.path())).unwrap();
        assert_eq!(rows.iter().map(|r| (r.videoid.as_str(), r.duplicate)).collect::<Vec<_>>(), [("v1", false), ("v2", false), ("v1", true), ("v3", false)]);
        let videos = tmp.path().join("videos");
        std::fs::create_dir_all(videos.join("p1")).unwrap();
        std::fs::write(videos.join("p1/v1.webm"), b"x").unwrap();
        let inputs: Vec<Input> = rows.into_iter().map(|r| row_input("w.csv", &videos, r)).collect();
        assert!(matches!(&inputs[0].payload, Payload::Path(p) if p.ends_with("p1/v1.webm")), "{:?}", inputs[0]);
        assert_eq!(inputs[0].caption.as_deref(), Some("a, b"));
        let reason = |i: &Input| match &i.payload {
            Payload::Rejected(r) => Some(r.reason),
            _ => None,
        };
        assert_eq!(reason(&inputs[1]), Some(RejectReason::UnsafePath));
        assert_eq!(reason(&inputs[2]), Some(RejectReason::Duplicate));
        assert_eq!(reason(&inputs[3]), Some(RejectReason::NotDownloaded));
        // every other row under --part 1/2
        let part = RunOptions { part: Some(crate::settings::Part { index: 1, count: 2 }), ..run(tmp.path()) };
        let rows = read_csv(&csv, &part).unwrap();
        assert_eq!(rows.iter().map(|r| r.number).collect::<Vec<_>>(), [2, 4]);
        std::fs::write(&csv, "id,caption\n1,x\n").unwrap();
        assert!(matches!(read_csv(&csv, &run(tmp.path())), Err(Error::Table { row: 1, .. })));
    }
}
