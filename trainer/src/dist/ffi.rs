//! The C functions of `csrc/dist.cpp`. Tensors cross as libtch's `at::Tensor*`.

use std::ffi::c_void;
use std::os::raw::{c_char, c_int, c_longlong};

use tch::Tensor;

#[repr(C)]
pub(crate) struct RawGroup {
    _private: [u8; 0],
}

extern "C" {
    pub(crate) fn mdm_pg_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: c_longlong,
        out: *mut *mut RawGroup,
        err: *mut c_char,
        n: usize,
    ) -> c_int;
    pub(crate) fn mdm_pg_free(pg: *mut RawGroup);
    pub(crate) fn mdm_pg_allreduce(pg: *mut RawGroup, t: *mut c_void, op: c_int, err: *mut c_char, n: usize) -> c_int;
    pub(crate) fn mdm_pg_broadcast(pg: *mut RawGroup, t: *mut c_void, root: c_int, err: *mut c_char, n: usize) -> c_int;
    pub(crate) fn mdm_pg_barrier(pg: *mut RawGroup, err: *mut c_char, n: usize) -> c_int;
    pub(crate) fn mdm_store_set(pg: *mut RawGroup, key: *const c_char, value: *const c_char, err: *mut c_char, n: usize) -> c_int;
    pub(crate) fn mdm_store_try_get(
        pg: *mut RawGroup,
        key: *const c_char,
        buf: *mut c_char,
        cap: usize,
        err: *mut c_char,
        n: usize,
    ) -> c_int;
    pub(crate) fn mdm_set_grad(var: *mut c_void, grad: *mut c_void, err: *mut c_char, n: usize) -> c_int;
}

/// libtch's handle of a tensor (`at::Tensor*`), as the C functions take it.
pub(crate) fn raw(t: &Tensor) -> *mut c_void {
    t.as_ptr() as *mut c_void
}

/// Calls `f` with an error buffer; `Err(message)` when it returns a negative code.
pub(crate) fn call(f: impl FnOnce(*mut c_char, usize) -> c_int) -> Result<c_int, String> {
    let mut buf = vec![0u8; 4096];
    let rc = f(buf.as_mut_ptr() as *mut c_char, buf.len());
    if rc < 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let msg = String::from_utf8_lossy(&buf[..end]).trim().to_string();
        return Err(if msg.is_empty() { "c10d error without a message".into() } else { msg });
    }
    Ok(rc)
}
