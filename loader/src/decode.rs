//! JPEG to CHW pixels: libjpeg-turbo with DCT-domain scaling (a 256² JPEG decodes straight to
//! 64² at scale 2/8), then, only when still needed, an area (box) resample of the crop window,
//! with the horizontal flip folded into the final write.

use std::mem::MaybeUninit;

use turbojpeg::{Decompressor, Image, PixelFormat};

/// Crop window (fractions of the stored square) and flip of one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Transform {
    /// Output side in pixels.
    pub out: u32,
    pub flip: bool,
    /// (x0, y0, side) as fractions of the image side; `None` keeps the whole image.
    pub crop: Option<(f64, f64, f64)>,
}

/// A decoder with its buffers, one per worker thread.
pub(crate) struct Decoder {
    tj: Decompressor,
    rgb: Vec<u8>,
    tmp: Vec<f32>,
}

impl Decoder {
    pub(crate) fn new() -> Result<Self, String> {
        Ok(Decoder { tj: Decompressor::new().map_err(|e| format!("libjpeg-turbo: {e}"))?, rgb: Vec::new(), tmp: Vec::new() })
    }

    /// Decodes `jpeg` (a `stored`² image) into `out` (`3 * t.out²` bytes, CHW). On success
    /// every one of those bytes is written; `out` may start uninitialised (a batch tensor).
    pub(crate) fn decode_into(&mut self, jpeg: &[u8], stored: u32, t: &Transform, out: &mut [MaybeUninit<u8>]) -> Result<(), String> {
        let header = self.tj.read_header(jpeg).map_err(|e| format!("JPEG header: {}", e.to_string().trim()))?;
        if header.width != stored as usize || header.height != stored as usize {
            return Err(format!("JPEG is {}x{}, its column promises {stored}x{stored}", header.width, header.height));
        }
        let (x0, y0, side) = t.crop.unwrap_or((0.0, 0.0, 1.0));
        // Smallest DCT scale m/8 whose crop window still covers the output.
        let stored = stored as usize;
        let mut m = 8;
        while m > 1 && ((stored * (m - 1)).div_ceil(8) as f64 * side).floor() as u32 >= t.out {
            m -= 1;
        }
        let s = (stored * m).div_ceil(8);
        self.rgb.resize(3 * s * s, 0);
        let image = Image { pixels: &mut self.rgb[..], width: s, pitch: 3 * s, height: s, format: PixelFormat::RGB };
        self.tj.decompress(jpeg, image).map_err(|e| format!("JPEG data: {}", e.to_string().trim()))?;
        let o = t.out as usize;
        if t.crop.is_none() && s == o {
            to_chw(&self.rgb, o, t.flip, out);
        } else {
            let sf = s as f64;
            area_resample(&self.rgb, s, (x0 * sf, y0 * sf, side * sf), o, t.flip, &mut self.tmp, out);
        }
        Ok(())
    }
}

/// HWC to CHW, mirrored horizontally when `flip`: 16 pixels per step with SSSE3 byte shuffles
/// when the CPU has them and the side is a multiple of 16 (6-11 µs for 256², against 55-75 µs
/// for the byte loop, which LLVM does not vectorise), else byte by byte.
fn to_chw(rgb: &[u8], side: usize, flip: bool, out: &mut [MaybeUninit<u8>]) {
    let plane = side * side;
    let (rgb, out) = (&rgb[..3 * plane], &mut out[..3 * plane]);
    #[cfg(target_arch = "x86_64")]
    if side.is_multiple_of(16) && std::arch::is_x86_feature_detected!("ssse3") {
        // SAFETY: SSSE3 was just detected; both slices hold exactly `3 * side²` bytes.
        unsafe { to_chw_ssse3(rgb, side, flip, out) };
        return;
    }
    to_chw_bytes(rgb, side, flip, out);
}

fn to_chw_bytes(rgb: &[u8], side: usize, flip: bool, out: &mut [MaybeUninit<u8>]) {
    let plane = side * side;
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    let rows = rgb.chunks_exact(3 * side).zip(r.chunks_exact_mut(side)).zip(g.chunks_exact_mut(side)).zip(b.chunks_exact_mut(side));
    for (((src, r), g), b) in rows {
        // Zipped iterators: no bounds checks in the inner loop.
        let dst = r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut());
        let put = |((r, g), b): ((&mut MaybeUninit<u8>, &mut MaybeUninit<u8>), &mut MaybeUninit<u8>), px: &[u8]| {
            r.write(px[0]);
            g.write(px[1]);
            b.write(px[2]);
        };
        if flip {
            dst.rev().zip(src.chunks_exact(3)).for_each(|(d, px)| put(d, px));
        } else {
            dst.zip(src.chunks_exact(3)).for_each(|(d, px)| put(d, px));
        }
    }
}

/// `_mm_shuffle_epi8` masks, `[channel][source register]`: the 16 bytes of one channel out of
/// 48 bytes (16 RGB pixels) in three registers, in reverse order when `flip`; 0x80 gives 0.
fn shuffle_masks(flip: bool) -> [[[u8; 16]; 3]; 3] {
    let mut m = [[[0x80u8; 16]; 3]; 3];
    for (c, channel) in m.iter_mut().enumerate() {
        for j in 0..16 {
            let src = 3 * if flip { 15 - j } else { j } + c;
            let register = &mut channel[src / 16];
            register[j] = (src % 16) as u8;
        }
    }
    m
}

/// # Safety
/// The CPU has SSSE3, `side % 16 == 0`, and `rgb` and `out` hold `3 * side²` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
unsafe fn to_chw_ssse3(rgb: &[u8], side: usize, flip: bool, out: &mut [MaybeUninit<u8>]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_or_si128, _mm_shuffle_epi8, _mm_storeu_si128};
    let plane = side * side;
    debug_assert!(side.is_multiple_of(16) && rgb.len() == 3 * plane && out.len() == 3 * plane);
    let masks = shuffle_masks(flip).map(|c| c.map(|m| unsafe { _mm_loadu_si128(m.as_ptr().cast()) }));
    let blocks = side / 16;
    let (src, dst) = (rgb.as_ptr(), out.as_mut_ptr().cast::<u8>());
    for y in 0..side {
        for k in 0..blocks {
            // SAFETY: pixels [16k, 16k + 16) of row y: bytes 48k..48k + 48 of a 3·side-byte row
            // in, and 16 bytes at (flipped) column 16k of row y of each plane out.
            unsafe {
                let s = src.add(3 * side * y + 48 * k);
                let px: [__m128i; 3] = [_mm_loadu_si128(s.cast()), _mm_loadu_si128(s.add(16).cast()), _mm_loadu_si128(s.add(32).cast())];
                let at = y * side + 16 * if flip { blocks - 1 - k } else { k };
                for (c, m) in masks.iter().enumerate() {
                    let v = _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(px[0], m[0]), _mm_shuffle_epi8(px[1], m[1])), _mm_shuffle_epi8(px[2], m[2]));
                    _mm_storeu_si128(dst.add(c * plane + at).cast(), v);
                }
            }
        }
    }
}

/// Source taps of each output pixel when `[start, start + len)` of `n_src` pixels is averaged
/// into `n_out` pixels: (first tap, weights summing to 1).
fn area_taps(start: f64, len: f64, n_out: usize, n_src: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = len / n_out as f64;
    (0..n_out)
        .map(|o| {
            let a = start + o as f64 * scale;
            let b = a + scale;
            let i0 = (a.floor() as usize).min(n_src - 1);
            let i1 = (b.ceil() as usize).clamp(i0 + 1, n_src);
            let mut w: Vec<f32> = (i0..i1).map(|i| ((b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0)) as f32).collect();
            let sum: f32 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            } else {
                w = vec![1.0];
            }
            (i0, w)
        })
        .collect()
}

/// Averages the square window `(x0, y0, side)` (source pixels) of the `s`² HWC image into
/// `o`² CHW pixels: horizontal pass into `tmp`, then vertical.
fn area_resample(rgb: &[u8], s: usize, (x0, y0, side): (f64, f64, f64), o: usize, flip: bool, tmp: &mut Vec<f32>, out: &mut [MaybeUninit<u8>]) {
    let xs = area_taps(x0, side, o, s);
    let ys = area_taps(y0, side, o, s);
    let (first_row, last_row) = (ys[0].0, ys[o - 1].0 + ys[o - 1].1.len());
    tmp.clear();
    tmp.resize((last_row - first_row) * o * 3, 0.0);
    for y in first_row..last_row {
        let row = &rgb[3 * y * s..3 * (y + 1) * s];
        let dst = &mut tmp[(y - first_row) * o * 3..(y - first_row + 1) * o * 3];
        for (ox, (i0, w)) in xs.iter().enumerate() {
            let mut acc = [0f32; 3];
            for (k, &wk) in w.iter().enumerate() {
                let p = 3 * (i0 + k);
                acc[0] += wk * row[p] as f32;
                acc[1] += wk * row[p + 1] as f32;
                acc[2] += wk * row[p + 2] as f32;
            }
            dst[3 * ox..3 * ox + 3].copy_from_slice(&acc);
        }
    }
    let plane = o * o;
    for (oy, (i0, w)) in ys.iter().enumerate() {
        for ox in 0..o {
            let mut acc = [0f32; 3];
            for (k, &wk) in w.iter().enumerate() {
                let p = ((i0 + k - first_row) * o + ox) * 3;
                acc[0] += wk * tmp[p];
                acc[1] += wk * tmp[p + 1];
                acc[2] += wk * tmp[p + 2];
            }
            let at = oy * o + if flip { o - 1 - ox } else { ox };
            for c in 0..3 {
                out[c * plane + at].write(acc[c].round().clamp(0.0, 255.0) as u8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes into a fresh buffer of `3 * t.out²` bytes.
    fn decode(d: &mut Decoder, jpeg: &[u8], stored: u32, t: &Transform) -> Result<Vec<u8>, String> {
        let mut out = vec![MaybeUninit::new(0u8); 3 * (t.out as usize).pow(2)];
        d.decode_into(jpeg, stored, t, &mut out)?;
        Ok(init(out))
    }

    fn init(v: Vec<MaybeUninit<u8>>) -> Vec<u8> {
        // SAFETY: every test buffer starts as zeroes.
        v.into_iter().map(|b| unsafe { b.assume_init() }).collect()
    }

    fn encode(side: usize, f: impl Fn(usize, usize) -> [u8; 3]) -> Vec<u8> {
        let pixels: Vec<u8> = (0..side * side).flat_map(|i| f(i % side, i / side)).collect();
        let img = Image { pixels: &pixels[..], width: side, pitch: 3 * side, height: side, format: PixelFormat::RGB };
        let mut c = turbojpeg::Compressor::new().unwrap();
        c.set_quality(95);
        c.set_subsamp(turbojpeg::Subsamp::None);
        c.compress_to_vec(img).unwrap()
    }

    #[test]
    fn area_taps_average_whole_blocks() {
        let taps = area_taps(0.0, 8.0, 2, 8);
        assert_eq!(taps[1].0, 4);
        assert_eq!(taps[1].1, vec![0.25; 4]);
    }

    #[test]
    fn downscale_flip_and_crop_keep_the_picture() {
        // Left half red, right half blue.
        let jpeg = encode(64, |x, _| if x < 32 { [250, 0, 0] } else { [0, 0, 250] });
        let mut d = Decoder::new().unwrap();
        let plane = 256;
        for flip in [false, true] {
            let out = decode(&mut d, &jpeg, 64, &Transform { out: 16, flip, crop: None }).unwrap();
            let (left, right) = (out[4 * 16 + 2], out[4 * 16 + 13]);
            let (red, blue) = if flip { (right, left) } else { (left, right) };
            assert!(red > 200 && out[2 * plane + 4 * 16 + if flip { 13 } else { 2 }] < 40, "flip {flip}");
            assert!(blue < 40, "flip {flip}: red channel of the blue half is {blue}");
        }
        // The right quarter only: all blue, through the resampling path (crop 16/64 -> 12).
        let out = decode(&mut d, &jpeg, 64, &Transform { out: 12, flip: false, crop: Some((0.75, 0.0, 0.25)) }).unwrap();
        assert!(out[..144].iter().all(|&v| v < 40) && out[288..].iter().all(|&v| v > 200));
    }

    #[test]
    fn the_fast_transpose_matches_the_byte_loop() {
        for side in [16, 48, 256] {
            let rgb: Vec<u8> = (0..3 * side * side).map(|i| (i * 7 % 251) as u8).collect();
            for flip in [false, true] {
                let (mut fast, mut slow) = (vec![MaybeUninit::new(0u8); 3 * side * side], vec![MaybeUninit::new(0u8); 3 * side * side]);
                to_chw(&rgb, side, flip, &mut fast);
                to_chw_bytes(&rgb, side, flip, &mut slow);
                let (fast, slow) = (init(fast), init(slow));
                assert!(fast == slow, "side {side}, flip {flip}");
                // Pixel (x, y) channel c lands at plane c, row y, column x (mirrored when flipped).
                let (x, y) = (5, side - 1);
                let col = if flip { side - 1 - x } else { x };
                assert_eq!(fast[2 * side * side + y * side + col], rgb[3 * (y * side + x) + 2]);
            }
        }
    }

    #[test]
    fn wrong_size_and_garbage_are_errors() {
        let jpeg = encode(32, |_, _| [1, 2, 3]);
        let mut d = Decoder::new().unwrap();
        let t = Transform { out: 16, flip: false, crop: None };
        assert!(decode(&mut d, &jpeg, 64, &t).unwrap_err().contains("32x32"));
        assert!(decode(&mut d, &[0xff, 0xd8, 1, 2, 3], 32, &t).is_err());
    }
}
