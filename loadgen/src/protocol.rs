//! What one step of a sequence is, independent of the wire, and the [`Protocol`] trait each
//! wire format implements: TF-Serving and KServe unary gRPC (through [`UnaryGrpc`], which only
//! adds a message codec), KServe's `ModelStreamInfer`, and the two JSON REST APIs.
//!
//! Adding a protocol means: a connection type, a way to learn the model's inputs
//! ([`ModelInputs`]), and `call` turning a [`Step`] into a request and the answer into a
//! [`Reply`]. The sequence driver (`run.rs`), the statistics and the verification are shared.

use crate::grpc::{CallError, Channel};
use bytes::Bytes;
use std::time::Duration;

/// sequence_control_input values (OVMS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    None = 0,
    Start = 1,
    End = 2,
}

/// One model input as the client generates it.
#[derive(Clone, Debug)]
pub struct InputDesc {
    pub name: String,
    /// Element type, as OpenVINO names it ("f32", "i32", ...).
    pub elem: &'static str,
    pub elem_bytes: usize,
    pub dims: Vec<usize>,
}

impl InputDesc {
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn byte_size(&self) -> usize {
        self.elements() * self.elem_bytes
    }
}

/// The model's data inputs (special inputs excluded) and output names.
#[derive(Clone, Debug, Default)]
pub struct ModelInputs {
    pub inputs: Vec<InputDesc>,
    pub outputs: Vec<String>,
}

/// Number of pre-generated data variants per input (steps cycle through them).
pub const DATA_VARIANTS: usize = 16;

/// Pre-generated input contents: `DATA_VARIANTS` little-endian byte blobs per input; f32
/// inputs get uniform values in [-1, 1), other types zeros.
pub fn data_pool(inputs: &[InputDesc], seed: u64) -> Vec<Vec<Bytes>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    inputs
        .iter()
        .map(|d| {
            (0..DATA_VARIANTS)
                .map(|_| {
                    if d.elem == "f32" {
                        let mut v = Vec::with_capacity(d.byte_size());
                        for _ in 0..d.elements() {
                            v.extend_from_slice(&(rng.f32() * 2.0 - 1.0).to_le_bytes());
                        }
                        Bytes::from(v)
                    } else {
                        Bytes::from(vec![0u8; d.byte_size()])
                    }
                })
                .collect()
        })
        .collect()
}

/// One request of a sequence.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// 0: none (a START asking the server to choose).
    pub seq_id: u64,
    pub control: Control,
    /// Which pre-generated data variant to send.
    pub variant: usize,
    /// --verify: the value the verified input carries (all its elements).
    pub verify_value: Option<f32>,
    /// Decode the answer's sequence_id (server-chosen ids, verification).
    pub want_id: bool,
}

/// What the client reads from an answer (only what was asked for).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reply {
    pub seq_id: Option<u64>,
    pub verify_value: Option<f32>,
}

/// A wire protocol. Connections are per client thread (not `Send`).
#[allow(async_fn_in_trait)]
pub trait Protocol: 'static {
    type Conn;
    /// Per-sequence state (a stream for streaming protocols; `()` for unary ones), created with
    /// `Default` when the sequence starts and dropped when it ends.
    type Session: Default;
    fn new_conn(&self, addr: &str) -> Self::Conn;
    /// Connects now, so that start-up reports an unreachable server at once.
    async fn connect(&self, conn: &Self::Conn) -> Result<(), CallError>;
    async fn call(
        &self,
        conn: &Self::Conn,
        session: &mut Self::Session,
        step: &Step,
        timeout: Duration,
    ) -> Result<Reply, CallError>;
    /// An injected disconnect: lets go of the connection(s) so the next call opens a new one.
    fn disconnect(&self, conn: &Self::Conn);
}

/// The message codec of a protocol whose step is one unary gRPC call (TF-Serving `Predict`,
/// KServe `ModelInfer`); [`Unary`] makes it a [`Protocol`], as connections and calls are the
/// same for all of them.
pub trait UnaryGrpc: 'static {
    /// The gRPC method path.
    const METHOD: &'static str;
    /// The framed (5-byte prefix) request message for a step.
    fn encode(&self, step: &Step) -> Bytes;
    /// Reads what the step asked for from the answer message.
    fn decode(&self, msg: Bytes, step: &Step) -> Result<Reply, CallError>;
}

/// A [`UnaryGrpc`] codec as a protocol.
pub struct Unary<C>(pub C);

impl<C: UnaryGrpc> Protocol for Unary<C> {
    type Conn = Channel;
    type Session = ();

    fn new_conn(&self, addr: &str) -> Channel {
        Channel::new(addr)
    }

    async fn connect(&self, conn: &Channel) -> Result<(), CallError> {
        conn.connect().await
    }

    async fn call(
        &self,
        conn: &Channel,
        _session: &mut (),
        step: &Step,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let msg = conn.unary_framed(C::METHOD, self.0.encode(step), timeout).await?;
        self.0.decode(msg, step)
    }

    fn disconnect(&self, conn: &Channel) {
        conn.drop_connection();
    }
}

/// The expected running sum of a summator sequence's value at `step`: small integers, so f32
/// sums stay exact (|sum| < 2^24 for any length we allow).
pub fn verify_value(seq_counter: u64, step: u64) -> f32 {
    (((seq_counter.wrapping_mul(7)).wrapping_add(step.wrapping_mul(3))) % 17) as f32 - 8.0
}
