//! The domain form of an inference request, as front ends hand it to a shard: validated once,
//! owned, protocol-free. A request travels to the shard that owns its sequence by value.

use bytes::Bytes;

/// `sequence_control_input`: 0 none, 1 start, 2 end (OVMS's values). `StartEnd` is a
/// one-step sequence, which only Triton's convention can express (`sequence_start` and
/// `sequence_end` both true).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    None,
    Start,
    End,
    StartEnd,
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

impl Control {
    pub fn starts(self) -> bool {
        matches!(self, Control::Start | Control::StartEnd)
    }

    pub fn ends(self) -> bool {
        matches!(self, Control::End | Control::StartEnd)
    }
}

/// A sequence's id: OVMS's uint64, or a Triton string correlation id. The two namespaces are
/// distinct (`Num(7)` and `Str("7")` are different sequences). `Num(0)` means "not given"
/// (OVMS: the same as absent); front ends turn an empty string into `Num(0)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SequenceId {
    Num(u64),
    Str(Box<str>),
}

impl SequenceId {
    pub const NONE: SequenceId = SequenceId::Num(0);

    pub fn is_given(&self) -> bool {
        *self != SequenceId::Num(0)
    }
}

impl std::fmt::Display for SequenceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SequenceId::Num(n) => write!(f, "{n}"),
            SequenceId::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// What a request asks of the sequence table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceSpec {
    pub control: Control,
    pub id: SequenceId,
}

/// Index of a model version instance in every shard's catalog (the catalogs are changed in the
/// same order on every shard; an index is never reused, `catalog::INSTANCES_MAX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModelIdx(pub u16);

/// A validated inference request.
#[derive(Debug)]
pub struct InferJob {
    /// The instance the request was validated against.
    pub model: ModelIdx,
    /// The request named no version: a step of a sequence runs on whichever version of the
    /// model holds the sequence (it stays on the version it started on), if its ports match.
    pub any_version: bool,
    /// Some for stateful models, None for stateless ones.
    pub sequence: Option<SequenceSpec>,
    /// One buffer per model input, in model input order, each exactly the input's byte size.
    pub inputs: Vec<Bytes>,
}

/// The result of a successful inference.
#[derive(Debug)]
pub struct Outcome {
    /// The instance the step ran on (another version than the job's, for a sequence that
    /// started before a newer version became the default).
    pub model: ModelIdx,
    /// The sequence the request ran on (server-assigned on an id-less START); None when stateless.
    pub sequence_id: Option<SequenceId>,
    /// The model outputs back to back, in model output order.
    pub outputs: Bytes,
}
