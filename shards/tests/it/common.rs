//! Record factories shared by the shard tests.
#![allow(dead_code)]

use mdm_shards::*;

/// Deterministic pseudo-random bytes (splitmix64), so payloads are distinct and findable.
pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

pub fn embedding(i: u64, dim: u32) -> TextEmbedding {
    let tokens = 1 + (i % 9) as u32;
    let data = (0..tokens * dim)
        .flat_map(|k| half::f16::from_f32(k as f32 * 0.01 - i as f32).to_le_bytes())
        .collect();
    TextEmbedding { tokens, dim, dtype: EmbeddingDType::F16, data }
}

pub fn image_record(i: u64, kind: RecordKind, resolutions: &[u32], dim: u32) -> Record {
    let jpegs = resolutions.iter().map(|&r| bytes(i * 1000 + r as u64, 200 + (i as usize % 50) * 7)).collect();
    Record {
        id: format!("img/{i:06}"),
        source: format!("train/n{:08}/{i}.JPEG", i % 3),
        source_sha256: mdm_shards::sha256(&i.to_le_bytes()),
        width: 500 + i as u32,
        height: 375,
        caption: (i % 4 != 0).then(|| format!("caption number {i} with ünïcode")),
        text: (kind == RecordKind::TextImage && i % 5 != 0).then(|| embedding(i, dim)),
        body: Body::Image(ImageBody {
            label: (kind == RecordKind::Image && i % 6 != 0).then_some((i % 3) as i32),
            crop_box: (i % 2 == 0).then_some([i as i32, 0, 375, 375]),
            jpegs,
        }),
    }
}

pub fn video_record(i: u64, dim: u32) -> Record {
    let n = 2 + (i % 4) as usize;
    Record {
        id: format!("vid/{i:06}/0"),
        source: format!("videos/{i}.mp4"),
        source_sha256: mdm_shards::sha256(&i.to_be_bytes()),
        width: 640,
        height: 360,
        caption: Some(format!("a video {i}")),
        text: (i % 3 != 0).then(|| embedding(i, dim)),
        body: Body::Video(VideoBody {
            clip: (i % 2) as u32,
            fps: 8.0,
            duration: 10.5 + i as f64,
            timestamps: (0..n).map(|k| k as f64 / 8.0 + 0.25).collect(),
            frames: (0..n).map(|k| bytes(i * 31 + k as u64, 300)).collect(),
        }),
    }
}

pub fn encoder(dim: u32) -> TextEncoderInfo {
    TextEncoderInfo {
        model_id: "test/tiny-t5".into(),
        weights_sha256: "ab".repeat(32),
        tokenizer_sha256: "cd".repeat(32),
        dtype: EmbeddingDType::F16,
        max_tokens: 128,
        dim,
    }
}

/// Writes `records` as a complete shard set (shards + manifest) into `dir`.
pub fn write_set(dir: &std::path::Path, layout: &Layout, records: Vec<Record>, opts: WriterOptions) -> Manifest {
    let enc = opts.text_encoder.clone();
    let mut w = ShardWriter::try_new(dir, layout.clone(), opts).unwrap();
    let n = records.len() as u64;
    for r in records {
        w.write(r).unwrap();
    }
    let mut m = Manifest::new(layout, enc);
    m.shards = w.close().unwrap();
    m.stats.inputs = n;
    m.stats.written = n;
    m.stats.reject("too-small");
    m.stats.reject("not-an-image");
    m.write(dir).unwrap();
    m
}
