//! Measurements of one client thread, merged at the end: HDR histograms (nanoseconds) for step
//! latency, sequence duration and each sequence's own p99, plus counters and errors by status.

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Highest value a histogram records (longer values are clamped to it): 1 hour in ns.
const HIST_MAX_NS: u64 = 3_600_000_000_000;
/// Steps per sequence whose latency is kept for that sequence's own p99 (the first ones).
pub const SEQ_STEPS_KEPT: usize = 100_000;
/// Samples of error / verification messages kept for the report.
const SAMPLES_MAX: usize = 10;

pub struct Stats {
    /// Per request, from the intended send time to the answer (requests whose intended time is
    /// inside the measured window).
    pub latency: Histogram<u64>,
    /// Per sequence, intended start to last answer (sequences entirely inside the window).
    pub seq_duration: Histogram<u64>,
    /// Per sequence, the p99 of its own steps (same sequences).
    pub seq_p99: Histogram<u64>,
    /// Paced: per request intended inside the window, from its intended time to when it was
    /// actually sent (how far behind its schedule the client had to send it).
    pub send_lag: Histogram<u64>,
    /// Answers to requests intended inside the window.
    pub requests: u64,
    /// Answers over the whole run (warm-up and drain included).
    pub requests_total: u64,
    /// Sequences entirely inside the window, completed without error.
    pub sequences: u64,
    pub sequences_started_total: u64,
    pub sequences_completed_total: u64,
    pub errors: BTreeMap<String, u64>,
    pub error_samples: Vec<String>,
    pub verify_failures: u64,
    pub verify_samples: Vec<String>,
    /// Open loop: arrivals not started because --max-live sequences were live.
    pub dropped_arrivals: u64,
    /// Injected: sequences cancelled mid-call and abandoned (--cancel-fraction).
    pub cancelled: u64,
    /// Injected: connections dropped by a sequence between two of its steps (--disconnect-fraction).
    pub disconnects: u64,
    /// gRPC unary calls alone on their connection: the client's own time from the read that
    /// delivered an answer to the write of the next request (whole run; see grpc.rs).
    pub client_turnaround: Histogram<u64>,
}

pub fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            latency: hist(),
            seq_duration: hist(),
            seq_p99: hist(),
            send_lag: hist(),
            requests: 0,
            requests_total: 0,
            sequences: 0,
            sequences_started_total: 0,
            sequences_completed_total: 0,
            errors: BTreeMap::new(),
            error_samples: Vec::new(),
            verify_failures: 0,
            verify_samples: Vec::new(),
            dropped_arrivals: 0,
            cancelled: 0,
            disconnects: 0,
            client_turnaround: hist(),
        }
    }
}

pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.clamp(1, HIST_MAX_NS));
}

/// p99 of one sequence's step latencies (sorted in place).
pub fn p99_of(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let rank = ((v.len() as f64) * 0.99).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

impl Stats {
    pub fn error(&mut self, key: String, detail: impl FnOnce() -> String) {
        let n = self.errors.entry(key).or_insert(0);
        *n += 1;
        // The first errors of each kind, so that a rare kind is not hidden by a frequent one.
        if self.error_samples.len() < SAMPLES_MAX || (*n <= 2 && self.error_samples.len() < 2 * SAMPLES_MAX) {
            self.error_samples.push(detail());
        }
    }

    pub fn verify_failure(&mut self, detail: impl FnOnce() -> String) {
        self.verify_failures += 1;
        if self.verify_samples.len() < SAMPLES_MAX {
            self.verify_samples.push(detail());
        }
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, o: &Stats) {
        let _ = self.latency.add(&o.latency);
        let _ = self.seq_duration.add(&o.seq_duration);
        let _ = self.seq_p99.add(&o.seq_p99);
        let _ = self.client_turnaround.add(&o.client_turnaround);
        let _ = self.send_lag.add(&o.send_lag);
        self.requests += o.requests;
        self.requests_total += o.requests_total;
        self.sequences += o.sequences;
        self.sequences_started_total += o.sequences_started_total;
        self.sequences_completed_total += o.sequences_completed_total;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        for s in &o.error_samples {
            if self.error_samples.len() < 2 * SAMPLES_MAX {
                self.error_samples.push(s.clone());
            }
        }
        self.verify_failures += o.verify_failures;
        for s in &o.verify_samples {
            if self.verify_samples.len() < SAMPLES_MAX {
                self.verify_samples.push(s.clone());
            }
        }
        self.dropped_arrivals += o.dropped_arrivals;
        self.cancelled += o.cancelled;
        self.disconnects += o.disconnects;
    }
}

/// Percentiles of a histogram in a unit (`div` ns per unit).
pub fn summary(h: &Histogram<u64>, div: f64) -> Value {
    let q = |p: f64| {
        if h.is_empty() {
            0.0
        } else {
            round3(h.value_at_quantile(p) as f64 / div)
        }
    };
    json!({
        "count": h.len(),
        "min": if h.is_empty() { 0.0 } else { round3(h.min() as f64 / div) },
        "mean": if h.is_empty() { 0.0 } else { round3(h.mean() / div) },
        "p50": q(0.50),
        "p90": q(0.90),
        "p95": q(0.95),
        "p99": q(0.99),
        "p99.9": q(0.999),
        "max": if h.is_empty() { 0.0 } else { round3(h.max() as f64 / div) },
    })
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_small_and_large() {
        assert_eq!(p99_of(&mut []), 0);
        assert_eq!(p99_of(&mut [5]), 5);
        let mut v: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(p99_of(&mut v), 99);
        let mut v: Vec<u64> = (1..=1000).collect();
        assert_eq!(p99_of(&mut v), 990);
    }

    #[test]
    fn merge_adds_up() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        record(&mut a.latency, 1000);
        record(&mut b.latency, 3000);
        a.requests = 1;
        b.requests = 1;
        b.error("NOT_FOUND".into(), || "x".into());
        a.merge(&b);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.requests, 2);
        assert_eq!(a.errors_total(), 1);
        let s = summary(&a.latency, 1000.0);
        assert_eq!(s["count"], 2);
        assert!(s["max"].as_f64().unwrap() >= 2.99);
    }
}
