//! gRPC over HTTP/2 on glommio: unary calls and bidirectional streams whose requests are handled
//! one at a time, no compression, one connection per shard thread.
//!
//! The surface is small: a [`Handler`] gets the method path and the request message bytes and
//! returns the response message bytes or a [`Status`]; [`serve`] runs the accept loop of one
//! shard's listener. Dispatch by method and protobuf⇄domain conversion live above this layer.
//!
//! Layers: `io` (glommio TcpStream, plain or under TLS → h2's io traits, TCP_NODELAY), `framing` (5-byte message
//! prefix, `Status` over `crate::status::Code`, `grpc-message` percent-encoding), `server`
//! (connections, streams, limits, response batching).

mod framing;
mod io;
mod server;

use bytes::Bytes;
use std::future::Future;
use std::rc::Rc;

pub use framing::{percent_decode, percent_encode, Code, Status};
// For the loadgen, which speaks the same wire from the client side (no use inside the server).
pub use framing::{encode_prefix, StreamDecoder, CONNECTION_WINDOW_BYTES, PREFIX_LEN, STREAM_WINDOW_BYTES};
pub use io::Io;

/// Limits on what one shard's listener accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request message (after the 5-byte prefix) in bytes; a larger one is answered with
    /// RESOURCE_EXHAUSTED as soon as its prefix arrives, without buffering it.
    pub message_bytes_max: usize,
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: concurrent calls per connection.
    pub streams_max: u32,
    /// Open connections per listener; connections past it are closed immediately.
    pub connections_max: usize,
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE in bytes; a bigger request header list gets HTTP 431.
    pub header_list_bytes_max: u32,
    /// Calls the client reset (RST_STREAM) before the server took them, waiting per connection;
    /// one more closes the connection with GOAWAY ENHANCE_YOUR_CALM (HTTP/2 rapid reset,
    /// CVE-2023-44487). Twice `streams_max`, so a client that cancels every call it may have open,
    /// even twice before the shard gets to them, keeps its connection (h2's default, 20, closed
    /// such clients).
    pub pending_resets_max: usize,
    /// Reset streams whose state is kept, so late frames for them are ignored rather than a
    /// protocol error; twice `streams_max` (h2's default is 50).
    pub reset_streams_kept: usize,
    /// Streams the server itself resets for protocol errors, per connection, before it closes the
    /// connection with ENHANCE_YOUR_CALM (h2's default, made explicit).
    pub local_error_resets_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        let streams_max = 128;
        Limits {
            message_bytes_max: 64 << 20,
            streams_max,
            connections_max: 1024,
            header_list_bytes_max: 16 << 10,
            pending_resets_max: 2 * streams_max as usize,
            reset_streams_kept: 2 * streams_max as usize,
            local_error_resets_max: 1024,
        }
    }
}

/// A unary call's answer: the encoded response message (un-prefixed) and, for a step of a
/// sequence, the shard that owns it, sent as the response headers `seqcore-shard` and
/// `seqcore-shards` so that a client can reach the owner directly next time.
#[derive(Debug)]
pub struct Reply {
    pub message: Bytes,
    pub owner: Option<Owner>,
}

/// The shard owning a sequence, and how many shards there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub shard: u16,
    pub shards: u16,
}

impl From<Bytes> for Reply {
    fn from(message: Bytes) -> Reply {
        Reply { message, owner: None }
    }
}

/// Serves unary gRPC calls. One instance is shared (through `Rc`) by all connections of a shard.
pub trait Handler: 'static {
    /// `method` is the HTTP/2 :path, e.g. "/tensorflow.serving.PredictionService/Predict";
    /// `message` the un-prefixed request message bytes. Returns the answer or a Status.
    ///
    /// An unknown method should give `Status::unknown_method(method)` (UNIMPLEMENTED).
    fn call(&self, method: &str, message: Bytes) -> impl Future<Output = Result<Reply, Status>>;

    /// True if `method` is a bidirectional streaming method: its request messages go to
    /// [`call_stream`](Self::call_stream) one at a time instead of to `call`.
    fn is_streaming(&self, _method: &str) -> bool {
        false
    }

    /// One request message of a streaming call. The server awaits it before handing over the
    /// next message of the same stream, so the answers go out in request order. `Ok` is sent as
    /// one response message and the stream goes on; `Err` ends the stream with that status (a
    /// per-message error the stream survives must therefore be encoded in an `Ok` message).
    fn call_stream(&self, method: &str, _message: Bytes) -> impl Future<Output = Result<Bytes, Status>> {
        let status = Status::unknown_method(method);
        async move { Err(status) }
    }
}

/// Accepts connections on `listener` and serves them on the current glommio executor, until
/// the listener fails (the error is returned). Errors on one connection never stop the loop.
/// With `tls`, every connection is TLS (ALPN `h2`; see `crate::tls`): the handshake runs in the
/// connection's task, holding its connection slot, within the acceptor's timeout.
pub async fn serve<H: Handler>(
    listener: glommio::net::TcpListener,
    handler: Rc<H>,
    limits: Limits,
    tls: Option<Rc<crate::tls::Acceptor>>,
) -> std::io::Error {
    server::serve(listener, handler, limits, tls).await
}
