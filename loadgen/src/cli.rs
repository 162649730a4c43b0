//! Command line. Every option has a bound, checked in [`Args::validate`].

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

/// Wire protocols (`--addr` is the gRPC port for the gRPC ones, the REST port for the REST ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// TF-Serving PredictionService/Predict over gRPC (OVMS's stateful API).
    TfsGrpc,
    /// KServe v2 GRPCInferenceService/ModelInfer with Triton's sequence parameters.
    KserveGrpc,
    /// KServe v2 ModelStreamInfer, one stream per sequence.
    KserveStream,
    /// TF-Serving REST `POST /v1/models/{name}:predict`, column format.
    TfsRest,
    /// KServe v2 REST `POST /v2/models/{name}/infer`.
    KserveRest,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::TfsGrpc => "tfs-grpc",
            Protocol::KserveGrpc => "kserve-grpc",
            Protocol::KserveStream => "kserve-stream",
            Protocol::TfsRest => "tfs-rest",
            Protocol::KserveRest => "kserve-rest",
        }
    }
}

/// The HTTP/2 client of unary gRPC calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Http2 {
    /// The loadgen's own small client (h2lite): a third of h2's instructions per call.
    Lite,
    /// The h2 crate, the server's own HTTP/2 stack (for cross-checking).
    H2,
}

/// Load generator for seqcore (and any OVMS-compatible server): drives stateful sequences and
/// reports latency (HDR histograms, measured from the intended send time), throughput and errors.
#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen", version, about, long_about = None)]
pub struct Args {
    /// Server address host:port.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub addr: String,

    /// Wire protocol.
    #[arg(long, value_enum, default_value = "tfs-grpc")]
    pub protocol: Protocol,

    /// Model name (as served).
    #[arg(long, default_value = "summator")]
    pub model: String,

    /// Model version (0: the server's latest).
    #[arg(long, default_value_t = 0)]
    pub model_version: i64,

    /// Client threads, one glommio executor pinned per CPU.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,

    /// CPUs for the client threads, e.g. "1" or "2-3,6" (default: the process's allowed CPUs).
    #[arg(long)]
    pub cpuset: Option<String>,

    /// Client executors spin this many µs before parking when idle (0: park at once). Spinning
    /// takes the client's wake-up latency out of the measurement at the cost of a busy CPU.
    #[arg(long, default_value_t = 0)]
    pub spin_us: u64,

    /// HTTP/2 client of the unary gRPC protocols (tfs-grpc, kserve-grpc): `lite`, the
    /// loadgen's own, or `h2`, the h2 crate. kserve-stream's streams always use h2.
    #[arg(long, value_enum, default_value = "lite")]
    pub http2: Http2,

    /// HTTP/2 connections per client thread (with --shard-port-base: per client thread and shard).
    #[arg(long, default_value_t = 1)]
    pub connections_per_core: usize,

    /// Shard-aware: the server's --shard_port_base. Each client thread connects to every
    /// shard's own port (the host of --addr, port base + s) and sends each sequence's steps to
    /// its owner's port (seqcore's routing function), so no step crosses shards. Needs --shards.
    #[arg(long)]
    pub shard_port_base: Option<u16>,

    /// The server's shard count, for --shard-port-base.
    #[arg(long)]
    pub shards: Option<u16>,

    /// Closed loop: live sequences at once (over all threads). Open loop: ignored (see --max-live).
    #[arg(long, default_value_t = 1)]
    pub sequences: usize,

    /// Steps per sequence (START ... END), at least 2.
    #[arg(long, default_value_t = 100)]
    pub sequence_length: u64,

    /// Length varies uniformly in L·(1±F).
    #[arg(long, default_value_t = 0.0)]
    pub length_variation: f64,

    /// Open loop: Poisson sequence arrivals per second (over all threads). 0: closed loop.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,

    /// Pace steps of a sequence this many ms apart (0: next step as soon as the last answered).
    /// Closed loop, paced: each of the --sequences is a stream that steps every I ms from a random
    /// phase in [0, I), one utterance after another (the next START on the slot after the last
    /// END), so STARTs and ENDs happen all through the run; latency counts from each step's
    /// intended time.
    #[arg(long, default_value_t = 0.0)]
    pub step_interval_ms: f64,

    /// Paced: each step is intended up to this many ms after its slot (uniform), so that streams
    /// with close phases do not all send at the same instant. At most --step-interval-ms.
    #[arg(long, default_value_t = 0.5)]
    pub step_jitter_ms: f64,

    /// Open loop: most live sequences (arrivals past it are dropped and counted).
    #[arg(long, default_value_t = 10_000)]
    pub max_live: usize,

    /// Let the server choose sequence ids (START without sequence_id).
    #[arg(long)]
    pub server_ids: bool,

    /// High 24 bits of client-chosen sequence ids (default: random), so that concurrent
    /// loadgen processes never collide.
    #[arg(long)]
    pub id_namespace: Option<u32>,

    /// Seconds of warm-up (load applied, not measured).
    #[arg(long, default_value_t = 2.0)]
    pub warmup_secs: f64,

    /// Seconds measured after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,

    /// Per-request timeout in ms (counted as DEADLINE_EXCEEDED).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,

    /// Injected faults: this fraction of sequences is cancelled by the client at a random middle
    /// step. The step's call is dropped a random 0..`--cancel-window-us` after it is sent
    /// (HTTP/2: RST_STREAM CANCEL; HTTP/1.1: the connection is closed; a KServe stream is reset)
    /// and the sequence is abandoned without END, left to the server's idle timeout. Counted
    /// as `cancelled`, not as errors.
    #[arg(long, default_value_t = 0.0)]
    pub cancel_fraction: f64,

    /// Injected faults: how long after sending a cancelled step its call is dropped, at most
    /// (uniform; an answer that came first is read and the sequence abandoned all the same).
    #[arg(long, default_value_t = 1000)]
    pub cancel_window_us: u64,

    /// Injected faults: this fraction of sequences, after a random middle step is answered,
    /// drops its connection (HTTP/2: the connection is retired, its other calls finish on it and
    /// the next calls open a new one; HTTP/1.1: the idle connections are closed) and goes on to
    /// its END over a new one. Counted as `disconnects`.
    #[arg(long, default_value_t = 0.0)]
    pub disconnect_fraction: f64,

    /// Check every answer (summator-style models: input f32[1,1] → running sum in the output).
    #[arg(long)]
    pub verify: bool,

    /// Input name checked by --verify.
    #[arg(long, default_value = "input")]
    pub verify_input: String,

    /// Output name checked by --verify.
    #[arg(long, default_value = "add_sum")]
    pub verify_output: String,

    /// Run the model in-process through OpenVINO instead of a server (the physical limit).
    #[arg(long)]
    pub raw: bool,

    /// Run the server load, then the same load raw, and print server ÷ raw.
    #[arg(long)]
    pub compare_raw: bool,

    /// Raw mode: model repository holding <model>/<version>/model.xml.
    #[arg(long, default_value = "models/generated")]
    pub models_dir: PathBuf,

    /// Raw mode: the model's IR file (default: <models-dir>/<model>/1/model.xml).
    #[arg(long)]
    pub model_xml: Option<PathBuf>,

    /// Raw mode: one infer request per sequence, its state resident (no restore or save): the
    /// step time alone, for the real-time capacity limit. Default: the server's worst case.
    #[arg(long)]
    pub raw_resident: bool,

    /// Raw mode: OpenVINO's INFERENCE_PRECISION_HINT (e.g. f32, bf16), as a server's
    /// plugin_config would set it (default: OpenVINO's choice for this CPU).
    #[arg(long)]
    pub raw_precision: Option<String>,

    /// Raw mode: apply LowLatency2 before compiling (as the server's low_latency_transformation).
    #[arg(long)]
    pub low_latency: bool,

    /// Raw mode: OpenVINO runtime directory (default: $SEQCORE_OPENVINO_DIR or <repo>/.ov-runtime).
    #[arg(long)]
    pub ov_runtime: Option<PathBuf>,

    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write perf_analyzer-style CSV here.
    #[arg(long)]
    pub csv: Option<PathBuf>,

    /// Scrape this Prometheus endpoint before and after, and report the counters that changed.
    #[arg(long)]
    pub metrics_url: Option<String>,

    /// A local server's process id: its CPU time (from /proc) over the run is reported, per
    /// request.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Write the framed (5-byte prefix) request of a middle step (no control input, data
    /// variant 0) of the first client-chosen sequence to FILE, print its sequence_id and method
    /// path as JSON, and exit: the same bytes for another client to send, e.g. `h2load -d FILE`
    /// (start that sequence first). gRPC unary protocols only.
    #[arg(long, value_name = "FILE")]
    pub write_request: Option<PathBuf>,

    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,

    /// Random seed for lengths, arrivals and input data (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

pub const MAX_CORES: usize = 256;
pub const MAX_CONNECTIONS_PER_CORE: usize = 1024;
pub const MAX_SEQUENCES: usize = 1_000_000;
pub const MAX_SEQUENCE_LENGTH: u64 = 1_000_000;

impl Args {
    pub fn validate(&self) -> Result<(), String> {
        let range = |what: &str, v: f64, lo: f64, hi: f64| {
            if v.is_finite() && v >= lo && v <= hi {
                Ok(())
            } else {
                Err(format!("{what} must be in {lo}..={hi}, got {v}"))
            }
        };
        range("--cores", self.cores as f64, 1.0, MAX_CORES as f64)?;
        range("--connections-per-core", self.connections_per_core as f64, 1.0, MAX_CONNECTIONS_PER_CORE as f64)?;
        range("--sequences", self.sequences as f64, 1.0, MAX_SEQUENCES as f64)?;
        range("--sequence-length", self.sequence_length as f64, 2.0, MAX_SEQUENCE_LENGTH as f64)?;
        range("--length-variation", self.length_variation, 0.0, 1.0)?;
        range("--rate", self.rate, 0.0, 10_000_000.0)?;
        range("--step-interval-ms", self.step_interval_ms, 0.0, 3_600_000.0)?;
        range("--step-jitter-ms", self.step_jitter_ms, 0.0, 3_600_000.0)?;
        if self.step_interval_ms > 0.0 && self.step_jitter_ms > self.step_interval_ms {
            return Err(format!(
                "--step-jitter-ms ({}) must not exceed --step-interval-ms ({})",
                self.step_jitter_ms, self.step_interval_ms
            ));
        }
        range("--max-live", self.max_live as f64, 1.0, MAX_SEQUENCES as f64)?;
        range("--warmup-secs", self.warmup_secs, 0.0, 86_400.0)?;
        range("--duration-secs", self.duration_secs, 0.001, 86_400.0)?;
        range("--spin-us", self.spin_us as f64, 0.0, 1_000_000.0)?;
        range("--timeout-ms", self.timeout_ms as f64, 1.0, 3_600_000.0)?;
        range("--cancel-fraction", self.cancel_fraction, 0.0, 1.0)?;
        range("--cancel-window-us", self.cancel_window_us as f64, 0.0, 60_000_000.0)?;
        range("--disconnect-fraction", self.disconnect_fraction, 0.0, 1.0)?;
        if self.cancel_fraction + self.disconnect_fraction > 1.0 {
            return Err("--cancel-fraction plus --disconnect-fraction must not exceed 1".into());
        }
        if let Some(ns) = self.id_namespace {
            if ns == 0 || ns >= 1 << 24 {
                return Err(format!("--id-namespace must be in 1..={}, got {ns}", (1 << 24) - 1));
            }
        }
        if self.raw && self.compare_raw {
            return Err("--raw and --compare-raw are exclusive (--compare-raw runs both)".into());
        }
        if (self.raw_resident || self.raw_precision.is_some()) && !(self.raw || self.compare_raw) {
            return Err("--raw-resident and --raw-precision apply to --raw and --compare-raw".into());
        }
        if self.raw && self.rate > 0.0 {
            return Err("--raw runs a closed loop only; drop --rate".into());
        }
        if self.write_request.is_some() && !matches!(self.protocol, Protocol::TfsGrpc | Protocol::KserveGrpc) {
            return Err("--write-request: only for the unary gRPC protocols (tfs-grpc, kserve-grpc)".into());
        }
        if self.write_request.is_some() && (self.raw || self.compare_raw) {
            return Err("--write-request writes a request for a server; drop --raw/--compare-raw".into());
        }
        if !self.addr.contains(':') {
            return Err(format!("--addr must be host:port, got {:?}", self.addr));
        }
        match (self.shard_port_base, self.shards) {
            (None, None) => {}
            (Some(base), Some(n)) if n >= 1 && base as usize + n as usize - 1 <= u16::MAX as usize => {
                if !matches!(self.protocol, Protocol::TfsGrpc | Protocol::KserveGrpc | Protocol::KserveStream) {
                    return Err("--shard-port-base: only for the gRPC protocols".into());
                }
                if self.server_ids {
                    return Err(
                        "--shard-port-base needs client ids (a server-assigned id is not known in advance)".into()
                    );
                }
            }
            (Some(_), Some(n)) => return Err(format!("--shards {n}: the shard ports must end at or below 65535")),
            _ => return Err("--shard-port-base and --shards go together".into()),
        }
        Ok(())
    }

    pub fn open_loop(&self) -> bool {
        self.rate > 0.0
    }
}

/// Parses "0-3,8" into a CPU list (bounded by MAX_CORES entries).
pub fn parse_cpuset(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| x.trim().parse::<usize>().map_err(|_| format!("bad CPU {x:?} in --cpuset {s:?}"));
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(part)?, num(part)?),
        };
        if lo > hi || hi >= 4096 {
            return Err(format!("bad CPU range {part:?} in --cpuset {s:?}"));
        }
        for c in lo..=hi {
            if !out.contains(&c) {
                out.push(c);
            }
            if out.len() > MAX_CORES {
                return Err(format!("--cpuset {s:?} names more than {MAX_CORES} CPUs"));
            }
        }
    }
    if out.is_empty() {
        return Err(format!("--cpuset {s:?} names no CPU"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpusets() {
        assert_eq!(parse_cpuset("1").unwrap(), vec![1]);
        assert_eq!(parse_cpuset("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpuset("3-1").is_err());
        assert!(parse_cpuset("x").is_err());
        assert!(parse_cpuset("").is_err());
    }

    #[test]
    fn bounds() {
        let mut a = Args::parse_from(["loadgen"]);
        assert!(a.validate().is_ok());
        a.sequence_length = 1;
        assert!(a.validate().is_err());
        assert_eq!(a.http2, Http2::Lite);
        assert_eq!(Args::parse_from(["loadgen", "--http2", "h2"]).http2, Http2::H2);
        assert!(Args::try_parse_from(["loadgen", "--http2", "h3"]).is_err());
        let mut a = Args::parse_from(["loadgen", "--protocol", "tfs-rest"]);
        assert!(a.validate().is_ok());
        a.id_namespace = Some(1 << 24);
        assert!(a.validate().is_err());
    }
}
