//! Data-parallel training on libtorch's own collectives: a c10d `TCPStore` rendezvous and a
//! `ProcessGroupGloo` (the engines under PyTorch DDP), reached through `csrc/dist.cpp`.
//!
//! - [`Launch`]: rank, world, local rank and master address from torchrun's or Slurm's
//!   environment (`RANK`/`WORLD_SIZE`/`LOCAL_RANK`/`MASTER_ADDR`/`MASTER_PORT`, or
//!   `SLURM_PROCID`/`SLURM_NTASKS`/`SLURM_LOCALID` with the first host of the allocation);
//! - [`Group`]: all-reduce, broadcast and barrier of tensors, every call bounded by the
//!   group's timeout. A heartbeat thread per rank stamps the store each second, so a failed
//!   collective names the ranks that stopped answering instead of hanging or saying "peer
//!   closed".
//!
//! CUDA tensors go through NCCL once [`Group::enable_nccl`] ran (the `libnccl.so.2` libtorch
//! loads, its id exchanged through the same store); without it they are staged through host
//! memory and reduced by Gloo.

mod ffi;
mod launch;
mod nccl;

use std::ffi::CString;
use std::os::raw::c_char;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tch::{Device, Kind, Tensor};

pub use launch::{first_slurm_host, Launch};
pub use nccl::available as nccl_available;

use crate::error::{Error, Result};

/// A process group of `world` ranks.
pub struct Group {
    raw: RawPtr,
    pub rank: usize,
    pub world: usize,
    timeout: Duration,
    alive: Arc<AtomicBool>,
    heartbeat: Option<JoinHandle<()>>,
    nccl: Option<std::sync::Mutex<nccl::Nccl>>,
}

/// The C++ group; c10d's store and Gloo group are safe to call from several threads.
#[derive(Clone, Copy)]
struct RawPtr(*mut ffi::RawGroup);
// SAFETY: the pointee is a c10d TCPStore + ProcessGroupGloo, both internally synchronised.
unsafe impl Send for RawPtr {}
// SAFETY: as above.
unsafe impl Sync for RawPtr {}

impl RawPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut ffi::RawGroup {
        self.0
    }
}

/// Seconds between heartbeats, and the age after which a rank counts as gone.
const BEAT: Duration = Duration::from_secs(1);
const STALE: Duration = Duration::from_secs(4);

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

impl Group {
    /// Joins the group described by `launch` (rank 0 serves the store at the master address);
    /// waits at most `timeout` for every rank, which also bounds each later collective.
    pub fn connect(launch: &Launch, timeout: Duration) -> Result<Group> {
        let host = CString::new(launch.master_addr.clone())
            .map_err(|_| Error::Dist { rank: launch.rank, msg: "MASTER_ADDR contains a NUL byte".into() })?;
        let mut raw = std::ptr::null_mut();
        ffi::call(|err, n| {
            // SAFETY: valid C string, out pointer and error buffer of `n` bytes.
            unsafe {
                ffi::mdm_pg_new(
                    host.as_ptr(),
                    launch.master_port as i32,
                    launch.rank as i32,
                    launch.world as i32,
                    timeout.as_millis() as i64,
                    &mut raw,
                    err,
                    n,
                )
            }
        })
        .map_err(|msg| Error::Dist {
            rank: launch.rank,
            msg: format!(
                "rendezvous at {}:{} ({} ranks, timeout {:?}) failed: {msg}",
                launch.master_addr, launch.master_port, launch.world, timeout
            ),
        })?;
        let alive = Arc::new(AtomicBool::new(true));
        let mut g = Group { raw: RawPtr(raw), rank: launch.rank, world: launch.world, timeout, alive, heartbeat: None, nccl: None };
        g.beat()?;
        let (ptr, rank, alive) = (g.raw, g.rank, Arc::clone(&g.alive));
        g.heartbeat = Some(std::thread::spawn(move || {
            let key = CString::new(format!("mdm/alive/{rank}")).unwrap_or_default();
            while alive.load(Ordering::Relaxed) {
                std::thread::sleep(BEAT);
                let value = CString::new(now_ms().to_string()).unwrap_or_default();
                // SAFETY: the group outlives this thread (joined in Drop before the free).
                if ffi::call(|e, n| unsafe { ffi::mdm_store_set(ptr.get(), key.as_ptr(), value.as_ptr(), e, n) }).is_err() {
                    break;
                }
            }
        }));
        Ok(g)
    }

    fn beat(&self) -> Result<()> {
        let key = CString::new(format!("mdm/alive/{}", self.rank)).unwrap_or_default();
        let value = CString::new(now_ms().to_string()).unwrap_or_default();
        // SAFETY: valid group and C strings.
        ffi::call(|e, n| unsafe { ffi::mdm_store_set(self.raw.0, key.as_ptr(), value.as_ptr(), e, n) })
            .map(|_| ())
            .map_err(|msg| Error::Dist { rank: self.rank, msg: format!("store: {msg}") })
    }

    /// Sets up NCCL on `cuda:device` for this group's CUDA tensors (rank 0 publishes the
    /// communicator's id in the store).
    pub fn enable_nccl(&mut self, device: usize) -> Result<()> {
        let key = "mdm/nccl_id";
        let (rank, timeout) = (self.rank, self.timeout);
        let n = nccl::Nccl::new(
            self.rank,
            self.world,
            device,
            self.timeout,
            |id| self.store_set(key, id),
            || self.store_wait(key, timeout),
        )
        .map_err(|msg| Error::Dist {
            rank,
            msg: format!("NCCL set-up on cuda:{device} failed: {msg} (MDM_DIST_BACKEND=gloo uses Gloo for CUDA tensors instead)"),
        })?;
        self.nccl = Some(std::sync::Mutex::new(n));
        Ok(())
    }

    /// The backend CUDA tensors use.
    pub fn cuda_backend(&self) -> &'static str {
        if self.nccl.is_some() {
            "NCCL"
        } else {
            "Gloo (staged through host memory)"
        }
    }

    fn store_set(&self, key: &str, value: &str) -> std::result::Result<(), String> {
        let k = CString::new(key).map_err(|e| e.to_string())?;
        let v = CString::new(value).map_err(|e| e.to_string())?;
        // SAFETY: valid group and C strings.
        ffi::call(|e, n| unsafe { ffi::mdm_store_set(self.raw.0, k.as_ptr(), v.as_ptr(), e, n) }).map(|_| ())
    }

    /// Polls the store for `key` until it is set (at most `timeout`).
    fn store_wait(&self, key: &str, timeout: Duration) -> std::result::Result<String, String> {
        let k = CString::new(key).map_err(|e| e.to_string())?;
        let t0 = std::time::Instant::now();
        loop {
            let mut buf = vec![0u8; 1024];
            // SAFETY: valid group, key and buffers.
            let got = ffi::call(|e, n| unsafe {
                ffi::mdm_store_try_get(self.raw.0, k.as_ptr(), buf.as_mut_ptr() as *mut c_char, buf.len(), e, n)
            })?;
            if got == 1 {
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                return Ok(String::from_utf8_lossy(&buf[..end]).into_owned());
            }
            if t0.elapsed() > timeout {
                return Err(format!("{key} was not set within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The collective timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// In-place sum over ranks.
    pub fn all_reduce_sum(&self, t: &Tensor, what: &str) -> Result<()> {
        self.reduce(t, 0, what)
    }

    /// In-place maximum over ranks.
    pub fn all_reduce_max(&self, t: &Tensor, what: &str) -> Result<()> {
        self.reduce(t, 1, what)
    }

    fn reduce(&self, t: &Tensor, op: i32, what: &str) -> Result<()> {
        if let Some(r) = self.on_nccl(t, what, |n, t| n.all_reduce(t, if op == 1 { nccl::MAX } else { nccl::SUM })) {
            return r;
        }
        self.staged(t, what, |host| {
            // SAFETY: a valid group and a live, contiguous CPU tensor.
            ffi::call(|e, n| unsafe { ffi::mdm_pg_allreduce(self.raw.0, ffi::raw(host), op, e, n) })
        })
    }

    /// In-place broadcast of rank `root`'s `t`.
    pub fn broadcast(&self, t: &Tensor, root: usize, what: &str) -> Result<()> {
        if let Some(r) = self.on_nccl(t, what, |n, t| n.broadcast(t, root)) {
            return r;
        }
        self.staged(t, what, |host| {
            // SAFETY: a valid group and a live, contiguous CPU tensor.
            ffi::call(|e, n| unsafe { ffi::mdm_pg_broadcast(self.raw.0, ffi::raw(host), root as i32, e, n) })
        })
    }

    /// Waits for every rank.
    pub fn barrier(&self, what: &str) -> Result<()> {
        // SAFETY: a valid group.
        ffi::call(|e, n| unsafe { ffi::mdm_pg_barrier(self.raw.0, e, n) })
            .map(|_| ())
            .map_err(|msg| self.failure(what, &msg))
    }

    /// Runs `op` on NCCL when `t` is a CUDA tensor and NCCL is set up (a contiguous copy when
    /// `t` is not contiguous); `None`: not for NCCL.
    fn on_nccl(
        &self,
        t: &Tensor,
        what: &str,
        op: impl FnOnce(&mut nccl::Nccl, &Tensor) -> std::result::Result<(), String>,
    ) -> Option<Result<()>> {
        let n = self.nccl.as_ref().filter(|_| matches!(t.device(), Device::Cuda(_)))?;
        let mut n = match n.lock() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        let direct = t.is_contiguous();
        let buf = if direct { t.shallow_clone() } else { t.contiguous() };
        Some(op(&mut n, &buf).map_err(|msg| self.failure(what, &msg)).map(|_| {
            if !direct {
                let _g = tch::no_grad_guard();
                let mut t = t.shallow_clone();
                t.copy_(&buf);
            }
        }))
    }

    /// Runs `op` on a contiguous CPU tensor holding `t` (`t` itself when it is one), then copies
    /// the result back.
    fn staged(&self, t: &Tensor, what: &str, op: impl FnOnce(&Tensor) -> std::result::Result<i32, String>) -> Result<()> {
        let direct = t.device() == Device::Cpu && t.is_contiguous();
        let host = if direct { t.shallow_clone() } else { t.to_device(Device::Cpu).contiguous() };
        op(&host).map_err(|msg| self.failure(what, &msg))?;
        if !direct {
            let _g = tch::no_grad_guard();
            let mut t = t.shallow_clone();
            t.copy_(&host);
        }
        Ok(())
    }

    /// A failed collective: names the ranks whose heartbeat stopped (waiting long enough for
    /// a dead rank's stamp to go stale), or the store's host when it is unreachable.
    fn failure(&self, what: &str, msg: &str) -> Error {
        std::thread::sleep(STALE);
        let mut gone = vec![];
        let mut store_lost = false;
        let now = now_ms();
        for r in (0..self.world).filter(|&r| r != self.rank) {
            let key = CString::new(format!("mdm/alive/{r}")).unwrap_or_default();
            let mut buf = vec![0u8; 64];
            // SAFETY: valid group, key and buffers.
            let got = ffi::call(|e, n| unsafe {
                ffi::mdm_store_try_get(self.raw.0, key.as_ptr(), buf.as_mut_ptr() as *mut c_char, buf.len(), e, n)
            });
            match got {
                Err(_) => {
                    store_lost = true;
                    break;
                }
                Ok(0) => gone.push(format!("rank {r} (never reported)")),
                Ok(_) => {
                    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    let at: u128 = String::from_utf8_lossy(&buf[..end]).parse().unwrap_or(0);
                    let age = now.saturating_sub(at);
                    if age > STALE.as_millis() {
                        gone.push(format!("rank {r} (silent for {:.1} s)", age as f64 / 1000.0));
                    }
                }
            }
        }
        let who = if store_lost {
            "rank 0, which hosts the rendezvous store, is unreachable (it died or its host went down)".to_string()
        } else if gone.is_empty() {
            "every rank still has a heartbeat: a rank is stuck, or the network failed".to_string()
        } else {
            format!("{} stopped", gone.join(", "))
        };
        Error::Dist { rank: self.rank, msg: format!("{what} failed (timeout {:?}): {who}; c10d said: {msg}", self.timeout) }
    }

    /// Checks that every rank holds the same value (e.g. a config hash); `what` names it.
    pub fn check_same(&self, value: u64, what: &str) -> Result<()> {
        // 48 bits fit f64 exactly; max(v) and max(−v) agree only if all are equal.
        let v = (value >> 16) as f64;
        let t = Tensor::from_slice(&[v, -v]).to_kind(Kind::Double);
        self.all_reduce_max(&t, what)?;
        let got = Vec::<f64>::try_from(&t).unwrap_or_default();
        if got.len() != 2 || got[0] != v || -got[1] != v {
            return Err(Error::Dist { rank: self.rank, msg: format!("ranks disagree on {what}: start every rank with the same files and flags") });
        }
        Ok(())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        // SAFETY: created by mdm_pg_new, freed once, after the heartbeat thread ended.
        unsafe { ffi::mdm_pg_free(self.raw.0) };
    }
}

/// Sets `var`'s gradient to `grad` (a view into a flat buffer), so that backward
/// accumulates into it in place.
pub fn set_grad(var: &Tensor, grad: &Tensor) -> Result<()> {
    // SAFETY: two live tensors.
    ffi::call(|e, n| unsafe { ffi::mdm_set_grad(ffi::raw(var), ffi::raw(grad), e, n) })
        .map(|_| ())
        .map_err(|msg| Error::input(format!("setting a gradient buffer: {msg}")))
}
