//! One module per subcommand: clap arguments plus a `run` that returns an exit code.

pub mod demo;
pub mod embed;
pub mod eval;
pub mod ingest;
pub mod loader;
pub mod make_tiny_t5;
pub mod model;
pub mod sample;
pub mod sample_manifest;
pub mod shards;
pub mod t5;
pub mod train;

/// For commands that run libtorch networks on the CPU: keep freed memory in the process for
/// reuse instead of giving it back to the system after every tensor. glibc serves blocks over
/// its mmap threshold (at most 32 MiB by default) with fresh mappings, so each activation of
/// a batch was new zeroed pages: 10 of 33 CPU seconds of `eval fid-stats` were page faults
/// (bench/eval/README.md). The cost is that the process stays at its peak memory.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before the heavy work starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
