//! The TF-Serving front end: protobuf ⇄ domain conversion for `Predict`, `GetModelMetadata` and
//! `GetModelStatus`. This is the only module that sees both the protobuf messages and the domain
//! types; it knows nothing of HTTP/2 framing (that is `grpc`), of JSON (TF-Serving's REST JSON is
//! `rest::tfs`, which builds this module's `TensorProto`s and calls down into it) or of shards.

pub mod encode;
pub mod fast;
pub mod special;

use crate::catalog::{Catalog, ModelMeta};
use crate::error::{Error, Kind, Result};
use crate::proto::tensorflow::serving::{model_spec::VersionChoice, ModelSpec, PredictRequest};
use crate::proto::tensorflow::{DataType, TensorProto};
use crate::request::{InferJob, ModelIdx};
use crate::signature::{pack, ElemType, PortInfo};
use bytes::Bytes;
use prost::Message;
use std::collections::HashMap;
use std::rc::Rc;

/// Decodes a `PredictRequest` (tensor contents stay views into `message`).
pub fn decode_predict(message: Bytes) -> Result<PredictRequest> {
    PredictRequest::decode(message)
        .map_err(|e| Error::with(Kind::InvalidMessage, format!("cannot decode PredictRequest: {e}")))
}

/// Validates a `PredictRequest` for the model `resolve` found into a job for the shards (spec
/// §2.2 steps 1–2: special inputs, then the model inputs; nothing here touches a sequence).
pub fn predict_job(idx: ModelIdx, meta: &ModelMeta, req: &PredictRequest) -> Result<InferJob> {
    let sequence = if meta.stateful { Some(special::extract(&req.inputs)?) } else { None };
    let specials = if meta.stateful {
        [special::SEQUENCE_ID, special::SEQUENCE_CONTROL_INPUT].iter().filter(|k| req.inputs.contains_key(**k)).count()
    } else {
        0
    };
    let inputs = model_inputs(meta, &req.inputs, specials)?;
    let any_version = req.model_spec.as_ref().is_none_or(|s| match s.version_choice {
        None => true,
        Some(VersionChoice::Version(v)) => v == 0,
        Some(VersionChoice::VersionLabel(_)) => false,
    });
    Ok(InferJob { model: idx, any_version, sequence, inputs })
}

/// OVMS's model-input validation (count, name, precision, shape, size) over `TensorProto`s, for
/// every front end that can express its inputs as such (TF-Serving gRPC and REST, KServe REST).
/// `specials` is how many of `inputs` are special inputs that the model does not take. Returns
/// one buffer per model input, in model input order.
pub fn model_inputs(meta: &ModelMeta, inputs: &HashMap<String, TensorProto>, specials: usize) -> Result<Vec<Bytes>> {
    let expected = meta.inputs.len() + specials;
    if inputs.len() != expected {
        return Err(Error::with(Kind::InvalidNoOfInputs, format!("Expected: {expected}; Actual: {}", inputs.len())));
    }
    let mut out = Vec::with_capacity(meta.inputs.len());
    for port in &meta.inputs {
        let t = inputs
            .get(&port.name)
            .ok_or_else(|| Error::with(Kind::InvalidMissingInput, format!("Required input: {}", port.name)))?;
        out.push(input_bytes(port, t)?);
    }
    Ok(out)
}

pub fn resolve(catalog: &Catalog, spec: Option<&ModelSpec>) -> Result<(ModelIdx, Rc<ModelMeta>)> {
    let spec = spec.ok_or_else(|| Error::new(Kind::ModelNameMissing))?;
    catalog.resolve(&spec.name, spec_version(spec)?)
}

/// The version a `ModelSpec` names (None: the default; a label: not found, as OVMS serves none).
pub fn spec_version(spec: &ModelSpec) -> Result<Option<i64>> {
    match &spec.version_choice {
        None => Ok(None),
        Some(VersionChoice::Version(v)) => Ok(Some(*v)),
        Some(VersionChoice::VersionLabel(_)) => Err(Kind::ModelVersionMissing.into()),
    }
}

/// Checks one model input (precision, shape, size) and returns its bytes, borrowing
/// `tensor_content` without a copy when the client used it.
fn input_bytes(port: &PortInfo, t: &TensorProto) -> Result<Bytes> {
    let name = &port.name;
    let expected_dtype = dtype_of(port.elem);
    if t.dtype != expected_dtype as i32 {
        return Err(Error::with(
            Kind::InvalidPrecision,
            format!(
                "Expected: {}; Actual: {}; input name: {name}",
                precision_name(expected_dtype as i32),
                precision_name(t.dtype)
            ),
        ));
    }
    let dims: Vec<i64> = t.tensor_shape.as_ref().map(|s| s.dim.iter().map(|d| d.size).collect()).unwrap_or_default();
    if dims.len() != port.dims.len() {
        return Err(Error::with(
            Kind::InvalidNoOfShapeDimensions,
            format!(
                "Expected: {}; Actual: {}; input name: {name}",
                shape_string(port.dims.iter().map(|&d| d as i64)),
                shape_string(dims.iter().copied())
            ),
        ));
    }
    if dims.iter().zip(&port.dims).any(|(&a, &b)| a != b as i64) {
        return Err(Error::with(
            Kind::InvalidShape,
            format!(
                "Expected: {}; Actual: {}; input name: {name}",
                shape_string(port.dims.iter().map(|&d| d as i64)),
                shape_string(dims.iter().copied())
            ),
        ));
    }
    if !t.tensor_content.is_empty() {
        if t.tensor_content.len() != port.byte_size {
            return Err(Error::with(
                Kind::InvalidContentSize,
                format!(
                    "Expected: {} bytes; Actual: {} bytes; input name: {name}",
                    port.byte_size,
                    t.tensor_content.len()
                ),
            ));
        }
        return Ok(t.tensor_content.clone());
    }
    typed_values(port, t)
}

/// Converts a typed `*_val` field (the other way clients send values) into the tensor's bytes.
fn typed_values(port: &PortInfo, t: &TensorProto) -> Result<Bytes> {
    match port.elem {
        ElemType::F32 => pack(port, &t.float_val, f32::to_le_bytes),
        ElemType::F64 => pack(port, &t.double_val, f64::to_le_bytes),
        ElemType::I32 => pack(port, &t.int_val, i32::to_le_bytes),
        ElemType::I16 => pack(port, &t.int_val, |v| (v as i16).to_le_bytes()),
        ElemType::I8 => pack(port, &t.int_val, |v| (v as i8).to_le_bytes()),
        ElemType::U8 => pack(port, &t.int_val, |v| (v as u8).to_le_bytes()),
        ElemType::U16 => pack(port, &t.int_val, |v| (v as u16).to_le_bytes()),
        ElemType::I64 => pack(port, &t.int64_val, i64::to_le_bytes),
        ElemType::U32 => pack(port, &t.uint32_val, u32::to_le_bytes),
        ElemType::U64 => pack(port, &t.uint64_val, u64::to_le_bytes),
        ElemType::F16 | ElemType::BF16 => pack(port, &t.half_val, |v| (v as u16).to_le_bytes()),
        ElemType::Boolean => pack(port, &t.bool_val, |v| [v as u8]),
    }
}

/// The TF `DataType` of an OpenVINO element type.
pub fn dtype_of(e: ElemType) -> DataType {
    match e {
        ElemType::F32 => DataType::DtFloat,
        ElemType::F64 => DataType::DtDouble,
        ElemType::F16 => DataType::DtHalf,
        ElemType::BF16 => DataType::DtBfloat16,
        ElemType::I8 => DataType::DtInt8,
        ElemType::I16 => DataType::DtInt16,
        ElemType::I32 => DataType::DtInt32,
        ElemType::I64 => DataType::DtInt64,
        ElemType::U8 => DataType::DtUint8,
        ElemType::U16 => DataType::DtUint16,
        ElemType::U32 => DataType::DtUint32,
        ElemType::U64 => DataType::DtUint64,
        ElemType::Boolean => DataType::DtBool,
    }
}

/// OVMS's precision names, as its error details print them.
fn precision_name(dtype: i32) -> &'static str {
    match DataType::try_from(dtype) {
        Ok(DataType::DtFloat) => "FP32",
        Ok(DataType::DtDouble) => "FP64",
        Ok(DataType::DtHalf) => "FP16",
        Ok(DataType::DtBfloat16) => "BF16",
        Ok(DataType::DtInt8) => "I8",
        Ok(DataType::DtInt16) => "I16",
        Ok(DataType::DtInt32) => "I32",
        Ok(DataType::DtInt64) => "I64",
        Ok(DataType::DtUint8) => "U8",
        Ok(DataType::DtUint16) => "U16",
        Ok(DataType::DtUint32) => "U32",
        Ok(DataType::DtUint64) => "U64",
        Ok(DataType::DtBool) => "BOOL",
        Ok(DataType::DtString) => "STRING",
        _ => "UNDEFINED",
    }
}

fn shape_string(dims: impl Iterator<Item = i64>) -> String {
    let parts: Vec<String> = dims.map(|d| d.to_string()).collect();
    format!("({})", parts.join(","))
}
