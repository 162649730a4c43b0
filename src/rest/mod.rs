//! The REST API (HTTP/1.1): TF-Serving's and KServe v2's REST endpoints plus `GET /metrics`,
//! served by every shard on `--rest_port` (SO_REUSEPORT, like gRPC).
//!
//! - `http.rs`: HTTP/1.1 on glommio (httparse heads, keep-alive, pipelining, limits).
//! - `routes.rs`: the URL table, metrics recording and error answers.
//! - `tensor.rs`: JSON numbers ⇄ tensor bytes (shared by both APIs).
//! - `tfs.rs`: TF-Serving REST JSON ⇄ the `TensorProto`s of the TF-Serving front end (`crate::tfs`).
//! - `kserve.rs`: KServe v2 JSON ⇄ domain, with the binary tensor data extension.
//!
//! Errors are `{"error": "<OVMS's message>"}` with the HTTP status of `error::Kind::http_status`.

pub mod http;
pub mod kserve;
pub mod routes;
pub mod tensor;
pub mod tfs;

pub use http::Limits;
pub use routes::RestService;

use crate::shard::engine::Engine;
use crate::shard::Shard;
use glommio::net::TcpListener;
use std::rc::Rc;

/// Serves the REST API on `listener` until it fails; with `tls`, over TLS only.
pub async fn serve<E: Engine>(
    listener: TcpListener,
    shard: Rc<Shard<E>>,
    limits: Limits,
    tls: Option<Rc<crate::tls::Acceptor>>,
) -> std::io::Error {
    http::serve(listener, Rc::new(RestService { shard }), limits, tls).await
}
