//! What a batched step costs through the shim, piece by piece (issue 9, part 4).
//!
//! The demo LSTM compiled at batch 1 and at batch B (the shim's reshape). For each B, one
//! batched step as the server runs it: restore the B rows of every variable from a staging
//! buffer, fill the inputs, infer, save the rows back; beside it B steps at batch 1 with every
//! state resident. Back to back (warm caches) and with a 1 ms sleep before each step (the weights
//! go cold, as between paced requests on a busy host). Prints medians in µs.
//! `BATCH_PRECISION=bf16` pins the inference precision. Needs `make setup`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable)] // bench code: a broken assumption should fail loudly

use seqcore::ov::{self, CompileOptions, Core, InferRequest};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn model(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("models/generated/{name}/1/model.xml"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Parts {
    restore: Vec<f64>,
    infer: Vec<f64>,
    save: Vec<f64>,
    total: Vec<f64>,
}

fn batched_step(req: &mut InferRequest, staging: &mut [Vec<u8>], x: u8, p: &mut Parts) {
    let t0 = Instant::now();
    for (i, s) in staging.iter().enumerate() {
        req.restore_state(i, s).unwrap();
    }
    let t1 = Instant::now();
    req.input_mut(0).iter_mut().step_by(4).for_each(|b| *b = x);
    req.infer().unwrap();
    black_box(req.output(0)[0]);
    let t2 = Instant::now();
    for (i, s) in staging.iter_mut().enumerate() {
        req.save_state(i, s).unwrap();
    }
    let t3 = Instant::now();
    let us = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e6;
    p.restore.push(us(t0, t1));
    p.infer.push(us(t1, t2));
    p.save.push(us(t2, t3));
    p.total.push(us(t0, t3));
}

fn main() {
    let rt = ov::load(None).unwrap_or_else(|e| panic!("{e}"));
    let core = Core::new(rt).unwrap();
    let precision = std::env::var("BATCH_PRECISION").unwrap_or_else(|_| "f32".into());
    let opts = |batch| CompileOptions {
        plugin_config: vec![("INFERENCE_PRECISION_HINT".into(), precision.clone())],
        batch,
        ..Default::default()
    };
    let alone = core.compile(&model("lstm"), &opts(0)).unwrap_or_else(|e| panic!("{e}"));
    println!("lstm, precision asked {precision}, ran {}", alone.inference_precision());
    let rounds = 200;
    for gap in [None, Some(Duration::from_millis(1))] {
        let label = if gap.is_some() { "1 ms sleep before each" } else { "back to back" };
        for b in [1usize, 2, 4, 8] {
            let compiled = if b == 1 { alone.clone() } else { core.compile(&model("lstm"), &opts(b)).unwrap() };
            let mut req = compiled.create_request().unwrap();
            let mut staging: Vec<Vec<u8>> = compiled.states().iter().map(|s| vec![0u8; s.byte_size]).collect();
            let mut p = Parts { restore: vec![], infer: vec![], save: vec![], total: vec![] };
            for k in 0..rounds + 20 {
                if let Some(g) = gap {
                    std::thread::sleep(g);
                }
                batched_step(&mut req, &mut staging, k as u8, &mut p);
            }
            for v in [&mut p.restore, &mut p.infer, &mut p.save, &mut p.total] {
                v.drain(..20);
            }
            let total = median(&mut p.total);
            println!(
                "{label}: batch {b}: restore {:.1} infer {:.1} save {:.1} total {total:.1} µs = {:.1} µs per sequence-step",
                median(&mut p.restore),
                median(&mut p.infer),
                median(&mut p.save),
                total / b as f64
            );
        }
    }
}
