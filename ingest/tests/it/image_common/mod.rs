//! Test inputs made in code: JPEG (baseline, progressive, grayscale, CMYK/YCCK, EXIF-rotated,
//! truncated, huge header), PNG (16-bit, palette, alpha), WebP, and the dataset layouts.
#![allow(dead_code)]

use std::io::Cursor;
use std::path::Path;

use turbojpeg::raw;

/// A smooth RGB test picture with a distinct colour per quadrant.
pub fn pattern(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let r = (x * 255 / w.max(1)) as u8 ^ seed;
            let g = (y * 255 / h.max(1)) as u8;
            let b = ((x + y) % 64 * 4) as u8;
            v.extend_from_slice(&[r, g, b]);
        }
    }
    v
}

/// JPEG through raw TurboJPEG so that flags (progressive) and CMYK/grayscale are available.
pub fn tj_encode(pixels: &[u8], w: u32, h: u32, pf: raw::TJPF, subsamp: raw::TJSAMP, flags: u32) -> Vec<u8> {
    unsafe {
        let handle = raw::tjInitCompress();
        assert!(!handle.is_null());
        let mut buf: *mut turbojpeg::libc::c_uchar = std::ptr::null_mut();
        let mut size: turbojpeg::libc::c_ulong = 0;
        let rc = raw::tjCompress2(
            handle,
            pixels.as_ptr(),
            w as i32,
            0,
            h as i32,
            pf,
            &mut buf,
            &mut size,
            subsamp as i32,
            90,
            flags as i32,
        );
        assert_eq!(rc, 0, "tjCompress2 failed");
        let out = std::slice::from_raw_parts(buf, size as usize).to_vec();
        raw::tjFree(buf);
        raw::tjDestroy(handle);
        out
    }
}

pub fn jpeg(w: u32, h: u32, seed: u8) -> Vec<u8> {
    tj_encode(&pattern(w, h, seed), w, h, raw::TJPF_TJPF_RGB, raw::TJSAMP_TJSAMP_420, 0)
}

pub fn progressive_jpeg(w: u32, h: u32) -> Vec<u8> {
    let j = tj_encode(&pattern(w, h, 3), w, h, raw::TJPF_TJPF_RGB, raw::TJSAMP_TJSAMP_420, raw::TJFLAG_PROGRESSIVE);
    // SOF2 marks a progressive JPEG
    assert!(j.windows(2).any(|m| m == [0xff, 0xc2]), "not progressive");
    j
}

pub fn gray_jpeg(w: u32, h: u32) -> Vec<u8> {
    let g: Vec<u8> = (0..w * h).map(|i| (i % 251) as u8).collect();
    tj_encode(&g, w, h, raw::TJPF_TJPF_GRAY, raw::TJSAMP_TJSAMP_GRAY, 0)
}

/// Adobe (inverted) CMYK stored as YCCK: pure red everywhere.
pub fn cmyk_red_jpeg(w: u32, h: u32) -> Vec<u8> {
    let px: Vec<u8> = (0..w * h).flat_map(|_| [255u8, 0, 0, 255]).collect();
    let j = tj_encode(&px, w, h, raw::TJPF_TJPF_CMYK, raw::TJSAMP_TJSAMP_420, 0);
    assert!(j.windows(5).any(|m| m == b"Adobe"), "no Adobe marker");
    j
}

/// Splices an EXIF APP1 with the given orientation right after SOI.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2a\0\0\0\x08");
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes());
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    let mut seg = b"Exif\0\0".to_vec();
    seg.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&((seg.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&seg);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A valid small JPEG whose SOF claims `w`×`h`.
pub fn huge_header_jpeg(w: u16, h: u16) -> Vec<u8> {
    let mut j = jpeg(16, 16, 1);
    let sof = j.windows(2).position(|m| m == [0xff, 0xc0]).expect("SOF0");
    j[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    j[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    j
}

pub fn png16(w: u32, h: u32) -> Vec<u8> {
    let img = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(w, h, |x, y| image::Rgb([(x * 65535 / w) as u16, (y * 65535 / h) as u16, 40000]));
    encode(image::DynamicImage::ImageRgb16(img), image::ImageFormat::Png)
}

/// Left half fully transparent (must come out white), right half opaque blue.
pub fn png_alpha(w: u32, h: u32) -> Vec<u8> {
    let img = image::ImageBuffer::<image::Rgba<u8>, _>::from_fn(w, h, |x, _| if x < w / 2 { image::Rgba([0, 0, 0, 0]) } else { image::Rgba([0, 0, 255, 255]) });
    encode(image::DynamicImage::ImageRgba8(img), image::ImageFormat::Png)
}

pub fn webp(w: u32, h: u32) -> Vec<u8> {
    let img = image::ImageBuffer::<image::Rgb<u8>, _>::from_raw(w, h, pattern(w, h, 9)).expect("size");
    encode(image::DynamicImage::ImageRgb8(img), image::ImageFormat::WebP)
}

/// Palette PNG (colour type 3) written with the `png` crate.
pub fn png_palette(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0]);
        let mut wr = enc.write_header().expect("png header");
        let data: Vec<u8> = (0..w * h).map(|i| ((i / w) * 4 / h) as u8).collect();
        wr.write_image_data(&data).expect("png data");
    }
    out
}

fn encode(img: image::DynamicImage, f: image::ImageFormat) -> Vec<u8> {
    let mut c = Cursor::new(Vec::new());
    img.write_to(&mut c, f).expect("encode");
    c.into_inner()
}

/// Decodes a stored JPEG to (w, h, rgb).
pub fn decode(j: &[u8]) -> (u32, u32, Vec<u8>) {
    let img = image::load_from_memory(j).expect("stored JPEG decodes").into_rgb8();
    (img.width(), img.height(), img.into_raw())
}

pub fn write(path: &Path, bytes: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("mkdir");
    }
    std::fs::write(path, bytes).expect("write");
}

/// An ILSVRC-shaped tree: train/<wnid>/ with every oddity, flat val/ with LOC_val_solution.csv,
/// and LOC_synset_mapping.txt. Returns the expected (written, rejected-by-reason) of train.
pub fn imagenet_tree(root: &Path) -> (u64, Vec<(&'static str, u64)>) {
    let wnids = ["n01440764", "n01443537", "n02102040"];
    write(&root.join("LOC_synset_mapping.txt"), b"n02102040 English springer\nn01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n");
    let t = root.join("train");
    for (i, w) in wnids.iter().enumerate() {
        for k in 0..3u8 {
            write(&t.join(w).join(format!("{w}_{k}.JPEG")), &jpeg(120 + 10 * u32::from(k), 90, k + i as u8));
        }
    }
    let a = t.join(wnids[0]);
    write(&a.join("n01440764_prog.JPEG"), &progressive_jpeg(160, 100));
    write(&a.join("n01440764_cmyk.JPEG"), &cmyk_red_jpeg(80, 80));
    write(&a.join("n01440764_gray.JPEG"), &gray_jpeg(100, 70));
    write(&a.join("n01440764_exif.JPEG"), &with_exif_orientation(&jpeg(120, 60, 5), 6));
    let b = t.join(wnids[1]);
    write(&b.join("n01443537_png16.JPEG"), &png16(90, 70));
    write(&b.join("n01443537_alpha.JPEG"), &png_alpha(80, 80));
    write(&b.join("n01443537_palette.JPEG"), &png_palette(64, 64));
    write(&b.join("n01443537_webp.JPEG"), &webp(70, 70));
    let c = t.join(wnids[2]);
    let full = jpeg(200, 150, 7);
    write(&c.join("n02102040_trunc.JPEG"), &full[..full.len() / 2]);
    write(&c.join("n02102040_zero.JPEG"), b"");
    write(&c.join("n02102040_text.JPEG"), b"this is not an image at all");
    write(&c.join("n02102040_huge.JPEG"), &huge_header_jpeg(60000, 60000));
    write(&c.join("n02102040_tiny.JPEG"), &jpeg(16, 16, 2));
    // val: flat with a solution file; one image without a label
    let v = root.join("val");
    let mut csv = String::from("ImageId,PredictionString\n");
    for i in 1..=4u32 {
        let stem = format!("ILSVRC2012_val_{i:08}");
        write(&v.join(format!("{stem}.JPEG")), &jpeg(100, 80, i as u8));
        if i < 4 {
            csv.push_str(&format!("{stem},{} 1 2 30 40\n", wnids[(i as usize) % 3]));
        }
    }
    write(&root.join("LOC_val_solution.csv"), csv.as_bytes());
    (9 + 8, vec![("corrupt", 1), ("decompression-bomb", 1), ("empty", 1), ("not-an-image", 1), ("too-small", 1)])
}
