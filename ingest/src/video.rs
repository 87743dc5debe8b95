//! Video → clips of JPEG frames, through the system FFmpeg (`ffmpeg-next`).
//!
//! One video (bytes in memory, demuxed through a custom AVIO reader, so files and tar members
//! take the same path) becomes `clips_per_video` clips of F frames sampled at a target fps:
//!
//! 1. **Probe.** The first video stream that is not cover art; none is `no-video-stream`
//!    (audio-only files among them). Frame size over `max_pixels` is a `decompression-bomb`,
//!    a displayed shortest side below `min_side` is `too-small`. Displayed size applies the
//!    sample aspect ratio (width × SAR, as FFmpeg's `scale` does) and the display-matrix
//!    rotation (90/180/270°, as the `ffmpeg` tool's autorotate does).
//! 2. **Plan** ([`plan_clips`]). Duration D from the stream (else the container, else frame
//!    count / rate). A clip spans L = F / fps seconds; clip c of C starts at
//!    `(c + u) · (D − L) / C` with u ∈ [0, 1) a hash of (seed, video id, c), so offsets are
//!    deterministic and clips are spread over the video. D < L is `too-short`, or with
//!    `short = "loop"` the sample times wrap around modulo D.
//! 3. **Decode.** Seek to the keyframe before the clip's first sample time, decode forward
//!    single-threaded (work is parallel across videos), and give each sample time t the last
//!    frame whose presentation time is ≤ t — the rule of FFmpeg's `fps` filter, which keeps
//!    variable frame rate right. The stored timestamp is that frame's own time (seconds from
//!    the stream start). Frames that end more than [`TAIL_SLACK`] before a sample time mean
//!    the file is `truncated`; a container that cannot be opened is `truncated` when its
//!    ISO-BMFF boxes run past the end of the file, else `corrupt`.
//! 4. **Frame → JPEG.** Only sampled frames are converted (libswscale to RGB at the decoded
//!    size, BT.709 or BT.601 and the range from the frame), then the centred square of the
//!    displayed picture is Lanczos-3 resized to R×R (a non-square source region when pixels
//!    are anamorphic), rotated, and JPEG-encoded by libjpeg-turbo — the same helpers as images.
//!
//! A wall-clock limit per video (`timeout_secs`) is checked by the AVIO reader, FFmpeg's
//! interrupt callback and the decode loop: nothing hangs, the video is rejected as `timeout`.
//! Outputs are a pure function of (bytes, id, settings): the same on any thread.

use std::ffi::{c_int, c_void};
use std::mem::ManuallyDrop;
use std::ptr;
use std::time::{Duration, Instant};

use ffmpeg_next as ff;
use ff::ffi;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::image::{encode_jpeg, jpeg_compressor, orient, resize_region, Rgb};
use crate::rejects::{Reject, RejectReason};
use crate::settings::{ShortPolicy, VideoSettings};

/// How far (seconds) a sample time may lie past the last decodable frame before the video
/// counts as truncated (container durations often include a longer audio track).
pub const TAIL_SLACK: f64 = 0.5;

/// One clip: JPEG frames and the source time of each.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// Index of the clip window within the video.
    pub index: u32,
    pub timestamps: Vec<f64>,
    pub frames: Vec<Vec<u8>>,
}

/// Result of processing one video.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    /// Displayed size of the source (sample aspect ratio and rotation applied).
    pub width: u32,
    pub height: u32,
    /// Duration of the source in seconds.
    pub duration: f64,
    /// Sampling rate of the stored frames.
    pub fps: f32,
    pub clips: Vec<Clip>,
}

/// Sample times (seconds from the stream start) of each clip of a video of `duration` seconds
/// with id `id`; `too-short` when the video is shorter than a clip under `short = "reject"`.
pub fn plan_clips(settings: &VideoSettings, id: &str, duration: f64) -> Result<Vec<Vec<f64>>, Reject> {
    let (f, fps, clips) = (settings.frames, settings.fps, settings.clips_per_video);
    let span = settings.clip_seconds();
    if !(duration.is_finite() && duration > 0.0) {
        return Err(Reject::new(RejectReason::Corrupt, format!("duration {duration} s")));
    }
    let looped = duration + 1e-3 < span;
    if looped && settings.short == ShortPolicy::Reject {
        return Err(Reject::new(
            RejectReason::TooShort,
            format!("{duration:.3} s < one clip of {f} frames at {fps} fps ({span:.3} s)"),
        ));
    }
    // Clip c starts in the c-th of C equal parts of the room for start offsets.
    let (room, modulo) = if looped { (duration, Some(duration)) } else { ((duration - span).max(0.0), None) };
    Ok((0..clips)
        .map(|c| {
            let start = (f64::from(c) + unit_hash(settings.seed, id, c)) * room / f64::from(clips);
            (0..f)
                .map(|k| {
                    let t = start + f64::from(k) / fps;
                    modulo.map_or(t, |d| t.rem_euclid(d))
                })
                .collect()
        })
        .collect())
}

/// A number in [0, 1) from (seed, id, clip): sha256, first 53 bits.
fn unit_hash(seed: u64, id: &str, clip: u32) -> f64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update((id.len() as u64).to_le_bytes());
    h.update(id.as_bytes());
    h.update(clip.to_le_bytes());
    let d = h.finalize();
    let v = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]) >> 11;
    v as f64 / (1u64 << 53) as f64
}

/// Per-thread decoder-side state: JPEG encoder, resizer, colour converter.
pub struct VideoProcessor {
    settings: VideoSettings,
    compressor: turbojpeg::Compressor,
    resizer: fast_image_resize::Resizer,
    sws: Sws,
}

static INIT: std::sync::Once = std::sync::Once::new();

/// Silences FFmpeg's own log (once per process): problems of single videos become rejects with
/// FFmpeg's message, encoder failures typed errors; libx264 would print its settings at info level.
pub(crate) fn quiet_ffmpeg() {
    INIT.call_once(|| ff::util::log::set_level(ff::util::log::Level::Quiet));
}

impl VideoProcessor {
    /// `settings` must have been validated.
    pub fn new(settings: &VideoSettings) -> Result<Self, Error> {
        quiet_ffmpeg();
        Ok(VideoProcessor {
            settings: settings.clone(),
            compressor: jpeg_compressor(settings.quality).map_err(|e| Error::Codec(e.to_string()))?,
            resizer: fast_image_resize::Resizer::new(),
            sws: Sws { ctx: ptr::null_mut() },
        })
    }

    /// Processes one video; every failure is a [`Reject`] with a reason.
    pub fn process(&mut self, bytes: &[u8], id: &str) -> Result<Processed, Reject> {
        if bytes.is_empty() {
            return Err(Reject::new(RejectReason::Empty, "zero bytes"));
        }
        let limit = Duration::try_from_secs_f64(self.settings.timeout_secs).unwrap_or(Duration::MAX);
        let now = Instant::now();
        // A limit too large for the clock is no limit (a year from now).
        let deadline = now.checked_add(limit).unwrap_or(now + Duration::from_secs(365 * 86_400));
        let mut input = MemInput::open(bytes, deadline)?;
        let stream = probe(&input, &self.settings)?;
        let plans = plan_clips(&self.settings, id, stream.duration)?;
        let mut decoder = open_decoder(&input, stream.index)?;
        let mut clips = Vec::with_capacity(plans.len());
        for (c, targets) in plans.iter().enumerate() {
            let (timestamps, frames) = self.clip(&mut input, &mut decoder, &stream, targets)?;
            clips.push(Clip { index: c as u32, timestamps, frames });
        }
        Ok(Processed { width: stream.display.0, height: stream.display.1, duration: stream.duration, fps: self.settings.fps as f32, clips })
    }

    /// Decodes one clip: seeks before its first sample time and walks forward. When the seek
    /// lands on a keyframe after that time (edit lists, B-frame delays), it retries from
    /// one second earlier; when nothing decodes after the seek point, from the start.
    fn clip(&mut self, input: &mut MemInput<'_>, decoder: &mut ff::decoder::Video, s: &StreamInfo, targets: &[f64]) -> Result<(Vec<f64>, Vec<Vec<u8>>), Reject> {
        let first = targets.iter().copied().fold(f64::INFINITY, f64::min);
        let mut from = first;
        loop {
            // Retries are only asked for from > 0: this loop ends at the start at the latest.
            match self.decode_from(input, decoder, s, targets, from)? {
                Attempt::Done(timestamps, frames) => return Ok((timestamps, frames)),
                Attempt::Earlier => from = if from > 1.0 { from - 1.0 } else { 0.0 },
                Attempt::FromStart => from = 0.0,
            }
        }
    }

    /// One decode of a clip from the keyframe before `from` seconds.
    fn decode_from(
        &mut self,
        input: &mut MemInput<'_>,
        decoder: &mut ff::decoder::Video,
        s: &StreamInfo,
        targets: &[f64],
        from: f64,
    ) -> Result<Attempt, Reject> {
        input.seek(s, from)?;
        decoder.flush();
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.sort_by(|&a, &b| targets[a].total_cmp(&targets[b]).then(a.cmp(&b)));
        let mut picked: Vec<Option<(f64, usize)>> = vec![None; targets.len()];
        let mut jpegs: Vec<Vec<u8>> = Vec::new();
        let mut next = 0usize;
        let mut prev: Option<(f64, ff::frame::Video)> = None;
        // JPEG of `prev` once converted (index into `jpegs`).
        let mut prev_jpeg: Option<usize> = None;
        let mut frame = ff::frame::Video::empty();
        let mut last_t: Option<f64> = None;
        let mut eof = false;
        let mut errors = 0u32;
        let mut last_error = String::new();
        let (mut window, mut window_end, needed) = read_window(input, s, targets)?;
        while next < order.len() {
            input.check_deadline()?;
            if !eof {
                let (item, in_window) = match window.pop_front() {
                    Some(p) => (Next::Packet(p), true),
                    None => match window_end.take() {
                        Some(end) => (Next::End(end), true),
                        None => (read_packet_of(input, s.index)?, false),
                    },
                };
                match item {
                    Next::Packet(packet) => {
                        // Frames no sample needs are skipped when no other frame refers to them.
                        let skip = in_window && needed.as_ref().is_some_and(|n| packet.pts().is_some_and(|p| !n.contains(&p)));
                        // SAFETY: plain field of the open decoder context, read at the next decode call.
                        unsafe {
                            (*decoder.as_mut_ptr()).skip_frame =
                                if skip { ffi::AVDiscard::AVDISCARD_NONREF } else { ffi::AVDiscard::AVDISCARD_DEFAULT };
                        }
                        if let Err(e) = decoder.send_packet(&packet) {
                            errors += 1;
                            last_error = e.to_string();
                        }
                    }
                    Next::End(err) => {
                        if let Some(e) = err {
                            last_error = e;
                        }
                        eof = true;
                        let _ = decoder.send_eof();
                    }
                }
            }
            let mut drained = false;
            loop {
                match decoder.receive_frame(&mut frame) {
                    Ok(()) => {}
                    Err(ff::Error::Eof) => {
                        drained = true;
                        break;
                    }
                    Err(ff::Error::Other { errno }) if errno == ff::error::EAGAIN => break,
                    Err(e) => {
                        errors += 1;
                        last_error = e.to_string();
                        if eof {
                            drained = true;
                        }
                        break;
                    }
                }
                let t = match frame.timestamp().or_else(|| frame.pts()) {
                    Some(p) => (p - s.start) as f64 * s.time_base,
                    // No time at all: one frame period after the previous one.
                    None => last_t.map_or(0.0, |l| l + s.frame_period),
                };
                last_t = Some(t);
                if prev.is_none() && next == 0 && t > targets[order[0]] + 1e-9 && from > 0.0 {
                    return Ok(Attempt::Earlier);
                }
                // Sample times before this frame take the previous one (the first frame when
                // they lie before it).
                let mut cur_jpeg = None;
                while next < order.len() && targets[order[next]] < t {
                    let i = order[next];
                    picked[i] = Some(match &prev {
                        Some((pt, pf)) => (*pt, cached(&mut prev_jpeg, &mut jpegs, || self.frame_jpeg(pf, s))?),
                        None => (t, cached(&mut cur_jpeg, &mut jpegs, || self.frame_jpeg(&frame, s))?),
                    });
                    next += 1;
                }
                match prev.as_mut() {
                    Some((pt, pf)) => {
                        *pt = t;
                        std::mem::swap(pf, &mut frame);
                    }
                    None => prev = Some((t, std::mem::replace(&mut frame, ff::frame::Video::empty()))),
                }
                prev_jpeg = cur_jpeg;
                if errors > 1000 {
                    return Err(Reject::new(RejectReason::Corrupt, format!("over 1000 decode errors, last: {last_error}")));
                }
            }
            if eof && drained {
                break;
            }
        }
        // End of the stream: the last frame covers what is left within the slack.
        while next < order.len() {
            let i = order[next];
            let Some((pt, pf)) = &prev else {
                // Nothing after the seek point: try from earlier, and from the start decide.
                if from > 0.0 {
                    return Ok(Attempt::FromStart);
                }
                if bmff_truncated(input.data) {
                    return Err(Reject::new(RejectReason::Truncated, format!("no frame could be decoded from a cut-off MP4/MOV ({} bytes)", input.data.len())));
                }
                let detail = if last_error.is_empty() { "no frame could be decoded".to_string() } else { format!("no frame could be decoded: {last_error}") };
                return Err(Reject::new(RejectReason::Corrupt, detail));
            };
            if targets[i] - pt > TAIL_SLACK {
                let why = if last_error.is_empty() { String::new() } else { format!(" ({last_error})") };
                return Err(Reject::new(
                    RejectReason::Truncated,
                    format!("frames end at {pt:.3} s, a sample is at {:.3} s of a declared {:.3} s{why}", targets[i], s.duration),
                ));
            }
            picked[i] = Some((*pt, cached(&mut prev_jpeg, &mut jpegs, || self.frame_jpeg(pf, s))?));
            next += 1;
        }
        let mut timestamps = Vec::with_capacity(targets.len());
        let mut frames = Vec::with_capacity(targets.len());
        for p in picked {
            let (t, j) = p.ok_or_else(|| Reject::new(RejectReason::Internal, "a sample time got no frame"))?;
            timestamps.push(t);
            frames.push(jpegs[j].clone());
        }
        Ok(Attempt::Done(timestamps, frames))
    }

    /// Decoded frame → RGB → centred displayed square → R×R → rotation → JPEG.
    fn frame_jpeg(&mut self, frame: &ff::frame::Video, s: &StreamInfo) -> Result<Vec<u8>, Reject> {
        let rgb = self.sws.to_rgb(frame)?;
        let r = self.settings.resolution;
        let (w, h) = (f64::from(rgb.width), f64::from(rgb.height));
        let dw = w * s.sar;
        let side = dw.min(h);
        let region = [(dw - side) / 2.0 / s.sar, (h - side) / 2.0, side / s.sar, side];
        let mut out = resize_region(&mut self.resizer, &rgb, region, r, r)?;
        if s.orientation != 1 {
            out = orient(out, s.orientation);
        }
        encode_jpeg(&mut self.compressor, &out)
    }
}

/// Outcome of one decode of a clip.
enum Attempt {
    /// Timestamps and JPEG frames of every sample.
    Done(Vec<f64>, Vec<Vec<u8>>),
    /// The seek landed after the first sample time: seek one second earlier.
    Earlier,
    /// Nothing decoded after the seek point: decode from the start.
    FromStart,
}

/// A packet of the video stream, or the end of what can be read (with the error, if not EOF).
enum Next {
    Packet(ff::Packet),
    End(Option<String>),
}

fn read_packet_of(input: &mut MemInput<'_>, index: usize) -> Result<Next, Reject> {
    let mut packet = ff::Packet::empty();
    loop {
        match packet.read(&mut input.input) {
            Ok(()) if packet.stream() != index => continue,
            Ok(()) => return Ok(Next::Packet(packet)),
            Err(ff::Error::Exit) => return Err(input.timeout()),
            Err(ff::Error::Eof) => return Ok(Next::End(None)),
            Err(e) => return Ok(Next::End(Some(e.to_string()))),
        }
    }
}

/// Most packets and bytes read ahead for one clip window (beyond, nothing is skipped).
const WINDOW_PACKETS: usize = 4096;
const WINDOW_BYTES: usize = 64 << 20;

/// Reads the packets up to the first one decoded after the last sample time (every packet
/// shown at or before it comes earlier in decode order, since pts ≥ dts), and the set of the
/// pts that some sample takes: the latest one at or before each sample time. `None` when a
/// packet has no pts (then nothing is skipped). Also the end of the stream when it was hit.
#[allow(clippy::type_complexity)]
fn read_window(
    input: &mut MemInput<'_>,
    s: &StreamInfo,
    targets: &[f64],
) -> Result<(std::collections::VecDeque<ff::Packet>, Option<Option<String>>, Option<std::collections::HashSet<i64>>), Reject> {
    let last = targets.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let time = |p: i64| (p - s.start) as f64 * s.time_base;
    let mut window = std::collections::VecDeque::new();
    let mut end = None;
    let mut bytes = 0usize;
    while window.len() < WINDOW_PACKETS && bytes < WINDOW_BYTES {
        input.check_deadline()?;
        match read_packet_of(input, s.index)? {
            Next::Packet(p) => {
                let past = p.dts().or(p.pts()).is_some_and(|d| time(d) > last);
                bytes += p.size();
                window.push_back(p);
                if past {
                    break;
                }
            }
            Next::End(e) => {
                end = Some(e);
                break;
            }
        }
    }
    let mut pts: Vec<i64> = Vec::with_capacity(window.len());
    for p in &window {
        match p.pts() {
            Some(v) => pts.push(v),
            None => return Ok((window, end, None)),
        }
    }
    pts.sort_unstable();
    let needed = targets
        .iter()
        .filter_map(|&t| pts.iter().rev().find(|&&p| time(p) <= t).copied())
        .chain(pts.first().copied())
        .collect();
    Ok((window, end, Some(needed)))
}

/// Index in `jpegs` of the JPEG cached in `slot`, made and cached on first use.
fn cached(slot: &mut Option<usize>, jpegs: &mut Vec<Vec<u8>>, make: impl FnOnce() -> Result<Vec<u8>, Reject>) -> Result<usize, Reject> {
    if let Some(j) = *slot {
        return Ok(j);
    }
    jpegs.push(make()?);
    *slot = Some(jpegs.len() - 1);
    Ok(jpegs.len() - 1)
}

/// What the clip decoder needs to know about the chosen stream.
struct StreamInfo {
    index: usize,
    /// Seconds per time-base unit.
    time_base: f64,
    /// Stream start in time-base units (0 when unknown).
    start: i64,
    /// Seconds.
    duration: f64,
    /// Seconds per frame (guess for frames without timestamps).
    frame_period: f64,
    /// Sample aspect ratio (1 when unknown).
    sar: f64,
    /// EXIF-style orientation code of the display rotation (1, 3, 6, 8).
    orientation: u16,
    /// Displayed width and height.
    display: (u32, u32),
}

fn probe(input: &MemInput<'_>, settings: &VideoSettings) -> Result<StreamInfo, Reject> {
    let ctx = &*input.input;
    let kinds: Vec<String> = ctx.streams().map(|st| format!("{:?}", st.parameters().medium()).to_lowercase()).collect();
    let stream = ctx
        .streams()
        .find(|st| {
            st.parameters().medium() == ff::media::Type::Video
                && !st.disposition().contains(ff::format::stream::Disposition::ATTACHED_PIC)
        })
        .ok_or_else(|| {
            let what = if kinds.is_empty() { "no streams".to_string() } else { format!("streams: {}", kinds.join(", ")) };
            Reject::new(RejectReason::NoVideoStream, what)
        })?;
    // SAFETY: the stream and its parameters belong to the open context.
    let (w, h, sar) = unsafe {
        let par = (*stream.as_ptr()).codecpar;
        let sar = ffi::av_guess_sample_aspect_ratio(input.input.as_ptr() as *mut _, stream.as_ptr() as *mut _, ptr::null_mut());
        let sar = if sar.num > 0 && sar.den > 0 { f64::from(sar.num) / f64::from(sar.den) } else { 1.0 };
        ((*par).width.max(0) as u64, (*par).height.max(0) as u64, sar)
    };
    if w == 0 || h == 0 {
        return Err(Reject::new(RejectReason::Corrupt, format!("video stream of {w}x{h}")));
    }
    if w * h > settings.max_pixels {
        return Err(Reject::new(
            RejectReason::DecompressionBomb,
            format!("{w}x{h} = {} pixels > max_pixels {}", w * h, settings.max_pixels),
        ));
    }
    let orientation = stream
        .side_data()
        .find(|sd| sd.kind() == ff::codec::packet::side_data::Type::DisplayMatrix && sd.data().len() >= 36)
        .map_or(1, |sd| {
            // SAFETY: a display matrix is 9 int32 values; av_malloc'd side data is aligned.
            let angle = unsafe { ffi::av_display_rotation_get(sd.data().as_ptr().cast::<i32>()) };
            orientation_of(angle)
        });
    let dw = ((w as f64 * sar).round() as u32).max(1);
    let display = if matches!(orientation, 6 | 8) { (h as u32, dw) } else { (dw, h as u32) };
    let short = display.0.min(display.1);
    if short < settings.min_side {
        return Err(Reject::new(
            RejectReason::TooSmall,
            format!("{}x{} displayed: shortest side {short} < min_side {}", display.0, display.1, settings.min_side),
        ));
    }
    let tb = stream.time_base();
    let time_base = f64::from(tb.numerator()) / f64::from(tb.denominator().max(1));
    let start = if stream.start_time() == ffi::AV_NOPTS_VALUE { 0 } else { stream.start_time() };
    let rate = stream.avg_frame_rate();
    let rate = if rate.numerator() > 0 && rate.denominator() > 0 {
        f64::from(rate.numerator()) / f64::from(rate.denominator())
    } else {
        let r = stream.rate();
        if r.numerator() > 0 && r.denominator() > 0 { f64::from(r.numerator()) / f64::from(r.denominator()) } else { 25.0 }
    };
    let duration = if stream.duration() > 0 && stream.duration() != ffi::AV_NOPTS_VALUE && time_base > 0.0 {
        stream.duration() as f64 * time_base
    } else if ctx.duration() > 0 {
        ctx.duration() as f64 / f64::from(ffi::AV_TIME_BASE)
    } else if stream.frames() > 0 {
        stream.frames() as f64 / rate
    } else {
        return Err(Reject::new(RejectReason::Corrupt, "unknown duration (no stream, container or frame-count duration)"));
    };
    Ok(StreamInfo { index: stream.index(), time_base, start, duration, frame_period: 1.0 / rate, sar, orientation, display })
}

/// `av_display_rotation_get` angle → EXIF orientation of the picture as the `ffmpeg` tool
/// shows it (its autorotate: θ = −angle, 90 → transpose clockwise, 180 → flip both, 270 →
/// transpose counter-clockwise).
fn orientation_of(angle: f64) -> u16 {
    if !angle.is_finite() {
        return 1;
    }
    let mut theta = -angle.round();
    theta -= 360.0 * (theta / 360.0 + 0.9 / 360.0).floor();
    if (theta - 90.0).abs() < 1.0 {
        6
    } else if (theta - 180.0).abs() < 1.0 {
        3
    } else if (theta - 270.0).abs() < 1.0 {
        8
    } else {
        1
    }
}

fn open_decoder(input: &MemInput<'_>, index: usize) -> Result<ff::decoder::Video, Reject> {
    let stream = input.input.stream(index).ok_or_else(|| Reject::new(RejectReason::Internal, "stream vanished"))?;
    let mut ctx = ff::codec::context::Context::from_parameters(stream.parameters())
        .map_err(|e| Reject::new(RejectReason::Corrupt, format!("codec parameters: {e}")))?;
    // One thread per video: the pipeline runs videos in parallel, and frame threading would
    // only add latency and memory.
    ctx.set_threading(ff::codec::threading::Config { kind: ff::codec::threading::Type::None, count: 1, ..Default::default() });
    let id = stream.parameters().id();
    ctx.decoder().video().map_err(|e| match e {
        ff::Error::DecoderNotFound => Reject::new(RejectReason::UnsupportedFormat, format!("no decoder for {id:?}")),
        e => Reject::new(RejectReason::UnsupportedFormat, format!("cannot open the {id:?} decoder: {e}")),
    })
}

/// Whether an ISO-BMFF file (mp4, mov) has a top-level box running past its end — a cut-off
/// download. False for other formats.
pub fn bmff_truncated(bytes: &[u8]) -> bool {
    if bytes.len() < 8 || &bytes[4..8] != b"ftyp" {
        return false;
    }
    let mut i = 0usize;
    while i + 8 <= bytes.len() {
        let size = u64::from(u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]));
        let size = match size {
            0 => return false,
            1 => match bytes.get(i + 8..i + 16) {
                Some(b) => u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
                None => return true,
            },
            s => s,
        };
        if size < 8 {
            return false;
        }
        match i.checked_add(size as usize) {
            Some(end) if end <= bytes.len() => i = end,
            _ => return true,
        }
    }
    i < bytes.len()
}

// ---- FFmpeg plumbing: in-memory input and colour conversion ----

const IO_BUFFER: usize = 1 << 16;
const AVSEEK_SIZE: c_int = 0x10000;
const AVSEEK_FORCE: c_int = 0x20000;
const AVFMT_FLAG_CUSTOM_IO: c_int = 0x0080;

/// Reader state behind the AVIO context's opaque pointer.
struct ReadState {
    data: *const u8,
    len: usize,
    pos: usize,
    deadline: Instant,
    timed_out: bool,
}

impl ReadState {
    fn expired(&mut self) -> bool {
        if Instant::now() > self.deadline {
            self.timed_out = true;
        }
        self.timed_out
    }
}

unsafe extern "C" fn read_packet(opaque: *mut c_void, buf: *mut u8, size: c_int) -> c_int {
    // SAFETY: `opaque` is the boxed ReadState of a live MemInput; `buf` holds `size` bytes.
    let st = unsafe { &mut *opaque.cast::<ReadState>() };
    if st.expired() {
        return ffi::AVERROR_EXIT;
    }
    let n = (st.len - st.pos).min(size.max(0) as usize);
    if n == 0 {
        return ffi::AVERROR_EOF;
    }
    unsafe { ptr::copy_nonoverlapping(st.data.add(st.pos), buf, n) };
    st.pos += n;
    n as c_int
}

unsafe extern "C" fn seek(opaque: *mut c_void, offset: i64, whence: c_int) -> i64 {
    // SAFETY: as in `read_packet`.
    let st = unsafe { &mut *opaque.cast::<ReadState>() };
    let base = match whence & !AVSEEK_FORCE {
        AVSEEK_SIZE => return st.len as i64,
        0 => 0,
        1 => st.pos as i64,
        2 => st.len as i64,
        _ => return i64::from(ffi::AVERROR(ff::error::EINVAL)),
    };
    match base.checked_add(offset) {
        Some(p) if (0..=st.len as i64).contains(&p) => {
            st.pos = p as usize;
            p
        }
        _ => i64::from(ffi::AVERROR(ff::error::EINVAL)),
    }
}

unsafe extern "C" fn interrupt(opaque: *mut c_void) -> c_int {
    // SAFETY: as in `read_packet`.
    let st = unsafe { &mut *opaque.cast::<ReadState>() };
    c_int::from(st.expired())
}

/// A demuxer reading from a byte slice.
struct MemInput<'a> {
    input: ManuallyDrop<ff::format::context::Input>,
    avio: *mut ffi::AVIOContext,
    state: Box<ReadState>,
    /// The bytes `state` reads.
    data: &'a [u8],
}

impl<'a> MemInput<'a> {
    fn open(data: &'a [u8], deadline: Instant) -> Result<Self, Reject> {
        let mut state = Box::new(ReadState { data: data.as_ptr(), len: data.len(), pos: 0, deadline, timed_out: false });
        let opaque = ptr::addr_of_mut!(*state).cast::<c_void>();
        let internal = |what: &str| Reject::new(RejectReason::Internal, format!("{what} failed"));
        // SAFETY: plain FFmpeg allocation calls; every failure path frees what was allocated,
        // and the AVIO context (with its possibly reallocated buffer) outlives the demuxer.
        unsafe {
            let buf = ffi::av_malloc(IO_BUFFER).cast::<u8>();
            if buf.is_null() {
                return Err(internal("av_malloc"));
            }
            let avio = ffi::avio_alloc_context(buf, IO_BUFFER as c_int, 0, opaque, Some(read_packet), None, Some(seek));
            if avio.is_null() {
                ffi::av_free(buf.cast());
                return Err(internal("avio_alloc_context"));
            }
            let mut ctx = ffi::avformat_alloc_context();
            if ctx.is_null() {
                free_avio(avio);
                return Err(internal("avformat_alloc_context"));
            }
            (*ctx).pb = avio;
            (*ctx).flags |= AVFMT_FLAG_CUSTOM_IO;
            (*ctx).interrupt_callback = ffi::AVIOInterruptCB { callback: Some(interrupt), opaque };
            let r = ffi::avformat_open_input(&mut ctx, ptr::null(), ptr::null_mut(), ptr::null_mut());
            if r < 0 {
                // The context was freed by avformat_open_input; the custom AVIO is ours.
                free_avio(avio);
                return Err(open_error(r, &mut state, data));
            }
            let mut input = MemInput { input: ManuallyDrop::new(ff::format::context::Input::wrap(ctx)), avio, state, data };
            let r = ffi::avformat_find_stream_info(ctx, ptr::null_mut());
            if r < 0 {
                return Err(open_error(r, &mut input.state, data));
            }
            Ok(input)
        }
    }

    fn check_deadline(&mut self) -> Result<(), Reject> {
        if self.state.expired() {
            return Err(self.timeout());
        }
        Ok(())
    }

    fn timeout(&self) -> Reject {
        Reject::new(RejectReason::Timeout, "over the per-video time limit (timeout_secs)")
    }

    /// Seeks to the keyframe at or before `t` seconds (from the stream start) of stream `s`.
    fn seek(&mut self, s: &StreamInfo, t: f64) -> Result<(), Reject> {
        let ts = s.start + (t / s.time_base).floor() as i64;
        // SAFETY: the context is open.
        let r = unsafe { ffi::avformat_seek_file(self.input.as_mut_ptr(), s.index as c_int, i64::MIN, ts, ts, 0) };
        if r >= 0 {
            return Ok(());
        }
        if self.state.timed_out {
            return Err(self.timeout());
        }
        // Some demuxers cannot seek by time; back to the first byte, then.
        let r = unsafe { ffi::avformat_seek_file(self.input.as_mut_ptr(), s.index as c_int, i64::MIN, i64::MIN, i64::MAX, ffi::AVSEEK_FLAG_BYTE as c_int) };
        if r < 0 {
            return Err(Reject::new(RejectReason::Corrupt, format!("cannot seek: {}", ff::Error::from(r))));
        }
        Ok(())
    }
}

fn open_error(r: c_int, state: &mut ReadState, data: &[u8]) -> Reject {
    if state.timed_out || r == ffi::AVERROR_EXIT {
        return Reject::new(RejectReason::Timeout, "over the per-video time limit (timeout_secs) while probing");
    }
    let msg = ff::Error::from(r).to_string();
    if bmff_truncated(data) {
        Reject::new(RejectReason::Truncated, format!("MP4/MOV boxes run past the end of the file ({} bytes): {msg}", data.len()))
    } else {
        Reject::new(RejectReason::Corrupt, format!("cannot open as a video container: {msg}"))
    }
}

unsafe fn free_avio(mut avio: *mut ffi::AVIOContext) {
    if !avio.is_null() {
        // SAFETY: the buffer is av_malloc'd (maybe reallocated by FFmpeg) and owned by the context.
        unsafe {
            ffi::av_freep(ptr::addr_of_mut!((*avio).buffer).cast::<c_void>());
            ffi::avio_context_free(&mut avio);
        }
    }
}

impl Drop for MemInput<'_> {
    fn drop(&mut self) {
        // SAFETY: the demuxer goes first (it may still touch `pb`), then the AVIO context.
        unsafe {
            ManuallyDrop::drop(&mut self.input);
            free_avio(self.avio);
        }
    }
}

/// A cached libswscale context converting decoded frames to packed RGB24 at the same size.
struct Sws {
    ctx: *mut ffi::SwsContext,
}

// SAFETY: the context is used by one thread at a time (it lives in a per-worker processor).
unsafe impl Send for Sws {}

impl Sws {
    fn to_rgb(&mut self, frame: &ff::frame::Video) -> Result<Rgb, Reject> {
        let (w, h) = (frame.width(), frame.height());
        if w == 0 || h == 0 {
            return Err(Reject::new(RejectReason::Corrupt, "decoded frame of zero size"));
        }
        // SAFETY: frame data and line sizes come from the decoder; the output buffer is
        // w*3 × h bytes with a w*3 stride.
        unsafe {
            let f = frame.as_ptr();
            let format = ffi::AVPixelFormat::from(frame.format());
            self.ctx = ffi::sws_getCachedContext(
                self.ctx,
                w as c_int,
                h as c_int,
                format,
                w as c_int,
                h as c_int,
                ffi::AVPixelFormat::AV_PIX_FMT_RGB24,
                ffi::SWS_BILINEAR as c_int,
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null(),
            );
            if self.ctx.is_null() {
                return Err(Reject::new(RejectReason::UnsupportedFormat, format!("cannot convert pixel format {:?} to RGB", frame.format())));
            }
            let matrix = if (*f).colorspace == ffi::AVColorSpace::AVCOL_SPC_BT709 { ffi::SWS_CS_ITU709 } else { ffi::SWS_CS_DEFAULT };
            let full = c_int::from((*f).color_range == ffi::AVColorRange::AVCOL_RANGE_JPEG);
            let coefs = ffi::sws_getCoefficients(matrix as c_int);
            let rgb_coefs = ffi::sws_getCoefficients(ffi::SWS_CS_DEFAULT as c_int);
            ffi::sws_setColorspaceDetails(self.ctx, coefs, full, rgb_coefs, 1, 0, 1 << 16, 1 << 16);
            let stride = w as usize * 3;
            let mut pixels = vec![0u8; stride * h as usize];
            let dst = [pixels.as_mut_ptr(), ptr::null_mut(), ptr::null_mut(), ptr::null_mut()];
            let dst_stride = [stride as c_int, 0, 0, 0];
            let rows = ffi::sws_scale(
                self.ctx,
                (*f).data.as_ptr().cast(),
                (*f).linesize.as_ptr(),
                0,
                h as c_int,
                dst.as_ptr(),
                dst_stride.as_ptr(),
            );
            if rows <= 0 {
                return Err(Reject::new(RejectReason::Corrupt, "colour conversion failed"));
            }
            Ok(Rgb { width: w, height: h, pixels })
        }
    }
}

impl Drop for Sws {
    fn drop(&mut self) {
        // SAFETY: allocated by sws_getCachedContext (or null).
        unsafe { ffi::sws_freeContext(self.ctx) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_deterministic_spread_and_loop() {
        let s = VideoSettings { frames: 4, fps: 2.0, clips_per_video: 3, ..Default::default() };
        let a = plan_clips(&s, "v1", 10.0).unwrap();
        assert_eq!(a, plan_clips(&s, "v1", 10.0).unwrap());
        assert_ne!(a, plan_clips(&s, "v2", 10.0).unwrap());
        assert_eq!(a.len(), 3);
        for (c, clip) in a.iter().enumerate() {
            assert_eq!(clip.len(), 4);
            // clip c starts within the c-th third of the 8 s of room
            assert!(clip[0] >= c as f64 * 8.0 / 3.0 && clip[0] < (c + 1) as f64 * 8.0 / 3.0, "{clip:?}");
            assert!((clip[3] - clip[0] - 1.5).abs() < 1e-9);
        }
        assert_eq!(plan_clips(&s, "v1", 1.0).unwrap_err().reason, RejectReason::TooShort);
        let looped = VideoSettings { short: ShortPolicy::Loop, clips_per_video: 1, ..s };
        let p = plan_clips(&looped, "v1", 1.0).unwrap();
        assert!(p[0].iter().all(|&t| (0.0..1.0).contains(&t)), "{p:?}");
    }

    #[test]
    fn rotation_and_bmff() {
        assert_eq!(orientation_of(90.0), 8);
        assert_eq!(orientation_of(-90.0), 6);
        assert_eq!(orientation_of(180.0), 3);
        assert_eq!(orientation_of(0.0), 1);
        assert_eq!(orientation_of(f64::NAN), 1);
        let mut mp4 = Vec::new();
        mp4.extend_from_slice(&16u32.to_be_bytes());
        mp4.extend_from_slice(b"ftypisom\0\0\0\0");
        mp4.extend_from_slice(&100u32.to_be_bytes());
        mp4.extend_from_slice(b"mdat");
        assert!(bmff_truncated(&mp4));
        mp4.resize(116, 0);
        assert!(!bmff_truncated(&mp4));
        assert!(!bmff_truncated(b"\x1aE\xdf\xa3 webm"));
    }
}
