//! Process start-up: load the OpenVINO runtime, start one glommio executor per shard of the
//! placement plan (`src/plan.rs`; each pins itself to its CPU, then compiles its own models,
//! connects its end of the mesh, starts its expiry timer and listens on the shared port with
//! SO_REUSEPORT), then wait.

use crate::config::{resolve_model_files, CompilePer, ServerConfig};
use crate::grpc::{self, Limits};
use crate::ov;
use crate::plan::Plan;
use crate::service::GrpcService;
use crate::shard::mesh::MeshPlan;
use crate::shard::model::{batch_sizes, ModelInstance};
use crate::shard::{Shard, ShardId};
use glommio::{LocalExecutorBuilder, Placement};
use std::rc::Rc;
use std::sync::atomic::AtomicU32;
use std::sync::mpsc;

pub use crate::plan::SHARDS_MAX;

/// Runs the server on `plan`'s CPUs (shard `i` on `plan.shards[i]`) until it fails. Errors are
/// one-line messages for the operator.
pub fn run(config: ServerConfig, plan: Plan) -> Result<(), String> {
    crate::log::set_level(config.log_level);
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

    // Resolve every model's files before starting anything, so a typo fails fast.
    let mut models = Vec::with_capacity(config.models.len());
    for m in &config.models {
        let (version, xml) = resolve_model_files(&m.base_path).map_err(|e| format!("model {:?}: {e}", m.name))?;
        // One counter per model version for all shards: the only cross-core shared state, used
        // at sequence birth and death to keep max_sequence_number exact.
        let live: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
        models.push((m.clone(), version, xml, live));
    }
    let cleaner_enabled = config.sequence_cleaner_poll_wait_minutes != 0;
    let limits = Limits { message_bytes_max: config.grpc_message_bytes_max, ..Limits::default() };
    let addr = format!("{}:{}", config.bind_address, config.port);
    let rest_addr = (config.rest_port != 0).then(|| format!("{}:{}", config.rest_bind_address, config.rest_port));
    let rest_limits = crate::rest::Limits::default();

    let mut mesh_plan = MeshPlan::new(shards);
    // Each shard answers with its models' effective (inference precision, execution mode), in
    // config order, so the start-up log says which precision actually runs (it depends on the CPU).
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Vec<(String, String)>, String>>();
    let mut roles = compile_roles(&plan, config.compile_per);
    if config.compile_per == CompilePer::NumaNode {
        crate::log!(
            Info,
            "--compile_per numa_node: each model is compiled once per NUMA node, with one CPU stream per shard of \
             the node, and shared by the node's shards"
        );
    }
    let mut handles = Vec::with_capacity(shards);
    for (s, &cpu) in cpus.iter().enumerate() {
        let ends = mesh_plan.take(s);
        let models = models.clone();
        let ready = ready_tx.clone();
        let addr = addr.clone();
        let rest_addr = rest_addr.clone();
        let (shard_port_base, bind_address) = (config.shard_port_base, config.bind_address.clone());
        let numa_node = plan.shards[s].numa_node;
        let plan_json = plan_json.clone();
        let role = roles[s].take().unwrap_or(Role::Own);
        let mut builder = LocalExecutorBuilder::new(Placement::Unbound).name(&format!("shard-{s}"));
        if config.spin_before_park_us > 0 {
            builder = builder.spin_before_park(std::time::Duration::from_micros(config.spin_before_park_us));
        }
        let handle = builder
            .spawn(move || async move {
                let id = ShardId(s as u16);
                let pinned = core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                let built = (|| -> Result<Vec<ModelInstance<ov::CompiledModel>>, String> {
                    let core = ov::Core::new(rt).map_err(|e| e.to_string())?;
                    let compiled = compile_models(&core, &models, role)?;
                    models
                        .iter()
                        .zip(compiled)
                        .map(|((cfg, version, _, live), (base, batched))| {
                            let mut instance = ModelInstance::new(base, cfg, *version, live, cleaner_enabled, seed(s))?;
                            if !batched.is_empty() {
                                instance.enable_batching(batched)?;
                            }
                            Ok(instance)
                        })
                        .collect()
                })();
                let instances = match built {
                    Ok(i) => i,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let listener = match glommio::net::TcpListener::bind(addr.as_str()) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready.send(Err(format!("cannot listen on {addr}: {e}")));
                        return;
                    }
                };
                let rest_listener = match rest_addr.as_deref().map(glommio::net::TcpListener::bind) {
                    None => None,
                    Some(Ok(l)) => Some(l),
                    Some(Err(e)) => {
                        let _ = ready
                            .send(Err(format!("cannot listen on {} (REST): {e}", rest_addr.as_deref().unwrap_or(""))));
                        return;
                    }
                };
                let precisions: Vec<(String, String)> =
                    instances.iter().map(|m| (m.meta.precision.clone(), m.meta.execution_mode.clone())).collect();
                let (mesh, receivers) = ends.connect(id).await;
                let shard = Rc::new(
                    Shard::new(
                        id,
                        shards as u16,
                        pinned.then_some(cpu),
                        numa_node,
                        instances,
                        mesh,
                        crate::shard::clock::Clock::monotonic(),
                    )
                    .with_plan(plan_json),
                );
                for rx in receivers {
                    let sh = shard.clone();
                    glommio::spawn_local(async move { sh.serve_peer(rx).await }).detach();
                }
                let sh = shard.clone();
                glommio::spawn_local(async move { sh.expire_forever().await }).detach();
                shard.spawn_batch_runners();
                if let Some(listener) = rest_listener {
                    let sh = shard.clone();
                    glommio::spawn_local(async move {
                        let err = crate::rest::serve(listener, sh, rest_limits).await;
                        crate::log!(Error, "shard {s}: REST listener failed: {err}");
                    })
                    .detach();
                }
                let service = Rc::new(GrpcService { shard });
                if let Some(base) = shard_port_base {
                    // This shard's own port: every connection to it lands here (shard-aware clients).
                    let own = format!("{bind_address}:{}", base as usize + s);
                    match glommio::net::TcpListener::bind(own.as_str()) {
                        Ok(l) => {
                            let service = service.clone();
                            glommio::spawn_local(async move {
                                let err = grpc::serve(l, service, limits).await;
                                crate::log!(Error, "shard {s}: shard port listener failed: {err}");
                            })
                            .detach();
                        }
                        Err(e) => {
                            let _ = ready.send(Err(format!("cannot listen on {own} (shard port): {e}")));
                            return;
                        }
                    }
                }
                let _ = ready.send(Ok(precisions));
                drop(ready);
                let err = grpc::serve(listener, service, limits).await;
                crate::log!(Error, "shard {s}: listener failed: {err}");
            })
            .map_err(|e| format!("cannot start shard {s}: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut precisions = Vec::new();
    for _ in 0..shards {
        match ready_rx.recv() {
            // Every shard compiles the same models with the same config on the same CPU model,
            // so one shard's answer stands for all of them.
            Ok(Ok(p)) => precisions = p,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a shard stopped during start-up".into()),
        }
    }
    for (i, (m, version, xml, _)) in models.iter().enumerate() {
        let kind = if m.stateful {
            match m.idle_timeout_ms(cleaner_enabled) {
                Some(t) => {
                    format!("stateful, max_sequence_number {}, idle timeout {} s", m.max_sequence_number, t / 1000)
                }
                None => format!("stateful, max_sequence_number {}, no idle timeout", m.max_sequence_number),
            }
        } else {
            "stateless".to_string()
        };
        let (precision, mode) = precisions.get(i).map_or(("?", "?"), |(p, e)| (p.as_str(), e.as_str()));
        crate::log!(
            Info,
            "model {:?} version {version} ({kind}) from {}: inference precision {precision}, execution mode {mode}",
            m.name,
            xml.display()
        );
    }
    let mut rest = rest_addr.map_or(String::new(), |a| format!(" and REST on {a}"));
    if let Some(base) = config.shard_port_base {
        rest += &format!(", shard s alone on port {base}+s");
    }
    eprintln!(
        "seqcore: serving gRPC on {addr}{rest} with {shards} shard(s) on CPUs {cpus:?} (OpenVINO {}, runtime {})",
        rt.version(),
        rt.dir().display()
    );
    for h in handles {
        let _ = h.join();
    }
    Err("all shards stopped".into())
}

/// A per-process, per-shard seed for the sequence tables' hash.
fn seed(shard: usize) -> u64 {
    let t =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    t ^ (std::process::id() as u64) << 32 ^ shard as u64
}

/// One model's compilations on a shard: the model as its IR is, and (with `max_batch_size` > 1)
/// once per batch size.
type Compiled<M> = (M, Vec<M>);

/// Compiled models for a NUMA node's other shards, or why there are none.
type SharedCompiled = Result<Vec<Compiled<ov::SharedModel>>, String>;

/// Where a shard's compiled models come from (`--compile_per`).
enum Role {
    /// Compiles its own copy of every model (one CPU stream).
    Own,
    /// Compiles once for its NUMA node (one CPU stream per shard of the node) and hands the
    /// compiled models to the node's other shards.
    Leader { streams: usize, followers: Vec<mpsc::Sender<SharedCompiled>> },
    /// Takes the compiled models of its node's leader.
    Follower(mpsc::Receiver<SharedCompiled>),
}

/// Each shard's role: all `Own` per shard; per NUMA node, the node's first shard in the plan leads.
fn compile_roles(plan: &Plan, per: CompilePer) -> Vec<Option<Role>> {
    let mut roles: Vec<Option<Role>> = (0..plan.shards.len()).map(|_| Some(Role::Own)).collect();
    if per == CompilePer::Shard {
        return roles;
    }
    let mut leaders: Vec<(usize, usize)> = Vec::new();
    for (s, pu) in plan.shards.iter().enumerate() {
        // A shard whose node hwloc does not know compiles its own.
        let Some(node) = pu.numa_node else { continue };
        match leaders.iter().find(|(n, _)| *n == node) {
            Some(&(_, leader)) => {
                let (tx, rx) = mpsc::channel();
                roles[s] = Some(Role::Follower(rx));
                if let Some(Some(Role::Leader { streams, followers })) = roles.get_mut(leader) {
                    *streams += 1;
                    followers.push(tx);
                }
            }
            None => {
                leaders.push((node, s));
                roles[s] = Some(Role::Leader { streams: 1, followers: Vec::new() });
            }
        }
    }
    roles
}

/// Every model's compilations for this shard, by its role.
fn compile_models(
    core: &ov::Core,
    models: &[(crate::config::ModelConfig, i64, std::path::PathBuf, &'static AtomicU32)],
    role: Role,
) -> Result<Vec<Compiled<ov::CompiledModel>>, String> {
    let compile_all = |streams: usize| -> Result<Vec<Compiled<ov::CompiledModel>>, String> {
        models
            .iter()
            .map(|(cfg, _, xml, _)| {
                // Ours first: the model's own plugin_config may override NUM_STREAMS.
                let mut plugin_config = vec![("NUM_STREAMS".to_string(), streams.to_string())];
                plugin_config.extend(cfg.plugin_config.iter().cloned());
                let opts = ov::CompileOptions { low_latency: cfg.low_latency_transformation, plugin_config, batch: 0 };
                let base = core.compile(xml, &opts).map_err(|e| format!("model {:?}: {e}", cfg.name))?;
                // max_batch_size > 1: the same IR compiled once per batch size.
                let batched = batch_sizes(cfg.max_batch_size as usize)
                    .into_iter()
                    .map(|batch| {
                        core.compile(xml, &ov::CompileOptions { batch, ..opts.clone() })
                            .map_err(|e| format!("model {:?}: max_batch_size {}: {e}", cfg.name, cfg.max_batch_size))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok((base, batched))
            })
            .collect()
    };
    match role {
        Role::Own => compile_all(1),
        Role::Leader { streams, followers } => {
            let compiled = compile_all(streams);
            for tx in followers {
                let shared = match &compiled {
                    Ok(c) => c
                        .iter()
                        .map(|(base, batched)| {
                            let batched = batched.iter().map(ov::CompiledModel::share).collect::<Result<Vec<_>, _>>();
                            Ok((base.share()?, batched?))
                        })
                        .collect::<Result<Vec<_>, ov::OvError>>()
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("{e} (compiled once for this NUMA node)")),
                };
                // A follower that is gone has failed its own start; the start-up reports that.
                let _ = tx.send(shared);
            }
            compiled
        }
        Role::Follower(rx) => {
            let shared = rx.recv().map_err(|_| "the shard compiling for this NUMA node stopped".to_string())??;
            shared
                .into_iter()
                .map(|(base, batched)| {
                    let batched = batched.into_iter().map(|m| core.adopt(m)).collect::<Result<Vec<_>, _>>();
                    Ok((core.adopt(base)?, batched?))
                })
                .collect::<Result<Vec<_>, ov::OvError>>()
                .map_err(|e| e.to_string())
        }
    }
}
