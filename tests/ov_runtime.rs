//! Integration tests of the OpenVINO layer (src/ov) against the generated summator (the same
//! graph and names as OVMS's stateful summator test model, which tests/py also serves):
//! input `input` f32[1,1], output `add_sum` f32[1,1], one variable state `state`; each
//! inference adds the input to the state and outputs the running sum.
//!
//! The batching tests (`CompileOptions::batch`) use the demo LSTM as well: input `features`
//! f32[1,40], output `scores` f32[1,32], four variables f32[1,256] (`lstm{0,1}_{h,c}`).
//!
//! Nothing is skipped: without the runtime (`make setup`) these tests fail with its error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable)] // test code: a broken assumption should fail loudly

use std::path::{Path, PathBuf};

use seqcore::ov::{self, CompileOptions, CompiledModel, Core, ElemType, InferRequest};

const SUMMATOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/generated/summator/1/model.xml");
const LSTM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/generated/lstm/1/model.xml");

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
    // An f32 variable the plugin holds in f32: the compile-time probe lets restores copy into it.
    assert!(m.restores_in_place(0));
    assert!(!m.restores_in_place(1), "no state #1");
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
    let opts = CompileOptions {
        low_latency: true,
        plugin_config: vec![("INFERENCE_PRECISION_HINT".into(), "f32".into())],
        ..Default::default()
    };
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

// ---------------------------------------------------------------- batching

/// `xml` compiled at `batch` (0 = as it is), pinned to f32 so that rows compare bit for bit.
fn compile_batched(xml: &str, batch: usize) -> Result<CompiledModel, ov::OvError> {
    let core = Core::new(runtime()).unwrap_or_else(|e| panic!("{e}"));
    let opts = CompileOptions {
        plugin_config: vec![("INFERENCE_PRECISION_HINT".into(), "f32".into())],
        batch,
        ..Default::default()
    };
    let m = core.compile(Path::new(xml), &opts)?;
    assert_eq!(m.inference_precision(), "f32");
    Ok(m)
}

fn batched(xml: &str, batch: usize) -> CompiledModel {
    compile_batched(xml, batch).unwrap_or_else(|e| panic!("{e}"))
}

/// Deterministic pseudo-random f32 values in [-1, 1) (xorshift64*), one stream per seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 bits
        x as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// `n` values as native-endian f32 bytes.
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).flat_map(|_| self.next().to_ne_bytes()).collect()
    }
}

/// Writes `rows[r]` into row r of input 0, infers, returns output 0's bytes.
fn step_rows(req: &mut InferRequest, rows: &[Vec<u8>]) -> Vec<u8> {
    let input = req.input_mut(0);
    let row = input.len() / rows.len();
    for (r, x) in rows.iter().enumerate() {
        input[r * row..(r + 1) * row].copy_from_slice(x);
    }
    req.infer().unwrap_or_else(|e| panic!("{e}"));
    req.output(0).to_vec()
}

/// Row `r` of `bytes` split into `rows` rows.
fn row(bytes: &[u8], rows: usize, r: usize) -> &[u8] {
    let n = bytes.len() / rows;
    &bytes[r * n..(r + 1) * n]
}

fn save_all(req: &mut InferRequest) -> Vec<Vec<u8>> {
    let sizes: Vec<usize> = req.states().iter().map(|s| s.byte_size).collect();
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut buf = vec![0u8; n];
            req.save_state(i, &mut buf).unwrap_or_else(|e| panic!("{e}"));
            buf
        })
        .collect()
}

fn restore_all(req: &mut InferRequest, states: &[Vec<u8>]) {
    for (i, s) in states.iter().enumerate() {
        req.restore_state(i, s).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn lstm_compiles_at_batch_4_with_four_row_states() {
    let one = batched(LSTM, 0);
    assert_eq!(one.inputs()[0].dims, vec![1, 40]);
    let same = batched(LSTM, 1);
    assert_eq!(same.inputs()[0].dims, vec![1, 40]);
    assert_eq!(same.states()[0].dims, vec![1, 256]);

    let m = batched(LSTM, 4);
    assert_eq!(m.inputs().len(), 1);
    assert_eq!(m.inputs()[0].name, "features");
    assert_eq!(m.inputs()[0].dims, vec![4, 40]);
    assert_eq!(m.inputs()[0].byte_size, 4 * 160);
    assert_eq!(m.outputs().len(), 1);
    assert_eq!(m.outputs()[0].name, "scores");
    assert_eq!(m.outputs()[0].dims, vec![4, 32]);
    assert_eq!(m.outputs()[0].byte_size, 4 * 128);
    let names: Vec<&str> = m.states().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["lstm0_c", "lstm0_h", "lstm1_c", "lstm1_h"]);
    for s in m.states() {
        assert_eq!(s.elem, ElemType::F32, "{}", s.name);
        assert_eq!(s.dims, vec![4, 256], "{}", s.name);
        assert_eq!(s.byte_size, 4 * 1024, "{}", s.name);
    }
    // request_bytes counts the B-row states (twice) and ports.
    let grown = 2 * 4 * (4 * 1024 - 1024) + (4 * 160 - 160) + (4 * 128 - 128);
    assert_eq!(m.request_bytes() - one.request_bytes(), grown);
}

/// Row j of the batch-4 LSTM, fed sequence S while the other rows get other inputs, gives S's
/// batch-1 outputs bit for bit at every step.
#[test]
fn lstm_batch_4_rows_equal_the_sequence_alone() {
    const STEPS: usize = 20;
    let one = batched(LSTM, 1);
    let four = batched(LSTM, 4);
    let mut s_rng = Rng::new(1);
    let s_inputs: Vec<Vec<u8>> = (0..STEPS).map(|_| s_rng.bytes(40)).collect();
    let mut alone = one.create_request().unwrap();
    let want: Vec<Vec<u8>> = s_inputs.iter().map(|x| step_rows(&mut alone, std::slice::from_ref(x))).collect();

    for j in [0, 3] {
        let mut others: Vec<Rng> = (0..4).map(|r| Rng::new(100 + 10 * j as u64 + r as u64)).collect();
        let mut req = four.create_request().unwrap();
        let mut rows_differ = false;
        for (t, x) in s_inputs.iter().enumerate() {
            let rows: Vec<Vec<u8>> = (0..4).map(|r| if r == j { x.clone() } else { others[r].bytes(40) }).collect();
            let out = step_rows(&mut req, &rows);
            assert_eq!(row(&out, 4, j), &want[t][..], "row {j}, step {t}");
            rows_differ |= (0..4).any(|r| r != j && row(&out, 4, r) != row(&out, 4, j));
        }
        assert!(rows_differ, "the other rows must not just repeat row {j}");
    }
}

/// B-row states saved at batch 4 and restored into a fresh request (set_state) and into one
/// that has run (the in-place path, where the probe allows it) continue identically.
#[test]
fn lstm_batch_4_save_restore_continues() {
    let m = batched(LSTM, 4);
    let mut rng = Rng::new(7);
    let inputs: Vec<Vec<Vec<u8>>> = (0..20).map(|_| (0..4).map(|_| rng.bytes(40)).collect()).collect();
    let mut a = m.create_request().unwrap();
    for x in &inputs[..10] {
        step_rows(&mut a, x);
    }
    let saved = save_all(&mut a);
    assert!(saved.iter().all(|s| s.len() == 4 * 1024));

    let mut fresh = m.create_request().unwrap();
    restore_all(&mut fresh, &saved);
    let mut used = m.create_request().unwrap();
    for x in &inputs[..3] {
        step_rows(&mut used, &[x[3].clone(), x[2].clone(), x[1].clone(), x[0].clone()]);
    }
    restore_all(&mut used, &saved);
    for (t, x) in inputs[10..].iter().enumerate() {
        let want = step_rows(&mut a, x);
        assert_eq!(step_rows(&mut fresh, x), want, "fresh request, step {t}");
        assert_eq!(step_rows(&mut used, x), want, "used request, step {t}");
    }
    // One row's state moves between rows too: row 2 of `a`'s saved states, put in row 0 of
    // another request, continues row 2's outputs there.
    let mut moved = m.create_request().unwrap();
    let mut b_states = save_all(&mut a);
    let row_bytes = 1024;
    for s in &mut b_states {
        s.copy_within(2 * row_bytes..3 * row_bytes, 0);
    }
    restore_all(&mut moved, &b_states);
    let x = &inputs[0];
    let want = step_rows(&mut a, x);
    let got = step_rows(&mut moved, &[x[2].clone(), x[1].clone(), x[2].clone(), x[3].clone()]);
    assert_eq!(row(&got, 4, 0), row(&want, 4, 2));
}

/// After a reset every row of a batch-4 request starts from the initial (zero) state: the next
/// step equals a fresh request's.
#[test]
fn lstm_batch_4_reset_gives_initial_state_in_every_row() {
    let m = batched(LSTM, 4);
    let mut rng = Rng::new(3);
    let mut req = m.create_request().unwrap();
    for _ in 0..5 {
        let x: Vec<Vec<u8>> = (0..4).map(|_| rng.bytes(40)).collect();
        step_rows(&mut req, &x);
    }
    req.reset_states().unwrap();
    let x: Vec<Vec<u8>> = (0..4).map(|_| rng.bytes(40)).collect();
    let mut fresh = m.create_request().unwrap();
    let want = step_rows(&mut fresh, &x);
    assert_eq!(step_rows(&mut req, &x), want);
    // And each row equals the batch-1 model's first step on that row's input.
    let one = batched(LSTM, 1);
    for (r, xr) in x.iter().enumerate() {
        let mut alone = one.create_request().unwrap();
        assert_eq!(step_rows(&mut alone, std::slice::from_ref(xr)), row(&want, 4, r), "row {r}");
    }
}

#[test]
fn summator_at_batch_2_sums_each_row() {
    assert_eq!(summator().inputs()[0].dims[0], 1, "the summator has a batch of 1");
    let m = batched(SUMMATOR, 2);
    assert_eq!(m.inputs()[0].dims, vec![2, 1]);
    assert_eq!(m.outputs()[0].dims, vec![2, 1]);
    assert_eq!(m.states()[0].dims, vec![2, 1]);
    assert_eq!(m.states()[0].byte_size, 8);
    let f = |v: [f32; 2]| v.iter().map(|x| x.to_ne_bytes().to_vec()).collect::<Vec<_>>();
    let sums =
        |b: Vec<u8>| [f32::from_ne_bytes(b[..4].try_into().unwrap()), f32::from_ne_bytes(b[4..].try_into().unwrap())];
    let mut r = m.create_request().unwrap();
    assert_eq!(sums(step_rows(&mut r, &f([1.0, 10.0]))), [1.0, 10.0]);
    assert_eq!(sums(step_rows(&mut r, &f([2.0, 20.0]))), [3.0, 30.0]);
    let saved = save_all(&mut r);
    let mut other = m.create_request().unwrap();
    restore_all(&mut other, &saved);
    assert_eq!(sums(step_rows(&mut other, &f([0.5, -30.0]))), [3.5, 0.0]);
    r.reset_states().unwrap();
    assert_eq!(sums(step_rows(&mut r, &f([4.0, 5.0]))), [4.0, 5.0]);
}

/// Writes an IR (and an empty .bin: it has no constants) into a fresh temporary directory.
fn write_ir(name: &str, xml: &str) -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("seqcore-ov-runtime-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.xml"));
    std::fs::write(&path, xml).unwrap();
    std::fs::write(dir.join(format!("{name}.bin")), b"").unwrap();
    let path = path.to_str().unwrap().to_string();
    (dir, path)
}

/// `x` f32[2,3] passed straight to the output.
const WIDE_INPUT_IR: &str = r#"<?xml version="1.0"?>
<net name="wide_input" version="11">
  <layers>
    <layer id="0" name="x" type="Parameter" version="opset1">
      <data shape="2,3" element_type="f32"/>
      <output><port id="0" precision="FP32" names="x"><dim>2</dim><dim>3</dim></port></output>
    </layer>
    <layer id="1" name="y" type="Result" version="opset1">
      <input><port id="0" precision="FP32"><dim>2</dim><dim>3</dim></port></input>
    </layer>
  </layers>
  <edges><edge from-layer="0" from-port="0" to-layer="1" to-port="0"/></edges>
</net>
"#;

/// `x` f32[1,1] added to a variable `wide` f32[3,1] (no initializer): a batch-1 input, but a
/// state of three rows.
const WIDE_STATE_IR: &str = r#"<?xml version="1.0"?>
<net name="wide_state" version="11">
  <layers>
    <layer id="0" name="x" type="Parameter" version="opset1">
      <data shape="1,1" element_type="f32"/>
      <output><port id="0" precision="FP32" names="x"><dim>1</dim><dim>1</dim></port></output>
    </layer>
    <layer id="1" name="read" type="ReadValue" version="opset6">
      <data variable_id="wide" variable_type="f32" variable_shape="3,1"/>
      <output><port id="0" precision="FP32"><dim>3</dim><dim>1</dim></port></output>
    </layer>
    <layer id="2" name="add" type="Add" version="opset1">
      <data auto_broadcast="numpy"/>
      <input>
        <port id="0" precision="FP32"><dim>3</dim><dim>1</dim></port>
        <port id="1" precision="FP32"><dim>1</dim><dim>1</dim></port>
      </input>
      <output><port id="2" precision="FP32" names="sum"><dim>3</dim><dim>1</dim></port></output>
    </layer>
    <layer id="3" name="assign" type="Assign" version="opset6">
      <data variable_id="wide"/>
      <input><port id="0" precision="FP32"><dim>3</dim><dim>1</dim></port></input>
      <output><port id="1" precision="FP32"><dim>3</dim><dim>1</dim></port></output>
    </layer>
    <layer id="4" name="sum" type="Result" version="opset1">
      <input><port id="0" precision="FP32"><dim>3</dim><dim>1</dim></port></input>
    </layer>
  </layers>
  <edges>
    <edge from-layer="0" from-port="0" to-layer="2" to-port="1"/>
    <edge from-layer="1" from-port="0" to-layer="2" to-port="0"/>
    <edge from-layer="2" from-port="2" to-layer="3" to-port="0"/>
    <edge from-layer="2" from-port="2" to-layer="4" to-port="0"/>
  </edges>
</net>
"#;

/// A model whose input, or variable, has a batch other than 1 is refused at batch > 1 with a
/// one-line message naming it and its shape; at batch 0 it compiles as it is.
#[test]
fn batching_refuses_a_dimension_0_other_than_1() {
    for (name, ir, dims, want) in [
        ("wide_input", WIDE_INPUT_IR, vec![2, 3], "model cannot be batched: input 'x' has shape [2,3]"),
        ("wide_state", WIDE_STATE_IR, vec![1, 1], "model cannot be batched: variable 'wide' has shape [3,1]"),
    ] {
        let (dir, xml) = write_ir(name, ir);
        let m = batched(&xml, 0);
        assert_eq!(m.inputs()[0].dims, dims, "{name}");
        let e = compile_batched(&xml, 4).err().unwrap_or_else(|| panic!("{name} must not batch"));
        let msg = e.to_string();
        assert!(msg.contains(want), "{msg}");
        assert!(msg.contains("; batching needs dimension 0 to be 1"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// `--compile_per numa_node`'s mechanism: a model compiled on one thread (two CPU streams) is
/// shared with another, which adopts it into its own core and runs its own requests there; each
/// thread's requests keep their own sums, and an unadopted share is freed without harm.
#[test]
fn a_compiled_model_shared_with_another_thread_serves_both() {
    let core = Core::new(runtime()).unwrap();
    let opts = CompileOptions {
        plugin_config: vec![("NUM_STREAMS".into(), "2".into()), ("INFERENCE_PRECISION_HINT".into(), "f32".into())],
        ..Default::default()
    };
    let m = core.compile(Path::new(SUMMATOR), &opts).unwrap_or_else(|e| panic!("{e}"));
    let shared = m.share().unwrap();
    drop(m.share().unwrap());
    let other = std::thread::spawn(move || {
        let core = Core::new(runtime()).unwrap();
        let m = core.adopt(shared).unwrap();
        assert_eq!(m.inputs()[0].name, "input");
        assert!(m.restores_in_place(0), "the probe's answer travels with the shared model");
        let mut r = m.create_request().unwrap();
        (0..100).map(|_| step(&mut r, 2.0)).last().unwrap()
    });
    let mut r = m.create_request().unwrap();
    let mine = (0..100).map(|_| step(&mut r, 1.0)).last().unwrap();
    assert_eq!((mine, other.join().unwrap()), (100.0, 200.0));
}
