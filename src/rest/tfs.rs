//! The TF-Serving REST API (spec §1.3, §3.4): JSON ⇄ domain, with OVMS's REST parser rules
//! (`src/rest_parser.cpp`) and messages. It lives in `rest` (which knows JSON and HTTP/1.1) and
//! calls down into `tfs` (which knows only protobuf), never the other way round.
//!
//! A predict body is read into the same `TensorProto`s the gRPC front end receives (the special
//! inputs in `uint64_val`/`uint32_val` with the shape the JSON array has, or no shape for a bare
//! number, as OVMS's parser does; model inputs as `tensor_content` of the model's precision),
//! then validated by the very same code as gRPC (`tfs::predict_job`: special inputs in OVMS's
//! order, then the model inputs). So every check and message is shared, and only JSON syntax
//! errors are REST's own:
//!
//! - column format (`"inputs"`): `{"sequence_id": [42]}` is valid; `[1,2]` → "Invalid input
//!   shape - Required shape for sequence_id is: (1)"; `42` → "Special input proto does not
//!   contain tensor shape information"; `[]` → "Invalid input shape" as for `[1,2]` (OVMS read
//!   past the end of the array here); `[-1]`, `[1.5]`, `[[1]]` → "Could not parse input
//!   content. Not valid ndarray detected".
//! - row format (`"instances"`): a special input is then one value per instance, so `[10]` has
//!   shape `[1,1]` → "Invalid number of shape dimensions - ..."; `10` → "Could not parse instance
//!   content. Not valid ndarray detected". Row format cannot carry a valid sequence (as in OVMS).

use super::tensor;
use crate::catalog::{ModelMeta, ModelStatus, VersionStatus};
use crate::error::{Error, Kind, Result};
use crate::proto::tensorflow::serving::PredictRequest;
use crate::proto::tensorflow::{tensor_shape_proto::Dim, DataType, TensorProto, TensorShapeProto};
use crate::request::{InferJob, ModelIdx, Outcome, SequenceId};
use crate::sequence::{SEQUENCE_CONTROL_INPUT, SEQUENCE_ID};
use crate::shard::admin::AdminFailure;
use crate::signature::ElemType;
use crate::status::http;
use crate::tfs::{self, dtype_of};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `"instances"` in, `"predictions"` out.
    Row,
    /// `"inputs"` in, `"outputs"` out.
    Column,
}

/// Parses and validates a predict body into a job (nothing here touches a sequence).
pub fn predict_job(idx: ModelIdx, meta: &ModelMeta, body: &[u8]) -> Result<(InferJob, Format)> {
    let (req, format) = parse_predict(meta, body)?;
    Ok((tfs::predict_job(idx, meta, &req)?, format))
}

/// Reads a predict body into the `PredictRequest` a gRPC client would have sent.
pub fn parse_predict(meta: &ModelMeta, body: &[u8]) -> Result<(PredictRequest, Format)> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| Error::new(Kind::JsonInvalid))?;
    let Value::Object(mut doc) = doc else {
        return Err(Kind::RestBodyIsNotAnObject.into());
    };
    // `signature_name` is ignored, as in OVMS.
    let (inputs, format) = match (doc.remove("instances"), doc.remove("inputs")) {
        (Some(i), None) => (row(meta, i)?, Format::Row),
        (None, Some(i)) => (column(meta, i)?, Format::Column),
        _ => return Err(Kind::RestPredictUnknownOrder.into()),
    };
    Ok((PredictRequest { model_spec: None, inputs, output_filter: Vec::new() }, format))
}

/// What a JSON member is read as.
#[derive(Clone, Copy)]
enum Target {
    Model(ElemType),
    Special { id: bool },
}

fn target(meta: &ModelMeta, name: &str) -> Target {
    match name {
        SEQUENCE_ID => Target::Special { id: true },
        SEQUENCE_CONTROL_INPUT => Target::Special { id: false },
        // An input the model does not have is read as FP32; validation then rejects it.
        _ => Target::Model(meta.inputs.iter().find(|p| p.name == name).map_or(ElemType::F32, |p| p.elem)),
    }
}

fn shape(dims: &[i64]) -> Option<TensorShapeProto> {
    Some(TensorShapeProto {
        dim: dims.iter().map(|&size| Dim { size, name: String::new() }).collect(),
        unknown_rank: false,
    })
}

fn model_tensor(elem: ElemType, dims: &[i64], content: Vec<u8>) -> TensorProto {
    TensorProto {
        dtype: dtype_of(elem) as i32,
        tensor_shape: shape(dims),
        tensor_content: content.into(),
        ..Default::default()
    }
}

fn special_tensor(id: bool, dims: Option<&[i64]>, values: Vec<u64>) -> TensorProto {
    let mut t = TensorProto {
        dtype: if id { DataType::DtUint64 } else { DataType::DtUint32 } as i32,
        tensor_shape: dims.and_then(shape),
        ..Default::default()
    };
    if id {
        t.uint64_val = values;
    } else {
        t.uint32_val = values.into_iter().map(|v| v as u32).collect();
    }
    t
}

/// A special input's values from a flat JSON array: unsigned integers (uint64 for the id,
/// uint32 for the control), no nesting.
fn special_values(a: &[Value], id: bool) -> Option<Vec<u64>> {
    let max = if id { u64::MAX } else { u32::MAX as u64 };
    a.iter().map(|v| v.as_u64().filter(|&n| n <= max)).collect()
}

fn column(meta: &ModelMeta, inputs: Value) -> Result<HashMap<String, TensorProto>> {
    let parse_error = || Error::new(Kind::RestCouldNotParseInput);
    let members = match inputs {
        Value::Object(m) => m,
        // "No named" column format: the value of the model's only input.
        other => match meta.inputs.as_slice() {
            [only] => Map::from_iter([(only.name.clone(), other)]),
            _ => return Err(Kind::RestInputsNotAnObject.into()),
        },
    };
    if members.is_empty() {
        return Err(Kind::RestNoInputsFound.into());
    }
    let mut out = HashMap::with_capacity(members.len());
    for (name, v) in members {
        let t = match target(meta, &name) {
            Target::Special { id } => match &v {
                // A bare number: OVMS stores a scalar without a shape.
                Value::Number(_) => special_tensor(id, None, Vec::new()),
                Value::Array(a) if !a.first().is_some_and(Value::is_array) => {
                    let values = special_values(a, id).ok_or_else(parse_error)?;
                    special_tensor(id, Some(&[a.len() as i64]), values)
                }
                _ => return Err(parse_error()),
            },
            Target::Model(elem) => {
                let mut content = Vec::new();
                let dims = tensor::ndarray(&v, elem, &mut content).ok_or_else(parse_error)?;
                model_tensor(elem, &dims, content)
            }
        };
        out.insert(name, t);
    }
    Ok(out)
}

fn row(meta: &ModelMeta, instances: Value) -> Result<HashMap<String, TensorProto>> {
    let parse_error = || Error::new(Kind::RestCouldNotParseInstance);
    let Value::Array(instances) = instances else {
        return Err(Kind::RestInstancesNotAnArray.into());
    };
    let n = instances.len() as i64;
    match instances.first() {
        None => Err(Kind::RestNoInstancesFound.into()),
        Some(Value::Object(first)) => {
            let names: Vec<String> = first.keys().cloned().collect();
            if instances.iter().any(|i| !i.is_object()) {
                return Err(Kind::RestNamedInstanceNotAnObject.into());
            }
            let mut out = HashMap::with_capacity(names.len());
            for name in names {
                let mut values = instances.iter().map(|i| i.get(&name));
                let t = match target(meta, &name) {
                    Target::Special { id } => {
                        let mut all = Vec::new();
                        let mut width = None;
                        for v in values {
                            let a = v.and_then(Value::as_array).ok_or_else(parse_error)?;
                            if a.first().is_some_and(Value::is_array) || *width.get_or_insert(a.len()) != a.len() {
                                return Err(parse_error());
                            }
                            all.extend(special_values(a, id).ok_or_else(parse_error)?);
                        }
                        special_tensor(id, Some(&[n, width.unwrap_or(0) as i64]), all)
                    }
                    Target::Model(elem) => {
                        let mut content = Vec::new();
                        let mut inner: Option<Vec<i64>> = None;
                        for v in values.by_ref() {
                            let dims = tensor::ndarray(v.ok_or_else(parse_error)?, elem, &mut content)
                                .ok_or_else(parse_error)?;
                            if inner.get_or_insert_with(|| dims.clone()) != &dims {
                                return Err(parse_error());
                            }
                        }
                        let mut dims = vec![n];
                        dims.extend(inner.unwrap_or_default());
                        model_tensor(elem, &dims, content)
                    }
                };
                out.insert(name, t);
            }
            Ok(out)
        }
        Some(Value::Array(_) | Value::Number(_) | Value::Bool(_)) => {
            // "No named" row format: the instances are the batch of the model's only input.
            let (name, elem) = match meta.inputs.as_slice() {
                [only] => (only.name.clone(), only.elem),
                _ => {
                    return Err(Error::with(
                        Kind::InvalidNoOfInputs,
                        format!("Expected: {}; Actual: 1", meta.inputs.len()),
                    ))
                }
            };
            let mut content = Vec::new();
            let dims = tensor::ndarray(&Value::Array(instances), elem, &mut content).ok_or_else(parse_error)?;
            Ok(HashMap::from([(name, model_tensor(elem, &dims, content))]))
        }
        Some(_) => Err(Kind::RestInstancesNotNamedOrNonamed.into()),
    }
}

fn write_sequence_id(out: &mut Vec<u8>, id: &SequenceId) {
    match id {
        SequenceId::Num(n) => out.extend_from_slice(n.to_string().as_bytes()),
        SequenceId::Str(s) => tensor::write_str(out, s),
    }
}

/// The predict answer: column format `{"outputs": ...}` (an object keyed by name when there are
/// two or more outputs, counting `sequence_id`; the bare tensor otherwise), row format
/// `{"predictions": [...]}` (one entry per instance, along each output's first dimension).
pub fn predict_response(meta: &ModelMeta, outcome: &Outcome, format: Format) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + outcome.outputs.len() * 4);
    let mut parts = Vec::with_capacity(meta.outputs.len());
    let mut at = 0;
    for port in &meta.outputs {
        parts.push((port, &outcome.outputs[at..at + port.byte_size]));
        at += port.byte_size;
    }
    let single = parts.len() == 1 && outcome.sequence_id.is_none();
    match format {
        Format::Column => {
            out.extend_from_slice(b"{\"outputs\":");
            if single {
                let (port, bytes) = parts[0];
                tensor::write_nested(&mut out, port.elem, &port.dims, bytes);
            } else {
                out.push(b'{');
                for (i, (port, bytes)) in parts.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    tensor::write_str(&mut out, &port.name);
                    out.push(b':');
                    tensor::write_nested(&mut out, port.elem, &port.dims, bytes);
                }
                if let Some(id) = &outcome.sequence_id {
                    if !parts.is_empty() {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"\"sequence_id\":[");
                    write_sequence_id(&mut out, id);
                    out.push(b']');
                }
                out.push(b'}');
            }
            out.push(b'}');
        }
        Format::Row => {
            let batch = parts.first().and_then(|(p, _)| p.dims.first().copied()).unwrap_or(1);
            out.extend_from_slice(b"{\"predictions\":[");
            for b in 0..batch {
                if b > 0 {
                    out.push(b',');
                }
                if !single {
                    out.push(b'{');
                }
                for (i, (port, bytes)) in parts.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    if !single {
                        tensor::write_str(&mut out, &port.name);
                        out.push(b':');
                    }
                    match port.dims.split_first() {
                        Some((&n, rest)) if n == batch => {
                            let step = bytes.len() / n.max(1);
                            tensor::write_nested(&mut out, port.elem, rest, &bytes[b * step..(b + 1) * step]);
                        }
                        _ => tensor::write_nested(&mut out, port.elem, &port.dims, bytes),
                    }
                }
                if let Some(id) = &outcome.sequence_id {
                    out.extend_from_slice(b",\"sequence_id\":");
                    write_sequence_id(&mut out, id);
                }
                if !single {
                    out.push(b'}');
                }
            }
            out.extend_from_slice(b"]}");
        }
    }
    out
}

/// `GET /v1/models/{name}[/versions/{v}]`: the served version is AVAILABLE.
/// `GET /v1/models/{name}[/versions/{v}]`: each version asked for, its state, and its status
/// (OK, or UNKNOWN with the reason its last load failed).
pub fn status_json(versions: Vec<&VersionStatus>) -> Vec<u8> {
    tensor::to_json_pretty(&status_value(versions))
}

/// `{"model_version_status": [...]}` for these versions (also a part of the reload answer).
pub fn status_value(versions: Vec<&VersionStatus>) -> Value {
    let list: Vec<Value> = versions
        .into_iter()
        .map(|v| {
            let (code, message) = match &v.error {
                None => ("OK", ""),
                Some(e) => ("UNKNOWN", e.as_str()),
            };
            json!({
                "version": v.version.to_string(),
                "state": v.state.name(),
                "status": {"error_code": code, "error_message": message},
            })
        })
        .collect();
    json!({ "model_version_status": list })
}

/// `GET /v1/config` and a successful `POST /v1/config/reload`: every model of the status,
/// `{"<name>": {"model_version_status": [...]}, ...}`, by name (OVMS's map order); `{}` with none.
pub fn config_json(status: &[ModelStatus]) -> Vec<u8> {
    let mut models: Vec<&ModelStatus> = status.iter().collect();
    models.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Map::new();
    for m in models {
        out.insert(m.name.clone(), status_value(m.versions.iter().collect()));
    }
    tensor::to_json_pretty(&Value::Object(out))
}

/// A failed `POST /v1/config/reload`: OVMS's HTTP status and message
/// (`HttpRestApiHandler::processConfigReloadRequest`, statuses by `http_server.cpp`'s map):
/// - the file cannot be read: CONFIG_FILE_TIMESTAMP_READING_FAILED, not in the map → 500;
/// - the file is not a valid configuration: `loadConfig`'s JSON_INVALID (bad JSON or schema)
///   → 412;
/// - a model version failed to load: FILE_INVALID and the like → 500.
pub fn reload_failure(failure: AdminFailure) -> (u16, &'static str) {
    match failure {
        AdminFailure::ConfigUnreadable => (http::INTERNAL_SERVER_ERROR, "Config file not found or cannot open."),
        AdminFailure::ConfigInvalid => {
            (http::PRECONDITION_FAILED, "Reloading config file failed. Check server logs for more info.")
        }
        AdminFailure::LoadFailed => {
            (http::INTERNAL_SERVER_ERROR, "Reloading models versions failed. Check server logs for more info.")
        }
        // A reload names no model; should a controller say so anyway, OVMS's MODEL_NAME_MISSING.
        AdminFailure::UnknownModel => (http::NOT_FOUND, Kind::ModelNameMissing.message()),
    }
}

/// `GET .../metadata`: `GetModelMetadataResponse` in protobuf's JSON mapping, as OVMS prints it
/// (int64 as strings, default fields included); only the real model inputs and outputs.
pub fn metadata_json(meta: &ModelMeta) -> Vec<u8> {
    let infos = |ports: &[crate::signature::PortInfo]| -> Value {
        let mut m = Map::new();
        for p in ports {
            m.insert(
                p.name.clone(),
                json!({
                    "dtype": dtype_of(p.elem).as_str_name(),
                    "tensorShape": {
                        "dim": p.dims.iter().map(|d| json!({"size": d.to_string(), "name": ""})).collect::<Vec<_>>(),
                        "unknownRank": false,
                    },
                    "name": p.name,
                }),
            );
        }
        Value::Object(m)
    };
    let v = json!({
        "modelSpec": {"name": meta.name, "signatureName": "", "version": meta.version.to_string()},
        "metadata": {"signature_def": {
            "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
            "signatureDef": {"serving_default": {
                "inputs": infos(&meta.inputs),
                "outputs": infos(&meta.outputs),
                "methodName": "tensorflow/serving/predict",
                "defaults": {},
            }},
        }},
    });
    tensor::to_json_pretty(&v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Control, ModelIdx};
    use bytes::Bytes;

    use crate::signature::test_port_f32 as port;

    use crate::catalog::test_summator as summator;

    fn dummy() -> ModelMeta {
        ModelMeta {
            name: "dummy".into(),
            version: 1,
            stateful: false,
            inputs: vec![port("b", &[1, 10])],
            outputs: vec![port("a", &[1, 10])],
            precision: "f32".into(),
            execution_mode: "PERFORMANCE".into(),
        }
    }

    fn job(meta: &ModelMeta, body: &str) -> std::result::Result<(InferJob, Format), String> {
        predict_job(ModelIdx(0), meta, body.as_bytes()).map_err(|e| e.to_string())
    }

    fn err(meta: &ModelMeta, body: &str) -> String {
        job(meta, body).unwrap_err()
    }

    #[test]
    fn column_format_sequence_steps() {
        let m = summator();
        let (j, f) =
            job(&m, r#"{"inputs":{"input":[[1.0]],"sequence_control_input":[1],"sequence_id":[42]}}"#).unwrap();
        assert_eq!(f, Format::Column);
        let s = j.sequence.unwrap();
        assert_eq!((s.control, s.id), (Control::Start, SequenceId::Num(42)));
        assert_eq!(&j.inputs[0][..], &1.0f32.to_le_bytes());
        let (j, _) = job(
            &m,
            r#"{"signature_name":"serving_default","inputs":{"input":[[2]],"sequence_id":[18446744073709551615]}}"#,
        )
        .unwrap();
        assert_eq!(j.sequence.unwrap().id, SequenceId::Num(u64::MAX));
    }

    #[test]
    fn column_format_special_input_errors_match_ovms() {
        let m = summator();
        let body = |id: &str| format!(r#"{{"inputs":{{"input":[[1.0]],"sequence_id":{id}}}}}"#);
        assert_eq!(err(&m, &body("[1,2]")), "Invalid input shape - Required shape for sequence_id is: (1)");
        assert_eq!(err(&m, &body("10")), "Special input proto does not contain tensor shape information");
        assert_eq!(err(&m, &body("[]")), "Invalid input shape - Required shape for sequence_id is: (1)");
        for bad in ["[-1]", "[1.5]", "[[1]]", "[\"7\"]", "\"7\"", "[18446744073709551616]"] {
            assert_eq!(err(&m, &body(bad)), "Could not parse input content. Not valid ndarray detected", "{bad}");
        }
        let ctl = |c: &str| format!(r#"{{"inputs":{{"input":[[1.0]],"sequence_control_input":{c}}}}}"#);
        assert_eq!(err(&m, &ctl("[4294967296]")), "Could not parse input content. Not valid ndarray detected");
        assert_eq!(err(&m, &ctl("[99]")), "Unexpected value of sequence control input");
        assert_eq!(err(&m, r#"{"inputs":{"input":[[1.0]]}}"#), "Sequence ID has not been provided in request inputs");
    }

    #[test]
    fn row_format_cannot_carry_a_sequence() {
        let m = summator();
        assert_eq!(
            err(&m, r#"{"instances":[{"input":[1.0],"sequence_id":10}]}"#),
            "Could not parse instance content. Not valid ndarray detected"
        );
        assert_eq!(
            err(&m, r#"{"instances":[{"input":[1.0],"sequence_id":[10]}]}"#),
            "Invalid number of shape dimensions - Required shape for sequence_id is: (1)"
        );
        assert_eq!(err(&m, r#"{"instances":[[1.0]]}"#), "Sequence ID has not been provided in request inputs");
    }

    #[test]
    fn model_inputs_and_structure_errors() {
        let d = dummy();
        let ten = "[[1,2,3,4,5,6,7,8,9,10]]";
        let (j, f) = job(&d, &format!(r#"{{"inputs":{{"b":{ten}}}}}"#)).unwrap();
        assert_eq!((f, j.inputs[0].len(), j.sequence.is_none()), (Format::Column, 40, true));
        assert_eq!(job(&d, &format!(r#"{{"inputs":{ten}}}"#)).unwrap().1, Format::Column);
        assert_eq!(job(&d, r#"{"instances":[[1,2,3,4,5,6,7,8,9,10]]}"#).unwrap().1, Format::Row);
        assert_eq!(job(&d, r#"{"instances":[{"b":[1,2,3,4,5,6,7,8,9,10]}]}"#).unwrap().1, Format::Row);
        assert_eq!(
            err(&d, r#"{"inputs":{"b":[[1,2,3]]}}"#),
            "Invalid input shape - Expected: (1,10); Actual: (1,3); input name: b"
        );
        assert_eq!(
            err(&d, r#"{"inputs":{"b":[1,2,3,4,5,6,7,8,9,10]}}"#),
            "Invalid number of shape dimensions - Expected: (1,10); Actual: (10); input name: b"
        );
        assert_eq!(
            err(&d, r#"{"inputs":{"b":[[1,2],[3]]}}"#),
            "Could not parse input content. Not valid ndarray detected"
        );
        assert_eq!(
            err(&d, &format!(r#"{{"inputs":{{"b":{ten},"c":[1]}}}}"#)),
            "Invalid number of inputs - Expected: 1; Actual: 2"
        );
        assert_eq!(
            err(&d, r#"{"inputs":{"c":[[1,2,3,4,5,6,7,8,9,10]]}}"#),
            "Missing input with specific name - Required input: b"
        );
        assert_eq!(err(&d, "{"), "The file is not valid json");
        assert_eq!(err(&d, "[1]"), "Request body should be JSON object");
        assert_eq!(err(&d, r#"{"x":1}"#), "Invalid JSON structure. Could not detect row or column format");
        assert_eq!(err(&d, r#"{"inputs":{}}"#), "Invalid JSON structure, missing inputs");
        assert_eq!(err(&d, r#"{"instances":[]}"#), "Invalid JSON structure. Missing instances in row format");
        assert_eq!(
            err(&d, r#"{"instances":[{"b":[1]},[1]]}"#),
            "Invalid JSON structure. One of named instances is not a JSON object."
        );
    }

    #[test]
    fn responses() {
        let m = summator();
        let out = Outcome {
            model: ModelIdx(0),
            sequence_id: Some(SequenceId::Num(42)),
            outputs: Bytes::from(6.5f32.to_le_bytes().to_vec()),
        };
        let v: Value = serde_json::from_slice(&predict_response(&m, &out, Format::Column)).unwrap();
        assert_eq!(v, json!({"outputs": {"add_sum": [[6.5]], "sequence_id": [42]}}));
        let d = dummy();
        let bytes: Vec<u8> = (0..10).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let out = Outcome { model: ModelIdx(0), sequence_id: None, outputs: Bytes::from(bytes) };
        let v: Value = serde_json::from_slice(&predict_response(&d, &out, Format::Column)).unwrap();
        assert_eq!(v, json!({"outputs": [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]]}));
        let v: Value = serde_json::from_slice(&predict_response(&d, &out, Format::Row)).unwrap();
        assert_eq!(v, json!({"predictions": [[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]]}));
        let available = VersionStatus { version: 1, state: crate::catalog::State::Available, error: None };
        let s: Value = serde_json::from_slice(&status_json(vec![&available])).unwrap();
        assert_eq!(
            s,
            json!({"model_version_status":[{"version":"1","state":"AVAILABLE","status":{"error_code":"OK","error_message":""}}]})
        );
        let md: Value = serde_json::from_slice(&metadata_json(&m)).unwrap();
        let sig = &md["metadata"]["signature_def"]["signatureDef"]["serving_default"];
        assert_eq!(sig["inputs"]["input"]["dtype"], "DT_FLOAT");
        assert_eq!(sig["outputs"]["add_sum"]["tensorShape"]["dim"][1]["size"], "1");
        assert_eq!(md["modelSpec"]["version"], "1");
    }

    #[test]
    fn config_status_aggregates_every_model_by_name() {
        use crate::catalog::State;
        let st =
            |version, state, error: Option<&str>| VersionStatus { version, state, error: error.map(str::to_string) };
        let status = vec![
            ModelStatus { name: "zeta".into(), versions: vec![st(1, State::Available, None)] },
            ModelStatus {
                name: "alpha".into(),
                versions: vec![st(1, State::Unloading, None), st(2, State::Loading, Some("no such file"))],
            },
            ModelStatus { name: "empty".into(), versions: vec![] },
        ];
        let text = String::from_utf8(config_json(&status)).unwrap();
        let (a, e, z) =
            (text.find("\"alpha\"").unwrap(), text.find("\"empty\"").unwrap(), text.find("\"zeta\"").unwrap());
        assert!(a < e && e < z, "by name: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let ok = json!({"error_code": "OK", "error_message": ""});
        assert_eq!(
            v,
            json!({
                "alpha": {"model_version_status": [
                    {"version": "1", "state": "UNLOADING", "status": ok},
                    {"version": "2", "state": "LOADING",
                     "status": {"error_code": "UNKNOWN", "error_message": "no such file"}},
                ]},
                "empty": {"model_version_status": []},
                "zeta": {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ok}]},
            })
        );
        assert_eq!(serde_json::from_slice::<Value>(&config_json(&[])).unwrap(), json!({}));
    }

    #[test]
    fn reload_failures_have_ovms_statuses_and_messages() {
        assert_eq!(reload_failure(AdminFailure::ConfigUnreadable), (500, "Config file not found or cannot open."));
        assert_eq!(
            reload_failure(AdminFailure::ConfigInvalid),
            (412, "Reloading config file failed. Check server logs for more info.")
        );
        assert_eq!(
            reload_failure(AdminFailure::LoadFailed),
            (500, "Reloading models versions failed. Check server logs for more info.")
        );
        assert_eq!(reload_failure(AdminFailure::UnknownModel).0, 404);
    }
}
