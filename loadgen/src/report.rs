//! The live progress line, the final table, and the JSON / CSV files.

use crate::cli::Args;
use crate::run::Plan;
use crate::stats::{round3, summary, Stats};
use crate::Measured;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// perf_analyzer's CSV header (the columns we fill are listed in docs/loadgen.md).
pub const CSV_HEADER: &str = "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency";

/// Shows progress until every client thread is done; returns when Ctrl-C was seen, if it was.
pub fn progress_loop(plan: &Plan, threads: usize, what: &str, quiet: bool) -> Option<Instant> {
    let total = plan.measure_end.duration_since(plan.t0);
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(total.as_millis() as u64), ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:>9} [{bar:25}] {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let p = &plan.progress;
    let mut stopped_at = None;
    let mut last = (Instant::now(), 0u64);
    let mut rate = 0.0;
    while p.threads_done.load(Relaxed) < threads as u64 {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if stopped_at.is_none() && plan.stop.load(Relaxed) {
            stopped_at = Some(now);
        }
        let reqs = p.requests.load(Relaxed);
        let dt = now.duration_since(last.0).as_secs_f64();
        if dt >= 0.5 {
            rate = (reqs - last.1) as f64 / dt;
            last = (now, reqs);
        }
        let phase = if now < plan.measure_start {
            "warm-up"
        } else if plan.stopping(now) {
            "draining"
        } else {
            "measuring"
        };
        bar.set_prefix(format!("{what} {phase}"));
        bar.set_position(now.duration_since(plan.t0).min(total).as_millis() as u64);
        bar.set_message(format!(
            "{rate:>9.0} req/s  live {:>5}  errors {}  verify failures {}",
            p.live.load(Relaxed),
            p.errors.load(Relaxed),
            p.verify_failures.load(Relaxed)
        ));
    }
    bar.finish_and_clear();
    if stopped_at.is_none() && plan.stop.load(Relaxed) {
        stopped_at = Some(Instant::now());
    }
    stopped_at
}

/// Everything the run produced, for the table and the files.
pub struct Outcome {
    config: Value,
    host_before: Value,
    pub inputs: Vec<String>,
    pub server: Option<Measured>,
    pub raw: Option<Measured>,
    pub metrics_delta: Option<BTreeMap<String, f64>>,
    pub metrics_note: Option<String>,
    concurrency: usize,
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn measured_json(m: &Measured) -> Value {
    let s = &m.stats;
    json!({
        "window_secs": round3(m.window_secs),
        "interrupted": m.interrupted,
        "requests": s.requests,
        "requests_per_sec": round3(rate(s.requests, m.window_secs)),
        "sequences": s.sequences,
        "sequences_per_sec": round3(rate(s.sequences, m.window_secs)),
        "latency_us": summary(&s.latency, 1e3),
        "send_lag_us": summary(&s.send_lag, 1e3),
        "sequence_duration_ms": summary(&s.seq_duration, 1e6),
        "sequence_p99_us": summary(&s.seq_p99, 1e3),
        "client_turnaround_us": summary(&s.client_turnaround, 1e3),
        "requests_total": s.requests_total,
        "sequences_started_total": s.sequences_started_total,
        "sequences_completed_total": s.sequences_completed_total,
        "errors": {
            "total": s.errors_total(),
            "by_status": s.errors,
            "samples": s.error_samples,
        },
        "verify_failures": s.verify_failures,
        "verify_samples": s.verify_samples,
        "dropped_arrivals": s.dropped_arrivals,
        "injected": { "cancelled": s.cancelled, "disconnects": s.disconnects },
        "client_cpu_secs": round3(m.cpu_secs),
        "client_cpu_util": round3(if m.wall_secs > 0.0 { m.cpu_secs / m.wall_secs } else { 0.0 }),
        "server_cpu_secs": m.server_cpu_secs.map(round3),
        "server_cpu_util": m.server_cpu_secs.map(|c| round3(c / m.wall_secs.max(1e-9))),
        "server_cpu_us_per_request": m.server_cpu_secs.map(|c| round3(c * 1e6 / (s.requests_total.max(1)) as f64)),
    })
}

impl Outcome {
    pub fn new(a: &Args, namespace: u32, seed: u64, cpus: &[usize]) -> Outcome {
        let config = json!({
            "addr": a.addr,
            "protocol": a.protocol.name(),
            "model": a.model,
            "model_version": a.model_version,
            "cores": a.cores,
            "cpus": cpus,
            "connections_per_core": a.connections_per_core,
            "loop": if a.open_loop() { "open" } else { "closed" },
            "sequences": a.sequences,
            "sequence_length": a.sequence_length,
            "length_variation": a.length_variation,
            "rate": a.rate,
            "step_interval_ms": a.step_interval_ms,
            "step_jitter_ms": a.step_jitter_ms,
            "raw_resident": a.raw_resident,
            "raw_precision": a.raw_precision,
            "max_live": a.max_live,
            "server_ids": a.server_ids,
            "id_namespace": namespace,
            "warmup_secs": a.warmup_secs,
            "duration_secs": a.duration_secs,
            "timeout_ms": a.timeout_ms,
            "verify": a.verify,
            "seed": seed,
        });
        Outcome {
            config,
            host_before: host(),
            inputs: Vec::new(),
            server: None,
            raw: None,
            metrics_delta: None,
            metrics_note: None,
            concurrency: if a.open_loop() { 0 } else { a.sequences },
        }
    }

    fn runs(&self) -> impl Iterator<Item = (&'static str, &Measured)> {
        self.server.iter().map(|m| ("server", m)).chain(self.raw.iter().map(|m| ("raw", m)))
    }

    pub fn errors_total(&self) -> u64 {
        self.runs().map(|(_, m)| m.stats.errors_total()).sum()
    }

    pub fn verify_failures(&self) -> u64 {
        self.runs().map(|(_, m)| m.stats.verify_failures).sum()
    }

    /// Paced closed loop: the steps per second the streams ask for (streams ÷ interval).
    fn demanded_per_sec(&self) -> Option<f64> {
        let iv = self.config["step_interval_ms"].as_f64()?;
        (iv > 0.0 && self.config["loop"] == "closed")
            .then(|| self.config["sequences"].as_f64().unwrap_or(0.0) * 1000.0 / iv)
    }

    /// server ÷ raw, when both ran.
    fn ratio(&self) -> Option<Value> {
        let (s, r) = (self.server.as_ref()?, self.raw.as_ref()?);
        let sr = rate(s.stats.requests, s.window_secs);
        let rr = rate(r.stats.requests, r.window_secs);
        let q = |h: &hdrhistogram::Histogram<u64>, p: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(p) as f64
            }
        };
        let div = |a: f64, b: f64| if b > 0.0 { round3(a / b) } else { 0.0 };
        Some(json!({
            "throughput": div(sr, rr),
            "p50_latency": div(q(&s.stats.latency, 0.5), q(&r.stats.latency, 0.5)),
            "p99_latency": div(q(&s.stats.latency, 0.99), q(&r.stats.latency, 0.99)),
        }))
    }

    pub fn to_json(&self) -> Value {
        let mut host = self.host_before.clone();
        host["loadavg_before"] = host["loadavg"].take();
        host["loadavg_after"] = self::host()["loadavg"].take();
        if let Value::Object(m) = &mut host {
            m.remove("loadavg");
        }
        let mut v = json!({
            "loadgen": env!("CARGO_PKG_VERSION"),
            "host": host,
            "config": self.config,
            "inputs": self.inputs,
        });
        // The headline fields at the top level: the server run, else the raw run.
        if let Some((_, m)) = self.runs().next() {
            if let (Value::Object(dst), Value::Object(src)) = (&mut v, measured_json(m)) {
                dst.extend(src);
            }
        }
        v["mode"] = json!(if self.server.is_some() { "server" } else { "raw" });
        if let Some(d) = self.demanded_per_sec() {
            v["demanded_requests_per_sec"] = json!(round3(d));
            if let Some(m) = &self.server {
                v["served_fraction"] = json!(round3(rate(m.stats.requests, m.window_secs) / d));
            }
        }
        if let Some(m) = &self.raw {
            v["raw"] = measured_json(m);
        }
        if let Some(r) = self.ratio() {
            v["server_over_raw"] = r;
        }
        if let Some(d) = &self.metrics_delta {
            v["server_metrics_delta"] = json!(d);
        }
        if let Some(n) = &self.metrics_note {
            v["metrics_note"] = json!(n);
        }
        v
    }

    pub fn print(&self) {
        let c = &self.config;
        let target = if self.server.is_some() {
            format!("{} {}", c["protocol"].as_str().unwrap_or_default(), c["addr"].as_str().unwrap_or_default())
        } else {
            "raw (in-process OpenVINO)".to_string()
        };
        println!(
            "loadgen: {} model {} | {} loop, {} | {} thread(s) on CPUs {} x {} connection(s)",
            target,
            c["model"].as_str().unwrap_or_default(),
            c["loop"].as_str().unwrap_or_default(),
            if c["loop"] == "open" {
                format!("{} sequences/s arriving", c["rate"])
            } else {
                format!("{} live sequence(s)", c["sequences"])
            },
            c["cores"],
            c["cpus"],
            c["connections_per_core"],
        );
        println!(
            "  sequences of {} steps (±{}), step interval {} ms{}",
            c["sequence_length"],
            c["length_variation"],
            c["step_interval_ms"],
            if c["verify"] == true { ", verified" } else { "" }
        );
        for (name, m) in self.runs() {
            print_measured(name, m);
        }
        if let (Some(d), Some(m)) = (self.demanded_per_sec(), &self.server) {
            let served = rate(m.stats.requests, m.window_secs);
            println!("paced: demanded {d:.1} steps/s, served {served:.1}/s ({:.1} %)", 100.0 * served / d);
        }
        if let Some(r) = self.ratio() {
            println!(
                "server ÷ raw: throughput {:.3}, p50 latency {:.2}x, p99 latency {:.2}x",
                r["throughput"].as_f64().unwrap_or(0.0),
                r["p50_latency"].as_f64().unwrap_or(0.0),
                r["p99_latency"].as_f64().unwrap_or(0.0)
            );
        }
        if let Some(d) = &self.metrics_delta {
            println!("server metrics that changed ({} series; histogram buckets only in --json):", d.len());
            for (k, v) in d.iter().filter(|(k, _)| !k.contains("_bucket{")).take(40) {
                println!("  {k} +{v}");
            }
        }
    }

    pub fn csv(&self) -> String {
        let mut out = String::from(CSV_HEADER);
        out.push('\n');
        for (_, m) in self.runs() {
            let h = &m.stats.latency;
            let q = |p: f64| {
                if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(p) / 1000
                }
            };
            let mean = if h.is_empty() { 0 } else { (h.mean() / 1000.0).round() as u64 };
            out.push_str(&format!(
                "{},{:.2},0,{},0,0,0,0,0,{},{},{},{}\n",
                self.concurrency,
                rate(m.stats.requests, m.window_secs),
                mean,
                q(0.5),
                q(0.9),
                q(0.95),
                q(0.99)
            ));
        }
        out
    }

    pub fn write_files(&self, a: &Args) -> Result<(), String> {
        if let Some(p) = &a.json {
            let text = serde_json::to_string_pretty(&self.to_json()).map_err(|e| e.to_string())?;
            std::fs::write(p, text + "\n").map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        }
        if let Some(p) = &a.csv {
            std::fs::write(p, self.csv()).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        }
        Ok(())
    }
}

/// The machine, for reading figures later: kernel, CPU model, CPUs, load average.
pub fn host() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    json!({
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu": cpu,
        "cpus_online": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}

fn print_measured(name: &str, m: &Measured) {
    let s: &Stats = &m.stats;
    println!(
        "[{name}] window {:.2} s{}: {} requests ({:.1}/s), {} sequences ({:.1}/s)",
        m.window_secs,
        if m.interrupted { " (interrupted)" } else { "" },
        s.requests,
        rate(s.requests, m.window_secs),
        s.sequences,
        rate(s.sequences, m.window_secs)
    );
    println!(
        "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "p50", "p90", "p95", "p99", "p99.9", "max", "mean"
    );
    let rows = [
        ("request latency (µs)", &s.latency, 1e3),
        ("sequence duration (ms)", &s.seq_duration, 1e6),
        ("per-sequence p99 (µs)", &s.seq_p99, 1e3),
        // Only where a call was alone on its connection (see grpc.rs).
        ("client turnaround (µs)", &s.client_turnaround, 1e3),
        // Only paced: how late each step went out after its intended time.
        ("send lag (µs)", &s.send_lag, 1e3),
    ];
    let optional = |l: &str| l.starts_with("client") || l.starts_with("send");
    for (label, h, div) in rows.into_iter().filter(|(l, h, _)| !optional(l) || !h.is_empty()) {
        let v = summary(h, div);
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        println!(
            "  {label:<22} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            f("p50"),
            f("p90"),
            f("p95"),
            f("p99"),
            f("p99.9"),
            f("max"),
            f("mean")
        );
    }
    println!(
        "  errors {}{}  verify failures {}  dropped arrivals {}{}  (whole run: {} answers, {} sequences started)",
        s.errors_total(),
        if s.errors.is_empty() { String::new() } else { format!(" {:?}", s.errors) },
        s.verify_failures,
        s.dropped_arrivals,
        if s.cancelled + s.disconnects > 0 {
            format!("  injected: {} cancelled, {} disconnects", s.cancelled, s.disconnects)
        } else {
            String::new()
        },
        s.requests_total,
        s.sequences_started_total
    );
    println!(
        "  client CPU {:.2} s over {:.2} s ({:.0}% of one core){}",
        m.cpu_secs,
        m.wall_secs,
        100.0 * m.cpu_secs / m.wall_secs.max(1e-9),
        if name == "raw" { " (raw: this is the model's own CPU)" } else { "" }
    );
    if let Some(c) = m.server_cpu_secs {
        println!(
            "  server CPU {:.2} s ({:.0}% of one core), {:.1} µs per request",
            c,
            100.0 * c / m.wall_secs.max(1e-9),
            c * 1e6 / s.requests_total.max(1) as f64
        );
    }
    for e in s.error_samples.iter().take(3) {
        println!("    error: {e}");
    }
    for e in s.verify_samples.iter().take(3) {
        println!("    verify: {e}");
    }
}
