//! What the image and video ingestion tests share to check crash/resume behaviour.

use std::collections::BTreeMap;
use std::path::Path;

/// Every file directly in `dir`, by name.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if p.is_file() {
            out.insert(p.file_name().expect("name").to_string_lossy().into_owned(), std::fs::read(&p).expect("read"));
        }
    }
    out
}

/// Fills `crashed` with what a run killed mid-way leaves of the finished run in `full`: chunk 0
/// complete, chunk 1's shard renamed but without its sidecar, later shards half-written as
/// `.tmp`, no manifest or rejects (written last). Returns the finished run's files.
pub fn simulate_crash(full: &Path, crashed: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::create_dir_all(crashed).expect("mkdir");
    let reference = snapshot(full);
    for (name, bytes) in &reference {
        let chunk: Option<u32> = name.strip_prefix("shard-").and_then(|r| r.get(..5)).and_then(|n| n.parse().ok());
        match (chunk, name.ends_with(".chunk.json"), name.ends_with(".parquet")) {
            (Some(c), true, _) if c >= 1 => {}
            (Some(c), _, true) if c >= 2 => {
                std::fs::write(crashed.join(format!("{name}.tmp")), &bytes[..bytes.len() / 3]).expect("write")
            }
            (None, _, _) => {}
            _ => std::fs::write(crashed.join(name), bytes).expect("write"),
        }
    }
    reference
}
