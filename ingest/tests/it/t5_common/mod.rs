//! Shared helpers for the T5 tests: fixture location and tensor comparisons.
#![allow(dead_code)]

use std::path::PathBuf;

use mdm_ingest::t5::Checkpoint;
use tch::{Kind, Tensor};

/// `shared/reference/t5/`, or `$MDM_REFERENCE_DIR/t5`. `None` (with a loud note) if absent.
pub fn t5_reference() -> Option<PathBuf> {
    let base = match std::env::var_os("MDM_REFERENCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"),
    };
    let dir = base.join("t5");
    if dir.join("tiny_t5.safetensors").is_file() {
        Some(dir)
    } else {
        require_fixtures(&dir);
        eprintln!(
            "\n!!! SKIPPING: T5 reference fixtures not found at {} (set MDM_REFERENCE_DIR) !!!\n",
            dir.display()
        );
        None
    }
}

/// Reads one tensor from a safetensors file.
pub fn read_tensor(file: &std::path::Path, key: &str) -> Tensor {
    let ck = Checkpoint::open_file(file).unwrap();
    ck.read(key)
        .unwrap()
        .unwrap_or_else(|| panic!("{key} not in {}", file.display()))
}

/// Max |a - b| over all elements, in f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// A model directory in HF layout (config.json, model.safetensors, tokenizer.json) made of
/// the fixture files.
pub fn tiny_model_dir(reference: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        reference.join("tiny_t5_config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        reference.join("tiny_t5.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        reference.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    dir
}

/// CI sets `MDM_REQUIRE_FIXTURES=1`: there a missing fixture folder fails instead of skipping.
fn require_fixtures(dir: &std::path::Path) {
    if std::env::var_os("MDM_REQUIRE_FIXTURES").is_some_and(|v| v != "0") {
        panic!("MDM_REQUIRE_FIXTURES is set but the reference fixtures are missing at {}", dir.display());
    }
}
