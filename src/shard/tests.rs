//! The shard core driven by a fake engine and a manual clock: the step logic, state residency and
//! eviction, the failure paths, expiry, and the mesh's bounds and fairness. No OpenVINO here;
//! the integration tests (tests/, tests/py/) run the same paths on the real runtime.

use super::clock::Clock;
use super::fake::{Control as FakeControl, FakeEngine, FAIL_INFER, PANIC_INFER};
use super::mesh::{
    MeshLimits, MeshPlan, CONTROL_PER_PEER_MAX, FORWARDED_PER_PEER_DEFAULT as OUTSTANDING_PER_PEER_MAX,
    WAITING_PER_FORWARDED,
};
use super::model::{batch_sizes, ModelInstance};
use super::{Shard, ShardId};
use crate::catalog::Use;
use crate::config::ModelConfig;
use crate::error::{Error, Kind};
use crate::request::{Control, InferJob, ModelIdx, Outcome, SequenceId, SequenceSpec};
use bytes::Bytes;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAITING_PER_PEER_MAX: usize = WAITING_PER_FORWARDED * OUTSTANDING_PER_PEER_MAX;

type Fake = ModelInstance<FakeEngine>;

fn config(nireq: u32, max: u32, timeout_s: u64) -> ModelConfig {
    let mut c = ModelConfig::new("sum".into(), "/nonexistent".into());
    c.stateful = true;
    c.nireq = nireq;
    // The fake's requests cost 1 MiB each: a budget of `nireq` MiB keeps the pool at `nireq`.
    c.resident_memory_mb = nireq as u64;
    c.max_sequence_number = max;
    c.sequence_timeout_seconds = timeout_s;
    c
}

fn live_counter() -> &'static AtomicU32 {
    Box::leak(Box::new(AtomicU32::new(0)))
}

fn instance(nireq: u32, max: u32) -> (Fake, Rc<FakeControl>, &'static AtomicU32) {
    let engine = FakeEngine::new();
    let control = engine.control.clone();
    let live = live_counter();
    let m = ModelInstance::new(engine, &config(nireq, max, 60), 1, live, true, 7).expect("fake model");
    (m, control, live)
}

fn job(id: u64, control: Control, x: f32) -> InferJob {
    InferJob {
        model: ModelIdx(0),
        any_version: true,
        sequence: Some(SequenceSpec { control, id: SequenceId::Num(id) }),
        inputs: vec![Bytes::copy_from_slice(&x.to_le_bytes())],
    }
}

fn value(o: &Outcome) -> f32 {
    f32::from_le_bytes(o.outputs[..4].try_into().expect("4 output bytes"))
}

/// One step on a one-shard model at time `now`; the running sum it answers.
fn step(m: &mut Fake, id: u64, control: Control, x: f32, now: u64) -> Result<f32, Error> {
    m.execute(job(id, control, x), now, ShardId(0), 1).map(|o| value(&o))
}

fn kind(r: Result<f32, Error>) -> Kind {
    r.expect_err("an error").kind
}

#[test]
fn running_sums_survive_more_sequences_than_infer_requests() {
    let (mut m, control, live) = instance(2, 100);
    let ids = [11u64, 12, 13, 14, 15];
    let mut sums = [0f32; 5];
    for (k, &id) in ids.iter().enumerate() {
        sums[k] = step(&mut m, id, Control::Start, k as f32, 0).unwrap();
        assert_eq!(sums[k], k as f32);
    }
    for round in 1..=4 {
        for (k, &id) in ids.iter().enumerate() {
            let x = (round * 10 + k) as f32;
            let expect = sums[k] + x;
            sums[k] = step(&mut m, id, Control::None, x, round as u64).unwrap();
            assert_eq!(sums[k], expect, "sequence {id} in round {round}");
        }
    }
    // Five sequences over two requests: every step past the first round swaps.
    assert!(control.saves.get() >= 20 && control.restores.get() >= 20);
    assert_eq!(live.load(Ordering::Relaxed), 5);
    for &id in &ids {
        step(&mut m, id, Control::End, 0.0, 9).unwrap();
    }
    assert_eq!(live.load(Ordering::Relaxed), 0);
    assert_eq!(m.live_sequences(), 0);
}

#[test]
fn resident_sequences_copy_no_state() {
    let (mut m, control, _) = instance(4, 100);
    for id in 1..=4 {
        step(&mut m, id, Control::Start, 1.0, 0).unwrap();
    }
    for t in 1..50 {
        for id in 1..=4 {
            step(&mut m, id, Control::None, 1.0, t).unwrap();
        }
    }
    assert_eq!((control.saves.get(), control.restores.get()), (0, 0));
    assert_eq!(control.resets.get(), 4, "one reset per START");
    assert_eq!(step(&mut m, 3, Control::None, 0.0, 99).unwrap(), 50.0);
}

/// A model whose pool starts at `nireq` requests and may grow to `budget` (MiB = fake requests).
fn instance_with_budget(nireq: u32, budget: u64, max: u32) -> (Fake, Rc<FakeControl>) {
    let engine = FakeEngine::new();
    let control = engine.control.clone();
    let mut c = config(nireq, max, 60);
    c.resident_memory_mb = budget;
    let m = ModelInstance::new(engine, &c, 1, live_counter(), true, 7).expect("fake model");
    (m, control)
}

#[test]
fn within_the_budget_every_live_sequence_stays_resident() {
    // Two requests made at start, room for 64: 40 sequences grow the pool to 40 and no step
    // ever copies a state.
    let (mut m, control) = instance_with_budget(2, 64, 1000);
    assert_eq!((m.infer_requests(), m.infer_requests_max()), (2, 64));
    for id in 1..=40 {
        step(&mut m, id, Control::Start, id as f32, 0).unwrap();
    }
    for t in 1..=10 {
        for id in 1..=40 {
            assert_eq!(step(&mut m, id, Control::None, 1.0, t).unwrap(), id as f32 + t as f32);
        }
    }
    assert_eq!((control.saves.get(), control.restores.get()), (0, 0));
    assert_eq!((m.infer_requests(), m.resident_sequences()), (40, 40));
    assert_eq!(control.created.get(), 40);
    // Ended sequences give their requests back; new ones reuse them instead of growing the pool.
    for id in 1..=20 {
        step(&mut m, id, Control::End, 0.0, 11).unwrap();
    }
    assert_eq!(m.resident_sequences(), 20);
    for id in 101..=120 {
        step(&mut m, id, Control::Start, 1.0, 12).unwrap();
    }
    assert_eq!((m.infer_requests(), control.created.get()), (40, 40));
    assert_eq!((m.counters.swaps_out, m.counters.swaps_in), (0, 0));
}

#[test]
fn past_the_budget_the_least_recently_stepped_sequence_is_swapped_out() {
    // Room for 3 requests, 5 sequences stepped round robin: the pool stays at 3, every step
    // past the first round swaps the coldest one out, and every sum stays exact.
    let (mut m, control) = instance_with_budget(1, 3, 1000);
    let mut sums = [0f32; 5];
    for (k, id) in (1..=5u64).enumerate() {
        sums[k] = step(&mut m, id, Control::Start, k as f32, 0).unwrap();
    }
    assert_eq!((m.infer_requests(), m.resident_sequences()), (3, 3));
    // Sequences 3, 4, 5 are resident: stepping them copies nothing.
    let before = (control.saves.get(), control.restores.get());
    for (k, id) in (3..=5u64).enumerate() {
        sums[k + 2] = step(&mut m, id, Control::None, 1.0, 1).unwrap();
    }
    assert_eq!((control.saves.get(), control.restores.get()), before);
    // Sequence 1 was swapped out (it was the coldest when 4 started): it comes back in place of
    // the now coldest, sequence 3, and so on.
    for round in 2..=6u64 {
        for (k, id) in (1..=5u64).enumerate() {
            let expect = sums[k] + round as f32;
            sums[k] = step(&mut m, id, Control::None, round as f32, round).unwrap();
            assert_eq!(sums[k], expect, "sequence {id} in round {round}");
        }
    }
    assert_eq!((m.infer_requests(), m.resident_sequences()), (3, 3));
    assert_eq!(control.created.get(), 3);
    assert!(m.counters.swaps_out >= 25 && m.counters.swaps_in >= 25, "{:?}", m.counters);
    assert_eq!(control.saves.get(), m.counters.swaps_out, "one variable per swap");
}

#[test]
fn a_request_that_cannot_be_made_means_a_swap_not_an_error() {
    let (mut m, control) = instance_with_budget(1, 8, 1000);
    step(&mut m, 1, Control::Start, 1.0, 0).unwrap();
    control.fail_create.set(true);
    assert_eq!(step(&mut m, 2, Control::Start, 2.0, 0).unwrap(), 2.0);
    assert_eq!(step(&mut m, 1, Control::None, 1.0, 1).unwrap(), 2.0);
    assert_eq!(m.infer_requests(), 1);
    control.fail_create.set(false);
    assert_eq!(step(&mut m, 2, Control::None, 1.0, 2).unwrap(), 3.0);
    assert_eq!(m.infer_requests(), 2);
}

#[test]
fn the_pool_cap_follows_the_budget_and_the_sequence_limit() {
    use super::model::requests_max;
    let mut c = config(4, 500, 60);
    c.resident_memory_mb = 64;
    // 64 MiB of 9 KiB requests, capped by max_sequence_number (the real estimate is larger).
    assert_eq!(requests_max(&c, 4, 9 * 1024), 500);
    c.max_sequence_number = 1_000_000;
    assert_eq!(requests_max(&c, 4, 9 * 1024), 7281);
    // Never below the requests made at start, never above what a sequence can name.
    c.resident_memory_mb = 0;
    assert_eq!(requests_max(&c, 4, 9 * 1024), 4);
    c.resident_memory_mb = 1 << 20;
    assert_eq!(requests_max(&c, 4, 1), super::pool::REQUESTS_MAX);
    // A stateless model keeps what it made at start.
    c.stateful = false;
    assert_eq!(requests_max(&c, 4, 9 * 1024), 4);
}

#[test]
fn a_failed_inference_ends_its_sequence_and_no_other() {
    let (mut m, _, live) = instance(2, 100);
    step(&mut m, 1, Control::Start, 5.0, 0).unwrap();
    step(&mut m, 2, Control::Start, 7.0, 0).unwrap();
    assert_eq!(kind(step(&mut m, 1, Control::None, FAIL_INFER, 1)), Kind::Internal);
    assert_eq!(kind(step(&mut m, 1, Control::None, 1.0, 2)), Kind::SequenceMissing);
    assert_eq!(step(&mut m, 2, Control::None, 1.0, 2).unwrap(), 8.0);
    assert_eq!(live.load(Ordering::Relaxed), 1);
    assert_eq!(m.counters.failed, 2, "the failed step and the step on the ended sequence");
    // The id is free again.
    assert_eq!(step(&mut m, 1, Control::Start, 3.0, 3).unwrap(), 3.0);
}

#[test]
fn a_failed_state_save_ends_the_evicted_sequence_not_the_one_being_bound() {
    let (mut m, control, live) = instance(1, 100);
    step(&mut m, 1, Control::Start, 5.0, 0).unwrap();
    control.fail_save.set(true);
    // Sequence 2 needs the only request; saving 1's state fails: 1 is ended, 2 runs.
    assert_eq!(step(&mut m, 2, Control::Start, 7.0, 1).unwrap(), 7.0);
    control.fail_save.set(false);
    assert_eq!(kind(step(&mut m, 1, Control::None, 1.0, 2)), Kind::SequenceMissing);
    assert_eq!(step(&mut m, 2, Control::None, 1.0, 2).unwrap(), 8.0);
    assert_eq!(live.load(Ordering::Relaxed), 1);
}

#[test]
fn max_sequence_number_is_exact_and_given_back() {
    let (mut m, _, live) = instance(2, 2);
    step(&mut m, 1, Control::Start, 1.0, 0).unwrap();
    step(&mut m, 2, Control::Start, 1.0, 0).unwrap();
    // OVMS's order: with the budget spent even a duplicate id is "max reached".
    assert_eq!(kind(step(&mut m, 1, Control::Start, 1.0, 0)), Kind::MaxSequenceNumberReached);
    assert_eq!(kind(step(&mut m, 3, Control::Start, 1.0, 0)), Kind::MaxSequenceNumberReached);
    assert_eq!(m.counters.rejected_max, 2);
    step(&mut m, 2, Control::End, 1.0, 1).unwrap();
    assert_eq!(kind(step(&mut m, 1, Control::Start, 1.0, 1)), Kind::SequenceAlreadyExists);
    assert_eq!(live.load(Ordering::Relaxed), 1, "a refused duplicate gives its unit back");
    assert_eq!(step(&mut m, 3, Control::Start, 4.0, 1).unwrap(), 4.0);
    assert_eq!(live.load(Ordering::Relaxed), 2);
}

#[test]
fn a_start_without_an_id_gets_a_fresh_one() {
    let (mut m, _, _) = instance(2, 10);
    let a = m.execute(job(0, Control::Start, 1.0), 0, ShardId(0), 1).unwrap();
    let b = m.execute(job(0, Control::Start, 2.0), 0, ShardId(0), 1).unwrap();
    assert_eq!((a.sequence_id, b.sequence_id), (Some(SequenceId::Num(1)), Some(SequenceId::Num(2))));
    // A client-chosen 3 makes the next assigned id skip it.
    step(&mut m, 3, Control::Start, 1.0, 0).unwrap();
    let c = m.execute(job(0, Control::Start, 1.0), 0, ShardId(0), 1).unwrap();
    assert_eq!(c.sequence_id, Some(SequenceId::Num(4)));
}

#[test]
fn expiry_follows_the_clock_and_activity() {
    let (mut m, _, live) = instance(2, 10);
    step(&mut m, 1, Control::Start, 1.0, 0).unwrap();
    step(&mut m, 2, Control::Start, 1.0, 500).unwrap();
    assert_eq!(m.expire(59_999), 0);
    assert_eq!(m.expire(60_000), 1, "sequence 1 has been idle for 60 s");
    step(&mut m, 2, Control::None, 1.0, 60_000).unwrap();
    assert_eq!(m.expire(119_999), 0, "activity restarted sequence 2's timeout");
    assert_eq!(m.expire(120_000), 1);
    assert_eq!((live.load(Ordering::Relaxed), m.counters.expired), (0, 2));
    assert_eq!(kind(step(&mut m, 1, Control::None, 1.0, 200_000)), Kind::SequenceMissing);
}

// ---- Shards on executors: a panic, the manual clock, and the mesh. ----

type Body = Box<dyn FnOnce(Rc<Shard<FakeEngine>>, Rc<FakeControl>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Runs one shard per body, each on its own executor with a fake model and a manual clock,
/// connected by a real mesh; returns when every body has finished.
fn run_shards(config: ModelConfig, bodies: Vec<Body>) {
    run_shards_with(MeshLimits::default(), config, bodies)
}

/// How long the shards of one test may run. Every such test takes well under a second; one
/// still running past this is deadlocked (a body blocking its thread while the other shard waits
/// for it), and the test binary stops at once, naming it, instead of hanging the suite, and CI,
/// until the suite's own time runs out.
const SHARDS_DEADLINE: Duration = Duration::from_secs(120);

/// Sets its flag when dropped: the shards are done, returned or panicked.
struct DoneOnDrop(&'static AtomicBool);

impl Drop for DoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn watch_for_deadlock() -> DoneOnDrop {
    let test = std::thread::current().name().unwrap_or("a shard test").to_string();
    let done: &'static AtomicBool = Box::leak(Box::default());
    let t0 = Instant::now();
    std::thread::spawn(move || {
        while !done.load(Ordering::Acquire) {
            if t0.elapsed() > SHARDS_DEADLINE {
                // Straight to stderr: the test harness captures eprintln! and would lose it.
                let secs = SHARDS_DEADLINE.as_secs();
                let _ =
                    writeln!(std::io::stderr(), "{test}: its shards still run after {secs} s, deadlocked; stopping");
                std::process::exit(101);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    DoneOnDrop(done)
}

/// `run_shards` with a mesh of other limits.
fn run_shards_with(limits: MeshLimits, config: ModelConfig, bodies: Vec<Body>) {
    let _watch = watch_for_deadlock();
    let shards = bodies.len();
    let mut plan = MeshPlan::new(shards, limits);
    let live = live_counter();
    let finished: &'static std::sync::atomic::AtomicUsize = Box::leak(Box::default());
    let handles: Vec<_> = bodies
        .into_iter()
        .enumerate()
        .map(|(s, body)| {
            let ends = plan.take(s);
            let config = config.clone();
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .name(&format!("test-shard-{s}"))
                .spawn(move || async move {
                    let engine = FakeEngine::new();
                    let control = engine.control.clone();
                    let batched: Vec<FakeEngine> =
                        batch_sizes(config.max_batch_size as usize).into_iter().map(|b| engine.batched(b)).collect();
                    let mut model = ModelInstance::new(engine, &config, 1, live, true, s as u64).expect("fake model");
                    if !batched.is_empty() {
                        model.enable_batching(batched).expect("batching");
                    }
                    let (mesh, receivers) = ends.connect(ShardId(s as u16)).await;
                    let shard = Rc::new(
                        Shard::new(ShardId(s as u16), shards as u16, None, None, vec![model], mesh, Clock::manual(0))
                            .with_plan(serde_json::json!({ "planned_shards": shards })),
                    );
                    // glommio runs a task it spawns at once, up to its first pending await: the
                    // peer's messages already queued would be served before the body starts. A
                    // body that blocks its thread to hold this shard up must block before that.
                    for rx in receivers {
                        let sh = shard.clone();
                        glommio::spawn_local(async move {
                            crate::sched::yield_now().await;
                            sh.serve_peer(rx).await
                        })
                        .detach();
                    }
                    shard.spawn_batch_runners();
                    body(shard, control).await;
                    // Serve the peers until every body is done: a peer may still wait for us.
                    finished.fetch_add(1, Ordering::AcqRel);
                    while finished.load(Ordering::Acquire) < shards {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                })
                .expect("executor")
        })
        .collect();
    for h in handles {
        h.join().expect("shard thread");
    }
}

/// Ids that shard `owner` of `shards` owns.
fn ids_owned_by(owner: u16, shards: u16, n: usize) -> Vec<u64> {
    (1u64..).filter(|&id| super::shard_of(id, shards) == ShardId(owner)).take(n).collect()
}

#[test]
fn a_panic_in_a_step_fails_that_request_and_the_shard_serves_on() {
    run_shards(
        config(2, 10, 60),
        vec![Box::new(|shard: Rc<Shard<FakeEngine>>, _| {
            Box::pin(async move {
                shard.execute(job(1, Control::Start, 2.0)).unwrap();
                shard.execute(job(2, Control::Start, 3.0)).unwrap();
                let e = shard.execute(job(1, Control::None, PANIC_INFER)).unwrap_err();
                assert_eq!(e.kind, Kind::Internal);
                // The panicking sequence is ended; the other is untouched; the shard serves on.
                assert_eq!(shard.execute(job(1, Control::None, 1.0)).unwrap_err().kind, Kind::SequenceMissing);
                assert_eq!(value(&shard.execute(job(2, Control::None, 1.0)).unwrap()), 4.0);
                assert_eq!(value(&shard.execute(job(1, Control::Start, 5.0)).unwrap()), 5.0);
                let stats = shard.local_stats();
                assert_eq!(stats["models"][0]["live_sequences"], 2);
            })
        })],
    );
}

#[test]
fn the_expiry_tick_reads_the_shards_clock() {
    run_shards(
        config(2, 10, 1),
        vec![Box::new(|shard: Rc<Shard<FakeEngine>>, _| {
            Box::pin(async move {
                shard.execute(job(1, Control::Start, 1.0)).unwrap();
                shard.clock().advance_ms(999);
                assert_eq!(shard.expire_now(), 0);
                shard.execute(job(1, Control::None, 1.0)).unwrap();
                shard.clock().advance_ms(999);
                assert_eq!(shard.expire_now(), 0, "the step restarted the timeout");
                shard.clock().advance_ms(1);
                assert_eq!(shard.expire_now(), 1);
                assert_eq!(shard.execute(job(1, Control::None, 1.0)).unwrap_err().kind, Kind::SequenceMissing);
            })
        })],
    );
}

#[test]
fn a_step_for_another_shard_runs_on_its_owner() {
    let id = ids_owned_by(1, 2, 1)[0];
    let (done_tx, done_rx) = mpsc::channel::<()>();
    run_shards(
        config(2, 10, 60),
        vec![
            Box::new(move |shard: Rc<Shard<FakeEngine>>, control| {
                Box::pin(async move {
                    assert_eq!(value(&shard.run(job(id, Control::Start, 2.0)).await.unwrap()), 2.0);
                    assert_eq!(value(&shard.run(job(id, Control::None, 3.0)).await.unwrap()), 5.0);
                    assert!(control.inferred.borrow().is_empty(), "nothing ran on the shard the client reached");
                    let stats = shard.all_stats().await.unwrap();
                    assert_eq!(stats["shards"][1]["models"][0]["live_sequences"], 1);
                    assert_eq!(stats["shards"][1]["forwarded_in"], 2);
                    assert_eq!(stats["plan"]["planned_shards"], 2, "the introspection answer carries the plan");
                    done_tx.send(()).unwrap();
                })
            }),
            Box::new(move |_shard, control: Rc<FakeControl>| {
                Box::pin(async move {
                    wait_for(&done_rx).await;
                    assert_eq!(*control.inferred.borrow(), vec![2.0, 3.0]);
                })
            }),
        ],
    );
}

/// Waits, without blocking the executor, for a message from another thread.
async fn wait_for(rx: &mpsc::Receiver<()>) {
    loop {
        match rx.try_recv() {
            Ok(()) => return,
            Err(mpsc::TryRecvError::Empty) => glommio::timer::sleep(Duration::from_millis(1)).await,
            Err(mpsc::TryRecvError::Disconnected) => panic!("the other shard is gone"),
        }
    }
}

#[test]
fn past_the_outstanding_bounds_a_step_waits_its_time_and_a_scrape_is_refused_at_once() {
    let mut ids = ids_owned_by(1, 2, OUTSTANDING_PER_PEER_MAX + 1);
    let one_more = ids.pop().unwrap();
    let starts = OUTSTANDING_PER_PEER_MAX;
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let (checked_tx, checked_rx) = mpsc::channel::<()>();
    // The bound fills exactly (no step waits); the one more waits 50 ms for room.
    let limits = MeshLimits { forward_wait: Duration::from_millis(50), ..MeshLimits::default() };
    run_shards_with(
        limits,
        config(4, OUTSTANDING_PER_PEER_MAX as u32 + 10, 60),
        vec![
            Box::new(move |shard: Rc<Shard<FakeEngine>>, _| {
                Box::pin(async move {
                    // Fill the steps' bound with STARTs; with it full, statistics and metrics
                    // requests still go, up to their own bound.
                    let mut tasks = Vec::new();
                    for &id in &ids {
                        let sh = shard.clone();
                        tasks.push(glommio::spawn_local(async move {
                            sh.run(job(id, Control::Start, 1.0)).await.map(|o| value(&o))
                        }));
                    }
                    crate::sched::yield_now().await;
                    while shard.mesh.outstanding(ShardId(1)) < OUTSTANDING_PER_PEER_MAX {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                    for k in 0..CONTROL_PER_PEER_MAX {
                        let sh = shard.clone();
                        tasks.push(glommio::spawn_local(async move {
                            match k % 2 {
                                0 => sh.mesh.stats(ShardId(1)).await.map(|_| 0.0),
                                _ => sh.mesh.metrics(ShardId(1)).await.map(|_| 0.0),
                            }
                        }));
                    }
                    crate::sched::yield_now().await;
                    while shard.mesh.outstanding(ShardId(1)) < OUTSTANDING_PER_PEER_MAX + CONTROL_PER_PEER_MAX {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                    // The peer is blocked: one more statistics or metrics request is refused at
                    // once, one more step after waiting its time for room.
                    let stats = shard.all_stats().await.unwrap_err();
                    let metrics = shard.scrape().await.unwrap_err();
                    let t0 = Instant::now();
                    let infer = shard.run(job(one_more, Control::Start, 1.0)).await.unwrap_err();
                    assert!(t0.elapsed() >= Duration::from_millis(50), "{:?}", t0.elapsed());
                    assert!(infer.to_string().contains("none answered within 50 ms"), "{infer}");
                    assert_eq!(shard.mesh.waiting(ShardId(1)), 0, "the refused step left the queue");
                    for e in [infer, stats, metrics] {
                        assert_eq!(e.kind, Kind::ResourceExhausted, "{e}");
                    }
                    sent_tx.send(()).unwrap();
                    for t in tasks {
                        t.await.expect("every request within the bound is answered");
                    }
                    assert_eq!(shard.mesh.outstanding(ShardId(1)), 0);
                    checked_rx.recv().unwrap();
                })
            }),
            Box::new(move |shard: Rc<Shard<FakeEngine>>, _| {
                Box::pin(async move {
                    // Blocks this shard's thread, so nothing is answered until the check is done.
                    sent_rx.recv().unwrap();
                    while shard.local_stats()["models"][0]["live_sequences"] != starts {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                    checked_tx.send(()).unwrap();
                })
            }),
        ],
    );
}

#[test]
fn steps_past_the_bound_wait_for_room_in_order_and_past_the_queue_are_refused() {
    // The owner is held up while the bound and the whole queue fill; then every step waiting is
    // answered (none refused, however long the hold), and one more than the queue holds was
    // refused at once.
    let n = OUTSTANDING_PER_PEER_MAX + WAITING_PER_PEER_MAX;
    let mut ids = ids_owned_by(1, 2, n + 1);
    let one_more = ids.pop().unwrap();
    let (full_tx, full_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let limits = MeshLimits { forward_wait: Duration::from_secs(600), ..MeshLimits::default() };
    run_shards_with(
        limits,
        config(4, n as u32 + 10, 600),
        vec![
            Box::new(move |shard: Rc<Shard<FakeEngine>>, _| {
                Box::pin(async move {
                    let mut tasks = Vec::new();
                    for (i, &id) in ids.iter().enumerate() {
                        let sh = shard.clone();
                        tasks.push(glommio::spawn_local(async move {
                            sh.run(job(id, Control::Start, i as f32)).await.map(|o| value(&o))
                        }));
                    }
                    while shard.mesh.waiting(ShardId(1)) < WAITING_PER_PEER_MAX {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                    assert_eq!(shard.mesh.outstanding(ShardId(1)), OUTSTANDING_PER_PEER_MAX);
                    let t0 = Instant::now();
                    let e = shard.run(job(one_more, Control::Start, 1.0)).await.unwrap_err();
                    assert!(t0.elapsed() < Duration::from_secs(1), "refused at once");
                    assert_eq!(e.kind, Kind::ResourceExhausted, "{e}");
                    assert!(e.to_string().contains(&format!("and {WAITING_PER_PEER_MAX} more queued")), "{e}");
                    full_tx.send(()).unwrap();
                    for (i, t) in tasks.into_iter().enumerate() {
                        assert_eq!(t.await.expect("every waiting step is answered"), i as f32, "step {i}");
                    }
                    assert_eq!((shard.mesh.outstanding(ShardId(1)), shard.mesh.waiting(ShardId(1))), (0, 0));
                    done_rx.recv().unwrap();
                })
            }),
            Box::new(move |shard: Rc<Shard<FakeEngine>>, _| {
                Box::pin(async move {
                    // Blocks this shard's thread until the other has seen the queue full.
                    full_rx.recv().unwrap();
                    while shard.local_stats()["models"][0]["live_sequences"] != n {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                    done_tx.send(()).unwrap();
                })
            }),
        ],
    );
}

#[test]
fn an_abandoned_forward_holds_its_place_until_its_answer_arrives() {
    let id = ids_owned_by(1, 2, 1)[0];
    let (dropped_tx, dropped_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    run_shards(
        config(2, 10, 60),
        vec![
            Box::new(move |shard: Rc<Shard<FakeEngine>>, _| {
                Box::pin(async move {
                    let sh = shard.clone();
                    let task = glommio::spawn_local(async move { sh.run(job(id, Control::Start, 4.0)).await });
                    while shard.mesh.outstanding(ShardId(1)) == 0 {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                    // The client goes away: its request is cancelled, its place is not freed.
                    drop(task);
                    assert_eq!(shard.mesh.outstanding(ShardId(1)), 1);
                    dropped_tx.send(()).unwrap();
                    while shard.mesh.outstanding(ShardId(1)) != 0 {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                    // The step ran on the owner; the sequence lives on for the client to resume.
                    assert_eq!(value(&shard.run(job(id, Control::End, 1.0)).await.unwrap()), 5.0);
                    done_tx.send(()).unwrap();
                })
            }),
            Box::new(move |_shard, _| {
                Box::pin(async move {
                    dropped_rx.recv().unwrap();
                    wait_for(&done_rx).await;
                })
            }),
        ],
    );
}

#[test]
fn forwarded_work_yields_to_the_owners_own_requests() {
    const FORWARDED: usize = 60;
    const LOCAL: usize = 20;
    let mut ids = ids_owned_by(1, 2, FORWARDED + 1);
    let own = ids.pop().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    run_shards(
        config(4, 1000, 60),
        vec![
            Box::new(move |shard: Rc<Shard<FakeEngine>>, _| {
                Box::pin(async move {
                    wait_for(&ready_rx).await;
                    let tasks: Vec<_> = ids
                        .iter()
                        .map(|&id| {
                            let sh = shard.clone();
                            glommio::spawn_local(async move { sh.run(job(id, Control::StartEnd, 1.0)).await })
                        })
                        .collect();
                    while shard.mesh.outstanding(ShardId(1)) < FORWARDED {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                    sent_tx.send(()).unwrap();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    wait_for(&done_rx).await;
                })
            }),
            Box::new(move |shard: Rc<Shard<FakeEngine>>, control: Rc<FakeControl>| {
                Box::pin(async move {
                    control.infer_time.set(Duration::from_micros(100));
                    ready_tx.send(()).unwrap();
                    // Blocks this thread until all the forwarded requests wait in the channel.
                    sent_rx.recv().unwrap();
                    // This shard's own client: one step at a time, as a connection's rounds do.
                    shard.execute(job(own, Control::Start, 2.0)).unwrap();
                    for _ in 1..LOCAL {
                        crate::sched::yield_now().await;
                        shard.execute(job(own, Control::None, 2.0)).unwrap();
                    }
                    let order = control.inferred.borrow().clone();
                    done_tx.send(()).unwrap();
                    // With the drain unbudgeted, all 60 forwarded steps ran back to back; with a
                    // 300 µs budget and 100 µs steps, a run is at most 3 steps (a slower machine
                    // only shortens it: the budget counts real time), plus slack for one.
                    let longest = order.split(|&x| x == 2.0).map(<[f32]>::len).max().unwrap_or(0);
                    assert!(longest <= 4, "{longest} forwarded steps ran back to back: {order:?}");
                })
            }),
        ],
    );
}

// ---- Batching steps of different sequences (max_batch_size > 1). ----

fn batching_config(max_batch: u32, delay_us: u64) -> ModelConfig {
    let mut c = config(2, 100, 60);
    c.max_batch_size = max_batch;
    c.max_queue_delay_us = delay_us;
    c
}

fn batching_instance(max_batch: usize) -> (Fake, Rc<FakeControl>) {
    let engine = FakeEngine::new();
    let control = engine.control.clone();
    let batched = batch_sizes(max_batch).into_iter().map(|b| engine.batched(b)).collect();
    let mut m = ModelInstance::new(engine, &batching_config(max_batch as u32, 0), 1, live_counter(), true, 7)
        .expect("fake model");
    m.enable_batching(batched).expect("batching");
    (m, control)
}

/// Runs `steps` as one batch on a one-shard model; the running sums (or errors) in order.
fn batch(m: &mut Fake, steps: &[(u64, Control, f32)], now: u64) -> Vec<Result<f32, Kind>> {
    let mut jobs: Vec<InferJob> = steps.iter().map(|&(id, c, x)| job(id, c, x)).collect();
    let mut out = Vec::new();
    let arrived = vec![std::time::Instant::now(); jobs.len()];
    m.execute_batch(&mut jobs, &arrived, now, ShardId(0), 1, &mut out);
    out.into_iter().map(|r| r.map(|o| value(&o)).map_err(|e| e.kind)).collect()
}

#[test]
fn batch_sizes_are_powers_of_two_up_to_the_maximum() {
    assert_eq!(batch_sizes(1), Vec::<usize>::new());
    assert_eq!(batch_sizes(2), vec![2]);
    assert_eq!(batch_sizes(6), vec![2, 4, 6]);
    assert_eq!(batch_sizes(8), vec![2, 4, 8]);
}

#[test]
fn a_batched_step_equals_each_sequence_run_alone() {
    let (mut m, control) = batching_instance(4);
    let probed = control.batched_infers.get();
    let (mut alone, _, _) = instance(2, 100);
    for id in 1..=5u64 {
        assert_eq!(step(&mut m, id, Control::Start, id as f32, 0).unwrap(), id as f32);
        step(&mut alone, id, Control::Start, id as f32, 0).unwrap();
    }
    // Three sequences at batch 4 (one padding row), then four, then two; a sequence resident in
    // a batch-1 request joins with its state moved out first, and steps alone again afterwards.
    let rounds: [&[u64]; 4] = [&[1, 2, 3], &[2, 3, 4, 5], &[5, 1], &[4]];
    for (r, ids) in rounds.iter().enumerate() {
        let steps: Vec<_> = ids.iter().map(|&id| (id, Control::None, (r * 10) as f32 + id as f32 / 4.0)).collect();
        let got = batch(&mut m, &steps, 1);
        let want: Vec<_> = steps.iter().map(|&(id, c, x)| step(&mut alone, id, c, x, 1).map_err(|e| e.kind)).collect();
        assert_eq!(got, want, "round {r}");
    }
    assert_eq!(control.batched_infers.get() - probed, 3, "the lone step ran on the resident path");
    assert_eq!(m.counters.batches, 3);
    assert_eq!(m.counters.batched_steps, 9);
    for id in 1..=5u64 {
        assert_eq!(step(&mut m, id, Control::None, 0.0, 2), step(&mut alone, id, Control::None, 0.0, 2));
    }
}

#[test]
fn a_batch_ends_sequences_and_reports_missing_ones_without_disturbing_the_others() {
    let (mut m, _) = batching_instance(4);
    for id in 1..=3u64 {
        step(&mut m, id, Control::Start, 1.0, 0).unwrap();
    }
    let got = batch(&mut m, &[(1, Control::End, 1.0), (9, Control::None, 1.0), (2, Control::None, 2.0)], 1);
    assert_eq!(got, vec![Ok(2.0), Err(Kind::SequenceMissing), Ok(3.0)]);
    assert_eq!(m.live_sequences(), 2);
    assert_eq!(kind(step(&mut m, 1, Control::None, 1.0, 2)), Kind::SequenceMissing);
    assert_eq!(step(&mut m, 3, Control::None, 1.0, 2).unwrap(), 2.0);
}

#[test]
fn a_failed_batched_inference_ends_its_members_only() {
    let (mut m, _) = batching_instance(4);
    for id in 1..=4u64 {
        step(&mut m, id, Control::Start, 1.0, 0).unwrap();
    }
    let got = batch(&mut m, &[(1, Control::None, 1.0), (2, Control::None, FAIL_INFER), (3, Control::None, 1.0)], 1);
    assert_eq!(got, vec![Err(Kind::Internal); 3]);
    for id in 1..=3u64 {
        assert_eq!(kind(step(&mut m, id, Control::None, 1.0, 2)), Kind::SequenceMissing);
    }
    assert_eq!(step(&mut m, 4, Control::None, 1.0, 2).unwrap(), 2.0);
    assert_eq!(m.live_sequences(), 1);
}

#[test]
fn batching_is_refused_when_batched_rows_differ_from_the_step_alone() {
    let engine = FakeEngine::new();
    engine.control.batched_skew.set(1e-3);
    let batched = vec![engine.batched(2)];
    let mut m = ModelInstance::new(engine, &batching_config(2, 0), 1, live_counter(), true, 7).expect("fake model");
    let e = m.enable_batching(batched).expect_err("skewed rows must be refused");
    assert!(e.contains("differs from the same sequence run alone"), "{e}");
    assert_eq!(m.batch_max(), 1);
    // And a batched compilation whose rows do not match the model is refused too.
    let engine = FakeEngine::new();
    let wrong = vec![FakeEngine::new()];
    let mut m = ModelInstance::new(engine, &batching_config(2, 0), 1, live_counter(), true, 7).expect("fake model");
    assert!(m.enable_batching(wrong).is_err());
}

/// Steps of `ids`, `steps_each` per sequence, each step its own task as a connection spawns
/// them; returns every sequence's final sum.
async fn concurrent_steps(shard: &Rc<Shard<FakeEngine>>, ids: &[u64], steps_each: usize) -> Vec<f32> {
    for &id in ids {
        shard.run(job(id, Control::Start, 0.0)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for k in 0..steps_each {
        for &id in ids {
            let sh = shard.clone();
            // Every step of a sequence queued at once: they must still run in order, one per batch.
            tasks.push(glommio::spawn_local(async move {
                value(&sh.run(job(id, Control::None, (k + 1) as f32 * id as f32)).await.unwrap())
            }));
        }
    }
    let mut last = vec![0.0; ids.len()];
    for (i, t) in tasks.into_iter().enumerate() {
        last[i % ids.len()] = t.await;
    }
    last
}

#[test]
fn steps_queued_together_run_as_batches_in_each_sequences_order() {
    run_shards(
        batching_config(4, 0),
        vec![Box::new(|shard: Rc<Shard<FakeEngine>>, control: Rc<FakeControl>| {
            Box::pin(async move {
                let probed = control.batched_infers.get();
                let ids = [1u64, 2, 3, 4, 5, 6];
                let sums = concurrent_steps(&shard, &ids, 5).await;
                // Sum of k * id for k = 1..=5 is 15 * id, whatever the batches were.
                let want: Vec<f32> = ids.iter().map(|&id| 15.0 * id as f32).collect();
                assert_eq!(sums, want);
                let stats = shard.local_stats();
                let batches = stats["models"][0]["batches"].as_u64().unwrap();
                assert!(batches >= 8, "30 steps of 6 sequences in batches of at most 4: {batches}");
                assert_eq!(control.batched_infers.get() - probed, batches);
                assert_eq!(shard.local_stats()["models"][0]["steps"], 36);
            })
        })],
    );
}

#[test]
fn a_start_runs_after_the_queued_steps_of_its_sequence() {
    run_shards(
        batching_config(4, 0),
        vec![Box::new(|shard: Rc<Shard<FakeEngine>>, _| {
            Box::pin(async move {
                shard.run(job(1, Control::Start, 1.0)).await.unwrap();
                shard.run(job(2, Control::Start, 1.0)).await.unwrap();
                let (a, b) = (shard.clone(), shard.clone());
                let end = glommio::spawn_local(async move { a.run(job(1, Control::End, 1.0)).await });
                let other = glommio::spawn_local(async move { b.run(job(2, Control::None, 1.0)).await });
                // Queued, not run: the runner has not had its turn yet.
                let restart = shard.run(job(1, Control::Start, 7.0)).await.map(|o| value(&o));
                assert_eq!(restart, Ok(7.0), "the END ran first, so the id was free");
                assert_eq!(value(&end.await.unwrap()), 2.0);
                assert_eq!(value(&other.await.unwrap()), 2.0);
            })
        })],
    );
}

#[test]
fn a_panic_in_a_batched_step_fails_its_batch_and_the_shard_serves_on() {
    run_shards(
        batching_config(4, 0),
        vec![Box::new(|shard: Rc<Shard<FakeEngine>>, _| {
            Box::pin(async move {
                for id in 1..=3u64 {
                    shard.run(job(id, Control::Start, 1.0)).await.unwrap();
                }
                let tasks: Vec<_> = [(1u64, PANIC_INFER), (2, 1.0)]
                    .into_iter()
                    .map(|(id, x)| {
                        let sh = shard.clone();
                        glommio::spawn_local(async move { sh.run(job(id, Control::None, x)).await })
                    })
                    .collect();
                for t in tasks {
                    assert_eq!(t.await.unwrap_err().kind, Kind::Internal);
                }
                for id in [1u64, 2] {
                    assert_eq!(shard.run(job(id, Control::None, 1.0)).await.unwrap_err().kind, Kind::SequenceMissing);
                }
                assert_eq!(value(&shard.run(job(3, Control::None, 1.0)).await.unwrap()), 2.0);
                assert_eq!(shard.local_stats()["models"][0]["live_sequences"], 1);
            })
        })],
    );
}

#[test]
fn a_queue_delay_gathers_steps_that_arrive_apart() {
    run_shards(
        batching_config(4, 50_000),
        vec![Box::new(|shard: Rc<Shard<FakeEngine>>, control: Rc<FakeControl>| {
            Box::pin(async move {
                for id in 1..=2u64 {
                    shard.run(job(id, Control::Start, 1.0)).await.unwrap();
                }
                let probed = control.batched_infers.get();
                let sh = shard.clone();
                let first = glommio::spawn_local(async move { sh.run(job(1, Control::None, 1.0)).await });
                glommio::timer::sleep(Duration::from_millis(2)).await;
                let second = shard.run(job(2, Control::None, 2.0)).await;
                assert_eq!(value(&first.await.unwrap()), 2.0);
                assert_eq!(value(&second.unwrap()), 3.0);
                assert_eq!(control.batched_infers.get() - probed, 1, "the first step waited for the second");
            })
        })],
    );
}

#[test]
fn forwarded_steps_batch_on_their_owner() {
    let ids = ids_owned_by(1, 2, 4);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    // A long queue delay: with none, the owner runs each forwarded step alone whenever this
    // test's sender is descheduled between its sends (as on a loaded 2-CPU machine). The 12
    // steps fill three batches of 4, so the delay is never waited out.
    run_shards(
        batching_config(4, 5_000_000),
        vec![
            Box::new(move |shard: Rc<Shard<FakeEngine>>, _| {
                Box::pin(async move {
                    let sums = concurrent_steps(&shard, &ids, 3).await;
                    assert_eq!(sums, ids.iter().map(|&id| 6.0 * id as f32).collect::<Vec<_>>());
                    let stats = shard.all_stats().await.unwrap();
                    let batches = stats["shards"][1]["models"][0]["batches"].as_u64().unwrap();
                    assert!(batches >= 3, "12 forwarded steps of 4 sequences: {batches} batches");
                    done_tx.send(()).unwrap();
                })
            }),
            Box::new(move |_shard, _| Box::pin(async move { wait_for(&done_rx).await })),
        ],
    );
}

// ---- Model lifecycle: versions that come and go while sequences live. ----

/// A step of sequence `id` sent to instance `model` (`any_version`: the request named no version).
fn job_on(model: u16, any_version: bool, id: u64, control: Control, x: f32) -> InferJob {
    InferJob { model: ModelIdx(model), any_version, ..job(id, control, x) }
}

/// The fake model as version `version`, with its own live counter.
fn version(version: i64, max: u32) -> (Fake, &'static AtomicU32) {
    let live = live_counter();
    let m = ModelInstance::new(FakeEngine::new(), &config(2, max, 60), version, live, true, 9).expect("fake model");
    (m, live)
}

#[test]
fn a_sequence_stays_on_its_version_while_a_new_one_takes_new_sequences() {
    run_shards(
        config(2, 10, 60),
        vec![Box::new(|shard: Rc<Shard<FakeEngine>>, _| {
            Box::pin(async move {
                let run = |j: InferJob| shard.execute_placed(j);
                assert_eq!(value(&run(job_on(0, true, 1, Control::Start, 2.0)).unwrap()), 2.0);
                let (v2, live2) = version(2, 10);
                shard.install(ModelIdx(1), v2, Use::Available).unwrap();
                assert_eq!(shard.resolve("sum", None).unwrap().0, ModelIdx(1), "the new version is the default");
                // A step naming no version, resolved to version 2, runs where its sequence is.
                let o = run(job_on(1, true, 1, Control::None, 3.0)).unwrap();
                assert_eq!((value(&o), o.model), (5.0, ModelIdx(0)));
                // Naming version 2 explicitly: that version has no such sequence.
                assert_eq!(run(job_on(1, false, 1, Control::None, 3.0)).unwrap_err().kind, Kind::SequenceMissing);
                // New sequences start on version 2; an id alive on version 1 cannot start twice.
                let o = run(job_on(1, true, 2, Control::Start, 7.0)).unwrap();
                assert_eq!((value(&o), o.model), (7.0, ModelIdx(1)));
                assert_eq!(live2.load(Ordering::Relaxed), 1);
                assert_eq!(run(job_on(1, true, 1, Control::Start, 1.0)).unwrap_err().kind, Kind::SequenceAlreadyExists);
                // Version 1 unloading: no new sequence, the live one goes on to its END.
                assert!(shard.set_use(ModelIdx(0), Use::Unloading));
                assert_eq!(
                    run(job_on(0, false, 3, Control::Start, 1.0)).unwrap_err().kind,
                    Kind::ModelVersionUnloading
                );
                assert_eq!(value(&run(job_on(1, true, 1, Control::End, 1.0)).unwrap()), 6.0);
                assert_eq!(shard.unload(ModelIdx(0)), 0, "nothing left to drop");
                assert_eq!(
                    run(job_on(0, false, 1, Control::None, 1.0)).unwrap_err().kind,
                    Kind::ModelVersionNotLoadedAnymore
                );
                let stats = shard.local_stats();
                assert_eq!(stats["models"].as_array().unwrap().len(), 1);
                assert_eq!(stats["models"][0]["version"], 2);
                // A lower maximum applies to the live instance: STARTs wait until enough sequences end.
                assert!(shard.set_limits(ModelIdx(1), 1, Some(60_000)));
                assert_eq!(
                    run(job_on(1, true, 4, Control::Start, 1.0)).unwrap_err().kind,
                    Kind::MaxSequenceNumberReached
                );
                assert_eq!(value(&run(job_on(1, true, 2, Control::End, 1.0)).unwrap()), 8.0);
                assert_eq!(value(&run(job_on(1, true, 4, Control::Start, 1.0)).unwrap()), 1.0);
                // A shorter timeout applies to the live sequence too.
                assert!(shard.set_limits(ModelIdx(1), 1, Some(1_000)));
                shard.clock().advance_ms(1_000);
                assert_eq!(shard.expire_now(), 1);
                assert_eq!(live2.load(Ordering::Relaxed), 0);
            })
        })],
    );
}

#[test]
fn a_forwarded_step_finds_its_sequence_on_the_old_version() {
    let id = ids_owned_by(1, 2, 1)[0];
    let (installed_tx, installed_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    run_shards(
        config(2, 10, 60),
        vec![
            Box::new(move |shard: Rc<Shard<FakeEngine>>, _| {
                Box::pin(async move {
                    assert_eq!(value(&shard.run(job_on(0, true, id, Control::Start, 2.0)).await.unwrap()), 2.0);
                    shard.install(ModelIdx(1), version(2, 10).0, Use::Available).unwrap();
                    wait_for(&installed_rx).await;
                    let (default, _) = shard.resolve("sum", None).unwrap();
                    let o = shard.run(job_on(default.0, true, id, Control::None, 3.0)).await.unwrap();
                    assert_eq!((value(&o), o.model), (5.0, ModelIdx(0)), "ran on version 1 on the owner");
                    let o = shard.run(job_on(default.0, true, id + 2, Control::Start, 1.0)).await;
                    assert_eq!(o.map(|o| o.model).ok(), Some(ModelIdx(1)), "a new sequence starts on version 2");
                    done_tx.send(()).unwrap();
                })
            }),
            Box::new(move |shard: Rc<Shard<FakeEngine>>, _| {
                Box::pin(async move {
                    shard.install(ModelIdx(1), version(2, 10).0, Use::Available).unwrap();
                    installed_tx.send(()).unwrap();
                    wait_for(&done_rx).await;
                })
            }),
        ],
    );
}

// ---- Shutdown: drain, freeze, and sequences carried over by a snapshot. ----

#[test]
fn exported_sequences_continue_in_another_instance() {
    let (mut a, _, live_a) = instance(2, 10);
    for (id, x) in [(1u64, 1.0f32), (2, 2.0), (3, 3.0)] {
        step(&mut a, id, Control::Start, x, 0).unwrap();
    }
    step(&mut a, 1, Control::None, 10.0, 5).unwrap();
    // Three sequences over two requests: one state is in its buffer, two are resident.
    let saved = a.export(8);
    assert_eq!(
        saved.iter().map(|s| (s.id.clone(), s.steps, s.idle_ms)).collect::<Vec<_>>(),
        [(SequenceId::Num(2), 1, 8), (SequenceId::Num(3), 1, 8), (SequenceId::Num(1), 2, 3)]
    );
    let (mut b, _, live_b) = instance(2, 2);
    let mut refused = Vec::new();
    for s in saved.clone() {
        if let Err(why) = b.import(s, 100) {
            refused.push(why);
        }
    }
    assert_eq!(refused, ["max_sequence_number is reached"], "the budget holds across a restore");
    assert_eq!((live_a.load(Ordering::Relaxed), live_b.load(Ordering::Relaxed)), (3, 2));
    assert_eq!(step(&mut b, 2, Control::None, 1.0, 101).unwrap(), 3.0);
    assert_eq!(step(&mut b, 3, Control::End, 1.0, 101).unwrap(), 4.0);
    assert_eq!(b.import(saved[0].clone(), 102), Err("its id is already in use"));
    let mut wrong = saved[2].clone();
    wrong.state.push(0);
    assert_eq!(b.import(wrong, 102), Err("its state does not fit the model's variables"));
    assert_eq!(b.import(saved[2].clone(), 102), Ok(()));
    assert_eq!(step(&mut b, 1, Control::None, 1.0, 103).unwrap(), 12.0);
}

#[test]
fn a_draining_shard_refuses_starts_and_a_frozen_one_every_step() {
    run_shards(
        config(2, 10, 60),
        vec![Box::new(|shard: Rc<Shard<FakeEngine>>, _| {
            Box::pin(async move {
                assert_eq!(value(&shard.run(job(1, Control::Start, 2.0)).await.unwrap()), 2.0);
                shard.drain();
                assert!(shard.is_draining());
                let e = shard.run(job(2, Control::Start, 1.0)).await.unwrap_err();
                assert_eq!(e.kind, Kind::ServerShuttingDown);
                assert_eq!(value(&shard.run(job(1, Control::None, 1.0)).await.unwrap()), 3.0);
                shard.freeze();
                let e = shard.run(job(1, Control::None, 1.0)).await.unwrap_err();
                assert_eq!(e.kind, Kind::ServerShuttingDown);
                let exported = shard.export();
                assert_eq!(exported.len(), 1);
                assert_eq!(exported[0].1.len(), 1);
                assert_eq!(exported[0].1[0].state, 3.0f32.to_le_bytes());
            })
        })],
    );
}
