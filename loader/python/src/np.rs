//! The three entries of NumPy's C array API that [`view`] needs, found through the
//! `_ARRAY_API` capsule at run time (as numpy's own headers do), so the crate needs no numpy
//! crate (whose `num-*` features would change the whole workspace's build).

use std::ffi::{c_int, c_void};
use std::ptr::{null_mut, NonNull};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyCapsule;

/// NumPy type numbers (`NPY_TYPES`), with their item sizes.
#[derive(Clone, Copy)]
pub enum Dtype {
    Bool,
    U8,
    U16,
    U32,
    I64,
    U64,
    F16,
}

impl Dtype {
    fn number(self) -> c_int {
        match self {
            Dtype::Bool => 0,
            Dtype::U8 => 2,
            Dtype::U16 => 4,
            Dtype::U32 => 6,
            Dtype::I64 => 9,
            Dtype::U64 => 10,
            Dtype::F16 => 23,
        }
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 => 1,
            Dtype::U16 | Dtype::F16 => 2,
            Dtype::U32 => 4,
            Dtype::I64 | Dtype::U64 => 8,
        }
    }
}

const NPY_ARRAY_WRITEABLE: c_int = 0x0400;
// Slots of the API table (numpy/_core/code_generators/numpy_api.py).
const ARRAY_TYPE: usize = 2;
const DESCR_FROM_TYPE: usize = 45;
const NEW_FROM_DESCR: usize = 94;
const SET_BASE_OBJECT: usize = 282;

type DescrFromType = unsafe extern "C" fn(c_int) -> *mut c_void;
type NewFromDescr =
    unsafe extern "C" fn(*mut c_void, *mut c_void, c_int, *mut isize, *mut isize, *mut c_void, c_int, *mut pyo3::ffi::PyObject) -> *mut pyo3::ffi::PyObject;
type SetBaseObject = unsafe extern "C" fn(*mut pyo3::ffi::PyObject, *mut pyo3::ffi::PyObject) -> c_int;

struct Api(NonNull<*const c_void>);
// SAFETY: the table is static data inside numpy's extension module, kept loaded (see `api`).
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

fn api(py: Python<'_>) -> PyResult<&'static Api> {
    static API: PyOnceLock<Api> = PyOnceLock::new();
    API.get_or_try_init(py, || {
        let module = py.import("numpy._core.multiarray").or_else(|_| py.import("numpy.core.multiarray"))?;
        let capsule = module.getattr("_ARRAY_API")?.cast_into::<PyCapsule>()?;
        let table = capsule.pointer_checked(None)?.cast::<*const c_void>();
        // Keep the capsule (and so the table) alive for the life of the process.
        std::mem::forget(capsule);
        Ok(Api(table))
    })
}

impl Api {
    /// SAFETY: `slot` must hold a function of type `F`.
    unsafe fn slot<F: Copy>(&self, slot: usize) -> F {
        unsafe { std::mem::transmute_copy(&*self.0.as_ptr().add(slot)) }
    }
}

/// A C-contiguous array of `shape` over the `len` bytes at `data`, with `owner` as its base.
///
/// # Safety
/// `data` must hold `product(shape) * dtype.size()` bytes that stay valid, and are not used by
/// Rust through references, for as long as `owner` lives.
pub unsafe fn view<'py>(owner: &Bound<'py, PyAny>, data: *mut u8, len: usize, dtype: Dtype, shape: &[usize]) -> PyResult<Bound<'py, PyAny>> {
    let py = owner.py();
    if shape.iter().product::<usize>() * dtype.size() != len {
        return Err(pyo3::exceptions::PyRuntimeError::new_err(format!("array shape {shape:?} does not fit a buffer of {len} bytes")));
    }
    let api = api(py)?;
    let mut dims: Vec<isize> = shape.iter().map(|&d| d as isize).collect();
    let fail = || PyErr::take(py).unwrap_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("numpy could not create an array"));
    unsafe {
        let descr = api.slot::<DescrFromType>(DESCR_FROM_TYPE)(dtype.number());
        let array_type = *api.0.as_ptr().add(ARRAY_TYPE) as *mut c_void;
        let flags = NPY_ARRAY_WRITEABLE;
        let ptr = api.slot::<NewFromDescr>(NEW_FROM_DESCR)(array_type, descr, dims.len() as c_int, dims.as_mut_ptr(), null_mut(), data.cast(), flags, null_mut());
        if ptr.is_null() {
            return Err(fail());
        }
        let array = Bound::from_owned_ptr(py, ptr);
        // SetBaseObject steals the reference it is given.
        if api.slot::<SetBaseObject>(SET_BASE_OBJECT)(ptr, owner.clone().into_ptr()) < 0 {
            return Err(fail());
        }
        Ok(array)
    }
}
