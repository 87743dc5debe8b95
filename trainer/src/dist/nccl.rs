//! NCCL for CUDA tensors: the `libnccl.so.2` that libtorch_cuda itself loads, reached through its
//! stable C API (`dlopen`/`dlsym`, so a CPU machine without NCCL still runs). The communicator's
//! unique id travels through the c10d TCPStore of the Gloo group. Collectives run on the legacy
//! default stream (tch's), and each wait polls the stream and NCCL's async error, aborting the
//! communicator after the group's timeout, so a dead peer never hangs a rank.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::time::{Duration, Instant};

use tch::{Device, Kind, Tensor};

type NcclComm = *mut c_void;
type CudaStream = *mut c_void;

/// `ncclUniqueId`: 128 opaque bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId([u8; 128]);

const NCCL_SUCCESS: c_int = 0;
const NCCL_IN_PROGRESS: c_int = 7;
const CUDA_SUCCESS: c_int = 0;
const CUDA_NOT_READY: c_int = 600;
/// `ncclRedOp_t`.
pub(crate) const SUM: c_int = 0;
pub(crate) const MAX: c_int = 2;

struct Api {
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut NcclComm, c_int, UniqueId, c_int) -> c_int,
    all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, NcclComm, CudaStream) -> c_int,
    broadcast: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, NcclComm, CudaStream) -> c_int,
    async_error: unsafe extern "C" fn(NcclComm, *mut c_int) -> c_int,
    abort: unsafe extern "C" fn(NcclComm) -> c_int,
    destroy: unsafe extern "C" fn(NcclComm) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    set_device: unsafe extern "C" fn(c_int) -> c_int,
    stream_query: unsafe extern "C" fn(CudaStream) -> c_int,
}

fn open(names: &[&str]) -> Result<*mut c_void, String> {
    for n in names {
        let c = CString::new(*n).map_err(|e| e.to_string())?;
        // SAFETY: dlopen with a valid C string; the handle stays open for the process.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if !h.is_null() {
            return Ok(h);
        }
    }
    Err(format!("none of {names:?} could be loaded (is this a CUDA build of libtorch with its NCCL?)"))
}

fn sym<T: Copy>(h: *mut c_void, name: &str) -> Result<T, String> {
    let c = CString::new(name).map_err(|e| e.to_string())?;
    // SAFETY: dlsym on a live handle; the caller names the symbol's true C signature as T.
    let p = unsafe { libc::dlsym(h, c.as_ptr()) };
    if p.is_null() {
        return Err(format!("symbol {name} not found"));
    }
    // SAFETY: T is a function pointer type of the same size as a data pointer.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

impl Api {
    fn load() -> Result<Api, String> {
        let nccl = open(&["libnccl.so.2", "libnccl.so"])?;
        let cudart = open(&["libcudart.so.13", "libcudart.so.12", "libcudart.so"])?;
        Ok(Api {
            get_unique_id: sym(nccl, "ncclGetUniqueId")?,
            comm_init_rank: sym(nccl, "ncclCommInitRank")?,
            all_reduce: sym(nccl, "ncclAllReduce")?,
            broadcast: sym(nccl, "ncclBroadcast")?,
            async_error: sym(nccl, "ncclCommGetAsyncError")?,
            abort: sym(nccl, "ncclCommAbort")?,
            destroy: sym(nccl, "ncclCommDestroy")?,
            error_string: sym(nccl, "ncclGetErrorString")?,
            set_device: sym(cudart, "cudaSetDevice")?,
            stream_query: sym(cudart, "cudaStreamQuery")?,
        })
    }

    fn err(&self, rc: c_int) -> String {
        // SAFETY: NCCL returns a static string for any result code.
        let p = unsafe { (self.error_string)(rc) };
        if p.is_null() {
            return format!("NCCL error {rc}");
        }
        // SAFETY: non-null static C string.
        format!("NCCL error {rc}: {}", unsafe { CStr::from_ptr(p) }.to_string_lossy())
    }
}

/// One NCCL communicator on `cuda:device`.
pub(crate) struct Nccl {
    api: Api,
    comm: NcclComm,
    timeout: Duration,
    aborted: bool,
}

// SAFETY: the communicator is used from the training thread only; Send lets the group move.
unsafe impl Send for Nccl {}

/// The `ncclDataType_t` of a tensor kind.
fn dtype(kind: Kind) -> Result<c_int, String> {
    Ok(match kind {
        Kind::Uint8 => 1,
        Kind::Int => 2,
        Kind::Int64 => 4,
        Kind::Half => 6,
        Kind::Float => 7,
        Kind::Double => 8,
        Kind::BFloat16 => 9,
        k => return Err(format!("NCCL cannot reduce {k:?} tensors")),
    })
}

impl Nccl {
    /// Builds the communicator: rank 0 makes the unique id and publishes it with `publish`,
    /// the others read it with `fetch` (which waits for it).
    pub(crate) fn new(
        rank: usize,
        world: usize,
        device: usize,
        timeout: Duration,
        publish: impl FnOnce(&str) -> Result<(), String>,
        fetch: impl FnOnce() -> Result<String, String>,
    ) -> Result<Nccl, String> {
        let api = Api::load()?;
        // SAFETY: a plain CUDA runtime call.
        let rc = unsafe { (api.set_device)(device as c_int) };
        if rc != CUDA_SUCCESS {
            return Err(format!("cudaSetDevice({device}) failed with CUDA error {rc}"));
        }
        let mut id = UniqueId([0; 128]);
        if rank == 0 {
            // SAFETY: writes 128 bytes into `id`.
            let rc = unsafe { (api.get_unique_id)(&mut id) };
            if rc != NCCL_SUCCESS {
                return Err(api.err(rc));
            }
            publish(&hex(&id.0))?;
        } else {
            let text = fetch()?;
            let bytes = unhex(&text).filter(|b| b.len() == 128).ok_or("the NCCL id in the store is malformed")?;
            id.0.copy_from_slice(&bytes);
        }
        let mut comm: NcclComm = std::ptr::null_mut();
        // SAFETY: out pointer, the id by value, as ncclCommInitRank takes them.
        let rc = unsafe { (api.comm_init_rank)(&mut comm, world as c_int, id, rank as c_int) };
        if rc != NCCL_SUCCESS {
            return Err(format!("ncclCommInitRank (rank {rank} of {world}): {}", api.err(rc)));
        }
        Ok(Nccl { api, comm, timeout, aborted: false })
    }

    /// In-place all-reduce of a contiguous CUDA tensor (`op`: [`SUM`] or [`MAX`]).
    pub(crate) fn all_reduce(&mut self, t: &Tensor, op: c_int) -> Result<(), String> {
        self.check(t)?;
        let p = t.data_ptr();
        // SAFETY: a live contiguous device buffer of numel elements; legacy default stream.
        let rc = unsafe {
            (self.api.all_reduce)(p, p, t.numel(), dtype(t.kind())?, op, self.comm, std::ptr::null_mut())
        };
        self.finish(rc)
    }

    /// In-place broadcast from `root`.
    pub(crate) fn broadcast(&mut self, t: &Tensor, root: usize) -> Result<(), String> {
        self.check(t)?;
        let p = t.data_ptr();
        // SAFETY: as in all_reduce.
        let rc = unsafe {
            (self.api.broadcast)(p, p, t.numel(), dtype(t.kind())?, root as c_int, self.comm, std::ptr::null_mut())
        };
        self.finish(rc)
    }

    fn check(&self, t: &Tensor) -> Result<(), String> {
        if self.aborted {
            return Err("the NCCL communicator was aborted after an earlier failure".into());
        }
        if !matches!(t.device(), Device::Cuda(_)) || !t.is_contiguous() {
            return Err("NCCL takes contiguous CUDA tensors".into());
        }
        Ok(())
    }

    /// Waits for the enqueued collective: stream done, or NCCL's async error, or the timeout
    /// (then the communicator is aborted so nothing stays blocked).
    fn finish(&mut self, rc: c_int) -> Result<(), String> {
        if rc != NCCL_SUCCESS && rc != NCCL_IN_PROGRESS {
            return Err(self.api.err(rc));
        }
        let t0 = Instant::now();
        loop {
            // SAFETY: querying the legacy default stream.
            match unsafe { (self.api.stream_query)(std::ptr::null_mut()) } {
                CUDA_SUCCESS => return Ok(()),
                CUDA_NOT_READY => {}
                e => return Err(format!("CUDA error {e} while waiting for NCCL")),
            }
            let mut async_rc = NCCL_SUCCESS;
            // SAFETY: a live communicator and an out int.
            unsafe { (self.api.async_error)(self.comm, &mut async_rc) };
            if async_rc != NCCL_SUCCESS && async_rc != NCCL_IN_PROGRESS {
                self.abort();
                return Err(self.api.err(async_rc));
            }
            if t0.elapsed() > self.timeout {
                self.abort();
                return Err(format!("NCCL collective did not finish within {:?}", self.timeout));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn abort(&mut self) {
        if !self.aborted {
            // SAFETY: a live communicator, aborted once.
            unsafe { (self.api.abort)(self.comm) };
            self.aborted = true;
        }
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        if !self.aborted {
            // SAFETY: a live communicator, destroyed once.
            unsafe { (self.api.destroy)(self.comm) };
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Whether NCCL can be loaded here (false on CPU machines).
pub fn available() -> bool {
    Api::load().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_id_round_trips_through_hex() {
        let b: Vec<u8> = (0..128u32).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(unhex(&hex(&b)), Some(b));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn kinds_map_to_nccl_types() {
        assert_eq!(dtype(Kind::Float), Ok(7));
        assert_eq!(dtype(Kind::BFloat16), Ok(9));
        assert!(dtype(Kind::Bool).is_err());
    }
}
