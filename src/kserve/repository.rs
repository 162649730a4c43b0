//! Triton's model repository extension (`RepositoryIndex`, `RepositoryModelLoad`,
//! `RepositoryModelUnload`, and REST's `/v2/repository/...`), shared by the gRPC front end
//! (`crate::service`) and the REST one (`crate::rest::kserve`): the index of the catalog's status
//! in Triton's terms, the checks of a request's `repository_name` and `parameters`, and what a
//! lifecycle controller's answer becomes. Statuses are gRPC codes, as Triton's server core
//! reports them; the REST front end turns them into HTTP statuses as Triton's `http_server.cc`
//! does.
//!
//! Triton's behaviour kept here (triton-inference-server/core,
//! `model_repository_manager.cc`; server, `grpc/grpc_server.cc`):
//! - loading a model the repository does not have fails with INTERNAL ("failed to load 'x',
//!   failed to poll from model repository"); a model that fails to load, with INVALID_ARGUMENT
//!   ("load failed for model 'x': ...");
//! - unloading a model the repository does not have succeeds and does nothing (Triton's
//!   L0_lifecycle test: "Unload non-existing model, nothing should happen");
//! - a non-empty `repository_name` is UNIMPLEMENTED ("'repository_name' specification is not
//!   supported").
//!
//! seqcore serves the models of its configuration file as the file describes them, so none of
//! Triton's load parameters (`config`, `file:<path>`) is accepted; `unload_dependents` is (a model
//! here has no dependents, so either value unloads the model alone).

use crate::catalog::{ModelStatus, State, VersionStatus};
use crate::shard::admin::{AdminAnswer, AdminFailure};
use crate::status::Code;

/// Triton's `ModelReadyState` names.
pub const READY: &str = "READY";
pub const LOADING: &str = "LOADING";
pub const UNLOADING: &str = "UNLOADING";
pub const UNAVAILABLE: &str = "UNAVAILABLE";

/// Triton's message for a request that names a repository.
pub const REPOSITORY_NAME_UNSUPPORTED: &str = "'repository_name' specification is not supported";

/// A repository request refused, or failed: the gRPC code Triton answers with, and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
}

impl Refusal {
    fn invalid(message: String) -> Refusal {
        Refusal { code: Code::InvalidArgument, message }
    }
}

/// What a repository control request asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Load,
    Unload,
}

/// One line of the index: a model version, or a model without versions (name only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub name: &'a str,
    /// None: the model has no version (Triton then lists the name alone, no state).
    pub version: Option<i64>,
    /// "" with no version.
    pub state: &'static str,
    /// Why the version is not ready, or "".
    pub reason: &'a str,
}

/// A version's state in Triton's terms. An AVAILABLE version is READY (an error beside it is a
/// later load that failed while this one serves); otherwise a version whose last load failed is
/// UNAVAILABLE, as are versions not loaded yet (START) or gone (END).
pub fn state_name(v: &VersionStatus) -> &'static str {
    match (v.state, &v.error) {
        (State::Available, _) => READY,
        (_, Some(_)) => UNAVAILABLE,
        (State::Loading, None) => LOADING,
        (State::Unloading, None) => UNLOADING,
        (State::Start | State::End, None) => UNAVAILABLE,
    }
}

/// The repository index: every version of every model of the catalog's status, in the status's
/// order; with `ready_only`, only the READY versions (and no name-only lines), as Triton's
/// `RepositoryIndex(ready)`.
pub fn index(status: &[ModelStatus], ready_only: bool) -> Vec<Entry<'_>> {
    let mut out = Vec::new();
    for m in status {
        if m.versions.is_empty() {
            if !ready_only {
                out.push(Entry { name: &m.name, version: None, state: "", reason: "" });
            }
            continue;
        }
        for v in &m.versions {
            let state = state_name(v);
            if ready_only && state != READY {
                continue;
            }
            let reason = v.error.as_deref().unwrap_or("");
            out.push(Entry { name: &m.name, version: Some(v.version), state, reason });
        }
    }
    out
}

/// A request's `repository_name`: only the empty one (seqcore has one repository, its
/// configuration).
pub fn check_repository(name: &str) -> Result<(), Refusal> {
    if name.is_empty() {
        Ok(())
    } else {
        Err(Refusal { code: Code::Unimplemented, message: REPOSITORY_NAME_UNSUPPORTED.to_string() })
    }
}

/// A load request's parameter names: none is accepted.
pub fn check_load_params<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), Refusal> {
    let mut names: Vec<&str> = names.collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort_unstable();
    Err(Refusal::invalid(format!(
        "unsupported load parameter {}: seqcore loads a model only as its configuration file describes it",
        quoted(&names)
    )))
}

/// An unload request's parameters, as (name, whether the value is a bool): `unload_dependents`
/// (a bool) only.
pub fn check_unload_params<'a>(params: impl Iterator<Item = (&'a str, bool)>) -> Result<(), Refusal> {
    let mut unknown = Vec::new();
    for (name, is_bool) in params {
        if name == UNLOAD_DEPENDENTS {
            if !is_bool {
                // Triton's message (grpc_server.cc).
                return Err(Refusal::invalid(
                    "invalid value type for 'unload_dependents' parameter, expected bool_param.".to_string(),
                ));
            }
        } else {
            unknown.push(name);
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(Refusal::invalid(format!("unsupported unload parameter {}: only 'unload_dependents' is", quoted(&unknown))))
}

pub const UNLOAD_DEPENDENTS: &str = "unload_dependents";

fn quoted(names: &[&str]) -> String {
    names.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
}

/// The controller's answer to a load or unload, as Triton answers it: a model the configuration
/// lacks is INTERNAL for a load and a success for an unload; a model that failed to load is
/// INVALID_ARGUMENT for a load, and no failure of an unload (the controller re-applies the whole
/// configuration on every request, so such a failure is another version's or model's, and the
/// unload itself is done); a configuration file that cannot be read or is not valid is INTERNAL
/// (the repository cannot be polled, and nothing was done). The message is the controller's.
pub fn outcome(action: Action, answer: AdminAnswer) -> Result<(), Refusal> {
    let Some((failure, message)) = answer.failure else {
        return Ok(());
    };
    let code = match (action, failure) {
        (Action::Unload, AdminFailure::UnknownModel | AdminFailure::LoadFailed) => return Ok(()),
        (Action::Load, AdminFailure::UnknownModel) => Code::Internal,
        (Action::Load, AdminFailure::LoadFailed) => Code::InvalidArgument,
        (_, AdminFailure::ConfigUnreadable | AdminFailure::ConfigInvalid) => Code::Internal,
    };
    Err(Refusal { code, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(version: i64, state: State, error: Option<&str>) -> VersionStatus {
        VersionStatus { version, state, error: error.map(str::to_string) }
    }

    #[test]
    fn states_map_to_triton_names() {
        assert_eq!(state_name(&v(1, State::Available, None)), READY);
        assert_eq!(state_name(&v(1, State::Available, Some("reload failed"))), READY);
        assert_eq!(state_name(&v(1, State::Loading, None)), LOADING);
        assert_eq!(state_name(&v(1, State::Loading, Some("bad xml"))), UNAVAILABLE);
        assert_eq!(state_name(&v(1, State::Unloading, None)), UNLOADING);
        assert_eq!(state_name(&v(1, State::Start, None)), UNAVAILABLE);
        assert_eq!(state_name(&v(1, State::End, None)), UNAVAILABLE);
        assert_eq!(state_name(&v(1, State::End, Some("gone"))), UNAVAILABLE);
    }

    #[test]
    fn index_lists_every_version_or_the_ready_ones() {
        let status = vec![
            ModelStatus {
                name: "a".into(),
                versions: vec![v(1, State::Unloading, None), v(2, State::Available, None)],
            },
            ModelStatus { name: "b".into(), versions: vec![v(3, State::Loading, Some("no such file"))] },
            ModelStatus { name: "c".into(), versions: vec![] },
        ];
        let all = index(&status, false);
        assert_eq!(
            all,
            vec![
                Entry { name: "a", version: Some(1), state: UNLOADING, reason: "" },
                Entry { name: "a", version: Some(2), state: READY, reason: "" },
                Entry { name: "b", version: Some(3), state: UNAVAILABLE, reason: "no such file" },
                Entry { name: "c", version: None, state: "", reason: "" },
            ]
        );
        assert_eq!(index(&status, true), vec![Entry { name: "a", version: Some(2), state: READY, reason: "" }]);
        assert!(index(&[], false).is_empty());
    }

    #[test]
    fn requests_are_checked_as_triton_does() {
        assert_eq!(check_repository(""), Ok(()));
        let e = check_repository("models").unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (Code::Unimplemented, REPOSITORY_NAME_UNSUPPORTED));

        assert_eq!(check_load_params(std::iter::empty()), Ok(()));
        let e = check_load_params(["file:1/model.xml", "config"].into_iter()).unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        assert!(e.message.starts_with("unsupported load parameter 'config', 'file:1/model.xml': "), "{}", e.message);

        assert_eq!(check_unload_params(std::iter::empty()), Ok(()));
        assert_eq!(check_unload_params([(UNLOAD_DEPENDENTS, true)].into_iter()), Ok(()));
        let e = check_unload_params([(UNLOAD_DEPENDENTS, false)].into_iter()).unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        assert!(e.message.contains("expected bool_param"), "{}", e.message);
        let e = check_unload_params([("force", true), (UNLOAD_DEPENDENTS, true)].into_iter()).unwrap_err();
        assert_eq!(e.message, "unsupported unload parameter 'force': only 'unload_dependents' is");
    }

    #[test]
    fn answers_become_triton_statuses() {
        let ok = AdminAnswer { changed: true, failure: None };
        assert_eq!(outcome(Action::Load, ok.clone()), Ok(()));
        assert_eq!(outcome(Action::Unload, ok), Ok(()));
        let failed = |f: AdminFailure| AdminAnswer { changed: false, failure: Some((f, "why".to_string())) };
        let code = |a, f| outcome(a, failed(f)).map_err(|r| (r.code, r.message));
        assert_eq!(code(Action::Unload, AdminFailure::UnknownModel), Ok(()));
        assert_eq!(code(Action::Load, AdminFailure::UnknownModel), Err((Code::Internal, "why".into())));
        assert_eq!(code(Action::Load, AdminFailure::LoadFailed), Err((Code::InvalidArgument, "why".into())));
        assert_eq!(code(Action::Unload, AdminFailure::LoadFailed), Ok(()));
        assert_eq!(code(Action::Load, AdminFailure::ConfigUnreadable), Err((Code::Internal, "why".into())));
        assert_eq!(code(Action::Unload, AdminFailure::ConfigInvalid), Err((Code::Internal, "why".into())));
    }
}
