//! The lifecycle controller: which model versions are served, and every change to them.
//!
//! One controller runs per process, on its own unpinned thread (a glommio executor, so it can
//! wake the shards through channels). It owns the served set: for every configured model, its
//! versions and each version's instances (a `ModelIdx` every shard agrees on). At start, and at
//! each reload (the poll every `--file_system_poll_wait_seconds`, or an operator's request that a
//! shard forwards), it reads the configuration and the version directories, decides, and tells
//! every shard through its control channel; each shard applies the change on its own executor and
//! acknowledges. The request path never waits for it.
//!
//! Changing the served set keeps every live sequence:
//!
//! - A version is loaded off the shards: compiled on loader threads (at start one per shard,
//!   pinned to the shard's CPU; at a reload one per NUMA node at nice 19, so the shards keep
//!   answering), installed on every shard as `Pending`, then made `Available` everywhere.
//! - A version that leaves the policy (or whose model leaves the configuration, or is recompiled
//!   with new settings) goes `Unloading` on every shard: its live sequences step on, a START is
//!   refused, and its idle timeout applies even if idle cleanup is off. Once its live count is 0
//!   on every shard it is unloaded.
//! - A version that fails to load leaves what was serving in place (a version replaced by the
//!   policy is kept while the new one fails), reports why in the log and in its status, and is
//!   tried again when its files change.
//! - Changing `max_sequence_number` or `sequence_timeout_seconds` applies to the live instances;
//!   toggling `stateful`, or new settings that would change a version's state variables, is
//!   refused and the model keeps serving as loaded.

use crate::catalog::{ModelStatus, State, Use, VersionStatus, INSTANCES_MAX};
use crate::config::{compare, scan_versions, Change, ModelConfig, Reread, ServerConfig};
use crate::ov;
use crate::request::ModelIdx;
use crate::shard::admin::{AdminAnswer, AdminCall, AdminFailure, AdminRequest};
use crate::signature::StateInfo;
use crate::snapshot::Saved;

mod loader;
mod persist;
use glommio::channels::shared_channel::ConnectedSender;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// Control messages in flight to one shard.
pub const CONTROL_CHANNEL: usize = 64;
/// How often the controller looks at operator requests and unloading instances.
const TICK: Duration = Duration::from_millis(20);
/// How long a shard may take to apply a change (an install builds infer requests and, for a
/// batching model, runs the exactness check).
const ACK_TIMEOUT: Duration = Duration::from_secs(300);
/// Scheduling priority (nice) of the loader threads of a reload: the lowest, below the shards'
/// whose cores they share (measured against nice 10 in docs/lifecycle.md: at 19 a compile on a
/// shard's CPU leaves its p99 within the quiet spread; at 10 it added ≈ 2 ms).
const LOADER_NICE: i32 = 19;

/// What the controller tells a shard. Each message is acknowledged (`Ack`) with its sequence
/// number, once applied.
pub enum ToShard {
    /// Build an instance from `base` (and `batched`, one per batch size) and install it, Pending.
    Install {
        idx: ModelIdx,
        config: Box<ModelConfig>,
        version: i64,
        live: &'static AtomicU32,
        base: ov::SharedModel,
        batched: Vec<ov::SharedModel>,
    },
    Use {
        idx: ModelIdx,
        used: Use,
    },
    Limits {
        idx: ModelIdx,
        max_sequences: u32,
        timeout_ms: Option<u64>,
    },
    Unload {
        idx: ModelIdx,
    },
    Status(Vec<ModelStatus>),
    /// The answer to an operator request this shard forwarded.
    Answer {
        ticket: u64,
        answer: AdminAnswer,
    },
    /// Start accepting connections (after the first load).
    Serve,
    /// Shutting down: refuse new STARTs, stop accepting connections.
    Drain,
    /// Shutting down without a snapshot: run what is queued, refuse every step from now on.
    Freeze,
    /// Shutting down for a snapshot: run what is queued, refuse every step from now on, and
    /// send every live sequence with its state to `to`.
    Export {
        to: mpsc::Sender<Exported>,
    },
    /// Sequences of a snapshot for instance `idx` (least recently active first); the ack
    /// counts those refused.
    Restore {
        idx: ModelIdx,
        sequences: Vec<Saved>,
    },
}

/// One shard's live sequences, by instance.
pub type Exported = (usize, Vec<(ModelIdx, Vec<Saved>)>);

/// A shard's acknowledgement of message `seq` (a count for `Restore`, else 0).
pub struct Ack {
    pub shard: usize,
    pub seq: u64,
    pub result: Result<usize, String>,
}

/// One model version instance, as the controller tracks it.
struct Inst {
    idx: ModelIdx,
    /// Its live sequences on every shard (the instance's own counter).
    live: &'static AtomicU32,
    available: bool,
    states: Vec<StateInfo>,
    precision: String,
}

/// What identifies a version's files: a failed load is tried again when these change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp(Vec<(PathBuf, Option<SystemTime>, u64)>);

impl Stamp {
    fn of(xml: &Path) -> Stamp {
        let bin = xml.with_extension("bin");
        Stamp(
            [xml.to_path_buf(), bin]
                .into_iter()
                .map(|p| {
                    let m = std::fs::metadata(&p).ok();
                    let modified = m.as_ref().and_then(|m| m.modified().ok());
                    (p, modified, m.map_or(0, |m| m.len()))
                })
                .collect(),
        )
    }
}

#[derive(Default)]
struct Version {
    /// Newest last; at most one available.
    instances: Vec<Inst>,
    ever_loaded: bool,
    /// Why the last load failed, and the files it failed on.
    error: Option<String>,
    failed: Option<Stamp>,
}

impl Version {
    fn state(&self) -> State {
        if self.instances.iter().any(|i| i.available) {
            State::Available
        } else if !self.instances.is_empty() {
            State::Unloading
        } else if self.ever_loaded {
            State::End
        } else {
            // Never loaded: OVMS reports a version whose load failed as LOADING, with the error.
            State::Loading
        }
    }

    fn available(&self) -> Option<&Inst> {
        self.instances.iter().find(|i| i.available)
    }
}

struct Served {
    config: ModelConfig,
    /// False once the model has left the configuration (its instances unload).
    in_config: bool,
    /// Unloaded by an operator (Triton's RepositoryModelUnload): out until loaded again.
    operator_unloaded: bool,
    /// New settings that compiled nothing, and why: not tried again until the configuration
    /// changes (else every poll would compile them again).
    rejected: Option<(ModelConfig, String)>,
    versions: BTreeMap<i64, Version>,
}

/// What one reload did.
#[derive(Default)]
struct Report {
    changed: bool,
    failures: Vec<String>,
}

pub struct Controller {
    rt: &'static ov::Runtime,
    server: ServerConfig,
    /// Shard `s` runs on `cpus[s]`.
    cpus: Vec<usize>,
    /// Shards by NUMA node (one group per node of the plan; shards of an unknown node alone).
    groups: Vec<Vec<usize>>,
    to_shards: Vec<ConnectedSender<(u64, ToShard)>>,
    acks: mpsc::Receiver<Ack>,
    calls: mpsc::Receiver<AdminCall>,
    seq: u64,
    next_idx: usize,
    models: Vec<Served>,
    /// The last poll's failure, logged once until it changes.
    last_failure: Option<String>,
    /// The shutdown signal (set by `run`), and whether it has come: a reload in progress stops
    /// at the next version or loader result, so the drain is not held up by a compile.
    shutdown: Option<mpsc::Receiver<()>>,
    stopping: std::cell::Cell<bool>,
}

impl Controller {
    pub fn new(
        rt: &'static ov::Runtime,
        server: ServerConfig,
        plan: &crate::plan::Plan,
        to_shards: Vec<ConnectedSender<(u64, ToShard)>>,
        acks: mpsc::Receiver<Ack>,
        calls: mpsc::Receiver<AdminCall>,
    ) -> Controller {
        let mut groups: Vec<(Option<usize>, Vec<usize>)> = Vec::new();
        for (s, pu) in plan.shards.iter().enumerate() {
            match groups.iter_mut().find(|(n, _)| n.is_some() && *n == pu.numa_node) {
                Some((_, members)) => members.push(s),
                None => groups.push((pu.numa_node, vec![s])),
            }
        }
        Controller {
            rt,
            cpus: plan.cpus(),
            groups: groups.into_iter().map(|(_, m)| m).collect(),
            server,
            to_shards,
            acks,
            calls,
            seq: 0,
            next_idx: 0,
            models: Vec::new(),
            last_failure: None,
            shutdown: None,
            stopping: std::cell::Cell::new(false),
        }
    }

    /// The first load: every model of the configuration with the versions its policy selects.
    /// Any failure fails the start.
    pub async fn start(&mut self) -> Result<(), String> {
        let models = self.server.models.clone();
        let report = self.apply(models, true).await;
        if let Some(f) = report.failures.into_iter().next() {
            return Err(f);
        }
        self.publish().await
    }

    /// Starts every shard's listeners.
    pub async fn serve(&mut self) -> Result<(), String> {
        self.broadcast(|_| ToShard::Serve).await
    }

    /// Runs until a shutdown: operator requests as they come, the poll, and unloading. A
    /// message on `shutdown` drains (`drain`) and sends the outcome to `done`.
    pub async fn run(mut self, shutdown: mpsc::Receiver<()>, done: mpsc::Sender<Result<String, String>>) {
        let poll = Duration::from_secs(self.server.file_system_poll_wait_seconds);
        let mut next_poll = Instant::now() + poll;
        self.shutdown = Some(shutdown);
        loop {
            glommio::timer::sleep(TICK).await;
            if self.stopping() {
                let _ = done.send(self.drain().await);
                return;
            }
            while let Ok(call) = self.calls.try_recv() {
                let answer = self.operator(call.request).await;
                self.send(call.shard.0 as usize, ToShard::Answer { ticket: call.ticket, answer }).await;
            }
            if !poll.is_zero() && Instant::now() >= next_poll {
                self.poll().await;
                next_poll = Instant::now() + poll;
            }
            self.unload_finished().await;
        }
    }

    /// Whether a shutdown has been asked for (checked between ticks, versions and loader results).
    fn stopping(&self) -> bool {
        if !self.stopping.get() && self.shutdown.as_ref().is_some_and(|rx| rx.try_recv().is_ok()) {
            self.stopping.set(true);
        }
        self.stopping.get()
    }

    /// A reload by the poll: logs what changes, and a failure once until it changes.
    async fn poll(&mut self) {
        let report = match self.server.reread_models() {
            Ok(models) => self.apply(models, false).await,
            Err(Reread::Unreadable(e) | Reread::Invalid(e)) => {
                Report { changed: false, failures: vec![format!("config reload: {e}; serving as before")] }
            }
        };
        let failure = (!report.failures.is_empty()).then(|| report.failures.join("; "));
        let new_failure = failure != self.last_failure;
        if failure.is_some() && new_failure {
            for f in &report.failures {
                crate::log!(Error, "{f}");
            }
        }
        self.last_failure = failure;
        if report.changed || new_failure {
            if let Err(e) = self.publish().await {
                crate::log!(Error, "config reload: {e}");
            }
        }
    }

    /// An operator's request: reload now, load or unload a model.
    async fn operator(&mut self, request: AdminRequest) -> AdminAnswer {
        let models = match self.server.reread_models() {
            Ok(m) => m,
            Err(Reread::Unreadable(e)) => {
                crate::log!(Error, "config reload: {e}");
                return AdminAnswer { changed: false, failure: Some((AdminFailure::ConfigUnreadable, e)) };
            }
            Err(Reread::Invalid(e)) => {
                crate::log!(Error, "config reload: {e}; serving as before");
                return AdminAnswer { changed: false, failure: Some((AdminFailure::ConfigInvalid, e)) };
            }
        };
        let mut changed = false;
        match &request {
            AdminRequest::Reload => {}
            AdminRequest::Load(name) | AdminRequest::Unload(name) => {
                if !models.iter().any(|m| m.name == *name) {
                    let e = format!("model {name:?} is not in the configuration");
                    return AdminAnswer { changed: false, failure: Some((AdminFailure::UnknownModel, e)) };
                }
                let unload = matches!(request, AdminRequest::Unload(_));
                if let Some(m) = self.models.iter_mut().find(|m| m.config.name == *name) {
                    changed = m.operator_unloaded != unload;
                    m.operator_unloaded = unload;
                }
                if unload {
                    crate::log!(
                        Info,
                        "model {name:?}: unloaded by an operator's request; its live sequences may finish"
                    );
                }
            }
        }
        let report = self.apply(models, false).await;
        for f in &report.failures {
            crate::log!(Error, "{f}");
        }
        if let Err(e) = self.publish().await {
            crate::log!(Error, "config reload: {e}");
        }
        let failure = (!report.failures.is_empty()).then(|| (AdminFailure::LoadFailed, report.failures.join("; ")));
        AdminAnswer { changed: changed || report.changed, failure }
    }

    /// Makes the served set follow `models` (the configuration) and the version directories.
    async fn apply(&mut self, models: Vec<ModelConfig>, first: bool) -> Report {
        let mut report = Report::default();
        // Models that left the configuration: every instance unloads.
        for m in 0..self.models.len() {
            if self.models[m].in_config && !models.iter().any(|c| c.name == self.models[m].config.name) {
                crate::log!(Info, "model {:?}: removed from the configuration; unloading", self.models[m].config.name);
                self.models[m].in_config = false;
                self.retire_all(m).await;
                report.changed = true;
            }
        }
        for config in models {
            let name = config.name.clone();
            let m = match self.models.iter().position(|s| s.config.name == name) {
                Some(m) => m,
                None => {
                    self.models.push(Served {
                        config: config.clone(),
                        in_config: true,
                        operator_unloaded: false,
                        rejected: None,
                        versions: BTreeMap::new(),
                    });
                    self.models.len() - 1
                }
            };
            match &self.models[m].rejected {
                Some((c, why)) if *c == config => {
                    report.failures.push(why.clone());
                    continue;
                }
                Some(_) => self.models[m].rejected = None,
                None => {}
            }
            // With new settings to compile: the settings the served instances were made with.
            let mut previous: Option<ModelConfig> = None;
            if !self.models[m].in_config {
                // Back in the configuration: what still unloads stays unloading; versions load anew.
                self.models[m].in_config = true;
                self.models[m].config = config;
            } else {
                match compare(&self.models[m].config, &config) {
                    Change::Same => self.models[m].config = config,
                    Change::Refused(why) => {
                        report.failures.push(format!("model {name:?}: {why}; it keeps serving as loaded"));
                        continue;
                    }
                    Change::Live => {
                        self.models[m].config = config;
                        if self.apply_limits(m).await {
                            report.changed = true;
                        }
                        crate::log!(
                            Info,
                            "model {name:?}: max_sequence_number {}, idle timeout {} applied to its live sequences",
                            self.models[m].config.max_sequence_number,
                            describe_timeout(&self.models[m].config, self.cleaner())
                        );
                    }
                    Change::Recompile(keys) => {
                        crate::log!(
                            Info,
                            "model {name:?}: {} changed; its versions are compiled again",
                            keys.join(", ")
                        );
                        previous = Some(std::mem::replace(&mut self.models[m].config, config));
                    }
                }
            }
            if self.models[m].operator_unloaded {
                if self.retire_all(m).await {
                    report.changed = true;
                }
                continue;
            }
            let failures_before = report.failures.len();
            let loaded = self.sync_versions(m, previous.is_some(), first, &mut report).await;
            if let (Some(old), 0) = (previous, loaded) {
                // Nothing compiled with the new settings: the model is as it was, and so is its
                // configuration; the same settings are not tried again until the file changes.
                report.failures.push(format!("model {name:?}: the new settings were not applied"));
                let why = report.failures[failures_before..].join("; ");
                let new = std::mem::replace(&mut self.models[m].config, old);
                self.models[m].rejected = Some((new, why));
            }
        }
        report
    }

    /// Loads the versions the policy selects that are not served (all of them with `recompile`),
    /// and retires the served ones it no longer selects. Returns how many versions it loaded.
    async fn sync_versions(&mut self, m: usize, recompile: bool, first: bool, report: &mut Report) -> usize {
        let name = self.models[m].config.name.clone();
        let dirs = match scan_versions(&self.models[m].config.base_path) {
            Ok(d) => d,
            Err(e) => {
                report.failures.push(format!("model {name:?}: {e}"));
                return 0;
            }
        };
        let mut loaded = 0;
        let all: Vec<i64> = dirs.iter().map(|d| d.version).collect();
        let wanted = self.models[m].config.version_policy.select(&all);
        if all.is_empty() {
            let base = self.models[m].config.base_path.display().to_string();
            report.failures.push(format!("model {name:?}: {base}: no numeric version directory (e.g. 1/) found"));
        } else if wanted.is_empty() {
            let policy = self.models[m].config.version_policy.to_json();
            report.failures.push(format!("model {name:?}: no version directory matches model_version_policy {policy}"));
        }
        // A selected version is not served (it failed to load), and whether that failure is new.
        let (mut missing, mut fresh) = (false, false);
        for &v in &wanted {
            if self.stopping() {
                report.failures.push(format!("model {name:?}: the reload stopped for a shutdown"));
                break;
            }
            let Some(dir) = dirs.iter().find(|d| d.version == v) else { continue };
            let served = self.models[m].versions.get(&v).is_some_and(|x| x.available().is_some());
            if served && !recompile {
                continue;
            }
            let xml = match &dir.xml {
                Ok(x) => x.clone(),
                Err(e) => {
                    let e = format!("model {name:?} version {v}: {e}");
                    let version = self.models[m].versions.entry(v).or_default();
                    if version.error.as_ref() != Some(&e) {
                        report.changed = true;
                    }
                    version.error = Some(e.clone());
                    report.failures.push(e);
                    missing |= !served;
                    continue;
                }
            };
            let stamp = Stamp::of(&xml);
            let version = self.models[m].versions.entry(v).or_default();
            if !recompile && version.failed.as_ref() == Some(&stamp) {
                // Failed on these very files: wait for them to change.
                if let Some(e) = &version.error {
                    report.failures.push(e.clone());
                }
                missing |= !served;
                continue;
            }
            if !served && version.instances.is_empty() && version.error.is_none() {
                // Reported LOADING while it compiles (requests for it: "not loaded yet").
                if let Err(e) = self.publish().await {
                    crate::log!(Error, "{e}");
                }
            }
            match self.load(m, v, &xml, !first).await {
                Ok(()) => {
                    loaded += 1;
                    report.changed = true;
                    let version = self.models[m].versions.entry(v).or_default();
                    version.error = None;
                    version.failed = None;
                }
                Err(e) => {
                    let e = format!("model {name:?} version {v}: {e}");
                    let version = self.models[m].versions.entry(v).or_default();
                    version.error = Some(e.clone());
                    version.failed = Some(stamp);
                    report.failures.push(e);
                    report.changed = true;
                    missing |= !served;
                    fresh = true;
                }
            }
        }
        // Retire what the policy no longer selects, except, while a selected version failed to
        // load, the served versions whose files are still there: a failed update changes nothing.
        let served: Vec<i64> =
            self.models[m].versions.iter().filter(|(_, x)| x.available().is_some()).map(|(v, _)| *v).collect();
        for v in served {
            if wanted.contains(&v) {
                continue;
            }
            let present = dirs.iter().any(|d| d.version == v && d.xml.is_ok());
            if missing && present {
                if fresh {
                    crate::log!(
                        Warning,
                        "model {name:?}: version {v} keeps serving, as a version meant to replace it failed to load"
                    );
                }
                continue;
            }
            crate::log!(Info, "model {name:?} version {v}: leaves the version policy; unloading");
            self.retire(m, v).await;
            report.changed = true;
        }
        loaded
    }

    /// Compiles version `v` of model `m`, installs it on every shard, makes it available, and
    /// retires the instance it replaces (a recompile of the same version).
    async fn load(&mut self, m: usize, v: i64, xml: &Path, background: bool) -> Result<(), String> {
        if self.next_idx >= INSTANCES_MAX {
            return Err(format!(
                "{INSTANCES_MAX} model instances have been loaded since the server started; restart it to load more"
            ));
        }
        let config = self.models[m].config.clone();
        let t0 = Instant::now();
        let compiled = self.compile(&config, xml, background)?;
        let first = compiled.first().map(|(b, _)| b).ok_or("no shard to load on")?;
        let states = first.states().to_vec();
        let precision = first.inference_precision().to_string();
        let replaced = self.models[m].versions.get(&v).and_then(Version::available).map(|i| i.idx);
        if let Some(old) = self.models[m].versions.get(&v).and_then(Version::available) {
            if config.stateful && old.states != states {
                return Err(format!(
                    "the new settings would change its state variables ({} -> {}); it keeps serving as loaded",
                    describe_states(&old.states),
                    describe_states(&states)
                ));
            }
        }
        let block = log_block(&config, v, xml, first, self.to_shards.len(), self.cleaner());
        let idx = ModelIdx(self.next_idx as u16);
        self.next_idx += 1;
        let live: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
        let mut compiled: Vec<Option<(ov::SharedModel, Vec<ov::SharedModel>)>> =
            compiled.into_iter().map(Some).collect();
        let installed = self
            .broadcast_with(|s| {
                let (base, batched) = compiled.get_mut(s).and_then(Option::take)?;
                Some(ToShard::Install { idx, config: Box::new(config.clone()), version: v, live, base, batched })
            })
            .await;
        if let Err(e) = installed {
            let _ = self.broadcast(|_| ToShard::Unload { idx }).await;
            return Err(e);
        }
        self.broadcast(|_| ToShard::Use { idx, used: Use::Available }).await?;
        let version = self.models[m].versions.entry(v).or_default();
        version.instances.push(Inst { idx, live, available: true, states, precision });
        version.ever_loaded = true;
        for line in block {
            crate::log!(Info, "{line}");
        }
        crate::log!(Info, "model {:?} version {v}: AVAILABLE ({} ms to load)", config.name, t0.elapsed().as_millis());
        if let Some(old) = replaced {
            self.retire_instance(m, v, old).await;
        }
        Ok(())
    }

    /// Every instance of model `m` goes unloading; returns whether any was available.
    async fn retire_all(&mut self, m: usize) -> bool {
        let versions: Vec<i64> = self.models[m].versions.keys().copied().collect();
        let mut any = false;
        for v in versions {
            any |= self.retire(m, v).await;
        }
        any
    }

    /// Version `v`'s available instance goes unloading; returns whether there was one.
    async fn retire(&mut self, m: usize, v: i64) -> bool {
        let Some(idx) = self.models[m].versions.get(&v).and_then(Version::available).map(|i| i.idx) else {
            return false;
        };
        self.retire_instance(m, v, idx).await;
        true
    }

    async fn retire_instance(&mut self, m: usize, v: i64, idx: ModelIdx) {
        let config = &self.models[m].config;
        // An unloading instance's idle sequences time out even with idle cleanup off: its
        // unloading is bounded by the timeout.
        let timeout_ms = Some(config.sequence_timeout_seconds.saturating_mul(1000));
        let max = config.max_sequence_number;
        let (name, live) =
            (config.name.clone(), self.instance(m, v, idx).map_or(0, |i| i.live.load(Ordering::Acquire)));
        if let Err(e) = self.broadcast(|_| ToShard::Use { idx, used: Use::Unloading }).await {
            crate::log!(Error, "model {name:?} version {v}: {e}");
        }
        if let Err(e) = self.broadcast(|_| ToShard::Limits { idx, max_sequences: max, timeout_ms }).await {
            crate::log!(Error, "model {name:?} version {v}: {e}");
        }
        if let Some(i) = self.models[m].versions.get_mut(&v).and_then(|x| x.instances.iter_mut().find(|i| i.idx == idx))
        {
            i.available = false;
        }
        crate::log!(Info, "model {name:?} version {v}: UNLOADING ({live} live sequence(s) may finish)");
    }

    fn instance(&self, m: usize, v: i64, idx: ModelIdx) -> Option<&Inst> {
        self.models[m].versions.get(&v)?.instances.iter().find(|i| i.idx == idx)
    }

    /// Applies model `m`'s live settings to its available instances; returns whether any.
    async fn apply_limits(&mut self, m: usize) -> bool {
        let config = &self.models[m].config;
        let (max, timeout_ms) = (config.max_sequence_number, config.idle_timeout_ms(self.cleaner()));
        let idxs: Vec<ModelIdx> = self.models[m]
            .versions
            .values()
            .flat_map(|v| v.instances.iter())
            .filter(|i| i.available)
            .map(|i| i.idx)
            .collect();
        for &idx in &idxs {
            if let Err(e) = self.broadcast(|_| ToShard::Limits { idx, max_sequences: max, timeout_ms }).await {
                crate::log!(Error, "model {:?}: {e}", self.models[m].config.name);
            }
        }
        !idxs.is_empty()
    }

    /// Unloads every unloading instance whose sequences are all gone.
    async fn unload_finished(&mut self) {
        let mut done: Vec<(usize, i64, ModelIdx)> = Vec::new();
        for (m, served) in self.models.iter().enumerate() {
            for (&v, version) in &served.versions {
                for i in &version.instances {
                    if !i.available && i.live.load(Ordering::Acquire) == 0 {
                        done.push((m, v, i.idx));
                    }
                }
            }
        }
        if done.is_empty() {
            return;
        }
        for (m, v, idx) in done {
            if let Err(e) = self.broadcast(|_| ToShard::Unload { idx }).await {
                crate::log!(Error, "model {:?} version {v}: {e}", self.models[m].config.name);
            }
            if let Some(version) = self.models[m].versions.get_mut(&v) {
                version.instances.retain(|i| i.idx != idx);
            }
            crate::log!(Info, "model {:?} version {v}: instance {} unloaded", self.models[m].config.name, idx.0);
        }
        if let Err(e) = self.publish().await {
            crate::log!(Error, "{e}");
        }
    }

    /// Every model's status, as the shards report it.
    fn status(&self) -> Vec<ModelStatus> {
        self.models
            .iter()
            .map(|m| ModelStatus {
                name: m.config.name.clone(),
                versions: m
                    .versions
                    .iter()
                    .map(|(&version, v)| VersionStatus { version, state: v.state(), error: v.error.clone() })
                    .collect(),
            })
            .collect()
    }

    async fn publish(&mut self) -> Result<(), String> {
        let status = self.status();
        self.broadcast(|_| ToShard::Status(status.clone())).await
    }

    fn cleaner(&self) -> bool {
        self.server.sequence_cleaner_poll_wait_minutes != 0
    }

    /// Sends one message to shard `s` without waiting for its acknowledgement.
    async fn send(&mut self, s: usize, msg: ToShard) {
        if let Some(tx) = self.to_shards.get(s) {
            if tx.send((0, msg)).await.is_err() {
                crate::log!(Error, "shard {s} stopped");
            }
        }
    }

    /// Sends every shard its message and waits until each has applied it.
    async fn broadcast(&mut self, mut make: impl FnMut(usize) -> ToShard) -> Result<(), String> {
        self.broadcast_with(|s| Some(make(s))).await.map(|_| ())
    }

    /// `broadcast` with a message per shard; returns the sum of the shards' counts.
    async fn broadcast_with(&mut self, mut make: impl FnMut(usize) -> Option<ToShard>) -> Result<usize, String> {
        self.seq += 1;
        let seq = self.seq;
        let mut pending = 0;
        let mut count = 0;
        let mut errors = Vec::new();
        for (s, tx) in self.to_shards.iter().enumerate() {
            let Some(msg) = make(s) else {
                errors.push(format!("shard {s}: nothing to send"));
                continue;
            };
            if tx.send((seq, msg)).await.is_err() {
                errors.push(format!("shard {s} stopped"));
                continue;
            }
            pending += 1;
        }
        let deadline = Instant::now() + ACK_TIMEOUT;
        while pending > 0 {
            match self.acks.try_recv() {
                Ok(ack) if ack.seq == seq => {
                    pending -= 1;
                    match ack.result {
                        Ok(n) => count += n,
                        Err(e) => errors.push(format!("shard {}: {e}", ack.shard)),
                    }
                }
                Ok(_) => {}
                Err(mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                Err(mpsc::TryRecvError::Empty) => {
                    errors.push(format!("{pending} shard(s) did not answer within {} s", ACK_TIMEOUT.as_secs()));
                    break;
                }
                Err(mpsc::TryRecvError::Disconnected) => {
                    errors.push("the shards stopped".into());
                    break;
                }
            }
        }
        if errors.is_empty() {
            Ok(count)
        } else {
            Err(errors.join("; "))
        }
    }
}

fn describe_timeout(config: &ModelConfig, cleaner: bool) -> String {
    match config.idle_timeout_ms(cleaner) {
        Some(t) => format!("{} s", t / 1000),
        None => "none".into(),
    }
}

/// State variables for a message: `[name type [dims], ...]`, as a snapshot records them.
fn describe_states(states: &[StateInfo]) -> String {
    describe_saved(&crate::snapshot::Section::describe(states))
}

/// A snapshot section's state variables for a message (the one format of both).
fn describe_saved(states: &[(String, String, Vec<u64>, u64)]) -> String {
    let list: Vec<String> = states.iter().map(|(n, e, d, _)| format!("{n} {e} {d:?}")).collect();
    format!("[{}]", list.join(", "))
}

/// The operator's log block for a version as it loads: where it comes from, how it is served,
/// its ports and state variables, and the precision it runs in.
fn log_block(
    config: &ModelConfig,
    v: i64,
    xml: &Path,
    m: &ov::SharedModel,
    shards: usize,
    cleaner: bool,
) -> Vec<String> {
    let name = &config.name;
    let mut out = Vec::new();
    let kind = if config.stateful {
        format!(
            "stateful: max_sequence_number {}, idle timeout {}, low_latency_transformation {}, max_batch_size {}, \
             max_queue_delay_us {}",
            config.max_sequence_number,
            describe_timeout(config, cleaner),
            config.low_latency_transformation,
            config.max_batch_size,
            config.max_queue_delay_us
        )
    } else {
        "stateless".to_string()
    };
    out.push(format!(
        "model {name:?} version {v} from {} on {shards} shard(s), nireq {}, {kind}; inference precision {}, execution \
         mode {}",
        xml.display(),
        config.nireq,
        m.inference_precision(),
        m.execution_mode()
    ));
    for p in m.inputs() {
        out.push(format!("model {name:?} version {v}:   input  {:?} {:?} {:?}", p.name, p.elem, p.dims));
    }
    for p in m.outputs() {
        out.push(format!("model {name:?} version {v}:   output {:?} {:?} {:?}", p.name, p.elem, p.dims));
    }
    for (i, s) in m.states().iter().enumerate() {
        let restore = if m.restores_in_place(i) { "in place" } else { "by set_state" };
        out.push(format!(
            "model {name:?} version {v}:   state  {:?} {:?} {:?} ({} bytes per sequence, restored {restore})",
            s.name, s.elem, s.dims, s.byte_size
        ));
    }
    out
}
