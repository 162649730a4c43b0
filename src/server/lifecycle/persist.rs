//! The shutdown and the restore: the live sequences written to `--state_dir` at SIGTERM and put
//! back on their owner shards at the next start (the rules are in the parent's module doc and in
//! `crate::snapshot`).

use super::{describe_saved, describe_states, Controller, Exported, Inst, ToShard};
use crate::snapshot::{self, Saved};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

impl Controller {
    /// The available instance of `name` version `v`.
    fn served(&self, name: &str, v: i64) -> Option<&Inst> {
        self.models.iter().find(|m| m.config.name == name)?.versions.get(&v)?.available()
    }

    /// Restores the sequences of the snapshot in `--state_dir`, if there is one, onto the shards
    /// that own them, then removes the file, so that it never restores again (after a crash the
    /// sequences are gone rather than stale). A snapshot that cannot be used is logged with
    /// what is wrong and the server starts without its sequences. Before the shards serve.
    pub async fn restore(&mut self) -> Result<(), String> {
        let Some(dir) = self.server.state_dir.clone() else { return Ok(()) };
        let path = dir.join(snapshot::FILE_NAME);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::log!(Info, "state dir {}: no snapshot; starting without sequences", dir.display());
                return Ok(());
            }
            Err(e) => return Err(format!("snapshot {}: {e}", path.display())),
        };
        let t0 = Instant::now();
        match snapshot::decode(&data) {
            Err(e) => crate::log!(
                Error,
                "snapshot {} refused: {e}; starting without its sequences (all of them dropped)",
                path.display()
            ),
            Ok(sections) => {
                let (restored, dropped) = self.restore_sections(sections).await?;
                crate::log!(
                    Info,
                    "snapshot {}: {restored} sequence(s) restored, {dropped} dropped, {} bytes in {} ms",
                    path.display(),
                    data.len(),
                    t0.elapsed().as_millis()
                );
            }
        }
        std::fs::remove_file(&path).map_err(|e| {
            format!(
                "cannot remove the restored snapshot {}: {e}; refusing to start (a later start would restore it again)",
                path.display()
            )
        })?;
        Ok(())
    }

    /// Puts each section's sequences on their owner shards; returns (restored, dropped).
    async fn restore_sections(&mut self, sections: Vec<snapshot::Section>) -> Result<(usize, usize), String> {
        let (mut restored, mut dropped) = (0, 0);
        let shards = self.to_shards.len();
        for section in sections {
            let n = section.sequences.len();
            let (name, v) = (section.name.clone(), section.version);
            let why = match self.served(&name, v) {
                None => Some("it is not served".to_string()),
                Some(inst) if inst.precision != section.precision => {
                    Some(format!("its precision differs (snapshot {}, served {})", section.precision, inst.precision))
                }
                Some(inst) if snapshot::Section::describe(&inst.states) != section.states => Some(format!(
                    "its state variables differ (snapshot {}, served {})",
                    describe_saved(&section.states),
                    describe_states(&inst.states)
                )),
                Some(_) => None,
            };
            if let Some(why) = why {
                crate::log!(Warning, "snapshot: model {name:?} version {v}: {why}; its {n} sequence(s) are dropped");
                dropped += n;
                continue;
            }
            let Some(idx) = self.served(&name, v).map(|i| i.idx) else { continue };
            let mut by_shard: Vec<Vec<Saved>> = (0..shards).map(|_| Vec::new()).collect();
            for q in section.sequences {
                let owner = crate::shard::shard_of_id(&q.id, shards as u16).0 as usize;
                if let Some(list) = by_shard.get_mut(owner) {
                    list.push(q);
                }
            }
            // Least recently active first, so each shard's activity list stays in order.
            for list in &mut by_shard {
                list.sort_by_key(|q| std::cmp::Reverse(q.idle_ms));
            }
            let refused = self
                .broadcast_with(|s| Some(ToShard::Restore { idx, sequences: std::mem::take(&mut by_shard[s]) }))
                .await?;
            restored += n - refused.min(n);
            dropped += refused.min(n);
        }
        Ok((restored, dropped))
    }

    /// The shutdown. Every shard stops taking new sequences and connections (readiness is false
    /// from then on), runs what it has queued, and refuses every later step, so every request
    /// already taken is answered. With `--state_dir` every shard then sends its live sequences,
    /// which are written to the snapshot atomically (a new file, fsync, rename, fsync of the
    /// directory; a failure leaves any earlier file as it was). Returns what happened, for the
    /// log. (The caller bounds it by `--shutdown_timeout_seconds`.)
    pub async fn drain(&mut self) -> Result<String, String> {
        self.broadcast(|_| ToShard::Drain).await?;
        let Some(dir) = self.server.state_dir.clone() else {
            self.broadcast(|_| ToShard::Freeze).await?;
            let live: u32 = self
                .models
                .iter()
                .flat_map(|m| m.versions.values())
                .flat_map(|v| v.instances.iter())
                .map(|i| i.live.load(Ordering::Acquire))
                .sum();
            return Ok(format!("{live} live sequence(s) end with the process (no --state_dir)"));
        };
        let t0 = Instant::now();
        let (tx, rx) = mpsc::channel::<Exported>();
        self.broadcast(|_| ToShard::Export { to: tx.clone() }).await?;
        drop(tx);
        let mut by_idx: BTreeMap<u16, Vec<Saved>> = BTreeMap::new();
        for (_, instances) in rx.try_iter() {
            for (idx, list) in instances {
                by_idx.entry(idx.0).or_default().extend(list);
            }
        }
        let mut sections = Vec::new();
        let mut count = 0;
        for m in &self.models {
            for (&v, version) in &m.versions {
                for inst in &version.instances {
                    let Some(list) = by_idx.remove(&inst.idx.0) else { continue };
                    if list.is_empty() {
                        continue;
                    }
                    count += list.len();
                    sections.push(snapshot::Section {
                        name: m.config.name.clone(),
                        version: v,
                        precision: inst.precision.clone(),
                        states: snapshot::Section::describe(&inst.states),
                        sequences: list,
                    });
                }
            }
        }
        let exported = t0.elapsed();
        let bytes = snapshot::encode(&sections);
        let sections_len = sections.len();
        drop(sections);
        let encoded = t0.elapsed();
        let path = dir.join(snapshot::FILE_NAME);
        write_atomically(&path, &bytes).map_err(|e| format!("snapshot {} not written: {e}", path.display()))?;
        let ms = |d: Duration| d.as_millis();
        Ok(format!(
            "{count} sequence(s) of {} model version instance(s) written to {} ({} bytes) in {} ms (export {} ms, \
             encode {} ms, write and fsync {} ms)",
            sections_len,
            path.display(),
            bytes.len(),
            ms(t0.elapsed()),
            ms(exported),
            ms(encoded - exported),
            ms(t0.elapsed() - encoded)
        ))
    }
}

/// Writes `path` so that it is either the old file or the whole new one, on disk.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(".sequences.snapshot.tmp");
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
