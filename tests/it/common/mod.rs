//! Running the `mdm` binary from the cross-crate tests.

use std::process::{Command, Output};

/// Runs `mdm ARGS...` and returns its output, whatever the exit status.
pub fn mdm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mdm")).args(args).output().expect("run mdm")
}

/// Runs `mdm ARGS...`, asserts success, returns stdout and stderr together.
pub fn ok(args: &[&str]) -> String {
    let out = mdm(args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "mdm {args:?} failed:\n{text}");
    text
}
