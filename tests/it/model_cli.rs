//! `mdm model params|forward`, and the ml-mdm checkpoint converter end to end.

use std::path::{Path, PathBuf};
use std::process::Command;

fn mdm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mdm"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn mlmdm_dir() -> Option<PathBuf> {
    let base = std::env::var_os("MDM_REFERENCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/reference"));
    let d = base.join("mlmdm");
    if d.is_dir() {
        Some(d)
    } else {
        require_fixtures(&d);
        eprintln!(
            "\n*** SKIPPING: reference fixtures not found at {} (set MDM_REFERENCE_DIR) ***\n",
            d.display()
        );
        None
    }
}

#[test]
fn params_prints_the_published_layout() {
    let out = mdm()
        .args(["model", "params", "--config"])
        .arg(root().join("configs/models/cc12m_64x64.toml"))
        .output()
        .expect("run mdm");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("lm_proj.weight\t2048,2048\t4194304")),
        "lm_proj row"
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.contains("total_params=461359107") && last.contains("entries=713"),
        "{last}"
    );
}

#[test]
fn params_rejects_unknown_keys_with_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "model = \"unet\"\n[unet_config]\nresolution_chanels = [8]\n",
    )
    .expect("write");
    let out = mdm()
        .args(["model", "params", "--config"])
        .arg(&p)
        .output()
        .expect("run mdm");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("resolution_chanels"),
        "{err}"
    );
}

fn max_abs_diff(a: &Path, b: &Path, names: &[&str]) -> f64 {
    let read = |p: &Path| -> std::collections::BTreeMap<String, mdm_trainer::tch::Tensor> {
        mdm_trainer::weights::read_safetensors(p)
            .expect("read")
            .into_iter()
            .collect()
    };
    let (x, y) = (read(a), read(b));
    names
        .iter()
        .map(|n| (&x[*n] - &y[*n]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

#[test]
fn forward_reproduces_the_tiny_nested_golden() {
    let Some(dir) = mlmdm_dir() else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out.safetensors");
    let status = mdm()
        .args(["model", "forward", "--config"])
        .arg(dir.join("tiny_nested_unet_config.json"))
        .arg("--weights")
        .arg(dir.join("tiny_nested_unet_weights.safetensors"))
        .arg("--inputs")
        .arg(dir.join("tiny_nested_unet_io.safetensors"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run mdm");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let d = max_abs_diff(
        &out,
        &dir.join("tiny_nested_unet_io.safetensors"),
        &["out.0", "out.1"],
    );
    assert!(d <= 1e-4, "max|diff| {d} > 1e-4 (README criterion)");
}

fn converter() -> Command {
    let py = root().join(".venv/bin/python");
    assert!(py.exists(), "{} missing: run scripts/setup.sh", py.display());
    let mut c = Command::new(py);
    c.arg(root().join("tools/convert_mlmdm.py"));
    c
}

/// `tests/fixtures/converter/` was written by real torch 2.11 (tools/make_converter_fixture.py):
/// every dtype, a transposed view, slices sharing a storage, a 0-d tensor, a Parameter, DDP
/// prefixes. The torch-free converter must give exactly the tensors torch's safetensors wrote.
#[test]
fn converter_reads_torch_checkpoints_exactly() {
    let fx = root().join("tests/fixtures/converter");
    let tmp = tempfile::tempdir().expect("tempdir");
    let conv = tmp.path().join("keep.safetensors");
    let out = converter().arg(fx.join("ckpt.pth")).arg(&conv).args(["--dtype", "keep"]).output().expect("python");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (a, b) = (std::fs::read(&conv).expect("read"), std::fs::read(fx.join("expected.safetensors")).expect("read"));
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).expect("converted file"),
        safetensors::SafeTensors::deserialize(&b).expect("expected file"),
    );
    let mut names: Vec<String> = a.names().into_iter().map(str::to_string).collect();
    let mut want: Vec<String> = b.names().into_iter().map(str::to_string).collect();
    names.sort();
    want.sort();
    assert_eq!(names, want, "tensor names (prefixes stripped)");
    for n in &names {
        let (x, y) = (a.tensor(n).expect("tensor"), b.tensor(n).expect("tensor"));
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{n}: dtype/shape");
        assert!(x.data() == y.data(), "{n}: values differ");
    }

    // A pickled Python object is refused by name, not run.
    let out = converter().arg(fx.join("refused.pth")).arg(tmp.path().join("r.safetensors")).output().expect("python");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("argparse.Namespace"), "{err}");
    assert!(!tmp.path().join("r.safetensors").exists());

    // Not a checkpoint at all.
    let junk = tmp.path().join("junk.pth");
    std::fs::write(&junk, b"not a zip").expect("write");
    let out = converter().arg(&junk).arg(tmp.path().join("j.safetensors")).output().expect("python");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.pth"));
}

/// Builds an ml-mdm style `.pth` (`{"state_dict": …, "step": …}` with DDP `module.` prefixes)
/// from the tiny weights with real torch, converts it and checks the forward pass against the
/// golden. Needs a Python with torch: `MDM_TORCH_PYTHON`, else `.venv/bin/python` (whose
/// light CUDA install cannot `import torch` on a machine without the CUDA libraries); skipped
/// loudly otherwise. The converter itself needs no torch (see the test above).
#[test]
fn converter_round_trip_through_the_model() {
    let Some(dir) = mlmdm_dir() else { return };
    let py = std::env::var_os("MDM_TORCH_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/python"));
    let ok = py.exists()
        && Command::new(&py)
            .args(["-c", "import torch, safetensors"])
            .output()
            .map(|s| s.status.success())
            .unwrap_or(false);
    if !ok {
        eprintln!(
            "\n*** SKIPPING converter_round_trip_through_the_model: {} cannot import torch (set MDM_TORCH_PYTHON) ***\n",
            py.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let pth = tmp.path().join("tiny.pth");
    let script = format!(
        "import torch\nfrom safetensors.torch import load_file\nsd = load_file({:?})\n\
         torch.save({{'state_dict': {{'module.' + k: v for k, v in sd.items()}}, 'step': torch.tensor(3)}}, {:?})\n",
        dir.join("tiny_unet_weights.safetensors"),
        pth
    );
    let s = Command::new(&py).args(["-c", &script]).status().expect("python");
    assert!(s.success());
    let conv = tmp.path().join("tiny.safetensors");
    let s = converter().arg(&pth).arg(&conv).output().expect("convert");
    assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
    let out = tmp.path().join("out.safetensors");
    let f = mdm()
        .args(["model", "forward", "--config"])
        .arg(dir.join("tiny_unet_config.json"))
        .arg("--weights")
        .arg(&conv)
        .arg("--inputs")
        .arg(dir.join("tiny_unet_io.safetensors"))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run mdm");
    assert!(f.status.success(), "{}", String::from_utf8_lossy(&f.stderr));
    let d = max_abs_diff(&out, &dir.join("tiny_unet_io.safetensors"), &["out.0"]);
    assert!(d <= 1e-4, "converted checkpoint: max|diff| {d} > 1e-4");
}

/// CI sets `MDM_REQUIRE_FIXTURES=1`: there a missing fixture folder fails instead of skipping.
fn require_fixtures(dir: &std::path::Path) {
    if std::env::var_os("MDM_REQUIRE_FIXTURES").is_some_and(|v| v != "0") {
        panic!("MDM_REQUIRE_FIXTURES is set but the reference fixtures are missing at {}", dir.display());
    }
}
