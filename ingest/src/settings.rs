//! Build settings: one serde struct per medium ([`ImageSettings`], [`VideoSettings`]), read
//! from TOML and/or the command line, validated once into a [`Validated`] value (the only form
//! the sources, the pipeline and the processors take) and stored resolved in the manifest
//! (`settings.image`, `settings.video`).

use std::ops::Deref;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Settings that passed their `validate` ([`ImageSettings::validate`],
/// [`VideoSettings::validate`]), which is the only way to make one: a
/// `Validated<ImageSettings>` is known to be in range. Read it through `Deref`; it serialises
/// as the settings themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated<T>(T);

impl<T> Deref for Validated<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Serialize> Serialize for Validated<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// How the square is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Crop {
    /// Shortest side to R, centred R×R crop.
    Center,
    /// Shortest side to R, the whole picture kept (not square); `crop_box` records the region.
    KeepAspect,
}

/// What to do with a picture whose shortest side is at least `min_side` but below the resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum SmallPolicy {
    /// Upscale it (antialiased filter, same as downscaling).
    Upscale,
    /// Reject it as `too-small`.
    Reject,
}

/// Settings of the image path: decode, resize, crop, encode, and shard sizing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSettings {
    /// Main stored resolution R (R×R JPEG).
    pub resolution: u32,
    /// Further, lower resolutions from the same decode.
    pub extra_resolutions: Vec<u32>,
    /// JPEG quality 1..=100 of the stored images.
    pub quality: u8,
    /// Pictures whose shortest side is below this are rejected as `too-small`.
    pub min_side: u32,
    /// Pictures between `min_side` and `resolution`: upscale or reject.
    pub small: SmallPolicy,
    pub crop: Crop,
    /// Header check against decompression bombs: width × height above this is rejected.
    pub max_pixels: u64,
    /// Let libjpeg-turbo shrink large JPEGs by 1/2, 1/4 or 1/8 in the DCT while decoding (never below R).
    pub dct_scaling: bool,
    /// Inputs per shard: shard k of a part holds the written ones among inputs
    /// [k·n, (k+1)·n), which makes shard boundaries deterministic and resumable.
    pub shard_inputs: u64,
}

impl Default for ImageSettings {
    fn default() -> Self {
        ImageSettings {
            resolution: 256,
            extra_resolutions: Vec::new(),
            quality: 90,
            min_side: 32,
            small: SmallPolicy::Upscale,
            crop: Crop::Center,
            // Pillow's DecompressionBombError threshold (2 × 89_478_485).
            max_pixels: 178_956_970,
            dct_scaling: true,
            shard_inputs: 8192,
        }
    }
}

impl ImageSettings {
    /// Reads a TOML file of these keys (unknown keys are an error).
    pub fn from_toml_file(path: &Path) -> Result<Self, Error> {
        read_toml(path)
    }

    /// All stored resolutions, largest first.
    pub fn resolutions(&self) -> Vec<u32> {
        let mut r = vec![self.resolution];
        r.extend(&self.extra_resolutions);
        r
    }

    /// Checks ranges and ordering: the settings a run can take.
    pub fn validate(self) -> Result<Validated<Self>, Error> {
        let bad = |m: String| Err(Error::Settings(m));
        if !(8..=8192).contains(&self.resolution) {
            return bad(format!("resolution {} is outside 8..=8192", self.resolution));
        }
        let mut prev = self.resolution;
        for &r in &self.extra_resolutions {
            if r == 0 || r >= prev {
                return bad(format!(
                    "extra resolutions must be positive, below the resolution and decreasing: {:?} after {}",
                    r, prev
                ));
            }
            prev = r;
        }
        if !(1..=100).contains(&self.quality) {
            return bad(format!("quality {} is outside 1..=100", self.quality));
        }
        if self.max_pixels == 0 {
            return bad("max_pixels must be positive".into());
        }
        if self.shard_inputs == 0 {
            return bad("shard_inputs must be positive".into());
        }
        Ok(Validated(self))
    }
}

/// What to do with a video shorter than one clip (`frames / fps` seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ShortPolicy {
    /// Reject it as `too-short`.
    Reject,
    /// Sample it in a loop (timestamps wrap around to the start).
    Loop,
}

/// Settings of the video path: clip sampling, resize, crop, encode, limits and shard sizing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VideoSettings {
    /// Frames per clip F.
    pub frames: u32,
    /// Sampling rate of the stored frames: a clip spans `frames / fps` seconds.
    pub fps: f64,
    /// Stored resolution R: shortest side to R, centred R×R crop (after the sample aspect ratio
    /// and the rotation are applied).
    pub resolution: u32,
    /// Clip windows per video; their start offsets are a pure function of (seed, video id).
    pub clips_per_video: u32,
    /// Videos shorter than one clip: reject or loop.
    pub short: ShortPolicy,
    /// JPEG quality 1..=100 of the stored frames.
    pub quality: u8,
    /// Videos whose displayed shortest side is below this are rejected as `too-small`.
    pub min_side: u32,
    /// Frames of more than this many pixels are rejected before decoding.
    pub max_pixels: u64,
    /// Wall-clock limit per video in seconds (demux + decode + encode); over it: `timeout`.
    pub timeout_secs: f64,
    /// Seed of the clip start offsets.
    pub seed: u64,
    /// Videos per shard (fixed boundaries make parts and resume deterministic).
    pub shard_inputs: u64,
}

impl Default for VideoSettings {
    fn default() -> Self {
        VideoSettings {
            frames: 16,
            fps: 8.0,
            resolution: 256,
            clips_per_video: 1,
            short: ShortPolicy::Reject,
            quality: 90,
            min_side: 32,
            // 8K UHD
            max_pixels: 7680 * 4320,
            timeout_secs: 60.0,
            seed: 0,
            shard_inputs: 1024,
        }
    }
}

impl VideoSettings {
    /// Reads a TOML file of these keys (unknown keys are an error).
    pub fn from_toml_file(path: &Path) -> Result<Self, Error> {
        read_toml(path)
    }

    /// Seconds one clip spans.
    pub fn clip_seconds(&self) -> f64 {
        f64::from(self.frames) / self.fps
    }

    /// Checks ranges: the settings a run can take.
    pub fn validate(self) -> Result<Validated<Self>, Error> {
        let bad = |m: String| Err(Error::Settings(m));
        if !(8..=8192).contains(&self.resolution) {
            return bad(format!("resolution {} is outside 8..=8192", self.resolution));
        }
        if !(1..=10_000).contains(&self.frames) {
            return bad(format!("frames {} is outside 1..=10000", self.frames));
        }
        if !(self.fps.is_finite() && self.fps > 0.0 && self.fps <= 1000.0) {
            return bad(format!("fps {} is outside (0, 1000]", self.fps));
        }
        if !(1..=1000).contains(&self.clips_per_video) {
            return bad(format!("clips_per_video {} is outside 1..=1000", self.clips_per_video));
        }
        if !(1..=100).contains(&self.quality) {
            return bad(format!("quality {} is outside 1..=100", self.quality));
        }
        if self.max_pixels == 0 {
            return bad("max_pixels must be positive".into());
        }
        if !(self.timeout_secs.is_finite() && self.timeout_secs > 0.0) {
            return bad(format!("timeout_secs {} must be positive", self.timeout_secs));
        }
        if self.shard_inputs == 0 {
            return bad("shard_inputs must be positive".into());
        }
        Ok(Validated(self))
    }
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    toml::from_str(&text).map_err(|e| Error::Settings(format!("{}: {e}", path.display())))
}

/// `--part I/N`: this process handles slice I (0-based) of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub index: u32,
    pub count: u32,
}

impl Part {
    /// Parses `I/N` with 0 <= I < N.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error::Settings(format!("--part {s:?}: expected I/N with 0 <= I < N"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Part { index, count })
    }

    /// Whether unit `u` (image, tar file, table row, class tar) belongs to this part.
    pub fn owns(&self, u: u64) -> bool {
        u % u64::from(self.count) == u64::from(self.index)
    }

    /// Shard file prefix of this part.
    pub fn prefix(&self) -> String {
        format!("part-{:04}-of-{:04}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_toml_and_validation() {
        let s: ImageSettings = toml::from_str("resolution = 128\nextra_resolutions = [64, 32]\nquality = 80").unwrap();
        assert_eq!(s.resolutions(), vec![128, 64, 32]);
        assert_eq!(*s.clone().validate().unwrap(), s);
        assert!(toml::from_str::<ImageSettings>("resoluton = 128").is_err());
        let bad = ImageSettings { extra_resolutions: vec![300], ..Default::default() };
        assert!(bad.validate().is_err());
        assert_eq!(Part::parse("1/4").unwrap(), Part { index: 1, count: 4 });
        assert!(Part::parse("4/4").is_err());
        assert!(Part::parse("x").is_err());
        let v: VideoSettings = toml::from_str("frames = 8\nfps = 4.0\nshort = \"loop\"").unwrap();
        assert_eq!((v.frames, v.clip_seconds(), v.short), (8, 2.0, ShortPolicy::Loop));
        assert_eq!(serde_json::to_value(v.clone().validate().unwrap()).unwrap(), serde_json::to_value(&v).unwrap());
        assert!(toml::from_str::<VideoSettings>("frame = 8").is_err());
        assert!(VideoSettings { fps: 0.0, ..Default::default() }.validate().is_err());
    }
}
