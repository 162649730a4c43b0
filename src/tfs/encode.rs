//! Response encoding for the TF-Serving API.
//!
//! `PredictResponse` is written by hand straight into one buffer: a map of output name →
//! `TensorProto` with `tensor_content`, plus OVMS's `sequence_id` output (`uint64_val`). Going
//! through prost's generated struct would allocate a `String` and a `HashMap` entry per output per
//! request. The unit test decodes the result with the generated code to prove it is the same wire
//! format. Metadata and status answers are rare and use the generated structs.

use super::dtype_of;
use crate::catalog::{ModelMeta, VersionStatus};
use crate::proto::tensorflow::serving::{
    metric, GetModelMetadataResponse, GetModelStatusResponse, Metric, ModelSpec, ModelVersionStatus,
    ReloadConfigResponse, SignatureDefMap, StatusProto,
};
use crate::proto::tensorflow::{
    tensor_info, tensor_shape_proto::Dim, DataType, SignatureDef, TensorInfo, TensorShapeProto,
};
use crate::request::{Outcome, SequenceId};
use crate::shard::admin::AdminFailure;
use crate::status::Code;
use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;

/// Encodes the `PredictResponse` for `outcome` of model `meta`.
pub fn predict_response(meta: &ModelMeta, outcome: &Outcome) -> Bytes {
    let mut len = 0;
    let mut offset = 0;
    for port in &meta.outputs {
        len += entry_len(&port.name, tensor_len(&port.dims, port.byte_size));
        offset += port.byte_size;
    }
    debug_assert_eq!(offset, outcome.outputs.len());
    // TF-Serving requests carry numeric ids only, so their sequences' ids are numbers.
    let sequence_id = match &outcome.sequence_id {
        None => None,
        Some(SequenceId::Num(n)) => Some(*n),
        // Not reachable (see above); an answer without the id beats a panic.
        Some(SequenceId::Str(_)) => None,
    };
    if let Some(id) = sequence_id {
        len += entry_len(super::special::SEQUENCE_ID, sequence_id_tensor_len(id));
    }
    let spec = model_spec_len(meta);
    len += 1 + encoded_len_varint(spec as u64) + spec;
    let mut buf = BytesMut::with_capacity(len);
    let mut at = 0;
    for port in &meta.outputs {
        let content = &outcome.outputs[at..at + port.byte_size];
        at += port.byte_size;
        let dims: Vec<i64> = port.dims.iter().map(|&d| d as i64).collect();
        put_entry_header(&mut buf, &port.name, tensor_len(&port.dims, port.byte_size));
        put_tensor(&mut buf, dtype_of(port.elem), &dims, content);
    }
    if let Some(id) = sequence_id {
        put_entry_header(&mut buf, super::special::SEQUENCE_ID, sequence_id_tensor_len(id));
        put_sequence_id_tensor(&mut buf, id);
    }
    // The version that ran the step (a sequence's own, which may not be the default), as
    // TF-Serving reports it.
    encode_key(2, WireType::LengthDelimited, &mut buf);
    encode_varint(spec as u64, &mut buf);
    put_model_spec(&mut buf, meta);
    debug_assert_eq!(buf.len(), len);
    buf.freeze()
}

// PredictResponse.model_spec = 2: ModelSpec { name = 1, version = 2 (Int64Value { value = 1 }) }.
fn model_spec_len(meta: &ModelMeta) -> usize {
    let version = 1 + encoded_len_varint(meta.version as u64);
    1 + encoded_len_varint(meta.name.len() as u64) + meta.name.len() + 1 + encoded_len_varint(version as u64) + version
}

fn put_model_spec(buf: &mut BytesMut, meta: &ModelMeta) {
    encode_key(1, WireType::LengthDelimited, buf);
    encode_varint(meta.name.len() as u64, buf);
    buf.put_slice(meta.name.as_bytes());
    let version = 1 + encoded_len_varint(meta.version as u64);
    encode_key(2, WireType::LengthDelimited, buf);
    encode_varint(version as u64, buf);
    encode_key(1, WireType::Varint, buf);
    encode_varint(meta.version as u64, buf);
}

// PredictResponse.outputs = 1: map entry { key = 1 (string), value = 2 (TensorProto) }.
fn entry_len(key: &str, value_len: usize) -> usize {
    let body =
        1 + encoded_len_varint(key.len() as u64) + key.len() + 1 + encoded_len_varint(value_len as u64) + value_len;
    1 + encoded_len_varint(body as u64) + body
}

fn put_entry_header(buf: &mut BytesMut, key: &str, value_len: usize) {
    let body =
        1 + encoded_len_varint(key.len() as u64) + key.len() + 1 + encoded_len_varint(value_len as u64) + value_len;
    encode_key(1, WireType::LengthDelimited, buf);
    encode_varint(body as u64, buf);
    encode_key(1, WireType::LengthDelimited, buf);
    encode_varint(key.len() as u64, buf);
    buf.put_slice(key.as_bytes());
    encode_key(2, WireType::LengthDelimited, buf);
    encode_varint(value_len as u64, buf);
}

// TensorShapeProto { dim = 2: Dim { size = 1 } }
fn shape_len(dims: impl Iterator<Item = i64>) -> usize {
    dims.map(|d| {
        let dim = 1 + encoded_len_varint(d as u64);
        1 + encoded_len_varint(dim as u64) + dim
    })
    .sum()
}

fn put_shape(buf: &mut BytesMut, dims: &[i64]) {
    encode_key(2, WireType::LengthDelimited, buf);
    encode_varint(shape_len(dims.iter().copied()) as u64, buf);
    for &d in dims {
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint((1 + encoded_len_varint(d as u64)) as u64, buf);
        encode_key(1, WireType::Varint, buf);
        encode_varint(d as u64, buf);
    }
}

// TensorProto { dtype = 1, tensor_shape = 2, tensor_content = 4 }
fn tensor_len(dims: &[usize], content_len: usize) -> usize {
    let shape = shape_len(dims.iter().map(|&d| d as i64));
    2 + 1 + encoded_len_varint(shape as u64) + shape + 1 + encoded_len_varint(content_len as u64) + content_len
}

fn put_tensor(buf: &mut BytesMut, dtype: DataType, dims: &[i64], content: &[u8]) {
    encode_key(1, WireType::Varint, buf);
    encode_varint(dtype as u64, buf);
    put_shape(buf, dims);
    encode_key(4, WireType::LengthDelimited, buf);
    encode_varint(content.len() as u64, buf);
    buf.put_slice(content);
}

// The sequence_id output: dtype DT_UINT64, shape [1], uint64_val = 17 (packed), like OVMS.
fn sequence_id_tensor_len(id: u64) -> usize {
    let shape = shape_len(std::iter::once(1));
    2 + 1 + encoded_len_varint(shape as u64) + shape + 2 + 1 + encoded_len_varint(id)
}

fn put_sequence_id_tensor(buf: &mut BytesMut, id: u64) {
    encode_key(1, WireType::Varint, buf);
    encode_varint(DataType::DtUint64 as u64, buf);
    put_shape(buf, &[1]);
    encode_key(17, WireType::LengthDelimited, buf);
    encode_varint(encoded_len_varint(id) as u64, buf);
    encode_varint(id, buf);
}

fn tensor_info(name: &str, elem: crate::signature::ElemType, dims: &[usize]) -> TensorInfo {
    TensorInfo {
        dtype: dtype_of(elem) as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: dims.iter().map(|&d| Dim { size: d as i64, name: String::new() }).collect(),
            unknown_rank: false,
        }),
        encoding: Some(tensor_info::Encoding::Name(name.to_string())),
    }
}

fn spec_of(meta: &ModelMeta) -> ModelSpec {
    use crate::proto::tensorflow::serving::model_spec::VersionChoice;
    ModelSpec {
        name: meta.name.clone(),
        signature_name: String::new(),
        version_choice: Some(VersionChoice::Version(meta.version)),
    }
}

/// `GetModelMetadataResponse` with `signature_def` (OVMS lists only the real model inputs and
/// outputs, not the special ones).
pub fn metadata_response(meta: &ModelMeta) -> Bytes {
    let signature = SignatureDef {
        inputs: meta.inputs.iter().map(|p| (p.name.clone(), tensor_info(&p.name, p.elem, &p.dims))).collect(),
        outputs: meta.outputs.iter().map(|p| (p.name.clone(), tensor_info(&p.name, p.elem, &p.dims))).collect(),
        method_name: "tensorflow/serving/predict".to_string(),
    };
    let map = SignatureDefMap { signature_def: [("serving_default".to_string(), signature)].into_iter().collect() };
    let any = prost_types::Any {
        type_url: "type.googleapis.com/tensorflow.serving.SignatureDefMap".to_string(),
        value: map.encode_to_vec(),
    };
    let resp = GetModelMetadataResponse {
        model_spec: Some(spec_of(meta)),
        metadata: [("signature_def".to_string(), any)].into_iter().collect(),
    };
    Bytes::from(resp.encode_to_vec())
}

/// `GetModelStatusResponse`: the served version is AVAILABLE.
/// `GetModelStatusResponse` for the versions asked for: each version's state, and its status
/// OK, or UNKNOWN (2) with the reason its last load failed.
pub fn status_response(versions: Vec<&VersionStatus>) -> Bytes {
    let resp = GetModelStatusResponse {
        model_version_status: versions
            .into_iter()
            .map(|v| ModelVersionStatus {
                version: v.version,
                state: v.state.code(),
                status: Some(match &v.error {
                    None => StatusProto { error_code: 0, error_message: "OK".to_string() },
                    Some(e) => StatusProto { error_code: 2, error_message: e.clone() },
                }),
            })
            .collect(),
    };
    Bytes::from(resp.encode_to_vec())
}

/// A successful `HandleReloadConfigRequest`: status OK (no message, as TF-Serving's
/// `ToStatusProto`), and one `Metric` per name asked for, each with an increase of 0: seqcore
/// keeps no TensorFlow monitoring metrics, and TF-Serving reports 0 for a name it does not have.
pub fn reload_response(metric_names: &[String]) -> Bytes {
    let resp = ReloadConfigResponse {
        status: Some(StatusProto { error_code: Code::Ok.as_i32(), error_message: String::new() }),
        metric: metric_names
            .iter()
            .map(|name| Metric {
                name: name.clone(),
                value_increase: Some(metric::ValueIncrease::Int64ValueIncrease(0)),
            })
            .collect(),
    };
    Bytes::from(resp.encode_to_vec())
}

/// The gRPC code of a failed `HandleReloadConfigRequest`. TF-Serving answers a failed reload with
/// a non-OK gRPC status (`ModelServiceImpl::HandleReloadConfigRequest` returns
/// `ToGRPCStatus(status)`; the `StatusProto` it also fills in never reaches the client), so
/// seqcore does too, with the codes OVMS's gRPC mapping gives the statuses behind its REST config
/// reload's failures: an invalid configuration is OVMS's JSON_INVALID (FAILED_PRECONDITION), an
/// unreadable one and a model that failed to load are INTERNAL, as OVMS's REST answers them (500).
pub fn reload_code(failure: AdminFailure) -> Code {
    match failure {
        AdminFailure::ConfigUnreadable | AdminFailure::LoadFailed => Code::Internal,
        AdminFailure::ConfigInvalid => Code::FailedPrecondition,
        AdminFailure::UnknownModel => Code::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tensorflow::serving::PredictResponse;
    use crate::request::ModelIdx;

    use crate::signature::test_port_f32 as port;

    #[test]
    fn hand_encoded_predict_response_decodes_with_prost() {
        let meta = ModelMeta {
            name: "m".into(),
            version: 1,
            stateful: true,
            inputs: vec![],
            outputs: vec![port("add_sum", &[1, 1]), port("scores", &[1, 300])],
            precision: "f32".into(),
            execution_mode: "PERFORMANCE".into(),
        };
        let mut bytes = 6.5f32.to_le_bytes().to_vec();
        for i in 0..300 {
            bytes.extend_from_slice(&(i as f32).to_le_bytes());
        }
        for id in [1u64, 300, u64::MAX] {
            let out = Outcome {
                model: ModelIdx(0),
                sequence_id: Some(SequenceId::Num(id)),
                outputs: Bytes::from(bytes.clone()),
            };
            let resp = PredictResponse::decode(predict_response(&meta, &out)).unwrap();
            assert_eq!(resp.outputs.len(), 3);
            let sum = &resp.outputs["add_sum"];
            assert_eq!(sum.dtype, DataType::DtFloat as i32);
            assert_eq!(sum.tensor_shape.as_ref().unwrap().dim.iter().map(|d| d.size).collect::<Vec<_>>(), vec![1, 1]);
            assert_eq!(&sum.tensor_content[..], &6.5f32.to_le_bytes());
            assert_eq!(resp.outputs["scores"].tensor_content.len(), 1200);
            let sid = &resp.outputs["sequence_id"];
            assert_eq!(sid.uint64_val, vec![id]);
            assert_eq!(sid.dtype, DataType::DtUint64 as i32);
            assert_eq!(sid.tensor_shape.as_ref().unwrap().dim[0].size, 1);
            assert_eq!(resp.model_spec, Some(spec_of(&meta)), "the answering model and version");
        }
        let stateless = Outcome { model: ModelIdx(0), sequence_id: None, outputs: Bytes::from(bytes) };
        let resp = PredictResponse::decode(predict_response(&meta, &stateless)).unwrap();
        assert!(!resp.outputs.contains_key("sequence_id"));
    }

    #[test]
    fn reload_response_is_ok_with_a_zero_per_metric_asked() {
        let resp = ReloadConfigResponse::decode(reload_response(&["a".into(), "b".into()])).unwrap();
        assert_eq!(resp.status, Some(StatusProto { error_code: 0, error_message: String::new() }));
        let metrics: Vec<(&str, Option<metric::ValueIncrease>)> =
            resp.metric.iter().map(|m| (m.name.as_str(), m.value_increase)).collect();
        let zero = Some(metric::ValueIncrease::Int64ValueIncrease(0));
        assert_eq!(metrics, vec![("a", zero), ("b", zero)]);
        // The status is present even when OK (an empty submessage), as TF-Serving sends it.
        assert!(ReloadConfigResponse::decode(reload_response(&[])).unwrap().status.is_some());
    }

    #[test]
    fn reload_failures_have_ovms_codes() {
        assert_eq!(reload_code(AdminFailure::ConfigUnreadable), Code::Internal);
        assert_eq!(reload_code(AdminFailure::ConfigInvalid), Code::FailedPrecondition);
        assert_eq!(reload_code(AdminFailure::LoadFailed), Code::Internal);
        assert_eq!(reload_code(AdminFailure::UnknownModel), Code::NotFound);
    }
}
