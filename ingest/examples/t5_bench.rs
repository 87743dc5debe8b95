//! T5 encoder throughput (real tokens/s) for three batching strategies (plus what
//! `TextEncoder` runs: length-sorted with the linear layers on real tokens only), and bytes per caption
//! ragged vs padded. Not a test. Run with
//! `cargo run --release -p mdm-ingest --example t5_bench -- [FLAGS]`:
//!
//! - `--config tiny|small|xl` (default small): `small` = google/flan-t5-small encoder shapes,
//!   `xl` = google/flan-t5-xl (d_model 2048, 32 heads of 64, 24 layers, d_ff 5120, gated-gelu);
//! - `--device cpu|cuda` (default cpu), `--dtype f32|bf16` (default f32), `--threads N`
//!   (libtorch intra-op threads; default libtorch's own choice);
//! - `--captions N` (512), `--batch B` (32), `--window W` (1024: captions sorted by length
//!   together, as `TextEncoder`'s `sort_window`), `--seed S` (1);
//! - `--lengths cc12m|mean32` or `--mean-len M`: caption lengths in T5 tokens (`</s>` included)
//!   are log-normal with σ 0.6, clipped to [2, 128]. `cc12m` (default): median 16 (mean ≈ 19),
//!   a stand-in for CC12M's long tail; `mean32` / `--mean-len 32`: median 26.7, so that the
//!   mean is ≈ 32 like the H100 reference (whose length distribution beyond its mean
//!   is not known);
//! - `--model-dir DIR`: where the seeded random weights are written (HF layout, config.json +
//!   model.safetensors, readable by `transformers.T5EncoderModel.from_pretrained`; default a
//!   temp dir; `--reuse-model` keeps an existing one, for the XL weights' sake);
//!   `--rows-out FILE`: the generated token-id rows as JSON; `--hidden-out FILE` with
//!   `--check-rows K` (8): the last hidden states of the first K rows, encoded as one batch
//!   padded to its longest row, as safetensors (`ids`, `mask` i64, `hidden` f32) so that a
//!   reference implementation can be compared on exactly the same inputs;
//! - `--prepare-only`: write the model dir, rows and hidden states, then stop (no timing);
//! - `--repeat R` (1): time each strategy R times and report the fastest;
//! - `--attention fused|explicit` (fused): libtorch's SDPA or the explicit softmax path.
//!
//! The old positional form `[captions] [batch] [config]` still works.
//!
//! Weights are seeded random (throughput does not depend on their values). With
//! `--device cuda` the example loads `libtorch_cuda.so` itself before the first CUDA query
//! (the linker's `--as-needed` drops it otherwise), so a carried binary only needs the GPU
//! machine's torch `lib/` on `LD_LIBRARY_PATH`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use mdm_ingest::t5::tch::{self, Device, Kind, Tensor};
use mdm_ingest::t5::{
    write_random_t5, write_safetensors, Checkpoint, T5Config, T5Dtype, T5Encoder, TensorBytes,
};

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
    match name {
        "tiny" => {}
        "small" => {
            // google/flan-t5-small encoder shapes.
            c.vocab_size = 32128;
            c.d_model = 512;
            c.d_kv = 64;
            c.num_heads = 6;
            c.num_layers = 8;
            c.d_ff = 1024;
        }
        "xl" => {
            // google/flan-t5-xl encoder shapes.
            c.vocab_size = 32128;
            c.d_model = 2048;
            c.d_kv = 64;
            c.num_heads = 32;
            c.num_layers = 24;
            c.d_ff = 5120;
        }
        _ => die(&format!("unknown --config {name:?} (tiny, small or xl)")),
    }
    c.feed_forward_proj = "gated-gelu".into();
    c.name_or_path = Some(format!("mdm/t5-bench-{name}-random"));
    c
}

fn die(msg: &str) -> ! {
    eprintln!("t5_bench: {msg}");
    std::process::exit(2)
}

/// Loads `libtorch_cuda.so` globally (what `mdm_trainer::cuda::load_torch_cuda` does; ingest
/// does not depend on the trainer, and this example needs nothing else from libc).
fn load_torch_cuda() -> Result<(), String> {
    use std::ffi::{c_char, c_int, c_void, CStr};
    extern "C" {
        fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
        fn dlerror() -> *const c_char;
    }
    const RTLD_NOW: c_int = 2;
    const RTLD_GLOBAL: c_int = 0x100;
    // SAFETY: valid NUL-terminated name; the handle is deliberately never closed.
    let h = unsafe { dlopen(c"libtorch_cuda.so".as_ptr(), RTLD_NOW | RTLD_GLOBAL) };
    if h.is_null() {
        // SAFETY: dlerror returns a thread-local C string or null.
        let e = unsafe { dlerror() };
        return Err(if e.is_null() {
            "unknown error".into()
        } else {
            // SAFETY: non-null dlerror result is a valid C string.
            unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
        });
    }
    Ok(())
}

struct Args {
    captions: usize,
    batch: usize,
    config: String,
    device: String,
    dtype: T5Dtype,
    threads: Option<i32>,
    window: usize,
    seed: u64,
    mean_len: Option<f64>,
    model_dir: Option<PathBuf>,
    rows_out: Option<PathBuf>,
    hidden_out: Option<PathBuf>,
    check_rows: usize,
    repeat: usize,
    fused: bool,
    prepare_only: bool,
    reuse: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        captions: 512,
        batch: 32,
        config: "small".into(),
        device: "cpu".into(),
        dtype: T5Dtype::F32,
        threads: None,
        window: 1024,
        seed: 1,
        mean_len: None,
        model_dir: None,
        rows_out: None,
        hidden_out: None,
        check_rows: 8,
        repeat: 1,
        fused: true,
        prepare_only: false,
        reuse: false,
    };
    let mut it = std::env::args().skip(1);
    let mut positional = 0;
    let num = |v: Option<String>, f: &str| -> f64 {
        v.and_then(|s| s.parse().ok())
            .unwrap_or_else(|| die(&format!("{f} needs a number")))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--captions" => a.captions = num(it.next(), &arg) as usize,
            "--batch" => a.batch = num(it.next(), &arg) as usize,
            "--config" => a.config = it.next().unwrap_or_default(),
            "--device" => a.device = it.next().unwrap_or_default(),
            "--dtype" => {
                a.dtype = it
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .unwrap_or_else(|e| die(&format!("{e}")))
            }
            "--threads" => a.threads = Some(num(it.next(), &arg) as i32),
            "--window" => a.window = num(it.next(), &arg) as usize,
            "--seed" => a.seed = num(it.next(), &arg) as u64,
            "--mean-len" => a.mean_len = Some(num(it.next(), &arg)),
            "--lengths" => match it.next().as_deref() {
                Some("cc12m") => a.mean_len = None,
                Some("mean32") => a.mean_len = Some(32.0),
                o => die(&format!("--lengths {o:?} (cc12m or mean32)")),
            },
            "--model-dir" => a.model_dir = it.next().map(PathBuf::from),
            "--rows-out" => a.rows_out = it.next().map(PathBuf::from),
            "--hidden-out" => a.hidden_out = it.next().map(PathBuf::from),
            "--check-rows" => a.check_rows = num(it.next(), &arg) as usize,
            "--repeat" => a.repeat = (num(it.next(), &arg) as usize).max(1),
            "--attention" => match it.next().as_deref() {
                Some("fused") => a.fused = true,
                Some("explicit") => a.fused = false,
                o => die(&format!("--attention {o:?} (fused or explicit)")),
            },
            "--prepare-only" => a.prepare_only = true,
            "--reuse-model" => a.reuse = true,
            "-h" | "--help" => {
                eprintln!("see the doc comment at the top of ingest/examples/t5_bench.rs");
                std::process::exit(0)
            }
            s if !s.starts_with('-') => {
                match positional {
                    0 => a.captions = num(Some(s.into()), "captions") as usize,
                    1 => a.batch = num(Some(s.into()), "batch") as usize,
                    2 => a.config = s.into(),
                    _ => die(&format!("unexpected argument {s:?}")),
                }
                positional += 1;
            }
            s => die(&format!("unknown flag {s:?}")),
        }
    }
    if a.captions == 0 || a.batch == 0 || a.window == 0 {
        die("--captions, --batch and --window must be positive");
    }
    a
}

/// Caption lengths in tokens (`</s>` included): log-normal, σ 0.6, clipped to [2, 128]. The
/// median is 16 by default, or set so that the unclipped mean is `mean_len`.
fn make_rows(n: usize, mean_len: Option<f64>, vocab: usize, seed: u64) -> Vec<Vec<i64>> {
    const SIGMA: f64 = 0.6;
    let median = mean_len.map_or(16.0, |m| m / (SIGMA * SIGMA / 2.0).exp());
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let len = (median * (SIGMA * rng.normal()).exp())
                .round()
                .clamp(2.0, 128.0) as usize;
            let mut r: Vec<i64> = (0..len - 1)
                .map(|_| 3 + (rng.next() % (vocab as u64 - 3)) as i64)
                .collect();
            r.push(1);
            r
        })
        .collect()
}

/// `rows` as `[B, t]` ids and mask (pad id 0), on `dev`.
fn pad_batch(rows: &[&Vec<i64>], t: usize, dev: Device) -> (Tensor, Tensor) {
    let mut ids = vec![0i64; rows.len() * t];
    let mut mask = vec![0i64; rows.len() * t];
    for (r, row) in rows.iter().enumerate() {
        ids[r * t..r * t + row.len()].copy_from_slice(row);
        mask[r * t..r * t + row.len()].iter_mut().for_each(|m| *m = 1);
    }
    let b = rows.len() as i64;
    (
        Tensor::from_slice(&ids).view([b, t as i64]).to_device(dev),
        Tensor::from_slice(&mask).view([b, t as i64]).to_device(dev),
    )
}

/// Runs `rows` in batches of `batch`, each padded to `pad(batch_rows)`; returns seconds.
/// `packed`: [`T5Encoder::forward_packed`] (what `TextEncoder` runs: linear layers on the
/// real tokens only). Reading one scalar of each output synchronises (CUDA) and keeps the
/// work from being lazy.
fn run(
    enc: &T5Encoder,
    rows: &[Vec<i64>],
    batch: usize,
    dev: Device,
    packed: bool,
    pad: &dyn Fn(&[&Vec<i64>]) -> usize,
) -> f64 {
    let t0 = Instant::now();
    for chunk in rows.chunks(batch) {
        let refs: Vec<&Vec<i64>> = chunk.iter().collect();
        let (ids, mask) = pad_batch(&refs, pad(&refs), dev);
        let out = if packed { enc.forward_packed(&ids, &mask) } else { enc.forward(&ids, &mask) }.expect("forward");
        let _ = out.sum(Kind::Float).double_value(&[]);
    }
    t0.elapsed().as_secs_f64()
}

fn batch_max(c: &[&Vec<i64>]) -> usize {
    c.iter().map(|r| r.len()).max().unwrap_or(1)
}

fn main() {
    let a = parse_args();
    let dev = match a.device.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => {
            if let Err(e) = load_torch_cuda() {
                die(&format!(
                    "libtorch_cuda.so not loaded ({e}); put the GPU torch's lib/ on LD_LIBRARY_PATH"
                ));
            }
            if !tch::Cuda::is_available() {
                die("CUDA not available after loading libtorch_cuda.so");
            }
            Device::Cuda(0)
        }
        d => die(&format!("--device {d:?} (cpu or cuda)")),
    };
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let cfg = config(&a.config);
    let dir = a.model_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "mdm-t5-bench-{}-{}",
            a.config,
            a.dtype.as_str()
        ))
    });
    // HF's T5Config reads these; gated-gelu alone already implies them, but be explicit.
    let mut extra = serde_json::Map::new();
    extra.insert("dense_act_fn".into(), "gelu_new".into());
    extra.insert("is_gated_act".into(), true.into());
    extra.insert("tie_word_embeddings".into(), false.into());
    extra.insert("mdm_bench_seed".into(), 0.into());
    let t_w = Instant::now();
    let reused = a.reuse && dir.join("model.safetensors").is_file();
    if !reused {
        write_random_t5(&dir, &cfg, 0, a.dtype, 1, &extra).expect("write weights");
    }
    let t_w = t_w.elapsed().as_secs_f64();
    let mut vs = tch::nn::VarStore::new(dev);
    vs.set_kind(a.dtype.kind());
    let mut enc = T5Encoder::new(&vs.root(), &cfg).expect("build");
    enc.load(&Checkpoint::open(&dir).expect("open"))
        .expect("load");
    enc.fused_attention = a.fused;

    let rows = make_rows(a.captions, a.mean_len, cfg.vocab_size, a.seed);
    let real: usize = rows.iter().map(Vec::len).sum();
    let mean = real as f64 / rows.len() as f64;
    let mut sorted_lens: Vec<usize> = rows.iter().map(Vec::len).collect();
    sorted_lens.sort_unstable();
    let median = sorted_lens[sorted_lens.len() / 2];
    let dist = match a.mean_len {
        None => "log-normal median 16 σ 0.6 (cc12m)".to_string(),
        Some(m) => format!("log-normal mean {m} σ 0.6"),
    };
    println!(
        "ours: config {}: d_model {} layers {} heads {} d_ff {}; device {} dtype {} threads {} \
         attention {}; {} captions ({dist}), batch {}, mean {mean:.1} tokens (median {median}, \
         max {}), weights {} ({} in {t_w:.1} s)",
        a.config,
        cfg.d_model,
        cfg.num_layers,
        cfg.num_heads,
        cfg.d_ff,
        a.device,
        a.dtype.as_str(),
        tch::get_num_threads(),
        if a.fused { "sdpa" } else { "explicit" },
        a.captions,
        a.batch,
        sorted_lens.last().copied().unwrap_or(0),
        dir.display(),
        if reused { "reused" } else { "written" },
    );

    if let Some(p) = &a.rows_out {
        let j = serde_json::json!({
            "config": a.config, "seed": a.seed, "mean_len": a.mean_len, "rows": rows,
        });
        std::fs::write(p, serde_json::to_vec(&j).expect("json")).expect("write rows");
    }
    if let Some(p) = &a.hidden_out {
        let k = a.check_rows.clamp(1, rows.len());
        let refs: Vec<&Vec<i64>> = rows[..k].iter().collect();
        let (ids, mask) = pad_batch(&refs, batch_max(&refs), dev);
        let hid = enc
            .forward(&ids, &mask)
            .expect("forward")
            .to_kind(Kind::Float);
        let tb = |t: &Tensor| TensorBytes::from_tensor(t).expect("tensor bytes");
        let ts = vec![
            ("ids".to_string(), tb(&ids)),
            ("mask".to_string(), tb(&mask)),
            ("hidden".to_string(), tb(&hid)),
        ];
        let mut meta = BTreeMap::new();
        meta.insert("dtype".to_string(), a.dtype.as_str().to_string());
        write_safetensors(p, &ts, Some(&meta)).expect("write hidden states");
    }
    if a.prepare_only {
        return;
    }

    // Warm-up: one batch of each padded length the strategies will see is too many; one
    // padded-128 batch and one batch-max batch warm the allocator and the kernels.
    let w = &rows[..a.batch.min(rows.len())];
    run(&enc, w, a.batch, dev, false, &|_| 128);
    run(&enc, w, a.batch, dev, false, &batch_max);
    run(&enc, w, a.batch, dev, true, &batch_max);

    let mut sorted = Vec::with_capacity(rows.len());
    for w in rows.chunks(a.window) {
        let mut w = w.to_vec();
        w.sort_by_key(Vec::len);
        sorted.extend(w);
    }
    let best = |f: &dyn Fn() -> f64| (0..a.repeat).map(|_| f()).fold(f64::INFINITY, f64::min);
    let pad128 = best(&|| run(&enc, &rows, a.batch, dev, false, &|_| 128));
    let bmax = best(&|| run(&enc, &rows, a.batch, dev, false, &batch_max));
    let lsorted = best(&|| run(&enc, &sorted, a.batch, dev, false, &batch_max));
    let packed = best(&|| run(&enc, &sorted, a.batch, dev, true, &batch_max));
    let sorted_name = format!("length-sorted (window {})", a.window);
    let packed_name = format!("sorted+packed (window {})", a.window);
    for (name, s) in [
        ("padded-128", pad128),
        ("batch-max", bmax),
        (sorted_name.as_str(), lsorted),
        (packed_name.as_str(), packed),
    ] {
        println!(
            "ours {name:>28}: {:>9.0} real tokens/s  ({:.2} s)",
            real as f64 / s,
            s
        );
    }

    for (label, dim) in [("this config", cfg.d_model), ("FLAN-T5-XL", 2048)] {
        let ragged = mean * dim as f64 * 2.0 + 4.0;
        let padded = 128.0 * dim as f64 * 2.0;
        println!(
            "bytes/caption 16-bit, {label} (dim {dim}), mean {mean:.1} tokens: ragged {ragged:.0} \
             (incl. a 4 B length) vs padded-128 {padded:.0} ({:.1}x smaller)",
            padded / ragged
        );
    }
}
