//! KServe v2 REST (JSON) ⇄ domain: `POST /v2/models/{name}[/versions/{v}]/infer`, the
//! metadata answers, and the JSON of Triton's model repository extension (`/v2/repository/...`,
//! see [`index_request`]; the index and the checks are `crate::kserve::repository`'s, shared with
//! gRPC).
//!
//! Sequences are read by `crate::sequence` (shared with KServe gRPC): Triton's request
//! parameters `sequence_id` (number or string), `sequence_start`, `sequence_end`, or OVMS's special
//! input tensors `sequence_id` (UINT64) / `sequence_control_input` (UINT32). The model inputs are
//! read into `TensorProto`s of the declared datatype and validated by the TF-Serving front end's
//! `tfs::model_inputs` (count, name, precision, shape, size: the same checks and messages).
//! BYTES inputs are valid JSON, but no served model takes strings: they fail the precision check.
//!
//! # The binary tensor data extension (Triton's, which tritonclient.http uses by default)
//!
//! With the header `Inference-Header-Content-Length: N`, the first N bytes of the body are the
//! JSON and the rest is tensor data: each input with `parameters.binary_data_size` takes that many
//! bytes, in the order of `inputs`; the others carry JSON `data` as usual. Checked before anything
//! else: N is a number no larger than the body, each `binary_data_size` is a non-negative integer
//! equal to the declared shape × the datatype's width (BYTES elements have no fixed width: not
//! checked, and refused later as any string input is), an input has `data` or binary data, not
//! both, and the sizes add up to exactly the bytes after the JSON. An input's bytes are a slice of
//! the body (`Bytes`), not a copy.
//!
//! The answer carries an output as binary when asked: per output `parameters.binary_data`, or
//! the request parameter `binary_data_output` for outputs the request does not list (all of them
//! when there is no `outputs` list; OVMS's `sequence_id` output otherwise). A listed output
//! without `binary_data` is JSON, as Triton's server answers (the extension's document suggests
//! `binary_data_output` would apply to it; Triton does not do that, and tritonclient always sets
//! `binary_data` on the outputs it lists). Binary outputs carry
//! `parameters.binary_data_size` instead of `data`; their bytes follow the JSON in the order of
//! `outputs` in the answer, and the answer has `Inference-Header-Content-Length` (see
//! `routes.rs`). With an `outputs` list only the listed outputs are answered (as Triton and KServe
//! gRPC here), in model order; an unknown name is refused before the step runs.

use crate::catalog::ModelMeta;
use crate::error::{Error, Kind, Result};
use crate::kserve::repository::{check_load_params, check_unload_params, Entry, Refusal, UNLOAD_DEPENDENTS};
use crate::proto::tensorflow::{tensor_shape_proto::Dim, DataType, TensorProto, TensorShapeProto};
use crate::request::{InferJob, ModelIdx, Outcome, SequenceId};
use crate::rest::tensor;
use crate::sequence::{self, Echo, ParamValue, Special};
use crate::signature::{ElemType, PortInfo};
use crate::status::{http, Code};
use crate::tfs::{dtype_of, model_inputs};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

pub use crate::kserve::datatype;

fn elem_of(datatype: &str) -> Option<ElemType> {
    Some(match datatype {
        "FP32" => ElemType::F32,
        "FP64" => ElemType::F64,
        "FP16" => ElemType::F16,
        "BF16" => ElemType::BF16,
        "INT8" => ElemType::I8,
        "INT16" => ElemType::I16,
        "INT32" => ElemType::I32,
        "INT64" => ElemType::I64,
        "UINT8" => ElemType::U8,
        "UINT16" => ElemType::U16,
        "UINT32" => ElemType::U32,
        "UINT64" => ElemType::U64,
        "BOOL" => ElemType::Boolean,
        _ => return None,
    })
}

/// A parsed infer request: the job, how to tell the client its sequence, the request id, and
/// which outputs to answer how.
#[derive(Debug)]
pub struct Infer {
    pub job: InferJob,
    pub echo: Echo,
    pub id: Option<String>,
    pub outputs: Outputs,
}

/// Which outputs the answer carries, and which of them as binary data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outputs {
    /// Per model output, in model order: None when not requested, else Some(binary).
    pub model: Vec<Option<bool>>,
    /// Whether OVMS's `sequence_id` output (answered whenever the special inputs name the
    /// sequence) goes as binary data.
    pub sequence_id: bool,
}

fn param_value(v: &Value) -> ParamValue<'_> {
    match v {
        Value::Bool(b) => ParamValue::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => ParamValue::UInt(u),
            (None, Some(i)) => ParamValue::Int(i),
            _ => ParamValue::Other,
        },
        Value::String(s) => ParamValue::Str(s),
        _ => ParamValue::Other,
    }
}

/// An input's values: JSON `data`, or its slice of the binary data after the JSON.
enum Data<'a> {
    Json(&'a Value),
    Binary(Bytes),
}

struct Input<'a> {
    name: &'a str,
    datatype: &'a str,
    shape: Vec<i64>,
    data: Data<'a>,
}

/// The binary tensor data of a request and how much of it the inputs read so far.
struct Binary {
    data: Bytes,
    at: usize,
    /// Whether the request had `Inference-Header-Content-Length` (for the message when not).
    header: bool,
}

/// Element count of a shape; None when it overflows (a client may send any dims).
fn elements(shape: &[i64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(u64::try_from(d).ok()?))
}

/// An object's optional `parameters` object (`whose` names the object for the message).
fn object_params(o: &Map<String, Value>, whose: impl FnOnce() -> String) -> Result<Option<&Map<String, Value>>> {
    match o.get("parameters") {
        None => Ok(None),
        Some(Value::Object(p)) => Ok(Some(p)),
        Some(_) => {
            Err(Error::with(Kind::RestCouldNotParseParameters, format!("parameters of {} must be an object", whose())))
        }
    }
}

fn parse_input<'a>(v: &'a Value, binary: &mut Binary, model: &str) -> Result<Input<'a>> {
    let bad = |what: &str| Error::with(Kind::RestCouldNotParseInput, what.to_string());
    let o = v.as_object().ok_or_else(|| bad("an input is not a JSON object"))?;
    let name = o.get("name").and_then(Value::as_str).ok_or_else(|| bad("an input has no \"name\" string"))?;
    let datatype = o
        .get("datatype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(&format!("input {name} has no \"datatype\" string")))?;
    let shape = o
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| i64::try_from(d).ok())).collect::<Option<Vec<i64>>>())
        .ok_or_else(|| bad(&format!("input {name} has no \"shape\" array of non-negative integers")))?;
    let size = match object_params(o, || format!("input {name}"))?.and_then(|p| p.get("binary_data_size")) {
        None => None,
        Some(size) => Some(size.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
            Error::with(
                Kind::RestBinaryDataSizeInvalid,
                format!("input {name}: expected a non-negative integer; Actual: {size}"),
            )
        })?),
    };
    let Some(size) = size else {
        let data = o.get("data").ok_or_else(|| {
            bad(&format!("input {name} has no \"data\" (nor \"parameters\": {{\"binary_data_size\": N}})"))
        })?;
        return Ok(Input { name, datatype, shape, data: Data::Json(data) });
    };
    if o.contains_key("data") {
        return Err(Error::with(
            Kind::RestContentsFieldNotEmpty,
            format!("input {name} has both \"data\" and \"binary_data_size\""),
        ));
    }
    // BYTES elements are length-prefixed, so only fixed-width datatypes have a size to check.
    if datatype != "BYTES" {
        let elem = elem_of(datatype).ok_or_else(|| bad(&format!("input {name}: unknown datatype {datatype:?}")))?;
        let expected = elements(&shape).and_then(|n| n.checked_mul(elem.byte_width() as u64));
        if expected != Some(size as u64) {
            let expected = expected.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
            return Err(Error::with(
                Kind::InvalidContentSize,
                format!(
                    "Expected: {expected} bytes (shape {}, {datatype}); Actual: {size} bytes (binary_data_size); input name: {name}",
                    shape_text(&shape)
                ),
            ));
        }
    }
    let available = binary.data.len() - binary.at;
    if size > available {
        let details = if binary.header {
            format!(
                "unexpected size for input '{name}', expecting {} additional bytes for model '{model}'",
                size - available
            )
        } else {
            format!(
                "input {name} has binary_data_size {size}, but the request has no Inference-Header-Content-Length \
                 header, so no binary data"
            )
        };
        return Err(Error::with(Kind::RestBinaryBufferExceeded, details));
    }
    let data = binary.data.slice(binary.at..binary.at + size);
    binary.at += size;
    Ok(Input { name, datatype, shape, data: Data::Binary(data) })
}

fn shape_text(shape: &[i64]) -> String {
    format!("{shape:?}").replace(' ', "")
}

/// The one value of a special input, when its data holds exactly one unsigned integer (JSON)
/// or exactly `width` bytes (binary, little-endian; 8 for the id, 4 for the control, as raw
/// contents over gRPC).
fn special_value(data: &Data<'_>, width: usize) -> Option<u64> {
    match data {
        Data::Json(v) => {
            let mut v = *v;
            while let Value::Array(a) = v {
                match a.as_slice() {
                    [one] => v = one,
                    _ => return None,
                }
            }
            v.as_u64()
        }
        Data::Binary(b) => match width {
            8 => <[u8; 8]>::try_from(b.as_ref()).ok().map(u64::from_le_bytes),
            _ => <[u8; 4]>::try_from(b.as_ref()).ok().map(|a| u32::from_le_bytes(a) as u64),
        },
    }
}

/// Splits the body at `Inference-Header-Content-Length` (`header`, as sent): the JSON, then
/// the binary tensor data.
fn split_body(body: &Bytes, header: Option<&str>) -> Result<(Bytes, Binary)> {
    let Some(value) = header else {
        return Ok((body.clone(), Binary { data: Bytes::new(), at: 0, header: false }));
    };
    let n = Some(value)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<usize>().ok())
        .ok_or_else(|| {
            Error::with(
                Kind::RestInferenceHeaderContentLengthInvalid,
                format!("expected a byte count; Actual: {value:?}"),
            )
        })?;
    if n > body.len() {
        return Err(Error::with(
            Kind::RestInferenceHeaderContentLengthInvalid,
            format!("the inference header size {n} is larger than the body ({} bytes)", body.len()),
        ));
    }
    Ok((body.slice(..n), Binary { data: body.slice(n..), at: 0, header: true }))
}

/// Reads the request's `outputs` and `binary_data_output` against the model's outputs.
fn requested_outputs(
    meta: &ModelMeta,
    doc: &Map<String, Value>,
    params: Option<&Map<String, Value>>,
) -> Result<Outputs> {
    let bad_param = |what: String| Error::with(Kind::RestCouldNotParseParameters, what);
    let default = match params.and_then(|p| p.get("binary_data_output")) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad_param("binary_data_output must be a bool".into())),
    };
    let list = match doc.get("outputs") {
        None => return Ok(Outputs { model: vec![Some(default); meta.outputs.len()], sequence_id: default }),
        Some(Value::Array(a)) if a.is_empty() => {
            // No output named: all of them, as KServe gRPC here and Triton answer.
            return Ok(Outputs { model: vec![Some(default); meta.outputs.len()], sequence_id: default });
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(Error::with(Kind::InvalidMessage, "\"outputs\" must be an array")),
    };
    let mut out = Outputs { model: vec![None; meta.outputs.len()], sequence_id: default };
    for o in list {
        let name = o.as_object().and_then(|o| o.get("name")).and_then(Value::as_str).ok_or_else(|| {
            Error::with(Kind::InvalidMessage, "each of \"outputs\" must be an object with a \"name\" string")
        })?;
        let binary = match o.as_object().map(|o| object_params(o, || format!("output {name}"))).transpose()?.flatten() {
            None => None,
            Some(p) => match p.get("binary_data") {
                None => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => return Err(bad_param(format!("binary_data of output {name} must be a bool"))),
            },
        };
        match meta.outputs.iter().position(|p| p.name == name) {
            // A name listed twice: the first entry decides.
            Some(i) => {
                if out.model[i].is_none() {
                    out.model[i] = Some(binary.unwrap_or(false));
                }
            }
            None if name == sequence::SEQUENCE_ID => out.sequence_id = binary.unwrap_or(default),
            None => {
                return Err(Error::with(
                    Kind::InvalidMessage,
                    format!("requested output {name} is not an output of the model"),
                ))
            }
        }
    }
    Ok(out)
}

/// Parses and validates an infer request for the model `meta` (nothing here touches a sequence):
/// `body` is the whole body, `header` the `Inference-Header-Content-Length` value if sent.
pub fn infer_job(idx: ModelIdx, meta: &ModelMeta, body: &Bytes, header: Option<&str>) -> Result<Infer> {
    let (json, mut binary) = split_body(body, header)?;
    let doc: Value = serde_json::from_slice(&json).map_err(|_| Error::new(Kind::JsonInvalid))?;
    let doc = doc.as_object().ok_or(Kind::RestBodyIsNotAnObject)?;
    let id = match doc.get("id") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(Error::with(Kind::RestCouldNotParseInput, "\"id\" must be a string")),
    };
    let params = match doc.get("parameters") {
        None => None,
        Some(Value::Object(p)) => Some(p),
        Some(_) => return Err(Kind::RestCouldNotParseParameters.into()),
    };
    let inputs =
        doc.get("inputs").and_then(Value::as_array).filter(|a| !a.is_empty()).ok_or(Kind::RestNoInputsFound)?;
    let inputs: Vec<Input> = inputs.iter().map(|v| parse_input(v, &mut binary, &meta.name)).collect::<Result<_>>()?;
    if binary.at != binary.data.len() {
        return Err(Error::with(
            Kind::RestBinaryDataExcess,
            format!(
                "for model '{}': the inputs' binary_data_size add up to {} bytes, but {} bytes follow the inference header",
                meta.name,
                binary.at,
                binary.data.len()
            ),
        ));
    }

    let special = |name: &str, width: usize| {
        inputs.iter().find(|i| i.name == name).map(|i| Special {
            shape: Some(i.shape.as_slice()),
            datatype: Some(i.datatype),
            value: special_value(&i.data, width),
        })
    };
    let get = |k: &str| params.and_then(|p| p.get(k)).map(param_value);
    let parsed = sequence::parse(
        meta.stateful,
        get,
        special(sequence::SEQUENCE_ID, 8),
        special(sequence::SEQUENCE_CONTROL_INPUT, 4),
    )?;

    let mut tensors = HashMap::with_capacity(inputs.len());
    for i in &inputs {
        let is_special = i.name == sequence::SEQUENCE_ID || i.name == sequence::SEQUENCE_CONTROL_INPUT;
        if parsed.echo == Echo::Tensor && is_special {
            continue;
        }
        let t = match (i.datatype, elem_of(i.datatype), &i.data) {
            // Strings are valid KServe JSON; the precision check rejects them for our models.
            ("BYTES", _, _) => TensorProto {
                dtype: DataType::DtString as i32,
                tensor_shape: shape_proto(&i.shape),
                ..Default::default()
            },
            // Already checked against shape × width; a slice of the body, not a copy.
            (_, Some(elem), Data::Binary(b)) => TensorProto {
                dtype: dtype_of(elem) as i32,
                tensor_shape: shape_proto(&i.shape),
                tensor_content: b.clone(),
                ..Default::default()
            },
            (_, Some(elem), Data::Json(data)) => {
                let mut content = Vec::new();
                let count = tensor::flat(data, elem, &mut content).ok_or_else(|| {
                    Error::with(
                        Kind::RestCouldNotParseInput,
                        format!("data of input {} is not valid {}", i.name, i.datatype),
                    )
                })?;
                let expected = elements(&i.shape);
                if expected != Some(count as u64) {
                    let expected = expected.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
                    return Err(Error::with(
                        Kind::InvalidValueCount,
                        format!("Expected: {expected}; Actual: {count}; input name: {}", i.name),
                    ));
                }
                TensorProto {
                    dtype: dtype_of(elem) as i32,
                    tensor_shape: shape_proto(&i.shape),
                    tensor_content: content.into(),
                    ..Default::default()
                }
            }
            (dt, None, _) => {
                return Err(Error::with(
                    Kind::RestCouldNotParseInput,
                    format!("input {}: unknown datatype {dt:?}", i.name),
                ));
            }
        };
        if tensors.insert(i.name.to_string(), t).is_some() {
            return Err(Error::with(Kind::RestCouldNotParseInput, format!("input {} is given twice", i.name)));
        }
    }
    let model = model_inputs(meta, &tensors, 0)?;
    let outputs = requested_outputs(meta, doc, params)?;
    // The version is in the URL: the route sets `any_version`.
    let job = InferJob { model: idx, any_version: true, sequence: parsed.spec, inputs: model };
    Ok(Infer { job, echo: parsed.echo, id, outputs })
}

fn shape_proto(dims: &[i64]) -> Option<TensorShapeProto> {
    Some(TensorShapeProto {
        dim: dims.iter().map(|&size| Dim { size, name: String::new() }).collect(),
        unknown_rank: false,
    })
}

fn write_param(out: &mut Vec<u8>, v: ParamValue<'_>) {
    match v {
        ParamValue::UInt(n) => out.extend_from_slice(n.to_string().as_bytes()),
        ParamValue::Int(n) => out.extend_from_slice(n.to_string().as_bytes()),
        ParamValue::Str(s) => tensor::write_str(out, s),
        ParamValue::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        ParamValue::Other => out.extend_from_slice(b"null"),
    }
}

/// An infer answer: the JSON, then the binary outputs' bytes in the order the JSON lists them
/// (empty when no output is binary; then the answer is plain JSON).
#[derive(Debug)]
pub struct Answer {
    pub json: Vec<u8>,
    pub binary: Vec<Bytes>,
}

/// The infer answer (requested outputs in model order, JSON data flat in row-major order).
pub fn infer_response(meta: &ModelMeta, outcome: &Outcome, echo: Echo, id: Option<&str>, outputs: &Outputs) -> Answer {
    let mut out = Vec::with_capacity(128 + outcome.outputs.len() * 4);
    let mut binary = Vec::new();
    out.extend_from_slice(b"{\"model_name\":");
    tensor::write_str(&mut out, &meta.name);
    out.extend_from_slice(format!(",\"model_version\":\"{}\",\"id\":", meta.version).as_bytes());
    tensor::write_str(&mut out, id.unwrap_or(""));
    if let (Echo::Param(ty), Some(sid)) = (echo, &outcome.sequence_id) {
        out.extend_from_slice(b",\"parameters\":{\"sequence_id\":");
        write_param(&mut out, sequence::echo_param(ty, sid));
        out.push(b'}');
    }
    out.extend_from_slice(b",\"outputs\":[");
    let mut first = true;
    let mut at = 0;
    for (port, want) in meta.outputs.iter().zip(&outputs.model) {
        let range = at..at + port.byte_size;
        at += port.byte_size;
        let Some(as_binary) = *want else { continue };
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        write_tensor_head(&mut out, &port.name, datatype(port.elem), &port.dims);
        if as_binary {
            write_binary_size(&mut out, port.byte_size);
            binary.push(outcome.outputs.slice(range));
        } else {
            out.extend_from_slice(b",\"data\":");
            tensor::write_flat(&mut out, port.elem, &outcome.outputs[range]);
            out.push(b'}');
        }
    }
    if let (Echo::Tensor, Some(sid)) = (echo, &outcome.sequence_id) {
        if !first {
            out.push(b',');
        }
        write_tensor_head(&mut out, sequence::SEQUENCE_ID, "UINT64", &[1]);
        match (sid, outputs.sequence_id) {
            (SequenceId::Num(n), true) => {
                write_binary_size(&mut out, 8);
                binary.push(Bytes::copy_from_slice(&n.to_le_bytes()));
            }
            (SequenceId::Num(n), false) => out.extend_from_slice(format!(",\"data\":[{n}]}}").as_bytes()),
            // The special inputs only name numeric sequences; written as JSON should that change.
            (SequenceId::Str(s), _) => {
                out.extend_from_slice(b",\"data\":[");
                tensor::write_str(&mut out, s);
                out.extend_from_slice(b"]}");
            }
        }
    }
    out.extend_from_slice(b"]}");
    Answer { json: out, binary }
}

/// `{"name":…,"datatype":…,"shape":[…]` (the caller closes the object).
fn write_tensor_head(out: &mut Vec<u8>, name: &str, datatype: &str, dims: &[usize]) {
    out.extend_from_slice(b"{\"name\":");
    tensor::write_str(out, name);
    out.extend_from_slice(format!(",\"datatype\":\"{datatype}\",\"shape\":{dims:?}").replace(' ', "").as_bytes());
}

fn write_binary_size(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(format!(",\"parameters\":{{\"binary_data_size\":{n}}}}}").as_bytes());
}

/// `GET /v2/models/{name}[/versions/{v}]`.
/// `versions`: every version of the model that takes new sequences (ascending).
pub fn metadata_json(meta: &ModelMeta, versions: &[i64]) -> Vec<u8> {
    let ports = |ps: &[PortInfo]| -> Vec<Value> {
        ps.iter().map(|p| json!({"name": p.name, "datatype": datatype(p.elem), "shape": p.dims})).collect()
    };
    let v = json!({
        "name": meta.name,
        "versions": versions.iter().map(i64::to_string).collect::<Vec<_>>(),
        "platform": "OpenVINO",
        "inputs": ports(&meta.inputs),
        "outputs": ports(&meta.outputs),
    });
    tensor::to_json(&v)
}

/// `GET /v2`. `binary_tensor_data` is the name Triton reports for the extension above.
pub fn server_metadata_json() -> Vec<u8> {
    let v = json!({
        "name": "seqcore",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["sequence", "binary_tensor_data", "model_repository"],
    });
    tensor::to_json(&v)
}

/// The HTTP status Triton's REST front end gives a repository call's code (`http_server.cc`,
/// `HttpCodeFromError`): INTERNAL 500, NOT_FOUND 404, UNAVAILABLE 503, UNSUPPORTED 501, and
/// 400 for the codes without a direct match (INVALID_ARG among them). A domain error (no
/// controller, too many waiting) keeps its own status (`error::Kind`).
pub fn repository_status(code: Code) -> u16 {
    match code {
        Code::Ok => http::OK,
        Code::Internal => http::INTERNAL_SERVER_ERROR,
        Code::NotFound => http::NOT_FOUND,
        Code::Unavailable => http::SERVICE_UNAVAILABLE,
        Code::Unimplemented => http::NOT_IMPLEMENTED,
        _ => http::BAD_REQUEST,
    }
}

/// A repository request body: empty, or a JSON object.
fn repository_body(body: &[u8]) -> std::result::Result<Option<Map<String, Value>>, Refusal> {
    if body.is_empty() {
        return Ok(None);
    }
    let invalid = |message: String| Refusal { code: Code::InvalidArgument, message };
    match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => Ok(Some(o)),
        Ok(_) => Err(invalid("the request body is not a JSON object".to_string())),
        Err(e) => Err(invalid(format!("failed to parse the request JSON buffer: {e}"))),
    }
}

/// The `parameters` object of a repository request body (none: empty).
fn repository_params(o: Option<&Map<String, Value>>) -> std::result::Result<Option<&Map<String, Value>>, Refusal> {
    match o.and_then(|o| o.get("parameters")) {
        None => Ok(None),
        Some(Value::Object(p)) => Ok(Some(p)),
        Some(_) => {
            Err(Refusal { code: Code::InvalidArgument, message: "'parameters' is not a JSON object".to_string() })
        }
    }
}

/// `POST /v2/repository/index`: the body is empty (tritonclient sends none) or `{"ready": bool}`;
/// answers whether only READY versions are asked for.
pub fn index_request(body: &[u8]) -> std::result::Result<bool, Refusal> {
    match repository_body(body)?.as_ref().and_then(|o| o.get("ready")) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        // Triton's message (http_server.cc).
        Some(_) => Err(Refusal {
            code: Code::InvalidArgument,
            message: "Invalid value for 'ready': expected a boolean".to_string(),
        }),
    }
}

/// The index as Triton's REST answer: a JSON array of `{"name", "version", "state", "reason"}`,
/// each member left out when it has no value (a name-only entry, an empty reason), as Triton's
/// `TRITONSERVER_ServerModelIndex` writes it.
pub fn index_json(entries: &[Entry<'_>]) -> Vec<u8> {
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut o = Map::new();
            o.insert("name".into(), Value::from(e.name));
            if let Some(v) = e.version {
                o.insert("version".into(), Value::from(v.to_string()));
            }
            if !e.state.is_empty() {
                o.insert("state".into(), Value::from(e.state));
            }
            if !e.reason.is_empty() {
                o.insert("reason".into(), Value::from(e.reason));
            }
            Value::Object(o)
        })
        .collect();
    tensor::to_json(&Value::Array(list))
}

/// `POST /v2/repository/models/{name}/load`: the body is empty, `{}` (tritonclient's default), or
/// has `parameters`, none of which is accepted.
pub fn load_request(body: &[u8]) -> std::result::Result<(), Refusal> {
    let o = repository_body(body)?;
    let params = repository_params(o.as_ref())?;
    check_load_params(params.into_iter().flat_map(|p| p.keys().map(String::as_str)))
}

/// `POST /v2/repository/models/{name}/unload`: the body is empty or has `parameters` with at
/// most `unload_dependents`, a boolean (tritonclient sends `{"parameters":
/// {"unload_dependents": false}}`).
pub fn unload_request(body: &[u8]) -> std::result::Result<(), Refusal> {
    let o = repository_body(body)?;
    let Some(params) = repository_params(o.as_ref())? else { return Ok(()) };
    if params.get(UNLOAD_DEPENDENTS).is_some_and(|v| !v.is_boolean()) {
        return Err(Refusal {
            code: Code::InvalidArgument,
            message: "Unable to parse 'unload_dependents': expected a boolean".to_string(),
        });
    }
    check_unload_params(params.keys().map(|k| (k.as_str(), true)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_summator as summator;
    use crate::request::{Control, ModelIdx};

    fn parse(body: &str) -> std::result::Result<Infer, String> {
        infer_job(ModelIdx(0), &summator(), &Bytes::copy_from_slice(body.as_bytes()), None).map_err(|e| e.to_string())
    }

    /// A request with binary data: `json`, then `bin`; the header is `json`'s length unless given.
    fn binary(meta: &ModelMeta, json: &str, bin: &[u8], header: Option<&str>) -> Result<(Infer, Bytes)> {
        let body = Bytes::from([json.as_bytes(), bin].concat());
        let len = json.len().to_string();
        infer_job(ModelIdx(0), meta, &body, Some(header.unwrap_or(&len))).map(|i| (i, body))
    }

    const INPUT: &str = r#"{"name":"input","shape":[1,1],"datatype":"FP32","data":[2.5]}"#;

    #[test]
    fn triton_parameters() {
        let p = parse(&format!(r#"{{"id":"r1","parameters":{{"sequence_id":18446744073709551615,"sequence_start":true}},"inputs":[{INPUT}]}}"#)).unwrap();
        let s = p.job.sequence.unwrap();
        assert_eq!((s.control, s.id), (Control::Start, SequenceId::Num(u64::MAX)));
        assert_eq!(p.id.as_deref(), Some("r1"));
        assert_eq!(&p.job.inputs[0][..], &2.5f32.to_le_bytes());
        let p = parse(&format!(r#"{{"parameters":{{"sequence_id":"abc","sequence_end":true}},"inputs":[{INPUT}]}}"#))
            .unwrap();
        assert_eq!(p.job.sequence.unwrap().id, SequenceId::Str("abc".into()));
    }

    #[test]
    fn ovms_special_tensors() {
        let body = format!(
            r#"{{"inputs":[{INPUT},{{"name":"sequence_id","shape":[1],"datatype":"UINT64","data":[42]}},{{"name":"sequence_control_input","shape":[1],"datatype":"UINT32","data":[1]}}]}}"#
        );
        let p = parse(&body).unwrap();
        assert_eq!(p.echo, Echo::Tensor);
        assert_eq!(p.job.sequence.unwrap().control, Control::Start);
        let e = parse(&format!(
            r#"{{"inputs":[{INPUT},{{"name":"sequence_id","shape":[2],"datatype":"UINT64","data":[1,2]}}]}}"#
        ))
        .unwrap_err();
        assert_eq!(e, "Invalid input shape - Required shape for sequence_id is: (1)");
    }

    #[test]
    fn input_errors() {
        let e = parse(r#"{"parameters":{"sequence_id":1},"inputs":[{"name":"input","shape":[1,1],"datatype":"BYTES","data":["x"]}]}"#).unwrap_err();
        assert_eq!(e, "Invalid input precision - Expected: FP32; Actual: STRING; input name: input");
        let e = parse(r#"{"parameters":{"sequence_id":1},"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":[1,2]}]}"#).unwrap_err();
        assert_eq!(e, "Invalid number of values in tensor proto container - Expected: 1; Actual: 2; input name: input");
        let e = parse(r#"{"parameters":{"sequence_id":1},"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#).unwrap_err();
        assert_eq!(e, "Invalid input shape - Expected: (1,1); Actual: (1,2); input name: input");
        // A shape whose element count overflows is a count mismatch, not an arithmetic panic.
        let e = parse(r#"{"parameters":{"sequence_id":1},"inputs":[{"name":"input","shape":[4294967296,4294967296],"datatype":"FP32","data":[1]}]}"#).unwrap_err();
        assert!(e.starts_with("Invalid number of values in tensor proto container - Expected: more than 2^64"), "{e}");
        assert_eq!(parse("{}").unwrap_err(), "Invalid JSON structure, missing inputs");
        assert_eq!(parse("nope").unwrap_err(), "The file is not valid json");
        assert!(parse(r#"{"inputs":[{"name":"input"}]}"#).unwrap_err().starts_with("Could not parse input content"));
    }

    /// A stateless model with two inputs and two outputs, for mixed JSON and binary inputs.
    fn two_in_two_out() -> ModelMeta {
        use crate::signature::test_port_f32 as port;
        ModelMeta {
            name: "pair".into(),
            stateful: false,
            inputs: vec![port("a", &[1, 2]), port("b", &[3])],
            outputs: vec![port("x", &[1, 2]), port("y", &[1])],
            ..summator()
        }
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn binary_inputs_mixed_with_json() {
        // `b` is binary, `a` JSON; the binary input's bytes are a slice of the body.
        let json = r#"{"inputs":[{"name":"b","shape":[3],"datatype":"FP32","parameters":{"binary_data_size":12}},{"name":"a","shape":[1,2],"datatype":"FP32","data":[[1.5,2.5]]}]}"#;
        let (p, body) = binary(&two_in_two_out(), json, &f32s(&[7.0, 8.0, 9.0]), None).unwrap();
        assert_eq!(&p.job.inputs[0][..], &f32s(&[1.5, 2.5])[..]);
        assert_eq!(&p.job.inputs[1][..], &f32s(&[7.0, 8.0, 9.0])[..]);
        assert_eq!(p.job.inputs[1].as_ptr(), body[json.len()..].as_ptr(), "binary input copied");
        // Both inputs binary, consumed in the order of `inputs`.
        let json = r#"{"inputs":[{"name":"a","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}},{"name":"b","shape":[3],"datatype":"FP32","parameters":{"binary_data_size":12}}]}"#;
        let (p, _) = binary(&two_in_two_out(), json, &f32s(&[1.0, 2.0, 3.0, 4.0, 5.0]), None).unwrap();
        assert_eq!(&p.job.inputs[0][..], &f32s(&[1.0, 2.0])[..]);
        assert_eq!(&p.job.inputs[1][..], &f32s(&[3.0, 4.0, 5.0])[..]);
        // OVMS's special inputs as binary (UINT64 id, UINT32 control) beside a JSON input.
        let json = format!(
            r#"{{"inputs":[{INPUT},{{"name":"sequence_id","shape":[1],"datatype":"UINT64","parameters":{{"binary_data_size":8}}}},{{"name":"sequence_control_input","shape":[1],"datatype":"UINT32","parameters":{{"binary_data_size":4}}}}]}}"#
        );
        let bin = [&42u64.to_le_bytes()[..], &1u32.to_le_bytes()].concat();
        let (p, _) = binary(&summator(), &json, &bin, None).unwrap();
        assert_eq!(p.echo, Echo::Tensor);
        let s = p.job.sequence.unwrap();
        assert_eq!((s.control, s.id), (Control::Start, SequenceId::Num(42)));
        assert_eq!(&p.job.inputs[0][..], &2.5f32.to_le_bytes());
        // The header without any binary input: plain JSON.
        let (p, _) =
            binary(&summator(), &format!(r#"{{"parameters":{{"sequence_id":3}},"inputs":[{INPUT}]}}"#), b"", None)
                .unwrap();
        assert_eq!(p.job.sequence.unwrap().id, SequenceId::Num(3));
    }

    #[test]
    fn binary_data_errors() {
        let m = summator();
        let bin_input = |size: &str| {
            format!(
                r#"{{"parameters":{{"sequence_id":1}},"inputs":[{{"name":"input","shape":[1,1],"datatype":"FP32","parameters":{{"binary_data_size":{size}}}}}]}}"#
            )
        };
        let one = 1.0f32.to_le_bytes();
        // (what, JSON, binary data, Inference-Header-Content-Length if not the JSON's length, message)
        type Case<'a> = (&'a str, String, Vec<u8>, Option<&'a str>, &'a str);
        let cases: Vec<Case> = vec![
            ("size larger than shape × width", bin_input("8"), [one, one].concat(), None,
             "Invalid content size of tensor proto - Expected: 4 bytes (shape [1,1], FP32); Actual: 8 bytes (binary_data_size); input name: input"),
            ("size smaller than shape × width", bin_input("2"), one[..2].to_vec(), None,
             "Invalid content size of tensor proto - Expected: 4 bytes (shape [1,1], FP32); Actual: 2 bytes (binary_data_size); input name: input"),
            ("size beyond the body", bin_input("4"), one[..3].to_vec(), None,
             "Received buffer size is smaller than binary_data_size parameter indicates - unexpected size for input 'input', expecting 1 additional bytes for model 'summator'"),
            ("bytes left after the inputs", bin_input("4"), [one, one].concat(), None,
             "Unexpected additional input data - for model 'summator': the inputs' binary_data_size add up to 4 bytes, but 8 bytes follow the inference header"),
            ("binary data after a JSON-only request", format!(r#"{{"parameters":{{"sequence_id":1}},"inputs":[{INPUT}]}}"#), one.to_vec(), None,
             "Unexpected additional input data - for model 'summator': the inputs' binary_data_size add up to 0 bytes, but 4 bytes follow the inference header"),
            ("negative size", bin_input("-4"), one.to_vec(), None,
             "binary_data_size parameter is invalid and cannot be parsed - input input: expected a non-negative integer; Actual: -4"),
            ("size not a number", bin_input(r#""4""#), one.to_vec(), None,
             r#"binary_data_size parameter is invalid and cannot be parsed - input input: expected a non-negative integer; Actual: "4""#),
            ("N larger than the body", bin_input("4"), one.to_vec(), Some("1000"),
             "Inference-Header-Content-Length header is invalid and couldn't be parsed - the inference header size 1000 is larger than the body (132 bytes)"),
            ("N not a number", bin_input("4"), one.to_vec(), Some("abc"),
             r#"Inference-Header-Content-Length header is invalid and couldn't be parsed - expected a byte count; Actual: "abc""#),
            ("N negative", bin_input("4"), one.to_vec(), Some("-1"),
             r#"Inference-Header-Content-Length header is invalid and couldn't be parsed - expected a byte count; Actual: "-1""#),
            ("N sent twice", bin_input("4"), one.to_vec(), Some("128,128"),
             r#"Inference-Header-Content-Length header is invalid and couldn't be parsed - expected a byte count; Actual: "128,128""#),
            ("N empty", bin_input("4"), one.to_vec(), Some(""),
             r#"Inference-Header-Content-Length header is invalid and couldn't be parsed - expected a byte count; Actual: """#),
            ("N cuts the JSON", bin_input("4"), one.to_vec(), Some("10"), "The file is not valid json"),
            ("data and binary_data_size", r#"{"parameters":{"sequence_id":1},"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}"#.into(), one.to_vec(), None,
             "Request contains values both in binary data and in content value - input input has both \"data\" and \"binary_data_size\""),
            ("input parameters not an object", r#"{"parameters":{"sequence_id":1},"inputs":[{"name":"input","shape":[1,1],"datatype":"FP32","parameters":4}]}"#.into(), vec![], None,
             "Could not parse request parameters - parameters of input input must be an object"),
            ("BYTES as binary", r#"{"parameters":{"sequence_id":1},"inputs":[{"name":"input","shape":[1,1],"datatype":"BYTES","parameters":{"binary_data_size":5}}]}"#.into(), b"\x01\0\0\0x".to_vec(), None,
             "Invalid input precision - Expected: FP32; Actual: STRING; input name: input"),
            ("unknown datatype as binary", r#"{"parameters":{"sequence_id":1},"inputs":[{"name":"input","shape":[1,1],"datatype":"FP8","parameters":{"binary_data_size":1}}]}"#.into(), vec![0], None,
             "Could not parse input content. Not valid ndarray detected - input input: unknown datatype \"FP8\""),
            ("shape overflows", r#"{"parameters":{"sequence_id":1},"inputs":[{"name":"input","shape":[4294967296,4294967296],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#.into(), one.to_vec(), None,
             "Invalid content size of tensor proto - Expected: more than 2^64 bytes (shape [4294967296,4294967296], FP32); Actual: 4 bytes (binary_data_size); input name: input"),
            ("special input of the wrong width", format!(r#"{{"inputs":[{INPUT},{{"name":"sequence_id","shape":[1],"datatype":"UINT32","parameters":{{"binary_data_size":4}}}}]}}"#), 7u32.to_le_bytes().to_vec(), None,
             "Could not find sequence id in expected tensor proto field uint64_val - Expected datatype: UINT64; Actual: UINT32; input name: sequence_id"),
        ];
        for (what, json, bin, header, want) in cases {
            let err = binary(&m, &json, &bin, header).map(|_| ()).unwrap_err();
            assert_eq!(err.to_string(), want, "{what}");
            assert_eq!(err.kind.http_status(), 400, "{what}");
        }
        // Binary data named but no header at all (the body is the JSON): the message says what
        // is missing.
        let body = Bytes::from(bin_input("4"));
        let e = infer_job(ModelIdx(0), &m, &body, None).unwrap_err();
        assert_eq!(e.to_string(), "Received buffer size is smaller than binary_data_size parameter indicates - input input has binary_data_size 4, but the request has no Inference-Header-Content-Length header, so no binary data");
    }

    fn outputs_of(extra: &str) -> std::result::Result<Outputs, String> {
        let json = format!(
            r#"{{{extra}"inputs":[{{"name":"a","shape":[1,2],"datatype":"FP32","data":[1,2]}},{{"name":"b","shape":[3],"datatype":"FP32","data":[1,2,3]}}]}}"#
        );
        infer_job(ModelIdx(0), &two_in_two_out(), &Bytes::from(json), None)
            .map(|i| i.outputs)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn requested_outputs_follow_triton() {
        let o = |model: Vec<Option<bool>>, sequence_id| Outputs { model, sequence_id };
        let cases: Vec<(&str, Outputs)> = vec![
            ("", o(vec![Some(false), Some(false)], false)),
            (r#""parameters":{"binary_data_output":true},"#, o(vec![Some(true), Some(true)], true)),
            (r#""parameters":{"binary_data_output":true},"outputs":[],"#, o(vec![Some(true), Some(true)], true)),
            (r#""outputs":[{"name":"y","parameters":{"binary_data":true}}],"#, o(vec![None, Some(true)], false)),
            (
                r#""outputs":[{"name":"y"},{"name":"x","parameters":{"binary_data":false}}],"#,
                o(vec![Some(false), Some(false)], false),
            ),
            // binary_data_output covers only outputs the list does not name (as Triton answers).
            (r#""parameters":{"binary_data_output":true},"outputs":[{"name":"x"}],"#, o(vec![Some(false), None], true)),
            (
                r#""outputs":[{"name":"x","parameters":{"binary_data":true}},{"name":"x"}],"#,
                o(vec![Some(true), None], false),
            ),
            (
                r#""outputs":[{"name":"x"},{"name":"sequence_id","parameters":{"binary_data":true}}],"#,
                o(vec![Some(false), None], true),
            ),
        ];
        for (extra, want) in cases {
            assert_eq!(outputs_of(extra).unwrap(), want, "{extra}");
        }
        let errors = [
            (
                r#""outputs":[{"name":"z"}],"#,
                "Invalid message structure - requested output z is not an output of the model",
            ),
            (r#""outputs":{"name":"x"},"#, "Invalid message structure - \"outputs\" must be an array"),
            (
                r#""outputs":[{"nam":"x"}],"#,
                "Invalid message structure - each of \"outputs\" must be an object with a \"name\" string",
            ),
            (
                r#""outputs":[{"name":"x","parameters":{"binary_data":1}}],"#,
                "Could not parse request parameters - binary_data of output x must be a bool",
            ),
            (
                r#""outputs":[{"name":"x","parameters":[]}],"#,
                "Could not parse request parameters - parameters of output x must be an object",
            ),
            (
                r#""parameters":{"binary_data_output":"yes"},"#,
                "Could not parse request parameters - binary_data_output must be a bool",
            ),
        ];
        for (extra, want) in errors {
            assert_eq!(outputs_of(extra).unwrap_err(), want, "{extra}");
        }
    }

    #[test]
    fn responses() {
        let m = summator();
        let all_json = Outputs { model: vec![Some(false)], sequence_id: false };
        let out = Outcome {
            model: ModelIdx(0),
            sequence_id: Some(SequenceId::Num(42)),
            outputs: Bytes::from(1.0f32.to_le_bytes().to_vec()),
        };
        let a = infer_response(&m, &out, Echo::Param(sequence::IdType::UInt), Some("a"), &all_json);
        assert!(a.binary.is_empty());
        let v: Value = serde_json::from_slice(&a.json).unwrap();
        assert_eq!(
            v,
            json!({"model_name":"summator","model_version":"1","id":"a","parameters":{"sequence_id":42},
                   "outputs":[{"name":"add_sum","datatype":"FP32","shape":[1,1],"data":[1.0]}]})
        );
        let v: Value = serde_json::from_slice(&infer_response(&m, &out, Echo::Tensor, None, &all_json).json).unwrap();
        assert_eq!(v["outputs"][1], json!({"name":"sequence_id","datatype":"UINT64","shape":[1],"data":[42]}));
        let md: Value = serde_json::from_slice(&metadata_json(&m, &[1])).unwrap();
        assert_eq!(md["inputs"][0], json!({"name":"input","datatype":"FP32","shape":[1,1]}));
    }

    #[test]
    fn binary_responses() {
        let m = two_in_two_out();
        let out = Outcome {
            model: ModelIdx(0),
            sequence_id: Some(SequenceId::Num(7)),
            outputs: Bytes::from(f32s(&[1.0, 2.0, 3.0])),
        };
        // x as binary, y as JSON, the sequence id binary: x's bytes are a slice of the outcome.
        let sel = Outputs { model: vec![Some(true), Some(false)], sequence_id: true };
        let a = infer_response(&m, &out, Echo::Tensor, None, &sel);
        let v: Value = serde_json::from_slice(&a.json).unwrap();
        assert_eq!(
            v["outputs"],
            json!([{"name":"x","datatype":"FP32","shape":[1,2],"parameters":{"binary_data_size":8}},
                   {"name":"y","datatype":"FP32","shape":[1],"data":[3.0]},
                   {"name":"sequence_id","datatype":"UINT64","shape":[1],"parameters":{"binary_data_size":8}}])
        );
        assert_eq!(a.binary.len(), 2);
        assert_eq!(&a.binary[0][..], &f32s(&[1.0, 2.0])[..]);
        assert_eq!(a.binary[0].as_ptr(), out.outputs.as_ptr(), "binary output copied");
        assert_eq!(&a.binary[1][..], &7u64.to_le_bytes());
        // Only the requested output, as binary.
        let sel = Outputs { model: vec![None, Some(true)], sequence_id: false };
        let a = infer_response(&m, &out, Echo::None, None, &sel);
        let v: Value = serde_json::from_slice(&a.json).unwrap();
        assert_eq!(
            v["outputs"],
            json!([{"name":"y","datatype":"FP32","shape":[1],"parameters":{"binary_data_size":4}}])
        );
        assert_eq!(&a.binary[0][..], &3.0f32.to_le_bytes());
        let sm: Value = serde_json::from_slice(&server_metadata_json()).unwrap();
        assert_eq!(sm["extensions"], json!(["sequence", "binary_tensor_data", "model_repository"]));
    }

    #[test]
    fn repository_index_json_leaves_out_empty_members() {
        use crate::kserve::repository::{READY, UNAVAILABLE};
        let entries = [
            Entry { name: "a", version: Some(2), state: READY, reason: "" },
            Entry { name: "b", version: Some(1), state: UNAVAILABLE, reason: "no such file" },
            Entry { name: "c", version: None, state: "", reason: "" },
        ];
        let v: Value = serde_json::from_slice(&index_json(&entries)).unwrap();
        assert_eq!(
            v,
            json!([
                {"name": "a", "version": "2", "state": "READY"},
                {"name": "b", "version": "1", "state": "UNAVAILABLE", "reason": "no such file"},
                {"name": "c"},
            ])
        );
        assert_eq!(index_json(&[]), b"[]");
    }

    #[test]
    fn repository_bodies_as_tritonclient_sends_them() {
        fn refused<T>(r: std::result::Result<T, Refusal>) -> Option<(u16, String)> {
            r.err().map(|r| (repository_status(r.code), r.message))
        }
        assert_eq!(index_request(b""), Ok(false));
        assert_eq!(index_request(b"{}"), Ok(false));
        assert_eq!(index_request(br#"{"ready": true}"#), Ok(true));
        assert_eq!(
            refused(index_request(br#"{"ready": 1}"#)),
            Some((400, "Invalid value for 'ready': expected a boolean".into()))
        );
        assert_eq!(refused(index_request(b"[]")).map(|r| r.0), Some(400));
        assert!(refused(index_request(b"{")).is_some_and(|r| r.0 == 400 && r.1.starts_with("failed to parse")));

        assert_eq!(load_request(b""), Ok(()));
        assert_eq!(load_request(b"{}"), Ok(()));
        assert_eq!(load_request(br#"{"parameters": {}}"#), Ok(()));
        let (st, msg) = refused(load_request(br#"{"parameters": {"config": "{}"}}"#)).unwrap();
        assert_eq!(st, 400);
        assert!(msg.contains("'config'"), "{msg}");
        assert_eq!(refused(load_request(br#"{"parameters": 1}"#)).map(|r| r.0), Some(400));

        assert_eq!(unload_request(b""), Ok(()));
        assert_eq!(unload_request(br#"{"parameters": {"unload_dependents": false}}"#), Ok(()));
        assert_eq!(unload_request(br#"{"parameters": {"unload_dependents": true}}"#), Ok(()));
        assert_eq!(
            refused(unload_request(br#"{"parameters": {"unload_dependents": "yes"}}"#)),
            Some((400, "Unable to parse 'unload_dependents': expected a boolean".into()))
        );
        let (st, msg) = refused(unload_request(br#"{"parameters": {"unload_dependents": true, "x": 1}}"#)).unwrap();
        assert_eq!((st, msg.as_str()), (400, "unsupported unload parameter 'x': only 'unload_dependents' is"));
    }

    #[test]
    fn repository_codes_become_tritons_http_statuses() {
        assert_eq!(repository_status(Code::Internal), 500);
        assert_eq!(repository_status(Code::InvalidArgument), 400);
        assert_eq!(repository_status(Code::Unimplemented), 501);
        assert_eq!(repository_status(Code::NotFound), 404);
        assert_eq!(repository_status(Code::Unavailable), 503);
    }
}
