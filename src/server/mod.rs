//! Process start-up: load the OpenVINO runtime, start one glommio executor per shard of the
//! placement plan (`src/plan.rs`; each pins itself to its CPU, then compiles its own models,
//! connects its end of the mesh, starts its expiry timer and listens on the shared port with
//! SO_REUSEPORT), then wait.

mod lifecycle;

use crate::catalog::Use;
use crate::config::{CompilePer, ServerConfig};
use crate::grpc::{self, Limits};
use crate::ov;
use crate::plan::Plan;
use crate::service::GrpcService;
use crate::shard::admin::AdminCall;
use crate::shard::mesh::MeshPlan;
use crate::shard::model::ModelInstance;
use crate::shard::{Shard, ShardId};
use glommio::channels::shared_channel::{self, ConnectedReceiver};
use glommio::{LocalExecutorBuilder, Placement};
use lifecycle::{Ack, Controller, ToShard, CONTROL_CHANNEL};
use std::rc::Rc;
use std::sync::mpsc;

pub use crate::plan::SHARDS_MAX;

/// Runs the server on `plan`'s CPUs (shard `i` on `plan.shards[i]`) until it fails. Errors are
/// one-line messages for the operator.
pub fn run(config: ServerConfig, plan: Plan, tls: Option<crate::tls::Material>) -> Result<(), String> {
    crate::log::set_level(config.log_level);
    // Before any thread starts: every thread inherits the signal mask, and a SIGTERM during the
    // start is then handled once serving (a shutdown), not by the default action.
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
        .map_err(|e| format!("cannot handle SIGTERM/SIGINT: {e}"))?;
    let rt = ov::load(None).map_err(|e| e.to_string())?;
    plan.log();
    let cpus = plan.cpus();
    let shards = cpus.len();
    let plan_json = plan.to_json();
    let places = crate::topology::describe(&cpus);
    match &places {
        Some(places) => {
            for p in places {
                crate::log!(
                    Debug,
                    "CPU {}: core {:?}, package {:?}, NUMA node {:?}",
                    p.cpu,
                    p.core,
                    p.package,
                    p.numa_node
                );
            }
            for (a, b) in crate::topology::shared_cores(places) {
                crate::log!(Warning, "CPUs {a} and {b} are hyper-threads of one physical core; two shards there compete for it (--smt on; --smt off keeps one shard per core)");
            }
        }
        None => crate::log!(Warning, "hwloc could not read the topology; NUMA placement is not reported"),
    }

    // Check every model's directory before starting anything, so a typo fails fast.
    for m in &config.models {
        crate::config::scan_versions(&m.base_path).map_err(|e| format!("model {:?}: {e}", m.name))?;
    }
    let cleaner_enabled = config.sequence_cleaner_poll_wait_minutes != 0;
    let net = config.net;
    let limits = Limits {
        message_bytes_max: config.grpc_message_bytes_max,
        streams_max: net.grpc_streams,
        connections_max: net.grpc_connections,
        header_list_bytes_max: net.grpc_header_list_bytes,
        pending_resets_max: net.grpc_pending_resets,
        reset_streams_kept: 2 * net.grpc_streams as usize,
        ..Limits::default()
    };
    let addr = format!("{}:{}", config.bind_address, config.port);
    let rest_addr = (config.rest_port != 0).then(|| format!("{}:{}", config.rest_bind_address, config.rest_port));
    let rest_limits = crate::rest::Limits {
        header_bytes_max: net.rest_header_bytes,
        body_bytes_max: net.rest_body_bytes,
        idle_timeout: std::time::Duration::from_secs(net.rest_idle_timeout_seconds),
        request_timeout: std::time::Duration::from_secs(config.rest_request_timeout_seconds),
        connections_max: net.rest_connections,
    };
    if config.compile_per == CompilePer::NumaNode {
        crate::log!(
            Info,
            "--compile_per numa_node: each model is compiled once per NUMA node, with one CPU stream per shard of \
             the node, and shared by the node's shards"
        );
    }

    let mesh_limits = crate::shard::mesh::MeshLimits {
        forwarded_per_peer: net.mesh_forwarded_steps,
        forward_wait: std::time::Duration::from_millis(net.mesh_forward_wait_ms),
    };
    let mut mesh_plan = MeshPlan::new(shards, mesh_limits);
    // The lifecycle controller's channels: one control channel to each shard (glommio, so a
    // message wakes the shard), and the shards' acknowledgements and operator requests back.
    let (ack_tx, ack_rx) = mpsc::channel::<Ack>();
    let (call_tx, call_rx) = mpsc::channel::<AdminCall>();
    let mut control_senders = Vec::with_capacity(shards);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut handles = Vec::with_capacity(shards);
    for (s, &cpu) in cpus.iter().enumerate() {
        let ends = mesh_plan.take(s);
        let ready = ready_tx.clone();
        let (ack_tx, call_tx) = (ack_tx.clone(), call_tx.clone());
        let (control_tx, control_rx) = shared_channel::new_bounded::<(u64, ToShard)>(CONTROL_CHANNEL);
        control_senders.push(control_tx);
        let addr = addr.clone();
        let rest_addr = rest_addr.clone();
        let (shard_port_base, bind_address) = (config.shard_port_base, config.bind_address.clone());
        let numa_node = plan.shards[s].numa_node;
        let plan_json = plan_json.clone();
        // Each shard its own copy: it builds its own TLS configurations from it (`crate::tls`).
        let tls = tls.clone();
        let mut builder = LocalExecutorBuilder::new(Placement::Unbound).name(&format!("shard-{s}"));
        if config.spin_before_park_us > 0 {
            builder = builder.spin_before_park(std::time::Duration::from_micros(config.spin_before_park_us));
        }
        let handle = builder
            .spawn(move || async move {
                let id = ShardId(s as u16);
                let pinned = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                let core = match ov::Core::new(rt) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready.send(Err(e.to_string()));
                        return;
                    }
                };
                let bind = |a: &str, what: &str| {
                    glommio::net::TcpListener::bind(a).map_err(|e| format!("cannot listen on {a}{what}: {e}"))
                };
                let mut listeners = Vec::new();
                let bound = (|| -> Result<(), String> {
                    listeners.push(Listener::Grpc(bind(&addr, "")?, "listener"));
                    if let Some(a) = rest_addr.as_deref() {
                        listeners.push(Listener::Rest(bind(a, " (REST)")?));
                    }
                    if let Some(base) = shard_port_base {
                        // This shard's own port: every connection to it lands here (shard-aware clients).
                        let own = format!("{bind_address}:{}", base as usize + s);
                        listeners.push(Listener::Grpc(bind(&own, " (shard port)")?, "shard port listener"));
                    }
                    Ok(())
                })();
                if let Err(e) = bound {
                    let _ = ready.send(Err(e));
                    return;
                }
                let acceptors = match tls.as_ref().map(Acceptors::new).transpose() {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = ready.send(Err(format!("shard {s}: TLS: {e}")));
                        return;
                    }
                };
                let (mesh, receivers) = ends.connect(id).await;
                let shard = Rc::new(
                    Shard::new(
                        id,
                        shards as u16,
                        pinned.then_some(cpu),
                        numa_node,
                        Vec::new(),
                        mesh,
                        crate::shard::clock::Clock::monotonic(),
                    )
                    .with_plan(plan_json),
                );
                shard.admin.connect(call_tx);
                for rx in receivers {
                    let sh = shard.clone();
                    glommio::spawn_local(async move { sh.serve_peer(rx).await }).detach();
                }
                let sh = shard.clone();
                glommio::spawn_local(async move { sh.expire_forever().await }).detach();
                let _ = ready.send(Ok(()));
                drop(ready);
                // Meets the controller's end (connecting is a rendezvous; it starts after `ready`).
                let control = control_rx.connect().await;
                let serving = Serving {
                    shard,
                    core,
                    cleaner_enabled,
                    listeners,
                    accepting: Vec::new(),
                    limits,
                    rest_limits,
                    acceptors,
                };
                serving.control(control, ack_tx).await;
            })
            .map_err(|e| format!("cannot start shard {s}: {e}"))?;
        handles.push(handle);
    }
    drop((ready_tx, ack_tx, call_tx));
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a shard stopped during start-up".into()),
        }
    }

    // The controller: loads every model (the start fails if one fails), restores the snapshot
    // of --state_dir, lets the shards serve, then follows the configuration until a shutdown.
    let (started_tx, started_rx) = mpsc::channel::<Result<(), String>>();
    let (shutdown_tx, shutdown_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<Result<String, String>>();
    let server = config.clone();
    let controller = LocalExecutorBuilder::new(Placement::Unbound)
        .name("seqcore-lifecycle")
        .spawn(move || async move {
            let mut senders = Vec::with_capacity(control_senders.len());
            for tx in control_senders {
                senders.push(tx.connect().await);
            }
            let mut c = Controller::new(rt, server, &plan, senders, ack_rx, call_rx);
            let started = match c.start().await {
                Ok(()) => match c.restore().await {
                    Ok(()) => c.serve().await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let failed = started.is_err();
            let _ = started_tx.send(started);
            if !failed {
                c.run(shutdown_rx, done_tx).await;
            }
        })
        .map_err(|e| format!("cannot start the lifecycle controller: {e}"))?;
    match started_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("the lifecycle controller stopped during start-up".into()),
    }
    let mut rest = rest_addr.map_or(String::new(), |a| format!(" and REST on {a}"));
    if let Some(base) = config.shard_port_base {
        rest += &format!(", shard s alone on port {base}+s");
    }
    if let Some(t) = &tls {
        rest += if t.client_auth() { " (TLS only, client certificates required)" } else { " (TLS only)" };
    }
    eprintln!(
        "seqcore: serving gRPC on {addr}{rest} with {shards} shard(s) on CPUs {cpus:?} (OpenVINO {}, runtime {})",
        rt.version(),
        rt.dir().display()
    );
    // Runs until SIGTERM or SIGINT (registered before the shards started), then shuts down.
    let signal = signals.forever().next().unwrap_or(signal_hook::consts::SIGTERM);
    let timeout = std::time::Duration::from_secs(config.shutdown_timeout_seconds);
    crate::log!(
        Info,
        "signal {signal}: shutting down (not ready, no new connections or sequences; at most {} s)",
        timeout.as_secs()
    );
    if shutdown_tx.send(()).is_err() {
        return Err("the lifecycle controller stopped".into());
    }
    // A drain that overruns exits anyway: a snapshot not written leaves any older one as it was.
    let outcome = done_rx.recv_timeout(timeout);
    drop((controller, handles));
    match outcome {
        Ok(Ok(what)) => {
            crate::log!(Info, "shutdown: {what}");
            std::process::exit(0)
        }
        Ok(Err(e)) => Err(format!("shutdown: {e}")),
        Err(_) => Err(format!("shutdown: not done within --shutdown_timeout_seconds {}; exiting", timeout.as_secs())),
    }
}

/// A listener a shard serves once the first load is done.
/// A shard's TLS acceptors: one for its gRPC listeners (ALPN h2), one for REST (http/1.1).
struct Acceptors {
    grpc: Rc<crate::tls::Acceptor>,
    rest: Rc<crate::tls::Acceptor>,
}

impl Acceptors {
    fn new(m: &crate::tls::Material) -> Result<Acceptors, String> {
        use crate::tls::Alpn;
        Ok(Acceptors { grpc: Rc::new(m.acceptor(Alpn::H2)?), rest: Rc::new(m.acceptor(Alpn::Http11)?) })
    }
}

enum Listener {
    Grpc(glommio::net::TcpListener, &'static str),
    Rest(glommio::net::TcpListener),
}

/// A running shard as its control task sees it: the shard, its OpenVINO core (instances are
/// built from the controller's compiled models here), and the listeners it starts on `Serve`.
struct Serving {
    shard: Rc<Shard<ov::CompiledModel>>,
    core: ov::Core,
    cleaner_enabled: bool,
    listeners: Vec<Listener>,
    /// The accept loops, once serving (dropped at a shutdown, which closes the listeners).
    accepting: Vec<glommio::Task<()>>,
    limits: Limits,
    rest_limits: crate::rest::Limits,
    /// None: plaintext listeners.
    acceptors: Option<Acceptors>,
}

impl Serving {
    /// Applies the controller's messages, forever, acknowledging each.
    async fn control(mut self, rx: ConnectedReceiver<(u64, ToShard)>, acks: mpsc::Sender<Ack>) {
        let s = self.shard.id.0 as usize;
        while let Some((seq, msg)) = rx.recv().await {
            let result = self.apply(msg);
            if seq != 0 && acks.send(Ack { shard: s, seq, result }).is_err() {
                return;
            }
        }
    }

    fn apply(&mut self, msg: ToShard) -> Result<usize, String> {
        let shard = &self.shard;
        match msg {
            ToShard::Install { idx, config, version, live, base, batched } => {
                let base = self.core.adopt(base).map_err(|e| e.to_string())?;
                let batched = batched
                    .into_iter()
                    .map(|m| self.core.adopt(m))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let mut instance =
                    ModelInstance::new(base, &config, version, live, self.cleaner_enabled, seed(shard.id.0 as usize))?;
                if !batched.is_empty() {
                    instance.enable_batching(batched)?;
                }
                shard.install(idx, instance, Use::Pending).map_err(|e| e.to_string())?;
                Ok(0)
            }
            ToShard::Use { idx, used } => {
                shard.set_use(idx, used);
                Ok(0)
            }
            ToShard::Limits { idx, max_sequences, timeout_ms } => {
                shard.set_limits(idx, max_sequences, timeout_ms);
                Ok(0)
            }
            ToShard::Unload { idx } => {
                let dropped = shard.unload(idx);
                if dropped > 0 {
                    crate::log!(
                        Warning,
                        "shard {}: instance {}: {dropped} sequence(s) dropped at unload",
                        shard.id.0,
                        idx.0
                    );
                }
                Ok(0)
            }
            ToShard::Status(status) => {
                shard.set_status(status);
                Ok(0)
            }
            ToShard::Answer { ticket, answer } => {
                shard.admin.answer(ticket, answer);
                Ok(0)
            }
            ToShard::Serve => {
                self.serve();
                Ok(0)
            }
            ToShard::Drain => {
                shard.drain();
                // Dropping the accept loops closes the listening sockets: new connections are
                // refused; the open ones are served on.
                self.accepting.clear();
                Ok(0)
            }
            ToShard::Freeze => {
                shard.freeze();
                Ok(0)
            }
            ToShard::Export { to } => {
                shard.freeze();
                to.send((shard.id.0 as usize, shard.export())).map_err(|_| "the controller stopped".to_string())?;
                Ok(0)
            }
            ToShard::Restore { idx, sequences } => Ok(shard.import(idx, sequences)),
        }
    }

    /// Starts the accept loops of the shard's listeners.
    fn serve(&mut self) {
        let s = self.shard.id.0;
        for l in self.listeners.drain(..) {
            match l {
                Listener::Grpc(l, what) => {
                    let service = Rc::new(GrpcService { shard: self.shard.clone() });
                    let limits = self.limits;
                    let tls = self.acceptors.as_ref().map(|a| a.grpc.clone());
                    self.accepting.push(glommio::spawn_local(async move {
                        let err = grpc::serve(l, service, limits, tls).await;
                        crate::log!(Error, "shard {s}: {what} failed: {err}");
                    }));
                }
                Listener::Rest(l) => {
                    let (sh, limits) = (self.shard.clone(), self.rest_limits);
                    let tls = self.acceptors.as_ref().map(|a| a.rest.clone());
                    self.accepting.push(glommio::spawn_local(async move {
                        let err = crate::rest::serve(l, sh, limits, tls).await;
                        crate::log!(Error, "shard {s}: REST listener failed: {err}");
                    }));
                }
            }
        }
    }
}

/// A per-process, per-shard seed for the sequence tables' hash.
fn seed(shard: usize) -> u64 {
    let t =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    t ^ (std::process::id() as u64) << 32 ^ shard as u64
}
