//! `encode::write_mp4`: synthetic clips (smooth gradients and a moving square) written as MP4,
//! decoded back with FFmpeg and compared pixel by pixel; bad input is a typed error.

use std::path::Path;

use ffmpeg_next as ff;
use ff::ffi;
use mdm_ingest::encode::{write_mp4, write_mp4_with, Codec, Mp4Error};

/// Frame f of a clip: diagonal colour gradients drifting with f, and an 8×6 square of a
/// saturated colour moving 3 px right per frame.
fn frame(w: u32, h: u32, f: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let (sx, sy) = (2 + 3 * f, h / 3);
        if (sx..sx + 8).contains(&x) && (sy..sy + 6).contains(&y) {
            return image::Rgb([230, 60, 40]);
        }
        let u = x as f32 / (w - 1) as f32;
        let v = y as f32 / (h - 1) as f32;
        image::Rgb([(40.0 + 170.0 * u + 4.0 * f as f32) as u8, (30.0 + 190.0 * v) as u8, (200.0 - 120.0 * (u + v) / 2.0) as u8])
    })
}

fn clip(w: u32, h: u32, n: u32) -> Vec<image::RgbImage> {
    (0..n).map(|f| frame(w, h, f)).collect()
}

struct Decoded {
    frames: Vec<image::RgbImage>,
    /// Frames per second of the stream (its average rate).
    fps: f64,
    codec: ff::codec::Id,
}

/// Every frame of the first video stream of an MP4, as RGB (BT.709, limited range, as tagged).
fn decode(path: &Path) -> Decoded {
    let mut input = ff::format::input(path).expect("open the mp4");
    let stream = input.streams().best(ff::media::Type::Video).expect("a video stream");
    let index = stream.index();
    let fps = f64::from(stream.avg_frame_rate());
    let mut dec = ff::codec::context::Context::from_parameters(stream.parameters()).expect("params").decoder().video().expect("decoder");
    let codec = dec.id();
    let mut frames = Vec::new();
    let mut frame = ff::frame::Video::empty();
    let mut take = |dec: &mut ff::decoder::Video, frames: &mut Vec<image::RgbImage>| {
        while dec.receive_frame(&mut frame).is_ok() {
            assert_eq!(frame.color_space(), ff::color::Space::BT709);
            assert_eq!(frame.color_range(), ff::color::Range::MPEG);
            frames.push(to_rgb(&frame));
        }
    };
    for (s, packet) in input.packets() {
        if s.index() == index {
            dec.send_packet(&packet).expect("send");
            take(&mut dec, &mut frames);
        }
    }
    dec.send_eof().expect("eof");
    take(&mut dec, &mut frames);
    Decoded { frames, fps, codec }
}

fn to_rgb(frame: &ff::frame::Video) -> image::RgbImage {
    let (w, h) = (frame.width(), frame.height());
    let mut sws = ff::software::scaling::Context::get(frame.format(), w, h, ff::format::Pixel::RGB24, w, h, ff::software::scaling::Flags::BICUBIC | ff::software::scaling::Flags::ACCURATE_RND | ff::software::scaling::Flags::FULL_CHR_H_INT)
        .expect("sws");
    unsafe {
        let bt709 = ffi::sws_getCoefficients(ffi::SWS_CS_ITU709);
        ffi::sws_setColorspaceDetails(sws.as_mut_ptr(), bt709, 0, bt709, 1, 0, 1 << 16, 1 << 16);
    }
    let mut rgb = ff::frame::Video::empty();
    sws.run(frame, &mut rgb).expect("convert");
    let stride = rgb.stride(0);
    let mut out = image::RgbImage::new(w, h);
    for y in 0..h as usize {
        out.as_mut()[y * w as usize * 3..][..w as usize * 3].copy_from_slice(&rgb.data(0)[y * stride..][..w as usize * 3]);
    }
    out
}

/// Mean absolute differences (0–255) between frame `f` of a clip and its decoded frame (which
/// may be larger: padding is not compared): over the whole frame, and over the smooth part (all
/// but the moving square and 2 px around it, where 4:2:0 chroma cannot follow the hard edge).
fn errors(want: &image::RgbImage, got: &image::RgbImage, f: u32) -> (f64, f64) {
    let (w, h) = want.dimensions();
    let (sx, sy) = (2 + 3 * f, h / 3);
    let (mut all, mut smooth, mut n) = (0u64, 0u64, 0u64);
    for y in 0..h {
        for x in 0..w {
            let near = x + 2 >= sx && x < sx + 10 && y + 2 >= sy && y < sy + 8;
            for c in 0..3 {
                let e = u64::from(want.get_pixel(x, y)[c].abs_diff(got.get_pixel(x, y)[c]));
                all += e;
                if !near {
                    smooth += e;
                    n += 1;
                }
            }
        }
    }
    (all as f64 / f64::from(w * h * 3), smooth as f64 / n as f64)
}

/// Writes a clip with `codec`, decodes it and checks count, size, rate and pixels; returns
/// the worst frame's mean absolute errors (whole frame, smooth part).
fn round_trip(dir: &Path, codec: Codec, (w, h): (u32, u32), n: u32, fps: f64) -> (f64, f64) {
    let frames = clip(w, h, n);
    let path = dir.join(format!("{codec:?}-{w}x{h}.mp4"));
    write_mp4_with(&frames, fps, codec, &path).expect("write");
    let bytes = std::fs::read(&path).expect("read");
    // faststart: the index (moov) comes before the media data (mdat)
    let at = |tag: &[u8]| bytes.windows(4).position(|b| b == tag).expect("box");
    assert!(at(b"moov") < at(b"mdat"), "moov after mdat");
    let d = decode(&path);
    assert_eq!(d.codec, if codec == Codec::H264 { ff::codec::Id::H264 } else { ff::codec::Id::MPEG4 });
    assert_eq!(d.frames.len(), n as usize, "{codec:?} {w}x{h}");
    assert!((d.fps - fps).abs() < 1e-6, "{} fps", d.fps);
    let padded = (w + w % 2, h + h % 2);
    let mut worst = (0f64, 0f64);
    for (f, (got, want)) in d.frames.iter().zip(&frames).enumerate() {
        assert_eq!(got.dimensions(), padded);
        let (all, smooth) = errors(want, got, f as u32);
        worst = (worst.0.max(all), worst.1.max(smooth));
        // the square is where frame f put it: its centre pixel is red
        let p = got.get_pixel(2 + 3 * f as u32 + 4, h / 3 + 3);
        assert!(p[0] > 180 && p[1] < 110 && p[2] < 100, "{codec:?} frame {f}: square centre {p:?}");
    }
    // the padding repeats the last column / row
    let last = d.frames.last().unwrap();
    if w % 2 == 1 {
        let e = (0..h).map(|y| (0..3).map(|c| i32::from(last.get_pixel(w, y)[c]).abs_diff(i32::from(last.get_pixel(w - 1, y)[c]))).max().unwrap()).max().unwrap();
        assert!(e <= 24, "padding column differs by {e}");
    }
    println!(
        "{codec:?} {w}x{h}, {n} frames at {fps} fps, {} bytes: worst frame's mean abs error {:.2} (smooth part {:.2})",
        bytes.len(),
        worst.0,
        worst.1
    );
    worst
}

#[test]
fn h264_round_trips_odd_and_even_sizes() {
    assert!(Codec::H264.available(), "the test machine's FFmpeg has libx264 (scripts/setup.sh)");
    assert_eq!(Codec::best(), Some(Codec::H264));
    let tmp = tempfile::tempdir().expect("tmp");
    // Tolerances (measured: 33×17 5.8 / 2.1, 48×32 2.4 / 1.2): the smooth part is about
    // rounding plus crf 18; the whole frame adds the square's edge, which 4:2:0 chroma blurs
    // (1.7 at 48×32 with no codec at all) and which is a larger share of the smaller frame.
    // A BT.601/709 mix-up or a chroma shift moves the smooth part by several levels.
    for (size, whole) in [((33, 17), 7.0), ((48, 32), 3.0)] {
        let (all, smooth) = round_trip(tmp.path(), Codec::H264, size, 6, 8.0);
        assert!(all < whole && smooth < 2.5, "H.264 {size:?}: mean abs error {all:.2}, smooth part {smooth:.2}");
    }
    // fractional rate
    round_trip(tmp.path(), Codec::H264, (64, 36), 3, 7.5);
}

#[test]
fn mpeg4_fallback_round_trips() {
    assert!(Codec::Mpeg4.available());
    let tmp = tempfile::tempdir().expect("tmp");
    // measured: 33×17 5.6 / 2.0, 48×32 2.5 / 1.5
    for (size, whole) in [((33, 17), 7.0), ((48, 32), 3.0)] {
        let (all, smooth) = round_trip(tmp.path(), Codec::Mpeg4, size, 6, 8.0);
        assert!(all < whole && smooth < 2.5, "MPEG-4 {size:?}: mean abs error {all:.2}, smooth part {smooth:.2}");
    }
}

#[test]
fn write_mp4_replaces_the_file_and_leaves_no_temporary() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("a:b.mp4");
    std::fs::write(&path, b"old").expect("write");
    assert_eq!(write_mp4(&clip(16, 16, 2), 4.0, &path).expect("mp4"), Codec::H264);
    assert_eq!(decode(&path).frames.len(), 2);
    let names: Vec<_> = std::fs::read_dir(tmp.path()).expect("ls").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("a:b.mp4")]);
    // a single 1×1 frame is padded to 2×2
    write_mp4(&clip(1, 1, 1), 4.0, &path).expect("1x1");
    let d = decode(&path);
    assert_eq!((d.frames.len(), d.frames[0].dimensions()), (1, (2, 2)));
}

#[test]
fn bad_input_is_an_error() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("x.mp4");
    assert!(matches!(write_mp4(&[], 8.0, &path), Err(Mp4Error::NoFrames)));
    let mut frames = clip(16, 8, 3);
    frames[2] = frame(16, 10, 2);
    let e = write_mp4(&frames, 8.0, &path).unwrap_err();
    assert!(matches!(e, Mp4Error::FrameSize { index: 2, got: (16, 10), expected: (16, 8) }), "{e}");
    assert!(e.to_string().contains("frame 2 is 16x10, frame 0 is 16x8"), "{e}");
    assert!(matches!(write_mp4(&[image::RgbImage::new(0, 4)], 8.0, &path), Err(Mp4Error::EmptyFrame { .. })));
    for fps in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e6] {
        assert!(matches!(write_mp4(&clip(4, 4, 1), fps, &path), Err(Mp4Error::Fps(_))), "{fps}");
    }
    // an output folder that does not exist: the error names the path
    let missing = tmp.path().join("no/such/dir/x.mp4");
    let e = write_mp4(&clip(4, 4, 1), 8.0, &missing).unwrap_err();
    assert!(matches!(e, Mp4Error::Ffmpeg { .. }) && e.to_string().contains("no/such/dir/x.mp4"), "{e}");
    assert!(!path.exists());
    // a path that is a folder (the rename fails; the temporary is removed)
    let e = write_mp4(&clip(4, 4, 1), 8.0, tmp.path()).unwrap_err();
    assert!(matches!(e, Mp4Error::Io { .. }) && e.to_string().contains(&tmp.path().display().to_string()), "{e}");
    let name = tmp.path().file_name().expect("name").to_str().expect("utf8");
    let temporary = tmp.path().with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    assert!(!temporary.exists(), "{} left behind", temporary.display());
    assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 0);
}

