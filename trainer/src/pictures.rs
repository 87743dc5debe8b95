//! Samples as pictures: a PNG grid of every level, the frames of video samples, looping GIFs.

use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// A grid of every level's images: one row per level (outermost first), one column per
/// sample, each cell scaled (nearest) to the outermost side, 2 px gaps. Returns (width,
/// height, RGB8 pixels).
pub fn grid(levels: &[Tensor]) -> Result<(u32, u32, Vec<u8>)> {
    let first = levels.first().ok_or_else(|| Error::input("no levels to draw"))?;
    let (n, side) = (first.size()[0], first.size()[2]);
    let gap = 2;
    let w = n * side + (n + 1) * gap;
    let h = levels.len() as i64 * side + (levels.len() as i64 + 1) * gap;
    let canvas = Tensor::full([3, h, w], 255u8 as i64, (Kind::Uint8, Device::Cpu));
    for (r, x) in levels.iter().enumerate() {
        let s = x.size();
        if s.len() != 4 || s[0] != n || s[1] != 3 || side % s[2] != 0 {
            return Err(Error::input(format!("level {r} has shape {s:?}; expected ({n},3,S,S) with S dividing {side}")));
        }
        let f = side / s[2];
        let up = x
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .repeat_interleave_self_int(f, Some(2), None)
            .repeat_interleave_self_int(f, Some(3), None);
        let px = ((up.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to_kind(Kind::Uint8);
        for c in 0..n {
            let y0 = gap + r as i64 * (side + gap);
            let x0 = gap + c * (side + gap);
            canvas.narrow(1, y0, side).narrow(2, x0, side).copy_(&px.get(c));
        }
    }
    let hwc = canvas.permute([1, 2, 0]).contiguous();
    let mut data = vec![0u8; (h * w * 3) as usize];
    let len = data.len();
    hwc.copy_data_u8(&mut data, len);
    Ok((w as u32, h as u32, data))
}

/// PNG bytes of an RGB8 image.
pub fn png_bytes(width: u32, height: u32, rgb: Vec<u8>) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_raw(width, height, rgb).ok_or_else(|| Error::Picture("grid buffer size".into()))?;
    let mut out = std::io::Cursor::new(vec![]);
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| Error::Picture(format!("PNG encoding failed: {e}")))?;
    Ok(out.into_inner())
}

/// The frames of video samples as pictures: frame f is [`grid`] of every level's frame f (one
/// row per level, one column per clip). `levels[i]` holds clips of `frames` frames as
/// consecutive rows.
pub fn clip_frames(levels: &[Tensor], frames: i64) -> Result<Vec<image::RgbImage>> {
    if frames < 1 || levels.iter().any(|l| l.dim() != 4 || l.size()[0] % frames != 0) {
        return Err(Error::input(format!("levels are not whole clips of {frames} frames")));
    }
    (0..frames)
        .map(|f| {
            let at: Vec<Tensor> = levels
                .iter()
                .map(|l| {
                    let s = l.size();
                    l.view([s[0] / frames, frames, s[1], s[2], s[3]]).select(1, f)
                })
                .collect();
            let (w, h, rgb) = grid(&at)?;
            image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| Error::Picture("grid buffer size".into()))
        })
        .collect()
}

/// An animated GIF of video samples' [`clip_frames`] at `fps` frames per second, looping.
pub fn gif_bytes(pictures: &[image::RgbImage], fps: f64) -> Result<Vec<u8>> {
    use image::buffer::ConvertBuffer;
    use image::codecs::gif::{GifEncoder, Repeat};
    let mut out = vec![];
    {
        let mut enc = GifEncoder::new_with_speed(&mut out, 10);
        enc.set_repeat(Repeat::Infinite).map_err(|e| Error::Picture(format!("GIF encoding failed: {e}")))?;
        let delay = image::Delay::from_numer_denom_ms((1000.0 / fps).round().max(10.0) as u32, 1);
        for picture in pictures {
            let rgba: image::RgbaImage = picture.convert();
            enc.encode_frame(image::Frame::from_parts(rgba, 0, 0, delay))
                .map_err(|e| Error::Picture(format!("GIF encoding failed: {e}")))?;
        }
    }
    Ok(out)
}
