//! A shard: one pinned core running one glommio executor that owns a slice of the sequences,
//! its own compiled models and infer requests, its timers, and its end of the cross-shard mesh.
//! Nothing in a shard is shared with another thread except the per-model live-sequence counter.

pub mod admin;
pub mod batch;
pub mod clock;
pub mod engine;
#[cfg(test)]
mod fake;
pub mod mesh;
pub mod model;
pub mod pool;
pub mod room;
pub mod router;
pub mod sequences;
pub mod stall;
#[cfg(test)]
mod tests;

use crate::catalog::{Catalog, ModelMeta, ModelStatus, Use};
use crate::error::{Error, Kind, Result};
use crate::metrics::{ShardMetrics, Snapshot};
use crate::request::{InferJob, ModelIdx, Outcome};
use clock::Clock;
use engine::Engine;
use mesh::Mesh;
use model::ModelInstance;
pub use router::{shard_of, shard_of_id, ShardId};
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::time::{Duration, Instant};

// A panic handling one request is caught where the request runs (`Shard::execute`, and the
// front ends' handler tasks), fails that request with INTERNAL, and the shard goes on; that
// needs unwinding.
#[cfg(panic = "abort")]
compile_error!("seqcore contains a panic to the request that caused it; it needs panic = \"unwind\"");

/// How often a shard looks for idle sequences; timeouts are accurate to about this.
pub const EXPIRY_TICK: Duration = Duration::from_millis(200);
/// Live sequences listed per model in the introspection answer.
pub const STATS_SEQUENCES_MAX: usize = 10_000;

pub struct Shard<E: Engine> {
    pub id: ShardId,
    pub shards: u16,
    pub cpu: Option<usize>,
    pub numa_node: Option<usize>,
    /// What the front ends of this shard know about the models (this shard's own copy). Borrowed
    /// only inside a call, never across an await (`resolve`, `with_catalog`).
    catalog: RefCell<Catalog>,
    /// By `ModelIdx`; None once unloaded (or never installed on this shard).
    models: RefCell<Vec<Option<ModelInstance<E>>>>,
    pub mesh: Mesh,
    /// Request counters and latencies recorded by this shard's front ends.
    pub metrics: ShardMetrics,
    clock: Clock,
    forwarded_out: Cell<u64>,
    forwarded_in: Cell<u64>,
    /// By `ModelIdx`: the queue of steps waiting for a batch (None for a model that does not batch).
    queues: RefCell<Vec<Option<Rc<batch::Queue>>>>,
    /// The placement plan's JSON (`src/plan.rs`), carried by the introspection answer.
    plan: Option<serde_json::Value>,
    /// Operator requests to the lifecycle controller, waiting for its answers.
    pub admin: admin::Admin,
    /// Whether two loaded instances share a model name (versions side by side, or an old
    /// instance finishing its sequences): only then may a sequence be in another instance than
    /// the one its request resolved to (`place`). Kept by `add` and `unload`.
    shared_names: Cell<bool>,
    /// Shutting down: no new sequence starts here (`drain`).
    draining: Cell<bool>,
    /// Shutting down for a snapshot: no step runs here any more (`freeze`).
    frozen: Cell<bool>,
    /// The stall detector, fed by the expiry timer (`stall.rs`), and its reader of this thread's
    /// scheduler times.
    stall: RefCell<(stall::Watch, stall::SchedReader)>,
}

impl<E: Engine> mesh::Peer for Shard<E> {
    fn execute(&self, job: InferJob, from: ShardId, token: mesh::Token) -> Option<Result<Outcome>> {
        self.forwarded_in.set(self.forwarded_in.get() + 1);
        if let Err(e) = self.admits(&job) {
            return Some(Err(e));
        }
        let mut job = job;
        if let Err(e) = self.place(&mut job) {
            return Some(Err(e));
        }
        if let Some((m, q)) = self.batch_queue(&job) {
            if q.push_peer(job, from, token) {
                self.run_batch(m, &q);
            }
            return None;
        }
        self.before_alone(&job);
        Some(Shard::execute(self, job))
    }

    fn stats(&self) -> serde_json::Value {
        self.local_stats()
    }

    fn snapshot(&self) -> Snapshot {
        Shard::snapshot(self)
    }
}

impl<E: Engine> Shard<E> {
    pub fn new(
        id: ShardId,
        shards: u16,
        cpu: Option<usize>,
        numa_node: Option<usize>,
        models: Vec<ModelInstance<E>>,
        mesh: Mesh,
        clock: Clock,
    ) -> Shard<E> {
        let shard = Shard {
            metrics: ShardMetrics::new(),
            id,
            shards,
            cpu,
            numa_node,
            catalog: RefCell::new(Catalog::default()),
            models: RefCell::new(Vec::new()),
            mesh,
            clock,
            forwarded_out: Cell::new(0),
            forwarded_in: Cell::new(0),
            queues: RefCell::new(Vec::new()),
            plan: None,
            admin: admin::Admin::default(),
            shared_names: Cell::new(false),
            draining: Cell::new(false),
            frozen: Cell::new(false),
            stall: RefCell::new((stall::Watch::new(), stall::SchedReader::new())),
        };
        let metas: Vec<ModelMeta> = models.iter().map(|m| m.meta.clone()).collect();
        for (i, m) in models.into_iter().enumerate() {
            shard.add(ModelIdx(i as u16), m, Use::Available);
        }
        // The status a catalog of these models implies, until a controller reports its own.
        let implied = Catalog::of(metas).status().to_vec();
        shard.set_status(implied);
        shard
    }

    /// Puts a model instance at `idx` (its batch queue made, not yet served: see `install`).
    fn add(&self, idx: ModelIdx, mut instance: ModelInstance<E>, used: Use) {
        let i = idx.0 as usize;
        instance.idx = idx;
        let queue = (instance.batch_max() > 1)
            .then(|| Rc::new(batch::Queue::new(instance.batch_max(), instance.queue_delay())));
        self.catalog.borrow_mut().install(idx, instance.meta.clone(), used);
        let mut models = self.models.borrow_mut();
        if models.len() <= i {
            models.resize_with(i + 1, || None);
        }
        models[i] = Some(instance);
        drop(models);
        let mut queues = self.queues.borrow_mut();
        if queues.len() <= i {
            queues.resize_with(i + 1, || None);
        }
        queues[i] = queue;
        drop(queues);
        self.note_shared_names();
    }

    /// Recomputes `shared_names` (on install and unload, never per request).
    fn note_shared_names(&self) {
        let models = self.models.borrow();
        let names: Vec<&str> = models.iter().flatten().map(|m| m.meta.name.as_str()).collect();
        let shared = names.iter().enumerate().any(|(i, n)| names[..i].contains(n));
        self.shared_names.set(shared);
    }

    /// Installs a model instance at `idx` while the shard serves (the lifecycle controller's
    /// call; on the shard's executor), starting its batch runner if it batches. An instance
    /// already there is replaced only if it holds no sequence here.
    pub fn install(self: &Rc<Self>, idx: ModelIdx, instance: ModelInstance<E>, used: Use) -> Result<()> {
        if let Some(Some(old)) = self.models.borrow().get(idx.0 as usize) {
            if old.live_sequences() > 0 {
                return Err(Error::with(Kind::Internal, format!("model index {} is in use", idx.0)));
            }
        }
        self.add(idx, instance, used);
        if self.queue(idx.0 as usize).is_some() {
            let sh = self.clone();
            let m = idx.0 as usize;
            glommio::spawn_local(async move { sh.run_batches(m).await }).detach();
        }
        Ok(())
    }

    /// Changes what an instance is for (`Available`: resolved to; `Unloading`: its live
    /// sequences go on, a START is refused). Returns false if `idx` is not loaded here.
    pub fn set_use(&self, idx: ModelIdx, used: Use) -> bool {
        let loaded = matches!(self.models.borrow().get(idx.0 as usize), Some(Some(_)));
        if loaded {
            self.catalog.borrow_mut().set_use(idx, used);
        }
        loaded
    }

    /// Applies a model's live settings to an instance: the most live sequences and the idle
    /// timeout (None: never). Live sequences are kept; a lower maximum refuses STARTs until
    /// enough sequences end.
    pub fn set_limits(&self, idx: ModelIdx, max_sequences: u32, timeout_ms: Option<u64>) -> bool {
        match self.models.borrow_mut().get_mut(idx.0 as usize) {
            Some(Some(m)) => {
                m.set_limits(max_sequences, timeout_ms);
                true
            }
            _ => false,
        }
    }

    /// Unloads an instance: its batch runner stops, its engine and requests are freed. Returns
    /// how many live sequences it still had here (dropped; the controller unloads an instance
    /// only once its sequences are gone everywhere, so this is 0 unless a bound forced it).
    pub fn unload(&self, idx: ModelIdx) -> usize {
        let i = idx.0 as usize;
        self.catalog.borrow_mut().remove(idx);
        if let Some(q) = self.queues.borrow_mut().get_mut(i).and_then(Option::take) {
            q.close();
        }
        let instance = self.models.borrow_mut().get_mut(i).and_then(Option::take);
        self.note_shared_names();
        instance.map_or(0, |mut m| m.end_all())
    }

    /// Replaces the model status the front ends report (the controller's view of every version).
    pub fn set_status(&self, status: Vec<ModelStatus>) {
        self.catalog.borrow_mut().set_status(status);
    }

    /// Whether a job may run here while the server shuts down: nothing once frozen, no START
    /// while draining.
    fn admits(&self, job: &InferJob) -> Result<()> {
        let starts = job.sequence.as_ref().is_some_and(|s| s.control.starts());
        if self.frozen.get() || (self.draining.get() && starts) {
            return Err(Kind::ServerShuttingDown.into());
        }
        Ok(())
    }

    /// The server is shutting down: no new sequence starts here; live ones may step on.
    pub fn drain(&self) {
        self.draining.set(true);
    }

    /// Whether the server is shutting down (readiness is false from then on).
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// No step runs here any more: the queued batches run first, so every step this shard has
    /// accepted is done, and every state is as of its sequence's last answered step.
    pub fn freeze(&self) {
        self.draining.set(true);
        self.frozen.set(true);
        let queues: Vec<(usize, Rc<batch::Queue>)> =
            self.queues.borrow().iter().enumerate().filter_map(|(m, q)| Some((m, q.clone()?))).collect();
        for (m, q) in queues {
            while !q.is_empty() {
                if self.run_batch(m, &q) == 0 {
                    break;
                }
            }
        }
    }

    /// Every loaded instance's live sequences here, with their states (see `freeze`).
    pub fn export(&self) -> Vec<(ModelIdx, Vec<crate::snapshot::Saved>)> {
        let now = self.clock.now_ms();
        let Ok(mut models) = self.models.try_borrow_mut() else { return Vec::new() };
        models.iter_mut().flatten().map(|m| (m.idx, m.export(now))).collect()
    }

    /// Adds sequences from a snapshot to instance `idx` (least recently active first); returns
    /// how many were refused (each logged with its reason).
    pub fn import(&self, idx: ModelIdx, saved: Vec<crate::snapshot::Saved>) -> usize {
        let now = self.clock.now_ms();
        let Ok(mut models) = self.models.try_borrow_mut() else { return saved.len() };
        let Some(Some(m)) = models.get_mut(idx.0 as usize) else { return saved.len() };
        let mut refused = 0;
        for s in saved {
            let id = s.id.clone();
            if shard_of_id(&id, self.shards) != self.id {
                refused += 1;
                continue;
            }
            if let Err(why) = m.import(s, now) {
                crate::log!(Warning, "model {:?}: sequence {id} not restored: {why}", m.meta.name);
                refused += 1;
            }
        }
        refused
    }

    /// Asks the lifecycle controller to reload, load or unload, and waits for its answer (the
    /// new model status is in this shard's catalog by then).
    pub async fn admin(&self, request: admin::AdminRequest) -> Result<admin::AdminAnswer> {
        Ok(self.admin.call(self.id, request)?.await)
    }

    /// The instance a request for `name` / `version` runs on (`Catalog::resolve`).
    pub fn resolve(&self, name: &str, version: Option<i64>) -> Result<(ModelIdx, Rc<ModelMeta>)> {
        self.catalog.borrow().resolve(name, version)
    }

    /// Runs `f` on this shard's catalog (the borrow ends with the call).
    pub fn with_catalog<R>(&self, f: impl FnOnce(&Catalog) -> R) -> R {
        f(&self.catalog.borrow())
    }

    /// The description an answer is written with: the instance the step ran on, if it is not
    /// the one the request was validated against (same ports, another version).
    pub fn answered_by(&self, outcome: &Outcome, validated: Rc<ModelMeta>) -> Rc<ModelMeta> {
        if let Some(m) = self.catalog.borrow().get(outcome.model) {
            if !Rc::ptr_eq(m, &validated) {
                return m.clone();
            }
        }
        validated
    }

    /// Where a job runs on its owner: a START on its instance if that takes new sequences; a
    /// later step on the instance of this model that holds its sequence (any version when the
    /// request named none, else the same version), so a sequence stays on the version it
    /// started on. Rewrites `job.model` accordingly.
    fn place(&self, job: &mut InferJob) -> Result<()> {
        let Some(spec) = job.sequence.as_ref() else { return Ok(()) };
        if spec.control.starts() && self.catalog.borrow().is_unloading(job.model) {
            return Err(Kind::ModelVersionUnloading.into());
        }
        if !self.shared_names.get() {
            // Every loaded model has one instance (the steady state): the sequence can only be
            // in the one the request resolved to, and its own lookup answers.
            return Ok(());
        }
        let models = self.models.borrow();
        let m = job.model.0 as usize;
        let Some(Some(model)) = models.get(m) else { return Err(Kind::ModelVersionNotLoadedAnymore.into()) };
        let any_version = job.any_version;
        let others = || {
            models.iter().enumerate().filter_map(move |(i, o)| match o {
                Some(o)
                    if i != m
                        && o.meta.name == model.meta.name
                        && (any_version || o.meta.version == model.meta.version) =>
                {
                    Some((i, o))
                }
                _ => None,
            })
        };
        if spec.control.starts() {
            if spec.id.is_given() {
                if let Some((_, o)) = others().find(|(_, o)| o.holds(&spec.id)) {
                    return Err(Error::with(
                        Kind::SequenceAlreadyExists,
                        format!("it runs on version {} of this model", o.meta.version),
                    ));
                }
            }
            return Ok(());
        }
        if !spec.id.is_given() || model.holds(&spec.id) {
            return Ok(());
        }
        let found = others().find(|(_, o)| o.holds(&spec.id));
        if let Some((i, o)) = found {
            if !o.meta.same_ports(&model.meta) {
                return Err(Error::with(
                    Kind::InvalidMessage,
                    format!(
                        "sequence {} runs on version {} of model {:?}, whose inputs or outputs differ from version \
                         {}'s; name version {} in its requests",
                        spec.id, o.meta.version, o.meta.name, model.meta.version, o.meta.version
                    ),
                ));
            }
            let i = ModelIdx(i as u16);
            drop(models);
            job.model = i;
        }
        Ok(())
    }

    /// This shard with the placement plan the server started from, for `all_stats`.
    pub fn with_plan(mut self, plan: serde_json::Value) -> Shard<E> {
        self.plan = Some(plan);
        self
    }

    /// The clock sequence activity and timeouts are reckoned on.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Runs a validated job on the shard that owns it: here, or on its owner through the mesh.
    /// Stateless jobs and id-less STARTs run here.
    pub async fn run(&self, job: InferJob) -> Result<Outcome> {
        let owner = match job.sequence {
            Some(ref s) if s.id.is_given() => shard_of_id(&s.id, self.shards),
            _ => self.id,
        };
        if owner == self.id {
            self.admits(&job)?;
            let mut job = job;
            self.place(&mut job)?;
            if let Some((m, q)) = self.batch_queue(&job) {
                let (ticket, full) = q.push_local(job)?;
                let answer = q.wait(ticket);
                if full {
                    self.run_batch(m, &q);
                }
                return answer.await;
            }
            self.before_alone(&job);
            self.execute(job)
        } else {
            self.forwarded_out.set(self.forwarded_out.get() + 1);
            // Boxed: the hop's future is large, and inline it would be part of every request
            // task's allocation, local or not (see grpc::server on task size).
            Box::pin(self.mesh.forward(owner, job)).await
        }
    }

    /// `execute` after placing the job on the instance holding its sequence (`run` on the owner,
    /// without a batch queue; for tests that drive one shard without awaiting).
    #[cfg(test)]
    pub fn execute_placed(&self, mut job: InferJob) -> Result<Outcome> {
        self.place(&mut job)?;
        self.execute(job)
    }

    /// Executes a job whose sequence this shard owns. A panic inside the step fails this job
    /// only: the model undoes the half-done step (`recover_after_panic`) and serves on.
    pub fn execute(&self, job: InferJob) -> Result<Outcome> {
        let now = self.clock.now_ms();
        // Execution never awaits, so nothing else can hold the borrow; refuse rather than panic.
        let Ok(mut models) = self.models.try_borrow_mut() else {
            return Err(Error::with(Kind::Internal, "model table busy"));
        };
        let Some(Some(model)) = models.get_mut(job.model.0 as usize) else {
            return Err(Kind::ModelVersionNotLoadedAnymore.into());
        };
        let (me, shards) = (self.id, self.shards);
        match catch_unwind(AssertUnwindSafe(|| model.execute(job, now, me, shards))) {
            Ok(result) => result,
            Err(panic) => {
                crate::log!(
                    Error,
                    "shard {}: model {:?}: a step panicked ({}); the request fails, the shard goes on",
                    me.0,
                    model.meta.name,
                    crate::sched::panic_message(&*panic)
                );
                model.recover_after_panic();
                Err(Error::with(Kind::Internal, "the step failed"))
            }
        }
    }

    /// Model `m`'s batch queue, if it batches.
    fn queue(&self, m: usize) -> Option<Rc<batch::Queue>> {
        self.queues.borrow().get(m)?.clone()
    }

    /// The batch queue a job joins: a step (not a START) of a model that batches.
    fn batch_queue(&self, job: &InferJob) -> Option<(usize, Rc<batch::Queue>)> {
        let m = job.model.0 as usize;
        if job.sequence.as_ref().is_none_or(|s| s.control.starts()) {
            return None;
        }
        Some((m, self.queue(m)?))
    }

    /// Before a job of a batching model runs alone (a START): every queued step of the same
    /// sequence runs first, so a sequence's requests keep their order.
    fn before_alone(&self, job: &InferJob) {
        let m = job.model.0 as usize;
        let (Some(q), Some(spec)) = (self.queue(m), job.sequence.as_ref()) else { return };
        while q.holds(&spec.id) {
            if self.run_batch(m, &q) == 0 {
                break;
            }
        }
    }

    /// Runs the next batch of model `m`'s queue, inside the same panic boundary as a single
    /// step; returns how many steps it ran.
    fn run_batch(&self, m: usize, q: &batch::Queue) -> usize {
        let now = self.clock.now_ms();
        let (me, shards) = (self.id, self.shards);
        q.run_one(&self.mesh, |jobs, arrived, results| {
            let Ok(mut models) = self.models.try_borrow_mut() else { return };
            let Some(Some(model)) = models.get_mut(m) else { return };
            if let Err(panic) =
                catch_unwind(AssertUnwindSafe(|| model.execute_batch(jobs, arrived, now, me, shards, results)))
            {
                crate::log!(
                    Error,
                    "shard {}: model {:?}: a batched step panicked ({}); its requests fail, the shard goes on",
                    me.0,
                    model.meta.name,
                    crate::sched::panic_message(&*panic)
                );
                model.recover_after_panic();
                results.clear();
            }
        })
    }

    /// Runs model `m`'s batches, forever: wakes when a step is queued, lets every task already
    /// ready add its steps (or waits out `max_queue_delay_us`), runs a batch, repeats.
    pub async fn run_batches(&self, m: usize) {
        let Some(q) = self.queue(m) else { return };
        let q = &*q;
        let mut budget = crate::sched::Budget::new();
        loop {
            std::future::poll_fn(|cx| q.poll_nonempty(cx)).await;
            if q.is_closed() {
                return;
            }
            if q.delay().is_zero() {
                crate::sched::yield_now().await;
            } else if let Some(due) = q.due() {
                let now = Instant::now();
                if due > now {
                    glommio::timer::sleep(due - now).await;
                    continue;
                }
            }
            let t0 = Instant::now();
            self.run_batch(m, q);
            budget.charge(t0.elapsed());
            budget.yield_if_spent().await;
        }
    }

    /// Starts the batch runner of every model that batches (on the calling shard's executor).
    pub fn spawn_batch_runners(self: &Rc<Self>) {
        let batching: Vec<bool> = self.queues.borrow().iter().map(Option::is_some).collect();
        for (m, q) in batching.into_iter().enumerate() {
            if q {
                let sh = self.clone();
                glommio::spawn_local(async move { sh.run_batches(m).await }).detach();
            }
        }
    }

    /// Serves messages from one peer until the peer goes away, under the same handler-time
    /// budget as a connection's rounds: forwarded work cannot starve this shard's own
    /// connections, its other peers or its expiry timer.
    pub async fn serve_peer(&self, rx: glommio::channels::shared_channel::ConnectedReceiver<mesh::Msg>) {
        let mut budget = crate::sched::Budget::new();
        while let Some(msg) = rx.recv().await {
            let t0 = Instant::now();
            self.mesh.handle(msg, self).await;
            budget.charge(t0.elapsed());
            budget.yield_if_spent().await;
        }
    }

    /// This shard's metrics snapshot.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            shard: self.id.0,
            forwarded_out: self.forwarded_out.get(),
            forwarded_in: self.forwarded_in.get(),
            stalls: self.stall.borrow().0.stalls,
            stall_worst_ms: self.stall.borrow().0.worst_late_ms,
            models: self.models.borrow().iter().map(|m| m.as_ref().map(ModelInstance::snapshot)).collect(),
            ..Snapshot::default()
        };
        self.metrics.snapshot_into(&mut s);
        s
    }

    /// Prometheus text for the whole server, gathered from every shard through the mesh.
    pub async fn scrape(&self) -> Result<String> {
        let mut snapshots = Vec::with_capacity(self.shards as usize);
        for s in 0..self.shards {
            let id = ShardId(s);
            snapshots.push(if id == self.id { self.snapshot() } else { self.mesh.metrics(id).await? });
        }
        Ok(crate::metrics::render(&self.catalog.borrow(), &snapshots))
    }

    /// Removes idle sequences, forever, on this shard's own timer.
    pub async fn expire_forever(&self) {
        self.watch_stall(); // the stall detector's first tick: the time it measures from
        loop {
            glommio::timer::sleep(EXPIRY_TICK).await;
            self.watch_stall();
            self.expire_now();
        }
    }

    /// The expiry timer fired: counts (and logs, throttled) a stall when it fired late.
    fn watch_stall(&self) {
        let Ok(mut guard) = self.stall.try_borrow_mut() else { return };
        let (watch, reader) = &mut *guard;
        let Some(stall) = watch.tick(self.clock.now_ms(), reader.read()) else { return };
        if let Some(again) = watch.should_log(Instant::now()) {
            crate::log!(Warning, "shard {}: the event loop stalled: {stall}{again}", self.id.0);
        }
    }

    /// One tick of the expiry timer: removes the sequences idle past their model's timeout as
    /// of the clock's now (at most `EXPIRIES_PER_TICK_MAX` per model); returns how many.
    pub fn expire_now(&self) -> usize {
        let now = self.clock.now_ms();
        let Ok(mut models) = self.models.try_borrow_mut() else { return 0 };
        let mut total = 0;
        for m in models.iter_mut().flatten() {
            let n = m.expire(now);
            if n > 0 {
                crate::log!(Info, "shard {}: model {:?}: removed {n} idle sequence(s)", self.id.0, m.meta.name);
            }
            total += n;
        }
        total
    }

    /// This shard's counters, as JSON for the introspection service.
    pub fn local_stats(&self) -> serde_json::Value {
        let models: Vec<serde_json::Value> = self
            .models
            .borrow()
            .iter()
            .flatten()
            .map(|m| {
                let c = m.counters;
                serde_json::json!({
                    "index": m.idx.0,
                    "name": m.meta.name,
                    "version": m.meta.version,
                    "inference_precision": m.meta.precision,
                    "execution_mode": m.meta.execution_mode,
                    "live_sequences": m.live_sequences(),
                    "steps": c.steps,
                    "started": c.started,
                    "ended": c.ended,
                    "expired": c.expired,
                    "rejected_max": c.rejected_max,
                    "failed": c.failed,
                    "openvino_ns": c.openvino_ns,
                    "swaps_out": c.swaps_out,
                    "swaps_in": c.swaps_in,
                    "batches": c.batches,
                    "batched_steps": c.batched_steps,
                    "batch_max": m.batch_max(),
                    "infer_requests": m.infer_requests(),
                    "infer_requests_max": m.infer_requests_max(),
                    "resident_sequences": m.resident_sequences(),
                    "sequences": m.sequence_steps(STATS_SEQUENCES_MAX),
                })
            })
            .collect();
        serde_json::json!({
            "shard": self.id.0,
            "cpu": self.cpu,
            "numa_node": self.numa_node,
            "forwarded_out": self.forwarded_out.get(),
            "forwarded_in": self.forwarded_in.get(),
            "stalls": self.stall.borrow().0.stalls,
            "stall_worst_ms": self.stall.borrow().0.worst_late_ms,
            "models": models,
        })
    }

    /// Every shard's counters, gathered through the mesh, and the placement plan (`"plan"`).
    pub async fn all_stats(&self) -> Result<serde_json::Value> {
        let mut shards = Vec::with_capacity(self.shards as usize);
        for s in 0..self.shards {
            let id = ShardId(s);
            shards.push(if id == self.id { self.local_stats() } else { self.mesh.stats(id).await? });
        }
        let mut all = serde_json::json!({ "shards": shards });
        if let (Some(plan), Some(o)) = (&self.plan, all.as_object_mut()) {
            o.insert("plan".into(), plan.clone());
        }
        Ok(all)
    }
}
