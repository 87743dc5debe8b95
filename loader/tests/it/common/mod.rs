//! Shard sets with real JPEGs for the loader tests: sample `i` is a flat colour that
//! [`colour`] recomputes, so a test can check that pixels belong to the id next to them.
#![allow(dead_code)]

use std::path::Path;

use mdm_loader::{Batch, LoaderBuilder, Shuffle};
use mdm_shards::*;

pub fn colour(i: u64) -> [u8; 3] {
    [20 + (i * 40 % 200) as u8, 20 + (i * 7 % 200) as u8, 20 + (i / 5 * 13 % 200) as u8]
}

pub fn jpeg(side: u32, rgb: [u8; 3]) -> Vec<u8> {
    let s = side as usize;
    let pixels: Vec<u8> = (0..s * s).flat_map(|_| rgb).collect();
    let img = turbojpeg::Image { pixels: &pixels[..], width: s, pitch: 3 * s, height: s, format: turbojpeg::PixelFormat::RGB };
    turbojpeg::compress(img, 95, turbojpeg::Subsamp::Sub2x2).unwrap().to_vec()
}

pub fn id(i: u64) -> String {
    format!("img/{i:06}")
}

pub fn index_of(id: &str) -> u64 {
    id.rsplit('/').next().unwrap().parse().unwrap()
}

pub fn encoder(dim: u32) -> TextEncoderInfo {
    TextEncoderInfo {
        model_id: "test/tiny-t5".into(),
        weights_sha256: "ab".repeat(32),
        tokenizer_sha256: "cd".repeat(32),
        dtype: EmbeddingDType::F16,
        max_tokens: 16,
        dim,
    }
}

/// Embedding of sample `i`: `1 + i % 5` tokens of width `dim`, value `i * 100 + k` as u16.
pub fn embedding(i: u64, dim: u32) -> TextEmbedding {
    let tokens = 1 + (i % 5) as u32;
    let data = (0..tokens * dim).flat_map(|k| ((i * 100 + k as u64) as u16).to_le_bytes()).collect();
    TextEmbedding { tokens, dim, dtype: EmbeddingDType::F16, data }
}

pub fn record(i: u64, kind: RecordKind, resolutions: &[u32], dim: u32) -> Record {
    let c = colour(i);
    Record {
        id: id(i),
        source: format!("synthetic://{i}"),
        source_sha256: mdm_shards::sha256(&i.to_le_bytes()),
        width: 100,
        height: 100,
        caption: Some(format!("caption {i}")),
        text: (kind == RecordKind::TextImage).then(|| embedding(i, dim)),
        body: match kind {
            RecordKind::Video => Body::Video(VideoBody {
                clip: 0,
                fps: 8.0,
                duration: 1.0,
                timestamps: (0..3).map(|f| f as f64 / 8.0).collect(),
                frames: (0..3u8).map(|f| jpeg(resolutions[0], [c[0], c[1], c[2].saturating_add(f * 30)])).collect(),
            }),
            _ => Body::Image(ImageBody {
                label: (kind == RecordKind::Image).then_some((i % 10) as i32),
                crop_box: None,
                jpegs: resolutions.iter().map(|&r| jpeg(r, c)).collect(),
            }),
        },
    }
}

/// Writes rows `first..first + n` as a shard set: shards of `shard_rows`, row groups of 16.
pub fn write_set_with(dir: &Path, kind: RecordKind, resolutions: &[u32], first: u64, n: u64, shard_rows: u64, enc: Option<TextEncoderInfo>) -> Manifest {
    let dim = enc.as_ref().map_or(0, |e| e.dim);
    let records = (first..first + n).map(|i| record(i, kind, resolutions, dim)).collect();
    write_records(dir, kind, resolutions, records, shard_rows, enc)
}

pub fn write_records(dir: &Path, kind: RecordKind, resolutions: &[u32], records: Vec<Record>, shard_rows: u64, enc: Option<TextEncoderInfo>) -> Manifest {
    let layout = Layout::new(kind, resolutions.to_vec()).unwrap();
    let opts = WriterOptions { max_shard_rows: Some(shard_rows), row_group_rows: 16, text_encoder: enc.clone(), ..Default::default() };
    let mut w = ShardWriter::try_new(dir, layout.clone(), opts).unwrap();
    let n = records.len() as u64;
    for r in records {
        w.write(r).unwrap();
    }
    let mut m = Manifest::new(&layout, enc);
    m.shards = w.close().unwrap();
    m.stats.inputs = n;
    m.stats.written = n;
    m.write(dir).unwrap();
    m
}

/// `n` image rows stored at 64 and 32, in shards of 50 rows.
pub fn write_set(dir: &Path, n: u64) -> Manifest {
    write_set_with(dir, RecordKind::Image, &[64, 32], 0, n, 50, None)
}

/// A builder over `dir` with shuffle settings scaled to small sets.
pub fn builder(dir: &Path) -> LoaderBuilder {
    builder_for(dir.to_str().unwrap())
}

/// [`builder`] over a folder, manifest or URL.
pub fn builder_for(source: &str) -> LoaderBuilder {
    let mut b = LoaderBuilder::new();
    b.source(source, 1.0)
        .shuffle(Some(Shuffle { block_rows: 8, span_rows: 64, window: 32 }))
        .mixed_ratio(vec![(32, 1.0)])
        .workers(3)
        .seed(7);
    b
}

/// Checks that every sample's pixels have the colour of its id (JPEG error allowed).
pub fn assert_pixels_match_ids(batch: &Batch) {
    for px in batch.pixels.values() {
        let plane = (px.resolution * px.resolution) as usize;
        for (k, &row) in px.rows.iter().enumerate() {
            let want = colour(index_of(&batch.ids[row]));
            let sample = px.sample(k);
            for c in 0..3 {
                let v = sample[c * plane + plane / 2 + px.resolution as usize / 2];
                assert!((v as i32 - want[c] as i32).abs() <= 8, "{}: channel {c} is {v}, want {}", batch.ids[row], want[c]);
            }
        }
    }
}

/// The ids of `steps` batches.
pub fn ids(loader: &mut mdm_loader::Loader, steps: usize) -> Vec<Vec<String>> {
    loader.by_ref().take(steps).map(|b| b.unwrap().ids).collect()
}
