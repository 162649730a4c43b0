//! Entry points of the coverage-guided fuzz targets (`fuzz/`, cargo-fuzz and libFuzzer; see
//! docs/fuzzing.md) and of their corpus replay (`tests/fuzz_corpora.rs`, part of `make test`).
//! Not part of the server: nothing in `src/` calls this module (the layering test places it
//! above everything), and it is `#[doc(hidden)]`.
//!
//! Each function takes the fuzzer's bytes, runs one decoder the way the server runs it, against
//! a fixed catalog ([`catalog`]: a summator-like and an LSTM-like stateful model, in two
//! versions for the first, and a stateless model with one input of most element types; no
//! OpenVINO), and checks the decoder's invariants:
//!
//! - no panic (debug assertions and overflow checks are on in fuzz builds and in `make test`);
//!   errors are values;
//! - what a decoder accepts is what the model takes (one buffer per model input, each exactly
//!   the port's byte size; a sequence exactly for stateful models);
//! - two paths that must agree do: the Predict fast path against the full prost path (the fast
//!   path may only step aside), a REST body against the gRPC request it is read into, a snapshot
//!   or a config against its own encoding;
//! - what is decoded is in proportion to the input (checked on the results here; libFuzzer's
//!   `-malloc_limit_mb` in `make fuzz` catches a single allocation out of proportion).
//!
//! A fuzz invariant must panic to be found, so this module allows `panic!` and uses `assert!`.
#![allow(clippy::panic)]

use crate::catalog::{Catalog, ModelMeta};
use crate::config;
use crate::error::Result;
use crate::kserve;
use crate::proto::tensorflow::serving::ModelSpec;
use crate::request::{InferJob, ModelIdx, Outcome, SequenceId};
use crate::rest::{http, kserve as rest_kserve, tensor, tfs as rest_tfs};
use crate::sequence::Echo;
use crate::signature::{ElemType, PortInfo};
use crate::snapshot;
use crate::tfs;
use bytes::Bytes;
use prost::Message;
use serde_json::Value;
use std::path::Path;
use std::rc::Rc;

fn port(name: &str, elem: ElemType, dims: &[usize]) -> PortInfo {
    PortInfo {
        name: name.into(),
        elem,
        dims: dims.to_vec(),
        byte_size: dims.iter().product::<usize>() * elem.byte_width(),
    }
}

fn model(name: &str, version: i64, stateful: bool, inputs: Vec<PortInfo>, outputs: Vec<PortInfo>) -> ModelMeta {
    ModelMeta {
        name: name.into(),
        version,
        stateful,
        inputs,
        outputs,
        precision: "f32".into(),
        execution_mode: "PERFORMANCE".into(),
    }
}

/// The models every target decodes against: `summator` (versions 1 and 2; f32[1,1] `input`),
/// `lstm` (f32[1,40] `features` → f32[1,32] `scores`), both stateful, and the stateless
/// `typed`, one input per element type family.
pub fn catalog() -> Catalog {
    let f32_port = |name: &str, dims: &[usize]| port(name, ElemType::F32, dims);
    Catalog::of([
        model("summator", 1, true, vec![f32_port("input", &[1, 1])], vec![f32_port("add_sum", &[1, 1])]),
        model("summator", 2, true, vec![f32_port("input", &[1, 1])], vec![f32_port("add_sum", &[1, 1])]),
        model("lstm", 1, true, vec![f32_port("features", &[1, 40])], vec![f32_port("scores", &[1, 32])]),
        model(
            "typed",
            1,
            false,
            vec![
                port("i64", ElemType::I64, &[2]),
                port("u8", ElemType::U8, &[1, 3]),
                port("b", ElemType::Boolean, &[2]),
                port("h", ElemType::F16, &[2]),
                port("bf", ElemType::BF16, &[1]),
                port("d", ElemType::F64, &[1]),
                port("i8", ElemType::I8, &[1]),
                port("u64", ElemType::U64, &[1]),
            ],
            vec![port("o", ElemType::I32, &[2]), port("p", ElemType::F16, &[1, 2])],
        ),
    ])
}

/// What every accepted request must be for its model.
fn check_job(meta: &ModelMeta, idx: ModelIdx, job: &InferJob) {
    assert_eq!(job.model, idx);
    assert_eq!(job.inputs.len(), meta.inputs.len(), "one buffer per model input");
    for (port, bytes) in meta.inputs.iter().zip(&job.inputs) {
        assert_eq!(bytes.len(), port.byte_size, "input {} has the port's byte size", port.name);
    }
    assert_eq!(job.sequence.is_some(), meta.stateful, "a sequence exactly for a stateful model");
}

/// The full path of `Predict`: prost decode, resolve, validate (`service::predict`'s fallback).
fn predict_full(catalog: &Catalog, message: &Bytes) -> Result<(ModelIdx, Rc<ModelMeta>, InferJob)> {
    let req = tfs::decode_predict(message.clone())?;
    let (idx, meta) = tfs::resolve(catalog, req.model_spec.as_ref())?;
    let job = tfs::predict_job(idx, &meta, &req)?;
    Ok((idx, meta, job))
}

/// Both paths of `Predict` on one message: the fast path either steps aside or gives the very
/// job the full path gives. Returns the full path's job, if any.
fn predict_both(catalog: &Catalog, message: &Bytes) -> Option<InferJob> {
    let fast = tfs::fast::predict_job(message, catalog);
    let full = predict_full(catalog, message);
    if let Ok((idx, meta, job)) = &full {
        check_job(meta, *idx, job);
    }
    match (fast, full) {
        (None, full) => full.ok().map(|(_, _, job)| job),
        (Some((idx, meta, job)), Ok((sidx, smeta, sjob))) => {
            assert_eq!(idx, sidx, "fast and full path resolve the same instance");
            assert!(Rc::ptr_eq(&meta, &smeta));
            assert_eq!(job.model, sjob.model);
            assert_eq!(job.any_version, sjob.any_version, "any_version");
            assert_eq!(job.sequence, sjob.sequence, "sequence");
            assert_eq!(job.inputs, sjob.inputs, "inputs");
            let within = message.as_ptr_range();
            for b in &job.inputs {
                assert!(within.contains(&b.as_ptr()), "the fast path borrows the contents");
            }
            Some(sjob)
        }
        (Some(_), Err(e)) => panic!("the fast path accepted what the full path refuses: {e}"),
    }
}

/// `PredictRequest` wire bytes (as after the gRPC frame): `tfs::fast` against the full path.
pub fn predict(data: &[u8]) {
    predict_both(&catalog(), &Bytes::copy_from_slice(data));
}

/// `ModelInferRequest` wire bytes: decode, resolve, validate as `service::kserve_prepare` does.
pub fn kserve_grpc(data: &[u8]) {
    let catalog = catalog();
    let Ok(req) = kserve::decode_infer(Bytes::copy_from_slice(data)) else { return };
    let Ok((idx, meta)) = kserve::resolve(&catalog, &req.model_name, &req.model_version) else { return };
    if let Ok((job, echo)) = kserve::infer_job(idx, &meta, &req) {
        check_job(&meta, idx, &job);
        assert_eq!(echo == Echo::None, !meta.stateful);
        let outcome = fake_outcome(&meta, &job);
        let requested: Vec<&str> = req.outputs.iter().map(|o| o.name.as_str()).collect();
        // The answer is encoded whatever was requested (unknown names are refused there).
        if let Ok(resp) = kserve::encode::infer_response(&meta, req.id.clone(), &requested, echo, &outcome) {
            let _ = kserve::encode::stream_ok(resp);
        }
    }
}

/// A step's outcome as the engine would give it: the outputs' bytes (a pattern), the sequence.
fn fake_outcome(meta: &ModelMeta, job: &InferJob) -> Outcome {
    let n = meta.outputs_bytes();
    let outputs: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
    let sequence_id = job.sequence.as_ref().map(|s| match &s.id {
        SequenceId::Num(0) => SequenceId::Num(1),
        id => id.clone(),
    });
    Outcome { model: job.model, sequence_id, outputs: Bytes::from(outputs) }
}

/// Splits `data` at its first newline: the first line names the model (and what else the target
/// reads from it), the rest is the body.
fn first_line(data: &[u8]) -> Option<(&str, &[u8])> {
    let at = data.iter().position(|&b| b == b'\n')?;
    Some((std::str::from_utf8(&data[..at]).ok()?, &data[at + 1..]))
}

/// TF-Serving REST: `<model>\n<JSON body>`. The body is read as the server reads it; what it
/// accepts must also be what the gRPC paths (fast and full) accept for the same request, and
/// the answer must be JSON.
pub fn rest_tfs(data: &[u8]) {
    let catalog = catalog();
    let Some((name, body)) = first_line(data) else { return };
    let Ok((idx, meta)) = catalog.resolve(name, None) else { return };
    let Ok((job, format)) = rest_tfs::predict_job(idx, &meta, body) else { return };
    check_job(&meta, idx, &job);
    // Every element the body held became at most 8 bytes, each from at least one byte of JSON.
    let bytes: usize = job.inputs.iter().map(Bytes::len).sum();
    assert!(bytes <= 8 * body.len(), "{bytes} bytes of tensors from {} bytes of JSON", body.len());

    // The same request over gRPC: prost encoding of what REST read, with the model spec.
    let (mut req, _) = match rest_tfs::parse_predict(&meta, body) {
        Ok(r) => r,
        Err(e) => panic!("predict_job accepted what parse_predict refuses: {e}"),
    };
    req.model_spec = Some(ModelSpec { name: name.into(), version_choice: None, signature_name: String::new() });
    let grpc = predict_both(&catalog, &Bytes::from(req.encode_to_vec()));
    match grpc {
        Some(g) => {
            assert_eq!(g.inputs, job.inputs, "REST and gRPC read the same tensors");
            assert_eq!(g.sequence, job.sequence, "REST and gRPC read the same sequence");
        }
        None => panic!("REST accepted a request that gRPC refuses"),
    }

    // The tensors written back as JSON read back as the same bytes (finite values).
    for (port, b) in meta.inputs.iter().zip(&job.inputs) {
        if !finite(port.elem, b) {
            continue;
        }
        let mut text = Vec::new();
        tensor::write_nested(&mut text, port.elem, &port.dims, b);
        let v: Value = match serde_json::from_slice(&text) {
            Ok(v) => v,
            Err(e) => panic!("tensor JSON {} does not parse: {e}", String::from_utf8_lossy(&text)),
        };
        let mut back = Vec::new();
        let dims = tensor::ndarray(&v, port.elem, &mut back);
        assert_eq!(dims.map(|d| d.len()), Some(port.dims.len()), "{}", String::from_utf8_lossy(&text));
        assert_eq!(&back[..], &b[..], "{} read back from {}", port.name, String::from_utf8_lossy(&text));
    }
    let answer = rest_tfs::predict_response(&meta, &fake_outcome(&meta, &job), format);
    if let Err(e) = serde_json::from_slice::<Value>(&answer) {
        panic!("the predict answer is not JSON: {e}");
    }
}

/// Whether every element of `b` (elements of `elem`) is finite (integers always are).
fn finite(elem: ElemType, b: &[u8]) -> bool {
    let w = elem.byte_width();
    b.chunks_exact(w).all(|c| match elem {
        ElemType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite(),
        ElemType::F64 => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]).is_finite(),
        ElemType::F16 => u16::from_le_bytes([c[0], c[1]]) & 0x7c00 != 0x7c00,
        ElemType::BF16 => u16::from_le_bytes([c[0], c[1]]) & 0x7f80 != 0x7f80,
        _ => true,
    })
}

/// KServe v2 REST infer: `<model>[ <Inference-Header-Content-Length>]\n<body>` (the header as
/// sent, unchecked, as `rest::http` hands it on). Accepted requests must fit the model, and the
/// answer's JSON part must be JSON.
pub fn rest_kserve(data: &[u8]) {
    let catalog = catalog();
    let Some((line, body)) = first_line(data) else { return };
    let (name, header) = match line.split_once(' ') {
        Some((n, h)) => (n, Some(h)),
        None => (line, None),
    };
    let Ok((idx, meta)) = catalog.resolve(name, None) else { return };
    let body = Bytes::copy_from_slice(body);
    let Ok(infer) = rest_kserve::infer_job(idx, &meta, &body, header) else { return };
    check_job(&meta, idx, &infer.job);
    let bytes: usize = infer.job.inputs.iter().map(Bytes::len).sum();
    assert!(bytes <= 8 * body.len(), "{bytes} bytes of tensors from a body of {}", body.len());
    assert_eq!(infer.outputs.model.len(), meta.outputs.len());
    let outcome = fake_outcome(&meta, &infer.job);
    let answer = rest_kserve::infer_response(&meta, &outcome, infer.echo, infer.id.as_deref(), &infer.outputs);
    if let Err(e) = serde_json::from_slice::<Value>(&answer.json) {
        panic!("the infer answer is not JSON: {e}: {}", String::from_utf8_lossy(&answer.json));
    }
}

/// HTTP/1.1 request heads, pipelined: `data` is what a connection received; heads are parsed
/// and their bodies skipped as `rest::http`'s connection loop does, each error answered.
pub fn http_head(data: &[u8]) {
    let limits = http::Limits { header_bytes_max: 2048, body_bytes_max: 4096, ..http::Limits::default() };
    let mut buf = data;
    loop {
        match http::parse_head(buf, &limits) {
            Ok(None) => {
                assert!(buf.len() <= limits.header_bytes_max, "an incomplete head is waited for only up to the limit");
                return;
            }
            Err(e) => {
                assert!((400..=599).contains(&e.status), "status {}", e.status);
                let mut out = Vec::new();
                http::write_response(&mut out, &http::Response::error(e.status, &e.message), false, true);
                assert!(out.starts_with(b"HTTP/1.1 "));
                return;
            }
            Ok(Some(head)) => {
                assert!(head.len <= buf.len() && head.len <= limits.header_bytes_max, "head length {}", head.len);
                assert!(head.body_len <= limits.body_bytes_max);
                assert!(!head.path.contains('?'));
                // The head alone parses to the same head.
                assert_eq!(http::parse_head(&buf[..head.len], &limits), Ok(Some(head_copy(&head))));
                let total = head.len + head.body_len;
                if buf.len() < total {
                    return;
                }
                buf = &buf[total..];
            }
        }
    }
}

fn head_copy(h: &http::Head) -> http::Head {
    http::Head {
        len: h.len,
        method: h.method,
        path: h.path.clone(),
        body_len: h.body_len,
        keep_alive: h.keep_alive,
        expect_continue: h.expect_continue,
        inference_header: h.inference_header.clone(),
    }
}

/// The configuration: a `config.json` text, or (when `data` starts with `--`) a command line,
/// one argument per line (`--config_path` is left out: it reads a file). A parsed config.json
/// must be valid, and written back as config.json it parses to the same models.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.starts_with("--") {
        let args: Vec<String> = text.split('\n').filter(|a| !a.contains("config_path")).map(str::to_string).collect();
        if let Ok(c) = config::parse_args(&args) {
            assert!(!c.models.is_empty());
            for m in &c.models {
                check_model(m);
            }
        }
        return;
    }
    let dir = Path::new("/models");
    let Ok(models) = config::parse_config_json(text, dir) else { return };
    assert!(!models.is_empty());
    for (i, m) in models.iter().enumerate() {
        check_model(m);
        assert!(models[..i].iter().all(|o| o.name != m.name), "model {:?} twice", m.name);
    }
    let again = config_json(&models, dir);
    match config::parse_config_json(&again, dir) {
        Ok(back) => assert_eq!(back, models, "config.json written back: {again}"),
        Err(e) => panic!("config.json written back does not parse: {}: {again}", e.0),
    }
}

fn check_model(m: &config::ModelConfig) {
    assert!(!m.name.is_empty());
    assert!(m.nireq >= 1 && m.nireq <= config::NIREQ_MAX);
    assert!(m.max_batch_size >= 1 && m.max_batch_size <= config::MAX_BATCH_SIZE_MAX);
    assert!(m.max_batch_size == 1 || m.stateful);
    assert!(m.max_queue_delay_us <= config::MAX_QUEUE_DELAY_US_MAX);
    assert!(m.max_queue_delay_us == 0 || m.max_batch_size >= 2);
    assert!(m.sequence_timeout_seconds >= 1);
    if let config::VersionPolicy::Specific(v) = &m.version_policy {
        assert!(!v.is_empty() && v.windows(2).all(|w| w[0] < w[1]) && v[0] >= 1);
    }
}

/// The config.json that says what `models` say (every key written out).
fn config_json(models: &[config::ModelConfig], dir: &Path) -> String {
    let list: Vec<Value> = models
        .iter()
        .map(|m| {
            let base = m.base_path.strip_prefix(dir).ok().filter(|b| !b.as_os_str().is_empty()).unwrap_or(&m.base_path);
            let mut c = serde_json::json!({
                "name": m.name,
                "base_path": base.to_string_lossy(),
                "stateful": m.stateful,
                "nireq": m.nireq,
                "max_batch_size": m.max_batch_size,
                "max_queue_delay_us": m.max_queue_delay_us,
                "plugin_config": m.plugin_config.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect::<serde_json::Map<String, Value>>(),
                "model_version_policy": m.version_policy.to_json(),
            });
            if m.stateful {
                c["sequence_timeout_seconds"] = m.sequence_timeout_seconds.into();
                c["max_sequence_number"] = m.max_sequence_number.into();
                c["low_latency_transformation"] = m.low_latency_transformation.into();
                c["idle_sequence_cleanup"] = m.idle_sequence_cleanup.into();
            }
            serde_json::json!({ "config": c })
        })
        .collect();
    serde_json::json!({ "model_config_list": list }).to_string()
}

/// A snapshot file (read at start with `--state_dir`): decoded, it must be in proportion to the
/// file and encode back to the very same bytes (the format has one encoding). The checksum would
/// keep a fuzzer out of the body, so the body is also decoded with its length and checksum made
/// right.
pub fn snapshot(data: &[u8]) {
    snapshot_once(data);
    if data.len() >= 24 && data.starts_with(snapshot::MAGIC) {
        let body = &data[20..data.len() - 4];
        let mut fixed = data[..12].to_vec();
        fixed.extend_from_slice(&(body.len() as u64).to_le_bytes());
        fixed.extend_from_slice(body);
        fixed.extend_from_slice(&snapshot::crc32c(body).to_le_bytes());
        snapshot_once(&fixed);
    }
}

fn snapshot_once(data: &[u8]) {
    let Ok(sections) = snapshot::decode(data) else { return };
    let states: usize = sections.iter().flat_map(|s| &s.sequences).map(|q| q.state.len()).sum();
    assert!(states <= data.len());
    assert!(sections.len() <= data.len());
    assert_eq!(snapshot::encode(&sections), data, "a decoded snapshot encodes to its own bytes");
}

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every target by its directory name under `fuzz/corpus/` (the replay test walks them).
pub const TARGETS: &[(&str, Target)] = &[
    ("predict", predict),
    ("kserve_grpc", kserve_grpc),
    ("rest_tfs", rest_tfs),
    ("rest_kserve", rest_kserve),
    ("http_head", http_head),
    ("config", config),
    ("snapshot", snapshot),
];
