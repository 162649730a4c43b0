//! KServe v2 REST (JSON) ⇄ domain: `POST /v2/models/{name}[/versions/{v}]/infer` and the
//! metadata answers.
//!
//! Sequences are read by `kserve::sequence` (shared with KServe gRPC): Triton's request
//! parameters `sequence_id` (number or string), `sequence_start`, `sequence_end`, or OVMS's special
//! input tensors `sequence_id` (UINT64) / `sequence_control_input` (UINT32). The model inputs are
//! read into `TensorProto`s of the declared datatype and validated by the TF-Serving front end's
//! `tfs::model_inputs` (count, name, precision, shape, size: the same checks and messages).
//! BYTES inputs are valid JSON, but no served model takes strings: they fail the precision check.
//! The request's `outputs` list is accepted and ignored: every output is returned.

use crate::catalog::ModelMeta;
use crate::error::{Error, Kind, Result};
use crate::kserve::sequence::{self, Echo, ParamValue, Special};
use crate::ov::{ElemType, PortInfo};
use crate::proto::tensorflow::{tensor_shape_proto::Dim, DataType, TensorProto, TensorShapeProto};
use crate::request::{InferJob, ModelIdx, Outcome, SequenceId};
use crate::rest::tensor;
use crate::tfs::{dtype_of, model_inputs};
use serde_json::{json, Value};
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

/// A parsed infer request: the job, how to tell the client its sequence, and the request id.
#[derive(Debug)]
pub struct Infer {
    pub job: InferJob,
    pub echo: Echo,
    pub id: Option<String>,
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

struct Input<'a> {
    name: &'a str,
    datatype: &'a str,
    shape: Vec<i64>,
    data: &'a Value,
}

fn parse_input(v: &Value) -> Result<Input<'_>> {
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
    let data = o.get("data").ok_or_else(|| bad(&format!("input {name} has no \"data\"")))?;
    Ok(Input { name, datatype, shape, data })
}

/// The one value of a special input, when its data holds exactly one unsigned integer.
fn single_value(data: &Value) -> Option<u64> {
    let mut v = data;
    while let Value::Array(a) = v {
        match a.as_slice() {
            [one] => v = one,
            _ => return None,
        }
    }
    v.as_u64()
}

/// Parses and validates an infer body for the model `meta` (nothing here touches a sequence).
pub fn infer_job(idx: ModelIdx, meta: &ModelMeta, body: &[u8]) -> Result<Infer> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| Error::new(Kind::JsonInvalid))?;
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
    let inputs: Vec<Input> = inputs.iter().map(parse_input).collect::<Result<_>>()?;

    let special = |name: &str| {
        inputs.iter().find(|i| i.name == name).map(|i| Special {
            shape: Some(i.shape.as_slice()),
            datatype: Some(i.datatype),
            value: single_value(i.data),
        })
    };
    let get = |k: &str| params.and_then(|p| p.get(k)).map(param_value);
    let parsed =
        sequence::parse(meta.stateful, get, special(sequence::SEQUENCE_ID), special(sequence::SEQUENCE_CONTROL_INPUT))?;

    let mut tensors = HashMap::with_capacity(inputs.len());
    for i in &inputs {
        let is_special = i.name == sequence::SEQUENCE_ID || i.name == sequence::SEQUENCE_CONTROL_INPUT;
        if parsed.echo == Echo::Tensor && is_special {
            continue;
        }
        let t = match (i.datatype, elem_of(i.datatype)) {
            // Strings are valid KServe JSON; the precision check rejects them for our models.
            ("BYTES", _) => TensorProto {
                dtype: DataType::DtString as i32,
                tensor_shape: shape_proto(&i.shape),
                ..Default::default()
            },
            (_, Some(elem)) => {
                let mut content = Vec::new();
                let count = tensor::flat(i.data, elem, &mut content).ok_or_else(|| {
                    Error::with(
                        Kind::RestCouldNotParseInput,
                        format!("data of input {} is not valid {}", i.name, i.datatype),
                    )
                })?;
                let expected: i64 = i.shape.iter().product();
                if count as i64 != expected {
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
            (dt, None) => {
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
    Ok(Infer { job: InferJob { model: idx, sequence: parsed.spec, inputs: model }, echo: parsed.echo, id })
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

/// The infer answer (outputs in model order, data flat in row-major order).
pub fn infer_response(meta: &ModelMeta, outcome: &Outcome, echo: Echo, id: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + outcome.outputs.len() * 4);
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
    let mut at = 0;
    for (i, port) in meta.outputs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_tensor_head(&mut out, &port.name, datatype(port.elem), &port.dims);
        tensor::write_flat(&mut out, port.elem, &outcome.outputs[at..at + port.byte_size]);
        out.push(b'}');
        at += port.byte_size;
    }
    if let (Echo::Tensor, Some(sid)) = (echo, &outcome.sequence_id) {
        if !meta.outputs.is_empty() {
            out.push(b',');
        }
        write_tensor_head(&mut out, sequence::SEQUENCE_ID, "UINT64", &[1]);
        out.push(b'[');
        match sid {
            SequenceId::Num(n) => out.extend_from_slice(n.to_string().as_bytes()),
            SequenceId::Str(s) => tensor::write_str(&mut out, s),
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"]}");
    out
}

fn write_tensor_head(out: &mut Vec<u8>, name: &str, datatype: &str, dims: &[usize]) {
    out.extend_from_slice(b"{\"name\":");
    tensor::write_str(out, name);
    out.extend_from_slice(
        format!(",\"datatype\":\"{datatype}\",\"shape\":{dims:?},\"data\":").replace(' ', "").as_bytes(),
    );
}

/// `GET /v2/models/{name}[/versions/{v}]`.
pub fn metadata_json(meta: &ModelMeta) -> Vec<u8> {
    let ports = |ps: &[PortInfo]| -> Vec<Value> {
        ps.iter().map(|p| json!({"name": p.name, "datatype": datatype(p.elem), "shape": p.dims})).collect()
    };
    let v = json!({
        "name": meta.name,
        "versions": [meta.version.to_string()],
        "platform": "OpenVINO",
        "inputs": ports(&meta.inputs),
        "outputs": ports(&meta.outputs),
    });
    serde_json::to_vec(&v).expect("JSON")
}

/// `GET /v2`.
pub fn server_metadata_json() -> Vec<u8> {
    let v = json!({"name": "seqcore", "version": env!("CARGO_PKG_VERSION"), "extensions": ["sequence"]});
    serde_json::to_vec(&v).expect("JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Control;
    use bytes::Bytes;

    use crate::catalog::test_summator as summator;

    fn parse(body: &str) -> std::result::Result<Infer, String> {
        infer_job(ModelIdx(0), &summator(), body.as_bytes()).map_err(|e| e.to_string())
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
        assert_eq!(parse("{}").unwrap_err(), "Invalid JSON structure, missing inputs");
        assert_eq!(parse("nope").unwrap_err(), "The file is not valid json");
        assert!(parse(r#"{"inputs":[{"name":"input"}]}"#).unwrap_err().starts_with("Could not parse input content"));
    }

    #[test]
    fn responses() {
        let m = summator();
        let out =
            Outcome { sequence_id: Some(SequenceId::Num(42)), outputs: Bytes::from(1.0f32.to_le_bytes().to_vec()) };
        let v: Value =
            serde_json::from_slice(&infer_response(&m, &out, Echo::Param(sequence::IdType::UInt), Some("a"))).unwrap();
        assert_eq!(
            v,
            json!({"model_name":"summator","model_version":"1","id":"a","parameters":{"sequence_id":42},
                   "outputs":[{"name":"add_sum","datatype":"FP32","shape":[1,1],"data":[1.0]}]})
        );
        let v: Value = serde_json::from_slice(&infer_response(&m, &out, Echo::Tensor, None)).unwrap();
        assert_eq!(v["outputs"][1], json!({"name":"sequence_id","datatype":"UINT64","shape":[1],"data":[42]}));
        let md: Value = serde_json::from_slice(&metadata_json(&m)).unwrap();
        assert_eq!(md["inputs"][0], json!({"name":"input","datatype":"FP32","shape":[1,1]}));
    }
}
