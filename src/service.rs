//! gRPC method dispatch: the TF-Serving services plus seqcore's introspection, on top of the
//! protocol-free shard. Maps domain errors to gRPC statuses through `error::Kind`.

use crate::error::Error;
use crate::grpc::{Code, Handler, Status};
use crate::metrics::{self, Api, Interface};
use crate::proto::methods;
use crate::proto::seqcore::v1::GetStatsResponse;
use crate::proto::tensorflow::serving::{GetModelMetadataRequest, GetModelStatusRequest};
use crate::shard::Shard;
use crate::tfs;
use bytes::Bytes;
use prost::Message;
use std::future::Future;
use std::rc::Rc;

pub struct GrpcService {
    pub shard: Rc<Shard>,
}

enum Method {
    Predict,
    Metadata,
    Status,
    Stats,
}

impl Handler for GrpcService {
    fn call(&self, method: &str, message: Bytes) -> impl Future<Output = Result<Bytes, Status>> {
        let which = match method {
            methods::PREDICT => Ok(Method::Predict),
            methods::GET_MODEL_METADATA => Ok(Method::Metadata),
            methods::GET_MODEL_STATUS => Ok(Method::Status),
            methods::GET_STATS => Ok(Method::Stats),
            other => Err(Status::unknown_method(other)),
        };
        let shard = self.shard.clone();
        async move {
            match which? {
                Method::Predict => {
                    let started = shard.metrics.request_started();
                    let mut model = None;
                    let result = predict(&shard, message, &mut model).await;
                    let m = metrics::Method::Predict;
                    shard.metrics.request_done(started, Api::TensorFlowServing, Interface::Grpc, m, model, result.is_ok());
                    result.map_err(status)
                }
                Method::Metadata => {
                    let started = shard.metrics.request_started();
                    let mut model = None;
                    let result = metadata(&shard, message, &mut model);
                    let m = metrics::Method::GetModelMetadata;
                    shard.metrics.request_done(started, Api::TensorFlowServing, Interface::Grpc, m, model, result.is_ok());
                    result
                }
                Method::Status => {
                    let started = shard.metrics.request_started();
                    let mut model = None;
                    let result = model_status(&shard, message, &mut model);
                    let m = metrics::Method::GetModelStatus;
                    shard.metrics.request_done(started, Api::TensorFlowServing, Interface::Grpc, m, model, result.is_ok());
                    result
                }
                Method::Stats => {
                    let json = shard.all_stats().await.to_string();
                    Ok(Bytes::from(GetStatsResponse { json }.encode_to_vec()))
                }
            }
        }
    }
}

/// `model` is set as soon as the request names a served model, so failures count against it.
async fn predict(shard: &Shard, message: Bytes, model: &mut Option<usize>) -> Result<Bytes, Error> {
    let req = tfs::decode_predict(message)?;
    let (idx, meta) = tfs::resolve(&shard.catalog, req.model_spec.as_ref())?;
    *model = Some(idx.0 as usize);
    let job = tfs::predict_job(idx, meta, &req)?;
    drop(req);
    let outcome = shard.run(job).await?;
    Ok(tfs::encode::predict_response(meta, &outcome))
}

fn metadata(shard: &Shard, message: Bytes, model: &mut Option<usize>) -> Result<Bytes, Status> {
    let req = GetModelMetadataRequest::decode(message).map_err(decode_error)?;
    let (idx, meta) = tfs::resolve(&shard.catalog, req.model_spec.as_ref()).map_err(status)?;
    *model = Some(idx.0 as usize);
    if let Some(f) = req.metadata_field.iter().find(|f| *f != "signature_def") {
        return Err(Status::new(Code::InvalidArgument, format!("metadata field {f:?} is not served; only signature_def")));
    }
    Ok(tfs::encode::metadata_response(meta))
}

fn model_status(shard: &Shard, message: Bytes, model: &mut Option<usize>) -> Result<Bytes, Status> {
    let req = GetModelStatusRequest::decode(message).map_err(decode_error)?;
    let (idx, meta) = tfs::resolve(&shard.catalog, req.model_spec.as_ref()).map_err(status)?;
    *model = Some(idx.0 as usize);
    Ok(tfs::encode::status_response(meta))
}

fn status(e: Error) -> Status {
    Status::new(Code::from_i32(e.kind.grpc_code() as i32), e.to_string())
}

fn decode_error(e: prost::DecodeError) -> Status {
    Status::new(Code::InvalidArgument, format!("cannot decode the request message: {e}"))
}
