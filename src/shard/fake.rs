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
}

/// What the fake says one request costs: one MiB, so `resident_memory_mb` counts requests.
pub const FAKE_REQUEST_BYTES: usize = 1 << 20;

pub struct FakeEngine {
    inputs: Vec<PortInfo>,
    outputs: Vec<PortInfo>,
    states: Vec<StateInfo>,
    pub control: Rc<Control>,
}

impl FakeEngine {
    pub fn new() -> FakeEngine {
        let port = |name: &str| PortInfo { name: name.into(), elem: ElemType::F32, dims: vec![1, 1], byte_size: 4 };
        FakeEngine {
            inputs: vec![port("input")],
            outputs: vec![port("add_sum")],
            states: vec![StateInfo { name: "sum".into(), elem: ElemType::F32, dims: vec![1, 1], byte_size: 4 }],
            control: Rc::new(Control::default()),
        }
    }
}

pub struct FakeRequest {
    input: [u8; 4],
    output: [u8; 4],
    state: f32,
    control: Rc<Control>,
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
        Ok(FakeRequest { input: [0; 4], output: [0; 4], state: 0.0, control: self.control.clone() })
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
        let x = f32::from_le_bytes(self.input);
        let spin = self.control.infer_time.get();
        let t0 = Instant::now();
        while t0.elapsed() < spin {
            std::hint::spin_loop();
        }
        if x == FAIL_INFER {
            return Err(EngineError("injected inference failure".into()));
        }
        if x == PANIC_INFER {
            panic!("injected panic in infer");
        }
        self.state += x;
        self.output = self.state.to_le_bytes();
        self.control.inferred.borrow_mut().push(x);
        Ok(())
    }
    fn reset_states(&mut self) -> Result<(), EngineError> {
        self.state = 0.0;
        self.control.resets.set(self.control.resets.get() + 1);
        Ok(())
    }
    fn save_state(&mut self, i: usize, dst: &mut [u8]) -> Result<(), EngineError> {
        assert_eq!((i, dst.len()), (0, 4));
        if self.control.fail_save.get() {
            return Err(EngineError("injected save failure".into()));
        }
        dst.copy_from_slice(&self.state.to_le_bytes());
        self.control.saves.set(self.control.saves.get() + 1);
        Ok(())
    }
    fn restore_state(&mut self, i: usize, src: &[u8]) -> Result<(), EngineError> {
        assert_eq!((i, src.len()), (0, 4));
        let mut b = [0; 4];
        b.copy_from_slice(src);
        self.state = f32::from_le_bytes(b);
        self.control.restores.set(self.control.restores.get() + 1);
        Ok(())
    }
}
