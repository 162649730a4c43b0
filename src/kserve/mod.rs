//! The KServe v2 front end (`inference.GRPCInferenceService`): protobuf ⇄ domain conversion for
//! `ModelInfer` (also used per step by `ModelStreamInfer`), `ModelMetadata` and `ModelReady`.
//! Sequences are read by the protocol-neutral `crate::sequence` (shared with TF-Serving and the
//! REST front ends); `encode` writes the answers; `repository` is Triton's model repository
//! extension (index, load, unload), shared with the REST front end.
//!
//! Model inputs are validated like TF-Serving's (OVMS's messages): count, name, datatype, shape,
//! then size: `raw_input_contents` must be exactly the input's byte size; typed `contents` must
//! hold exactly one value per element in the field for the datatype. FP16/BF16 are raw only.

pub mod encode;
pub mod repository;

use crate::catalog::{Catalog, ModelMeta};
use crate::error::{Error, Kind, Result};
use crate::proto::inference::model_infer_request::InferInputTensor;
use crate::proto::inference::{infer_parameter::ParameterChoice, InferParameter, ModelInferRequest};
use crate::request::{InferJob, ModelIdx};
use crate::sequence::{self, Echo, ParamValue, Special};
use crate::signature::{le_array, pack, ElemType, PortInfo};
use bytes::Bytes;
use prost::Message;
use std::rc::Rc;

/// Decodes a `ModelInferRequest` (raw contents stay views into `message`).
pub fn decode_infer(message: Bytes) -> Result<ModelInferRequest> {
    ModelInferRequest::decode(message)
        .map_err(|e| Error::with(Kind::InvalidMessage, format!("cannot decode ModelInferRequest: {e}")))
}

/// Finds a model by KServe name and version string ("" = the served version).
pub fn resolve(catalog: &Catalog, name: &str, version: &str) -> Result<(ModelIdx, Rc<ModelMeta>)> {
    let version = match version {
        "" => None,
        v => Some(v.parse::<i64>().map_err(|_| Error::new(Kind::ModelVersionMissing))?),
    };
    catalog.resolve(name, version)
}

/// A `parameters` map as [`sequence::parse`] reads it.
pub fn param_value(p: &InferParameter) -> ParamValue<'_> {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => ParamValue::Bool(*b),
        Some(ParameterChoice::Int64Param(n)) => ParamValue::Int(*n),
        Some(ParameterChoice::Uint64Param(n)) => ParamValue::UInt(*n),
        Some(ParameterChoice::StringParam(s)) => ParamValue::Str(s),
        Some(ParameterChoice::DoubleParam(_)) | None => ParamValue::Other,
    }
}

/// The KServe `InferParameter` for a [`ParamValue`] (for echoing the sequence id).
pub fn infer_parameter(v: ParamValue<'_>) -> InferParameter {
    let choice = match v {
        ParamValue::Bool(b) => ParameterChoice::BoolParam(b),
        ParamValue::Int(n) => ParameterChoice::Int64Param(n),
        ParamValue::UInt(n) => ParameterChoice::Uint64Param(n),
        ParamValue::Str(s) => ParameterChoice::StringParam(s.to_string()),
        ParamValue::Other => ParameterChoice::BoolParam(false),
    };
    InferParameter { parameter_choice: Some(choice) }
}

/// Validates a `ModelInferRequest` for the model `resolve` found into a job for the shards, and
/// says how the answer must carry the sequence id. Nothing here touches a sequence.
pub fn infer_job<'a>(idx: ModelIdx, meta: &ModelMeta, req: &'a ModelInferRequest) -> Result<(InferJob, Echo)> {
    let raw = &req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(Error::with(
            Kind::InvalidMessage,
            format!(
                "raw_input_contents has {} entries for {} inputs; give one per input or none",
                raw.len(),
                req.inputs.len()
            ),
        ));
    }
    let raw_of = |i: usize| raw.get(i);
    let special = |name: &str| -> Option<(usize, &'a InferInputTensor)> {
        req.inputs.iter().enumerate().find(|(_, t)| t.name == name)
    };
    let id_input = special(sequence::SEQUENCE_ID);
    let control_input = special(sequence::SEQUENCE_CONTROL_INPUT);
    let read = |found: Option<(usize, &'a InferInputTensor)>, width: usize| -> Option<Special<'a>> {
        found.map(|(i, t)| {
            let value = special_value(t, raw_of(i), width);
            Special { shape: Some(&t.shape[..]), datatype: Some(&t.datatype[..]), value }
        })
    };
    let parsed = sequence::parse(
        meta.stateful,
        |k| req.parameters.get(k).map(param_value),
        read(id_input, 8),
        read(control_input, 4),
    )?;
    let specials =
        if parsed.echo == Echo::Tensor { id_input.is_some() as usize + control_input.is_some() as usize } else { 0 };
    let expected = meta.inputs.len() + specials;
    if req.inputs.len() != expected {
        return Err(Error::with(
            Kind::InvalidNoOfInputs,
            format!("Expected: {expected}; Actual: {}", req.inputs.len()),
        ));
    }
    let mut inputs = Vec::with_capacity(meta.inputs.len());
    for port in &meta.inputs {
        let (i, t) = req
            .inputs
            .iter()
            .enumerate()
            .find(|(_, t)| t.name == port.name)
            .ok_or_else(|| Error::with(Kind::InvalidMissingInput, format!("Required input: {}", port.name)))?;
        inputs.push(input_bytes(port, t, raw_of(i))?);
    }
    let any_version = req.model_version.is_empty() || req.model_version == "0";
    Ok((InferJob { model: idx, any_version, sequence: parsed.spec, inputs }, parsed.echo))
}

/// The one value of a special input: `uint64_contents`/`uint_contents` holding exactly one value
/// and nothing else, or a raw content of exactly `width` bytes.
fn special_value(t: &InferInputTensor, raw: Option<&Bytes>, width: usize) -> Option<u64> {
    if let Some(raw) = raw {
        return match raw.len() == width {
            true if width == 8 => Some(u64::from_le_bytes(le_array(raw))),
            true => Some(u32::from_le_bytes(le_array(raw)) as u64),
            false => None,
        };
    }
    let c = t.contents.as_ref()?;
    let others = c.bool_contents.len()
        + c.int_contents.len()
        + c.int64_contents.len()
        + c.fp32_contents.len()
        + c.fp64_contents.len()
        + c.bytes_contents.len();
    if others != 0 {
        return None;
    }
    match width {
        8 if c.uint64_contents.len() == 1 && c.uint_contents.is_empty() => Some(c.uint64_contents[0]),
        4 if c.uint_contents.len() == 1 && c.uint64_contents.is_empty() => Some(c.uint_contents[0] as u64),
        _ => None,
    }
}

/// Checks one model input (datatype, shape, size) and returns its bytes; raw contents are
/// borrowed without a copy.
fn input_bytes(port: &PortInfo, t: &InferInputTensor, raw: Option<&Bytes>) -> Result<Bytes> {
    let name = &port.name;
    let expected = datatype(port.elem);
    if t.datatype != expected {
        return Err(Error::with(
            Kind::InvalidPrecision,
            format!("Expected: {expected}; Actual: {}; input name: {name}", t.datatype),
        ));
    }
    let want = || shape_string(port.dims.iter().map(|&d| d as i64));
    if t.shape.len() != port.dims.len() {
        return Err(Error::with(
            Kind::InvalidNoOfShapeDimensions,
            format!("Expected: {}; Actual: {}; input name: {name}", want(), shape_string(t.shape.iter().copied())),
        ));
    }
    if t.shape.iter().zip(&port.dims).any(|(&a, &b)| a != b as i64) {
        return Err(Error::with(
            Kind::InvalidShape,
            format!("Expected: {}; Actual: {}; input name: {name}", want(), shape_string(t.shape.iter().copied())),
        ));
    }
    if let Some(raw) = raw {
        if t.contents.is_some() {
            return Err(Error::with(
                Kind::InvalidMessage,
                format!("input {name} has both contents and raw_input_contents"),
            ));
        }
        if raw.len() != port.byte_size {
            return Err(Error::with(
                Kind::InvalidContentSize,
                format!("Expected: {} bytes; Actual: {} bytes; input name: {name}", port.byte_size, raw.len()),
            ));
        }
        return Ok(raw.clone());
    }
    typed_values(port, t)
}

/// Converts the typed `contents` field for the input's datatype into the tensor's bytes.
fn typed_values(port: &PortInfo, t: &InferInputTensor) -> Result<Bytes> {
    let empty = Default::default();
    let c = t.contents.as_ref().unwrap_or(&empty);
    match port.elem {
        ElemType::F32 => pack(port, &c.fp32_contents, f32::to_le_bytes),
        ElemType::F64 => pack(port, &c.fp64_contents, f64::to_le_bytes),
        ElemType::I32 => pack(port, &c.int_contents, i32::to_le_bytes),
        ElemType::I16 => pack(port, &c.int_contents, |v| (v as i16).to_le_bytes()),
        ElemType::I8 => pack(port, &c.int_contents, |v| (v as i8).to_le_bytes()),
        ElemType::I64 => pack(port, &c.int64_contents, i64::to_le_bytes),
        ElemType::U8 => pack(port, &c.uint_contents, |v| (v as u8).to_le_bytes()),
        ElemType::U16 => pack(port, &c.uint_contents, |v| (v as u16).to_le_bytes()),
        ElemType::U32 => pack(port, &c.uint_contents, u32::to_le_bytes),
        ElemType::U64 => pack(port, &c.uint64_contents, u64::to_le_bytes),
        ElemType::Boolean => pack(port, &c.bool_contents, |v| [v as u8]),
        // KServe has no typed field for 16-bit floats: raw_input_contents only.
        ElemType::F16 | ElemType::BF16 => pack(port, &[] as &[u16], u16::to_le_bytes),
    }
}

/// The KServe datatype name of an OpenVINO element type.
pub fn datatype(e: ElemType) -> &'static str {
    match e {
        ElemType::F32 => "FP32",
        ElemType::F64 => "FP64",
        ElemType::F16 => "FP16",
        ElemType::BF16 => "BF16",
        ElemType::I8 => "INT8",
        ElemType::I16 => "INT16",
        ElemType::I32 => "INT32",
        ElemType::I64 => "INT64",
        ElemType::U8 => "UINT8",
        ElemType::U16 => "UINT16",
        ElemType::U32 => "UINT32",
        ElemType::U64 => "UINT64",
        ElemType::Boolean => "BOOL",
    }
}

fn shape_string(dims: impl Iterator<Item = i64>) -> String {
    let parts: Vec<String> = dims.map(|d| d.to_string()).collect();
    format!("({})", parts.join(","))
}
