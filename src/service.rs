//! gRPC method dispatch: the TF-Serving services (with `HandleReloadConfigRequest`), KServe v2's
//! `inference.GRPCInferenceService` (with Triton's `ModelStreamInfer` and model repository
//! extension) and seqcore's introspection, on top of the protocol-free shard. Domain errors become
//! gRPC statuses through `error::Kind::grpc_code` (the one mapping); the other statuses written
//! here are this protocol's own (an unknown method, an undecodable or unsupported request
//! message), named by `grpc::Status`'s constructors, and the operator calls' failures.
//!
//! The operator calls (config reload, repository index/load/unload) go to the lifecycle
//! controller through `Shard::admin` and are not counted in `ovms_requests_*`. A failed one is
//! answered with the code its API's upstream gives it: `tfs::encode::reload_code` (TF-Serving's
//! reload, OVMS's codes), `kserve::repository::outcome` (Triton's).

use crate::catalog::ModelMeta;
use crate::error::Error;
use crate::error::Kind;
use crate::grpc::{Handler, Owner, Reply, Status};
use crate::kserve;
use crate::kserve::repository::{self, Action, Refusal};
use crate::metrics::{self, Api, Interface};
use crate::proto::inference::model_repository_parameter::ParameterChoice;
use crate::proto::inference::{
    ModelMetadataRequest, ModelReadyRequest, RepositoryIndexRequest, RepositoryModelLoadRequest,
    RepositoryModelUnloadRequest,
};
use crate::proto::methods;
use crate::proto::seqcore::v1::GetStatsResponse;
use crate::proto::tensorflow::serving::{GetModelMetadataRequest, GetModelStatusRequest, ReloadConfigRequest};
use crate::request::InferJob;
use crate::shard::admin::AdminRequest;
use crate::shard::engine::Engine;
use crate::shard::Shard;
use crate::tfs;
use bytes::Bytes;
use prost::Message;
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;

pub struct GrpcService<E: Engine> {
    pub shard: Rc<Shard<E>>,
}

enum Method {
    Predict,
    Metadata,
    Status,
    Stats,
    ServerLive,
    ServerReady,
    ServerMetadata,
    ModelReady,
    ModelMetadata,
    ModelInfer,
    ReloadConfig,
    RepositoryIndex,
    RepositoryLoad,
    RepositoryUnload,
}

impl<E: Engine> Handler for GrpcService<E> {
    fn call(&self, method: &str, message: Bytes) -> impl Future<Output = Result<Reply, Status>> {
        let which = match method {
            methods::PREDICT => Ok(Method::Predict),
            methods::GET_MODEL_METADATA => Ok(Method::Metadata),
            methods::GET_MODEL_STATUS => Ok(Method::Status),
            methods::GET_STATS => Ok(Method::Stats),
            methods::SERVER_LIVE => Ok(Method::ServerLive),
            methods::SERVER_READY => Ok(Method::ServerReady),
            methods::SERVER_METADATA => Ok(Method::ServerMetadata),
            methods::MODEL_READY => Ok(Method::ModelReady),
            methods::MODEL_METADATA => Ok(Method::ModelMetadata),
            methods::MODEL_INFER => Ok(Method::ModelInfer),
            methods::HANDLE_RELOAD_CONFIG => Ok(Method::ReloadConfig),
            methods::REPOSITORY_INDEX => Ok(Method::RepositoryIndex),
            methods::REPOSITORY_MODEL_LOAD => Ok(Method::RepositoryLoad),
            methods::REPOSITORY_MODEL_UNLOAD => Ok(Method::RepositoryUnload),
            other => Err(Status::unknown_method(other)),
        };
        let shard = self.shard.clone();
        async move {
            let bytes = match which? {
                Method::Predict => {
                    let model = Cell::new(None);
                    let request = pin!(predict(&shard, message, &model));
                    return shard
                        .metrics
                        .counted(Api::TensorFlowServing, Interface::Grpc, metrics::Method::Predict, &model, request)
                        .await
                        .map_err(status);
                }
                Method::Metadata => shard.metrics.counted_now(
                    Api::TensorFlowServing,
                    Interface::Grpc,
                    metrics::Method::GetModelMetadata,
                    |model| metadata(&shard, message, model),
                ),
                Method::Status => shard.metrics.counted_now(
                    Api::TensorFlowServing,
                    Interface::Grpc,
                    metrics::Method::GetModelStatus,
                    |model| model_status(&shard, message, model),
                ),
                Method::Stats => {
                    // Boxed: the gathering future is large, and every call's task would carry its size.
                    let json = Box::pin(shard.all_stats()).await.map_err(status)?.to_string();
                    Ok(Bytes::from(GetStatsResponse { json }.encode_to_vec()))
                }
                // The server answers only once every shard serves every model, and is not ready
                // once it shuts down.
                Method::ServerLive => Ok(kserve::encode::server_live()),
                Method::ServerReady => Ok(kserve::encode::server_ready(!self.shard.is_draining())),
                Method::ServerMetadata => Ok(kserve::encode::server_metadata()),
                Method::ModelReady => {
                    shard.metrics.counted_now(Api::KServe, Interface::Grpc, metrics::Method::ModelReady, |model| {
                        kserve_model_ready(&shard, message, model)
                    })
                }
                Method::ModelMetadata => {
                    shard.metrics.counted_now(Api::KServe, Interface::Grpc, metrics::Method::ModelMetadata, |model| {
                        kserve_model_metadata(&shard, message, model)
                    })
                }
                Method::ModelInfer => {
                    let model = Cell::new(None);
                    let request = pin!(kserve_infer(&shard, message, &model));
                    return shard
                        .metrics
                        .counted(Api::KServe, Interface::Grpc, metrics::Method::ModelInfer, &model, request)
                        .await
                        .map(|(r, owner)| Reply { message: Bytes::from(r.encode_to_vec()), owner })
                        .map_err(status);
                }
                Method::ReloadConfig => reload_config(&shard, message).await,
                Method::RepositoryIndex => repository_index(&shard, message),
                Method::RepositoryLoad => repository_load(&shard, message).await,
                Method::RepositoryUnload => repository_unload(&shard, message).await,
            };
            bytes.map(Reply::from)
        }
    }

    fn is_streaming(&self, method: &str) -> bool {
        method == methods::MODEL_STREAM_INFER
    }

    /// One step of `ModelStreamInfer`: a `ModelInferRequest` answered with a
    /// `ModelStreamInferResponse`; a failed step is answered with its `error_message` and the
    /// stream goes on. Counted as a KServe gRPC `ModelInfer`.
    fn call_stream(&self, method: &str, message: Bytes) -> impl Future<Output = Result<Bytes, Status>> {
        let known = if method == methods::MODEL_STREAM_INFER { Ok(()) } else { Err(Status::unknown_method(method)) };
        let shard = self.shard.clone();
        async move {
            known?;
            let model = Cell::new(None);
            let mut names = (String::new(), String::new(), String::new());
            let step = kserve_infer_named(&shard, message, &model, &mut names);
            let result = shard
                .metrics
                .counted(Api::KServe, Interface::Grpc, metrics::Method::ModelInfer, &model, pin!(step))
                .await;
            Ok(match result {
                Ok((resp, _)) => kserve::encode::stream_ok(resp),
                Err(e) => kserve::encode::stream_error(&e, &names.0, &names.1, names.2),
            })
        }
    }
}

async fn kserve_infer<E: Engine>(
    shard: &Shard<E>,
    message: Bytes,
    model: &Cell<Option<usize>>,
) -> Result<(crate::proto::inference::ModelInferResponse, Option<Owner>), Error> {
    let mut names = Default::default();
    kserve_infer_named(shard, message, model, &mut names).await
}

/// The shard that owns the sequence an answer belongs to (None for a stateless model).
fn owner_of<E: Engine>(shard: &Shard<E>, outcome: &crate::request::Outcome) -> Option<Owner> {
    let id = outcome.sequence_id.as_ref()?;
    Some(Owner { shard: crate::shard::shard_of_id(id, shard.shards).0, shards: shard.shards })
}

/// `names` gets the request's model name, version and id as soon as they are decoded (for a
/// stream's error answers).
async fn kserve_infer_named<E: Engine>(
    shard: &Shard<E>,
    message: Bytes,
    model: &Cell<Option<usize>>,
    names: &mut (String, String, String),
) -> Result<(crate::proto::inference::ModelInferResponse, Option<Owner>), Error> {
    let (meta, job, echo, requested) = kserve_prepare(shard, message, model, names)?;
    let outcome = shard.run(job).await?;
    let meta = shard.answered_by(&outcome, meta);
    let requested: Vec<&str> = requested.iter().map(String::as_str).collect();
    let owner = owner_of(shard, &outcome);
    Ok((kserve::encode::infer_response(&meta, names.2.clone(), &requested, echo, &outcome)?, owner))
}

/// The part of a KServe step before it runs: decode, resolve, validate. Not async, so the
/// decoded request never becomes part of the request task's state.
fn kserve_prepare<E: Engine>(
    shard: &Shard<E>,
    message: Bytes,
    model: &Cell<Option<usize>>,
    names: &mut (String, String, String),
) -> Result<(Rc<ModelMeta>, InferJob, crate::sequence::Echo, Vec<String>), Error> {
    let mut req = kserve::decode_infer(message)?;
    names.0 = std::mem::take(&mut req.model_name);
    names.1 = std::mem::take(&mut req.model_version);
    names.2 = std::mem::take(&mut req.id);
    let (idx, meta) = shard.with_catalog(|c| kserve::resolve(c, &names.0, &names.1))?;
    model.set(Some(idx.0 as usize));
    let (job, echo) = kserve::infer_job(idx, &meta, &req)?;
    let requested = req.outputs.drain(..).map(|o| o.name).collect();
    Ok((meta, job, echo, requested))
}

fn kserve_model_ready<E: Engine>(
    shard: &Shard<E>,
    message: Bytes,
    model: &Cell<Option<usize>>,
) -> Result<Bytes, Status> {
    let req = ModelReadyRequest::decode(message).map_err(decode_error)?;
    let (idx, _) = shard.with_catalog(|c| kserve::resolve(c, &req.name, &req.version)).map_err(status)?;
    model.set(Some(idx.0 as usize));
    Ok(kserve::encode::model_ready(shard.with_catalog(|c| c.is_available(idx))))
}

fn kserve_model_metadata<E: Engine>(
    shard: &Shard<E>,
    message: Bytes,
    model: &Cell<Option<usize>>,
) -> Result<Bytes, Status> {
    let req = ModelMetadataRequest::decode(message).map_err(decode_error)?;
    let (idx, meta) = shard.with_catalog(|c| kserve::resolve(c, &req.name, &req.version)).map_err(status)?;
    model.set(Some(idx.0 as usize));
    let versions = shard.with_catalog(|c| c.available_versions(&meta.name));
    Ok(kserve::encode::model_metadata(&meta, &versions))
}

/// `model` is set as soon as the request names a served model, so failures count against it.
/// Plain requests take `tfs::fast`; everything else (and every error) the full prost path.
async fn predict<E: Engine>(shard: &Shard<E>, message: Bytes, model: &Cell<Option<usize>>) -> Result<Reply, Error> {
    let (meta, job) = match shard.with_catalog(|c| tfs::fast::predict_job(&message, c)) {
        Some((idx, meta, job)) => {
            model.set(Some(idx.0 as usize));
            (meta, job)
        }
        None => {
            let req = tfs::decode_predict(message)?;
            let (idx, meta) = shard.with_catalog(|c| tfs::resolve(c, req.model_spec.as_ref()))?;
            model.set(Some(idx.0 as usize));
            let job = tfs::predict_job(idx, &meta, &req)?;
            (meta, job)
        }
    };
    let outcome = shard.run(job).await?;
    let meta = shard.answered_by(&outcome, meta);
    Ok(Reply { message: tfs::encode::predict_response(&meta, &outcome), owner: owner_of(shard, &outcome) })
}

fn metadata<E: Engine>(shard: &Shard<E>, message: Bytes, model: &Cell<Option<usize>>) -> Result<Bytes, Status> {
    let req = GetModelMetadataRequest::decode(message).map_err(decode_error)?;
    let (idx, meta) = shard.with_catalog(|c| tfs::resolve(c, req.model_spec.as_ref())).map_err(status)?;
    model.set(Some(idx.0 as usize));
    if let Some(f) = req.metadata_field.iter().find(|f| *f != "signature_def") {
        // TF-Serving's request shape, not a domain error: OVMS has no such kind or message.
        return Err(Status::invalid_argument(format!("metadata field {f:?} is not served; only signature_def")));
    }
    Ok(tfs::encode::metadata_response(&meta))
}

fn model_status<E: Engine>(shard: &Shard<E>, message: Bytes, model: &Cell<Option<usize>>) -> Result<Bytes, Status> {
    let req = GetModelStatusRequest::decode(message).map_err(decode_error)?;
    let spec = req.model_spec.as_ref().ok_or_else(|| status(Kind::ModelNameMissing.into()))?;
    let version = tfs::spec_version(spec).map_err(status)?;
    if let Ok((idx, _)) = shard.resolve(&spec.name, version) {
        model.set(Some(idx.0 as usize));
    }
    shard
        .with_catalog(|c| c.model_status(&spec.name).and_then(|m| m.select(version)).map(tfs::encode::status_response))
        .map_err(status)
}

/// TF-Serving's `HandleReloadConfigRequest`: seqcore re-reads its own configuration file (and the
/// version directories), as OVMS's REST config reload does; a `config` carried in the request
/// decodes but is not applied. A failed reload is a non-OK gRPC status with the controller's
/// message, as TF-Serving answers it (not an OK call whose `status` says the error; see
/// `tfs::encode::reload_code`).
async fn reload_config<E: Engine>(shard: &Shard<E>, message: Bytes) -> Result<Bytes, Status> {
    let metric_names = ReloadConfigRequest::decode(message).map_err(decode_error)?.metric_names;
    let answer = shard.admin(AdminRequest::Reload).await.map_err(status)?;
    match answer.failure {
        Some((failure, message)) => Err(Status::new(tfs::encode::reload_code(failure), message)),
        None => Ok(tfs::encode::reload_response(&metric_names)),
    }
}

/// Triton's `RepositoryIndex`: every model version of this shard's catalog status (the
/// controller publishes the same status to every shard).
fn repository_index<E: Engine>(shard: &Shard<E>, message: Bytes) -> Result<Bytes, Status> {
    let req = RepositoryIndexRequest::decode(message).map_err(decode_error)?;
    repository::check_repository(&req.repository_name).map_err(refused)?;
    Ok(shard.with_catalog(|c| kserve::encode::repository_index(&repository::index(c.status(), req.ready))))
}

/// Triton's `RepositoryModelLoad`: serve the configuration's model `model_name` again. The
/// answer, `RepositoryModelLoadResponse {}`, is the empty message.
async fn repository_load<E: Engine>(shard: &Shard<E>, message: Bytes) -> Result<Bytes, Status> {
    let req = RepositoryModelLoadRequest::decode(message).map_err(decode_error)?;
    repository::check_repository(&req.repository_name).map_err(refused)?;
    repository::check_load_params(req.parameters.keys().map(String::as_str)).map_err(refused)?;
    let answer = shard.admin(AdminRequest::Load(req.model_name)).await.map_err(status)?;
    repository::outcome(Action::Load, answer).map_err(refused)?;
    Ok(Bytes::new())
}

/// Triton's `RepositoryModelUnload`: stop serving `model_name` (its live sequences may finish).
/// The answer, `RepositoryModelUnloadResponse {}`, is the empty message.
async fn repository_unload<E: Engine>(shard: &Shard<E>, message: Bytes) -> Result<Bytes, Status> {
    let req = RepositoryModelUnloadRequest::decode(message).map_err(decode_error)?;
    repository::check_repository(&req.repository_name).map_err(refused)?;
    let params = req
        .parameters
        .iter()
        .map(|(k, v)| (k.as_str(), matches!(v.parameter_choice, Some(ParameterChoice::BoolParam(_)))));
    repository::check_unload_params(params).map_err(refused)?;
    let answer = shard.admin(AdminRequest::Unload(req.model_name)).await.map_err(status)?;
    repository::outcome(Action::Unload, answer).map_err(refused)?;
    Ok(Bytes::new())
}

/// A repository request refused or failed, with Triton's code.
fn refused(r: Refusal) -> Status {
    Status::new(r.code, r.message)
}

/// A domain error as the gRPC front end answers it: the kind's code, OVMS's message.
fn status(e: Error) -> Status {
    Status::new(e.kind.grpc_code(), e.to_string())
}

/// A metadata or status request that is not valid protobuf (protocol, not domain: Predict and
/// ModelInfer report theirs as `Kind::InvalidMessage`, as OVMS does).
fn decode_error(e: prost::DecodeError) -> Status {
    Status::invalid_argument(format!("cannot decode the request message: {e}"))
}
