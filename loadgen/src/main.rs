//! loadgen: drives stateful sequences against seqcore (or any OVMS-compatible server) and
//! reports latency from the intended send time, throughput, errors by gRPC status and
//! verification failures. See docs/loadgen.md.

mod cli;
mod deadline;
mod grpc;
mod h2lite;
mod http1;
mod kserve;
mod metrics;
mod protocol;
mod raw;
mod report;
mod rest;
mod run;
mod stats;
mod tfs;

use clap::Parser;
use cli::{parse_cpuset, Args, Protocol};
use glommio::{LocalExecutorBuilder, Placement};
use report::Outcome;
use run::Plan;
use stats::Stats;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() {
    let args = Args::parse();
    let code = match real_main(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn real_main(args: Args) -> Result<i32, String> {
    args.validate()?;
    grpc::set_http2(args.http2);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second Ctrl-C exits at once; the first one stops the run and prints the report.
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone()).map_err(|e| e.to_string())?;
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| e.to_string())?;
    }
    let clock = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let seed = args.seed.unwrap_or(clock ^ (std::process::id() as u64) << 32);
    let namespace = match args.id_namespace {
        Some(ns) => ns,
        None => {
            // Random, non-zero, 24 bits: two processes collide with probability 2^-24.
            let mut rng = fastrand::Rng::with_seed(clock ^ std::process::id() as u64);
            rng.u32(1..1 << 24)
        }
    };
    let cpus = client_cpus(&args)?;

    if let Some(path) = &args.write_request {
        return write_request(&args, path, namespace, seed);
    }
    let mut out = Outcome::new(&args, namespace, seed, &cpus);
    if args.raw {
        out.raw = Some(run_raw(&args, &stop, namespace, seed, &cpus)?);
    } else {
        out.server = Some(run_server(&args, &stop, namespace, seed, &cpus, &mut out)?);
        if args.compare_raw && !stop.load(Relaxed) {
            eprintln!("loadgen: now the same load in-process (raw)");
            out.raw = Some(run_raw(&args, &stop, namespace, seed, &cpus)?);
        }
    }
    out.print();
    out.write_files(&args)?;
    let failed = out.errors_total() > 0 || out.verify_failures() > 0;
    Ok(if args.verify && failed { 1 } else { 0 })
}

fn client_cpus(args: &Args) -> Result<Vec<usize>, String> {
    let list = match &args.cpuset {
        Some(s) => parse_cpuset(s)?,
        None => core_affinity::get_core_ids()
            .ok_or("cannot read the CPU affinity mask; pass --cpuset")?
            .into_iter()
            .map(|c| c.id)
            .collect(),
    };
    if list.len() < args.cores {
        return Err(format!(
            "--cores {} but only {} CPU(s) available: {list:?} (see --cpuset)",
            args.cores,
            list.len()
        ));
    }
    Ok(list[..args.cores].to_vec())
}

/// One measured run: merged statistics and its actual window.
pub struct Measured {
    pub stats: Stats,
    /// CPU seconds (user + system) this process used during the run, warm-up and drain included.
    pub cpu_secs: f64,
    /// Wall seconds of the whole run (warm-up, window, drain).
    pub wall_secs: f64,
    /// --server-pid: the server's CPU seconds over the same span.
    pub server_cpu_secs: Option<f64>,
    pub window_secs: f64,
    pub interrupted: bool,
}

/// --write-request: one step's request bytes, exactly as a run would send them.
fn write_request(args: &Args, path: &std::path::Path, namespace: u32, seed: u64) -> Result<i32, String> {
    let inputs = model_inputs(args)?;
    let pool = protocol::data_pool(&inputs.inputs, seed);
    // Thread 0's first sequence: the id a run with the same --id-namespace would use.
    let plan = Plan::new(args.clone(), Arc::new(AtomicBool::new(false)), namespace, seed);
    let step = protocol::Step {
        seq_id: plan.sequence_id(0, 0),
        control: protocol::Control::None,
        variant: 0,
        verify_value: None,
        want_id: false,
    };
    use protocol::UnaryGrpc;
    let (method, framed) = match args.protocol {
        Protocol::KserveGrpc => {
            let c = kserve::KServeGrpc::new(&args.model, args.model_version, &inputs, pool, None)?;
            (kserve::KServeGrpc::METHOD, c.encode(&step))
        }
        _ => {
            let c = tfs::TfsGrpc::new(&args.model, args.model_version, &inputs, pool, None)?;
            (tfs::TfsGrpc::METHOD, c.encode(&step))
        }
    };
    std::fs::write(path, &framed).map_err(|e| format!("--write-request {}: {e}", path.display()))?;
    println!("{}", serde_json::json!({"sequence_id": step.seq_id, "method": method, "bytes": framed.len()}));
    Ok(0)
}

/// Learns the model's inputs on a throwaway executor: an unreachable server or an unknown
/// model is reported before any load starts.
fn model_inputs(args: &Args) -> Result<protocol::ModelInputs, String> {
    let a = args.clone();
    let inputs = LocalExecutorBuilder::new(Placement::Unbound)
        .name("loadgen-setup")
        .spawn(move || async move {
            let timeout = Duration::from_millis(a.timeout_ms);
            if matches!(a.protocol, Protocol::TfsRest | Protocol::KserveRest) {
                let pool = http1::Pool::new(&a.addr);
                pool.connect().await.map_err(|e| e.to_string())?;
                return rest::fetch_inputs(&pool, &a.model, a.model_version, timeout).await;
            }
            let ch = grpc::Channel::new(&a.addr);
            ch.connect().await.map_err(|e| e.to_string())?;
            match a.protocol {
                Protocol::KserveGrpc | Protocol::KserveStream => {
                    kserve::fetch_inputs(&ch, &a.model, a.model_version, timeout).await
                }
                _ => tfs::fetch_inputs(&ch, &a.model, a.model_version, timeout).await,
            }
        })
        .map_err(|e| format!("cannot start the setup executor: {e}"))?
        .join()
        .map_err(|e| format!("setup executor failed: {e}"))??;
    Ok(inputs)
}

fn run_server(
    args: &Args,
    stop: &Arc<AtomicBool>,
    namespace: u32,
    seed: u64,
    cpus: &[usize],
    out: &mut Outcome,
) -> Result<Measured, String> {
    let inputs = model_inputs(args)?;
    let pool = protocol::data_pool(&inputs.inputs, seed);
    let verify = args.verify.then_some((args.verify_input.as_str(), args.verify_output.as_str()));
    out.inputs = inputs.inputs.iter().map(|d| format!("{}: {}{:?}", d.name, d.elem, d.dims)).collect();
    match args.protocol {
        Protocol::KserveGrpc => {
            let proto = Arc::new(protocol::Unary(kserve::KServeGrpc::new(
                &args.model,
                args.model_version,
                &inputs,
                pool,
                verify,
            )?));
            run_load(args, stop, namespace, seed, cpus, out, proto)
        }
        Protocol::KserveStream => {
            let proto = Arc::new(kserve::KServeStream(kserve::KServeGrpc::new(
                &args.model,
                args.model_version,
                &inputs,
                pool,
                verify,
            )?));
            run_load(args, stop, namespace, seed, cpus, out, proto)
        }
        Protocol::TfsRest => {
            let proto = Arc::new(rest::TfsRest::new(&args.model, args.model_version, &inputs, pool, verify)?);
            run_load(args, stop, namespace, seed, cpus, out, proto)
        }
        Protocol::KserveRest => {
            let proto = Arc::new(rest::KServeRest::new(&args.model, args.model_version, &inputs, pool, verify)?);
            run_load(args, stop, namespace, seed, cpus, out, proto)
        }
        Protocol::TfsGrpc => {
            let proto =
                Arc::new(protocol::Unary(tfs::TfsGrpc::new(&args.model, args.model_version, &inputs, pool, verify)?));
            run_load(args, stop, namespace, seed, cpus, out, proto)
        }
    }
}

fn run_load<P: protocol::Protocol + Send + Sync>(
    args: &Args,
    stop: &Arc<AtomicBool>,
    namespace: u32,
    seed: u64,
    cpus: &[usize],
    out: &mut Outcome,
    proto: Arc<P>,
) -> Result<Measured, String> {
    let before = args.metrics_url.as_deref().and_then(|u| match metrics::scrape(u) {
        Ok(m) => Some(m),
        Err(e) => {
            let note = format!("metrics: {e}; skipping the scrape (is the REST/metrics endpoint up?)");
            eprintln!("loadgen: {note}");
            out.metrics_note = Some(note);
            None
        }
    });

    let server_cpu0 = args.server_pid.and_then(process_cpu_secs);
    if args.server_pid.is_some() && server_cpu0.is_none() {
        eprintln!("loadgen: cannot read /proc/{}/stat; no server CPU figure", args.server_pid.unwrap_or(0));
    }
    let cpu0 = cpu_secs();
    let plan = Arc::new(Plan::new(args.clone(), stop.clone(), namespace, seed));
    let mut handles = Vec::new();
    for (i, &cpu) in cpus.iter().enumerate() {
        let (plan, proto) = (plan.clone(), proto.clone());
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu)).name(&format!("loadgen-{i}"));
        if args.spin_us > 0 {
            builder = builder.spin_before_park(Duration::from_micros(args.spin_us));
        }
        let h = builder
            .spawn(move || async move { run::run_thread(plan, proto, i).await })
            .map_err(|e| format!("cannot start a client executor on CPU {cpu}: {e}"))?;
        handles.push(h);
    }
    let stopped_at = report::progress_loop(&plan, cpus.len(), "server", args.quiet);
    let mut stats = Stats::default();
    for h in handles {
        let s = h.join().map_err(|e| format!("client thread failed: {e}"))?;
        stats.merge(&s);
    }
    if let (Some(before), Some(url)) = (before, args.metrics_url.as_deref()) {
        match metrics::scrape(url) {
            Ok(after) => out.metrics_delta = Some(metrics::delta(&before, &after)),
            Err(e) => {
                let note = format!("metrics: {e}; no 'after' scrape");
                eprintln!("loadgen: {note}");
                out.metrics_note = Some(note);
            }
        }
    }
    let mut m = measured(&plan, stats, stopped_at, cpu0);
    if let (Some(pid), Some(c0)) = (args.server_pid, server_cpu0) {
        m.server_cpu_secs = process_cpu_secs(pid).map(|c1| c1 - c0);
    }
    Ok(m)
}

/// User + system CPU seconds of process `pid` (from /proc/PID/stat), if readable.
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / if hz > 0 { hz as f64 } else { 100.0 })
}

/// User + system CPU seconds of this process so far.
pub fn cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn measured(plan: &Plan, stats: Stats, stopped_at: Option<Instant>, cpu0: f64) -> Measured {
    let end = stopped_at.map_or(plan.measure_end, |s| s.min(plan.measure_end));
    Measured {
        stats,
        cpu_secs: cpu_secs() - cpu0,
        wall_secs: plan.t0.elapsed().as_secs_f64(),
        server_cpu_secs: None,
        window_secs: end.saturating_duration_since(plan.measure_start).as_secs_f64(),
        interrupted: stopped_at.is_some_and(|s| s < plan.measure_end),
    }
}

fn run_raw(args: &Args, stop: &Arc<AtomicBool>, namespace: u32, seed: u64, cpus: &[usize]) -> Result<Measured, String> {
    let xml = raw::model_xml(args);
    if !xml.is_file() {
        return Err(format!("raw mode: no model at {} (see --models-dir / --model-xml)", xml.display()));
    }
    // Load once on this thread so a missing runtime is one clear line.
    seqcore::ov::load(args.ov_runtime.as_deref()).map_err(|e| e.to_string())?;
    // Threads compile first; the clock (warm-up, window) starts when all are ready.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut plan_txs = Vec::new();
    let mut handles = Vec::new();
    for (i, &cpu) in cpus.iter().enumerate() {
        let (a, xml, ready) = (args.clone(), xml.clone(), ready_tx.clone());
        let (plan_tx, plan_rx) = std::sync::mpsc::channel::<Arc<Plan>>();
        plan_txs.push(plan_tx);
        let h = std::thread::Builder::new()
            .name(format!("loadgen-raw-{i}"))
            .spawn(move || -> Result<Stats, String> {
                let prepared = match raw::prepare(&a, i, cpu, &xml) {
                    Ok(p) => {
                        let _ = ready.send(Ok(()));
                        p
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let Ok(plan) = plan_rx.recv() else {
                    return Ok(Stats::default());
                };
                let r = raw::run_thread(plan.clone(), prepared);
                if r.is_err() {
                    plan.progress.threads_done.fetch_add(1, Relaxed);
                }
                r
            })
            .map_err(|e| e.to_string())?;
        handles.push(h);
    }
    drop(ready_tx);
    for _ in 0..cpus.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("raw mode: {e}")),
            Err(_) => return Err("raw mode: a thread died while compiling".into()),
        }
    }
    let cpu0 = cpu_secs();
    let plan = Arc::new(Plan::new(args.clone(), stop.clone(), namespace, seed));
    for tx in plan_txs {
        let _ = tx.send(plan.clone());
    }
    let stopped_at = report::progress_loop(&plan, cpus.len(), "raw", args.quiet);
    let mut stats = Stats::default();
    for h in handles {
        let s = h.join().map_err(|_| "raw thread panicked".to_string())??;
        stats.merge(&s);
    }
    Ok(measured(&plan, stats, stopped_at, cpu0))
}
