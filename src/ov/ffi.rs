//! Loading the OpenVINO runtime and our C++ shim, and the shim's function table.
//!
//! Order matters: libopenvino is dlopened first with `RTLD_GLOBAL` from the private runtime dir
//! (so its `$ORIGIN` RPATH finds libtbb and the plugins there, and not libtbbbind); then the
//! shim, embedded in this binary, is written to a memfd and dlopened from `/proc/self/fd/N`. Its
//! `NEEDED libopenvino.so.2641` is satisfied by the already-loaded soname, so no rpath and no
//! `LD_LIBRARY_PATH` are needed. The declarations mirror `ov_shim/seqcore_ov.h`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::OvError;

/// The runtime library we load (and the shim was linked against).
pub const OPENVINO_LIB: &str = "libopenvino.so.2641";
/// The OpenVINO release the shim was built against (checked again at load by the shim itself).
pub const OPENVINO_VERSION: &str = "2026.4.1";

/// The shim, built by build/ov_shim.rs.
static SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libseqcore_ov.so"));

/// Size of the error buffers handed to the shim.
pub const ERR_LEN: usize = 2048;

#[repr(C)]
pub struct ScCore {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct ScModel {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct ScRequest {
    _opaque: [u8; 0],
}

pub const SC_INPUT: c_int = 0;
pub const SC_OUTPUT: c_int = 1;
pub const SC_STATE: c_int = 2;

pub const SC_HINT_INFERENCE_PRECISION: c_int = 0;
pub const SC_HINT_EXECUTION_MODE: c_int = 1;

/// The shim's functions, resolved once with dlsym. See `ov_shim/seqcore_ov.h` for contracts.
pub struct Api {
    pub check_version: unsafe extern "C" fn(*mut c_char, usize, *mut c_char, usize) -> c_int,
    pub core_new: unsafe extern "C" fn(*mut *mut ScCore, *mut c_char, usize) -> c_int,
    pub core_free: unsafe extern "C" fn(*mut ScCore),
    #[allow(clippy::type_complexity)]
    pub compile: unsafe extern "C" fn(
        *mut ScCore,
        *const c_char,
        c_int,
        usize,
        *const *const c_char,
        *const *const c_char,
        usize,
        *mut *mut ScModel,
        *mut c_char,
        usize,
    ) -> c_int,
    pub model_free: unsafe extern "C" fn(*mut ScModel),
    pub model_share: unsafe extern "C" fn(*const ScModel) -> *mut ScModel,
    pub model_num: unsafe extern "C" fn(*const ScModel, c_int) -> usize,
    #[allow(clippy::type_complexity)]
    pub model_desc: unsafe extern "C" fn(
        *const ScModel,
        c_int,
        usize,
        *mut *const c_char,
        *mut usize,
        *mut c_int,
        *mut *const usize,
        *mut usize,
        *mut usize,
    ) -> c_int,
    pub model_hint: unsafe extern "C" fn(*const ScModel, c_int) -> *const c_char,
    pub model_state_in_place: unsafe extern "C" fn(*const ScModel, usize) -> c_int,
    pub request_new: unsafe extern "C" fn(*mut ScModel, *mut *mut ScRequest, *mut c_char, usize) -> c_int,
    pub request_free: unsafe extern "C" fn(*mut ScRequest),
    pub request_input: unsafe extern "C" fn(*mut ScRequest, usize) -> *mut c_void,
    pub request_output: unsafe extern "C" fn(*mut ScRequest, usize) -> *mut c_void,
    pub request_infer: unsafe extern "C" fn(*mut ScRequest, *mut c_char, usize) -> c_int,
    pub request_reset_states: unsafe extern "C" fn(*mut ScRequest, *mut c_char, usize) -> c_int,
    pub request_save_state:
        unsafe extern "C" fn(*mut ScRequest, usize, *mut c_void, usize, *mut c_char, usize) -> c_int,
    pub request_restore_state:
        unsafe extern "C" fn(*mut ScRequest, usize, *const c_void, usize, *mut c_char, usize) -> c_int,
}

/// The last `dlerror()` message.
fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl* call on
    // this thread; we copy it out immediately.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        "unknown dlopen error".to_string()
    } else {
        // SAFETY: non-null, NUL-terminated (see above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

fn dlopen(path: &Path, flags: c_int) -> Result<*mut c_void, OvError> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| OvError::new(format!("path {} contains a NUL byte", path.display())))?;
    // SAFETY: `c` is a valid NUL-terminated path; dlopen has no other preconditions. Loading
    // runs the library's initialisers, which for OpenVINO/TBB/our shim are known-benign.
    let h = unsafe { libc::dlopen(c.as_ptr(), flags) };
    if h.is_null() {
        return Err(OvError::new(format!("cannot load {}: {}", path.display(), dl_error())));
    }
    Ok(h)
}

/// Loads libopenvino from `dir` (which must contain it) and then the embedded shim, checks the
/// runtime's version and resolves the function table. Returns the table and the runtime's
/// build number.
pub fn open(dir: &Path) -> Result<(Api, String), OvError> {
    // Not canonicalized on purpose: libopenvino's `$ORIGIN` (and TBB's own lookup of
    // libtbbbind) follow the path we open, which must stay inside the runtime dir even when
    // its entries are symlinks into the wheel.
    dlopen(&dir.join(OPENVINO_LIB), libc::RTLD_NOW | libc::RTLD_GLOBAL)?;
    let shim = open_shim()?;

    // SAFETY (for every `sym` below): the shim defines each symbol as an `extern "C"` function
    // whose signature is exactly the type of the field it is assigned to (see
    // ov_shim/seqcore_ov.h); the shim is never dlclosed, so the pointers stay valid.
    let api = unsafe {
        Api {
            check_version: sym(shim, c"sc_check_version")?,
            core_new: sym(shim, c"sc_core_new")?,
            core_free: sym(shim, c"sc_core_free")?,
            compile: sym(shim, c"sc_compile")?,
            model_free: sym(shim, c"sc_model_free")?,
            model_share: sym(shim, c"sc_model_share")?,
            model_num: sym(shim, c"sc_model_num")?,
            model_desc: sym(shim, c"sc_model_desc")?,
            model_hint: sym(shim, c"sc_model_hint")?,
            model_state_in_place: sym(shim, c"sc_model_state_in_place")?,
            request_new: sym(shim, c"sc_request_new")?,
            request_free: sym(shim, c"sc_request_free")?,
            request_input: sym(shim, c"sc_request_input")?,
            request_output: sym(shim, c"sc_request_output")?,
            request_infer: sym(shim, c"sc_request_infer")?,
            request_reset_states: sym(shim, c"sc_request_reset_states")?,
            request_save_state: sym(shim, c"sc_request_save_state")?,
            request_restore_state: sym(shim, c"sc_request_restore_state")?,
        }
    };

    let mut ver = [0 as c_char; 256];
    let mut err = ErrBuf::new();
    // SAFETY: both buffers are writable for the lengths passed; the shim NUL-terminates.
    let rc = unsafe { (api.check_version)(ver.as_mut_ptr(), ver.len(), err.ptr(), ERR_LEN) };
    // SAFETY: `ver` was zero-initialised and the shim writes at most len-1 bytes plus a NUL.
    let version = unsafe { CStr::from_ptr(ver.as_ptr()) }.to_string_lossy().into_owned();
    if rc != 0 {
        // SAFETY: rc != 0 means the shim wrote a NUL-terminated message into `err`.
        return Err(unsafe { err.error() });
    }
    Ok((api, version))
}

/// Resolves `name` in the shim as a function pointer of type `F`.
///
/// # Safety
/// `handle` must be a live dlopen handle, and `F` must be the exact `extern "C"` function
/// pointer type of the symbol's definition.
unsafe fn sym<F: Copy>(handle: *mut c_void, name: &CStr) -> Result<F, OvError> {
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: `handle` is live and `name` NUL-terminated (caller contract / CStr).
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if p.is_null() {
        return Err(OvError::new(format!(
            "seqcore's OpenVINO shim lacks symbol {}: {}",
            name.to_string_lossy(),
            dl_error()
        )));
    }
    // SAFETY: non-null, same size as F (asserted), and F is the symbol's function pointer type
    // (caller contract).
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) })
}

/// Writes the embedded shim to a memfd and dlopens it through `/proc/self/fd`.
fn open_shim() -> Result<*mut c_void, OvError> {
    if SHIM.is_empty() {
        return Err(OvError::new(
            "this binary was built without OpenVINO (SEQCORE_WITHOUT_OPENVINO=1) and cannot load models: \
             run 'make setup' and rebuild",
        ));
    }
    // SAFETY: the name is a NUL-terminated literal; memfd_create has no other preconditions.
    let raw = unsafe { libc::memfd_create(c"seqcore_ov".as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(OvError::new(format!(
            "memfd_create for seqcore's OpenVINO shim failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `raw` is a fresh descriptor we exclusively own; OwnedFd closes it on drop (after
    // dlopen has mapped the file, which keeps its own reference).
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut file = std::fs::File::from(fd);
    file.write_all(SHIM).map_err(|e| OvError::new(format!("writing seqcore's OpenVINO shim to a memfd: {e}")))?;
    use std::os::fd::AsRawFd;
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let h = dlopen(&path, libc::RTLD_NOW | libc::RTLD_LOCAL)
        .map_err(|e| OvError::new(format!("loading seqcore's OpenVINO shim: {e}")))?;
    drop(file);
    Ok(h)
}

/// An uninitialised error buffer for one shim call (not zeroed: only read after a failure).
pub struct ErrBuf(std::mem::MaybeUninit<[c_char; ERR_LEN]>);

impl ErrBuf {
    #[inline]
    pub fn new() -> Self {
        ErrBuf(std::mem::MaybeUninit::uninit())
    }
    #[inline]
    pub fn ptr(&mut self) -> *mut c_char {
        self.0.as_mut_ptr().cast()
    }
    /// The message the shim wrote.
    ///
    /// # Safety
    /// Only after a shim call with this buffer returned nonzero (it then wrote a NUL-terminated
    /// string into it).
    pub unsafe fn error(&self) -> OvError {
        // SAFETY: guaranteed by the caller (see above).
        let s = unsafe { CStr::from_ptr(self.0.as_ptr().cast()) };
        OvError::new(s.to_string_lossy().into_owned())
    }
}
