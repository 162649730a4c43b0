//! The REST URL table (OVMS's `http_rest_api_handler.cpp` routes, spec §3.4):
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET  | `/v1/models/{name}[/versions/{v}]` | TF-Serving model status |
//! | GET  | `/v1/models/{name}[/versions/{v}]/metadata` | TF-Serving model metadata |
//! | POST | `/v1/models/{name}[/versions/{v}]:predict` | TF-Serving predict (row or column) |
//! | GET  | `/v2/health/live`, `/v2/health/ready` | 200, empty body |
//! | GET  | `/v2` | KServe server metadata |
//! | GET  | `/v2/models/{name}[/versions/{v}]` | KServe model metadata |
//! | GET  | `/v2/models/{name}[/versions/{v}]/ready` | 200 empty, or 404 with an error |
//! | POST | `/v2/models/{name}[/versions/{v}]/infer` | KServe infer (JSON, binary tensor data) |
//! | POST | `/v1/config/reload` | OVMS config reload: 201 if something changed, else 200; every model's status |
//! | GET  | `/v1/config` | OVMS config status: every model's status |
//! | POST | `/v2/repository[/{repo}]/index` | Triton repository index (body empty or `{"ready": bool}`) |
//! | POST | `/v2/repository/models/{name}/load` | Triton model load: 200, empty body |
//! | POST | `/v2/repository/models/{name}/unload` | Triton model unload: 200, empty body |
//! | GET  | `/metrics` | Prometheus text of all shards |
//!
//! An unknown path → 404 "Invalid request URL"; a known path with another method → 405
//! "Unsupported method"; a version that is not a number → 400. Every model request is counted in
//! `ovms_requests_success/fail` with `interface="REST"`, as gRPC requests are; the operator
//! requests (config and repository) are not.
//!
//! The operator requests go to the lifecycle controller (`Shard::admin`). A failed config reload
//! is OVMS's `{"error": ...}` with OVMS's status (`tfs::reload_failure`); a failed repository
//! request is `{"error": <the controller's message>}` with Triton's status
//! (`kserve::repository_status`). `/v2/repository/{repo}/models/{name}/load|unload` (a named
//! repository) → 501, as Triton answers it; a named repository's index is the index (Triton's
//! REST ignores the name there).
//!
//! A KServe infer answer with binary outputs is `application/octet-stream` with
//! `Inference-Header-Content-Length` (the JSON's length), as the binary tensor data extension
//! specifies; the binary bytes go out as slices of the outcome (`Response::tail`).

use super::http::{Handler, Method, Request, Response, INFERENCE_HEADER_CONTENT_LENGTH};
use super::{kserve, tfs};
use crate::error::{Error, Kind};
use crate::kserve::repository::{self, Action, Refusal};
use crate::metrics::{self, Api, Interface};
use crate::request::Outcome;
use crate::shard::admin::AdminRequest;
use crate::shard::engine::Engine;
use crate::shard::Shard;
use crate::status::http as status;
use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;

pub struct RestService<E: Engine> {
    pub shard: Rc<Shard<E>>,
}

/// A model route's target: name and optional version.
#[derive(Debug, PartialEq, Eq)]
struct ModelRef {
    name: String,
    version: Option<i64>,
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    TfsStatus(ModelRef),
    TfsMetadata(ModelRef),
    TfsPredict(ModelRef),
    Live,
    Ready,
    ServerMetadata,
    KsMetadata(ModelRef),
    KsReady(ModelRef),
    KsInfer(ModelRef),
    ConfigReload,
    ConfigStatus,
    RepoIndex,
    RepoLoad(String),
    RepoUnload(String),
    /// A load or unload in a named repository.
    RepoNamed,
    Metrics,
}

impl Route {
    fn method(&self) -> Method {
        match self {
            Route::TfsPredict(_)
            | Route::KsInfer(_)
            | Route::ConfigReload
            | Route::RepoIndex
            | Route::RepoLoad(_)
            | Route::RepoUnload(_)
            | Route::RepoNamed => Method::Post,
            _ => Method::Get,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RouteError {
    NotFound,
    BadVersion,
}

/// `name` or `name/versions/v`.
fn model_ref(s: &str) -> Result<ModelRef, RouteError> {
    let (name, version) = match s.split_once("/versions/") {
        Some((n, v)) => {
            let v = v.parse::<i64>().ok().filter(|v| *v >= 0).ok_or(RouteError::BadVersion)?;
            (n, Some(v))
        }
        None => (s, None),
    };
    if name.is_empty() || name.contains('/') {
        return Err(RouteError::NotFound);
    }
    Ok(ModelRef { name: name.to_string(), version })
}

fn route(path: &str) -> Result<Route, RouteError> {
    if let Some(rest) = path.strip_prefix("/v1/models/") {
        if let Some(m) = rest.strip_suffix(":predict") {
            return Ok(Route::TfsPredict(model_ref(m)?));
        }
        if let Some(m) = rest.strip_suffix("/metadata") {
            return Ok(Route::TfsMetadata(model_ref(m)?));
        }
        if rest.contains(':') {
            return Err(RouteError::NotFound);
        }
        return Ok(Route::TfsStatus(model_ref(rest)?));
    }
    if let Some(rest) = path.strip_prefix("/v2/models/") {
        if let Some(m) = rest.strip_suffix("/infer") {
            return Ok(Route::KsInfer(model_ref(m)?));
        }
        if let Some(m) = rest.strip_suffix("/ready") {
            return Ok(Route::KsReady(model_ref(m)?));
        }
        return Ok(Route::KsMetadata(model_ref(rest)?));
    }
    if let Some(rest) = path.strip_prefix("/v2/repository/") {
        return repository_route(rest);
    }
    match path {
        "/v1/config/reload" => Ok(Route::ConfigReload),
        "/v1/config" => Ok(Route::ConfigStatus),
        "/v2" | "/v2/" => Ok(Route::ServerMetadata),
        "/v2/health/live" => Ok(Route::Live),
        "/v2/health/ready" => Ok(Route::Ready),
        "/metrics" => Ok(Route::Metrics),
        _ => Err(RouteError::NotFound),
    }
}

/// What follows `/v2/repository/`: `[{repo}/]index` or `[{repo}/]models/{name}/load|unload`
/// (Triton's `/v2/repository(?:/([^/]+))?/(index|models/([^/]+)/(load|unload))`).
fn repository_route(rest: &str) -> Result<Route, RouteError> {
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(RouteError::NotFound);
    }
    let (named, tail) = match segments.as_slice() {
        ["index"] | ["models", _, _] => (false, segments.as_slice()),
        [_, tail @ ..] => (true, tail),
        [] => return Err(RouteError::NotFound),
    };
    match tail {
        ["index"] => Ok(Route::RepoIndex),
        ["models", _, "load" | "unload"] if named => Ok(Route::RepoNamed),
        ["models", name, "load"] => Ok(Route::RepoLoad(name.to_string())),
        ["models", name, "unload"] => Ok(Route::RepoUnload(name.to_string())),
        _ => Err(RouteError::NotFound),
    }
}

/// A domain error as the REST API answers it: the kind's HTTP status (`error::Kind`, the one
/// mapping) and `{"error": "<OVMS's message>"}`.
fn error_response(e: &Error) -> Response {
    Response::error(e.kind.http_status(), &e.to_string())
}

impl<E: Engine> Handler for RestService<E> {
    fn call(&self, req: Request) -> impl Future<Output = Response> {
        let shard = self.shard.clone();
        async move {
            let route = match route(&req.path) {
                Ok(r) => r,
                // Protocol, not domain: no route for the URL, or the wrong method for one (OVMS's
                // messages). Every other error answer comes from a `Kind`.
                Err(RouteError::NotFound) => return Response::error(status::NOT_FOUND, "Invalid request URL"),
                Err(RouteError::BadVersion) => return error_response(&Kind::RestCouldNotParseVersion.into()),
            };
            let method = if req.method == Method::Head { Method::Get } else { req.method };
            if method != route.method() {
                return Response::error(status::METHOD_NOT_ALLOWED, "Unsupported method");
            }
            dispatch(&shard, route, req).await
        }
    }
}

/// Runs a model request, counting it in the metrics against the model `fut` resolved (set in
/// `model`; OVMS counts only requests that reached a model).
async fn counted<E: Engine>(
    shard: &Shard<E>,
    api: Api,
    method: metrics::Method,
    model: &Cell<Option<usize>>,
    fut: impl Future<Output = Result<Response, Error>>,
) -> Response {
    let fut = std::pin::pin!(fut);
    shard.metrics.counted(api, Interface::Rest, method, model, fut).await.unwrap_or_else(|e| error_response(&e))
}

async fn dispatch<E: Engine>(shard: &Shard<E>, route: Route, req: Request) -> Response {
    use metrics::Method as M;
    let model = Cell::new(None);
    let resolve = |m: &ModelRef| {
        let (idx, meta) = shard.resolve(&m.name, m.version)?;
        model.set(Some(idx.0 as usize));
        Ok::<_, Error>((idx, meta))
    };
    let any_version = |m: &ModelRef| m.version.is_none_or(|v| v == 0);
    match route {
        Route::TfsPredict(m) => {
            let fut = async {
                let (idx, meta) = resolve(&m)?;
                let (mut job, format) = tfs::predict_job(idx, &meta, &req.body)?;
                job.any_version = any_version(&m);
                drop(req);
                let outcome = shard.run(job).await?;
                let meta = shard.answered_by(&outcome, meta);
                Ok(with_owner(
                    shard,
                    &outcome,
                    Response::json(status::OK, tfs::predict_response(&meta, &outcome, format)),
                ))
            };
            counted(shard, Api::TensorFlowServing, M::Predict, &model, fut).await
        }
        Route::TfsStatus(m) => {
            let fut = async {
                let _ = resolve(&m);
                let json = shard.with_catalog(|c| c.model_status(&m.name)?.select(m.version).map(tfs::status_json))?;
                Ok(Response::json(status::OK, json))
            };
            counted(shard, Api::TensorFlowServing, M::GetModelStatus, &model, fut).await
        }
        Route::TfsMetadata(m) => {
            let fut = async { Ok(Response::json(status::OK, tfs::metadata_json(&resolve(&m)?.1))) };
            counted(shard, Api::TensorFlowServing, M::GetModelMetadata, &model, fut).await
        }
        Route::KsInfer(m) => {
            let fut = async {
                let (idx, meta) = resolve(&m)?;
                let kserve::Infer { mut job, echo, id, outputs } =
                    kserve::infer_job(idx, &meta, &req.body, req.inference_header.as_deref())?;
                job.any_version = any_version(&m);
                drop(req);
                let outcome = shard.run(job).await?;
                let meta = shard.answered_by(&outcome, meta);
                let answer = kserve::infer_response(&meta, &outcome, echo, id.as_deref(), &outputs);
                Ok(with_owner(shard, &outcome, infer_answer(answer)))
            };
            counted(shard, Api::KServe, M::ModelInfer, &model, fut).await
        }
        Route::KsMetadata(m) => {
            let fut = async {
                let meta = resolve(&m)?.1;
                let versions = shard.with_catalog(|c| c.available_versions(&meta.name));
                Ok(Response::json(status::OK, kserve::metadata_json(&meta, &versions)))
            };
            counted(shard, Api::KServe, M::ModelMetadata, &model, fut).await
        }
        Route::KsReady(m) => {
            let fut = async {
                let (idx, _) = resolve(&m)?;
                if !shard.with_catalog(|c| c.is_available(idx)) {
                    return Err(Kind::ModelVersionUnloading.into());
                }
                Ok(Response::json(status::OK, Vec::new()))
            };
            counted(shard, Api::KServe, M::ModelReady, &model, fut).await
        }
        Route::ConfigReload => config_reload(shard).await,
        Route::ConfigStatus => Response::json(status::OK, shard.with_catalog(|c| tfs::config_json(c.status()))),
        Route::RepoIndex => match kserve::index_request(&req.body) {
            Ok(ready) => Response::json(
                status::OK,
                shard.with_catalog(|c| kserve::index_json(&repository::index(c.status(), ready))),
            ),
            Err(r) => refused(&r),
        },
        Route::RepoLoad(name) => match kserve::load_request(&req.body) {
            Ok(()) => repository_control(shard, Action::Load, AdminRequest::Load(name)).await,
            Err(r) => refused(&r),
        },
        Route::RepoUnload(name) => match kserve::unload_request(&req.body) {
            Ok(()) => repository_control(shard, Action::Unload, AdminRequest::Unload(name)).await,
            Err(r) => refused(&r),
        },
        Route::RepoNamed => refused(&Refusal {
            code: crate::status::Code::Unimplemented,
            message: repository::REPOSITORY_NAME_UNSUPPORTED.to_string(),
        }),
        Route::Ready if shard.is_draining() => error_response(&Kind::ServerShuttingDown.into()),
        Route::Live | Route::Ready => Response::json(status::OK, Vec::new()),
        Route::ServerMetadata => Response::json(status::OK, kserve::server_metadata_json()),
        Route::Metrics => match shard.scrape().await {
            Ok(text) => {
                Response { content_type: "text/plain; version=0.0.4", ..Response::json(status::OK, text.into_bytes()) }
            }
            Err(e) => error_response(&e),
        },
    }
}

/// `POST /v1/config/reload`, as OVMS answers it: 201 with every model's status if the reload
/// changed what is served, 200 if not; a failure is OVMS's message with OVMS's status.
async fn config_reload<E: Engine>(shard: &Shard<E>) -> Response {
    match shard.admin(AdminRequest::Reload).await {
        Err(e) => error_response(&e),
        Ok(answer) => match answer.failure {
            Some((failure, _)) => {
                let (st, message) = tfs::reload_failure(failure);
                Response::error(st, message)
            }
            None => {
                let st = if answer.changed { status::CREATED } else { status::OK };
                Response::json(st, shard.with_catalog(|c| tfs::config_json(c.status())))
            }
        },
    }
}

/// A repository load or unload: 200 with an empty body, or Triton's status with
/// `{"error": <the controller's message>}`.
async fn repository_control<E: Engine>(shard: &Shard<E>, action: Action, request: AdminRequest) -> Response {
    match shard.admin(request).await {
        Err(e) => error_response(&e),
        Ok(answer) => match repository::outcome(action, answer) {
            Ok(()) => Response::json(status::OK, Vec::new()),
            Err(r) => refused(&r),
        },
    }
}

/// A repository request refused or failed: Triton's HTTP status for its code.
fn refused(r: &Refusal) -> Response {
    Response::error(kserve::repository_status(r.code), &r.message)
}

/// The HTTP answer for a KServe infer answer: plain JSON, or JSON then binary outputs.
/// An answer for a step of a sequence names the shard that owns it (`seqcore-shard`) and the
/// shard count (`seqcore-shards`), as the gRPC answers do, so a client can reach the owner.
fn with_owner<E: Engine>(shard: &Shard<E>, outcome: &Outcome, mut r: Response) -> Response {
    if let Some(id) = &outcome.sequence_id {
        r.headers.push(("seqcore-shard", crate::shard::shard_of_id(id, shard.shards).0.to_string()));
        r.headers.push(("seqcore-shards", shard.shards.to_string()));
    }
    r
}

fn infer_answer(answer: kserve::Answer) -> Response {
    let mut r = Response::json(status::OK, answer.json);
    if !answer.binary.is_empty() {
        r.content_type = "application/octet-stream";
        r.headers.push((INFERENCE_HEADER_CONTENT_LENGTH, r.body.len().to_string()));
        r.tail = answer.binary;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, version: Option<i64>) -> ModelRef {
        ModelRef { name: name.into(), version }
    }

    #[test]
    fn routes() {
        assert_eq!(route("/v1/models/summator:predict"), Ok(Route::TfsPredict(m("summator", None))));
        assert_eq!(route("/v1/models/summator/versions/1:predict"), Ok(Route::TfsPredict(m("summator", Some(1)))));
        assert_eq!(route("/v1/models/summator"), Ok(Route::TfsStatus(m("summator", None))));
        assert_eq!(route("/v1/models/summator/versions/3"), Ok(Route::TfsStatus(m("summator", Some(3)))));
        assert_eq!(route("/v1/models/summator/versions/2/metadata"), Ok(Route::TfsMetadata(m("summator", Some(2)))));
        assert_eq!(route("/v1/models/summator/versions/x"), Err(RouteError::BadVersion));
        assert_eq!(route("/v1/models/summator:classify"), Err(RouteError::NotFound));
        assert_eq!(route("/v1/models/"), Err(RouteError::NotFound));
        assert_eq!(route("/v1/models/a/b"), Err(RouteError::NotFound));
        assert_eq!(route("/v2"), Ok(Route::ServerMetadata));
        assert_eq!(route("/v2/health/live"), Ok(Route::Live));
        assert_eq!(route("/v2/health/ready"), Ok(Route::Ready));
        assert_eq!(route("/v2/models/dummy"), Ok(Route::KsMetadata(m("dummy", None))));
        assert_eq!(route("/v2/models/dummy/versions/1/ready"), Ok(Route::KsReady(m("dummy", Some(1)))));
        assert_eq!(route("/v2/models/dummy/infer"), Ok(Route::KsInfer(m("dummy", None))));
        assert_eq!(route("/metrics"), Ok(Route::Metrics));
        assert_eq!(route("/v1/config/reload"), Ok(Route::ConfigReload));
        assert_eq!(route("/v1/config"), Ok(Route::ConfigStatus));
        assert_eq!(route("/v1/config/"), Err(RouteError::NotFound));
        assert_eq!(route("/v1/config/status"), Err(RouteError::NotFound));
        assert_eq!(route("/v2/repository/index"), Ok(Route::RepoIndex));
        assert_eq!(route("/v2/repository/mine/index"), Ok(Route::RepoIndex));
        assert_eq!(route("/v2/repository/models/index"), Ok(Route::RepoIndex));
        assert_eq!(route("/v2/repository/models/dummy/load"), Ok(Route::RepoLoad("dummy".into())));
        assert_eq!(route("/v2/repository/models/dummy/unload"), Ok(Route::RepoUnload("dummy".into())));
        assert_eq!(route("/v2/repository/models/load/load"), Ok(Route::RepoLoad("load".into())));
        assert_eq!(route("/v2/repository/mine/models/dummy/load"), Ok(Route::RepoNamed));
        assert_eq!(route("/v2/repository/mine/models/dummy/unload"), Ok(Route::RepoNamed));
        assert_eq!(route("/v2/repository/models/dummy/reload"), Err(RouteError::NotFound));
        assert_eq!(route("/v2/repository/models/dummy"), Err(RouteError::NotFound));
        assert_eq!(route("/v2/repository/models//load"), Err(RouteError::NotFound));
        assert_eq!(route("/v2/repository/"), Err(RouteError::NotFound));
        assert_eq!(route("/v2/repository/index/"), Err(RouteError::NotFound));
        assert_eq!(route("/v2/repository"), Err(RouteError::NotFound));
        assert_eq!(route("/v2/repository/a/b/index"), Err(RouteError::NotFound));
        for post in ["/v1/config/reload", "/v2/repository/index", "/v2/repository/models/m/load"] {
            assert_eq!(route(post).map(|r| r.method()), Ok(Method::Post), "{post}");
        }
        assert_eq!(route("/v1/config").map(|r| r.method()), Ok(Method::Get));
        assert_eq!(route("/"), Err(RouteError::NotFound));
        assert_eq!(route("/v3/x"), Err(RouteError::NotFound));
    }
}
