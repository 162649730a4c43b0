//! The OpenVINO layer: the only module that calls OpenVINO and the only one with `unsafe`.
//!
//! OpenVINO's C API has no variable-state functions, so we go through a small C++ shim over the
//! public C++ API (`ov_shim/`), built into `libseqcore_ov.so` by build/ov_shim.rs, embedded in
//! this binary and dlopened at runtime after libopenvino itself (see [`load`]). The binary is
//! never linked against OpenVINO, so it starts without it and reports a one-line error.
//!
//! Threading: [`Runtime`] is process-wide; [`Core`], [`CompiledModel`] and [`InferRequest`] are
//! per shard thread and deliberately not `Send`. Models are compiled with NUM_STREAMS=1,
//! INFERENCE_NUM_THREADS=1 and CPU pinning off, so a synchronous [`InferRequest::infer`] runs
//! entirely on the calling thread. Only static shapes are supported.
//!
//! Hot path: each request owns its input/output tensors, bound once at creation; callers write
//! inputs through [`InferRequest::input_mut`] and read outputs through [`InferRequest::output`]
//! (plain slices, no FFI call). Variable states are addressed by index in
//! [`CompiledModel::states`] order (sorted by name) and saved/restored from caller buffers.

#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

mod engine;
mod ffi;

use std::ffi::{c_char, c_int, CString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::rc::Rc;
#[allow(clippy::disallowed_types, reason = "see LOADING")]
use std::sync::{Mutex, OnceLock};

use ffi::{Api, ErrBuf, ScCore, ScModel, ScRequest, ERR_LEN};
pub use ffi::{OPENVINO_LIB, OPENVINO_VERSION};

/// Memory of one infer request beyond its buffers (the request object, its tensors' and states'
/// handles, and the allocator's share: requests made one by one on a serving shard, between the
/// request path's own allocations). Measured in a server: 800 k live summator sequences (4-byte
/// state) grew RSS by 84 B per sequence with no pool beyond `nireq` and by 318 B with 32 k
/// pooled requests, ≈ 5.8 KiB per request, although 2048 requests made in a row in
/// `benches/swap.rs` take 850 B each; see [`CompiledModel::request_bytes`].
const REQUEST_OVERHEAD_BYTES: usize = 6144;

/// Environment variable naming the runtime directory (overrides the caller's choice).
pub const RUNTIME_DIR_ENV: &str = "SEQCORE_OPENVINO_DIR";

/// An OpenVINO-layer error; its `Display` is the message.
#[derive(Clone, PartialEq, Eq)]
pub struct OvError(String);

impl OvError {
    fn new(msg: impl Into<String>) -> Self {
        OvError(msg.into())
    }
    /// The error for a runtime directory without libopenvino (one line).
    fn runtime_not_found(dir: &Path) -> Self {
        OvError(format!(
            "OpenVINO runtime not found in {} ({OPENVINO_LIB}): run 'make setup' to install openvino=={OPENVINO_VERSION}",
            dir.display()
        ))
    }
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OvError({:?})", self.0)
    }
}

impl std::error::Error for OvError {}

// The element types and port/state signatures are protocol-neutral: they live in
// `crate::signature` so the front ends need not name the FFI layer. Re-exported here for callers
// of this module's API (`CompiledModel::inputs()` returns them).
pub use crate::signature::{ElemType, PortInfo, StateInfo};

/// An element type from the shim's `sc_elem` code (the codes are this layer's business only).
fn elem_from_code(code: c_int) -> Option<ElemType> {
    Some(match code {
        0 => ElemType::F32,
        1 => ElemType::F64,
        2 => ElemType::F16,
        3 => ElemType::BF16,
        4 => ElemType::I8,
        5 => ElemType::I16,
        6 => ElemType::I32,
        7 => ElemType::I64,
        8 => ElemType::U8,
        9 => ElemType::U16,
        10 => ElemType::U32,
        11 => ElemType::U64,
        12 => ElemType::Boolean,
        _ => return None,
    })
}

/// How to compile a model.
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// Apply `ov::pass::LowLatency2` (use_const_initializer=true) before compiling.
    pub low_latency: bool,
    /// Extra CPU plugin properties as strings (e.g. `("INFERENCE_PRECISION_HINT", "f32")`),
    /// applied after seqcore's defaults (NUM_STREAMS=1, INFERENCE_NUM_THREADS=1,
    /// ENABLE_CPU_PINNING=NO), so they may override them.
    pub plugin_config: Vec<(String, String)>,
    /// Compile at this batch size: 0 or 1 compile the IR as it is; B > 1 reshapes an IR whose
    /// inputs and variables all have dimension 0 equal to 1 to B rows (each variable's
    /// initializer broadcast to B rows), so every input, output and state has dimension 0 equal
    /// to B and row j of each is one sequence. An IR that cannot be so reshaped fails with
    /// "model cannot be batched: ...". See docs/batching.md, "Compiled shapes".
    pub batch: usize,
}

/// The loaded OpenVINO runtime and shim (process-wide, see [`load`]).
pub struct Runtime {
    api: Api,
    dir: PathBuf,
    version: String,
}

impl Runtime {
    /// The directory libopenvino was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The runtime's build number, e.g. "2026.4.1-22982-e213a147257-releases/2026/4".
    pub fn version(&self) -> &str {
        &self.version
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime").field("dir", &self.dir).field("version", &self.version).finish()
    }
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
// Loading the runtime happens once per process, before any shard runs, off the request path.
#[allow(clippy::disallowed_types, reason = "one-time process-wide loading, not on the request path")]
static LOADING: Mutex<()> = Mutex::new(());

/// The runtime directory [`load`] uses: `$SEQCORE_OPENVINO_DIR`, else `dir`, else the
/// checkout's `.ov-runtime` (made by `make setup`). Made absolute, symlinks not resolved.
pub fn runtime_dir(dir: Option<&Path>) -> PathBuf {
    let chosen = match std::env::var_os(RUNTIME_DIR_ENV) {
        Some(env) if !env.is_empty() => PathBuf::from(env),
        _ => match dir {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from(env!("SEQCORE_OV_RUNTIME_DEFAULT")),
        },
    };
    std::path::absolute(&chosen).unwrap_or(chosen)
}

/// Loads the OpenVINO runtime from [`runtime_dir`]`(dir)` and our shim, once per process.
///
/// Later calls return the same runtime if they resolve to the same directory, and an error if
/// they name another one (a process can hold only one libopenvino). A directory without
/// `libopenvino.so.2641` always gives the one-line "OpenVINO runtime not found" error.
pub fn load(dir: Option<&Path>) -> Result<&'static Runtime, OvError> {
    let dir = runtime_dir(dir);
    if !dir.join(OPENVINO_LIB).is_file() {
        return Err(OvError::runtime_not_found(&dir));
    }
    let _guard = LOADING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(rt) = RUNTIME.get() {
        return if same_dir(&rt.dir, &dir) {
            Ok(rt)
        } else {
            Err(OvError::new(format!(
                "OpenVINO runtime already loaded from {}, cannot also load it from {}",
                rt.dir.display(),
                dir.display()
            )))
        };
    }
    let (api, version) = ffi::open(&dir)?;
    Ok(RUNTIME.get_or_init(|| Runtime { api, dir, version }))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Owns an `sc_core*`.
struct CoreHandle {
    rt: &'static Runtime,
    ptr: NonNull<ScCore>,
}

impl Drop for CoreHandle {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from sc_core_new and is freed exactly once, here. Models compiled
        // from it hold their own reference inside the shim.
        unsafe { (self.rt.api.core_free)(self.ptr.as_ptr()) }
    }
}

/// An `ov::Core` (one per shard thread; not `Send`).
pub struct Core {
    inner: Rc<CoreHandle>,
}

impl Core {
    pub fn new(rt: &'static Runtime) -> Result<Core, OvError> {
        let mut out: *mut ScCore = std::ptr::null_mut();
        let mut err = ErrBuf::new();
        // SAFETY: `out` and `err` are valid for writes; the shim catches all exceptions.
        let rc = unsafe { (rt.api.core_new)(&mut out, err.ptr(), ERR_LEN) };
        if rc != 0 {
            // SAFETY: rc != 0, so the shim wrote a message.
            return Err(unsafe { err.error() });
        }
        let ptr = NonNull::new(out).ok_or_else(|| OvError::new("sc_core_new returned NULL"))?;
        Ok(Core { inner: Rc::new(CoreHandle { rt, ptr }) })
    }

    /// Reads an IR model (`.xml`, with its `.bin` beside it) and compiles it for CPU.
    pub fn compile(&self, model_xml: &Path, opts: &CompileOptions) -> Result<CompiledModel, OvError> {
        let rt = self.inner.rt;
        let ctx = |m: &str| OvError::new(format!("compiling {}: {m}", model_xml.display()));
        if !model_xml.is_file() {
            return Err(ctx("no such model file"));
        }
        let cstr = |s: &[u8]| CString::new(s).map_err(|_| ctx("a path or property contains a NUL byte"));
        let path = cstr(model_xml.as_os_str().as_bytes())?;
        let mut keys = Vec::with_capacity(opts.plugin_config.len());
        let mut vals = Vec::with_capacity(opts.plugin_config.len());
        for (k, v) in &opts.plugin_config {
            keys.push(cstr(k.as_bytes())?);
            vals.push(cstr(v.as_bytes())?);
        }
        let key_ptrs: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr()).collect();
        let val_ptrs: Vec<*const c_char> = vals.iter().map(|v| v.as_ptr()).collect();

        let mut out: *mut ScModel = std::ptr::null_mut();
        let mut err = ErrBuf::new();
        // SAFETY: the core pointer is live (owned by self.inner); `path` and every key/value are
        // NUL-terminated and outlive the call; the arrays hold `len` valid pointers; `out` and
        // `err` are writable. The shim catches all exceptions.
        let rc = unsafe {
            (rt.api.compile)(
                self.inner.ptr.as_ptr(),
                path.as_ptr(),
                opts.low_latency as c_int,
                opts.batch,
                key_ptrs.as_ptr(),
                val_ptrs.as_ptr(),
                key_ptrs.len(),
                &mut out,
                err.ptr(),
                ERR_LEN,
            )
        };
        if rc != 0 {
            // SAFETY: rc != 0, so the shim wrote a message.
            return Err(unsafe { err.error() });
        }
        let ptr = NonNull::new(out).ok_or_else(|| ctx("sc_compile returned NULL"))?;
        let handle = ModelHandle { rt, ptr, _core: self.inner.clone() };
        let inputs = handle.describe(ffi::SC_INPUT)?;
        let outputs = handle.describe(ffi::SC_OUTPUT)?;
        let states: Vec<StateInfo> = handle
            .describe(ffi::SC_STATE)?
            .into_iter()
            .map(|p| StateInfo { name: p.name, elem: p.elem, dims: p.dims, byte_size: p.byte_size })
            .collect();
        let inference_precision = handle.hint(ffi::SC_HINT_INFERENCE_PRECISION)?;
        let execution_mode = handle.hint(ffi::SC_HINT_EXECUTION_MODE)?;
        let in_place = handle.states_in_place(&states)?;
        Ok(CompiledModel {
            inner: Rc::new(ModelInner {
                handle,
                inputs,
                outputs,
                states,
                in_place,
                inference_precision,
                execution_mode,
            }),
        })
    }
}

/// Owns an `sc_model*`.
struct ModelHandle {
    rt: &'static Runtime,
    ptr: NonNull<ScModel>,
    _core: Rc<CoreHandle>,
}

impl ModelHandle {
    /// Per state (in `states` order), whether the shim restores it in place (see
    /// [`CompiledModel::restores_in_place`]).
    fn states_in_place(&self, states: &[StateInfo]) -> Result<Vec<bool>, OvError> {
        (0..states.len())
            .map(|i| {
                // SAFETY: the model pointer is live (owned by self); the call reads one flag.
                match unsafe { (self.rt.api.model_state_in_place)(self.ptr.as_ptr(), i) } {
                    0 => Ok(false),
                    1 => Ok(true),
                    _ => Err(OvError::new(format!("sc_model_state_in_place: no state #{i}"))),
                }
            })
            .collect()
    }

    /// One of the compiled model's read-back properties (`SC_HINT_*`), copied out.
    fn hint(&self, which: c_int) -> Result<String, OvError> {
        // SAFETY: the model pointer is live (owned by self); the shim returns NULL or a
        // NUL-terminated string owned by the model, which we copy before returning.
        let p = unsafe { (self.rt.api.model_hint)(self.ptr.as_ptr(), which) };
        if p.is_null() {
            return Err(OvError::new(format!("sc_model_hint({which}) knows no such property")));
        }
        // SAFETY: non-null and NUL-terminated (see above), valid while the model lives.
        Ok(unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    fn describe(&self, kind: c_int) -> Result<Vec<PortInfo>, OvError> {
        let api = &self.rt.api;
        // SAFETY: the model pointer is live (owned by self).
        let n = unsafe { (api.model_num)(self.ptr.as_ptr(), kind) };
        (0..n)
            .map(|i| {
                let mut name: *const c_char = std::ptr::null();
                let (mut name_len, mut elem, mut rank, mut byte_size) = (0usize, 0 as c_int, 0usize, 0usize);
                let mut dims: *const usize = std::ptr::null();
                // SAFETY: live model pointer, i < n, every out-pointer is writable.
                let rc = unsafe {
                    (api.model_desc)(
                        self.ptr.as_ptr(),
                        kind,
                        i,
                        &mut name,
                        &mut name_len,
                        &mut elem,
                        &mut dims,
                        &mut rank,
                        &mut byte_size,
                    )
                };
                if rc != 0 {
                    return Err(OvError::new(format!("sc_model_desc({kind}, {i}) failed")));
                }
                // SAFETY: on success the shim returns pointers into the model's own descriptor
                // (`name_len` bytes, `rank` dims), valid while the model lives; we copy them now.
                let (name, dims) = unsafe {
                    let name_bytes =
                        if name_len == 0 { &[][..] } else { std::slice::from_raw_parts(name.cast::<u8>(), name_len) };
                    let dims = if rank == 0 { &[][..] } else { std::slice::from_raw_parts(dims, rank) };
                    (String::from_utf8_lossy(name_bytes).into_owned(), dims.to_vec())
                };
                let elem = elem_from_code(elem)
                    .ok_or_else(|| OvError::new(format!("'{name}' has unknown element type code {elem}")))?;
                Ok(PortInfo { name, elem, dims, byte_size })
            })
            .collect()
    }
}

impl Drop for ModelHandle {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from sc_compile and is freed exactly once, here; requests created
        // from it hold their own reference inside the shim (and an Rc to us).
        unsafe { (self.rt.api.model_free)(self.ptr.as_ptr()) }
    }
}

struct ModelInner {
    handle: ModelHandle,
    inputs: Vec<PortInfo>,
    outputs: Vec<PortInfo>,
    states: Vec<StateInfo>,
    in_place: Vec<bool>,
    inference_precision: String,
    execution_mode: String,
}

/// A compiled model on its way to another shard thread: a second shim handle to the same
/// compiled model (its weights are not copied) with its descriptors. Made by
/// [`CompiledModel::share`]; the receiving thread turns it into its own `CompiledModel` with
/// [`Core::adopt`]. Dropped unadopted, it frees its handle.
pub struct SharedModel {
    rt: &'static Runtime,
    ptr: Option<NonNull<ScModel>>,
    inputs: Vec<PortInfo>,
    outputs: Vec<PortInfo>,
    states: Vec<StateInfo>,
    in_place: Vec<bool>,
    inference_precision: String,
    execution_mode: String,
}

// SAFETY: the handle points to a shim `sc_model`, a shared_ptr to an immutable ModelImpl whose
// ov::CompiledModel creates infer requests from any thread (OpenVINO documents compiled models
// as thread-safe); the handle is moved to one thread, never used by two, and freed once. The
// descriptors are plain owned data.
unsafe impl Send for SharedModel {}

impl SharedModel {
    pub fn inputs(&self) -> &[PortInfo] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[PortInfo] {
        &self.outputs
    }

    pub fn states(&self) -> &[StateInfo] {
        &self.states
    }

    /// See [`CompiledModel::restores_in_place`].
    pub fn restores_in_place(&self, state: usize) -> bool {
        self.in_place.get(state).copied().unwrap_or(false)
    }

    pub fn inference_precision(&self) -> &str {
        &self.inference_precision
    }

    pub fn execution_mode(&self) -> &str {
        &self.execution_mode
    }
}

/// Lowers the calling thread's scheduling priority to `nice` (Linux: per thread), so a
/// background compile yields the CPU to the shards it shares cores with. Returns why not, if
/// the kernel refused.
pub fn lower_thread_priority(nice: i32) -> Result<(), String> {
    // SAFETY: gettid and setpriority take and return plain integers; no memory is shared.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

impl Drop for SharedModel {
    fn drop(&mut self) {
        if let Some(p) = self.ptr.take() {
            // SAFETY: a live handle from sc_model_share, not adopted, freed exactly once here.
            unsafe { (self.rt.api.model_free)(p.as_ptr()) }
        }
    }
}

impl Core {
    /// Takes a model shared from another thread as this thread's own (its requests are made
    /// and used here).
    pub fn adopt(&self, mut shared: SharedModel) -> Result<CompiledModel, OvError> {
        let ptr = shared.ptr.take().ok_or_else(|| OvError::new("a shared model was adopted twice"))?;
        let handle = ModelHandle { rt: shared.rt, ptr, _core: self.inner.clone() };
        Ok(CompiledModel {
            inner: Rc::new(ModelInner {
                handle,
                inputs: std::mem::take(&mut shared.inputs),
                outputs: std::mem::take(&mut shared.outputs),
                states: std::mem::take(&mut shared.states),
                in_place: std::mem::take(&mut shared.in_place),
                inference_precision: std::mem::take(&mut shared.inference_precision),
                execution_mode: std::mem::take(&mut shared.execution_mode),
            }),
        })
    }
}

/// A model compiled for CPU (not `Send`; cheap to clone).
#[derive(Clone)]
pub struct CompiledModel {
    inner: Rc<ModelInner>,
}

impl CompiledModel {
    pub fn inputs(&self) -> &[PortInfo] {
        &self.inner.inputs
    }
    pub fn outputs(&self) -> &[PortInfo] {
        &self.inner.outputs
    }
    /// Variable states, sorted by name; indices are valid for every request of this model.
    pub fn states(&self) -> &[StateInfo] {
        &self.inner.states
    }
    /// Whether restoring `state` copies straight into the plugin's own memory of the variable
    /// (the compile-time probe proved it the same as `set_state`; f32 variables the plugin holds
    /// in f32) rather than going through `set_state` (a bf16-held variable, say).
    pub fn restores_in_place(&self, state: usize) -> bool {
        self.inner.in_place.get(state).copied().unwrap_or(false)
    }
    /// The effective `INFERENCE_PRECISION_HINT` as OpenVINO reports it after compiling: "f32",
    /// "bf16", "f16", or "dynamic" (no lowering, as under `EXECUTION_MODE_HINT=ACCURACY`). By
    /// default the CPU plugin picks bf16 on CPUs with native bf16 and f32 elsewhere, so the same
    /// model can give different numbers on different machines; this says which one ran.
    pub fn inference_precision(&self) -> &str {
        &self.inner.inference_precision
    }
    /// The effective `EXECUTION_MODE_HINT`: "PERFORMANCE" (OpenVINO's default) or "ACCURACY".
    pub fn execution_mode(&self) -> &str {
        &self.inner.execution_mode
    }
    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inner.inputs.iter().position(|p| p.name == name)
    }
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.inner.outputs.iter().position(|p| p.name == name)
    }
    pub fn state_index(&self, name: &str) -> Option<usize> {
        self.inner.states.iter().position(|s| s.name == name)
    }

    /// The memory one infer request holds after use: the CPU plugin keeps each variable twice
    /// (it reads one buffer and writes the other), plus the bound input and output tensors and a
    /// fixed overhead. benches/swap.rs prints it beside the resident memory of used requests
    /// (demo LSTM, f32: 9.5 KiB measured, 14.5 KiB estimated here; the overhead is taken from a
    /// serving shard, where it is larger). Under bf16 the variables are held in 16 bits, so this
    /// is an upper bound.
    pub fn request_bytes(&self) -> usize {
        let states: usize = self.inner.states.iter().map(|s| s.byte_size).sum();
        let ports: usize = self.inner.inputs.iter().chain(&self.inner.outputs).map(|p| p.byte_size).sum();
        2 * states + ports + REQUEST_OVERHEAD_BYTES
    }

    /// The same compiled model for another thread (see [`SharedModel`]): compile once per NUMA
    /// node, share with the node's other shards.
    pub fn share(&self) -> Result<SharedModel, OvError> {
        let h = &self.inner.handle;
        // SAFETY: the model pointer is live (owned by self); the shim returns a new handle or NULL.
        let p = unsafe { (h.rt.api.model_share)(h.ptr.as_ptr()) };
        let ptr = NonNull::new(p).ok_or_else(|| OvError::new("sc_model_share: out of memory"))?;
        let i = &self.inner;
        Ok(SharedModel {
            rt: h.rt,
            ptr: Some(ptr),
            inputs: i.inputs.clone(),
            outputs: i.outputs.clone(),
            states: i.states.clone(),
            in_place: i.in_place.clone(),
            inference_precision: i.inference_precision.clone(),
            execution_mode: i.execution_mode.clone(),
        })
    }

    /// A new infer request with its own tensors (inputs zeroed) and fresh states.
    pub fn create_request(&self) -> Result<InferRequest, OvError> {
        let h = &self.inner.handle;
        let api = &h.rt.api;
        let mut out: *mut ScRequest = std::ptr::null_mut();
        let mut err = ErrBuf::new();
        // SAFETY: live model pointer; `out` and `err` writable; the shim catches exceptions.
        let rc = unsafe { (api.request_new)(h.ptr.as_ptr(), &mut out, err.ptr(), ERR_LEN) };
        if rc != 0 {
            // SAFETY: rc != 0, so the shim wrote a message.
            return Err(unsafe { err.error() });
        }
        let ptr = NonNull::new(out).ok_or_else(|| OvError::new("sc_request_new returned NULL"))?;
        let mut req = InferRequest {
            rt: h.rt,
            ptr,
            model: self.inner.clone(),
            inputs: Vec::with_capacity(self.inner.inputs.len()),
            outputs: Vec::with_capacity(self.inner.outputs.len()),
        };
        for (i, p) in self.inner.inputs.iter().enumerate() {
            // SAFETY: live request pointer; i is a valid input index.
            let data = unsafe { (api.request_input)(ptr.as_ptr(), i) }.cast::<u8>();
            req.inputs.push((non_null_data(data, p)?, p.byte_size));
        }
        for (i, p) in self.inner.outputs.iter().enumerate() {
            // SAFETY: live request pointer; i is a valid output index.
            let data = unsafe { (api.request_output)(ptr.as_ptr(), i) }.cast::<u8>();
            req.outputs.push((non_null_data(data, p)?, p.byte_size));
        }
        Ok(req)
    }
}

fn non_null_data(p: *mut u8, port: &PortInfo) -> Result<*mut u8, OvError> {
    if p.is_null() && port.byte_size != 0 {
        return Err(OvError::new(format!("tensor '{}' has no data pointer", port.name)));
    }
    // A zero-sized tensor may have no buffer; slices still need a non-null, aligned pointer.
    Ok(if p.is_null() { NonNull::dangling().as_ptr() } else { p })
}

/// An infer request with bound input/output tensors and cached state handles (not `Send`).
pub struct InferRequest {
    rt: &'static Runtime,
    ptr: NonNull<ScRequest>,
    model: Rc<ModelInner>,
    /// (data, byte size) of each bound tensor; stable for the request's lifetime.
    inputs: Vec<(*mut u8, usize)>,
    outputs: Vec<(*mut u8, usize)>,
}

impl InferRequest {
    /// Input tensor `i`'s bytes, to fill before [`infer`](Self::infer). Panics if out of range.
    #[inline]
    pub fn input_mut(&mut self, i: usize) -> &mut [u8] {
        let (p, n) = self.inputs[i];
        // SAFETY: `p` is the data pointer of an ov::Tensor of `n` bytes owned by our shim
        // request, which lives as long as self; `&mut self` guarantees exclusive access (the
        // runtime only touches it during infer(), which also takes `&mut self`).
        unsafe { std::slice::from_raw_parts_mut(p, n) }
    }

    /// Output tensor `i`'s bytes as of the last [`infer`](Self::infer). Panics if out of range.
    #[inline]
    pub fn output(&self, i: usize) -> &[u8] {
        let (p, n) = self.outputs[i];
        // SAFETY: as in input_mut; the runtime writes it only during infer(&mut self), so no
        // shared borrow can observe a write.
        unsafe { std::slice::from_raw_parts(p, n) }
    }

    /// Synchronous inference on the calling thread.
    #[inline]
    pub fn infer(&mut self) -> Result<(), OvError> {
        let mut err = ErrBuf::new();
        // SAFETY: live request pointer; `err` writable; the shim catches exceptions.
        let rc = unsafe { (self.rt.api.request_infer)(self.ptr.as_ptr(), err.ptr(), ERR_LEN) };
        if rc != 0 {
            // SAFETY: rc != 0, so the shim wrote a message.
            return Err(unsafe { err.error() });
        }
        Ok(())
    }

    /// Resets every variable state to its initial value.
    pub fn reset_states(&mut self) -> Result<(), OvError> {
        let mut err = ErrBuf::new();
        // SAFETY: live request pointer; `err` writable; the shim catches exceptions.
        let rc = unsafe { (self.rt.api.request_reset_states)(self.ptr.as_ptr(), err.ptr(), ERR_LEN) };
        if rc != 0 {
            // SAFETY: rc != 0, so the shim wrote a message.
            return Err(unsafe { err.error() });
        }
        Ok(())
    }

    /// Copies state `i` (in [`CompiledModel::states`] order) into `dst`, which must be exactly
    /// `states()[i].byte_size` bytes.
    pub fn save_state(&mut self, i: usize, dst: &mut [u8]) -> Result<(), OvError> {
        self.check_state(i, dst.len())?;
        let mut err = ErrBuf::new();
        // SAFETY: live request pointer; `dst` is writable for dst.len() bytes (the shim writes
        // at most that, and checks it equals the state size); `err` writable.
        let rc = unsafe {
            (self.rt.api.request_save_state)(
                self.ptr.as_ptr(),
                i,
                dst.as_mut_ptr().cast(),
                dst.len(),
                err.ptr(),
                ERR_LEN,
            )
        };
        if rc != 0 {
            // SAFETY: rc != 0, so the shim wrote a message.
            return Err(unsafe { err.error() });
        }
        Ok(())
    }

    /// Sets state `i` from `src` (exactly `states()[i].byte_size` bytes; copied, not retained).
    pub fn restore_state(&mut self, i: usize, src: &[u8]) -> Result<(), OvError> {
        self.check_state(i, src.len())?;
        let mut err = ErrBuf::new();
        // SAFETY: live request pointer; `src` is readable for src.len() bytes and OpenVINO only
        // reads it during the call (set_state copies); `err` writable.
        let rc = unsafe {
            (self.rt.api.request_restore_state)(
                self.ptr.as_ptr(),
                i,
                src.as_ptr().cast(),
                src.len(),
                err.ptr(),
                ERR_LEN,
            )
        };
        if rc != 0 {
            // SAFETY: rc != 0, so the shim wrote a message.
            return Err(unsafe { err.error() });
        }
        Ok(())
    }

    /// The compiled model's variable states (same order as the indices above).
    pub fn states(&self) -> &[StateInfo] {
        &self.model.states
    }

    fn check_state(&self, i: usize, len: usize) -> Result<(), OvError> {
        match self.model.states.get(i) {
            None => Err(OvError::new(format!("no variable state #{i} (model has {})", self.model.states.len()))),
            Some(s) if s.byte_size != len => {
                Err(OvError::new(format!("state '{}' is {} bytes, buffer is {len}", s.name, s.byte_size)))
            }
            Some(_) => Ok(()),
        }
    }
}

impl Drop for InferRequest {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from sc_request_new and is freed exactly once, here; it holds its
        // own reference to the compiled model inside the shim (and we hold `model`).
        unsafe { (self.rt.api.request_free)(self.ptr.as_ptr()) }
    }
}
