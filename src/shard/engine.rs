//! The seam between a shard and the inference runtime. `ModelInstance` and `Shard` are generic
//! over `Engine`: the server uses OpenVINO's compiled models (`src/ov/engine.rs`), the unit tests
//! of the step logic, eviction, expiry and the mesh use a fake (`shard::fake`), so they run
//! deterministically and without the OpenVINO wheel.
//!
//! The contract is OpenVINO's synchronous one: an engine makes infer requests; each request owns
//! input and output buffers of fixed sizes and a set of variables (the sequence state), which it
//! can reset, save into a caller's buffer, and restore from one. Every call runs on the calling
//! shard's thread and returns before the next.

use crate::signature::{PortInfo, StateInfo};
use std::fmt;

/// A compiled model: its signature and a factory of infer requests.
pub trait Engine: 'static {
    type Request: EngineRequest;

    fn inputs(&self) -> &[PortInfo];
    fn outputs(&self) -> &[PortInfo];
    /// Variable states, in the order every request's state indices use.
    fn states(&self) -> &[StateInfo];
    /// The effective inference precision ("f32", "bf16", ...).
    fn inference_precision(&self) -> &str;
    /// The effective execution mode ("PERFORMANCE", "ACCURACY").
    fn execution_mode(&self) -> &str;
    /// A new request with zeroed inputs and fresh states.
    fn create_request(&self) -> Result<Self::Request, EngineError>;
    /// The memory one request holds once used (its variables, buffers and bookkeeping), for the
    /// resident memory budget.
    fn request_bytes(&self) -> usize;
}

/// One infer request: buffers bound for its lifetime, and its own variables.
pub trait EngineRequest {
    /// Input `i`'s bytes (exactly `inputs()[i].byte_size`), to fill before `infer`.
    fn input_mut(&mut self, i: usize) -> &mut [u8];
    /// Output `i`'s bytes as of the last `infer`.
    fn output(&self, i: usize) -> &[u8];
    fn infer(&mut self) -> Result<(), EngineError>;
    fn reset_states(&mut self) -> Result<(), EngineError>;
    /// Copies state `i` into `dst` (exactly `states()[i].byte_size` bytes).
    fn save_state(&mut self, i: usize, dst: &mut [u8]) -> Result<(), EngineError>;
    /// Sets state `i` from `src` (exactly `states()[i].byte_size` bytes).
    fn restore_state(&mut self, i: usize, src: &[u8]) -> Result<(), EngineError>;
}

/// An engine's failure, as the operator should read it in the log.
#[derive(Clone, PartialEq, Eq)]
pub struct EngineError(pub String);

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EngineError({:?})", self.0)
    }
}
