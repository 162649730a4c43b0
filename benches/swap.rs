//! What a state swap costs, through the real OpenVINO runtime (issue 9, part 2).
//!
//! The demo LSTM (4 variables of 1×256 floats) is stepped for S sequences in a round robin:
//! - `resident`: S infer requests, one per sequence (no copies);
//! - `swapped`: R < S infer requests, each step restores its sequence's state into the least
//!   recently used request after saving the state that request held (the server's eviction);
//! - the pieces alone: restore and save of one variable (restore in place where the shim's
//!   probe allows it, and by `set_state` on a fresh request), and `memcpy` of the same bytes.
//!
//! Prints medians (ns) over rounds; `SWAP_PRECISION=bf16` pins the inference precision.
//! Needs `make setup` (runtime and models).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable)] // bench code: a broken assumption should fail loudly

use seqcore::ov::{self, CompileOptions, Core, InferRequest};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

fn model(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("models/generated/{name}/1/model.xml"))
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn step(req: &mut InferRequest, x: u8) {
    req.input_mut(0)[0] = x;
    req.infer().unwrap();
    black_box(req.output(0)[0]);
}

fn main() {
    let rt = ov::load(None).unwrap_or_else(|e| panic!("{e}"));
    let core = Core::new(rt).unwrap();
    let precision = std::env::var("SWAP_PRECISION").unwrap_or_else(|_| "f32".into());
    let opts = CompileOptions {
        low_latency: false,
        plugin_config: vec![("INFERENCE_PRECISION_HINT".into(), precision.clone())],
        ..Default::default()
    };
    let compiled = core.compile(&model("lstm"), &opts).unwrap_or_else(|e| panic!("{e}"));
    let sizes: Vec<usize> = compiled.states().iter().map(|s| s.byte_size).collect();
    let per_seq: usize = sizes.iter().sum();
    let in_place = (0..sizes.len()).filter(|&i| compiled.restores_in_place(i)).count();
    println!(
        "lstm: {} states, {per_seq} bytes per sequence, precision asked {precision}, ran {}; restore in place: \
         {in_place} of {} variables (the rest by set_state)",
        sizes.len(),
        compiled.inference_precision(),
        sizes.len()
    );
    let sequences = 32usize;
    let few = 4usize;
    let rounds = 40usize;

    // Resident: one request per sequence.
    let mut reqs: Vec<InferRequest> = (0..sequences).map(|_| compiled.create_request().unwrap()).collect();
    for r in reqs.iter_mut() {
        step(r, 1);
    }
    let mut resident = Vec::new();
    for k in 0..rounds {
        for (i, r) in reqs.iter_mut().enumerate() {
            let t = Instant::now();
            step(r, (k + i) as u8);
            resident.push(t.elapsed().as_nanos() as u64);
        }
    }

    // Resident steps with a gap between them, as when paced requests arrive one at a time: the
    // core sleeping (the thread parks), spinning, or running 256 KiB of other memory traffic
    // (a stand-in for the network path) between steps.
    let mut junk = vec![0u8; 256 << 10];
    let mut gapped = |gap: &str, reqs: &mut [InferRequest]| {
        let mut v = Vec::new();
        for k in 0..rounds / 2 {
            for (i, r) in reqs.iter_mut().enumerate() {
                let t = Instant::now();
                step(r, (k + i) as u8);
                v.push(t.elapsed().as_nanos() as u64);
                match gap {
                    "sleep" => std::thread::sleep(std::time::Duration::from_micros(200)),
                    "spin" => {
                        let until = Instant::now() + std::time::Duration::from_micros(200);
                        while Instant::now() < until {
                            std::hint::spin_loop();
                        }
                    }
                    _ => {
                        for b in junk.iter_mut().step_by(64) {
                            *b = b.wrapping_add(1);
                        }
                        black_box(&junk);
                    }
                }
            }
        }
        median(&mut v)
    };
    let (slept, spun, polluted) = (gapped("sleep", &mut reqs), gapped("spin", &mut reqs), gapped("touch", &mut reqs));
    println!("resident step after a 200 us sleep: {slept} ns, after 200 us spinning: {spun} ns, after touching 256 KiB: {polluted} ns");

    // Swapped: `few` requests for `sequences` sequences, LRU = round robin.
    let mut saved: Vec<Vec<u8>> = (0..sequences).map(|_| vec![0u8; per_seq]).collect();
    let mut pool: Vec<(InferRequest, Option<usize>)> =
        (0..few).map(|_| (compiled.create_request().unwrap(), None)).collect();
    let mut swapped = Vec::new();
    let (mut save_ns, mut restore_ns, mut infer_ns) = (Vec::new(), Vec::new(), Vec::new());
    let mut next = 0usize;
    for k in 0..rounds {
        for s in 0..sequences {
            let t = Instant::now();
            let (req, holder) = &mut pool[next];
            next = (next + 1) % few;
            let t1 = Instant::now();
            if let Some(prev) = holder.take() {
                let mut at = 0;
                for (i, n) in sizes.iter().enumerate() {
                    req.save_state(i, &mut saved[prev][at..at + n]).unwrap();
                    at += n;
                }
            }
            let t2 = Instant::now();
            let mut at = 0;
            for (i, n) in sizes.iter().enumerate() {
                req.restore_state(i, &saved[s][at..at + n]).unwrap();
                at += n;
            }
            *holder = Some(s);
            let t3 = Instant::now();
            step(req, (k + s) as u8);
            let t4 = Instant::now();
            swapped.push((t4 - t).as_nanos() as u64);
            save_ns.push((t2 - t1).as_nanos() as u64);
            restore_ns.push((t3 - t2).as_nanos() as u64);
            infer_ns.push((t4 - t3).as_nanos() as u64);
        }
    }

    // Memory and creation time of infer requests: RSS over 512 more, each used once.
    let rss = || {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
    };
    let before = rss();
    let t = Instant::now();
    let mut more: Vec<InferRequest> = (0..512).map(|_| compiled.create_request().unwrap()).collect();
    let create_ns = t.elapsed().as_nanos() as u64 / 512;
    for r in more.iter_mut() {
        step(r, 1);
    }
    let per_request = (rss() - before) / 512;
    println!(
        "infer request: created in {create_ns} ns, {per_request} bytes resident each after one step (estimate {})",
        compiled.request_bytes()
    );
    drop(more);
    // The same for the summator (one 4-byte variable): the fixed part of a request's memory.
    let tiny = core.compile(&model("summator"), &opts).unwrap_or_else(|e| panic!("{e}"));
    let before = rss();
    let mut more: Vec<InferRequest> = (0..2048).map(|_| tiny.create_request().unwrap()).collect();
    for r in more.iter_mut() {
        step(r, 1);
    }
    let per_request = (rss() - before) / 2048;
    println!(
        "summator infer request: {per_request} bytes resident each after one step (estimate {})",
        tiny.request_bytes()
    );
    drop(more);

    // The pieces, hot: one request, one variable, the same buffer.
    let mut req = compiled.create_request().unwrap();
    step(&mut req, 1);
    let mut buf = vec![0u8; sizes[0]];
    let mut dst = vec![0u8; sizes[0]];
    let (mut one_save, mut one_restore, mut copy) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2000 {
        let t = Instant::now();
        req.save_state(0, &mut buf).unwrap();
        one_save.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        req.restore_state(0, &buf).unwrap();
        one_restore.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        dst.copy_from_slice(black_box(&buf));
        black_box(&dst);
        copy.push(t.elapsed().as_nanos() as u64);
    }
    // The same restore where it cannot be in place: on a request no inference has committed
    // since it was made, the shim restores by set_state (what every restore cost before the
    // in-place path, and what it still costs for a variable the probe did not prove).
    let mut by_set_state = Vec::new();
    for _ in 0..200 {
        let mut fresh = compiled.create_request().unwrap();
        let t = Instant::now();
        fresh.restore_state(0, &buf).unwrap();
        by_set_state.push(t.elapsed().as_nanos() as u64);
    }
    println!("resident step (S={sequences} requests): {} ns", median(&mut resident));
    println!(
        "swapped step (S={sequences} on {few} requests): {} ns = save {} + restore {} + infer {}",
        median(&mut swapped),
        median(&mut save_ns),
        median(&mut restore_ns),
        median(&mut infer_ns)
    );
    println!(
        "one variable ({} bytes), hot: save {} ns, restore {} ns ({}), by set_state {} ns, memcpy {} ns",
        sizes[0],
        median(&mut one_save),
        median(&mut one_restore),
        if compiled.restores_in_place(0) { "in place" } else { "set_state" },
        median(&mut by_set_state),
        median(&mut copy)
    );
}
