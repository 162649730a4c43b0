//! What the front ends know about the served models: every loaded model version instance
//! (name, version, input/output signatures, whether it takes new sequences), and the status of
//! every version as GetModelStatus reports it. Each shard holds its own copy (no sharing across
//! cores), changed only by the server's lifecycle controller, which sends every shard the same
//! changes in the same order, so a `ModelIdx` means the same instance everywhere.
//!
//! A version may have more than one instance for a while: after a reload that recompiled it, the
//! new instance takes new sequences and the old one, `Unloading`, serves its live sequences until
//! they end or time out.

use crate::error::{Error, Kind, Result};
use crate::request::ModelIdx;
use crate::signature::PortInfo;
use std::rc::Rc;

/// Model version instances ever created in one process (a `ModelIdx` is never reused, so a
/// request in flight can never reach a different model through a stale index).
pub const INSTANCES_MAX: usize = u16::MAX as usize;

#[derive(Clone, Debug, PartialEq)]
pub struct ModelMeta {
    pub name: String,
    pub version: i64,
    pub stateful: bool,
    pub inputs: Vec<PortInfo>,
    pub outputs: Vec<PortInfo>,
    /// The compiled model's effective inference precision as OpenVINO reports it ("f32",
    /// "bf16", ...; see `ov::CompiledModel::inference_precision`).
    pub precision: String,
    /// The compiled model's effective execution mode ("PERFORMANCE" or "ACCURACY").
    pub execution_mode: String,
}

impl ModelMeta {
    pub fn outputs_bytes(&self) -> usize {
        self.outputs.iter().map(|p| p.byte_size).sum()
    }

    /// Whether a request validated against `self` can run on `other` and be answered with
    /// `self`'s output description (the same model, the same ports).
    pub fn same_ports(&self, other: &ModelMeta) -> bool {
        self.name == other.name && self.inputs == other.inputs && self.outputs == other.outputs
    }
}

/// A model version's state, TF-Serving's `ModelVersionStatus.State` (and OVMS's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Start,
    Loading,
    Available,
    Unloading,
    End,
}

impl State {
    /// The enum value on the wire (TF-Serving's get_model_status.proto).
    pub fn code(self) -> i32 {
        match self {
            State::Start => 10,
            State::Loading => 20,
            State::Available => 30,
            State::Unloading => 40,
            State::End => 50,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Start => "START",
            State::Loading => "LOADING",
            State::Available => "AVAILABLE",
            State::Unloading => "UNLOADING",
            State::End => "END",
        }
    }
}

/// One version of a model as the status routes report it.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionStatus {
    pub version: i64,
    pub state: State,
    /// Why the version's last load failed (its state says what is serving meanwhile).
    pub error: Option<String>,
}

/// A model's versions, ascending, as the status routes report them.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelStatus {
    pub name: String,
    pub versions: Vec<VersionStatus>,
}

impl ModelStatus {
    /// The versions a status request asks for: all (None or 0), or the one named, or
    /// ModelVersionMissing.
    pub fn select(&self, version: Option<i64>) -> Result<Vec<&VersionStatus>> {
        match version.filter(|&v| v != 0) {
            None => Ok(self.versions.iter().collect()),
            Some(v) => match self.versions.iter().find(|s| s.version == v) {
                Some(s) => Ok(vec![s]),
                None => Err(Kind::ModelVersionMissing.into()),
            },
        }
    }
}

/// What a loaded instance is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Installed, not yet resolved to (the controller makes it available on every shard once
    /// every shard has it, so no shard forwards to a shard that lacks it).
    Pending,
    /// Resolved to; takes new sequences.
    Available,
    /// Serves its live sequences only; a START is refused.
    Unloading,
}

/// A loaded instance: its description and what it is for.
#[derive(Clone, Debug)]
struct Instance {
    meta: Rc<ModelMeta>,
    used: Use,
}

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// By `ModelIdx`; None once unloaded (indexes are never reused).
    instances: Vec<Option<Instance>>,
    status: Vec<ModelStatus>,
}

impl Catalog {
    /// A catalog of these instances, all available, with the status they imply.
    pub fn of(models: impl IntoIterator<Item = ModelMeta>) -> Catalog {
        let mut c = Catalog::default();
        for m in models {
            let idx = ModelIdx(c.instances.len() as u16);
            c.install(idx, m, Use::Available);
        }
        c.status = c.implied_status();
        c
    }

    /// Puts an instance at `idx` (the controller hands out indexes in order).
    pub fn install(&mut self, idx: ModelIdx, meta: ModelMeta, used: Use) {
        let i = idx.0 as usize;
        if self.instances.len() <= i {
            self.instances.resize(i + 1, None);
        }
        self.instances[i] = Some(Instance { meta: Rc::new(meta), used });
    }

    /// Changes what an instance is for.
    pub fn set_use(&mut self, idx: ModelIdx, used: Use) {
        if let Some(Some(i)) = self.instances.get_mut(idx.0 as usize) {
            i.used = used;
        }
    }

    pub fn remove(&mut self, idx: ModelIdx) {
        if let Some(slot) = self.instances.get_mut(idx.0 as usize) {
            *slot = None;
        }
    }

    /// Replaces the reported status of every model (the controller's view).
    pub fn set_status(&mut self, status: Vec<ModelStatus>) {
        self.status = status;
    }

    /// The status of every model, in the controller's order.
    pub fn status(&self) -> &[ModelStatus] {
        &self.status
    }

    /// The status of one model, or ModelNameMissing.
    pub fn model_status(&self, name: &str) -> Result<&ModelStatus> {
        self.status.iter().find(|m| m.name == name).ok_or_else(|| Error::new(Kind::ModelNameMissing))
    }

    /// The versions of `name` that take new sequences, ascending (KServe metadata's `versions`).
    pub fn available_versions(&self, name: &str) -> Vec<i64> {
        let mut v: Vec<i64> =
            self.loaded().filter(|(_, m, available)| *available && m.name == name).map(|(_, m, _)| m.version).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether `idx` is loaded and takes new sequences.
    pub fn is_available(&self, idx: ModelIdx) -> bool {
        matches!(self.instances.get(idx.0 as usize), Some(Some(i)) if i.used == Use::Available)
    }

    /// Whether `idx` is loaded and unloading (a START there is refused).
    pub fn is_unloading(&self, idx: ModelIdx) -> bool {
        matches!(self.instances.get(idx.0 as usize), Some(Some(i)) if i.used == Use::Unloading)
    }

    /// The loaded instances, with their indexes and whether each takes new sequences.
    pub fn loaded(&self) -> impl Iterator<Item = (ModelIdx, &ModelMeta, bool)> {
        self.instances
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (ModelIdx(i as u16), &*s.meta, s.used == Use::Available)))
    }

    /// Finds the instance a request for `name` (and `version`; None or 0: the default) runs on:
    /// the newest available instance of the version (the default version being the highest
    /// with one), else an unloading one (it still serves its live sequences; the shard refuses
    /// a START there). Errors as OVMS's: the name unknown, the version unknown, retired, or not
    /// loaded yet.
    pub fn resolve(&self, name: &str, version: Option<i64>) -> Result<(ModelIdx, Rc<ModelMeta>)> {
        let version = version.filter(|&v| v != 0);
        let mut best: Option<(ModelIdx, &Instance)> = None;
        for (i, inst) in self.instances.iter().enumerate() {
            let Some(inst) = inst else { continue };
            if inst.used == Use::Pending || inst.meta.name != name || version.is_some_and(|v| v != inst.meta.version) {
                continue;
            }
            // Available beats unloading; then the higher version; then the newer instance.
            let key = |x: &Instance| (x.used == Use::Available, x.meta.version);
            if best.is_none_or(|(_, b)| key(inst) >= key(b)) {
                best = Some((ModelIdx(i as u16), inst));
            }
        }
        if let Some((idx, inst)) = best {
            return Ok((idx, inst.meta.clone()));
        }
        let Some(status) = self.status.iter().find(|m| m.name == name) else {
            return Err(Kind::ModelNameMissing.into());
        };
        let state = match version {
            Some(v) => status.versions.iter().find(|s| s.version == v).map(|s| s.state),
            None => status.versions.iter().map(|s| s.state).find(|s| matches!(s, State::Start | State::Loading)),
        };
        Err(match state {
            Some(State::Start | State::Loading) => Kind::ModelVersionNotLoadedYet.into(),
            Some(State::End) => Kind::ModelVersionNotLoadedAnymore.into(),
            None if version.is_none() && status.versions.iter().any(|s| s.state == State::End) => {
                Kind::ModelVersionNotLoadedAnymore.into()
            }
            _ => Kind::ModelVersionMissing.into(),
        })
    }

    /// The instance at `idx`, if loaded.
    pub fn get(&self, idx: ModelIdx) -> Option<&Rc<ModelMeta>> {
        self.instances.get(idx.0 as usize)?.as_ref().map(|i| &i.meta)
    }

    /// One past the highest index ever installed.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The status the loaded instances imply (each version AVAILABLE if an instance of it takes
    /// new sequences, else UNLOADING), for a catalog no controller reports on.
    fn implied_status(&self) -> Vec<ModelStatus> {
        let mut out: Vec<ModelStatus> = Vec::new();
        for (_, m, available) in self.loaded() {
            let state = if available { State::Available } else { State::Unloading };
            let at = match out.iter().position(|s| s.name == m.name) {
                Some(at) => at,
                None => {
                    out.push(ModelStatus { name: m.name.clone(), versions: Vec::new() });
                    out.len() - 1
                }
            };
            let versions = &mut out[at].versions;
            match versions.iter_mut().find(|v| v.version == m.version) {
                Some(v) if state == State::Available => v.state = state,
                Some(_) => {}
                None => versions.push(VersionStatus { version: m.version, state, error: None }),
            }
            versions.sort_by_key(|v| v.version);
        }
        out
    }
}

/// The `summator` model as the front ends' unit tests see it (f32[1,1] `input` → `add_sum`).
#[cfg(test)]
pub fn test_summator() -> ModelMeta {
    use crate::signature::test_port_f32 as port;
    ModelMeta {
        name: "summator".into(),
        version: 1,
        stateful: true,
        inputs: vec![port("input", &[1, 1])],
        outputs: vec![port("add_sum", &[1, 1])],
        precision: "f32".into(),
        execution_mode: "PERFORMANCE".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: i64) -> ModelMeta {
        ModelMeta { version: v, ..test_summator() }
    }

    fn kind(r: Result<(ModelIdx, Rc<ModelMeta>)>) -> Kind {
        r.err().map(|e| e.kind).unwrap_or(Kind::Internal)
    }

    #[test]
    fn the_default_version_is_the_highest_available() {
        let mut c = Catalog::of([version(1), version(2)]);
        assert_eq!(c.resolve("summator", None).unwrap().0, ModelIdx(1));
        assert_eq!(c.resolve("summator", Some(0)).unwrap().0, ModelIdx(1));
        assert_eq!(c.resolve("summator", Some(1)).unwrap().0, ModelIdx(0));
        // Version 2 unloading: the default moves to 1, but 2 still resolves by number.
        c.set_use(ModelIdx(1), Use::Unloading);
        assert_eq!(c.resolve("summator", None).unwrap().0, ModelIdx(0));
        assert_eq!(c.resolve("summator", Some(2)).unwrap().0, ModelIdx(1));
        // A recompiled version 1 (a newer instance) takes over from the old one.
        c.install(ModelIdx(2), version(1), Use::Pending);
        assert_eq!(c.resolve("summator", Some(1)).unwrap().0, ModelIdx(0), "a pending instance is not resolved to");
        c.set_use(ModelIdx(2), Use::Available);
        assert_eq!(c.resolve("summator", Some(1)).unwrap().0, ModelIdx(2), "the newer instance of a version wins");
        c.set_use(ModelIdx(0), Use::Unloading);
        assert_eq!(c.resolve("summator", Some(1)).unwrap().0, ModelIdx(2));
        assert_eq!(c.resolve("summator", None).unwrap().0, ModelIdx(2));
        // Every instance unloading: the highest version still resolves (its live sequences).
        c.set_use(ModelIdx(2), Use::Unloading);
        assert_eq!(c.resolve("summator", None).unwrap().0, ModelIdx(1));
        assert_eq!(kind(c.resolve("other", None)), Kind::ModelNameMissing);
    }

    #[test]
    fn missing_versions_get_ovms_errors() {
        let mut c = Catalog::of([version(2)]);
        assert_eq!(kind(c.resolve("summator", Some(7))), Kind::ModelVersionMissing);
        let st = |version, state| VersionStatus { version, state, error: None };
        c.set_status(vec![ModelStatus {
            name: "summator".into(),
            versions: vec![st(1, State::End), st(2, State::Available), st(3, State::Loading)],
        }]);
        assert_eq!(kind(c.resolve("summator", Some(1))), Kind::ModelVersionNotLoadedAnymore);
        assert_eq!(kind(c.resolve("summator", Some(3))), Kind::ModelVersionNotLoadedYet);
        c.remove(ModelIdx(0));
        assert_eq!(kind(c.resolve("summator", None)), Kind::ModelVersionNotLoadedYet);
        c.set_status(vec![ModelStatus {
            name: "summator".into(),
            versions: vec![st(1, State::End), st(2, State::End)],
        }]);
        assert_eq!(kind(c.resolve("summator", None)), Kind::ModelVersionNotLoadedAnymore);
        c.set_status(Vec::new());
        assert_eq!(kind(c.resolve("summator", None)), Kind::ModelNameMissing);
    }

    #[test]
    fn implied_status_lists_every_version_once() {
        let mut c = Catalog::of([version(1), version(2), version(1)]);
        c.set_use(ModelIdx(0), Use::Unloading);
        c.status = c.implied_status();
        let s = c.model_status("summator").unwrap();
        assert_eq!(
            s.versions.iter().map(|v| (v.version, v.state)).collect::<Vec<_>>(),
            [(1, State::Available), (2, State::Available)]
        );
    }
}
