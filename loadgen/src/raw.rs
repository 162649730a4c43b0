//! `--raw`: the same sequences run in-process through OpenVINO, one pinned thread per client
//! CPU, with the server's worst-case step pattern (restore the sequence's state, write the
//! inputs, infer, save the state) and no network: the physical limit the server is compared to.
//!
//! With `--raw-resident` each sequence has its own infer request and its state stays in it (no
//! restore, no save): the step time alone, from which the real-time capacity limit is taken
//! (F / step time for streams stepping every F ms).
//!
//! Closed loop: each thread interleaves its share of `--sequences` round-robin on one infer
//! request; a step's latency counts from when the same sequence's previous step finished (as in
//! the server's closed loop), so with S sequences it includes the S-1 other steps in between.

use crate::protocol::{data_pool, verify_value, InputDesc, DATA_VARIANTS};
use crate::run::{share, Plan};
use crate::stats::{p99_of, record, Stats};
use seqcore::ov;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// The IR file raw mode compiles.
pub fn model_xml(args: &crate::cli::Args) -> PathBuf {
    args.model_xml.clone().unwrap_or_else(|| args.models_dir.join(&args.model).join("1").join("model.xml"))
}

struct Seq {
    /// All states of the sequence, concatenated in `states()` order.
    state: Vec<u8>,
    step: u64,
    len: u64,
    n: u64,
    expected: f64,
    start: Instant,
    last: Instant,
    measured: bool,
    lat: Vec<u64>,
}

/// A raw thread's compiled model and request, made before the clock starts.
pub struct Prepared {
    _core: ov::Core,
    model: ov::CompiledModel,
    req: ov::InferRequest,
    index: usize,
}

/// Pins the calling thread on `cpu`, loads OpenVINO and compiles the model.
pub fn prepare(a: &crate::cli::Args, index: usize, cpu: usize, xml: &Path) -> Result<Prepared, String> {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        return Err(format!("raw thread {index}: cannot pin to CPU {cpu}"));
    }
    let rt = ov::load(a.ov_runtime.as_deref()).map_err(|e| e.to_string())?;
    let core = ov::Core::new(rt).map_err(|e| e.to_string())?;
    let plugin_config = match &a.raw_precision {
        Some(p) => vec![("INFERENCE_PRECISION_HINT".to_string(), p.clone())],
        None => Vec::new(),
    };
    let opts = ov::CompileOptions { low_latency: a.low_latency, plugin_config, ..Default::default() };
    let model = core.compile(xml, &opts).map_err(|e| e.to_string())?;
    let req = model.create_request().map_err(|e| e.to_string())?;
    eprintln!("loadgen: raw thread {index} on CPU {cpu}: inference precision {}", model.inference_precision());
    Ok(Prepared { _core: core, model, req, index })
}

/// Runs a prepared raw thread under `plan`.
pub fn run_thread(plan: Arc<Plan>, prepared: Prepared) -> Result<Stats, String> {
    let a = &plan.args;
    let Prepared { _core, model, mut req, index } = prepared;
    let inputs: Vec<InputDesc> = model
        .inputs()
        .iter()
        .map(|p| InputDesc {
            name: p.name.clone(),
            elem: p.elem.name(),
            elem_bytes: p.elem.byte_width(),
            dims: p.dims.clone(),
        })
        .collect();
    let pool = data_pool(&inputs, plan.seed);
    let verify = if a.verify {
        let i = model
            .input_index(&a.verify_input)
            .ok_or_else(|| format!("--verify: model has no input {:?}", a.verify_input))?;
        let o = model
            .output_index(&a.verify_output)
            .ok_or_else(|| format!("--verify: model has no output {:?}", a.verify_output))?;
        if inputs[i].elem != "f32" || model.outputs()[o].elem != ov::ElemType::F32 {
            return Err("--verify needs an f32 input and output".into());
        }
        Some((i, o))
    } else {
        None
    };
    let states: Vec<(usize, usize)> = {
        let mut off = 0;
        model
            .states()
            .iter()
            .map(|s| {
                let r = (off, s.byte_size);
                off += s.byte_size;
                r
            })
            .collect()
    };
    let state_bytes: usize = states.iter().map(|s| s.1).sum();
    // The initial state (what START resets to), captured once.
    req.reset_states().map_err(|e| e.to_string())?;
    let mut template = vec![0u8; state_bytes];
    for (i, &(off, len)) in states.iter().enumerate() {
        req.save_state(i, &mut template[off..off + len]).map_err(|e| e.to_string())?;
    }

    let mut stats = Stats::default();
    let count = share(a.sequences, a.cores, index);
    let mut counter = 0u64;
    let mut rng = fastrand::Rng::with_seed(plan.seed ^ index as u64);
    let mut new_seq = |now: Instant, rng: &mut fastrand::Rng| {
        counter += 1;
        let len = plan.sample_length(rng);
        let measured = now >= plan.measure_start && now < plan.measure_end;
        Seq {
            state: template.clone(),
            step: 0,
            len,
            n: counter - 1,
            expected: 0.0,
            start: now,
            last: now,
            measured,
            lat: Vec::new(),
        }
    };
    let resident = a.raw_resident;
    let mut own: Vec<ov::InferRequest> = Vec::new();
    if resident {
        for _ in 0..count {
            let mut r = model.create_request().map_err(|e| e.to_string())?;
            r.reset_states().map_err(|e| e.to_string())?;
            own.push(r);
        }
    }
    let now = Instant::now();
    let mut seqs: Vec<Seq> = (0..count).map(|_| new_seq(now, &mut rng)).collect();
    let progress = &plan.progress;
    progress.live.fetch_add(count as i64, Relaxed);
    let mut i = 0;
    'run: while !seqs.is_empty() {
        if i >= seqs.len() {
            i = 0;
        }
        let s = &mut seqs[i];
        let intended = s.last;
        let req = if resident { &mut own[i] } else { &mut req };
        for (k, &(off, len)) in states.iter().enumerate().filter(|_| !resident) {
            if let Err(e) = req.restore_state(k, &s.state[off..off + len]) {
                stats.error("OPENVINO".into(), || e.to_string());
                break 'run;
            }
        }
        let value = verify.map(|_| verify_value(s.n, s.step));
        for (k, d) in pool.iter().enumerate() {
            let dst = req.input_mut(k);
            match (verify, value) {
                (Some((vi, _)), Some(v)) if vi == k => {
                    for c in dst.chunks_exact_mut(4) {
                        c.copy_from_slice(&v.to_le_bytes());
                    }
                }
                _ => dst.copy_from_slice(&d[(s.n as usize * 7 + s.step as usize) % DATA_VARIANTS]),
            }
        }
        if let Err(e) = req.infer() {
            stats.error("OPENVINO".into(), || e.to_string());
            progress.errors.fetch_add(1, Relaxed);
            break;
        }
        for (k, &(off, len)) in states.iter().enumerate().filter(|_| !resident) {
            if let Err(e) = req.save_state(k, &mut s.state[off..off + len]) {
                stats.error("OPENVINO".into(), || e.to_string());
                break 'run;
            }
        }
        let done = Instant::now();
        if let (Some((_, o)), Some(v)) = (verify, value) {
            s.expected += v as f64;
            let got = f32::from_le_bytes(req.output(o)[..4].try_into().unwrap()) as f64;
            if (got - s.expected).abs() > 1e-3 * s.expected.abs().max(1.0) {
                progress.verify_failures.fetch_add(1, Relaxed);
                let (n, step, exp) = (s.n, s.step, s.expected);
                stats.verify_failure(|| format!("raw sequence {n} step {step}: expected {exp}, got {got}"));
            }
        }
        let lat = done.saturating_duration_since(intended).as_nanos() as u64;
        stats.requests_total += 1;
        progress.requests.fetch_add(1, Relaxed);
        if intended >= plan.measure_start && intended < plan.measure_end {
            stats.requests += 1;
            record(&mut stats.latency, lat);
        }
        if s.measured && s.lat.len() < crate::stats::SEQ_STEPS_KEPT {
            s.lat.push(lat);
        }
        s.last = done;
        s.step += 1;
        let stopping = plan.stopping(done);
        if s.step == s.len || stopping {
            if s.step == s.len {
                stats.sequences_completed_total += 1;
                if s.measured && done <= plan.measure_end {
                    stats.sequences += 1;
                    record(&mut stats.seq_duration, done.saturating_duration_since(s.start).as_nanos() as u64);
                    record(&mut stats.seq_p99, p99_of(&mut s.lat));
                }
            }
            if stopping {
                seqs.swap_remove(i);
                if resident {
                    own.swap_remove(i);
                }
                progress.live.fetch_sub(1, Relaxed);
                continue;
            }
            if resident {
                if let Err(e) = req.reset_states() {
                    stats.error("OPENVINO".into(), || e.to_string());
                    break 'run;
                }
            }
            seqs[i] = new_seq(done, &mut rng);
        }
        i += 1;
    }
    progress.live.fetch_sub(seqs.len() as i64, Relaxed);
    stats.sequences_started_total = counter;
    progress.threads_done.fetch_add(1, Relaxed);
    Ok(stats)
}
