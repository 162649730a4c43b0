//! State handling per step through the real OpenVINO runtime: a step whose sequence is still
//! resident in the infer request (seqcore's fast path: no copies) beside OVMS's way (restore the
//! state before and save it after every step). Needs `make setup` (runtime and models).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable)] // test code: a broken assumption should fail loudly

use criterion::{criterion_group, criterion_main, Criterion};
use seqcore::ov::{self, CompileOptions, Core};
use std::hint::black_box;
use std::path::PathBuf;

fn model(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("models/generated/{name}/1/model.xml"))
}

fn state(c: &mut Criterion) {
    let rt = ov::load(None).unwrap_or_else(|e| panic!("{e}"));
    let core = Core::new(rt).unwrap();
    for name in ["summator", "lstm"] {
        let compiled = core.compile(&model(name), &CompileOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let mut req = compiled.create_request().unwrap();
        let sizes: Vec<usize> = compiled.states().iter().map(|s| s.byte_size).collect();
        let mut saved: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0u8; n]).collect();
        let mut g = c.benchmark_group(format!("step_{name}"));
        g.bench_function("resident_infer_only", |b| {
            b.iter(|| {
                req.input_mut(0)[0] = 1;
                req.infer().unwrap();
                black_box(req.output(0)[0]);
            })
        });
        g.bench_function("naive_restore_infer_save", |b| {
            b.iter(|| {
                for (i, s) in saved.iter().enumerate() {
                    req.restore_state(i, s).unwrap();
                }
                req.input_mut(0)[0] = 1;
                req.infer().unwrap();
                black_box(req.output(0)[0]);
                for (i, s) in saved.iter_mut().enumerate() {
                    req.save_state(i, s).unwrap();
                }
            })
        });
        g.finish();
    }
}

criterion_group!(benches, state);
criterion_main!(benches);
