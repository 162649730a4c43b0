//! Answers of the KServe front end, built with the generated prost structs. Model outputs go in
//! `raw_output_contents` (as Triton answers), each a zero-copy slice of the outcome's buffer.

use super::datatype;
use crate::catalog::ModelMeta;
use crate::error::{Error, Kind, Result};
use crate::proto::inference::model_infer_response::InferOutputTensor;
use crate::proto::inference::model_metadata_response::TensorMetadata;
use crate::proto::inference::repository_index_response::ModelIndex;
use crate::proto::inference::{
    ModelInferResponse, ModelMetadataResponse, ModelReadyResponse, ModelStreamInferResponse, RepositoryIndexResponse,
    ServerLiveResponse, ServerMetadataResponse, ServerReadyResponse,
};
use crate::request::{Outcome, SequenceId};
use crate::sequence::{self, Echo};
use bytes::Bytes;
use prost::Message;

/// Server name in `ServerMetadata`.
pub const SERVER_NAME: &str = "seqcore";
/// KServe/Triton extensions we serve: request/response `parameters`, Triton's sequence
/// extension (`sequence_id`/`sequence_start`/`sequence_end` parameters) and its model
/// repository extension (`super::repository`).
pub const EXTENSIONS: &[&str] = &["parameters", "sequence", "model_repository"];

/// The `ModelInferResponse` for `outcome`. `requested` are the names of
/// `ModelInferRequest.outputs` (empty: all outputs); OVMS's `sequence_id` output is always added
/// under [`Echo::Tensor`].
pub fn infer_response(
    meta: &ModelMeta,
    id: String,
    requested: &[&str],
    echo: Echo,
    outcome: &Outcome,
) -> Result<ModelInferResponse> {
    if let Some(unknown) =
        requested.iter().find(|r| **r != sequence::SEQUENCE_ID && !meta.outputs.iter().any(|p| p.name == **r))
    {
        return Err(Error::with(
            Kind::InvalidMessage,
            format!("requested output {unknown} is not an output of the model"),
        ));
    }
    let mut resp = ModelInferResponse {
        model_name: meta.name.clone(),
        model_version: meta.version.to_string(),
        id,
        ..Default::default()
    };
    let mut offset = 0;
    for port in &meta.outputs {
        let range = offset..offset + port.byte_size;
        offset += port.byte_size;
        if !requested.is_empty() && !requested.contains(&port.name.as_str()) {
            continue;
        }
        resp.outputs.push(InferOutputTensor {
            name: port.name.clone(),
            datatype: datatype(port.elem).to_string(),
            shape: port.dims.iter().map(|&d| d as i64).collect(),
            ..Default::default()
        });
        resp.raw_output_contents.push(outcome.outputs.slice(range));
    }
    debug_assert_eq!(offset, outcome.outputs.len());
    match (echo, &outcome.sequence_id) {
        (Echo::None, _) | (_, None) => {}
        (Echo::Tensor, Some(id)) => {
            // OVMS's special inputs name numeric sequences only; a string id has no UINT64
            // tensor to be echoed in (and cannot arrive with Echo::Tensor).
            let SequenceId::Num(n) = id else { return Ok(resp) };
            let n = *n;
            resp.outputs.push(InferOutputTensor {
                name: sequence::SEQUENCE_ID.to_string(),
                datatype: "UINT64".to_string(),
                shape: vec![1],
                ..Default::default()
            });
            resp.raw_output_contents.push(Bytes::copy_from_slice(&n.to_le_bytes()));
        }
        (Echo::Param(ty), Some(id)) => {
            resp.parameters
                .insert(sequence::SEQUENCE_ID.to_string(), super::infer_parameter(sequence::echo_param(ty, id)));
        }
    }
    Ok(resp)
}

pub fn stream_ok(resp: ModelInferResponse) -> Bytes {
    ModelStreamInferResponse { error_message: String::new(), infer_response: Some(resp) }.encode_to_vec().into()
}

/// A failed step on a stream: the error's text (OVMS's message) in `error_message`, and the
/// request's `id` and model in `infer_response` so the client can match it (as Triton does).
pub fn stream_error(e: &Error, model_name: &str, model_version: &str, id: String) -> Bytes {
    let resp = ModelInferResponse {
        model_name: model_name.to_string(),
        model_version: model_version.to_string(),
        id,
        ..Default::default()
    };
    ModelStreamInferResponse { error_message: e.to_string(), infer_response: Some(resp) }.encode_to_vec().into()
}

/// `versions`: every version of the model that takes new sequences (ascending).
pub fn model_metadata(meta: &ModelMeta, versions: &[i64]) -> Bytes {
    let tensors = |ports: &[crate::signature::PortInfo]| {
        ports
            .iter()
            .map(|p| TensorMetadata {
                name: p.name.clone(),
                datatype: datatype(p.elem).to_string(),
                shape: p.dims.iter().map(|&d| d as i64).collect(),
            })
            .collect()
    };
    ModelMetadataResponse {
        name: meta.name.clone(),
        versions: versions.iter().map(i64::to_string).collect(),
        platform: "openvino".to_string(),
        inputs: tensors(&meta.inputs),
        outputs: tensors(&meta.outputs),
    }
    .encode_to_vec()
    .into()
}

pub fn server_metadata() -> Bytes {
    ServerMetadataResponse {
        name: SERVER_NAME.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
    }
    .encode_to_vec()
    .into()
}

/// Every served model is loaded before the server answers at all.
pub fn model_ready(ready: bool) -> Bytes {
    ModelReadyResponse { ready }.encode_to_vec().into()
}

/// `RepositoryIndexResponse`: one `ModelIndex` per entry (a name-only entry has no version or
/// state, as Triton lists a model without versions).
pub fn repository_index(entries: &[super::repository::Entry<'_>]) -> Bytes {
    RepositoryIndexResponse {
        models: entries
            .iter()
            .map(|e| ModelIndex {
                name: e.name.to_string(),
                version: e.version.map(|v| v.to_string()).unwrap_or_default(),
                state: e.state.to_string(),
                reason: e.reason.to_string(),
            })
            .collect(),
    }
    .encode_to_vec()
    .into()
}

pub fn server_live() -> Bytes {
    ServerLiveResponse { live: true }.encode_to_vec().into()
}

/// `ready` is false once the server is shutting down, so a balancer stops sending at once.
pub fn server_ready(ready: bool) -> Bytes {
    ServerReadyResponse { ready }.encode_to_vec().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kserve::repository::{Entry, READY, UNAVAILABLE};

    #[test]
    fn repository_index_decodes_as_tritons_message() {
        let entries = [
            Entry { name: "a", version: Some(2), state: READY, reason: "" },
            Entry { name: "b", version: Some(1), state: UNAVAILABLE, reason: "no such file" },
            Entry { name: "c", version: None, state: "", reason: "" },
        ];
        let resp = RepositoryIndexResponse::decode(repository_index(&entries)).unwrap();
        let got: Vec<(&str, &str, &str, &str)> = resp
            .models
            .iter()
            .map(|m| (m.name.as_str(), m.version.as_str(), m.state.as_str(), m.reason.as_str()))
            .collect();
        assert_eq!(got, vec![("a", "2", "READY", ""), ("b", "1", "UNAVAILABLE", "no such file"), ("c", "", "", "")]);
        assert!(repository_index(&[]).is_empty());
    }
}
