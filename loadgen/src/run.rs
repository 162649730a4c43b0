//! The sequence driver: one glommio executor pinned per client CPU, each running its share of
//! the sequences over its own connections, closed or open loop.
//!
//! Latency is measured from the *intended* send time of each step, so a slow answer is not
//! hidden by the client waiting for it (no coordinated omission):
//! - closed loop, no pacing: the intended time of a step is when the previous step answered
//!   (the first step: when the sequence starts);
//! - with `--step-interval-ms I` (paced streams, the real-time workload): each of the
//!   `--sequences` is a stream with a random phase in [0, I) whose steps fall on the slots
//!   phase + k·I, each intended a uniform jitter (`--step-jitter-ms`) after its slot; one
//!   utterance follows another on the next slot, so STARTs and ENDs happen all through the run.
//!   If the previous answer comes later than a step's intended time, the step goes at once and
//!   its latency still counts from the intended time (`send_lag` records how late it went);
//! - open loop (`--rate R`): sequences arrive at Poisson-distributed intended times, whether or
//!   not earlier ones have finished (up to `--max-live`, past which arrivals are dropped and
//!   counted); the first step is intended at the arrival time.
//!
//! When the measured window ends (or on Ctrl-C) no new sequence starts, and each live sequence
//! sends one last step with END, so the server is left with no sequence of ours. Those drain
//! steps are not measured.

use crate::cli::Args;
use crate::grpc::CallError;
use crate::protocol::{verify_value, Control, Protocol, Step, DATA_VARIANTS};
use crate::stats::{p99_of, record, Stats};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared counters for the progress line (relaxed; read by the main thread a few times a second).
#[derive(Default)]
pub struct Progress {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub verify_failures: AtomicU64,
    pub live: AtomicI64,
    pub threads_done: AtomicU64,
}

/// The run's fixed parameters and clocks, shared by all client threads.
pub struct Plan {
    pub args: Args,
    pub t0: Instant,
    pub measure_start: Instant,
    pub measure_end: Instant,
    /// Set by Ctrl-C (SIGINT/SIGTERM).
    pub stop: Arc<AtomicBool>,
    pub namespace: u32,
    pub seed: u64,
    pub progress: Progress,
}

impl Plan {
    pub fn new(args: Args, stop: Arc<AtomicBool>, namespace: u32, seed: u64) -> Plan {
        let t0 = Instant::now();
        let measure_start = t0 + Duration::from_secs_f64(args.warmup_secs);
        let measure_end = measure_start + Duration::from_secs_f64(args.duration_secs);
        Plan { args, t0, measure_start, measure_end, stop, namespace, seed, progress: Progress::default() }
    }

    pub fn stopping(&self, now: Instant) -> bool {
        now >= self.measure_end || self.stop.load(Relaxed)
    }

    fn in_window(&self, intended: Instant) -> bool {
        intended >= self.measure_start && intended < self.measure_end
    }

    /// The client-chosen id of a thread's n-th sequence: namespace (24 bits) | thread (8) |
    /// counter (32). Never 0 (the namespace is not).
    pub fn sequence_id(&self, thread: usize, n: u64) -> u64 {
        ((self.namespace as u64) << 40) | (((thread as u64) & 0xff) << 32) | (n & 0xffff_ffff)
    }

    /// A sequence length: L·(1 ± F), uniform, at least 2.
    pub fn sample_length(&self, rng: &mut fastrand::Rng) -> u64 {
        let a = &self.args;
        let l = a.sequence_length as f64 * (1.0 + a.length_variation * (2.0 * rng.f64() - 1.0));
        (l.round() as u64).clamp(2, crate::cli::MAX_SEQUENCE_LENGTH)
    }
}

/// Sleeps until `t` (or the end of the window), in slices of at most 50 ms so that Ctrl-C is
/// seen promptly.
async fn sleep_until(plan: &Plan, t: Instant) {
    loop {
        let now = Instant::now();
        let until = t.min(plan.measure_end);
        if now >= until || plan.stop.load(Relaxed) {
            return;
        }
        glommio::timer::sleep((until - now).min(Duration::from_millis(50))).await;
    }
}

/// Splits `total` over `parts` as evenly as possible; part `i`'s share.
pub fn share(total: usize, parts: usize, i: usize) -> usize {
    total / parts + usize::from(i < total % parts)
}

/// The fault a sequence injects (`--cancel-fraction`, `--disconnect-fraction`), drawn when it
/// starts; never at its START or its END, so what is verified is a whole sequence or one cut
/// short on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// Step `step`'s call is dropped `after` it is sent; the sequence is abandoned.
    Cancel {
        step: u64,
        after: Duration,
    },
    /// After step `step` is answered the connection is dropped; the sequence goes on.
    Disconnect {
        step: u64,
    },
}

impl Fault {
    fn draw(a: &Args, len: u64, rng: &mut fastrand::Rng) -> Fault {
        if len < 3 || a.cancel_fraction + a.disconnect_fraction <= 0.0 {
            return Fault::None;
        }
        let u = rng.f64();
        let step = rng.u64(1..len - 1);
        if u < a.cancel_fraction {
            Fault::Cancel { step, after: Duration::from_micros(rng.u64(0..=a.cancel_window_us)) }
        } else if u < a.cancel_fraction + a.disconnect_fraction {
            Fault::Disconnect { step }
        } else {
            Fault::None
        }
    }
}

struct Thread<P: Protocol> {
    plan: Arc<Plan>,
    proto: Arc<P>,
    index: usize,
    conns: Vec<P::Conn>,
    stats: RefCell<Stats>,
    rng: RefCell<fastrand::Rng>,
    counter: Cell<u64>,
    live: Cell<usize>,
    timeout: Duration,
    interval: Option<Duration>,
    jitter: Duration,
}

/// Runs one client thread's share of the load on the current glommio executor.
pub async fn run_thread<P: Protocol>(plan: Arc<Plan>, proto: Arc<P>, index: usize) -> Stats {
    let a = &plan.args;
    let threads = a.cores;
    // Shard-aware: connections_per_core to each shard's own port, shard by shard.
    let conns: Vec<P::Conn> = match (a.shard_port_base, a.shards) {
        (Some(base), Some(shards)) => {
            let host = a.addr.rsplit_once(':').map_or(a.addr.as_str(), |(h, _)| h);
            (0..shards as usize)
                .flat_map(|s| {
                    let addr = format!("{host}:{}", base as usize + s);
                    (0..a.connections_per_core).map(move |_| addr.clone())
                })
                .map(|addr| proto.new_conn(&addr))
                .collect()
        }
        _ => (0..a.connections_per_core).map(|_| proto.new_conn(&a.addr)).collect(),
    };
    let t = Rc::new(Thread {
        rng: RefCell::new(fastrand::Rng::with_seed(plan.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))),
        timeout: Duration::from_millis(a.timeout_ms),
        interval: (a.step_interval_ms > 0.0).then(|| Duration::from_secs_f64(a.step_interval_ms / 1000.0)),
        jitter: Duration::from_secs_f64(a.step_jitter_ms / 1000.0),
        plan: plan.clone(),
        proto,
        index,
        conns,
        stats: RefCell::new(Stats::default()),
        counter: Cell::new(0),
        live: Cell::new(0),
    });
    for c in &t.conns {
        if let Err(e) = t.proto.connect(c).await {
            t.error(&e);
        }
    }
    if a.open_loop() {
        open_loop(&t, a.rate / threads as f64, share(a.max_live, threads, index).max(1)).await;
    } else {
        let n = share(a.sequences, threads, index);
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let t = t.clone();
                glommio::spawn_local(async move {
                    let conn = i % t.conns.len();
                    // A paced stream starts at a random phase of its interval; then each
                    // utterance starts on the slot after the previous one's last step.
                    let mut next = match t.interval {
                        Some(iv) => t.plan.t0 + iv.mul_f64(t.rng.borrow_mut().f64()),
                        None => Instant::now(),
                    };
                    while !t.plan.stopping(Instant::now()) {
                        next = t.clone().sequence(conn, next).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
    }
    plan.progress.threads_done.fetch_add(1, Relaxed);
    let mut stats = std::mem::take(&mut *t.stats.borrow_mut());
    stats.client_turnaround = crate::grpc::take_turnarounds();
    stats
}

async fn open_loop<P: Protocol>(t: &Rc<Thread<P>>, rate: f64, live_max: usize) {
    let plan = &t.plan;
    let mut next = plan.t0;
    let mut arrivals = 0u64;
    loop {
        // Exponential inter-arrival time: -ln(U)/rate, U in (0, 1].
        let u = 1.0 - t.rng.borrow_mut().f64();
        next += Duration::from_secs_f64(-u.ln() / rate);
        sleep_until(plan, next).await;
        if plan.stopping(Instant::now()) {
            break;
        }
        if t.live.get() >= live_max {
            t.stats.borrow_mut().dropped_arrivals += 1;
            continue;
        }
        let conn = (arrivals % t.conns.len() as u64) as usize;
        arrivals += 1;
        glommio::spawn_local(t.clone().sequence(conn, next)).detach();
    }
    // Drain: every live sequence sends at most one more step, bounded by the timeout.
    let deadline = Instant::now() + t.timeout + Duration::from_secs(1);
    while t.live.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

impl<P: Protocol> Thread<P> {
    fn error(&self, e: &CallError) {
        self.plan.progress.errors.fetch_add(1, Relaxed);
        self.stats.borrow_mut().error(e.key(), || e.to_string());
    }

    /// Runs one sequence from START to END; `start` is its intended start (its first slot, when
    /// paced). Returns when the next sequence of the same stream should start: paced, the slot
    /// after this one's last step; else now.
    async fn sequence(self: Rc<Self>, conn: usize, start: Instant) -> Instant {
        let plan = &*self.plan;
        let a = &plan.args;
        if plan.stopping(Instant::now()) {
            return Instant::now();
        }
        let (len, n, fault) = {
            let mut rng = self.rng.borrow_mut();
            let n = self.counter.get();
            self.counter.set(n + 1);
            let len = plan.sample_length(&mut rng);
            (len, n, Fault::draw(a, len, &mut rng))
        };
        let variant0 = (n as usize).wrapping_mul(7) % DATA_VARIANTS;
        let mut id = if a.server_ids { 0 } else { plan.sequence_id(self.index, n) };
        // Shard-aware: this sequence's steps go to a connection to its owner's port.
        let conn = match a.shards {
            Some(shards) if a.shard_port_base.is_some() => {
                let per = a.connections_per_core;
                seqcore::shard::shard_of(id, shards).0 as usize * per + conn % per
            }
            _ => conn,
        };
        let verify = a.verify;
        let measured_seq = plan.in_window(start);
        // Grows with the steps actually made (a million live sequences must not each reserve room).
        let mut step_latencies: Vec<u64> = Vec::new();
        let mut expected = 0f64;
        let mut intended = start;
        let mut last_answer = start;
        let mut drained = false;
        self.live.set(self.live.get() + 1);
        plan.progress.live.fetch_add(1, Relaxed);
        self.stats.borrow_mut().sequences_started_total += 1;
        let mut ok = true;
        let mut session = P::Session::default();
        let mut slots = 0u32;
        for k in 0..len {
            if let Some(iv) = self.interval {
                let jitter = self.jitter.mul_f64(self.rng.borrow_mut().f64());
                intended = start + iv * (k as u32) + jitter;
                slots = k as u32 + 1;
                sleep_until(plan, intended).await;
            } else if k > 0 {
                intended = last_answer;
            }
            // A started sequence is ended, never abandoned: once stopping, its next step is END.
            let draining = k > 0 && plan.stopping(Instant::now());
            let control = if k == 0 {
                Control::Start
            } else if k == len - 1 || draining {
                Control::End
            } else {
                Control::None
            };
            let value = verify.then(|| verify_value(n, k));
            let step = Step {
                seq_id: id,
                control,
                variant: (variant0 + k as usize) % DATA_VARIANTS,
                verify_value: value,
                want_id: verify || (a.server_ids && k == 0),
            };
            if self.interval.is_some() && !draining && plan.in_window(intended) {
                let lag = Instant::now().saturating_duration_since(intended).as_nanos() as u64;
                record(&mut self.stats.borrow_mut().send_lag, lag);
            }
            if let Fault::Cancel { step: at, after } = fault {
                // Not once the run is stopping: then every live sequence ENDs.
                if at == k && !draining {
                    // The call is dropped mid-flight (or its answer, if it came first, ignored)
                    // and the sequence abandoned: the server's idle timeout ends it.
                    let call = self.proto.call(&self.conns[conn], &mut session, &step, self.timeout);
                    let cut = async {
                        glommio::timer::sleep(after).await;
                        Err(CallError::Timeout)
                    };
                    let _ = futures_lite::future::or(call, cut).await;
                    drop(session);
                    self.stats.borrow_mut().cancelled += 1;
                    self.live.set(self.live.get() - 1);
                    plan.progress.live.fetch_sub(1, Relaxed);
                    return match self.interval {
                        Some(iv) => start + iv * slots.max(1),
                        None => Instant::now(),
                    };
                }
            }
            let result = self.proto.call(&self.conns[conn], &mut session, &step, self.timeout).await;
            let now = Instant::now();
            last_answer = now;
            match result {
                Ok(reply) => {
                    plan.progress.requests.fetch_add(1, Relaxed);
                    let lat = now.saturating_duration_since(intended).as_nanos() as u64;
                    {
                        let mut st = self.stats.borrow_mut();
                        st.requests_total += 1;
                        if !draining && plan.in_window(intended) {
                            st.requests += 1;
                            record(&mut st.latency, lat);
                        }
                    }
                    if measured_seq && step_latencies.len() < crate::stats::SEQ_STEPS_KEPT {
                        step_latencies.push(lat);
                    }
                    if a.server_ids && k == 0 {
                        match reply.seq_id {
                            Some(s) if s != 0 => id = s,
                            other => {
                                self.verify_failed(|| format!("START without id answered with sequence_id {other:?}"));
                                ok = false;
                                break;
                            }
                        }
                    } else if verify && reply.seq_id != Some(id) {
                        self.verify_failed(|| {
                            format!("sequence {id} step {k}: answer carries sequence_id {:?}", reply.seq_id)
                        });
                    }
                    if let Some(v) = value {
                        expected += v as f64;
                        let got = reply.verify_value;
                        if got.map(|g| (g as f64 - expected).abs() > 1e-3 * expected.abs().max(1.0)) != Some(false) {
                            self.verify_failed(|| format!("sequence {id} step {k}: expected {expected}, got {got:?}"));
                        }
                    }
                    if control == Control::End {
                        drained = draining;
                        break;
                    }
                    if fault == (Fault::Disconnect { step: k }) {
                        self.proto.disconnect(&self.conns[conn]);
                        self.stats.borrow_mut().disconnects += 1;
                    }
                }
                Err(e) => {
                    self.error(&e);
                    ok = false;
                    if matches!(e, CallError::Transport(_)) {
                        // The server is gone or refusing: do not spin.
                        glommio::timer::sleep(Duration::from_millis(100)).await;
                    }
                    break;
                }
            }
        }
        if ok {
            let mut st = self.stats.borrow_mut();
            st.sequences_completed_total += 1;
            if measured_seq && !drained && last_answer <= plan.measure_end && !plan.stop.load(Relaxed) {
                st.sequences += 1;
                record(&mut st.seq_duration, last_answer.saturating_duration_since(start).as_nanos() as u64);
                record(&mut st.seq_p99, p99_of(&mut step_latencies));
            }
        }
        self.live.set(self.live.get() - 1);
        plan.progress.live.fetch_sub(1, Relaxed);
        match self.interval {
            Some(iv) => start + iv * slots.max(1),
            None => Instant::now(),
        }
    }

    fn verify_failed(&self, detail: impl FnOnce() -> String) {
        self.plan.progress.verify_failures.fetch_add(1, Relaxed);
        self.stats.borrow_mut().verify_failure(detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn shares_add_up() {
        for total in [0, 1, 5, 64, 1001] {
            for parts in [1, 2, 3, 7] {
                assert_eq!((0..parts).map(|i| share(total, parts, i)).sum::<usize>(), total);
            }
        }
    }

    #[test]
    fn ids_do_not_collide_across_threads_or_namespaces() {
        let args = Args::parse_from(["loadgen"]);
        let p = Plan::new(args.clone(), Arc::new(AtomicBool::new(false)), 0xABCDEF, 1);
        let q = Plan::new(args, Arc::new(AtomicBool::new(false)), 0x000001, 1);
        assert_ne!(p.sequence_id(0, 5), p.sequence_id(1, 5));
        assert_ne!(p.sequence_id(0, 5), q.sequence_id(0, 5));
        assert_eq!(p.sequence_id(3, 7) >> 40, 0xABCDEF);
        assert_ne!(q.sequence_id(0, 0), 0);
    }

    #[test]
    fn faults_fall_on_middle_steps_in_their_proportions() {
        let args = Args::parse_from(["loadgen", "--cancel-fraction", "0.2", "--disconnect-fraction", "0.3"]);
        args.validate().unwrap();
        let mut rng = fastrand::Rng::with_seed(5);
        let (mut cancels, mut disconnects) = (0, 0);
        for _ in 0..10_000 {
            match Fault::draw(&args, 10, &mut rng) {
                Fault::Cancel { step, after } => {
                    assert!((1..9).contains(&step) && after <= Duration::from_millis(1));
                    cancels += 1;
                }
                Fault::Disconnect { step } => {
                    assert!((1..9).contains(&step));
                    disconnects += 1;
                }
                Fault::None => {}
            }
        }
        assert!((1_800..2_200).contains(&cancels), "{cancels} cancels of 10000 at 0.2");
        assert!((2_700..3_300).contains(&disconnects), "{disconnects} disconnects of 10000 at 0.3");
        // A sequence of START and END only has no middle step to fault.
        assert_eq!(Fault::draw(&args, 2, &mut rng), Fault::None);
        let too_much = Args::parse_from(["loadgen", "--cancel-fraction", "0.7", "--disconnect-fraction", "0.4"]);
        assert!(too_much.validate().is_err());
    }

    #[test]
    fn lengths_stay_in_range() {
        let args = Args::parse_from(["loadgen", "--sequence-length", "10", "--length-variation", "0.5"]);
        args.validate().unwrap();
        let p = Plan::new(args, Arc::new(AtomicBool::new(false)), 1, 1);
        let mut rng = fastrand::Rng::with_seed(3);
        let ls: Vec<u64> = (0..1000).map(|_| p.sample_length(&mut rng)).collect();
        assert!(ls.iter().all(|&l| (5..=15).contains(&l)));
        assert!(ls.contains(&5) && ls.contains(&15));
    }
}
