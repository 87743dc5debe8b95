//! The loader benchmark's Rust side (driven by `bench/loader/run.sh`; see bench/RESULTS.md).
//!
//! ```text
//! bench_loader make JPEG_DIR OUT       # 256² JPEG files -> image shard set (jpeg_256 only)
//! bench_loader loader SHARDS WORKERS BATCH STEPS [--no-verify]
//! bench_loader bound SHARDS [THREADS=1]  # plain libjpeg-turbo decode of the same bytes
//! ```
//! Each timed mode prints one line: `NAME N img/s (...)`, with the CPU time its threads used over
//! the timed span and images per CPU-second, which other processes on the same core (this is a
//! shared machine) disturb much less than wall time.

use std::path::Path;
use std::time::Instant;

use mdm_loader::LoaderBuilder;
use mdm_shards::{Body, ImageBody, Layout, Manifest, Record, RecordKind, ShardSet, ShardWriter, WriterOptions};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("missing argument; see the file's docs");
    match arg(0)? {
        "make" => make(Path::new(arg(1)?), Path::new(arg(2)?)),
        "loader" => loader(arg(1)?, arg(2)?.parse()?, arg(3)?.parse()?, arg(4)?.parse()?, !args.iter().any(|a| a == "--no-verify")),
        "bound" => bound(arg(1)?, args.get(2).map_or(Ok(1), |t| t.parse())?),
        other => Err(format!("unknown mode {other:?}").into()),
    }
}

fn make(jpegs: &Path, out: &Path) -> Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(jpegs)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>()?;
    files.sort();
    let layout = Layout::new(RecordKind::Image, vec![256]).map_err(|e| e.to_string())?;
    let mut w = ShardWriter::try_new(out, layout.clone(), WriterOptions { max_shard_rows: Some(1024), ..Default::default() })?;
    for (i, f) in files.iter().enumerate() {
        let jpeg = std::fs::read(f)?;
        w.write(Record {
            id: format!("bench/{i:06}"),
            source: f.display().to_string(),
            source_sha256: mdm_shards::sha256(&jpeg),
            width: 256,
            height: 256,
            caption: None,
            text: None,
            body: Body::Image(ImageBody { label: Some((i % 1000) as i32), crop_box: None, jpegs: vec![jpeg] }),
        })?;
    }
    let mut m = Manifest::new(&layout, None);
    m.shards = w.close()?;
    (m.stats.inputs, m.stats.written) = (files.len() as u64, files.len() as u64);
    m.write(out)?;
    println!("{} rows in {} shards", files.len(), m.shards.len());
    Ok(())
}

fn loader(shards: &str, workers: usize, batch: u64, steps: usize, verify: bool) -> Result<()> {
    let mut b = LoaderBuilder::new();
    b.source(shards, 1.0).batch_size(batch).workers(workers).prefetch(4).verify_checksums(verify).epoch_end(mdm_loader::EpochEnd::Pad);
    let mut loader = b.build()?;
    // The first batch pays for opening files and filling the pipeline.
    loader.next().ok_or("no batch")??;
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let mut n = 0;
    for batch in loader.by_ref().take(steps) {
        n += batch?.len();
    }
    let (dt, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let s = loader.stats();
    println!(
        "mdm-loader {:.1} img/s ({n} images, {workers} workers, verify {verify}, {dt:.2} s, cpu {cpu:.2} s = {:.1} img/cpu-s; consumer waited {:.2} s, reader io {:.2} s, decode busy {:.2} s)",
        n as f64 / dt,
        n as f64 / cpu,
        s.consumer_wait.as_secs_f64(),
        s.reader_io.as_secs_f64(),
        s.decode_busy.as_secs_f64()
    );
    Ok(())
}

/// `threads` threads each decode their share of the images (the bound at that many cores).
fn bound(shards: &str, threads: usize) -> Result<()> {
    let set = ShardSet::open(shards)?;
    let mut jpegs = Vec::new();
    for r in set.records() {
        if let Body::Image(img) = r?.body {
            jpegs.extend(img.jpegs);
        }
    }
    let share = jpegs.len().div_ceil(threads.max(1));
    let t = Instant::now();
    let cpu = std::thread::scope(|s| {
        let handles: Vec<_> = jpegs.chunks(share).map(|part| s.spawn(move || decode_all(part))).collect();
        handles.into_iter().map(|h| h.join().expect("decode thread")).sum::<std::result::Result<f64, String>>()
    })?;
    let dt = t.elapsed().as_secs_f64();
    let n = jpegs.len() as f64;
    println!("libjpeg-turbo {:.1} img/s ({n} images, {dt:.2} s, cpu {cpu:.2} s = {:.1} img/cpu-s, bytes in memory, {threads} threads)", n / dt, n / cpu);
    Ok(())
}

/// Decodes `jpegs` to RGB; returns this thread's CPU seconds.
fn decode_all(jpegs: &[Vec<u8>]) -> std::result::Result<f64, String> {
    let cpu = thread_cpu_seconds();
    let mut d = turbojpeg::Decompressor::new().map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    for j in jpegs {
        let h = d.read_header(j).map_err(|e| e.to_string())?;
        buf.resize(3 * h.width * h.height, 0);
        let img = turbojpeg::Image { pixels: &mut buf[..], width: h.width, pitch: 3 * h.width, height: h.height, format: turbojpeg::PixelFormat::RGB };
        d.decompress(j, img).map_err(|e| e.to_string())?;
    }
    Ok(thread_cpu_seconds() - cpu)
}

fn thread_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok().and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok()).map_or(f64::NAN, |ns| ns as f64 * 1e-9)
}

/// CPU time used so far by this process's live threads (Linux `schedstat`, nanoseconds).
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return f64::NAN };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 * 1e-9
}
