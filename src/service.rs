//! gRPC method dispatch: the TF-Serving services plus seqcore's introspection, on top of the
//! protocol-free shard. Maps domain errors to gRPC statuses through `error::Kind`.

use crate::error::Error;
use crate::grpc::{Code, Handler, Status};
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
                    let (job, meta) = tfs::decode_predict(&shard.catalog, message).map_err(status)?;
                    let outcome = shard.run(job).await.map_err(status)?;
                    Ok(tfs::encode::predict_response(meta, &outcome))
                }
                Method::Metadata => {
                    let req = GetModelMetadataRequest::decode(message).map_err(decode_error)?;
                    if let Some(f) = req.metadata_field.iter().find(|f| *f != "signature_def") {
                        return Err(Status::new(Code::InvalidArgument, format!("metadata field {f:?} is not served; only signature_def")));
                    }
                    let (_, meta) = tfs::resolve(&shard.catalog, req.model_spec.as_ref()).map_err(status)?;
                    Ok(tfs::encode::metadata_response(meta))
                }
                Method::Status => {
                    let req = GetModelStatusRequest::decode(message).map_err(decode_error)?;
                    let (_, meta) = tfs::resolve(&shard.catalog, req.model_spec.as_ref()).map_err(status)?;
                    Ok(tfs::encode::status_response(meta))
                }
                Method::Stats => {
                    let json = shard.all_stats().await.to_string();
                    Ok(Bytes::from(GetStatsResponse { json }.encode_to_vec()))
                }
            }
        }
    }
}

fn status(e: Error) -> Status {
    Status::new(Code::from_i32(e.kind.grpc_code() as i32), e.to_string())
}

fn decode_error(e: prost::DecodeError) -> Status {
    Status::new(Code::InvalidArgument, format!("cannot decode the request message: {e}"))
}
