//! T5 encoder throughput on CPU for three batching strategies, and bytes per caption
//! ragged vs padded. Not a test; run with
//! `cargo run --release -p mdm-ingest --example t5_bench -- [captions] [batch] [config]`
//! where config is `small` (FLAN-T5-small shapes, default) or `tiny`.
//!
//! Weights are seeded random (throughput does not depend on their values). Caption lengths
//! (in T5 tokens, `</s>` included) are drawn from a log-normal with median 16 and σ 0.6,
//! clipped to [2, 200] and then to 128 — a stand-in for CC12M's long-tailed caption lengths.

use std::time::Instant;

use mdm_ingest::t5::tch::{self, Kind, Tensor};
use mdm_ingest::t5::{write_random_t5, Checkpoint, T5Config, T5Dtype, T5Encoder};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn config(name: &str) -> T5Config {
    let mut c = mdm_ingest::t5::tiny_t5_config();
    if name == "small" {
        // google/flan-t5-small encoder shapes.
        c.vocab_size = 32128;
        c.d_model = 512;
        c.d_kv = 64;
        c.num_heads = 6;
        c.num_layers = 8;
        c.d_ff = 1024;
    }
    c
}

/// Runs `rows` in batches of `batch`, each padded to `pad(batch_rows)`; returns seconds.
fn run(
    enc: &T5Encoder,
    rows: &[Vec<i64>],
    batch: usize,
    pad: &dyn Fn(&[&Vec<i64>]) -> usize,
) -> f64 {
    let t0 = Instant::now();
    for chunk in rows.chunks(batch) {
        let refs: Vec<&Vec<i64>> = chunk.iter().collect();
        let t = pad(&refs);
        let mut ids = vec![0i64; chunk.len() * t];
        let mut mask = vec![0i64; chunk.len() * t];
        for (r, row) in chunk.iter().enumerate() {
            ids[r * t..r * t + row.len()].copy_from_slice(row);
            mask[r * t..r * t + row.len()]
                .iter_mut()
                .for_each(|m| *m = 1);
        }
        let b = chunk.len() as i64;
        let ids = Tensor::from_slice(&ids).view([b, t as i64]);
        let mask = Tensor::from_slice(&mask).view([b, t as i64]);
        let out = enc.forward(&ids, &mask).expect("forward");
        let _ = out.sum(Kind::Float).double_value(&[]);
    }
    t0.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(512);
    let batch: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let cfg_name = args.get(3).map(String::as_str).unwrap_or("small");
    let cfg = config(cfg_name);
    let dir = std::env::temp_dir().join(format!("mdm-t5-bench-{cfg_name}"));
    write_random_t5(&dir, &cfg, 0, T5Dtype::F32, 1, &Default::default()).expect("write weights");
    let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
    vs.set_kind(Kind::Float);
    let mut enc = T5Encoder::new(&vs.root(), &cfg).expect("build");
    enc.load(&Checkpoint::open(&dir).expect("open"))
        .expect("load");

    let mut rng = Rng(1);
    let rows: Vec<Vec<i64>> = (0..n)
        .map(|_| {
            let len = (16.0 * (0.6 * rng.normal()).exp())
                .round()
                .clamp(2.0, 200.0) as usize;
            let len = len.min(128);
            let mut r: Vec<i64> = (0..len - 1)
                .map(|_| 3 + (rng.next() % (cfg.vocab_size as u64 - 3)) as i64)
                .collect();
            r.push(1);
            r
        })
        .collect();
    let real: usize = rows.iter().map(Vec::len).sum();
    let mean = real as f64 / n as f64;
    println!(
        "config {cfg_name}: d_model {} layers {} heads {} d_ff {}; {n} captions, batch {batch}, \
         mean {mean:.1} tokens (max {}), threads {}",
        cfg.d_model,
        cfg.num_layers,
        cfg.num_heads,
        cfg.d_ff,
        rows.iter().map(Vec::len).max().unwrap_or(0),
        tch::get_num_threads()
    );
    // Warm-up.
    run(&enc, &rows[..batch.min(n)], batch, &|_| 128);

    let pad128 = run(&enc, &rows, batch, &|_| 128);
    let batch_max = run(&enc, &rows, batch, &|c| {
        c.iter().map(|r| r.len()).max().unwrap_or(1)
    });
    let mut sorted = Vec::with_capacity(n);
    for w in rows.chunks(1024) {
        let mut w = w.to_vec();
        w.sort_by_key(Vec::len);
        sorted.extend(w);
    }
    let len_sorted = run(&enc, &sorted, batch, &|c| {
        c.iter().map(|r| r.len()).max().unwrap_or(1)
    });
    for (name, s) in [
        ("padded-128", pad128),
        ("batch-max", batch_max),
        ("length-sorted (window 1024)", len_sorted),
    ] {
        println!(
            "{name:>28}: {:>9.0} real tokens/s  ({:.2} s)",
            real as f64 / s,
            s
        );
    }

    for (label, dim) in [("this config", cfg.d_model), ("FLAN-T5-XL", 2048)] {
        let ragged = mean * dim as f64 * 2.0 + 4.0;
        let padded = 128.0 * dim as f64 * 2.0;
        println!(
            "bytes/caption fp16, {label} (dim {dim}): ragged {ragged:.0} (+4 B count) vs padded-128 \
             {padded:.0} ({:.1}x smaller)",
            padded / ragged
        );
    }
}
