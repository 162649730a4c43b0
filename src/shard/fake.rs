//! A fake `Engine` for the shard core's unit tests: a running sum (the summator's contract: one
//! f32 input, one f32 output, one f32 variable; output = state = state + input), with failures,
//! panics and slowness on demand, and a record of what it was asked to do.

use super::engine::{Engine, EngineError, EngineRequest};
use crate::signature::{ElemType, PortInfo, StateInfo};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// An input value that makes `infer` fail.
pub const FAIL_INFER: f32 = -1.0;
/// An input value that makes `infer` panic.
pub const PANIC_INFER: f32 = -2.0;

/// Shared by the engine and all its requests: what to do and what was done.
#[derive(Default)]
pub struct Control {
    /// `save_state` fails while set.
    pub fail_save: Cell<bool>,
    /// Every `infer` busy-waits this long (a real step's cost, for the fairness tests).
    pub infer_time: Cell<Duration>,
    /// The input of every successful `infer`, in order.
    pub inferred: RefCell<Vec<f32>>,
    pub saves: Cell<u64>,
    pub restores: Cell<u64>,
    pub resets: Cell<u64>,
    /// Requests made so far.
    pub created: Cell<u64>,
    /// `create_request` fails while set.
    pub fail_create: Cell<bool>,
    /// Inferences of a batched engine (more than one row).
    pub batched_infers: Cell<u64>,
    /// While set, a batched engine's rows are off by this much (a model whose batched kernels
    /// round differently, for the load-time exactness check).
    pub batched_skew: Cell<f32>,
}

/// What the fake says one request costs: one MiB, so `resident_memory_mb` counts requests.
pub const FAKE_REQUEST_BYTES: usize = 1 << 20;

pub struct FakeEngine {
    rows: usize,
    inputs: Vec<PortInfo>,
    outputs: Vec<PortInfo>,
    states: Vec<StateInfo>,
    pub control: Rc<Control>,
}

impl FakeEngine {
    pub fn new() -> FakeEngine {
        FakeEngine::with_rows(1, Rc::new(Control::default()))
    }

    /// The same model at batch `rows`: every port and the variable get `rows` rows, each row an
    /// independent running sum. Shares `self`'s control.
    pub fn batched(&self, rows: usize) -> FakeEngine {
        FakeEngine::with_rows(rows, self.control.clone())
    }

    fn with_rows(rows: usize, control: Rc<Control>) -> FakeEngine {
        let port =
            |name: &str| PortInfo { name: name.into(), elem: ElemType::F32, dims: vec![rows, 1], byte_size: 4 * rows };
        FakeEngine {
            rows,
            inputs: vec![port("input")],
            outputs: vec![port("add_sum")],
            states: vec![StateInfo {
                name: "sum".into(),
                elem: ElemType::F32,
                dims: vec![rows, 1],
                byte_size: 4 * rows,
            }],
            control,
        }
    }
}

pub struct FakeRequest {
    input: Vec<u8>,
    output: Vec<u8>,
    state: Vec<f32>,
    control: Rc<Control>,
}

fn f32_at(b: &[u8], row: usize) -> f32 {
    let mut v = [0; 4];
    v.copy_from_slice(&b[4 * row..4 * row + 4]);
    f32::from_le_bytes(v)
}

impl Engine for FakeEngine {
    type Request = FakeRequest;

    fn inputs(&self) -> &[PortInfo] {
        &self.inputs
    }
    fn outputs(&self) -> &[PortInfo] {
        &self.outputs
    }
    fn states(&self) -> &[StateInfo] {
        &self.states
    }
    fn inference_precision(&self) -> &str {
        "f32"
    }
    fn execution_mode(&self) -> &str {
        "PERFORMANCE"
    }
    fn request_bytes(&self) -> usize {
        FAKE_REQUEST_BYTES
    }
    fn create_request(&self) -> Result<FakeRequest, EngineError> {
        if self.control.fail_create.get() {
            return Err(EngineError("no memory for another request".into()));
        }
        self.control.created.set(self.control.created.get() + 1);
        let rows = self.rows;
        Ok(FakeRequest {
            input: vec![0; 4 * rows],
            output: vec![0; 4 * rows],
            state: vec![0.0; rows],
            control: self.control.clone(),
        })
    }
}

impl EngineRequest for FakeRequest {
    fn input_mut(&mut self, i: usize) -> &mut [u8] {
        assert_eq!(i, 0);
        &mut self.input
    }
    fn output(&self, i: usize) -> &[u8] {
        assert_eq!(i, 0);
        &self.output
    }
    fn infer(&mut self) -> Result<(), EngineError> {
        let rows = self.state.len();
        let spin = self.control.infer_time.get();
        let t0 = Instant::now();
        while t0.elapsed() < spin {
            std::hint::spin_loop();
        }
        let xs: Vec<f32> = (0..rows).map(|r| f32_at(&self.input, r)).collect();
        if xs.contains(&FAIL_INFER) {
            return Err(EngineError("injected inference failure".into()));
        }
        if xs.contains(&PANIC_INFER) {
            panic!("injected panic in infer");
        }
        let skew = if rows > 1 { self.control.batched_skew.get() } else { 0.0 };
        for (r, x) in xs.iter().enumerate() {
            self.state[r] += x + skew;
            self.output[4 * r..4 * r + 4].copy_from_slice(&self.state[r].to_le_bytes());
        }
        if rows > 1 {
            self.control.batched_infers.set(self.control.batched_infers.get() + 1);
        } else {
            self.control.inferred.borrow_mut().push(xs[0]);
        }
        Ok(())
    }
    fn reset_states(&mut self) -> Result<(), EngineError> {
        self.state.iter_mut().for_each(|s| *s = 0.0);
        self.control.resets.set(self.control.resets.get() + 1);
        Ok(())
    }
    fn save_state(&mut self, i: usize, dst: &mut [u8]) -> Result<(), EngineError> {
        assert_eq!((i, dst.len()), (0, 4 * self.state.len()));
        if self.control.fail_save.get() {
            return Err(EngineError("injected save failure".into()));
        }
        for (r, s) in self.state.iter().enumerate() {
            dst[4 * r..4 * r + 4].copy_from_slice(&s.to_le_bytes());
        }
        self.control.saves.set(self.control.saves.get() + 1);
        Ok(())
    }
    fn restore_state(&mut self, i: usize, src: &[u8]) -> Result<(), EngineError> {
        assert_eq!((i, src.len()), (0, 4 * self.state.len()));
        for r in 0..self.state.len() {
            self.state[r] = f32_at(src, r);
        }
        self.control.restores.set(self.control.restores.get() + 1);
        Ok(())
    }
}
