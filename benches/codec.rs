//! Decode/encode of TF-Serving Predict and KServe ModelInfer messages: ours beside the naive
//! alternative.
//! - decode: prost from `Bytes` (tensor contents are views) vs from `&[u8]` (contents copied);
//! - request to job: `tfs::fast` (borrowing wire reader) vs prost decode + `tfs::predict_job`;
//! - encode: the hand-written `PredictResponse` encoder vs building prost's generated struct
//!   (a `String` and a `HashMap` entry per output per response).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable)] // test code: a broken assumption should fail loudly

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use prost::Message;
use seqcore::catalog::ModelMeta;
use seqcore::proto::tensorflow::serving::{PredictRequest, PredictResponse};
use seqcore::proto::tensorflow::{tensor_shape_proto::Dim, TensorProto, TensorShapeProto};
use seqcore::request::{Outcome, SequenceId};
use seqcore::signature::{ElemType, PortInfo};
use std::hint::black_box;

fn shape(dims: &[i64]) -> Option<TensorShapeProto> {
    Some(TensorShapeProto {
        dim: dims.iter().map(|&size| Dim { size, name: String::new() }).collect(),
        unknown_rank: false,
    })
}

/// A step request with `features` f32 values plus the two special inputs.
fn step_request(features: usize) -> Bytes {
    let mut req = PredictRequest {
        model_spec: Some(seqcore::proto::tensorflow::serving::ModelSpec { name: "lstm".into(), ..Default::default() }),
        ..Default::default()
    };
    let content: Vec<u8> = (0..features).flat_map(|i| (i as f32 * 0.01).to_le_bytes()).collect();
    req.inputs.insert(
        "features".into(),
        TensorProto {
            dtype: 1,
            tensor_shape: shape(&[1, features as i64]),
            tensor_content: content.into(),
            ..Default::default()
        },
    );
    req.inputs.insert(
        "sequence_id".into(),
        TensorProto { dtype: 23, tensor_shape: shape(&[1]), uint64_val: vec![42], ..Default::default() },
    );
    req.inputs.insert(
        "sequence_control_input".into(),
        TensorProto { dtype: 22, tensor_shape: shape(&[1]), uint32_val: vec![0], ..Default::default() },
    );
    Bytes::from(req.encode_to_vec())
}

fn lstm_meta() -> ModelMeta {
    let port =
        |name: &str, n: usize| PortInfo { name: name.into(), elem: ElemType::F32, dims: vec![1, n], byte_size: 4 * n };
    ModelMeta {
        name: "lstm".into(),
        version: 1,
        stateful: true,
        inputs: vec![port("features", 40)],
        outputs: vec![port("scores", 32)],
        precision: "f32".into(),
        execution_mode: "PERFORMANCE".into(),
    }
}

fn naive_response(meta: &ModelMeta, outcome: &Outcome) -> Vec<u8> {
    let mut resp = PredictResponse::default();
    let mut at = 0;
    for p in &meta.outputs {
        let content = Bytes::copy_from_slice(&outcome.outputs[at..at + p.byte_size]);
        at += p.byte_size;
        let dims: Vec<i64> = p.dims.iter().map(|&d| d as i64).collect();
        resp.outputs.insert(
            p.name.clone(),
            TensorProto { dtype: 1, tensor_shape: shape(&dims), tensor_content: content, ..Default::default() },
        );
    }
    if let Some(SequenceId::Num(id)) = outcome.sequence_id {
        resp.outputs.insert(
            "sequence_id".into(),
            TensorProto { dtype: 23, tensor_shape: shape(&[1]), uint64_val: vec![id], ..Default::default() },
        );
    }
    resp.encode_to_vec()
}

fn codec(c: &mut Criterion) {
    // 40 features: one LSTM frame; 16 Ki features: 64 KiB, e.g. a window of audio samples.
    for features in [40usize, 16 * 1024] {
        let msg = step_request(features);
        let mut g = c.benchmark_group(format!("predict_decode_{}B", features * 4));
        g.bench_function("bytes_zero_copy", |b| b.iter(|| PredictRequest::decode(black_box(msg.clone())).unwrap()));
        g.bench_function("naive_slice_copy", |b| b.iter(|| PredictRequest::decode(black_box(&msg[..])).unwrap()));
        g.finish();
    }

    // From the message to a validated job, as the server does per step.
    let catalog = seqcore::catalog::Catalog::of([lstm_meta()]);
    let msg = step_request(40);
    let mut g = c.benchmark_group("predict_to_job_160B");
    g.bench_function("fast_borrowing_reader", |b| {
        b.iter(|| seqcore::tfs::fast::predict_job(black_box(&msg), &catalog).expect("plain request").2)
    });
    g.bench_function("naive_prost_then_validate", |b| {
        b.iter(|| {
            let req = seqcore::tfs::decode_predict(black_box(msg.clone())).unwrap();
            let (idx, meta) = seqcore::tfs::resolve(&catalog, req.model_spec.as_ref()).unwrap();
            seqcore::tfs::predict_job(idx, &meta, &req).unwrap()
        })
    });
    g.finish();

    let meta = lstm_meta();
    let outputs = Bytes::from(vec![7u8; 128]);
    let mut g = c.benchmark_group("predict_response_encode");
    g.bench_function("hand_encoded", |b| {
        b.iter_batched(
            || Outcome {
                model: seqcore::request::ModelIdx(0),
                sequence_id: Some(SequenceId::Num(42)),
                outputs: outputs.clone(),
            },
            |o| seqcore::tfs::encode::predict_response(black_box(&meta), &o),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("naive_prost_struct", |b| {
        b.iter_batched(
            || Outcome {
                model: seqcore::request::ModelIdx(0),
                sequence_id: Some(SequenceId::Num(42)),
                outputs: outputs.clone(),
            },
            |o| naive_response(black_box(&meta), &o),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A KServe ModelInfer step with Triton sequence parameters and the features as raw contents.
fn infer_request(features: usize) -> Bytes {
    use seqcore::proto::inference::{
        infer_parameter::ParameterChoice, model_infer_request::InferInputTensor, InferParameter, ModelInferRequest,
    };
    let mut req = ModelInferRequest { model_name: "lstm".into(), id: "step".into(), ..Default::default() };
    req.parameters
        .insert("sequence_id".into(), InferParameter { parameter_choice: Some(ParameterChoice::Uint64Param(42)) });
    req.parameters
        .insert("sequence_start".into(), InferParameter { parameter_choice: Some(ParameterChoice::BoolParam(false)) });
    req.inputs.push(InferInputTensor {
        name: "features".into(),
        datatype: "FP32".into(),
        shape: vec![1, features as i64],
        ..Default::default()
    });
    req.raw_input_contents.push((0..features).flat_map(|i| (i as f32).to_le_bytes()).collect::<Vec<u8>>().into());
    Bytes::from(req.encode_to_vec())
}

fn model_infer(c: &mut Criterion) {
    use seqcore::kserve::encode::infer_response;
    use seqcore::proto::inference::{
        model_infer_response::InferOutputTensor, InferTensorContents, ModelInferRequest, ModelInferResponse,
    };
    use seqcore::sequence::Echo;
    for features in [40usize, 16 * 1024] {
        let msg = infer_request(features);
        let mut g = c.benchmark_group(format!("model_infer_decode_{}B", features * 4));
        g.bench_function("bytes_zero_copy", |b| b.iter(|| ModelInferRequest::decode(black_box(msg.clone())).unwrap()));
        g.bench_function("naive_slice_copy", |b| b.iter(|| ModelInferRequest::decode(black_box(&msg[..])).unwrap()));
        g.finish();
    }
    // Answers: raw_output_contents as zero-copy slices of the outcome (ours, as Triton answers)
    // beside typed fp32_contents (each value decoded into a Vec<f32>).
    let meta = lstm_meta();
    let outputs = Bytes::from(vec![7u8; 128]);
    let mut g = c.benchmark_group("model_infer_response_encode");
    g.bench_function("raw_contents_slices", |b| {
        b.iter_batched(
            || Outcome {
                model: seqcore::request::ModelIdx(0),
                sequence_id: Some(SequenceId::Num(42)),
                outputs: outputs.clone(),
            },
            |o| infer_response(black_box(&meta), String::new(), &[], Echo::None, &o).unwrap().encode_to_vec(),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("naive_typed_contents", |b| {
        b.iter_batched(
            || Outcome {
                model: seqcore::request::ModelIdx(0),
                sequence_id: Some(SequenceId::Num(42)),
                outputs: outputs.clone(),
            },
            |o| {
                let values: Vec<f32> =
                    o.outputs.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
                let resp = ModelInferResponse {
                    model_name: meta.name.clone(),
                    model_version: "1".into(),
                    outputs: vec![InferOutputTensor {
                        name: "scores".into(),
                        datatype: "FP32".into(),
                        shape: vec![1, 32],
                        contents: Some(InferTensorContents { fp32_contents: values, ..Default::default() }),
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                resp.encode_to_vec()
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, codec, model_infer);
criterion_main!(benches);
