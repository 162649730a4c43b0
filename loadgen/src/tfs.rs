//! TF-Serving gRPC (`PredictionService/Predict`) with OVMS's special inputs.
//!
//! Requests are written by hand into one buffer: the `model_spec` field and each input's
//! `TensorProto` header (dtype + shape) are encoded once with prost; per step we append the map
//! entries with the data bytes and the two special inputs. Protobuf allows fields and map
//! entries in any order, so this is the same message prost would write. Answers are decoded
//! with prost only when the step needs something from them (server-chosen id, verification).

use crate::grpc::{CallError, Channel};
use crate::protocol::{InputDesc, ModelInputs, Reply, Step, UnaryGrpc};
use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_varint, encoded_len_varint};
use prost::Message;
use seqcore::grpc::{encode_prefix, PREFIX_LEN};
use seqcore::proto::methods;
use seqcore::proto::tensorflow::serving::{
    model_spec::VersionChoice, GetModelMetadataRequest, GetModelMetadataResponse, ModelSpec, PredictRequest,
    PredictResponse, SignatureDefMap,
};
use seqcore::proto::tensorflow::{tensor_shape_proto::Dim, DataType, TensorProto, TensorShapeProto};
use std::time::Duration;

const SEQUENCE_ID: &str = "sequence_id";
const SEQUENCE_CONTROL: &str = "sequence_control_input";

/// PredictRequest.inputs (field 2, length-delimited).
const TAG_INPUTS: u8 = 0x12;
/// Map entry key (field 1) and value (field 2).
const TAG_KEY: u8 = 0x0a;
const TAG_VALUE: u8 = 0x12;
/// TensorProto.tensor_content (field 4).
const TAG_CONTENT: u8 = 0x22;
/// TensorProto.uint32_val (16) and uint64_val (17), packed: varint tags 130 and 138.
const TAG_UINT32_VAL: [u8; 2] = [0x82, 0x01];
const TAG_UINT64_VAL: [u8; 2] = [0x8a, 0x01];

fn model_spec(model: &str, version: i64) -> ModelSpec {
    ModelSpec {
        name: model.to_string(),
        version_choice: (version > 0).then_some(VersionChoice::Version(version)),
        ..Default::default()
    }
}

/// TensorProto dtype + shape (no values), encoded.
fn tensor_head(dtype: DataType, dims: &[usize]) -> Bytes {
    let t = TensorProto {
        dtype: dtype as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: dims.iter().map(|&d| Dim { size: d as i64, name: String::new() }).collect(),
            unknown_rank: false,
        }),
        ..Default::default()
    };
    Bytes::from(t.encode_to_vec())
}

fn dtype_of(elem: &str) -> Option<DataType> {
    Some(match elem {
        "f32" => DataType::DtFloat,
        "f64" => DataType::DtDouble,
        "f16" => DataType::DtHalf,
        "i8" => DataType::DtInt8,
        "i16" => DataType::DtInt16,
        "i32" => DataType::DtInt32,
        "i64" => DataType::DtInt64,
        "u8" => DataType::DtUint8,
        "u16" => DataType::DtUint16,
        "u32" => DataType::DtUint32,
        "u64" => DataType::DtUint64,
        "boolean" => DataType::DtBool,
        _ => return None,
    })
}

/// (OpenVINO name, bytes per element) for a TF dtype the generator can fill.
fn elem_of(dtype: i32) -> Option<(&'static str, usize)> {
    let d = DataType::try_from(dtype).ok()?;
    Some(match d {
        DataType::DtFloat => ("f32", 4),
        DataType::DtDouble => ("f64", 8),
        DataType::DtHalf => ("f16", 2),
        DataType::DtInt8 => ("i8", 1),
        DataType::DtInt16 => ("i16", 2),
        DataType::DtInt32 => ("i32", 4),
        DataType::DtInt64 => ("i64", 8),
        DataType::DtUint8 => ("u8", 1),
        DataType::DtUint16 => ("u16", 2),
        DataType::DtUint32 => ("u32", 4),
        DataType::DtUint64 => ("u64", 8),
        DataType::DtBool => ("boolean", 1),
        _ => return None,
    })
}

/// Asks the server for the model's signature (GetModelMetadata, "signature_def").
pub async fn fetch_inputs(ch: &Channel, model: &str, version: i64, timeout: Duration) -> Result<ModelInputs, String> {
    let req = GetModelMetadataRequest {
        model_spec: Some(model_spec(model, version)),
        metadata_field: vec!["signature_def".into()],
    };
    let msg = ch
        .unary(methods::GET_MODEL_METADATA, &req.encode_to_vec(), timeout)
        .await
        .map_err(|e| format!("GetModelMetadata for model {model:?}: {e}"))?;
    let resp = GetModelMetadataResponse::decode(msg).map_err(|e| format!("GetModelMetadata answer: {e}"))?;
    let any = resp.metadata.get("signature_def").ok_or("GetModelMetadata answer has no signature_def")?;
    let map = SignatureDefMap::decode(any.value.as_slice()).map_err(|e| format!("signature_def: {e}"))?;
    let sig = map
        .signature_def
        .get("serving_default")
        .or_else(|| map.signature_def.values().next())
        .ok_or("signature_def map is empty")?;
    let mut names: Vec<&String> = sig.inputs.keys().collect();
    names.sort();
    let mut inputs = Vec::new();
    for key in names {
        if key == SEQUENCE_ID || key == SEQUENCE_CONTROL {
            continue;
        }
        let info = &sig.inputs[key];
        let (elem, elem_bytes) = elem_of(info.dtype)
            .ok_or_else(|| format!("input {key:?}: dtype {} not supported by the loadgen", info.dtype))?;
        let shape = info.tensor_shape.as_ref().ok_or_else(|| format!("input {key:?} has no shape"))?;
        let mut dims = Vec::new();
        for d in &shape.dim {
            if d.size < 0 {
                return Err(format!("input {key:?} has a dynamic dimension; only static shapes are supported"));
            }
            dims.push(d.size as usize);
        }
        inputs.push(InputDesc { name: key.clone(), elem, elem_bytes, dims });
    }
    let mut outputs: Vec<String> = sig.outputs.keys().cloned().collect();
    outputs.sort();
    Ok(ModelInputs { inputs, outputs })
}

struct InputPlan {
    name: Bytes,
    head: Bytes,
    /// DATA_VARIANTS contents.
    pool: Vec<Bytes>,
    verified: bool,
    elements: usize,
}

/// TF-Serving gRPC Predict with OVMS's sequence inputs.
pub struct TfsGrpc {
    spec_field: Bytes,
    inputs: Vec<InputPlan>,
    id_head: Bytes,
    control_head: Bytes,
    verify_output: Option<String>,
    size_hint: usize,
}

impl TfsGrpc {
    /// `verify`: (input name, output name) checked with --verify.
    pub fn new(
        model: &str,
        version: i64,
        inputs: &ModelInputs,
        pool: Vec<Vec<Bytes>>,
        verify: Option<(&str, &str)>,
    ) -> Result<TfsGrpc, String> {
        let spec = model_spec(model, version);
        let mut spec_field = BytesMut::new();
        prost::encoding::message::encode(1, &spec, &mut spec_field);
        let mut plans = Vec::new();
        for (d, pool) in inputs.inputs.iter().zip(pool) {
            let dtype = dtype_of(d.elem).ok_or_else(|| format!("input {:?}: no TF dtype for {}", d.name, d.elem))?;
            plans.push(InputPlan {
                name: Bytes::from(d.name.clone()),
                head: tensor_head(dtype, &d.dims),
                pool,
                verified: verify.is_some_and(|(i, _)| i == d.name),
                elements: d.elements(),
            });
        }
        if let Some((i, o)) = verify {
            let input = plans.iter().find(|p| p.verified).ok_or_else(|| {
                format!(
                    "--verify: model has no input {i:?} (inputs: {:?})",
                    inputs.inputs.iter().map(|d| &d.name).collect::<Vec<_>>()
                )
            })?;
            if inputs.inputs.iter().find(|d| d.name == i).map(|d| d.elem) != Some("f32") || input.elements == 0 {
                return Err(format!("--verify: input {i:?} must be f32"));
            }
            if !inputs.outputs.iter().any(|n| n == o) {
                return Err(format!("--verify: model has no output {o:?} (outputs: {:?})", inputs.outputs));
            }
        }
        let size_hint = PREFIX_LEN
            + spec_field.len()
            + plans.iter().map(|p| 16 + p.name.len() + p.head.len() + p.pool[0].len()).sum::<usize>()
            + 128;
        Ok(TfsGrpc {
            spec_field: spec_field.freeze(),
            inputs: plans,
            id_head: tensor_head(DataType::DtUint64, &[1]),
            control_head: tensor_head(DataType::DtUint32, &[1]),
            verify_output: verify.map(|(_, o)| o.to_string()),
            size_hint,
        })
    }
}

/// `v` as a protobuf varint, on the stack (the request is written without per-step
/// allocations besides its own buffer).
fn varint(v: u64) -> ([u8; 10], usize) {
    let mut b = [0u8; 10];
    let mut rest = &mut b[..];
    encode_varint(v, &mut rest);
    let n = 10 - rest.len();
    (b, n)
}

fn put_content_entry(buf: &mut BytesMut, name: &[u8], head: &[u8], content: &[u8]) {
    let (len, n) = varint(content.len() as u64);
    put_entry(buf, name, head, &[&[TAG_CONTENT], &len[..n], content]);
}

/// A packed repeated varint field of one value: tag, payload length, the varint.
fn put_packed_entry(buf: &mut BytesMut, name: &[u8], head: &[u8], tag: &[u8], v: u64) {
    let (val, n) = varint(v);
    put_entry(buf, name, head, &[tag, &[n as u8], &val[..n]]);
}

/// One `inputs` map entry: key `name`, value = `head` followed by `parts`.
fn put_entry(buf: &mut BytesMut, name: &[u8], head: &[u8], parts: &[&[u8]]) {
    let tensor_len = head.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    let entry_len =
        1 + encoded_len_varint(name.len() as u64) + name.len() + 1 + encoded_len_varint(tensor_len as u64) + tensor_len;
    buf.put_u8(TAG_INPUTS);
    encode_varint(entry_len as u64, buf);
    buf.put_u8(TAG_KEY);
    encode_varint(name.len() as u64, buf);
    buf.put_slice(name);
    buf.put_u8(TAG_VALUE);
    encode_varint(tensor_len as u64, buf);
    buf.put_slice(head);
    for p in parts {
        buf.put_slice(p);
    }
}

impl UnaryGrpc for TfsGrpc {
    const METHOD: &'static str = methods::PREDICT;

    /// The framed (5-byte prefix) PredictRequest for a step.
    fn encode(&self, step: &Step) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.size_hint);
        // The prefix's length is written once the message is.
        buf.put_slice(&encode_prefix(0));
        buf.put_slice(&self.spec_field);
        for p in &self.inputs {
            match (p.verified, step.verify_value) {
                (true, Some(v)) => {
                    let mut content = Vec::with_capacity(p.elements * 4);
                    for _ in 0..p.elements {
                        content.extend_from_slice(&v.to_le_bytes());
                    }
                    put_content_entry(&mut buf, &p.name, &p.head, &content);
                }
                _ => put_content_entry(&mut buf, &p.name, &p.head, &p.pool[step.variant % p.pool.len()]),
            }
        }
        if step.seq_id != 0 {
            put_packed_entry(&mut buf, SEQUENCE_ID.as_bytes(), &self.id_head, &TAG_UINT64_VAL, step.seq_id);
        }
        put_packed_entry(
            &mut buf,
            SEQUENCE_CONTROL.as_bytes(),
            &self.control_head,
            &TAG_UINT32_VAL,
            step.control as u64,
        );
        let len = (buf.len() - PREFIX_LEN) as u32;
        buf[..PREFIX_LEN].copy_from_slice(&encode_prefix(len));
        buf.freeze()
    }

    /// Reads the answer's sequence_id and verified output, if asked for.
    fn decode(&self, msg: Bytes, step: &Step) -> Result<Reply, CallError> {
        let want_value = step.verify_value.is_some() && self.verify_output.is_some();
        if !step.want_id && !want_value {
            return Ok(Reply::default());
        }
        let resp = PredictResponse::decode(msg).map_err(|e| CallError::Protocol(format!("PredictResponse: {e}")))?;
        let mut reply = Reply::default();
        if step.want_id {
            let t = resp
                .outputs
                .get(SEQUENCE_ID)
                .ok_or_else(|| CallError::Protocol("answer has no sequence_id output".into()))?;
            reply.seq_id = t.uint64_val.first().copied().or_else(|| {
                (t.tensor_content.len() == 8).then(|| u64::from_le_bytes(t.tensor_content[..8].try_into().unwrap()))
            });
        }
        if want_value {
            let name = self.verify_output.as_deref().unwrap_or_default();
            let t =
                resp.outputs.get(name).ok_or_else(|| CallError::Protocol(format!("answer has no {name:?} output")))?;
            reply.verify_value = if t.tensor_content.len() >= 4 {
                Some(f32::from_le_bytes(t.tensor_content[..4].try_into().unwrap()))
            } else {
                t.float_val.first().copied()
            };
        }
        Ok(reply)
    }
}

/// Decodes a framed request back with prost (tests).
#[allow(dead_code)]
pub fn decode_request(framed: &[u8]) -> PredictRequest {
    PredictRequest::decode(&framed[PREFIX_LEN..]).expect("valid PredictRequest")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{data_pool, Control};

    fn summator() -> ModelInputs {
        ModelInputs {
            inputs: vec![InputDesc { name: "input".into(), elem: "f32", elem_bytes: 4, dims: vec![1, 1] }],
            outputs: vec!["add_sum".into()],
        }
    }

    #[test]
    fn hand_encoding_is_a_valid_predict_request() {
        let m = summator();
        let pool = data_pool(&m.inputs, 1);
        let p = TfsGrpc::new("summator", 3, &m, pool, Some(("input", "add_sum"))).unwrap();
        let step = Step {
            seq_id: 0xABCD_0000_0001,
            control: Control::Start,
            variant: 0,
            verify_value: Some(-5.0),
            want_id: true,
        };
        let framed = p.encode(&step);
        assert_eq!(&framed[..PREFIX_LEN], &encode_prefix((framed.len() - PREFIX_LEN) as u32));
        let req = decode_request(&framed);
        let spec = req.model_spec.unwrap();
        assert_eq!(spec.name, "summator");
        assert_eq!(spec.version_choice, Some(VersionChoice::Version(3)));
        let id = &req.inputs[SEQUENCE_ID];
        assert_eq!(id.dtype, DataType::DtUint64 as i32);
        assert_eq!(id.uint64_val, vec![0xABCD_0000_0001]);
        assert_eq!(id.tensor_shape.as_ref().unwrap().dim[0].size, 1);
        let c = &req.inputs[SEQUENCE_CONTROL];
        assert_eq!(c.dtype, DataType::DtUint32 as i32);
        assert_eq!(c.uint32_val, vec![1]);
        let x = &req.inputs["input"];
        assert_eq!(x.dtype, DataType::DtFloat as i32);
        assert_eq!(&x.tensor_content[..], &(-5.0f32).to_le_bytes());
        assert_eq!(x.tensor_shape.as_ref().unwrap().dim.len(), 2);
    }

    #[test]
    fn no_id_when_server_chooses() {
        let m = summator();
        let p = TfsGrpc::new("summator", 0, &m, data_pool(&m.inputs, 1), None).unwrap();
        let step = Step { seq_id: 0, control: Control::Start, variant: 3, verify_value: None, want_id: true };
        let req = decode_request(&p.encode(&step));
        assert!(!req.inputs.contains_key(SEQUENCE_ID));
        assert_eq!(req.inputs["input"].tensor_content.len(), 4);
        assert!(req.model_spec.unwrap().version_choice.is_none());
    }

    #[test]
    fn decode_reads_id_and_value() {
        let m = summator();
        let p = TfsGrpc::new("summator", 0, &m, data_pool(&m.inputs, 1), Some(("input", "add_sum"))).unwrap();
        let mut resp = PredictResponse::default();
        resp.outputs.insert(
            SEQUENCE_ID.into(),
            TensorProto { dtype: DataType::DtUint64 as i32, uint64_val: vec![42], ..Default::default() },
        );
        resp.outputs.insert(
            "add_sum".into(),
            TensorProto {
                dtype: DataType::DtFloat as i32,
                tensor_content: Bytes::copy_from_slice(&7.5f32.to_le_bytes()),
                ..Default::default()
            },
        );
        let step = Step { seq_id: 42, control: Control::None, variant: 0, verify_value: Some(1.0), want_id: true };
        let r = p.decode(Bytes::from(resp.encode_to_vec()), &step).unwrap();
        assert_eq!(r, Reply { seq_id: Some(42), verify_value: Some(7.5) });
    }

    #[test]
    fn verify_needs_the_named_ports() {
        let m = summator();
        assert!(TfsGrpc::new("s", 0, &m, data_pool(&m.inputs, 1), Some(("nope", "add_sum"))).is_err());
        assert!(TfsGrpc::new("s", 0, &m, data_pool(&m.inputs, 1), Some(("input", "nope"))).is_err());
    }
}
