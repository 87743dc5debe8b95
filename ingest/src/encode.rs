//! RGB frames → an MP4 file, through the system FFmpeg (`ffmpeg-next`): the way sampled video
//! clips leave the program as something every player opens.
//!
//! - **Codec.** H.264 by libx264 (`crf` 18, preset `medium`, High profile, yuv420p) when the
//!   linked libavcodec has it, else FFmpeg's native MPEG-4 part 2 encoder at a fixed quantiser
//!   of 2 ([`Codec::best`] says which; [`write_mp4_with`] picks one).
//! - **Size.** yuv420p needs even sides: an odd width or height is *padded* by one column or row
//!   repeating the last one (no scaling, so pixels stay sharp); the decoded video is then one
//!   pixel wider or taller than the frames.
//! - **Colour.** RGB is taken as full-range sRGB and converted with the BT.709 matrix to
//!   limited-range YUV, tagged BT.709 (primaries, transfer, matrix) in the stream and the
//!   container, so players convert it back the same way.
//! - **Time.** Frame i is shown at i / fps seconds (fps as a fraction with terms ≤ 65535, which
//!   MPEG-4 part 2 needs); the file ends one frame period after the last frame.
//! - **File.** Written to a hidden temporary file next to `path`, with the index moved to the
//!   front (`movflags=+faststart`, so browsers can play while downloading), then renamed over
//!   `path`: a reader never sees half a file, and a failure leaves nothing behind.
//!
//! Bad input (no frames, frames of different sizes, an fps out of range) is an [`Mp4Error`],
//! never a panic.
//!
//! ```no_run
//! let frames: Vec<image::RgbImage> =
//!     (0..8).map(|f| image::RgbImage::from_fn(33, 17, |x, _| image::Rgb([(x * 7 + f * 20) as u8, 90, 200]))).collect();
//! let codec = mdm_ingest::encode::write_mp4(&frames, 8.0, std::path::Path::new("clip.mp4"))?;
//! println!("wrote clip.mp4 with {codec:?}");
//! # Ok::<(), mdm_ingest::encode::Mp4Error>(())
//! ```

use std::path::{Path, PathBuf};

use ffmpeg_next as ff;
use ff::ffi;

/// Frame rates [`write_mp4`] accepts (frames per second).
pub const FPS_RANGE: std::ops::RangeInclusive<f64> = 0.01..=1000.0;

/// The constant rate factor of libx264 (0 lossless … 51; 18 looks lossless to most eyes).
pub const X264_CRF: u8 = 18;

/// The fixed quantiser of the MPEG-4 part 2 fallback (1 best … 31).
pub const MPEG4_QSCALE: i32 = 2;

/// The video codec of an MP4 file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// H.264 / AVC by libx264.
    H264,
    /// MPEG-4 part 2 by FFmpeg's native `mpeg4` encoder.
    Mpeg4,
}

impl Codec {
    /// The encoder's name in FFmpeg.
    pub fn encoder_name(self) -> &'static str {
        match self {
            Codec::H264 => "libx264",
            Codec::Mpeg4 => "mpeg4",
        }
    }

    /// Whether the linked libavcodec has this encoder.
    pub fn available(self) -> bool {
        ff::encoder::find_by_name(self.encoder_name()).is_some()
    }

    /// H.264 when libx264 is linked, else MPEG-4 part 2 when that is, else `None`.
    pub fn best() -> Option<Codec> {
        [Codec::H264, Codec::Mpeg4].into_iter().find(|c| c.available())
    }
}

/// Why an MP4 could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Mp4Error {
    #[error("no frames to encode")]
    NoFrames,
    #[error("frame 0 is {width}x{height}: frames need at least one pixel")]
    EmptyFrame { width: u32, height: u32 },
    #[error("frame {index} is {}x{}, frame 0 is {}x{}: every frame must have the same size", got.0, got.1, expected.0, expected.1)]
    FrameSize { index: usize, got: (u32, u32), expected: (u32, u32) },
    #[error("fps {0} is out of range (0.01 to 1000)")]
    Fps(f64),
    #[error("{}: FFmpeg takes output paths as UTF-8 strings; this one is not", path.display())]
    Path { path: PathBuf },
    #[error("the linked FFmpeg has no {} encoder", codec.encoder_name())]
    NoEncoder { codec: Codec },
    #[error("the linked FFmpeg has neither the libx264 nor the mpeg4 encoder")]
    NoCodec,
    #[error("{}: {} ({}, {width}x{height}): {source}", path.display(), stage, codec.encoder_name())]
    Ffmpeg { path: PathBuf, stage: &'static str, codec: Codec, width: u32, height: u32, source: ff::Error },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Writes `frames` at `fps` frames per second to the MP4 file `path` (replacing it) with the best
/// codec the linked FFmpeg has ([`Codec::best`]); returns that codec. See the module docs for
/// the size, colour and file conventions.
pub fn write_mp4(frames: &[image::RgbImage], fps: f64, path: &Path) -> Result<Codec, Mp4Error> {
    let codec = Codec::best().ok_or(Mp4Error::NoCodec)?;
    write_mp4_with(frames, fps, codec, path)?;
    Ok(codec)
}

/// [`write_mp4`] with a given codec (an error when the linked FFmpeg lacks its encoder).
pub fn write_mp4_with(frames: &[image::RgbImage], fps: f64, codec: Codec, path: &Path) -> Result<(), Mp4Error> {
    crate::video::quiet_ffmpeg();
    let (width, height) = check_frames(frames)?;
    if !FPS_RANGE.contains(&fps) {
        return Err(Mp4Error::Fps(fps));
    }
    let encoder = ff::encoder::find_by_name(codec.encoder_name()).ok_or(Mp4Error::NoEncoder { codec })?;
    if path.file_name().is_none() {
        return Err(Mp4Error::Io { path: path.to_path_buf(), source: std::io::Error::other("not a file name") });
    }
    let tmp = mdm_shards::durable::temp_path(path);
    // The `file:` protocol: a path with a colon is not taken for another protocol.
    let url = match tmp.to_str() {
        Some(s) if !s.contains('\0') => format!("file:{s}"),
        _ => return Err(Mp4Error::Path { path: path.to_path_buf() }),
    };
    let result = encode(frames, (width, height), fps, codec, encoder, &url).map_err(|(stage, source)| Mp4Error::Ffmpeg {
        path: path.to_path_buf(),
        stage,
        codec,
        width,
        height,
        source,
    });
    let result = result
        .and_then(|()| mdm_shards::durable::sync_file(&tmp).and_then(|()| mdm_shards::durable::persist(&tmp, path)).map_err(|e| Mp4Error::Io { path: e.path, source: e.source }));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The common size of the frames, or why there is none.
fn check_frames(frames: &[image::RgbImage]) -> Result<(u32, u32), Mp4Error> {
    let first = frames.first().ok_or(Mp4Error::NoFrames)?;
    let expected = first.dimensions();
    if expected.0 == 0 || expected.1 == 0 {
        return Err(Mp4Error::EmptyFrame { width: expected.0, height: expected.1 });
    }
    if let Some((index, f)) = frames.iter().enumerate().find(|(_, f)| f.dimensions() != expected) {
        return Err(Mp4Error::FrameSize { index, got: f.dimensions(), expected });
    }
    Ok(expected)
}

type Failure = (&'static str, ff::Error);

/// Encodes and muxes every frame into `url`; on failure, the stage that failed.
fn encode(
    frames: &[image::RgbImage],
    (w, h): (u32, u32),
    fps: f64,
    codec: Codec,
    encoder: ff::Codec,
    url: &str,
) -> Result<(), Failure> {
    let (pw, ph) = (w + w % 2, h + h % 2);
    let at = |stage: &'static str| move |e: ff::Error| (stage, e);
    // SAFETY: pure function of its arguments.
    let rate = ff::Rational::from(unsafe { ffi::av_d2q(fps, 65535) });
    if rate.numerator() <= 0 || rate.denominator() <= 0 {
        return Err(("frame rate", ff::Error::InvalidData));
    }
    let time_base = rate.invert();

    let mut octx = ff::format::output_as(url, "mp4").map_err(at("creating the file"))?;
    let global_header = octx.format().flags().contains(ff::format::Flags::GLOBAL_HEADER);
    let mut enc = ff::codec::context::Context::new_with_codec(encoder).encoder().video().map_err(at("allocating the encoder"))?;
    enc.set_width(pw);
    enc.set_height(ph);
    enc.set_format(ff::format::Pixel::YUV420P);
    enc.set_time_base(time_base);
    enc.set_frame_rate(Some(rate));
    enc.set_aspect_ratio(ff::Rational(1, 1));
    enc.set_colorspace(ff::color::Space::BT709);
    enc.set_color_range(ff::color::Range::MPEG);
    // SAFETY: plain fields of the not yet opened codec context.
    unsafe {
        let c = enc.as_mut_ptr();
        (*c).color_primaries = ffi::AVColorPrimaries::AVCOL_PRI_BT709;
        (*c).color_trc = ffi::AVColorTransferCharacteristic::AVCOL_TRC_BT709;
    }
    let mut flags = ff::codec::Flags::empty();
    if global_header {
        flags |= ff::codec::Flags::GLOBAL_HEADER;
    }
    let mut options = ff::Dictionary::new();
    match codec {
        Codec::H264 => {
            options.set("crf", &X264_CRF.to_string());
            options.set("preset", "medium");
        }
        Codec::Mpeg4 => {
            flags |= ff::codec::Flags::QSCALE;
            enc.set_global_quality(MPEG4_QSCALE * ffi::FF_QP2LAMBDA);
        }
    }
    enc.set_flags(flags);
    let mut enc = enc.open_with(options).map_err(at("opening the encoder"))?;

    let mut ost = octx.add_stream(encoder).map_err(at("adding the stream"))?;
    ost.set_parameters(&enc);
    ost.set_time_base(time_base);
    ost.set_avg_frame_rate(rate);
    let mut mux = ff::Dictionary::new();
    mux.set("movflags", "+faststart");
    octx.write_header_with(mux).map_err(at("writing the header"))?;
    let stream_tb = octx.stream(0).ok_or(("adding the stream", ff::Error::StreamNotFound))?.time_base();

    let mut sws = ff::software::scaling::Context::get(
        ff::format::Pixel::RGB24,
        pw,
        ph,
        ff::format::Pixel::YUV420P,
        pw,
        ph,
        ff::software::scaling::Flags::AREA | ff::software::scaling::Flags::ACCURATE_RND | ff::software::scaling::Flags::FULL_CHR_H_INP,
    )
    .map_err(at("creating the colour converter"))?;
    // Same size: the filter only averages chroma (AREA; POINT would pick one pixel of each 2×2
    // and shift colours by several levels).
    // SAFETY: the context is valid; the tables are FFmpeg's static ones.
    unsafe {
        let bt709 = ffi::sws_getCoefficients(ffi::SWS_CS_ITU709);
        // source: full-range RGB; destination: limited-range YUV with the BT.709 matrix.
        ffi::sws_setColorspaceDetails(sws.as_mut_ptr(), bt709, 1, bt709, 0, 0, 1 << 16, 1 << 16);
    }
    let mut rgb = ff::frame::Video::new(ff::format::Pixel::RGB24, pw, ph);
    let mut yuv = ff::frame::Video::new(ff::format::Pixel::YUV420P, pw, ph);
    let mut packet = ff::Packet::empty();
    let mut drain = |enc: &mut ff::encoder::Video, octx: &mut ff::format::context::Output| -> Result<(), Failure> {
        loop {
            match enc.receive_packet(&mut packet) {
                Ok(()) => {
                    packet.set_stream(0);
                    packet.rescale_ts(time_base, stream_tb);
                    packet.write_interleaved(octx).map_err(at("writing a packet"))?;
                }
                Err(ff::Error::Eof) => return Ok(()),
                Err(ff::Error::Other { errno }) if errno == ff::error::EAGAIN => return Ok(()),
                Err(e) => return Err(("encoding", e)),
            }
        }
    };
    for (i, frame) in frames.iter().enumerate() {
        fill_padded(&mut rgb, frame);
        // SAFETY: a valid frame; the encoder may still hold a reference to its last buffer.
        if unsafe { ffi::av_frame_make_writable(yuv.as_mut_ptr()) } < 0 {
            return Err(("allocating a frame", ff::Error::Other { errno: ff::error::ENOMEM }));
        }
        sws.run(&rgb, &mut yuv).map_err(at("converting to YUV"))?;
        yuv.set_pts(Some(i as i64));
        yuv.set_color_space(ff::color::Space::BT709);
        yuv.set_color_range(ff::color::Range::MPEG);
        yuv.set_color_primaries(ff::color::Primaries::BT709);
        yuv.set_color_transfer_characteristic(ff::color::TransferCharacteristic::BT709);
        enc.send_frame(&yuv).map_err(at("encoding"))?;
        drain(&mut enc, &mut octx)?;
    }
    enc.send_eof().map_err(at("flushing the encoder"))?;
    drain(&mut enc, &mut octx)?;
    octx.write_trailer().map_err(at("writing the index"))?;
    Ok(())
}

/// Copies `img` into the RGB24 frame `dst` (same size, or one wider / taller), repeating the
/// last column and row into the padding.
fn fill_padded(dst: &mut ff::frame::Video, img: &image::RgbImage) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (pw, ph) = (dst.width() as usize, dst.height() as usize);
    let stride = dst.stride(0);
    let src = img.as_raw();
    let data = dst.data_mut(0);
    for y in 0..ph {
        let row = &src[y.min(h - 1) * w * 3..][..w * 3];
        let out = &mut data[y * stride..][..pw * 3];
        out[..w * 3].copy_from_slice(row);
        for x in w..pw {
            out[x * 3..x * 3 + 3].copy_from_slice(&row[(w - 1) * 3..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_repeats_the_last_column_and_row() {
        let img = image::RgbImage::from_fn(3, 1, |x, _| image::Rgb([x as u8 * 10, 1, 2]));
        let mut f = ff::frame::Video::new(ff::format::Pixel::RGB24, 4, 2);
        fill_padded(&mut f, &img);
        let stride = f.stride(0);
        for y in 0..2 {
            assert_eq!(&f.data(0)[y * stride..y * stride + 12], &[0, 1, 2, 10, 1, 2, 20, 1, 2, 20, 1, 2]);
        }
    }
}
