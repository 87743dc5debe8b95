//! Makes libtorch's CUDA backend available. The linker's `--as-needed` drops
//! `libtorch_cuda.so` (nothing references its symbols directly), and then libtorch reports no
//! CUDA devices. Loading it once, globally, before the first CUDA query registers the backend.

/// Loads `libtorch_cuda.so` if it can be found (rpath, `LD_LIBRARY_PATH`); a CPU-only libtorch
/// simply has none, and CUDA then reports unavailable as usual. Returns what happened, for logs.
pub fn load_torch_cuda() -> Result<(), String> {
    let name = c"libtorch_cuda.so";
    // SAFETY: dlopen with a valid NUL-terminated name; the handle is deliberately never closed.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a thread-local C string or null.
        let err = unsafe { libc::dlerror() };
        let msg = if err.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: non-null dlerror result is a valid C string.
            unsafe { std::ffi::CStr::from_ptr(err) }.to_string_lossy().into_owned()
        };
        return Err(msg);
    }
    Ok(())
}
