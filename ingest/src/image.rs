//! Decode → orient → resize → crop → encode of one image, as bytes in and JPEGs out.
//!
//! JPEG goes through libjpeg-turbo (`turbojpeg`): progressive, grayscale and CMYK/YCCK
//! (Adobe-inverted, converted to RGB) are handled there, and when the source is much larger
//! than the target the decoder scales in the DCT domain (by 1/2, 1/4 or 1/8, never below the
//! target's side) before the final antialiased resize. A JPEG libjpeg-turbo refuses (it stops on any
//! warning) is retried with the pure-Rust decoder of the `image` crate. PNG and WebP (16-bit,
//! palette, grayscale, alpha composited on white) go through `image`. EXIF orientation is read
//! from the JPEG APP1 segment (or by `image` for PNG/WebP) and applied before cropping.
//!
//! The size is read from the header first: a picture over `max_pixels` is rejected as a
//! decompression bomb before any pixel is decoded. Resizing is a Lanczos-3 convolution
//! (`fast_image_resize`) of the centred square (or the whole image when aspect is kept) to
//! each stored resolution, all from the same decode. Everything is deterministic, so the
//! output bytes do not depend on the thread that made them.

use std::io::Cursor;

use fast_image_resize as fir;
use ::image::ImageDecoder;

use crate::rejects::{Reject, RejectReason};
use crate::settings::{Crop, ImageSettings, SmallPolicy, Validated};

/// Result of processing one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    /// Size of the source as displayed (EXIF orientation applied).
    pub width: u32,
    pub height: u32,
    /// Kept region (x, y, w, h) in source pixels when aspect is kept.
    pub crop_box: Option<[i32; 4]>,
    /// One JPEG per resolution of the settings, largest first.
    pub jpegs: Vec<Vec<u8>>,
}

/// Container formats recognised from the first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Webp,
}

/// Sniffs the format from magic bytes; `Err` names what it is when it is known but unsupported.
pub fn sniff(bytes: &[u8]) -> Result<Format, Reject> {
    if bytes.is_empty() {
        return Err(Reject::new(RejectReason::Empty, "zero bytes"));
    }
    if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        return Ok(Format::Jpeg);
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(Format::Png);
    }
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Ok(Format::Webp);
    }
    let other = [
        (&b"GIF8"[..], "GIF"),
        (&b"BM"[..], "BMP"),
        (&b"II*\0"[..], "TIFF"),
        (&b"MM\0*"[..], "TIFF"),
        (&b"\0\0\0\x0cjP"[..], "JPEG 2000"),
    ];
    for (magic, name) in other {
        if bytes.starts_with(magic) {
            return Err(Reject::new(RejectReason::UnsupportedFormat, format!("{name} images are not supported")));
        }
    }
    if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        return Err(Reject::new(RejectReason::UnsupportedFormat, "HEIF/AVIF images are not supported"));
    }
    Err(Reject::new(RejectReason::NotAnImage, format!("unknown magic {:02x?}", &bytes[..bytes.len().min(8)])))
}

/// Per-thread decoder, resizer and encoder state.
pub struct Processor {
    settings: Validated<ImageSettings>,
    resolutions: Vec<u32>,
    decompressor: turbojpeg::Decompressor,
    compressor: turbojpeg::Compressor,
    resizer: fir::Resizer,
}

/// An RGB8 picture, rows packed (`width * 3` bytes each).
pub(crate) struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Processor {
    /// Per-thread state for these settings.
    pub fn new(settings: &Validated<ImageSettings>) -> Result<Self, turbojpeg::Error> {
        Ok(Processor {
            resolutions: settings.resolutions(),
            settings: settings.clone(),
            decompressor: turbojpeg::Decompressor::new()?,
            compressor: jpeg_compressor(settings.quality)?,
            resizer: fir::Resizer::new(),
        })
    }

    /// Processes one encoded image; every failure is a [`Reject`] with a reason.
    pub fn process(&mut self, bytes: &[u8]) -> Result<Processed, Reject> {
        let format = sniff(bytes)?;
        let (w, h, orientation) = match format {
            Format::Jpeg => {
                let header = self.decompressor.read_header(bytes).map_err(|e| {
                    Reject::new(RejectReason::Corrupt, format!("JPEG header: {}", e.to_string().trim()))
                })?;
                (header.width as u64, header.height as u64, jpeg_orientation(bytes))
            }
            Format::Png | Format::Webp => {
                let reader = image_reader(bytes, format);
                let (w, h) = reader
                    .into_dimensions()
                    .map_err(|e| Reject::new(RejectReason::Corrupt, format!("header: {e}")))?;
                (u64::from(w), u64::from(h), 1)
            }
        };
        self.check_size(w, h)?;
        let mut rgb = match format {
            Format::Jpeg => self.decode_jpeg(bytes, w as usize, h as usize)?,
            Format::Png | Format::Webp => decode_other(bytes, format, self.settings.max_pixels)?,
        };
        if orientation != 1 {
            rgb = orient(rgb, orientation);
        }
        // Source size as displayed; DCT scaling may have shrunk the decoded picture.
        let (sw, sh) = if matches!(orientation, 5..=8) { (h as u32, w as u32) } else { (w as u32, h as u32) };
        self.resize_encode(&rgb, sw, sh)
    }

    fn check_size(&self, w: u64, h: u64) -> Result<(), Reject> {
        if w == 0 || h == 0 {
            return Err(Reject::new(RejectReason::Corrupt, format!("header says {w}x{h}")));
        }
        if w * h > self.settings.max_pixels {
            return Err(Reject::new(
                RejectReason::DecompressionBomb,
                format!("{w}x{h} = {} pixels > max_pixels {}", w * h, self.settings.max_pixels),
            ));
        }
        let short = w.min(h);
        if short < u64::from(self.settings.min_side) {
            return Err(Reject::new(
                RejectReason::TooSmall,
                format!("{w}x{h}: shortest side {short} < min_side {}", self.settings.min_side),
            ));
        }
        if short < u64::from(self.resolutions[0]) && self.settings.small == SmallPolicy::Reject {
            return Err(Reject::new(
                RejectReason::TooSmall,
                format!("{w}x{h}: shortest side {short} < resolution {} (small = \"reject\")", self.resolutions[0]),
            ));
        }
        Ok(())
    }

    fn decode_jpeg(&mut self, bytes: &[u8], w: usize, h: usize) -> Result<Rgb, Reject> {
        // Largest reduction m/8 whose shortest side still covers the largest target, among the
        // fast ones. libjpeg-turbo has reduced IDCTs for 1/8, 2/8 and 4/8, but 3/8 and 5/8..7/8
        // go through the generic scaled IDCT in plain C, slower than the SIMD full-size one
        // (2.1.5 on AVX2, a 500×375 quality-95 photo: 8/8 1.13 ms, 6/8 1.33 ms, 7/8 1.52 ms,
        // 4/8 0.99 ms), so a picture that 4/8 would shrink too far is decoded whole.
        let need = self.needed_side(w as u32, h as u32) as usize;
        let short = w.min(h);
        let mut m = 8;
        if self.settings.dct_scaling {
            m = [1, 2, 4].into_iter().find(|&m| (short * m).div_ceil(8) >= need).unwrap_or(8);
        }
        let (dw, dh) = ((w * m).div_ceil(8), (h * m).div_ceil(8));
        let header = self
            .decompressor
            .read_header(bytes)
            .map_err(|e| Reject::new(RejectReason::Corrupt, format!("JPEG header: {e}")))?;
        let cmyk = matches!(header.colorspace, turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK);
        let format = if cmyk { turbojpeg::PixelFormat::CMYK } else { turbojpeg::PixelFormat::RGB };
        let pitch = dw * format.size();
        let mut pixels = vec![0u8; pitch * dh];
        let image = turbojpeg::Image { pixels: &mut pixels[..], width: dw, pitch, height: dh, format };
        match self.decompressor.decompress(bytes, image) {
            Ok(()) => {
                if cmyk {
                    pixels = cmyk_to_rgb(&pixels);
                }
                Ok(Rgb { width: dw as u32, height: dh as u32, pixels })
            }
            // A truncated file is rejected, not filled with grey by a lenient decoder.
            Err(e) if e.to_string().contains("Premature end") => {
                Err(Reject::new(RejectReason::Corrupt, format!("truncated: {}", e.to_string().trim())))
            }
            // libjpeg-turbo stops on other warnings too (extraneous bytes before a marker, ...):
            // the lenient decoder gets a second chance, and only if it fails too is the file rejected.
            Err(e) => decode_other(bytes, Format::Jpeg, self.settings.max_pixels).map_err(|r| {
                Reject::new(r.reason, format!("libjpeg-turbo: {}; image: {}", e.to_string().trim(), r.detail))
            }),
        }
    }

    /// Shortest side the decoded picture must keep for the largest target.
    fn needed_side(&self, w: u32, h: u32) -> u32 {
        match self.settings.crop {
            Crop::Center | Crop::KeepAspect => self.resolutions[0].min(w.min(h)),
        }
    }

    fn resize_encode(&mut self, rgb: &Rgb, sw: u32, sh: u32) -> Result<Processed, Reject> {
        let (dw, dh) = (f64::from(rgb.width), f64::from(rgb.height));
        let mut jpegs = Vec::with_capacity(self.resolutions.len());
        let mut crop_box = None;
        for &r in &self.resolutions.clone() {
            let (region, ow, oh) = match self.settings.crop {
                Crop::Center => {
                    let s = dw.min(dh);
                    ([(dw - s) / 2.0, (dh - s) / 2.0, s, s], r, r)
                }
                Crop::KeepAspect => {
                    // Shortest side to r, whole picture kept; the box records the kept region.
                    let (ow, oh) = if sw <= sh {
                        (r, ((u64::from(r) * u64::from(sh) + u64::from(sw) / 2) / u64::from(sw)).max(1) as u32)
                    } else {
                        (((u64::from(r) * u64::from(sw) + u64::from(sh) / 2) / u64::from(sh)).max(1) as u32, r)
                    };
                    crop_box = Some([0, 0, sw as i32, sh as i32]);
                    ([0.0, 0.0, dw, dh], ow, oh)
                }
            };
            let out = resize_region(&mut self.resizer, rgb, region, ow, oh)?;
            jpegs.push(encode_jpeg(&mut self.compressor, &out)?);
        }
        Ok(Processed { width: sw, height: sh, crop_box, jpegs })
    }
}

/// A libjpeg-turbo encoder at `quality` with 4:2:0 chroma, as every stored picture uses.
pub(crate) fn jpeg_compressor(quality: u8) -> Result<turbojpeg::Compressor, turbojpeg::Error> {
    let mut compressor = turbojpeg::Compressor::new()?;
    compressor.set_quality(i32::from(quality));
    compressor.set_subsamp(turbojpeg::Subsamp::Sub2x2);
    Ok(compressor)
}

/// Lanczos-3 resize of the region `[x, y, w, h]` (source pixels, fractional allowed) of `src`
/// to `ow`×`oh`; a non-square region resized to a square also corrects anamorphic pixels.
pub(crate) fn resize_region(resizer: &mut fir::Resizer, src: &Rgb, region: [f64; 4], ow: u32, oh: u32) -> Result<Rgb, Reject> {
    let internal = |what: &str, e: &dyn std::fmt::Display| Reject::new(RejectReason::Internal, format!("{what}: {e}"));
    let image = fir::images::ImageRef::new(src.width, src.height, &src.pixels, fir::PixelType::U8x3)
        .map_err(|e| internal("resize source", &e))?;
    let [x, y, w, h] = region;
    let mut opts = fir::ResizeOptions::new().resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Lanczos3));
    if region != [0.0, 0.0, f64::from(src.width), f64::from(src.height)] {
        opts = opts.crop(x, y, w, h);
    }
    let mut dst = fir::images::Image::new(ow, oh, fir::PixelType::U8x3);
    resizer.resize(&image, &mut dst, &opts).map_err(|e| internal("resize", &e))?;
    Ok(Rgb { width: ow, height: oh, pixels: dst.into_vec() })
}

/// JPEG of an RGB8 picture.
pub(crate) fn encode_jpeg(compressor: &mut turbojpeg::Compressor, rgb: &Rgb) -> Result<Vec<u8>, Reject> {
    let image = turbojpeg::Image {
        pixels: &rgb.pixels[..],
        width: rgb.width as usize,
        pitch: rgb.width as usize * 3,
        height: rgb.height as usize,
        format: turbojpeg::PixelFormat::RGB,
    };
    compressor.compress_to_vec(image).map_err(|e| Reject::new(RejectReason::Internal, format!("JPEG encode: {e}")))
}

fn image_reader(bytes: &[u8], format: Format) -> ::image::ImageReader<Cursor<&[u8]>> {
    let mut reader = ::image::ImageReader::new(Cursor::new(bytes));
    reader.set_format(match format {
        Format::Jpeg => ::image::ImageFormat::Jpeg,
        Format::Png => ::image::ImageFormat::Png,
        Format::Webp => ::image::ImageFormat::WebP,
    });
    reader
}

/// Full decode with the `image` crate: to RGB8, alpha composited on white, orientation
/// applied for PNG/WebP (JPEG orientation is applied by the caller).
fn decode_other(bytes: &[u8], format: Format, max_pixels: u64) -> Result<Rgb, Reject> {
    let mut reader = image_reader(bytes, format);
    let mut limits = ::image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(64 << 20));
    reader.limits(limits);
    let corrupt = |e: ::image::ImageError| Reject::new(RejectReason::Corrupt, e.to_string());
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let orientation = if format == Format::Jpeg {
        ::image::metadata::Orientation::NoTransforms
    } else {
        decoder.orientation().unwrap_or(::image::metadata::Orientation::NoTransforms)
    };
    let mut img = ::image::DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    let (width, height) = (img.width(), img.height());
    let pixels = if img.color().has_alpha() {
        let rgba = img.into_rgba16();
        let mut out = Vec::with_capacity(width as usize * height as usize * 3);
        for p in rgba.pixels() {
            let a = u32::from(p.0[3]);
            for c in &p.0[..3] {
                // over white, in 16 bits, then rounded to 8
                let v = (u32::from(*c) * a + 65535 * (65535 - a) + 32767) / 65535;
                out.push(((v * 255 + 32767) / 65535) as u8);
            }
        }
        out
    } else {
        img.into_rgb8().into_raw()
    };
    Ok(Rgb { width, height, pixels })
}

/// Adobe-inverted CMYK (what Photoshop writes and libjpeg returns) to RGB.
fn cmyk_to_rgb(cmyk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for p in cmyk.chunks_exact(4) {
        let k = u32::from(p[3]);
        for &c in &p[..3] {
            out.push(((u32::from(c) * k + 127) / 255) as u8);
        }
    }
    out
}

/// EXIF orientation (1..=8) of a JPEG, from its APP1 "Exif" segment; 1 when absent or invalid.
pub fn jpeg_orientation(bytes: &[u8]) -> u16 {
    let mut i = 2;
    while i + 4 <= bytes.len() {
        if bytes[i] != 0xff {
            return 1;
        }
        let marker = bytes[i + 1];
        if marker == 0xff {
            i += 1;
            continue;
        }
        if marker == 0xda || marker == 0xd9 {
            return 1;
        }
        let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
        let end = (i + 2 + len).min(bytes.len());
        if marker == 0xe1 && len >= 8 {
            let seg = &bytes[i + 4..end];
            if seg.starts_with(b"Exif\0\0") {
                if let Some(o) = exif_orientation(&seg[6..]) {
                    return o;
                }
            }
        }
        i += 2 + len;
    }
    1
}

/// Orientation tag (0x0112) of IFD0 of a TIFF-structured EXIF block.
fn exif_orientation(tiff: &[u8]) -> Option<u16> {
    let le = match tiff.get(0..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b = tiff.get(o..o + 2)?;
        Some(if le { u16::from_le_bytes([b[0], b[1]]) } else { u16::from_be_bytes([b[0], b[1]]) })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b = tiff.get(o..o + 4)?;
        let a = [b[0], b[1], b[2], b[3]];
        Some(if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) })
    };
    let ifd = u32_at(4)? as usize;
    let count = usize::from(u16_at(ifd)?);
    for n in 0..count.min(512) {
        let e = ifd + 2 + 12 * n;
        if u16_at(e)? == 0x0112 {
            let v = u16_at(e + 8)?;
            return (1..=8).contains(&v).then_some(v);
        }
    }
    None
}

/// Applies EXIF orientation `o` (2..=8) to an RGB picture.
pub(crate) fn orient(src: Rgb, o: u16) -> Rgb {
    let (w, h) = (src.width as usize, src.height as usize);
    let (ow, oh) = if matches!(o, 5..=8) { (h, w) } else { (w, h) };
    let mut out = vec![0u8; ow * oh * 3];
    for y in 0..oh {
        for x in 0..ow {
            let (sx, sy) = match o {
                2 => (w - 1 - x, y),
                3 => (w - 1 - x, h - 1 - y),
                4 => (x, h - 1 - y),
                5 => (y, x),
                6 => (y, h - 1 - x),
                7 => (w - 1 - y, h - 1 - x),
                8 => (w - 1 - y, x),
                _ => (x, y),
            };
            let s = (sy * w + sx) * 3;
            let d = (y * ow + x) * 3;
            out[d..d + 3].copy_from_slice(&src.pixels[s..s + 3]);
        }
    }
    Rgb { width: ow as u32, height: oh as u32, pixels: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orientation_maps_corners() {
        // 2x1 picture: red, green. Rotating 90° clockwise (6) puts red on top.
        let src = Rgb { width: 2, height: 1, pixels: vec![255, 0, 0, 0, 255, 0] };
        let r = orient(src, 6);
        assert_eq!((r.width, r.height), (1, 2));
        assert_eq!(&r.pixels[..3], &[255, 0, 0]);
        let src = Rgb { width: 2, height: 1, pixels: vec![255, 0, 0, 0, 255, 0] };
        let r = orient(src, 8);
        assert_eq!(&r.pixels[..3], &[0, 255, 0]);
    }

    #[test]
    fn sniffs_formats() {
        assert_eq!(sniff(&[]).unwrap_err().reason, RejectReason::Empty);
        assert_eq!(sniff(b"GIF89a....").unwrap_err().reason, RejectReason::UnsupportedFormat);
        assert_eq!(sniff(b"hello world").unwrap_err().reason, RejectReason::NotAnImage);
        assert_eq!(sniff(&[0xff, 0xd8, 0xff, 0xe0]).unwrap(), Format::Jpeg);
    }
}
