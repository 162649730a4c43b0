//! One model version as a shard holds it: its compiled model, its infer requests, and (when
//! stateful) its table of the sequences this shard owns. Execution is synchronous from sequence
//! lookup to state save: no await, so nothing else on the shard (another request, the expiry
//! timer) can see a sequence mid-step.
//!
//! How state is kept: each infer request remembers which sequence's state its variables hold
//! ("resident"). A step on a resident sequence skips the restore; when an infer request is taken
//! for another sequence, the resident one's state is saved into its own buffer first. So with
//! `nireq` infer requests per shard, up to `nireq` sequences skip both copies, and the state of
//! every sequence is always in exactly one place on its own core.

use super::router::{shard_of, shard_of_id, ShardId};
use super::sequences::{SequenceTable, SlotIdx};
use crate::catalog::ModelMeta;
use crate::config::ModelConfig;
use crate::error::{Error, Kind, Result};
use crate::metrics::{Histogram, ModelCounters, ModelSnapshot};
use crate::ov;
use crate::request::{InferJob, Outcome, SequenceId, SequenceSpec};
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// Expiries handled per model per timer tick; the rest wait for the next tick (bounded work).
pub const EXPIRIES_PER_TICK_MAX: usize = 10_000;

struct ReqSlot {
    req: ov::InferRequest,
    resident: Option<SlotIdx>,
    last_use: u64,
}

pub struct ModelInstance {
    pub meta: ModelMeta,
    // Declared before `compiled` so the infer requests are dropped first.
    requests: Vec<ReqSlot>,
    _compiled: ov::CompiledModel,
    sequences: SequenceTable,
    /// Byte range of each variable inside a sequence's state buffer.
    state_ranges: Vec<std::ops::Range<usize>>,
    /// Live sequences of this model version on all shards; the only cross-core shared value,
    /// touched once at a sequence's birth and once at its death, never per step.
    live_total: &'static AtomicU32,
    max_sequences: u32,
    timeout_ms: Option<u64>,
    next_id: u64,
    tick: u64,
    pub counters: ModelCounters,
    /// Time inside OpenVINO's infer() (OVMS's ovms_inference_time_us).
    pub inference_us: Histogram,
    /// Time from the job reaching this shard to the start of infer(), state restore included
    /// (OVMS's ovms_wait_for_infer_req_time_us; no job ever waits for an infer request here).
    pub wait_us: Histogram,
    received: Option<Instant>,
}

impl ModelInstance {
    pub fn new(
        core: &ov::Core,
        config: &ModelConfig,
        version: i64,
        xml: &std::path::Path,
        live_total: &'static AtomicU32,
        cleaner_enabled: bool,
        seed: u64,
    ) -> std::result::Result<ModelInstance, String> {
        let opts = ov::CompileOptions {
            low_latency: config.low_latency_transformation,
            plugin_config: config.plugin_config.clone(),
        };
        let compiled = core.compile(xml, &opts).map_err(|e| format!("model {:?}: {e}", config.name))?;
        if config.stateful && compiled.states().is_empty() {
            crate::log!(
                Warning,
                "model {:?} is configured stateful but has no variables (no ReadValue/Assign); \
                 sequences are tracked but carry no state",
                config.name
            );
        }
        let mut state_ranges = Vec::new();
        let mut at = 0;
        for s in compiled.states() {
            state_ranges.push(at..at + s.byte_size);
            at += s.byte_size;
        }
        let mut requests = Vec::with_capacity(config.nireq as usize);
        for _ in 0..config.nireq.max(1) {
            let req = compiled.create_request().map_err(|e| format!("model {:?}: {e}", config.name))?;
            requests.push(ReqSlot { req, resident: None, last_use: 0 });
        }
        let meta = ModelMeta {
            name: config.name.clone(),
            version,
            stateful: config.stateful,
            inputs: compiled.inputs().to_vec(),
            outputs: compiled.outputs().to_vec(),
        };
        let reserve = (config.max_sequence_number as usize).min(4096);
        Ok(ModelInstance {
            meta,
            requests,
            _compiled: compiled,
            sequences: SequenceTable::new(at, if config.stateful { reserve } else { 0 }, seed),
            state_ranges,
            live_total,
            max_sequences: config.max_sequence_number,
            timeout_ms: config.idle_timeout_ms(cleaner_enabled),
            next_id: 1,
            tick: 0,
            counters: ModelCounters::default(),
            inference_us: Histogram::new(),
            wait_us: Histogram::new(),
            received: None,
        })
    }

    pub fn live_sequences(&self) -> usize {
        self.sequences.len()
    }

    pub fn snapshot(&self) -> ModelSnapshot {
        ModelSnapshot {
            live_sequences: self.sequences.len() as u64,
            counters: self.counters,
            infer_requests: self.requests.len() as u64,
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
        if result.is_err() {
            self.counters.failed += 1;
        }
        result
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
        let r = self.least_recently_used_request();
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
            let id = if spec.id.is_given() { spec.id } else { SequenceId::Num(self.unique_id(me, shards)) };
            if self.sequences.contains(&id) {
                self.live_total.fetch_sub(1, Ordering::Relaxed);
                return Err(Kind::SequenceAlreadyExists.into());
            }
            debug_assert_eq!(shard_of_id(&id, shards), me, "sequence {id} started on the wrong shard");
            self.counters.started += 1;
            crate::log!(Debug, "model {:?}: adding new sequence with id {id}", self.meta.name);
            self.sequences.insert(id, now_ms)
        } else {
            debug_assert_eq!(shard_of_id(&spec.id, shards), me, "sequence {} reached the wrong shard", spec.id);
            self.sequences.find(&spec.id).ok_or(Kind::SequenceMissing)?
        };
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
        self.tick += 1;
        if let (false, Some(r)) = (fresh, self.sequences.get(slot).resident_in) {
            self.requests[r as usize].last_use = self.tick;
            return Ok(r as usize);
        }
        let r = self.least_recently_used_request();
        if let Some(prev) = self.requests[r].resident.take() {
            self.sequences.get_mut(prev).resident_in = None;
            let saved = self.sequences.state_mut(prev);
            for (i, range) in self.state_ranges.iter().enumerate() {
                if let Err(e) = self.requests[r].req.save_state(i, &mut saved[range.clone()]) {
                    let id = self.sequences.get(prev).id().clone();
                    crate::log!(Error, "model {:?}: saving the state of sequence {id} failed: {e}", self.meta.name);
                    self.drop_sequence(prev);
                    return Err(Kind::Internal.into());
                }
            }
        }
        let req = &mut self.requests[r].req;
        if fresh {
            req.reset_states().map_err(internal)?;
        } else {
            let saved = self.sequences.state(slot);
            for (i, range) in self.state_ranges.iter().enumerate() {
                req.restore_state(i, &saved[range.clone()]).map_err(internal)?;
            }
        }
        self.requests[r].resident = Some(slot);
        self.sequences.get_mut(slot).resident_in = Some(r as u16);
        Ok(r)
    }

    fn least_recently_used_request(&mut self) -> usize {
        self.tick += 1;
        let r = (0..self.requests.len()).min_by_key(|&i| self.requests[i].last_use).expect("nireq >= 1");
        self.requests[r].last_use = self.tick;
        r
    }

    fn run(&mut self, r: usize, inputs: &[Bytes]) -> Result<Bytes> {
        let req = &mut self.requests[r].req;
        for (i, data) in inputs.iter().enumerate() {
            req.input_mut(i).copy_from_slice(data);
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
            self.requests[r as usize].resident = None;
        }
        let before = self.live_total.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "live sequence count underflow");
    }
}

fn internal(e: ov::OvError) -> Error {
    crate::log!(Error, "OpenVINO: {e}");
    Error::new(Kind::Internal)
}
