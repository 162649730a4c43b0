//! The loader threads: a model version compiled for every shard, off the shards' executors.
//!
//! At start there is one loader thread per shard, pinned to that shard's CPU; at a reload one
//! per NUMA node at nice 19 (`LOADER_NICE`), which pins itself to each shard's CPU in turn while
//! it compiles that shard's copy, so the memory of every copy is local to its shard and the
//! serving shards keep their CPUs. With `--compile_per numa_node` a node's shards share one
//! compile. The controller waits for the results and gives up on a shutdown.

use super::{Controller, LOADER_NICE};
use crate::config::{CompilePer, ModelConfig};
use crate::ov;
use crate::shard::model::batch_sizes;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

impl Controller {
    /// Compiles `config`'s model from `xml` for every shard: the model as it is, and once per
    /// batch size. `background`: one loader thread per NUMA node at a lower priority (a reload,
    /// beside serving shards); else one per shard pinned to its CPU (the start). Each shard's
    /// copy is compiled on a thread pinned to that shard's CPU, so its memory is local to it;
    /// with `--compile_per numa_node` a node's shards share one compile.
    pub(super) fn compile(
        &self,
        config: &ModelConfig,
        xml: &Path,
        background: bool,
    ) -> Result<Vec<(ov::SharedModel, Vec<ov::SharedModel>)>, String> {
        let per_node = self.server.compile_per == CompilePer::NumaNode;
        let groups: Vec<Vec<usize>> =
            if background || per_node { self.groups.clone() } else { (0..self.cpus.len()).map(|s| vec![s]).collect() };
        let (tx, rx) = mpsc::channel::<(usize, Result<(ov::SharedModel, Vec<ov::SharedModel>), String>)>();
        for group in groups {
            let (tx, rt, config, xml) = (tx.clone(), self.rt, config.clone(), xml.to_path_buf());
            let cpus: Vec<usize> = group.iter().map(|&s| self.cpus[s]).collect();
            let spawned = std::thread::Builder::new().name("seqcore-load".into()).spawn(move || {
                if background {
                    if let Err(e) = ov::lower_thread_priority(LOADER_NICE) {
                        crate::log!(Debug, "loader thread keeps its priority: {e}");
                    }
                }
                let fail_all = |e: String| {
                    for &s in &group {
                        let _ = tx.send((s, Err(e.clone())));
                    }
                };
                let core = match ov::Core::new(rt) {
                    Ok(c) => c,
                    Err(e) => return fail_all(e.to_string()),
                };
                if per_node {
                    core_affinity::set_for_current(core_affinity::CoreId { id: cpus[0] });
                    match compile_one(&core, &config, &xml, group.len()) {
                        Ok((base, batched)) => {
                            for &s in &group {
                                let _ = tx.send((s, share(&base, &batched)));
                            }
                        }
                        Err(e) => fail_all(e),
                    }
                    return;
                }
                for (&s, &cpu) in group.iter().zip(&cpus) {
                    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                    let r = compile_one(&core, &config, &xml, 1).and_then(|(base, batched)| share(&base, &batched));
                    let _ = tx.send((s, r));
                }
            });
            if let Err(e) = spawned {
                return Err(format!("cannot start a loader thread: {e}"));
            }
        }
        drop(tx);
        let mut out: Vec<Option<(ov::SharedModel, Vec<ov::SharedModel>)>> =
            (0..self.cpus.len()).map(|_| None).collect();
        let mut errors = Vec::new();
        loop {
            let (s, r) = match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(got) => got,
                Err(mpsc::RecvTimeoutError::Timeout) if self.stopping() => {
                    // The loader threads are left to finish into a closed channel.
                    return Err("the compile was abandoned for a shutdown".into());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            match r {
                Ok(c) => out[s] = Some(c),
                Err(e) if !errors.contains(&e) => errors.push(e),
                Err(_) => {}
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        out.into_iter().enumerate().map(|(s, c)| c.ok_or_else(|| format!("shard {s}: no compiled model"))).collect()
    }
}

/// One model's compilations: the IR as it is (with `streams` CPU streams), and once per batch
/// size when `max_batch_size` > 1.
fn compile_one(
    core: &ov::Core,
    cfg: &ModelConfig,
    xml: &Path,
    streams: usize,
) -> Result<(ov::CompiledModel, Vec<ov::CompiledModel>), String> {
    // Ours first: the model's own plugin_config may override NUM_STREAMS.
    let mut plugin_config = vec![("NUM_STREAMS".to_string(), streams.to_string())];
    plugin_config.extend(cfg.plugin_config.iter().cloned());
    let opts = ov::CompileOptions { low_latency: cfg.low_latency_transformation, plugin_config, batch: 0 };
    let base = core.compile(xml, &opts).map_err(|e| e.to_string())?;
    let batched = batch_sizes(cfg.max_batch_size as usize)
        .into_iter()
        .map(|batch| {
            core.compile(xml, &ov::CompileOptions { batch, ..opts.clone() })
                .map_err(|e| format!("max_batch_size {}: {e}", cfg.max_batch_size))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((base, batched))
}

fn share(
    base: &ov::CompiledModel,
    batched: &[ov::CompiledModel],
) -> Result<(ov::SharedModel, Vec<ov::SharedModel>), String> {
    let b = batched.iter().map(ov::CompiledModel::share).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    Ok((base.share().map_err(|e| e.to_string())?, b))
}
