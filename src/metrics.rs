//! Prometheus metrics: OVMS's names and labels (spec §3.5) plus seqcore's own per shard and per
//! model. Every counter lives in the shard that counts it, as plain integers (no atomics, no
//! sharing); a scrape asks every shard for a snapshot through the mesh and renders the merge.

use crate::catalog::Catalog;
use std::cell::{Cell, RefCell};
use std::fmt::Write;
use std::future::Future;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    TensorFlowServing,
    KServe,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    Grpc,
    Rest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Predict,
    GetModelMetadata,
    GetModelStatus,
    ModelInfer,
    ModelMetadata,
    ModelReady,
}

/// One of seqcore's own per-model series: name, type, help, and how to read it from a snapshot.
type PerModelMetric = (&'static str, &'static str, &'static str, fn(&ModelSnapshot) -> u64);

const APIS: [Api; 2] = [Api::TensorFlowServing, Api::KServe];
const INTERFACES: [Interface; 2] = [Interface::Grpc, Interface::Rest];
const METHODS: [Method; 6] = [
    Method::Predict,
    Method::GetModelMetadata,
    Method::GetModelStatus,
    Method::ModelInfer,
    Method::ModelMetadata,
    Method::ModelReady,
];

impl Api {
    fn label(self) -> &'static str {
        match self {
            Api::TensorFlowServing => "TensorFlowServing",
            Api::KServe => "KServe",
        }
    }
}

impl Interface {
    fn label(self) -> &'static str {
        match self {
            Interface::Grpc => "gRPC",
            Interface::Rest => "REST",
        }
    }
}

impl Method {
    fn label(self) -> &'static str {
        match self {
            Method::Predict => "Predict",
            Method::GetModelMetadata => "GetModelMetadata",
            Method::GetModelStatus => "GetModelStatus",
            Method::ModelInfer => "ModelInfer",
            Method::ModelMetadata => "ModelMetadata",
            Method::ModelReady => "ModelReady",
        }
    }
}

/// Bucket upper bounds in µs: 10 × 1.8^i, as OVMS's latency histograms (35 buckets up to ~13 h).
pub fn bucket_bounds_us() -> &'static [u64] {
    static BOUNDS: std::sync::OnceLock<Vec<u64>> = std::sync::OnceLock::new();
    BOUNDS.get_or_init(|| (0..35).map(|i| (10.0 * 1.8f64.powi(i)).floor() as u64).collect())
}

/// A latency histogram with fixed buckets; recording is a binary search and two additions.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    sum_us: u64,
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram { counts: vec![0; bucket_bounds_us().len() + 1], sum_us: 0 }
    }

    pub fn record_us(&mut self, us: u64) {
        let i = bucket_bounds_us().partition_point(|&b| b < us);
        self.counts[i] += 1;
        self.sum_us += us;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn merge(&mut self, other: &Histogram) {
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }
}

/// A model's counters on one shard, kept by its `ModelInstance` and copied into snapshots.
#[derive(Clone, Copy, Debug, Default)]
pub struct ModelCounters {
    pub steps: u64,
    pub started: u64,
    pub ended: u64,
    pub expired: u64,
    pub rejected_max: u64,
    pub failed: u64,
    /// Nanoseconds spent in OpenVINO for steps: state restore/save/reset, input and output
    /// copies, and infer (what the raw baseline's loop does per step). Lets a benchmark take the
    /// server's overhead per request from one run, without a separate raw run.
    pub openvino_ns: u64,
    /// States saved out of an infer request to make room for another sequence.
    pub swaps_out: u64,
    /// States restored into an infer request (the sequence had been swapped out).
    pub swaps_in: u64,
    /// Batched inferences (`max_batch_size` > 1), and the steps they ran.
    pub batches: u64,
    pub batched_steps: u64,
}

/// Per-model figures a shard reports (counters, gauges and the owner-side histograms).
#[derive(Clone, Debug, Default)]
pub struct ModelSnapshot {
    pub live_sequences: u64,
    pub counters: ModelCounters,
    pub infer_requests: u64,
    /// The most infer requests the model may hold on this shard (its resident memory budget).
    pub infer_requests_max: u64,
    /// Sequences whose state is resident in an infer request.
    pub resident_sequences: u64,
    pub inference_us: Histogram,
    pub wait_for_infer_req_us: Histogram,
}

/// Request methods per model: [api][interface][method], flattened (`ShardMetrics::index`).
const CALLS: usize = APIS.len() * INTERFACES.len() * METHODS.len();

/// One model instance's request counts on one shard: (success, fail) per call, and the request
/// time of inference calls per interface.
#[derive(Clone, Debug)]
pub struct ModelRequests {
    pub calls: [[u64; 2]; CALLS],
    pub time_us: [Histogram; INTERFACES.len()],
}

impl Default for ModelRequests {
    fn default() -> ModelRequests {
        ModelRequests { calls: [[0; 2]; CALLS], time_us: [Histogram::new(), Histogram::new()] }
    }
}

/// One shard's metrics at scrape time; `requests` and `models` are by `ModelIdx` (None or
/// missing: nothing recorded, or not loaded here).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub shard: u16,
    pub forwarded_out: u64,
    pub forwarded_in: u64,
    /// The event loop's stalls (`shard::stall`): how many, and the most late it has been (ms).
    pub stalls: u64,
    pub stall_worst_ms: u64,
    pub current_requests: u64,
    pub requests: Vec<ModelRequests>,
    pub models: Vec<Option<ModelSnapshot>>,
}

/// The request-side metrics one shard records (front ends call `request_done`).
pub struct ShardMetrics {
    inner: RefCell<Inner>,
}

struct Inner {
    current_requests: u64,
    /// By `ModelIdx`; grows when a request first counts against a newly loaded instance.
    requests: Vec<ModelRequests>,
}

impl Default for ShardMetrics {
    fn default() -> ShardMetrics {
        ShardMetrics::new()
    }
}

impl ShardMetrics {
    pub fn new() -> ShardMetrics {
        ShardMetrics { inner: RefCell::new(Inner { current_requests: 0, requests: Vec::new() }) }
    }

    /// Marks a request as started; pair with `request_done`.
    pub fn request_started(&self) -> Instant {
        self.inner.borrow_mut().current_requests += 1;
        Instant::now()
    }

    /// Counts a finished request against a model (None when the model was not found: OVMS
    /// counts only requests that reached a model).
    pub fn request_done(
        &self,
        started: Instant,
        api: Api,
        interface: Interface,
        method: Method,
        model: Option<usize>,
        ok: bool,
    ) {
        let mut inner = self.inner.borrow_mut();
        inner.current_requests -= 1;
        let Some(m) = model.filter(|&m| m < crate::catalog::INSTANCES_MAX) else { return };
        if inner.requests.len() <= m {
            inner.requests.resize_with(m + 1, ModelRequests::default);
        }
        let r = &mut inner.requests[m];
        r.calls[index(api, interface, method)][usize::from(!ok)] += 1;
        if method == Method::Predict || method == Method::ModelInfer {
            r.time_us[interface as usize].record_us(started.elapsed().as_micros() as u64);
        }
    }

    /// Runs `request` and counts it: `model` is read once the request has finished, so the
    /// request sets it as soon as it names a served model (failures then count against it).
    ///
    /// `request` is pinned by the caller (`std::pin::pin!`): an async fn that took the future by
    /// value would hold it twice (as its argument and as what it awaits), and every request
    /// task's allocation would carry both copies.
    pub async fn counted<T, E, F: Future<Output = Result<T, E>>>(
        &self,
        api: Api,
        interface: Interface,
        method: Method,
        model: &Cell<Option<usize>>,
        request: std::pin::Pin<&mut F>,
    ) -> Result<T, E> {
        let started = self.request_started();
        let result = request.await;
        self.request_done(started, api, interface, method, model.get(), result.is_ok());
        result
    }

    /// `counted` for a request that does not wait: `request` gets the cell to set its model in.
    pub fn counted_now<T, E>(
        &self,
        api: Api,
        interface: Interface,
        method: Method,
        request: impl FnOnce(&Cell<Option<usize>>) -> Result<T, E>,
    ) -> Result<T, E> {
        let model = Cell::new(None);
        let started = self.request_started();
        let result = request(&model);
        self.request_done(started, api, interface, method, model.get(), result.is_ok());
        result
    }

    pub fn snapshot_into(&self, s: &mut Snapshot) {
        let inner = self.inner.borrow();
        s.current_requests = inner.current_requests;
        s.requests = inner.requests.clone();
    }
}

/// Where a call's counts are in `ModelRequests::calls`.
fn index(api: Api, interface: Interface, method: Method) -> usize {
    // APIS, INTERFACES and METHODS list every variant in declaration order (tested below).
    let (a, f, me) = (api as usize, interface as usize, method as usize);
    (a * INTERFACES.len() + f) * METHODS.len() + me
}

/// Renders the merged snapshots of all shards in Prometheus text format. Series are per model
/// version: the instances of one version (an old one still serving its sequences after a
/// recompile, and its successor) add up under one label set.
pub fn render(catalog: &Catalog, shards: &[Snapshot]) -> String {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (idx, meta, _) in catalog.loaded() {
        let label = format!("name=\"{}\",version=\"{}\"", escape(&meta.name), meta.version);
        match groups.iter_mut().find(|(l, _)| *l == label) {
            Some((_, members)) => members.push(idx.0 as usize),
            None => groups.push((label, vec![idx.0 as usize])),
        }
    }
    let mut out = String::with_capacity(16 * 1024);
    let sum = |members: &[usize], get: &dyn Fn(&Snapshot, usize) -> u64| -> u64 {
        shards.iter().map(|s| members.iter().map(|&m| get(s, m)).sum::<u64>()).sum()
    };
    let merged = |members: &[usize], get: &dyn Fn(&Snapshot, usize) -> Option<Histogram>| -> Histogram {
        let mut h = Histogram::default();
        for s in shards {
            for &m in members {
                if let Some(x) = get(s, m) {
                    h.merge(&x);
                }
            }
        }
        h
    };

    // OVMS's metrics.
    let _ = writeln!(out, "# HELP ovms_streams Number of OpenVINO execution streams.\n# TYPE ovms_streams gauge");
    for (label, _) in &groups {
        let _ = writeln!(out, "ovms_streams{{{label}}} {}", shards.len());
    }
    let _ = writeln!(out, "# HELP ovms_current_requests Number of inference requests currently in process.\n# TYPE ovms_current_requests gauge");
    let _ = writeln!(out, "ovms_current_requests {}", shards.iter().map(|s| s.current_requests).sum::<u64>());
    for (kind, col, help) in [
        ("success", 0, "Number of successful requests to a model or a DAG."),
        ("fail", 1, "Number of failed requests to a model or a DAG."),
    ] {
        let _ = writeln!(out, "# HELP ovms_requests_{kind} {help}\n# TYPE ovms_requests_{kind} counter");
        for (a, api) in APIS.iter().enumerate() {
            for (f, iface) in INTERFACES.iter().enumerate() {
                for (me, method) in METHODS.iter().enumerate() {
                    if !method_fits(*api, *method) {
                        continue;
                    }
                    let i = (a * INTERFACES.len() + f) * METHODS.len() + me;
                    for (label, members) in &groups {
                        let v = sum(members, &|s, m| s.requests.get(m).map_or(0, |r| r.calls[i][col]));
                        let _ = writeln!(
                            out,
                            "ovms_requests_{kind}{{api=\"{}\",interface=\"{}\",method=\"{}\",{label}}} {v}",
                            api.label(),
                            iface.label(),
                            method.label(),
                        );
                    }
                }
            }
        }
    }
    let _ = writeln!(out, "# HELP ovms_request_time_us Processing time of requests to a model or a DAG.\n# TYPE ovms_request_time_us histogram");
    for (f, iface) in INTERFACES.iter().enumerate() {
        for (label, members) in &groups {
            let h = merged(members, &|s, m| s.requests.get(m).map(|r| r.time_us[f].clone()));
            write_histogram(&mut out, "ovms_request_time_us", &format!("interface=\"{}\",{label}", iface.label()), &h);
        }
    }
    for (name, help, pick) in [
        (
            "ovms_inference_time_us",
            "Inference execution time in the OpenVINO backend.",
            (|s: &ModelSnapshot| &s.inference_us) as fn(&ModelSnapshot) -> &Histogram,
        ),
        ("ovms_wait_for_infer_req_time_us", "Request waiting time in the scheduling queue.", |s: &ModelSnapshot| {
            &s.wait_for_infer_req_us
        }),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (label, members) in &groups {
            let h = merged(members, &|s, m| s.models.get(m).and_then(Option::as_ref).map(|x| pick(x).clone()));
            write_histogram(&mut out, name, label, &h);
        }
    }

    // seqcore's own, per shard and per model.
    let per_model: [PerModelMetric; 14] = [
        ("seqcore_live_sequences", "gauge", "Sequences currently held.", |s| s.live_sequences),
        ("seqcore_sequence_steps_total", "counter", "Requests executed on sequences (and stateless requests).", |s| {
            s.counters.steps
        }),
        ("seqcore_sequences_started_total", "counter", "Sequences started.", |s| s.counters.started),
        ("seqcore_sequences_ended_total", "counter", "Sequences ended by an END request.", |s| s.counters.ended),
        (
            "seqcore_sequences_timed_out_total",
            "counter",
            "Sequences removed after sequence_timeout_seconds idle.",
            |s| s.counters.expired,
        ),
        ("seqcore_sequences_rejected_total", "counter", "STARTs rejected at max_sequence_number.", |s| {
            s.counters.rejected_max
        }),
        ("seqcore_requests_failed_total", "counter", "Requests that failed on the shard owning their sequence.", |s| {
            s.counters.failed
        }),
        ("seqcore_infer_requests", "gauge", "OpenVINO infer requests held.", |s| s.infer_requests),
        (
            "seqcore_infer_requests_max",
            "gauge",
            "Most infer requests the model may hold (--resident_memory_mb over one request's memory).",
            |s| s.infer_requests_max,
        ),
        ("seqcore_resident_sequences", "gauge", "Sequences whose state is resident in an infer request.", |s| {
            s.resident_sequences
        }),
        ("seqcore_state_swaps_out_total", "counter", "States saved out of an infer request to make room.", |s| {
            s.counters.swaps_out
        }),
        ("seqcore_state_swaps_in_total", "counter", "States restored into an infer request.", |s| s.counters.swaps_in),
        ("seqcore_batches_total", "counter", "Batched inferences (steps of several sequences as one).", |s| {
            s.counters.batches
        }),
        ("seqcore_batched_steps_total", "counter", "Steps run inside batched inferences.", |s| {
            s.counters.batched_steps
        }),
    ];
    for (name, kind, help, get) in per_model {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in shards {
            for (label, members) in &groups {
                let v: u64 = members.iter().map(|&m| s.models.get(m).and_then(Option::as_ref).map_or(0, get)).sum();
                let _ = writeln!(out, "{name}{{shard=\"{}\",{label}}} {v}", s.shard);
            }
        }
    }
    let _ = writeln!(out, "# HELP seqcore_forwards_total Requests sent to (out) or received from (in) another shard.\n# TYPE seqcore_forwards_total counter");
    for s in shards {
        let _ = writeln!(out, "seqcore_forwards_total{{shard=\"{}\",direction=\"out\"}} {}", s.shard, s.forwarded_out);
        let _ = writeln!(out, "seqcore_forwards_total{{shard=\"{}\",direction=\"in\"}} {}", s.shard, s.forwarded_in);
    }
    let _ = writeln!(out, "# HELP seqcore_shard_stalls_total Times the shard's event loop ran its 200 ms timer over 100 ms late.\n# TYPE seqcore_shard_stalls_total counter");
    for s in shards {
        let _ = writeln!(out, "seqcore_shard_stalls_total{{shard=\"{}\"}} {}", s.shard, s.stalls);
    }
    let _ = writeln!(out, "# HELP seqcore_shard_stall_worst_ms The most the shard's event loop has been late with its timer, in ms.\n# TYPE seqcore_shard_stall_worst_ms gauge");
    for s in shards {
        let _ = writeln!(out, "seqcore_shard_stall_worst_ms{{shard=\"{}\"}} {}", s.shard, s.stall_worst_ms);
    }
    out
}

/// OVMS reports TFS methods under TensorFlowServing and KServe methods under KServe only.
fn method_fits(api: Api, method: Method) -> bool {
    match api {
        Api::TensorFlowServing => matches!(method, Method::Predict | Method::GetModelMetadata | Method::GetModelStatus),
        Api::KServe => matches!(method, Method::ModelInfer | Method::ModelMetadata | Method::ModelReady),
    }
}

fn write_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut cumulative = 0;
    for (i, b) in bucket_bounds_us().iter().enumerate() {
        cumulative += h.counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count());
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_us);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count());
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variant_lists_are_in_declaration_order() {
        // ShardMetrics::index relies on it.
        assert!(APIS.iter().enumerate().all(|(i, &a)| a as usize == i));
        assert!(INTERFACES.iter().enumerate().all(|(i, &f)| f as usize == i));
        assert!(METHODS.iter().enumerate().all(|(i, &m)| m as usize == i));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_counted() {
        let mut h = Histogram::new();
        for us in [5, 10, 11, 100, 1_000_000] {
            h.record_us(us);
        }
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum_us, 5 + 10 + 11 + 100 + 1_000_000);
        let mut out = String::new();
        write_histogram(&mut out, "x", "a=\"b\"", &h);
        assert!(out.contains("x_bucket{a=\"b\",le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 5\n"));
        assert!(out.contains("x_count{a=\"b\"} 5\n"));
    }

    #[test]
    fn request_counts_land_in_their_labels() {
        let catalog = Catalog::of([crate::catalog::ModelMeta {
            name: "s".into(),
            version: 1,
            stateful: true,
            inputs: vec![],
            outputs: vec![],
            precision: "f32".into(),
            execution_mode: "PERFORMANCE".into(),
        }]);
        let m = ShardMetrics::new();
        for ok in [true, true, false] {
            let t = m.request_started();
            m.request_done(t, Api::TensorFlowServing, Interface::Grpc, Method::Predict, Some(0), ok);
        }
        let t = m.request_started();
        m.request_done(t, Api::KServe, Interface::Rest, Method::ModelInfer, None, false);
        let mut s = Snapshot { models: vec![Some(ModelSnapshot::default())], ..Default::default() };
        m.snapshot_into(&mut s);
        let stalled = Snapshot { shard: 1, stalls: 3, stall_worst_ms: 700, ..s.clone() };
        let text = render(&catalog, &[s, stalled]);
        assert!(
            text.contains("seqcore_shard_stalls_total{shard=\"0\"} 0\nseqcore_shard_stalls_total{shard=\"1\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("seqcore_shard_stall_worst_ms{shard=\"1\"} 700\n"), "{text}");
        assert!(text.contains("ovms_requests_success{api=\"TensorFlowServing\",interface=\"gRPC\",method=\"Predict\",name=\"s\",version=\"1\"} 4\n"), "{text}");
        assert!(text.contains("ovms_requests_fail{api=\"TensorFlowServing\",interface=\"gRPC\",method=\"Predict\",name=\"s\",version=\"1\"} 2\n"));
        assert!(text.contains("ovms_current_requests 0\n"));
        assert!(text.contains("ovms_request_time_us_count{interface=\"gRPC\",name=\"s\",version=\"1\"} 6\n"));
    }
}
