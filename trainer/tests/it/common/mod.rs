//! Shared helpers of the trainer tests: where the reference fixtures live, loading them,
//! comparing tensors.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use tch::{Kind, Tensor};

/// `../shared/reference/mlmdm` (or `$MDM_REFERENCE_DIR/mlmdm`), `None` with a loud message
/// when absent.
pub fn mlmdm_dir(test: &str) -> Option<PathBuf> {
    let base = std::env::var_os("MDM_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference")
        });
    let dir = base.join("mlmdm");
    if dir.is_dir() {
        Some(dir)
    } else {
        require_fixtures(&dir);
        eprintln!(
            "\n*** SKIPPING {test}: reference fixtures not found at {} (set MDM_REFERENCE_DIR) ***\n",
            dir.display()
        );
        None
    }
}

/// The workspace root (for `configs/models`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn load(path: &std::path::Path) -> BTreeMap<String, Tensor> {
    mdm_trainer::weights::read_safetensors(path)
        .unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()))
        .into_iter()
        .collect()
}

pub fn get<'a>(m: &'a BTreeMap<String, Tensor>, k: &str) -> &'a Tensor {
    m.get(k)
        .unwrap_or_else(|| panic!("fixture tensor {k} missing"))
}

/// max |a − b| (in f64), asserting equal shapes.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// max of |a − b| / max(1, |b|) (the README's diffusion criterion).
pub fn max_rel1(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shape mismatch");
    let b = b.to_kind(Kind::Double);
    let d = (a.to_kind(Kind::Double) - &b).abs();
    (d / b.abs().clamp_min(1.0)).max().double_value(&[])
}

/// CI sets `MDM_REQUIRE_FIXTURES=1`: there a missing fixture folder fails instead of skipping.
fn require_fixtures(dir: &std::path::Path) {
    if std::env::var_os("MDM_REQUIRE_FIXTURES").is_some_and(|v| v != "0") {
        panic!("MDM_REQUIRE_FIXTURES is set but the reference fixtures are missing at {}", dir.display());
    }
}

/// Held by every test of this binary while it runs: libtorch's random number generator is
/// process-global, so a seeded test must not share it with another test's draws.
pub fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
