//! Compiles `csrc/dist.cpp`, the bridge to libtorch's c10d (TCPStore + ProcessGroupGloo),
//! against the same libtorch torch-sys links (`LIBTORCH`, set by .cargo/config.toml).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        panic!("LIBTORCH is not set: run scripts/setup.sh (it makes .venv/libtorch, which .cargo/config.toml points at)");
    };
    let root = PathBuf::from(libtorch);
    let include = root.join("include");
    if !include.join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp").exists() {
        panic!("{} has no c10d headers: LIBTORCH must be the torch 2.11.0 wheel's folder", include.display());
    }
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include("csrc/gloo_decl")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag("-DUSE_C10D_GLOO")
        .file("csrc/dist.cpp")
        .compile("mdm_dist");
    // The c10d symbols live in libtorch_cpu; torch-sys links it too, but after our archive.
    println!("cargo:rustc-link-search=native={}", root.join("lib").display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
