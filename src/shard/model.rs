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
use crate::request::{InferJob, ModelIdx, Outcome, SequenceId, SequenceSpec};
use crate::signature::PortInfo;
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

/// Expiries handled per model per timer tick; the rest wait for the next tick (bounded work).
pub const EXPIRIES_PER_TICK_MAX: usize = 10_000;
/// Steps of the load-time exactness check (a probe sequence alone and in every row of a batch).
const PROBE_STEPS: usize = 8;

/// Batched inference for a model (`max_batch_size` > 1): one compiled model per batch size, each
/// with one infer request used as a compute engine. A batch's sequences keep their state in their
/// own buffers; the step copies it into the request's variable rows, runs, and copies it back.
struct Batching<E: Engine> {
    /// (rows, request), ascending by rows; the largest is `max_batch_size`. Declared before
    /// `engines` so the requests are dropped first.
    sizes: Vec<(usize, E::Request)>,
    _engines: Vec<E>,
    /// One buffer per variable, `max_batch_size` rows of it, reused by every batch.
    staging: Vec<Vec<u8>>,
    /// The batch in progress: (index of its job, its sequence), for results and panic recovery.
    members: Vec<(usize, SlotIdx)>,
    /// Largest difference the exactness check found between a batched row and the step alone.
    probe_max_diff: f64,
}

pub struct ModelInstance<E: Engine> {
    pub meta: ModelMeta,
    /// Where the shard keeps this instance (set by `Shard::add`; answers carry it).
    pub idx: ModelIdx,
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
    batching: Option<Batching<E>>,
    queue_delay: std::time::Duration,
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
            idx: ModelIdx(0),
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
            batching: None,
            queue_delay: std::time::Duration::from_micros(config.max_queue_delay_us),
        })
    }

    /// Turns on batched steps with `engines`, the same model compiled at larger batch sizes
    /// (each engine's ports and variables are this model's with dimension 0 = its rows). First
    /// checks the model's rows are independent and exact: a probe sequence run alone and in every
    /// row of every size, beside other sequences, must give the same outputs within the
    /// precision's rounding (`batch_tolerance`); otherwise batching is refused with the largest
    /// difference found.
    pub fn enable_batching(&mut self, mut engines: Vec<E>) -> std::result::Result<(), String> {
        let name = &self.meta.name;
        if !self.meta.stateful {
            return Err(format!("model {name:?}: batching needs a stateful model"));
        }
        engines.sort_by_key(|e| rows_of(e.inputs()));
        let mut sizes = Vec::with_capacity(engines.len());
        for e in &engines {
            let rows = rows_of(e.inputs());
            if rows < 2 || !self.batched_signature(e, rows) {
                return Err(format!(
                    "model {name:?}: the batch-{rows} compilation's inputs, outputs or variables are not \
                     the model's with {rows} rows"
                ));
            }
            let req = e.create_request().map_err(|err| format!("model {name:?}: batch {rows}: {err}"))?;
            sizes.push((rows, req));
        }
        let Some(&(max_rows, _)) = sizes.last() else { return Ok(()) };
        let staging = self.state_ranges.iter().map(|r| vec![0u8; r.len() * max_rows]).collect();
        let mut batching =
            Batching { sizes, _engines: engines, staging, members: Vec::with_capacity(max_rows), probe_max_diff: 0.0 };
        let tolerance = batch_tolerance(&self.meta.precision);
        let diff = self.probe_batches(&mut batching).map_err(|e| format!("model {name:?}: batching check: {e}"))?;
        if diff > tolerance {
            return Err(format!(
                "model {name:?}: a batched row differs from the same sequence run alone by up to {diff:e} \
                 (allowed {tolerance:e} in {}); batching refused",
                self.meta.precision
            ));
        }
        batching.probe_max_diff = diff;
        crate::log!(
            Info,
            "model {name:?}: batching up to {max_rows} sequences per step (sizes {:?}); rows match the step alone \
             within {diff:e}",
            batching.sizes.iter().map(|(r, _)| *r).collect::<Vec<_>>()
        );
        self.batching = Some(batching);
        Ok(())
    }

    /// Whether `e` is this model with `rows` rows in every input, output and variable.
    fn batched_signature(&self, e: &E, rows: usize) -> bool {
        let ports = |a: &[PortInfo], b: &[PortInfo]| {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| batched_shape(port_shape(x), port_shape(y), rows))
        };
        let (states, b_states) = (self.engine.states(), e.states());
        ports(&self.meta.inputs, e.inputs())
            && ports(&self.meta.outputs, e.outputs())
            && states.len() == b_states.len()
            && states.iter().zip(b_states).all(|(x, y)| batched_shape(state_shape(x), state_shape(y), rows))
    }

    /// The exactness check: returns the largest difference between a probe sequence's outputs
    /// alone and in any row of any batch size (the other rows running other sequences).
    fn probe_batches(&self, b: &mut Batching<E>) -> std::result::Result<f64, EngineError> {
        let inputs = &self.meta.inputs;
        let outputs = &self.meta.outputs;
        let step_inputs = |seq: u64, step: usize| -> Vec<Vec<u8>> {
            inputs.iter().enumerate().map(|(i, p)| probe_input(p, seq, step, i)).collect()
        };
        // The probe alone.
        let mut alone = self.engine.create_request()?;
        alone.reset_states()?;
        let mut expected: Vec<Vec<u8>> = Vec::with_capacity(PROBE_STEPS);
        for step in 0..PROBE_STEPS {
            for (i, data) in step_inputs(0, step).iter().enumerate() {
                alone.input_mut(i).copy_from_slice(data);
            }
            alone.infer()?;
            expected.push((0..outputs.len()).flat_map(|o| alone.output(o).to_vec()).collect());
        }
        let mut worst = 0.0f64;
        for (rows, req) in b.sizes.iter_mut() {
            let rows = *rows;
            for probe_row in 0..rows {
                req.reset_states()?;
                for (step, want) in expected.iter().enumerate() {
                    for row in 0..rows {
                        let seq = if row == probe_row { 0 } else { 1 + row as u64 };
                        for (i, data) in step_inputs(seq, step).iter().enumerate() {
                            req.input_mut(i)[row * data.len()..(row + 1) * data.len()].copy_from_slice(data);
                        }
                    }
                    req.infer()?;
                    let mut at = 0;
                    for (o, port) in outputs.iter().enumerate() {
                        let n = port.byte_size;
                        let got = &req.output(o)[probe_row * n..(probe_row + 1) * n];
                        worst = worst.max(difference(port.elem, &want[at..at + n], got));
                        at += n;
                    }
                }
            }
            req.reset_states()?;
        }
        Ok(worst)
    }

    /// How long a step may wait in the batch queue for others (`max_queue_delay_us`).
    pub fn queue_delay(&self) -> std::time::Duration {
        self.queue_delay
    }

    /// The most sequences one batched step runs (1 without batching).
    pub fn batch_max(&self) -> usize {
        self.batching.as_ref().and_then(|b| b.sizes.last()).map_or(1, |(rows, _)| *rows)
    }

    /// Runs the steps `jobs` (stateful, none a START, each of a different sequence, at most
    /// `batch_max`) as one batched inference, and puts each job's result in `out`, in order.
    /// A job whose sequence is missing gets its error; a lone step runs the resident path.
    /// `arrived[k]` is when job k reached the shard (its wait is `ovms_wait_for_infer_req_time_us`).
    pub fn execute_batch(
        &mut self,
        jobs: &mut Vec<InferJob>,
        arrived: &[Instant],
        now_ms: u64,
        me: ShardId,
        shards: u16,
        out: &mut Vec<Result<Outcome>>,
    ) {
        out.clear();
        let since = |k: usize| arrived.get(k).copied().unwrap_or_else(Instant::now);
        if jobs.len() <= 1 || self.batching.is_none() {
            for (k, job) in jobs.drain(..).enumerate() {
                out.push(self.execute_since(job, since(k), now_ms, me, shards));
            }
            return;
        }
        let Some(b) = self.batching.as_mut() else { return };
        b.members.clear();
        for (k, job) in jobs.iter().enumerate() {
            let found = match job.sequence {
                Some(ref spec) if !spec.control.starts() => {
                    assert_eq!(shard_of_id(&spec.id, shards), me, "sequence {} reached the wrong shard", spec.id);
                    self.sequences.find(&spec.id).ok_or_else(|| Error::from(Kind::SequenceMissing))
                }
                _ => Err(Error::with(Kind::Internal, "a START or stateless job in a batch")),
            };
            match found {
                Ok(slot) if b.members.iter().all(|&(_, s)| s != slot) => {
                    b.members.push((k, slot));
                    out.push(Err(Error::new(Kind::Internal)));
                }
                Ok(_) => out.push(Err(Error::with(Kind::Internal, "two steps of one sequence in a batch"))),
                Err(e) => out.push(Err(e)),
            }
        }
        let n = b.members.len();
        if n <= 1 || n > b.sizes.last().map_or(0, |(r, _)| *r) {
            // One step (the others failed their lookup): the resident path. More than the
            // largest batch cannot happen (the batcher caps batches); each runs alone then.
            let runs: Vec<usize> = b.members.iter().map(|&(k, _)| k).collect();
            for (k, job) in jobs.drain(..).enumerate() {
                if runs.contains(&k) {
                    out[k] = self.execute_since(job, since(k), now_ms, me, shards);
                }
            }
            return;
        }
        // Resident states move to their sequences' buffers: during a batch every member's state
        // is in its buffer, then in the batch's rows, then in its buffer again.
        for m in 0..n {
            let slot = match self.batching.as_ref() {
                Some(b) => b.members[m].1,
                None => return,
            };
            if let Some(r) = self.sequences.get(slot).resident_in {
                self.evict(r as usize, slot);
                self.requests.release(r as usize);
            }
        }
        let t0 = Instant::now();
        let result = self.run_batch(jobs, arrived);
        self.counters.openvino_ns += t0.elapsed().as_nanos() as u64;
        let Some(b) = self.batching.as_mut() else { return };
        let members = std::mem::take(&mut b.members);
        match result {
            Ok(outputs) => {
                let mut outputs = outputs.into_iter();
                for &(k, slot) in &members {
                    let Some(o) = outputs.next() else { break };
                    let Some(spec) = jobs[k].sequence.as_ref() else { continue };
                    let id = self.sequences.get(slot).id().clone();
                    self.step_done(slot, &id, spec.control.ends(), now_ms);
                    out[k] = Ok(Outcome { model: self.idx, sequence_id: Some(id), outputs: o });
                }
                self.counters.batches += 1;
                self.counters.batched_steps += members.len() as u64;
            }
            Err(e) => {
                for &(k, slot) in &members {
                    if self.sequences.is_live(slot) {
                        let id = self.sequences.get(slot).id().clone();
                        crate::log!(
                            Error,
                            "model {:?}: sequence {id} ended after a failed batched inference: {e}",
                            self.meta.name
                        );
                        self.drop_sequence(slot);
                    }
                    out[k] = Err(Kind::Internal.into());
                }
            }
        }
        for r in out.iter() {
            if r.is_err() {
                self.counters.failed += 1;
            }
        }
        if let Some(b) = self.batching.as_mut() {
            b.members = members;
            b.members.clear();
        }
        jobs.clear();
    }

    /// The batched inference itself: members' states and inputs into the rows of the smallest
    /// batch size that holds them, infer, states back; returns each member's outputs.
    fn run_batch(&mut self, jobs: &[InferJob], arrived: &[Instant]) -> std::result::Result<Vec<Bytes>, EngineError> {
        let Some(b) = self.batching.as_mut() else { return Err(EngineError("batching is off".into())) };
        let n = b.members.len();
        let Some((rows, req)) = b.sizes.iter_mut().find(|(rows, _)| *rows >= n) else {
            return Err(EngineError(format!("no batch size holds {n} sequences")));
        };
        let rows = *rows;
        for (i, range) in self.state_ranges.iter().enumerate() {
            let len = range.len();
            let staging = &mut b.staging[i][..len * rows];
            for (row, &(_, slot)) in b.members.iter().enumerate() {
                staging[row * len..(row + 1) * len].copy_from_slice(&self.sequences.state(slot)[range.clone()]);
            }
            req.restore_state(i, staging)?;
        }
        for (row, &(k, _)) in b.members.iter().enumerate() {
            let inputs = &jobs[k].inputs;
            if inputs.len() != self.meta.inputs.len() {
                return Err(EngineError("a job does not match the model's inputs".into()));
            }
            for (i, data) in inputs.iter().enumerate() {
                let len = self.meta.inputs[i].byte_size;
                let dst = req.input_mut(i);
                if data.len() != len || dst.len() < (row + 1) * len {
                    return Err(EngineError("a job does not match the model's inputs".into()));
                }
                dst[row * len..(row + 1) * len].copy_from_slice(data);
            }
        }
        let started = Instant::now();
        for &(k, _) in &b.members {
            let waited = arrived.get(k).map_or(0, |&a| started.saturating_duration_since(a).as_micros() as u64);
            self.wait_us.record_us(waited);
        }
        let result = req.infer();
        let took = started.elapsed().as_micros() as u64;
        for _ in 0..n {
            self.inference_us.record_us(took);
        }
        result?;
        let mut outs = Vec::with_capacity(n);
        for row in 0..n {
            let mut o = BytesMut::with_capacity(self.meta.outputs_bytes());
            for (i, port) in self.meta.outputs.iter().enumerate() {
                let len = port.byte_size;
                o.extend_from_slice(&req.output(i)[row * len..(row + 1) * len]);
            }
            outs.push(o.freeze());
        }
        for (i, range) in self.state_ranges.iter().enumerate() {
            let len = range.len();
            let staging = &mut b.staging[i][..len * rows];
            req.save_state(i, staging)?;
            for (row, &(_, slot)) in b.members.iter().enumerate() {
                self.sequences.state_mut(slot)[range.clone()].copy_from_slice(&staging[row * len..(row + 1) * len]);
            }
        }
        Ok(outs)
    }

    pub fn live_sequences(&self) -> usize {
        self.sequences.len()
    }

    /// Every live sequence here with its current state, least recently active first, for a
    /// snapshot (`crate::snapshot`). A resident state is saved out of its infer request first
    /// (the sequence itself is unchanged); a sequence whose save fails is left out and ended.
    pub fn export(&mut self, now_ms: u64) -> Vec<crate::snapshot::Saved> {
        let keys = self.sequences.keys();
        let mut out = Vec::with_capacity(keys.len());
        for slot in keys {
            if !self.sequences.is_live(slot) {
                continue;
            }
            if let Some(r) = self.sequences.get(slot).resident_in {
                self.evict(r as usize, slot);
                self.requests.release(r as usize);
                if !self.sequences.is_live(slot) {
                    continue;
                }
            }
            let s = self.sequences.get(slot);
            out.push(crate::snapshot::Saved {
                id: s.id().clone(),
                steps: s.steps,
                idle_ms: now_ms.saturating_sub(self.sequences.last_active_ms(slot)),
                state: self.sequences.state(slot).to_vec(),
            });
        }
        out
    }

    /// Adds a sequence from a snapshot: its state, steps and idle time (callers add them least
    /// recently active first). Refused, with the reason, when the id is taken, the budget is full,
    /// or the state does not fit the variables.
    pub fn import(&mut self, saved: crate::snapshot::Saved, now_ms: u64) -> std::result::Result<(), &'static str> {
        if !self.meta.stateful {
            return Err("the model is stateless");
        }
        let bytes: usize = self.state_ranges.iter().map(|r| r.len()).sum();
        if saved.state.len() != bytes {
            return Err("its state does not fit the model's variables");
        }
        if !saved.id.is_given() {
            return Err("it has no id");
        }
        if self.sequences.contains(&saved.id) {
            return Err("its id is already in use");
        }
        if !self.reserve() {
            return Err("max_sequence_number is reached");
        }
        let slot = self.sequences.insert(saved.id, now_ms.saturating_sub(saved.idle_ms));
        self.sequences.state_mut(slot).copy_from_slice(&saved.state);
        self.sequences.get_mut(slot).steps = saved.steps;
        Ok(())
    }

    /// The model's state variables (for a snapshot's section).
    pub fn states(&self) -> &[crate::signature::StateInfo] {
        self.engine.states()
    }

    /// Whether this shard holds sequence `id` of this instance.
    pub fn holds(&self, id: &SequenceId) -> bool {
        self.sequences.contains(id)
    }

    /// The live settings: the most live sequences (all shards) and the idle timeout.
    pub fn set_limits(&mut self, max_sequences: u32, timeout_ms: Option<u64>) {
        self.max_sequences = max_sequences;
        self.timeout_ms = timeout_ms;
    }

    /// Ends every sequence this shard holds (the instance is being unloaded); returns how many.
    pub fn end_all(&mut self) -> usize {
        let mut n = 0;
        while let Some(slot) = self.sequences.first_expired(u64::MAX, 0) {
            self.drop_sequence(slot);
            n += 1;
        }
        n
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
        self.execute_since(job, Instant::now(), now_ms, me, shards)
    }

    /// `execute` for a job that reached this shard at `arrived` (it waited in a batch queue).
    fn execute_since(
        &mut self,
        job: InferJob,
        arrived: Instant,
        now_ms: u64,
        me: ShardId,
        shards: u16,
    ) -> Result<Outcome> {
        self.received = Some(arrived);
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
        let in_batch = self.batching.as_mut().map(|b| std::mem::take(&mut b.members)).unwrap_or_default();
        for &(_, slot) in &in_batch {
            if self.sequences.is_live(slot) {
                let id = self.sequences.get(slot).id().clone();
                crate::log!(Error, "model {:?}: sequence {id} ended after a panic in its batched step", self.meta.name);
                self.drop_sequence(slot);
            }
        }
        if let Some(b) = self.batching.as_mut() {
            b.members = in_batch;
            b.members.clear();
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
        Ok(Outcome { model: self.idx, sequence_id: None, outputs })
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
        self.step_done(slot, &id, spec.control.ends(), now_ms);
        Ok(Outcome { model: self.idx, sequence_id: Some(id), outputs })
    }

    /// A step of `slot`'s sequence succeeded: an END removes the sequence, any other step
    /// restarts its idle timeout.
    fn step_done(&mut self, slot: SlotIdx, id: &SequenceId, ends: bool, now_ms: u64) {
        if ends {
            crate::log!(Debug, "model {:?}: sequence {id} ended", self.meta.name);
            self.drop_sequence(slot);
            self.counters.ended += 1;
        } else {
            self.sequences.touch(slot, now_ms);
            self.sequences.get_mut(slot).steps += 1;
        }
        self.counters.steps += 1;
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

/// The batch sizes a model with `max_batch_size` = `max` is compiled at (besides 1): the powers
/// of two below `max`, and `max`. A batch of n steps runs at the smallest size ≥ n.
pub fn batch_sizes(max: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = (1..usize::BITS).map(|k| 1usize << k).take_while(|&b| b < max).collect();
    if max >= 2 {
        sizes.push(max);
    }
    sizes
}

/// A port's or a variable's name, element type, dims and byte size.
type Shape<'a> = (&'a str, crate::signature::ElemType, &'a [usize], usize);

fn port_shape(p: &PortInfo) -> Shape<'_> {
    (&p.name, p.elem, &p.dims, p.byte_size)
}

fn state_shape(s: &crate::signature::StateInfo) -> Shape<'_> {
    (&s.name, s.elem, &s.dims, s.byte_size)
}

/// Whether `many` is `one` (a row of the model) with `rows` rows.
fn batched_shape(one: Shape<'_>, many: Shape<'_>, rows: usize) -> bool {
    let ((name, elem, dims, size), (b_name, b_elem, b_dims, b_size)) = (one, many);
    name == b_name
        && elem == b_elem
        && dims.first() == Some(&1)
        && b_dims.first() == Some(&rows)
        && dims[1..] == b_dims[1..]
        && b_size == size * rows
}

/// Rows of a batched compilation: dimension 0 of its first input (1 for a model without inputs).
fn rows_of(inputs: &[PortInfo]) -> usize {
    inputs.first().and_then(|p| p.dims.first().copied()).unwrap_or(1)
}

/// How far a batched row may differ from the step alone: rounding only. Batched kernels may sum
/// in another order (≈ 1e-7 relative in f32); bf16 and f16 round to 8 and 11 bits.
pub fn batch_tolerance(precision: &str) -> f64 {
    match precision {
        "f32" | "dynamic" | "f64" => 1e-5,
        _ => 2e-2,
    }
}

/// Probe input `i` of sequence `seq` at `step`: pseudo-random floats in [-1, 1) for float
/// inputs (a fixed hash, the same on every run), zeros for any other type.
fn probe_input(p: &PortInfo, seq: u64, step: usize, i: usize) -> Vec<u8> {
    use crate::signature::ElemType;
    let mut out = vec![0u8; p.byte_size];
    if p.elem == ElemType::F32 {
        for (k, v) in out.chunks_exact_mut(4).enumerate() {
            let mut h =
                (seq + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((step as u64) << 40) ^ ((i as u64) << 32) ^ k as u64;
            h ^= h >> 33;
            h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
            h ^= h >> 33;
            // In (-1, 1): 23 bits over 2^22, shifted, never exactly -1 or 0.
            let x = ((h >> 41) as f32 + 0.5) / (1u64 << 22) as f32 - 1.0;
            v.copy_from_slice(&x.to_le_bytes());
        }
    }
    out
}

/// The largest difference between two outputs: relative to max(1, |expected|) for f32, and 0 or
/// infinity (equal bytes or not) for every other type.
fn difference(elem: crate::signature::ElemType, want: &[u8], got: &[u8]) -> f64 {
    if elem != crate::signature::ElemType::F32 {
        return if want == got { 0.0 } else { f64::INFINITY };
    }
    let f = |b: &[u8]| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    want.chunks_exact(4).zip(got.chunks_exact(4)).fold(0.0, |worst, (w, g)| {
        let (w, g) = (f(w), f(g));
        let d = if w.is_nan() && g.is_nan() { 0.0 } else { (w - g).abs() / w.abs().max(1.0) };
        worst.max(if d.is_nan() { f64::INFINITY } else { d })
    })
}

fn internal(e: EngineError) -> Error {
    crate::log!(Error, "inference engine: {e}");
    Error::new(Kind::Internal)
}
