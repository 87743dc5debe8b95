//! End-to-end video ingestion on videos made here with the `ffmpeg` tool (h264, vp9, mpeg4;
//! 24, 25, 30000/1001 fps and variable frame rate; rotation, anamorphic pixels, odd sizes;
//! too short, truncated, audio-only, zero-byte, garbage): frame counts and timestamps against
//! the sampling rule, sizes and pixels, rejects, the WebVid CSV and video2dataset tars,
//! thread independence, parts + merge, and resume after an interrupted run.

use crate::resume_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use mdm_ingest::rejects::{RejectReason, RejectRecord};
use mdm_ingest::settings::{Part, ShortPolicy, Validated, VideoSettings};
use mdm_ingest::sources::webvid::{self, WebvidOptions, WebvidSource};
use mdm_ingest::sources::RunOptions;
use mdm_ingest::video::{plan_clips, Clip, VideoProcessor};
use mdm_shards::{Body, Manifest, Record, ShardSet, VideoBody};
use resume_common::{simulate_crash, snapshot};

/// 6 frames at 4 fps: a clip spans 1.5 s. Small frames keep the suite fast.
fn settings() -> VideoSettings {
    VideoSettings { frames: 6, fps: 4.0, resolution: 32, min_side: 16, shard_inputs: 3, ..VideoSettings::default() }
}

/// Settings as the sources and processors take them.
fn valid(s: VideoSettings) -> Validated<VideoSettings> {
    s.validate().expect("valid settings")
}

fn run_opts(out: &Path, threads: usize, part: Option<Part>) -> RunOptions {
    RunOptions { out: out.to_path_buf(), threads, part, progress: false }
}

/// Runs `ffmpeg -y ARGS… OUT`.
fn ffmpeg(out: &Path, args: &str) {
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-y"]);
    // no shell: arguments are separated by spaces (filter expressions keep their quotes)
    cmd.args(args.split(' ').filter(|a| !a.is_empty()));
    let st = cmd.arg(out).status().expect("the ffmpeg tool (scripts/setup.sh installs Debian's ffmpeg)");
    assert!(st.success(), "ffmpeg {args} {}", out.display());
}

const TESTSRC: &str = "-f lavfi -i testsrc=size=64x48";
/// Three vertical bands red | green | blue at x 0..16, 16..48, 48..64.
const BANDS: &str = "-f lavfi -i color=green:size=64x48:rate=25:duration=2 -vf drawbox=x=0:y=0:w=16:h=48:color=red:t=fill,drawbox=x=48:y=0:w=16:h=48:color=blue:t=fill";

/// Makes every test video under `dir`; returns (file name, what it is).
fn make_videos(dir: &Path) {
    let v = |name: &str, args: &str| ffmpeg(&dir.join(name), args);
    v("h264_25.mp4", &format!("{TESTSRC}:rate=25:duration=3 -c:v libx264 -preset veryfast -g 12 -pix_fmt yuv420p"));
    v("vp9_24.webm", &format!("{TESTSRC}:rate=24:duration=2 -c:v libvpx-vp9 -deadline realtime -cpu-used 8"));
    v(
        "mpeg4_ntsc_odd.mkv",
        "-f lavfi -i testsrc=size=65x49:rate=30000/1001:duration=2 -c:v mpeg4 -q:v 5",
    );
    v(
        "vfr.mp4",
        &format!("{TESTSRC}:rate=25 -frames:v 35 -vf setpts='if(lt(N,25),N/25,1+(N-25)/5)/TB' -fps_mode passthrough -c:v libx264 -preset veryfast"),
    );
    v("bands.mp4", &format!("{BANDS} -c:v libx264 -preset veryfast -pix_fmt yuv444p"));
    v("sar.mp4", &format!("{BANDS},setsar=2 -c:v libx264 -preset veryfast -pix_fmt yuv444p"));
    // rotation: the display matrix of the mp4 track (what phones write)
    ffmpeg(&dir.join("rot.mp4"), &format!("-i {} -c copy -metadata:s:v:0 rotate=90", dir.join("bands.mp4").display()));
    v("short.mp4", &format!("{TESTSRC}:rate=25:duration=0.5 -c:v libx264 -preset veryfast"));
    v("audio.mp4", "-f lavfi -i sine=duration=1 -c:a aac");
    // cut-off downloads: moov first (the mdat runs short) and moov last (no moov at all)
    v("faststart.mp4", &format!("{TESTSRC}:rate=25:duration=3 -c:v libx264 -preset veryfast -movflags +faststart"));
    let full = std::fs::read(dir.join("faststart.mp4")).unwrap();
    std::fs::write(dir.join("cut_faststart.mp4"), &full[..full.len() * 2 / 5]).unwrap();
    let full = std::fs::read(dir.join("h264_25.mp4")).unwrap();
    std::fs::write(dir.join("cut_moov_last.mp4"), &full[..full.len() * 3 / 5]).unwrap();
    std::fs::write(dir.join("empty.mp4"), b"").unwrap();
    std::fs::write(dir.join("garbage.mp4"), (0..5000u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<u8>>()).unwrap();
}

fn records(dir: &Path, manifest: &str) -> Vec<Record> {
    let set = ShardSet::open(dir.join(manifest)).expect("open shard set");
    set.records().collect::<Result<Vec<_>, _>>().expect("read records")
}

fn rejects(path: &Path) -> Vec<RejectRecord> {
    std::fs::read_to_string(path).expect("rejects file").lines().map(|l| serde_json::from_str(l).expect("reject line")).collect()
}

fn video(r: &Record) -> &VideoBody {
    match &r.body {
        Body::Video(v) => v,
        Body::Image(_) => panic!("{}: not a video record", r.id),
    }
}

fn rgb(jpeg: &[u8]) -> image::RgbImage {
    image::load_from_memory(jpeg).expect("stored frame decodes").to_rgb8()
}

/// Mean colour of rows y0..y1 of a frame.
fn mean_rows(img: &image::RgbImage, y0: u32, y1: u32) -> [f64; 3] {
    let mut s = [0f64; 3];
    let mut n = 0.0;
    for y in y0..y1 {
        for x in 0..img.width() {
            let p = img.get_pixel(x, y).0;
            (0..3).for_each(|c| s[c] += f64::from(p[c]));
            n += 1.0;
        }
    }
    s.map(|v| v / n)
}

/// The sampled frame of each sample time is the last source frame at or before it.
fn assert_sampling(id: &str, v: &VideoBody, s: &VideoSettings, frame_times: &dyn Fn(f64) -> f64) {
    let plan = plan_clips(s, id, v.duration).expect("plan");
    let targets = &plan[v.clip as usize];
    assert_eq!(v.frames.len(), s.frames as usize, "{id}: frame count");
    assert_eq!(v.timestamps.len(), s.frames as usize, "{id}: timestamp count");
    assert_eq!(v.fps, s.fps as f32);
    for (t, ts) in targets.iter().zip(&v.timestamps) {
        let want = frame_times(*t);
        assert!((ts - want).abs() < 1e-6, "{id}: sample at {t:.4} s took the frame at {ts:.4} s, expected {want:.4} s ({:?})", v.timestamps);
    }
}

#[test]
fn codecs_rates_rotation_aspect_and_rejects() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("videos");
    make_videos(&dir);
    let s = settings();
    let mut p = VideoProcessor::new(&valid(s.clone())).unwrap();
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    let check_frames = |clip: &Clip| {
        for f in &clip.frames {
            let img = rgb(f);
            assert_eq!((img.width(), img.height()), (32, 32));
        }
    };

    // constant rates: every sample takes the frame on or before it, of a constant grid
    for (name, rate, size, dur) in [
        ("h264_25.mp4", 25.0, (64, 48), 3.0),
        ("vp9_24.webm", 24.0, (64, 48), 2.0),
        ("mpeg4_ntsc_odd.mkv", 30000.0 / 1001.0, (65, 49), 2.0),
    ] {
        let out = p.process(&read(name), name).unwrap_or_else(|r| panic!("{name}: {r:?}"));
        assert_eq!((out.width, out.height), size, "{name}");
        assert!((out.duration - dur).abs() < 0.1, "{name}: duration {}", out.duration);
        assert_eq!(out.clips.len(), 1);
        let c = &out.clips[0];
        check_frames(c);
        let body = VideoBody { clip: 0, fps: out.fps, duration: out.duration, timestamps: c.timestamps.clone(), frames: c.frames.clone() };
        // the source frame grid; Matroska stores milliseconds
        let ms = name.ends_with(".mkv") || name.ends_with(".webm");
        let times: Vec<f64> = (0..(dur * rate) as u32 + 2)
            .map(|n| f64::from(n) / rate)
            .map(|t| if ms { (t * 1000.0).round() / 1000.0 } else { t })
            .collect();
        let grid = |t: f64| times.iter().copied().filter(|&f| f <= t + 1e-9).fold(0.0, f64::max);
        assert_sampling(name, &body, &s, &grid);
    }

    // variable frame rate: 25 fps for a second, then 5 fps
    let out = p.process(&read("vfr.mp4"), "vfr").unwrap();
    let times: Vec<f64> = (0..35).map(|n| if n < 25 { f64::from(n) / 25.0 } else { 1.0 + f64::from(n - 25) / 5.0 }).collect();
    let last_at = |t: f64| times.iter().copied().filter(|&f| f <= t + 1e-9).fold(0.0, f64::max);
    let c = &out.clips[0];
    let body = VideoBody { clip: 0, fps: out.fps, duration: out.duration, timestamps: c.timestamps.clone(), frames: c.frames.clone() };
    assert_sampling("vfr", &body, &s, &last_at);
    assert!(c.timestamps.iter().any(|&t| t >= 1.0), "the clip should reach the 5 fps part: {:?}", c.timestamps);

    // bands: the centred square of 64x48 is x 8..56 (a red and a blue sliver at the sides)
    let band = p.process(&read("bands.mp4"), "bands").unwrap();
    let img = rgb(&band.clips[0].frames[0]);
    let left = img.get_pixel(1, 16).0;
    assert!(left[0] > 150 && left[1] < 100, "left edge should be red: {left:?}");
    // anamorphic 2:1 pixels: displayed 128x48, the centred square is x 20..44: all green
    let sar = p.process(&read("sar.mp4"), "sar").unwrap();
    assert_eq!((sar.width, sar.height), (128, 48));
    for f in &sar.clips[0].frames {
        let img = rgb(f);
        for x in [0, 16, 31] {
            let px = img.get_pixel(x, 16).0;
            assert!(px[1] > 90 && px[0] < 60 && px[2] < 60, "SAR crop should be green at x={x}: {px:?}");
        }
    }
    // rotation metadata: displayed 48x64, shown as the ffmpeg tool shows it (red band at the bottom)
    let rot = p.process(&read("rot.mp4"), "rot").unwrap();
    assert_eq!((rot.width, rot.height), (48, 64));
    let img = rgb(&rot.clips[0].frames[0]);
    let (top, bottom) = (mean_rows(&img, 0, 2), mean_rows(&img, 30, 32));
    assert!(bottom[0] > 150.0 && bottom[1] < 100.0, "rotated: red at the bottom, got {bottom:?}");
    assert!(top[2] > 150.0 && top[0] < 100.0, "rotated: blue at the top, got {top:?}");

    // too short: rejected, or looped with wrapping timestamps
    assert_eq!(p.process(&read("short.mp4"), "short").unwrap_err().reason, RejectReason::TooShort);
    let looped = VideoSettings { short: ShortPolicy::Loop, ..settings() };
    let out = VideoProcessor::new(&valid(looped)).unwrap().process(&read("short.mp4"), "short").unwrap();
    let ts = &out.clips[0].timestamps;
    assert_eq!(ts.len(), 6);
    assert!(ts.iter().all(|&t| (0.0..0.5).contains(&t)) && ts.windows(2).any(|w| w[1] < w[0]), "looped: {ts:?}");

    // broken inputs, each with its reason
    for (name, reason) in [
        ("audio.mp4", RejectReason::NoVideoStream),
        ("cut_faststart.mp4", RejectReason::Truncated),
        ("cut_moov_last.mp4", RejectReason::Truncated),
        ("empty.mp4", RejectReason::Empty),
        ("garbage.mp4", RejectReason::Corrupt),
    ] {
        let r = p.process(&read(name), name).expect_err(name);
        assert_eq!(r.reason, reason, "{name}: {}", r.detail);
    }
    // the per-video time limit
    let hurried = VideoSettings { timeout_secs: 1e-9, ..settings() };
    let r = VideoProcessor::new(&valid(hurried)).unwrap().process(&read("h264_25.mp4"), "x").unwrap_err();
    assert_eq!(r.reason, RejectReason::Timeout, "{}", r.detail);
    // a limit beyond the clock's range is no limit (and no panic)
    let patient = VideoSettings { timeout_secs: 1e300, ..settings() };
    assert!(VideoProcessor::new(&valid(patient)).unwrap().process(&read("h264_25.mp4"), "x").is_ok());
}

/// The WebVid CSV over the test videos, some under page_dir, some missing.
fn webvid_csv(tmp: &Path) -> (PathBuf, PathBuf) {
    let videos = tmp.join("videos");
    make_videos(&videos);
    // page_dir layout for two of them
    std::fs::create_dir_all(videos.join("pd1")).unwrap();
    std::fs::rename(videos.join("vp9_24.webm"), videos.join("pd1/vp9_24.webm")).unwrap();
    std::fs::rename(videos.join("mpeg4_ntsc_odd.mkv"), videos.join("pd1/mpeg4_ntsc_odd.mkv")).unwrap();
    let mut csv = String::from("videoid,contentUrl,duration,page_dir,name\n");
    let rows = [
        ("h264_25", "a  test pattern"),
        ("vp9_24", "\"vp9, quoted\""),
        ("mpeg4_ntsc_odd", "odd sizes"),
        ("vfr", "variable rate"),
        ("rot", "rotated"),
        ("sar", "anamorphic"),
        ("short", "too short"),
        ("audio", "only audio"),
        ("cut_faststart", "cut off"),
        ("empty", "zero bytes"),
        ("garbage", "noise"),
        ("never_downloaded", "not here"),
        ("h264_25", "again"),
        ("bands", "   "),
    ];
    for (id, name) in rows {
        csv.push_str(&format!("{id},https://example.com/{id}.mp4,PT00H00M03S,pd1,{name}\n"));
    }
    let path = tmp.join("results_2M_val.csv");
    std::fs::write(&path, csv).unwrap();
    (path, videos)
}

#[test]
fn webvid_csv_threads_parts_merge_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let (csv, videos) = webvid_csv(tmp.path());
    let opts = WebvidOptions { source: WebvidSource::Csv { csv, videos }, text: None };
    let full = tmp.path().join("full");
    let sum = webvid::ingest(&opts, &valid(settings()), &run_opts(&full, 3, None)).unwrap();
    assert_eq!(sum.stats.inputs, 14);
    assert_eq!(sum.stats.written, 6, "{sum}");
    let rej = &sum.stats.rejected;
    for (reason, n) in [
        ("too-short", 1),
        ("no-video-stream", 1),
        ("truncated", 1),
        ("empty", 1),
        ("corrupt", 1),
        ("not-downloaded", 1),
        ("duplicate", 1),
        ("bad-caption", 1),
    ] {
        assert_eq!(rej.get(reason), Some(&n), "{reason}: {sum}");
    }
    assert!(sum.stats.balanced());
    let rj = rejects(&sum.rejects);
    assert_eq!(rj.len(), 8);
    assert!(rj.iter().any(|r| r.id == "never_downloaded" && r.source == "results_2M_val.csv:row 12"), "{rj:?}");
    let recs = records(&full, "manifest.json");
    let ids: Vec<&str> = recs.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["h264_25", "vp9_24", "mpeg4_ntsc_odd", "vfr", "rot", "sar"]);
    assert_eq!(recs[0].caption.as_deref(), Some("a test pattern"));
    assert_eq!(recs[1].caption.as_deref(), Some("vp9, quoted"));
    assert_eq!(recs[1].source, "pd1/vp9_24.webm");
    assert_eq!((recs[2].width, recs[2].height), (65, 49));
    assert!(recs.iter().all(|r| video(r).frames.len() == 6));
    let set = ShardSet::open(&full).unwrap();
    assert_eq!(set.manifest.kind, mdm_shards::RecordKind::Video);
    assert_eq!(set.manifest.settings.as_ref().unwrap()["video"]["frames"], 6);

    // the output does not depend on the thread count
    let one = tmp.path().join("one");
    webvid::ingest(&opts, &valid(settings()), &run_opts(&one, 1, None)).unwrap();
    assert!(snapshot(&one) == snapshot(&full), "1 thread and 3 threads differ");

    // two parts merge into the full set
    let mut parts = Vec::new();
    for i in 0..2 {
        let dir = tmp.path().join(format!("p{i}"));
        let part = Part { index: i, count: 2 };
        let s = webvid::ingest(&opts, &valid(settings()), &run_opts(&dir, 2, Some(part))).unwrap();
        parts.push((dir, Manifest::read(&s.manifest).unwrap()));
    }
    let merged_dir = tmp.path().join("merged");
    std::fs::create_dir_all(&merged_dir).unwrap();
    let merged = Manifest::merge(&parts, &merged_dir).unwrap();
    assert_eq!(merged.stats, sum.stats);
    merged.write(&merged_dir).unwrap();
    let mut a: Vec<String> = records(&merged_dir, "manifest.json").into_iter().map(|r| r.id).collect();
    a.sort();
    let mut b: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    b.sort();
    assert_eq!(a, b);

    // interrupted run: chunk 0 finished, chunk 1's shard renamed without its sidecar, chunk 2 half-written
    let crashed = tmp.path().join("crashed");
    let reference = simulate_crash(&full, &crashed);
    let resumed = webvid::ingest(&opts, &valid(settings()), &run_opts(&crashed, 2, None)).unwrap();
    assert_eq!(resumed.resumed_chunks, 1);
    let after: BTreeMap<String, Vec<u8>> = snapshot(&crashed).into_iter().filter(|(n, _)| !n.ends_with(".tmp")).collect();
    assert_eq!(after.keys().collect::<Vec<_>>(), reference.keys().collect::<Vec<_>>());
    assert!(after == reference, "resumed output differs from the uninterrupted one");

    // other settings are refused on resume
    let other = VideoSettings { fps: 3.0, ..settings() };
    let err = webvid::ingest(&opts, &valid(other), &run_opts(&crashed, 1, None)).unwrap_err().to_string();
    assert!(err.contains("other settings"), "{err}");
}

#[test]
fn video2dataset_tars_and_clips_per_video() {
    let tmp = tempfile::tempdir().unwrap();
    let videos = tmp.path().join("videos");
    ffmpeg(&videos.join("a.mp4"), &format!("{TESTSRC}:rate=25:duration=3 -c:v libx264 -preset veryfast -g 12"));
    ffmpeg(&videos.join("b.webm"), &format!("{TESTSRC}:rate=24:duration=2 -c:v libvpx-vp9 -deadline realtime -cpu-used 8"));
    let tars = tmp.path().join("webvid");
    std::fs::create_dir_all(&tars).unwrap();
    for (t, members) in [
        (0, vec![("000000000.mp4", std::fs::read(videos.join("a.mp4")).unwrap()), ("000000000.txt", b"first video".to_vec()), ("000000000.json", b"{}".to_vec())]),
        (1, vec![("000000001.webm", std::fs::read(videos.join("b.webm")).unwrap()), ("000000001.txt", b"second".to_vec()), ("000000002.txt", b"no video".to_vec()), ("000000002.json", b"{}".to_vec())]),
    ] {
        let mut b = tar::Builder::new(Vec::new());
        for (name, bytes) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &bytes[..]).unwrap();
        }
        std::fs::write(tars.join(format!("{t:05}.tar")), b.into_inner().unwrap()).unwrap();
    }
    let two = VideoSettings { clips_per_video: 2, ..settings() };
    let opts = WebvidOptions { source: WebvidSource::Webdataset(format!("{}/{{00000..00001}}.tar", tars.display())), text: None };
    let out = tmp.path().join("out");
    let sum = webvid::ingest(&opts, &valid(two), &run_opts(&out, 2, None)).unwrap();
    // inputs are videos: 2 written (4 clips) + 1 without a video
    assert_eq!((sum.stats.inputs, sum.stats.written), (3, 2), "{sum}");
    assert_eq!(sum.stats.rejected.get("missing-video"), Some(&1));
    let recs = records(&out, "manifest.json");
    let ids: Vec<(&str, u32)> = recs.iter().map(|r| (r.id.as_str(), video(r).clip)).collect();
    assert_eq!(ids, [("000000000#0", 0), ("000000000#1", 1), ("000000001#0", 0), ("000000001#1", 1)]);
    assert_eq!(recs[0].source, "00000.tar:000000000.mp4");
    assert_eq!(recs[2].caption.as_deref(), Some("second"));
    // the two clips of a video come from different windows
    assert!(video(&recs[0]).timestamps[0] < video(&recs[1]).timestamps[0]);
    assert_eq!(recs[0].source_sha256, recs[1].source_sha256);
}
