//! The domain form of an inference request, as front ends hand it to a shard: validated once,
//! owned, protocol-free. A request travels to the shard that owns its sequence by value.

use bytes::Bytes;

/// `sequence_control_input`: 0 none, 1 start, 2 end (OVMS's values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    None,
    Start,
    End,
}

impl Control {
    pub fn from_u32(v: u32) -> Option<Control> {
        match v {
            0 => Some(Control::None),
            1 => Some(Control::Start),
            2 => Some(Control::End),
            _ => None,
        }
    }
}

/// What a request asks of the sequence table. `id` 0 means "not given" (OVMS: the same as absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SequenceSpec {
    pub control: Control,
    pub id: u64,
}

/// Index of a model in every shard's model list (the lists are identical and in config order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelIdx(pub u16);

/// A validated inference request.
#[derive(Debug)]
pub struct InferJob {
    pub model: ModelIdx,
    /// Some for stateful models, None for stateless ones.
    pub sequence: Option<SequenceSpec>,
    /// One buffer per model input, in model input order, each exactly the input's byte size.
    pub inputs: Vec<Bytes>,
}

/// The result of a successful inference.
#[derive(Debug)]
pub struct Outcome {
    /// The sequence the request ran on (server-assigned on an id-less START); None when stateless.
    pub sequence_id: Option<u64>,
    /// The model outputs back to back, in model output order.
    pub outputs: Bytes,
}
