//! `mdm demo`: the end-to-end story on synthetic data, on CPU, downloading nothing.
//! So far: writes a small shard set of each record kind and inspects and verifies it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use clap::Args;
use image::{codecs::jpeg::JpegEncoder, ExtendedColorType, Rgb, RgbImage};
use mdm_shards::{Body, ImageBody, Layout, Manifest, Record, RecordKind, ShardSet, ShardWriter, VideoBody, WriterOptions};

#[derive(Args)]
pub struct DemoArgs {
    /// Output folder (created; existing demo output is replaced).
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// Samples per record kind.
    #[arg(long, default_value_t = 96)]
    samples: u32,
}

const COLORS: [(&str, [u8; 3]); 4] = [("red", [220, 40, 40]), ("green", [40, 180, 60]), ("blue", [40, 70, 220]), ("yellow", [230, 210, 40])];

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let shards = args.out.join("shards");
    if shards.exists() {
        std::fs::remove_dir_all(&shards).with_context(|| format!("removing old {}", shards.display()))?;
    }
    println!("mdm demo: synthetic data only, nothing is downloaded\n");
    for kind in [RecordKind::Image, RecordKind::TextImage, RecordKind::Video] {
        let dir = shards.join(kind.as_str());
        write_synthetic(&dir, kind, args.samples)?;
        let set = ShardSet::open(&dir)?;
        println!("$ mdm shards inspect {}", dir.display());
        print!("{}", super::shards::inspect_table(&set));
        let report = mdm_shards::verify(&set, |_| {});
        ensure!(report.ok(), "demo shards failed verification: {:?}", report.problems);
        println!("verify: {} rows, all checksums match\n", report.rows_checked);
    }
    Ok(ExitCode::SUCCESS)
}

/// A shape of class `class` drawn at `size`, shifted by `phase` (animation for video).
fn synthetic_image(size: u32, class: usize, seed: u32, phase: f32) -> RgbImage {
    let (bg, fg) = (COLORS[(class + 1 + seed as usize % 3) % 4].1, COLORS[class].1);
    let s = size as f32;
    let (cx, cy) = (s * (0.3 + 0.4 * ((seed % 7) as f32 / 6.0)) + phase * s * 0.3, s * (0.35 + 0.3 * ((seed % 5) as f32 / 4.0)));
    let r = s * 0.22;
    RgbImage::from_fn(size, size, |x, y| {
        let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
        let shade = 0.75 + 0.25 * (y as f32 / s);
        let inside = if class % 2 == 0 { dx * dx + dy * dy < r * r } else { dx.abs() < r && dy.abs() < r };
        let c = if inside { fg } else { bg };
        Rgb(c.map(|v| (v as f32 * shade) as u8))
    })
}

fn jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality).encode(img.as_raw(), img.width(), img.height(), ExtendedColorType::Rgb8)?;
    Ok(out)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    mdm_shards::sha256(bytes)
}

fn write_synthetic(dir: &Path, kind: RecordKind, n: u32) -> Result<()> {
    let resolutions = if kind == RecordKind::Video { vec![64] } else { vec![64, 32] };
    let layout = Layout::new(kind, resolutions).map_err(anyhow::Error::msg)?;
    let opts = WriterOptions { max_shard_rows: Some(40), row_group_rows: 16, ..WriterOptions::default() };
    let mut writer = ShardWriter::try_new(dir, layout.clone(), opts)?;
    for i in 0..n {
        let class = (i % 4) as usize;
        let shape = if class % 2 == 0 { "circle" } else { "square" };
        let caption = format!("a {} {shape} on a plain background", COLORS[class].0);
        let body = if kind == RecordKind::Video {
            let frames = (0..8).map(|f| jpeg(&synthetic_image(64, class, i, f as f32 / 8.0), 90)).collect::<Result<Vec<_>>>()?;
            Body::Video(VideoBody { clip: 0, fps: 8.0, duration: 1.0, timestamps: (0..8).map(|f| f as f64 / 8.0).collect(), frames })
        } else {
            let jpegs = layout.resolutions.iter().map(|&r| jpeg(&synthetic_image(r, class, i, 0.0), 90)).collect::<Result<Vec<_>>>()?;
            let label = (kind == RecordKind::Image).then_some(class as i32);
            Body::Image(ImageBody { label, crop_box: None, jpegs })
        };
        let id = format!("synthetic/{}/{i:05}", kind.as_str());
        writer.write(Record {
            source_sha256: sha256(id.as_bytes()),
            source: format!("synthetic://{id}"),
            id,
            width: 64,
            height: 64,
            caption: (kind != RecordKind::Image).then_some(caption),
            text: None,
            body,
        })?;
    }
    let mut manifest = Manifest::new(&layout, None);
    manifest.shards = writer.close()?;
    manifest.stats.inputs = n as u64;
    manifest.stats.written = n as u64;
    manifest.settings = Some(serde_json::json!({ "source": "synthetic", "samples": n }));
    manifest.write(dir)?;
    Ok(())
}
