//! KServe v2 gRPC (`GRPCInferenceService/ModelInfer`) with Triton's sequence parameters:
//! `sequence_id` (uint64), `sequence_start`, `sequence_end` (bool). Data goes in
//! `raw_input_contents`; the id comes back in the response parameter `sequence_id` (or, under
//! OVMS's convention, an output tensor `sequence_id`).

use crate::grpc::{Bidi, CallError, Channel};
use crate::protocol::{Control, InputDesc, ModelInputs, Protocol, Reply, Step, UnaryGrpc};
use bytes::{Bytes, BytesMut};
use prost::Message;
use seqcore::grpc::{encode_prefix, PREFIX_LEN};
use seqcore::proto::inference::{
    infer_parameter::ParameterChoice, model_infer_request::InferInputTensor, InferParameter, ModelInferRequest,
    ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse, ModelStreamInferResponse,
};
use seqcore::proto::methods;
use std::collections::HashMap;
use std::time::Duration;

const SEQUENCE_ID: &str = "sequence_id";
const SEQUENCE_CONTROL: &str = "sequence_control_input";

/// (OpenVINO name, bytes per element) for a KServe datatype.
pub fn elem_of(datatype: &str) -> Option<(&'static str, usize)> {
    Some(match datatype {
        "FP32" => ("f32", 4),
        "FP64" => ("f64", 8),
        "FP16" => ("f16", 2),
        "BF16" => ("bf16", 2),
        "INT8" => ("i8", 1),
        "INT16" => ("i16", 2),
        "INT32" => ("i32", 4),
        "INT64" => ("i64", 8),
        "UINT8" => ("u8", 1),
        "UINT16" => ("u16", 2),
        "UINT32" => ("u32", 4),
        "UINT64" => ("u64", 8),
        "BOOL" => ("boolean", 1),
        _ => return None,
    })
}

pub fn datatype_of(elem: &str) -> &'static str {
    match elem {
        "f32" => "FP32",
        "f64" => "FP64",
        "f16" => "FP16",
        "bf16" => "BF16",
        "i8" => "INT8",
        "i16" => "INT16",
        "i32" => "INT32",
        "i64" => "INT64",
        "u8" => "UINT8",
        "u16" => "UINT16",
        "u32" => "UINT32",
        "u64" => "UINT64",
        _ => "BOOL",
    }
}

fn version_string(version: i64) -> String {
    if version > 0 {
        version.to_string()
    } else {
        String::new()
    }
}

/// Asks the server for the model's inputs (ModelMetadata).
pub async fn fetch_inputs(ch: &Channel, model: &str, version: i64, timeout: Duration) -> Result<ModelInputs, String> {
    let req = ModelMetadataRequest { name: model.to_string(), version: version_string(version) };
    let msg = ch
        .unary(methods::MODEL_METADATA, &req.encode_to_vec(), timeout)
        .await
        .map_err(|e| format!("ModelMetadata for model {model:?}: {e}"))?;
    let resp = ModelMetadataResponse::decode(msg).map_err(|e| format!("ModelMetadata answer: {e}"))?;
    let mut inputs = Vec::new();
    for t in &resp.inputs {
        if t.name == SEQUENCE_ID || t.name == SEQUENCE_CONTROL {
            continue;
        }
        let (elem, elem_bytes) = elem_of(&t.datatype)
            .ok_or_else(|| format!("input {:?}: datatype {} not supported by the loadgen", t.name, t.datatype))?;
        if t.shape.iter().any(|&d| d < 0) {
            return Err(format!("input {:?} has a dynamic dimension; only static shapes are supported", t.name));
        }
        inputs.push(InputDesc {
            name: t.name.clone(),
            elem,
            elem_bytes,
            dims: t.shape.iter().map(|&d| d as usize).collect(),
        });
    }
    Ok(ModelInputs { inputs, outputs: resp.outputs.iter().map(|t| t.name.clone()).collect() })
}

struct InputPlan {
    desc: InputDesc,
    pool: Vec<Bytes>,
    verified: bool,
}

/// KServe v2 ModelInfer with Triton sequence parameters.
pub struct KServeGrpc {
    model: String,
    version: String,
    inputs: Vec<InputPlan>,
    verify_output: Option<String>,
}

fn param(p: ParameterChoice) -> InferParameter {
    InferParameter { parameter_choice: Some(p) }
}

impl KServeGrpc {
    pub fn new(
        model: &str,
        version: i64,
        inputs: &ModelInputs,
        pool: Vec<Vec<Bytes>>,
        verify: Option<(&str, &str)>,
    ) -> Result<KServeGrpc, String> {
        if let Some((i, o)) = verify {
            match inputs.inputs.iter().find(|d| d.name == i) {
                Some(d) if d.elem == "f32" && d.elements() > 0 => {}
                Some(_) => return Err(format!("--verify: input {i:?} must be f32")),
                None => return Err(format!("--verify: model has no input {i:?}")),
            }
            if !inputs.outputs.iter().any(|n| n == o) {
                return Err(format!("--verify: model has no output {o:?} (outputs: {:?})", inputs.outputs));
            }
        }
        Ok(KServeGrpc {
            model: model.to_string(),
            version: version_string(version),
            inputs: inputs
                .inputs
                .iter()
                .zip(pool)
                .map(|(d, pool)| InputPlan {
                    desc: d.clone(),
                    pool,
                    verified: verify.is_some_and(|(i, _)| i == d.name),
                })
                .collect(),
            verify_output: verify.map(|(_, o)| o.to_string()),
        })
    }

    pub fn request(&self, step: &Step) -> ModelInferRequest {
        let mut parameters = HashMap::with_capacity(3);
        if step.seq_id != 0 {
            parameters.insert(SEQUENCE_ID.to_string(), param(ParameterChoice::Uint64Param(step.seq_id)));
        }
        if step.control == Control::Start {
            parameters.insert("sequence_start".to_string(), param(ParameterChoice::BoolParam(true)));
        }
        if step.control == Control::End {
            parameters.insert("sequence_end".to_string(), param(ParameterChoice::BoolParam(true)));
        }
        let mut tensors = Vec::with_capacity(self.inputs.len());
        let mut raw = Vec::with_capacity(self.inputs.len());
        for p in &self.inputs {
            tensors.push(InferInputTensor {
                name: p.desc.name.clone(),
                datatype: datatype_of(p.desc.elem).to_string(),
                shape: p.desc.dims.iter().map(|&d| d as i64).collect(),
                ..Default::default()
            });
            raw.push(match (p.verified, step.verify_value) {
                (true, Some(v)) => Bytes::from(v.to_le_bytes().repeat(p.desc.elements())),
                _ => p.pool[step.variant % p.pool.len()].clone(),
            });
        }
        ModelInferRequest {
            model_name: self.model.clone(),
            model_version: self.version.clone(),
            parameters,
            inputs: tensors,
            raw_input_contents: raw,
            ..Default::default()
        }
    }

    fn reply_of(&self, resp: &ModelInferResponse, step: &Step) -> Reply {
        let want_value = step.verify_value.is_some() && self.verify_output.is_some();
        let mut reply = Reply::default();
        if step.want_id {
            reply.seq_id = match resp.parameters.get(SEQUENCE_ID).and_then(|p| p.parameter_choice.as_ref()) {
                Some(ParameterChoice::Uint64Param(v)) => Some(*v),
                Some(ParameterChoice::Int64Param(v)) => u64::try_from(*v).ok(),
                Some(ParameterChoice::StringParam(s)) => s.parse().ok(),
                _ => output_bytes(resp, SEQUENCE_ID)
                    .and_then(|b| b.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap())))
                    .or_else(|| {
                        let i = resp.outputs.iter().position(|o| o.name == SEQUENCE_ID)?;
                        resp.outputs[i].contents.as_ref()?.uint64_contents.first().copied()
                    }),
            };
        }
        if want_value {
            let name = self.verify_output.as_deref().unwrap_or_default();
            reply.verify_value = output_bytes(resp, name)
                .and_then(|b| b.get(..4).map(|b| f32::from_le_bytes(b.try_into().unwrap())))
                .or_else(|| {
                    let i = resp.outputs.iter().position(|o| o.name == name)?;
                    resp.outputs[i].contents.as_ref()?.fp32_contents.first().copied()
                });
        }
        reply
    }
}

/// An output's raw bytes (raw_output_contents is in `outputs` order).
fn output_bytes<'a>(resp: &'a ModelInferResponse, name: &str) -> Option<&'a [u8]> {
    let i = resp.outputs.iter().position(|o| o.name == name)?;
    resp.raw_output_contents.get(i).map(|b| &b[..])
}

impl UnaryGrpc for KServeGrpc {
    const METHOD: &'static str = methods::MODEL_INFER;

    fn encode(&self, step: &Step) -> Bytes {
        let req = self.request(step);
        let len = req.encoded_len();
        let mut buf = BytesMut::with_capacity(PREFIX_LEN + len);
        buf.extend_from_slice(&encode_prefix(len as u32));
        req.encode(&mut buf).expect("capacity reserved");
        buf.freeze()
    }

    fn decode(&self, msg: Bytes, step: &Step) -> Result<Reply, CallError> {
        let want_value = step.verify_value.is_some() && self.verify_output.is_some();
        if !step.want_id && !want_value {
            return Ok(Reply::default());
        }
        let resp =
            ModelInferResponse::decode(msg).map_err(|e| CallError::Protocol(format!("ModelInferResponse: {e}")))?;
        Ok(self.reply_of(&resp, step))
    }
}

/// KServe v2 `ModelStreamInfer`: one bidirectional stream per sequence, one message per step
/// (same messages as [`KServeGrpc`]); the END step half-closes the stream and waits for its status.
pub struct KServeStream(pub KServeGrpc);

impl KServeStream {
    async fn step(&self, conn: &Channel, session: &mut Option<Bidi>, step: &Step) -> Result<Reply, CallError> {
        if session.is_none() {
            *session = Some(conn.open_bidi(methods::MODEL_STREAM_INFER).await?);
        }
        let bidi = session.as_mut().expect("opened above");
        let end = step.control == Control::End;
        bidi.send(self.0.encode(step), end)?;
        let msg = bidi.recv().await?;
        let resp = ModelStreamInferResponse::decode(msg)
            .map_err(|e| CallError::Protocol(format!("ModelStreamInferResponse: {e}")))?;
        if !resp.error_message.is_empty() {
            return Err(CallError::Stream(resp.error_message));
        }
        let reply = self.0.reply_of(&resp.infer_response.unwrap_or_default(), step);
        if end {
            bidi.finish().await?;
            *session = None;
        }
        Ok(reply)
    }
}

impl Protocol for KServeStream {
    type Conn = Channel;
    type Session = Option<Bidi>;

    fn new_conn(&self, addr: &str) -> Channel {
        Channel::new(addr)
    }

    async fn connect(&self, conn: &Channel) -> Result<(), CallError> {
        conn.connect().await
    }

    async fn call(
        &self,
        conn: &Channel,
        session: &mut Option<Bidi>,
        step: &Step,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let r = match crate::deadline::within(timeout, self.step(conn, session, step)).await {
            Ok(r) => r,
            Err(crate::deadline::Elapsed) => Err(CallError::Timeout),
        };
        if r.is_err() {
            // The sequence is abandoned; dropping the stream resets it.
            *session = None;
            if let Err(CallError::Transport(_)) = &r {
                conn.drop_connection();
            }
        }
        r
    }

    fn disconnect(&self, conn: &Channel) {
        conn.drop_connection();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::data_pool;
    use seqcore::proto::inference::model_infer_response::InferOutputTensor;

    fn summator() -> ModelInputs {
        ModelInputs {
            inputs: vec![InputDesc { name: "input".into(), elem: "f32", elem_bytes: 4, dims: vec![1, 1] }],
            outputs: vec!["add_sum".into()],
        }
    }

    #[test]
    fn request_carries_triton_sequence_parameters() {
        let m = summator();
        let p = KServeGrpc::new("summator", 0, &m, data_pool(&m.inputs, 1), Some(("input", "add_sum"))).unwrap();
        let step = Step { seq_id: 9, control: Control::Start, variant: 0, verify_value: Some(2.0), want_id: true };
        let framed = p.encode(&step);
        let req = ModelInferRequest::decode(&framed[PREFIX_LEN..]).unwrap();
        assert_eq!(req.model_name, "summator");
        assert_eq!(req.model_version, "");
        assert_eq!(req.parameters[SEQUENCE_ID].parameter_choice, Some(ParameterChoice::Uint64Param(9)));
        assert_eq!(req.parameters["sequence_start"].parameter_choice, Some(ParameterChoice::BoolParam(true)));
        assert!(!req.parameters.contains_key("sequence_end"));
        assert_eq!(req.inputs[0].datatype, "FP32");
        assert_eq!(req.inputs[0].shape, vec![1, 1]);
        assert_eq!(&req.raw_input_contents[0][..], &2.0f32.to_le_bytes());
        let end = Step { control: Control::End, seq_id: 0, ..step };
        let req = p.request(&end);
        assert!(!req.parameters.contains_key(SEQUENCE_ID));
        assert!(req.parameters.contains_key("sequence_end"));
    }

    #[test]
    fn reply_reads_param_id_and_raw_output() {
        let m = summator();
        let p = KServeGrpc::new("summator", 0, &m, data_pool(&m.inputs, 1), Some(("input", "add_sum"))).unwrap();
        let mut resp = ModelInferResponse::default();
        resp.parameters.insert(SEQUENCE_ID.into(), param(ParameterChoice::Uint64Param(77)));
        resp.outputs.push(InferOutputTensor {
            name: "add_sum".into(),
            datatype: "FP32".into(),
            shape: vec![1, 1],
            ..Default::default()
        });
        resp.raw_output_contents.push(Bytes::copy_from_slice(&3.5f32.to_le_bytes()));
        let step = Step { seq_id: 77, control: Control::None, variant: 0, verify_value: Some(1.0), want_id: true };
        let r = p.decode(Bytes::from(resp.encode_to_vec()), &step).unwrap();
        assert_eq!(r, Reply { seq_id: Some(77), verify_value: Some(3.5) });
    }
}
