//! Model signatures, protocol-neutral: element types, input/output ports and variable states.
//!
//! These describe a compiled model's interface in OpenVINO's terms (names, "f32", static dims),
//! but nothing here calls OpenVINO: `ov` fills them in at compile time, the catalog stores them,
//! and every front end (TF-Serving, KServe, REST) checks requests against them. Keeping them out
//! of the FFI module lets the front ends sit above this module without knowing `ov` exists. [`pack`] turns a typed value list into a port's bytes, the one
//! packer every front end shares.

use crate::error::{Error, Kind, Result};
use bytes::Bytes;
use std::fmt;

/// Tensor element types seqcore supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElemType {
    F32,
    F64,
    F16,
    BF16,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Boolean,
}

impl ElemType {
    /// Bytes per element.
    pub fn byte_width(self) -> usize {
        match self {
            ElemType::I8 | ElemType::U8 | ElemType::Boolean => 1,
            ElemType::F16 | ElemType::BF16 | ElemType::I16 | ElemType::U16 => 2,
            ElemType::F32 | ElemType::I32 | ElemType::U32 => 4,
            ElemType::F64 | ElemType::I64 | ElemType::U64 => 8,
        }
    }

    /// OpenVINO's name for the type ("f32", "boolean", ...).
    pub fn name(self) -> &'static str {
        match self {
            ElemType::F32 => "f32",
            ElemType::F64 => "f64",
            ElemType::F16 => "f16",
            ElemType::BF16 => "bf16",
            ElemType::I8 => "i8",
            ElemType::I16 => "i16",
            ElemType::I32 => "i32",
            ElemType::I64 => "i64",
            ElemType::U8 => "u8",
            ElemType::U16 => "u16",
            ElemType::U32 => "u32",
            ElemType::U64 => "u64",
            ElemType::Boolean => "boolean",
        }
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A model input or output (static shape).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// The tensor's `get_any_name()` (or its node's friendly name if the tensor has no name).
    pub name: String,
    pub elem: ElemType,
    pub dims: Vec<usize>,
    pub byte_size: usize,
}

/// An f32 port for unit tests of the front ends (no model needed).
#[cfg(test)]
pub fn test_port_f32(name: &str, dims: &[usize]) -> PortInfo {
    PortInfo {
        name: name.into(),
        elem: ElemType::F32,
        dims: dims.to_vec(),
        byte_size: dims.iter().product::<usize>() * 4,
    }
}

/// A variable state (as seen through `ov::InferRequest::query_state`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateInfo {
    pub name: String,
    pub elem: ElemType,
    pub dims: Vec<usize>,
    pub byte_size: usize,
}

/// Packs a typed value list into a tensor's little-endian bytes, checking the count (OVMS's
/// INVALID_VALUE_COUNT). Every front end that accepts typed value lists goes through here, which is
/// why it lives in this neutral module and not in one of them.
pub fn pack<T: Copy, const N: usize>(port: &PortInfo, values: &[T], le: impl Fn(T) -> [u8; N]) -> Result<Bytes> {
    let elements = port.dims.iter().product::<usize>();
    if values.len() != elements {
        return Err(Error::with(
            Kind::InvalidValueCount,
            format!("Expected: {elements}; Actual: {}; input name: {}", values.len(), port.name),
        ));
    }
    debug_assert_eq!(elements * N, port.byte_size);
    let mut out = Vec::with_capacity(port.byte_size);
    for &v in values {
        out.extend_from_slice(&le(v));
    }
    Ok(Bytes::from(out))
}

/// The first `N` bytes of `b` as an array, zero-padded if `b` is shorter. Callers check lengths
/// first; this keeps a miscounted length from ever becoming a panic on the request path.
pub fn le_array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = b.len().min(N);
    a[..n].copy_from_slice(&b[..n]);
    a
}
