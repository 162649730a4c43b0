//! Integration tests of the OpenVINO layer (src/ov) against the generated summator (the same
//! graph and names as OVMS's stateful summator test model, which tests/py also serves):
//! input `input` f32[1,1], output `add_sum` f32[1,1], one variable state `state`; each
//! inference adds the input to the state and outputs the running sum.
//!
//! Nothing is skipped: without the runtime (`make setup`) these tests fail with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable)] // test code: a broken assumption should fail loudly

use std::path::{Path, PathBuf};

use seqcore::ov::{self, CompileOptions, CompiledModel, Core, ElemType, InferRequest};

const SUMMATOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/generated/summator/1/model.xml");

fn runtime() -> &'static ov::Runtime {
    ov::load(None).unwrap_or_else(|e| panic!("{e}"))
}

/// The summator pinned to f32: the exact sums below assume it (OpenVINO's default is bf16 on CPUs
/// with native bf16; see docs/precision.md).
fn summator() -> CompiledModel {
    let core = Core::new(runtime()).unwrap_or_else(|e| panic!("{e}"));
    let opts =
        CompileOptions { plugin_config: vec![("INFERENCE_PRECISION_HINT".into(), "f32".into())], ..Default::default() };
    let m = core.compile(Path::new(SUMMATOR), &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.inference_precision(), "f32");
    m
}

/// Feeds `x`, infers, returns the running sum.
fn step(req: &mut InferRequest, x: f32) -> f32 {
    req.input_mut(0).copy_from_slice(&x.to_ne_bytes());
    req.infer().unwrap_or_else(|e| panic!("{e}"));
    f32::from_ne_bytes(req.output(0).try_into().unwrap())
}

#[test]
fn summator_ports_and_state() {
    let rt = runtime();
    assert!(rt.version().starts_with("2026.4.1"), "version {}", rt.version());
    let m = summator();
    assert_eq!(m.inputs().len(), 1);
    assert_eq!(m.inputs()[0].name, "input");
    assert_eq!(m.inputs()[0].elem, ElemType::F32);
    assert_eq!(m.inputs()[0].dims, vec![1, 1]);
    assert_eq!(m.inputs()[0].byte_size, 4);
    assert_eq!(m.outputs().len(), 1);
    assert_eq!(m.outputs()[0].name, "add_sum");
    assert_eq!(m.outputs()[0].elem, ElemType::F32);
    assert_eq!(m.outputs()[0].dims, vec![1, 1]);
    assert_eq!(m.outputs()[0].byte_size, 4);
    assert_eq!(m.states().len(), 1);
    assert_eq!(m.states()[0].name, "state");
    assert_eq!(m.states()[0].elem, ElemType::F32);
    assert_eq!(m.states()[0].dims, vec![1, 1]);
    assert_eq!(m.states()[0].byte_size, 4);
}

#[test]
fn running_sum_reset_and_state_transfer() {
    let m = summator();
    let mut a = m.create_request().unwrap();
    assert_eq!(step(&mut a, 1.0), 1.0);
    assert_eq!(step(&mut a, 2.0), 3.0);
    assert_eq!(step(&mut a, 3.5), 6.5);

    a.reset_states().unwrap();
    assert_eq!(step(&mut a, 5.0), 5.0);

    // The saved state, restored into ANOTHER request, continues the sum there.
    let mut saved = vec![0u8; m.states()[0].byte_size];
    a.save_state(0, &mut saved).unwrap();
    assert_eq!(f32::from_ne_bytes(saved[..].try_into().unwrap()), 5.0);
    let mut b = m.create_request().unwrap();
    b.restore_state(0, &saved).unwrap();
    saved.fill(0xff); // OpenVINO must have copied it, not kept our pointer
    assert_eq!(step(&mut b, 1.0), 6.0);
    // ... and `a` is unaffected.
    assert_eq!(step(&mut a, 1.0), 6.0);
}

#[test]
fn interleaved_sequences_with_save_restore_are_independent() {
    let m = summator();
    // One request serving two sequences, swapping their states in and out (the server's
    // pattern), plus a second request doing the same: all sums stay independent.
    let mut r1 = m.create_request().unwrap();
    let mut r2 = m.create_request().unwrap();
    let n = m.states()[0].byte_size;
    let (mut s_a, mut s_b, mut s_c) = (vec![0u8; n], vec![0u8; n], vec![0u8; n]);
    let (mut want_a, mut want_b, mut want_c) = (0f32, 0f32, 0f32);
    for i in 0..20 {
        let (xa, xb, xc) = (i as f32, 0.5 * i as f32 + 1.0, 100.0);
        for (which, state, x, want) in
            [(0, &mut s_a, xa, &mut want_a), (0, &mut s_b, xb, &mut want_b), (1, &mut s_c, xc, &mut want_c)]
        {
            let req = if which == 0 { &mut r1 } else { &mut r2 };
            req.restore_state(0, state).unwrap();
            *want += x;
            assert_eq!(step(req, x), *want, "step {i}");
            req.save_state(0, state).unwrap();
        }
    }
    assert_eq!((want_a, want_b, want_c), (190.0, 115.0, 2000.0));
}

#[test]
fn state_buffer_size_and_index_are_checked() {
    let m = summator();
    let mut r = m.create_request().unwrap();
    let e = r.save_state(0, &mut [0u8; 3]).unwrap_err();
    assert!(e.to_string().contains("4 bytes"), "{e}");
    let e = r.restore_state(1, &[0u8; 4]).unwrap_err();
    assert!(e.to_string().contains("no variable state #1"), "{e}");
}

#[test]
fn missing_model_is_an_error() {
    let core = Core::new(runtime()).unwrap();
    let e = core
        .compile(Path::new("/nonexistent/model.xml"), &CompileOptions::default())
        .err()
        .expect("compiling a missing model must fail");
    let msg = e.to_string();
    assert!(msg.contains("/nonexistent/model.xml"), "{msg}");
}

#[test]
fn low_latency_and_plugin_config_compile() {
    let core = Core::new(runtime()).unwrap();
    let opts =
        CompileOptions { low_latency: true, plugin_config: vec![("INFERENCE_PRECISION_HINT".into(), "f32".into())] };
    let m = core.compile(Path::new(SUMMATOR), &opts).unwrap_or_else(|e| panic!("{e}"));
    let mut r = m.create_request().unwrap();
    assert_eq!(step(&mut r, 2.0), 2.0);
    assert_eq!(step(&mut r, 2.0), 4.0);

    let bad = CompileOptions { plugin_config: vec![("NO_SUCH_PROPERTY".into(), "1".into())], ..Default::default() };
    let e = core.compile(Path::new(SUMMATOR), &bad).err().expect("unknown property must fail");
    assert!(!e.to_string().contains('\n'), "{e}");
}

/// `load` with a directory lacking libopenvino gives the one-line "not found" error. If
/// SEQCORE_OPENVINO_DIR is set (it overrides the argument), rerun this test in a child process
/// without it.
#[test]
fn load_from_bad_dir_gives_one_line_error() {
    if std::env::var_os(ov::RUNTIME_DIR_ENV).is_some() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "load_from_bad_dir_gives_one_line_error", "--test-threads=1"])
            .env_remove(ov::RUNTIME_DIR_ENV)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        return;
    }
    let bad = PathBuf::from("/nonexistent/ov-runtime");
    let e = ov::load(Some(&bad)).expect_err("loading from a bad dir must fail");
    assert_eq!(
        e.to_string(),
        "OpenVINO runtime not found in /nonexistent/ov-runtime (libopenvino.so.2641): \
         run 'make setup' to install openvino==2026.4.1"
    );
}
