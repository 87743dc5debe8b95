//! The pure part of video sampling, without FFmpeg: where clips lie in a video
//! ([`plan_clips`]), which decoded frame each sample time takes ([`Picker`]), which packets a
//! clip needs ([`needed_pts`]), and the container facts read from bytes or numbers
//! ([`orientation_of`], [`bmff_truncated`]).

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use crate::rejects::{Reject, RejectReason};
use crate::settings::{ShortPolicy, VideoSettings};

/// How far (seconds) a sample time may lie past the last decodable frame before the video
/// counts as truncated (container durations often include a longer audio track).
pub const TAIL_SLACK: f64 = 0.5;

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

/// The rule of FFmpeg's `fps` filter: each sample time takes the last frame shown at or before
/// it, and sample times before the first frame take the first frame. Frames are fed in the
/// order the decoder returns them (presentation order) with [`Picker::before`]; what is left
/// when the stream ends takes the last frame ([`Picker::rest`]), within [`TAIL_SLACK`].
#[derive(Debug)]
pub struct Picker<'a> {
    targets: &'a [f64],
    /// Sample indices by time (ties by index).
    order: Vec<usize>,
    /// Samples `order[..next]` have their frame.
    next: usize,
}

impl<'a> Picker<'a> {
    pub fn new(targets: &'a [f64]) -> Self {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.sort_by(|&a, &b| targets[a].total_cmp(&targets[b]).then(a.cmp(&b)));
        Picker { targets, order, next: 0 }
    }

    /// Whether every sample has its frame.
    pub fn is_done(&self) -> bool {
        self.next == self.order.len()
    }

    /// The earliest sample time that has no frame yet.
    pub fn first_pending(&self) -> Option<f64> {
        self.order.get(self.next).map(|&i| self.targets[i])
    }

    /// A frame shown at `t` arrived: the samples (indices into the targets) whose time lies
    /// before `t`. They take the frame before this one, or this one when it is the first.
    pub fn before(&mut self, t: f64) -> &[usize] {
        let start = self.next;
        while self.next < self.order.len() && self.targets[self.order[self.next]] < t {
            self.next += 1;
        }
        &self.order[start..self.next]
    }

    /// The stream ended: the samples left, which take the last frame.
    pub fn rest(&mut self) -> &[usize] {
        let start = self.next;
        self.next = self.order.len();
        &self.order[start..]
    }
}

/// The pts (of `pts`, in any order) that some sample takes under [`Picker`]'s rule: the latest
/// one at or before each sample time, and the first one (times before it take it). `time` maps
/// a pts to seconds from the stream start.
pub fn needed_pts(pts: &[i64], time: impl Fn(i64) -> f64, targets: &[f64]) -> HashSet<i64> {
    let mut sorted = pts.to_vec();
    sorted.sort_unstable();
    targets
        .iter()
        .filter_map(|&t| sorted.iter().rev().find(|&&p| time(p) <= t).copied())
        .chain(sorted.first().copied())
        .collect()
}

/// `av_display_rotation_get` angle → EXIF orientation of the picture as the `ffmpeg` tool
/// shows it (its autorotate: θ = −angle, 90 → transpose clockwise, 180 → flip both, 270 →
/// transpose counter-clockwise).
pub fn orientation_of(angle: f64) -> u16 {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// [`Picker`] over a whole list of frame times (presentation order): the frame index each
    /// sample takes, `None` when it lies more than [`TAIL_SLACK`] past the last frame.
    fn pick_frames(frames: &[f64], targets: &[f64]) -> Vec<Option<usize>> {
        let mut picker = Picker::new(targets);
        let mut out = vec![None; targets.len()];
        for (k, &t) in frames.iter().enumerate() {
            for &i in picker.before(t) {
                out[i] = Some(k.saturating_sub(1));
            }
        }
        if let Some(last) = frames.len().checked_sub(1) {
            for &i in picker.rest() {
                if targets[i] - frames[last] <= TAIL_SLACK {
                    out[i] = Some(last);
                }
            }
        }
        out
    }

    #[test]
    fn each_sample_takes_the_last_frame_at_or_before_it() {
        // 10 fps constant rate, sampled at 4 fps from 0.05 s
        let frames: Vec<f64> = (0..20).map(|k| k as f64 / 10.0).collect();
        let targets: Vec<f64> = (0..4).map(|k| 0.05 + k as f64 / 4.0).collect();
        assert_eq!(pick_frames(&frames, &targets), vec![Some(0), Some(3), Some(5), Some(8)]);
        // a sample exactly on a frame time takes that frame, not the one before
        assert_eq!(pick_frames(&frames, &[0.3, 0.0]), vec![Some(3), Some(0)]);
    }

    #[test]
    fn variable_rate_out_of_order_times_and_the_tail() {
        // a burst, a 1 s gap, a burst: samples inside the gap hold the frame before it
        let frames = [0.0, 0.04, 0.08, 1.08, 1.12];
        let targets = [1.1, 0.5, 0.05, 1.0, -0.2];
        assert_eq!(pick_frames(&frames, &targets), vec![Some(3), Some(2), Some(1), Some(2), Some(0)]);
        // past the last frame: within the slack it holds, beyond it nothing
        let targets = [1.12 + TAIL_SLACK - 1e-6, 1.12 + TAIL_SLACK + 1e-3];
        assert_eq!(pick_frames(&frames, &targets), vec![Some(4), None]);
        assert_eq!(pick_frames(&[], &[0.0]), vec![None]);
        // ties keep their index order and are all served
        let mut p = Picker::new(&[0.5, 0.5, 0.1]);
        assert_eq!(p.first_pending(), Some(0.1));
        assert_eq!(p.before(0.2), &[2]);
        assert_eq!(p.before(0.5), &[] as &[usize]);
        assert_eq!(p.before(0.6), &[0, 1]);
        assert!(p.is_done() && p.rest().is_empty() && p.first_pending().is_none());
    }

    #[test]
    fn needed_pts_are_the_frames_the_picker_takes() {
        // pts in decode order (B-frames), time base 1/10 s from pts 100
        let pts = [100, 103, 101, 102, 106, 104, 105];
        let time = |p: i64| (p - 100) as f64 / 10.0;
        let targets = [0.25, 0.45, 0.6];
        let got = needed_pts(&pts, time, &targets);
        assert_eq!(got, HashSet::from([100, 102, 104, 106]));
        // the same frames pick_frames takes from the presentation order
        let mut shown = pts.to_vec();
        shown.sort_unstable();
        let times: Vec<f64> = shown.iter().map(|&p| time(p)).collect();
        let taken: HashSet<i64> = pick_frames(&times, &targets).into_iter().map(|k| shown[k.unwrap()]).collect();
        assert!(taken.is_subset(&got), "{taken:?} vs {got:?}");
    }

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
