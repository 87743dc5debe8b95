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
//!
//! Files: [`plan`] is the pure part (clip planning, the frame-pick rule, container facts),
//! unit-tested without FFmpeg; `ffmpeg.rs` holds the FFmpeg I/O and every `unsafe` block;
//! this file runs the decode loop between them.

mod ffmpeg;
pub mod plan;

use std::time::{Duration, Instant};

use ffmpeg_next as ff;

use crate::error::Error;
use crate::image::{encode_jpeg, jpeg_compressor, orient, resize_region};
use crate::rejects::{Reject, RejectReason};
use crate::settings::{Validated, VideoSettings};
use ffmpeg::{open_decoder, probe, read_packet_of, read_window, set_skip_nonref, MemInput, Next, StreamInfo, Sws};
pub use plan::{bmff_truncated, plan_clips, TAIL_SLACK};
use plan::Picker;

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

/// Per-thread decoder-side state: JPEG encoder, resizer, colour converter.
pub struct VideoProcessor {
    settings: Validated<VideoSettings>,
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
    /// Per-thread state for these settings.
    pub fn new(settings: &Validated<VideoSettings>) -> Result<Self, Error> {
        quiet_ffmpeg();
        Ok(VideoProcessor {
            settings: settings.clone(),
            compressor: jpeg_compressor(settings.quality).map_err(|e| Error::Codec(e.to_string()))?,
            resizer: fast_image_resize::Resizer::new(),
            sws: Sws::new(),
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
        let mut picker = Picker::new(targets);
        let mut picked: Vec<Option<(f64, usize)>> = vec![None; targets.len()];
        let mut jpegs: Vec<Vec<u8>> = Vec::new();
        let mut prev: Option<(f64, ff::frame::Video)> = None;
        // JPEG of `prev` once converted (index into `jpegs`).
        let mut prev_jpeg: Option<usize> = None;
        let mut frame = ff::frame::Video::empty();
        let mut last_t: Option<f64> = None;
        let mut eof = false;
        let mut errors = 0u32;
        let mut last_error = String::new();
        let mut window = read_window(input, s, targets)?;
        while !picker.is_done() {
            input.check_deadline()?;
            if !eof {
                let (item, in_window) = match window.packets.pop_front() {
                    Some(p) => (Next::Packet(p), true),
                    None => match window.end.take() {
                        Some(end) => (Next::End(end), true),
                        None => (read_packet_of(input, s.index)?, false),
                    },
                };
                match item {
                    Next::Packet(packet) => {
                        // Frames no sample needs are skipped when no other frame refers to them.
                        let skip = in_window && window.needed.as_ref().is_some_and(|n| packet.pts().is_some_and(|p| !n.contains(&p)));
                        set_skip_nonref(decoder, skip);
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
                if prev.is_none() && from > 0.0 && picker.first_pending().is_some_and(|first| t > first + 1e-9) {
                    return Ok(Attempt::Earlier);
                }
                // Sample times before this frame take the previous one (the first frame when
                // they lie before it).
                let mut cur_jpeg = None;
                for &i in picker.before(t) {
                    picked[i] = Some(match &prev {
                        Some((pt, pf)) => (*pt, cached(&mut prev_jpeg, &mut jpegs, || self.frame_jpeg(pf, s))?),
                        None => (t, cached(&mut cur_jpeg, &mut jpegs, || self.frame_jpeg(&frame, s))?),
                    });
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
        for &i in picker.rest() {
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
        let rgb = self.sws.convert(frame)?;
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

/// Index in `jpegs` of the JPEG cached in `slot`, made and cached on first use.
fn cached(slot: &mut Option<usize>, jpegs: &mut Vec<Vec<u8>>, make: impl FnOnce() -> Result<Vec<u8>, Reject>) -> Result<usize, Reject> {
    if let Some(j) = *slot {
        return Ok(j);
    }
    jpegs.push(make()?);
    *slot = Some(jpegs.len() - 1);
    Ok(jpegs.len() - 1)
}

