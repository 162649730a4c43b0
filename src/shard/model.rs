//! One model version as a shard holds it: its compiled model, its infer requests, and (when
//! stateful) its table of the sequences this shard owns. Execution is synchronous from sequence
//! lookup to state save: no await, so nothing else on the shard (another request, the expiry
//! timer) can see a sequence mid-step.
//!
//! How state is kept: each infer request remembers which sequence's state its variables hold
//! ("resident", `pool`). A step on a resident sequence skips the restore; a sequence that is not
//! resident gets a free request, or a new one while the pool is below its cap (the resident
//! memory budget over one request's memory), or else the least recently stepped sequence's
//! request, whose state is saved into that sequence's own buffer first. So every active sequence
//! stays resident within the budget, and the state of every sequence is always in exactly one
//! place on its own core.

use super::engine::{Engine, EngineError, EngineRequest};
use super::pool::{Pool, Taken, REQUESTS_MAX};
use super::router::{shard_of, shard_of_id, ShardId};
use super::sequences::{SequenceTable, SlotIdx};
use crate::catalog::ModelMeta;
use crate::config::ModelConfig;
use crate::error::{Error, Kind, Result};
use crate::metrics::{Histogram, ModelCounters, ModelSnapshot};
use crate::request::{InferJob, Outcome, SequenceId, SequenceSpec};
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// Expiries handled per model per timer tick; the rest wait for the next tick (bounded work).
pub const EXPIRIES_PER_TICK_MAX: usize = 10_000;

pub struct ModelInstance<E: Engine> {
    pub meta: ModelMeta,
    // Declared before `engine` so the infer requests are dropped first; the engine is kept for
    // as long as its requests live (and makes more of them as the pool grows).
    requests: Pool<E::Request>,
    engine: E,
    sequences: SequenceTable,
    /// Byte range of each variable inside a sequence's state buffer.
    state_ranges: Vec<std::ops::Range<usize>>,
    /// Live sequences of this model version on all shards; the only cross-core shared value,
    /// touched once at a sequence's birth and once at its death, never per step.
    live_total: &'static AtomicU32,
    max_sequences: u32,
    timeout_ms: Option<u64>,
    next_id: u64,
    /// Whether a failure to create another infer request has been logged (once per model).
    create_failure_logged: bool,
    /// What a step in progress holds, so that a panic in the middle of one can be undone
    /// (`recover_after_panic`): the sequence being stepped, and a budget unit taken for a START
    /// whose sequence is not in the table yet.
    in_step: Option<SlotIdx>,
    reserved_unplaced: bool,
    pub counters: ModelCounters,
    /// Time inside the engine's infer() (OVMS's ovms_inference_time_us).
    pub inference_us: Histogram,
    /// Time from the job reaching this shard to the start of infer(), state restore included
    /// (OVMS's ovms_wait_for_infer_req_time_us; no job ever waits for an infer request here).
    pub wait_us: Histogram,
    received: Option<Instant>,
}

impl<E: Engine> ModelInstance<E> {
    pub fn new(
        engine: E,
        config: &ModelConfig,
        version: i64,
        live_total: &'static AtomicU32,
        cleaner_enabled: bool,
        seed: u64,
    ) -> std::result::Result<ModelInstance<E>, String> {
        if config.stateful && engine.states().is_empty() {
            crate::log!(
                Warning,
                "model {:?} is configured stateful but has no variables (no ReadValue/Assign); \
                 sequences are tracked but carry no state",
                config.name
            );
        }
        let mut state_ranges = Vec::new();
        let mut at = 0;
        for s in engine.states() {
            state_ranges.push(at..at + s.byte_size);
            at += s.byte_size;
        }
        let nireq = config.nireq.max(1) as usize;
        let mut initial = Vec::with_capacity(nireq);
        for _ in 0..nireq {
            initial.push(engine.create_request().map_err(|e| format!("model {:?}: {e}", config.name))?);
        }
        let max = requests_max(config, nireq, engine.request_bytes());
        let requests = Pool::new(initial, max);
        let meta = ModelMeta {
            name: config.name.clone(),
            version,
            stateful: config.stateful,
            inputs: engine.inputs().to_vec(),
            outputs: engine.outputs().to_vec(),
            precision: engine.inference_precision().to_string(),
            execution_mode: engine.execution_mode().to_string(),
        };
        let reserve = (config.max_sequence_number as usize).min(4096);
        Ok(ModelInstance {
            meta,
            requests,
            engine,
            sequences: SequenceTable::new(at, if config.stateful { reserve } else { 0 }, seed),
            state_ranges,
            live_total,
            max_sequences: config.max_sequence_number,
            timeout_ms: config.idle_timeout_ms(cleaner_enabled),
            next_id: 1,
            create_failure_logged: false,
            in_step: None,
            reserved_unplaced: false,
            counters: ModelCounters::default(),
            inference_us: Histogram::new(),
            wait_us: Histogram::new(),
            received: None,
        })
    }

    pub fn live_sequences(&self) -> usize {
        self.sequences.len()
    }

    pub fn infer_requests(&self) -> usize {
        self.requests.len()
    }

    pub fn infer_requests_max(&self) -> usize {
        self.requests.max()
    }

    pub fn resident_sequences(&self) -> usize {
        self.requests.resident()
    }

    pub fn snapshot(&self) -> ModelSnapshot {
        ModelSnapshot {
            live_sequences: self.sequences.len() as u64,
            counters: self.counters,
            infer_requests: self.requests.len() as u64,
            infer_requests_max: self.requests.max() as u64,
            resident_sequences: self.requests.resident() as u64,
            inference_us: self.inference_us.clone(),
            wait_for_infer_req_us: self.wait_us.clone(),
        }
    }

    /// Live sequences with their step counts (least recently active first), at most `max`, as
    /// JSON pairs `[id, steps]` (a string id stays a string).
    pub fn sequence_steps(&self, max: usize) -> Vec<serde_json::Value> {
        self.sequences
            .iter()
            .take(max)
            .map(|s| match s.id() {
                SequenceId::Num(n) => serde_json::json!([n, s.steps]),
                SequenceId::Str(t) => serde_json::json!([t, s.steps]),
            })
            .collect()
    }

    /// Runs one request. `me`/`shards` let a server-assigned id land on this shard.
    pub fn execute(&mut self, job: InferJob, now_ms: u64, me: ShardId, shards: u16) -> Result<Outcome> {
        self.received = Some(Instant::now());
        let result = match job.sequence {
            None => self.execute_stateless(&job.inputs),
            Some(spec) => self.execute_step(spec, &job.inputs, now_ms, me, shards),
        };
        self.in_step = None;
        if result.is_err() {
            self.counters.failed += 1;
        }
        result
    }

    /// Undoes what a step that panicked left half done: the sequence it was stepping is ended
    /// (its state can no longer be trusted, as after a failed inference) and a budget unit taken
    /// for a START that never reached the table is given back. Every other sequence is as it was.
    pub fn recover_after_panic(&mut self) {
        self.counters.failed += 1;
        if let Some(slot) = self.in_step.take() {
            if self.sequences.is_live(slot) {
                let id = self.sequences.get(slot).id().clone();
                crate::log!(Error, "model {:?}: sequence {id} ended after a panic in its step", self.meta.name);
                self.drop_sequence(slot);
            }
        }
        if std::mem::take(&mut self.reserved_unplaced) {
            self.release();
        }
        let sequences = &self.sequences;
        self.requests.recover(|s| !sequences.is_live(s));
    }

    /// Removes sequences idle past the timeout (at most `EXPIRIES_PER_TICK_MAX`); returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let Some(timeout_ms) = self.timeout_ms else { return 0 };
        let mut n = 0;
        while n < EXPIRIES_PER_TICK_MAX {
            let Some(slot) = self.sequences.first_expired(now_ms, timeout_ms) else { break };
            self.drop_sequence(slot);
            n += 1;
        }
        self.counters.expired += n as u64;
        n
    }

    fn execute_stateless(&mut self, inputs: &[Bytes]) -> Result<Outcome> {
        let r = self.requests.stateless().ok_or_else(|| Error::with(Kind::Internal, "model has no infer request"))?;
        let t0 = Instant::now();
        let outputs = self.run(r, inputs);
        self.counters.openvino_ns += t0.elapsed().as_nanos() as u64;
        let outputs = outputs?;
        self.counters.steps += 1;
        Ok(Outcome { sequence_id: None, outputs })
    }

    fn execute_step(
        &mut self,
        spec: SequenceSpec,
        inputs: &[Bytes],
        now_ms: u64,
        me: ShardId,
        shards: u16,
    ) -> Result<Outcome> {
        let slot = if spec.control.starts() {
            // OVMS's order: the limit first (even a duplicate id gets "max reached" when full).
            if !self.reserve() {
                self.counters.rejected_max += 1;
                return Err(Kind::MaxSequenceNumberReached.into());
            }
            self.reserved_unplaced = true;
            let id = if spec.id.is_given() { spec.id } else { SequenceId::Num(self.unique_id(me, shards)) };
            if self.sequences.contains(&id) {
                self.reserved_unplaced = false;
                self.release();
                return Err(Kind::SequenceAlreadyExists.into());
            }
            // The router sent it here; a sequence on the wrong shard would be unreachable.
            assert_eq!(shard_of_id(&id, shards), me, "sequence {id} started on the wrong shard");
            self.counters.started += 1;
            crate::log!(Debug, "model {:?}: adding new sequence with id {id}", self.meta.name);
            let slot = self.sequences.insert(id, now_ms);
            self.reserved_unplaced = false;
            slot
        } else {
            assert_eq!(shard_of_id(&spec.id, shards), me, "sequence {} reached the wrong shard", spec.id);
            self.sequences.find(&spec.id).ok_or(Kind::SequenceMissing)?
        };
        self.in_step = Some(slot);
        let id = self.sequences.get(slot).id().clone();
        let t0 = Instant::now();
        let outputs = self.bind(slot, spec.control.starts()).and_then(|r| self.run(r, inputs));
        self.counters.openvino_ns += t0.elapsed().as_nanos() as u64;
        let outputs = match outputs {
            Ok(o) => o,
            Err(e) => {
                // The state can no longer be trusted: end the sequence rather than leave a broken
                // one behind (OVMS's bug, spec §2.2).
                crate::log!(Error, "model {:?}: sequence {id} ended after a failed inference: {e}", self.meta.name);
                self.drop_sequence(slot);
                return Err(Kind::Internal.into());
            }
        };
        if spec.control.ends() {
            crate::log!(Debug, "model {:?}: sequence {id} ended", self.meta.name);
            self.drop_sequence(slot);
            self.counters.ended += 1;
        } else {
            self.sequences.touch(slot, now_ms);
            self.sequences.get_mut(slot).steps += 1;
        }
        self.counters.steps += 1;
        Ok(Outcome { sequence_id: Some(id), outputs })
    }

    /// Takes one unit of the model's sequence budget, if any is left (exact across shards).
    fn reserve(&self) -> bool {
        let max = self.max_sequences;
        self.live_total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
    }

    /// Gives one unit of the budget back.
    fn release(&self) {
        let released = self.live_total.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
        // Every release matches a reservation; an underflow is a bug, caught here and logged
        // rather than wrapped around into a budget of 4 billion.
        debug_assert!(released, "live sequence count underflow");
        if !released {
            crate::log!(Error, "model {:?}: live sequence count underflow", self.meta.name);
        }
    }

    /// OVMS's unique id: the counter from 1 upward, skipping taken ids and 0, not advanced past
    /// the id handed out. With several shards it also skips ids another shard owns.
    fn unique_id(&mut self, me: ShardId, shards: u16) -> u64 {
        loop {
            let c = self.next_id;
            if c != 0 && shard_of(c, shards) == me && !self.sequences.contains(&SequenceId::Num(c)) {
                return c;
            }
            self.next_id = c.wrapping_add(1);
        }
    }

    /// Makes the sequence's state current in some infer request and returns that request.
    fn bind(&mut self, slot: SlotIdx, fresh: bool) -> Result<usize> {
        if let Some(r) = self.sequences.get(slot).resident_in {
            let r = r as usize;
            self.requests.touch(r);
            if fresh {
                self.requests.request_mut(r).reset_states().map_err(internal)?;
            }
            return Ok(r);
        }
        let engine = &self.engine;
        let (taken, create_error) = self.requests.take(|| engine.create_request());
        if let Some(e) = create_error {
            if !std::mem::replace(&mut self.create_failure_logged, true) {
                crate::log!(
                    Warning,
                    "model {:?}: cannot create infer request #{} ({e}); swapping states in the {} held",
                    self.meta.name,
                    self.requests.len() + 1,
                    self.requests.len()
                );
            }
        }
        let r = match taken {
            Some(Taken::Free(r)) => r,
            Some(Taken::Evicted { request, evicted }) => {
                self.evict(request, evicted);
                request
            }
            None => return Err(Error::with(Kind::Internal, "model has no infer request")),
        };
        let req = self.requests.request_mut(r);
        let prepared = if fresh {
            req.reset_states()
        } else {
            self.counters.swaps_in += 1;
            let saved = self.sequences.state(slot);
            self.state_ranges.iter().enumerate().try_for_each(|(i, range)| req.restore_state(i, &saved[range.clone()]))
        };
        if let Err(e) = prepared {
            self.requests.put_back(r);
            return Err(internal(e));
        }
        self.requests.assign(r, slot);
        self.sequences.get_mut(slot).resident_in = Some(r as u16);
        Ok(r)
    }

    /// Saves the state resident in request `r` into its sequence's own buffer. If the save fails,
    /// that sequence (not the one being bound) is ended: its state is lost, the other's is not.
    fn evict(&mut self, r: usize, prev: SlotIdx) {
        self.counters.swaps_out += 1;
        self.sequences.get_mut(prev).resident_in = None;
        let saved = self.sequences.state_mut(prev);
        let req = self.requests.request_mut(r);
        let failed = self
            .state_ranges
            .iter()
            .enumerate()
            .find_map(|(i, range)| req.save_state(i, &mut saved[range.clone()]).err());
        if let Some(e) = failed {
            let id = self.sequences.get(prev).id().clone();
            crate::log!(
                Error,
                "model {:?}: saving the state of sequence {id} failed, sequence ended: {e}",
                self.meta.name
            );
            self.drop_sequence(prev);
            self.counters.failed += 1;
        }
    }

    fn run(&mut self, r: usize, inputs: &[Bytes]) -> Result<Bytes> {
        let req = self.requests.request_mut(r);
        // The front ends validated the job against this model's signature; a mismatch here is a
        // bug, refused as one rather than a panic inside copy_from_slice.
        if inputs.len() != self.meta.inputs.len() {
            return Err(Error::with(Kind::Internal, "job does not match the model's inputs"));
        }
        for (i, data) in inputs.iter().enumerate() {
            let dst = req.input_mut(i);
            if dst.len() != data.len() {
                return Err(Error::with(Kind::Internal, "job does not match the model's inputs"));
            }
            dst.copy_from_slice(data);
        }
        let started = Instant::now();
        if let Some(received) = self.received.take() {
            self.wait_us.record_us(started.duration_since(received).as_micros() as u64);
        }
        let result = req.infer();
        self.inference_us.record_us(started.elapsed().as_micros() as u64);
        result.map_err(internal)?;
        let mut out = BytesMut::with_capacity(self.meta.outputs_bytes());
        for i in 0..self.meta.outputs.len() {
            out.extend_from_slice(req.output(i));
        }
        Ok(out.freeze())
    }

    fn drop_sequence(&mut self, slot: SlotIdx) {
        if let Some(r) = self.sequences.remove(slot) {
            self.requests.release(r as usize);
        }
        self.release();
    }
}

/// The most infer requests a stateful model holds per shard: as many as its resident memory
/// budget pays for (one request's memory as the engine reports it), never fewer than `nireq`
/// (made at start), never more than the model's sequences could use.
pub fn requests_max(config: &ModelConfig, nireq: usize, request_bytes: usize) -> usize {
    if !config.stateful {
        return nireq;
    }
    let budget = config.resident_memory_mb.saturating_mul(1 << 20);
    let affordable = usize::try_from(budget / request_bytes.max(1) as u64).unwrap_or(usize::MAX);
    affordable.min(config.max_sequence_number as usize).max(nireq).min(REQUESTS_MAX)
}

fn internal(e: EngineError) -> Error {
    crate::log!(Error, "inference engine: {e}");
    Error::new(Kind::Internal)
}
