//! The gRPC server: accept loop, one h2 connection task per connection, one task per stream.
//!
//! # Batching responses into few writes
//!
//! h2's `Connection::poll_accept` reads every frame the socket has and then flushes every frame
//! queued for sending, on every call. glommio's `spawn_local` runs the new task right away, so a
//! stream task whose handler completes without waiting has queued its whole response (HEADERS,
//! DATA, trailers) by the time `spawn_local` returns. A naive accept → spawn → accept loop thus
//! writes once per response.
//!
//! Instead the connection task works in rounds. It first *drains*: calls `poll_accept` until it
//! returns `Pending`, collecting every request h2 has already parsed and spawning nothing. Then
//! it sends what is buffered (`Flusher::poll_flush`), and only then spawns a task per collected
//! request. The responses those tasks queue go out at the end of the next round, together.
//!
//! h2 itself would still write once per response of more than 256 bytes (it flushes before
//! encoding the frame after a chained DATA payload), so `io.rs` defers writes: h2's writes land in
//! a 64 KiB per-connection buffer and its flushes return at once; the only real flush point is the
//! end of a round. Responses that complete later (handlers that really wait) wake the connection
//! task through h2, and all that complete in the same executor tick leave in one write too.
//!
//! A round is bounded in compute, not in requests: handlers run inline (inference is synchronous
//! on the shard), so spawning a batch of 64 LSTM steps would hold every answer back for 64
//! inferences while the client, with nothing to do, waits for them and then refills the server
//! all at once. After `sched::ROUND_BUDGET` of handler time the connection stops spawning, sends
//! what is done, collects what has arrived meanwhile, and goes on with the rest in order. Cheap
//! requests still share a write (a summator step takes ≈ 10 µs); long ones leave one by one and
//! the client refills the pipeline while the server computes.
//!
//! # Streaming calls
//!
//! For a method the handler calls streaming, the response headers go out at once; then each
//! request message is handed to `Handler::call_stream` and awaited before the next is decoded,
//! so answers keep request order and at most one request per stream is in flight. Pending
//! requests are bounded by flow control: the window for a DATA chunk is handed back only once
//! every message in it has been answered. Pending answers are bounded too: before queueing an
//! answer we wait for send capacity on the stream, so a client that stops reading stops its own
//! stream (and only it). The call ends with the client's end of stream (grpc-status OK), a
//! handler `Err`, or a malformed message (that status).
//!
//! # Limits
//!
//! - `message_bytes_max`: checked on the 5-byte prefix before any of the message is buffered;
//!   over it, the call gets RESOURCE_EXHAUSTED at once and the rest of the body is discarded
//!   (h2 resets the stream with NO_ERROR so the client stops sending).
//! - `streams_max`: HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; h2 refuses streams over it.
//! - `header_list_bytes_max`: SETTINGS_MAX_HEADER_LIST_SIZE; h2 answers a bigger header list with
//!   HTTP 431 and refuses the stream.
//! - `connections_max`: per listener (shard); a connection accepted past it is closed
//!   immediately, without reading from it. Over TLS a connection holds its slot from its
//!   handshake on (bounded by the acceptor's handshake timeout, `crate::tls`).
//! - `pending_resets_max`, `reset_streams_kept`, `local_error_resets_max`: h2's reset limits,
//!   set so that a client cancelling every call it may have open keeps its connection, while a
//!   rapid-reset flood (CVE-2023-44487) is closed with ENHANCE_YOUR_CALM.
//!
//! # Errors outside the handler
//!
//! - `:method` other than POST → HTTP 405, grpc-status UNIMPLEMENTED.
//! - `content-type` other than `application/grpc` / `application/grpc+proto` (parameters after
//!   `;` allowed) → HTTP 415, grpc-status INTERNAL (a gRPC protocol error).
//! - compressed message → UNIMPLEMENTED "compression is not supported" (+ `grpc-accept-encoding:
//!   identity`); malformed or repeated messages → INVALID_ARGUMENT (see `framing.rs`).
//! - `grpc-timeout` is not enforced.
//!
//! Connection-level errors end only that connection. They are logged at INFO, at most one per
//! listener per 10 s with a count of the rest (`ConnectionErrors`); with the environment variable
//! `SEQCORE_GRPC_DEBUG` set, every one is.

use super::framing::{
    FramedMessage, MessageDecoder, Status, StreamDecoder, CONNECTION_WINDOW_BYTES, STREAM_WINDOW_BYTES,
};
use super::io::{Flusher, Io};
use super::{Handler, Limits, Owner, Reply};
use crate::sched::{contained, log_panic, yield_now, ROUND_BUDGET};
use crate::tls::Acceptor;
use bytes::Bytes;
use glommio::net::{Preallocated, TcpListener, TcpStream};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use std::cell::Cell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

const CONTENT_TYPE_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
/// Response headers naming the shard that owns the call's sequence, and the shard count.
pub const SHARD_HEADER: &str = "seqcore-shard";
pub const SHARDS_HEADER: &str = "seqcore-shards";

type Accepted = (Request<RecvStream>, SendResponse<FramedMessage>);

/// See [`super::serve`].
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Rc<H>,
    limits: Limits,
    tls: Option<Rc<Acceptor>>,
) -> io::Error {
    let errors = Rc::new(ConnectionErrors::new(std::env::var_os("SEQCORE_GRPC_DEBUG").is_some()));
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(limits.streams_max)
        .max_pending_accept_reset_streams(limits.pending_resets_max)
        .max_concurrent_reset_streams(limits.reset_streams_kept)
        .max_local_error_reset_streams(Some(limits.local_error_resets_max))
        .max_header_list_size(limits.header_list_bytes_max)
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
    let active = Rc::new(Cell::new(0usize));
    let mut starved = crate::log::Throttle::new(crate::sched::ACCEPT_WARNING_PERIOD);
    let mut refused = crate::log::Throttle::new(crate::sched::ACCEPT_WARNING_PERIOD);
    loop {
        let stream = match crate::sched::accept(&listener, &mut starved, "gRPC").await {
            Ok(stream) => stream,
            Err(e) => return e,
        };
        if active.get() >= limits.connections_max {
            crate::sched::warn_connection_limit(&mut refused, "gRPC", limits.connections_max);
            drop(stream);
            continue;
        }
        let guard = ConnectionSlot::take(&active);
        let (handler, builder, tls, errors) = (handler.clone(), builder.clone(), tls.clone(), errors.clone());
        glommio::spawn_local(async move {
            // The connection's future is made inside the task, so the task holds it once.
            let conn = contained(connection(stream, tls, handler, builder, limits.message_bytes_max, &errors));
            if let Err(panic) = conn.await {
                log_panic("a gRPC connection", &*panic);
            }
            drop(guard);
        })
        .detach();
    }
}

/// The TLS handshake of a new connection (TCP_NODELAY first, so the handshake's flights are not
/// delayed); a failed one is an error of this connection only (the acceptor logs it).
async fn tls_io(stream: TcpStream, acceptor: &Acceptor) -> io::Result<(Io, Flusher)> {
    stream.set_nodelay(true).map_err(io::Error::from)?;
    let stream = stream.buffered_with(Preallocated::new(super::io::READ_BUFFER_BYTES));
    match acceptor.accept(stream).await {
        Some(tls) => Ok(Io::tls(tls)),
        None => Err(io::Error::new(io::ErrorKind::ConnectionAborted, "TLS handshake failed")),
    }
}

/// A listener's log of the errors that end its connections (a client that vanished, a protocol
/// error): every one when `debug`, otherwise one per `ACCEPT_WARNING_PERIOD` with a count.
struct ConnectionErrors {
    debug: bool,
    throttle: std::cell::RefCell<crate::log::Throttle>,
}

impl ConnectionErrors {
    fn new(debug: bool) -> ConnectionErrors {
        ConnectionErrors {
            debug,
            throttle: std::cell::RefCell::new(crate::log::Throttle::new(crate::sched::ACCEPT_WARNING_PERIOD)),
        }
    }

    fn report(&self, during: &str, e: &dyn std::fmt::Display) {
        if self.debug {
            eprintln!("seqcore grpc: a connection failed while {during}: {e}");
            return;
        }
        let Ok(mut throttle) = self.throttle.try_borrow_mut() else { return };
        if let Some(again) = throttle.note(Instant::now()) {
            crate::log!(Info, "a gRPC connection ended on an error while {during}: {e}{again}");
        }
    }
}

/// Counts a live connection until dropped.
struct ConnectionSlot(Rc<Cell<usize>>);

impl ConnectionSlot {
    fn take(active: &Rc<Cell<usize>>) -> ConnectionSlot {
        active.set(active.get() + 1);
        ConnectionSlot(active.clone())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

async fn connection<H: Handler>(
    stream: TcpStream,
    tls: Option<Rc<Acceptor>>,
    handler: Rc<H>,
    builder: h2::server::Builder,
    message_bytes_max: usize,
    errors: &ConnectionErrors,
) {
    let io = match tls {
        None => Io::new(stream),
        Some(acceptor) => tls_io(stream, &acceptor).await,
    };
    let (io, flusher) = match io {
        Ok(io) => io,
        Err(e) => {
            errors.report("setting it up", &e);
            return;
        }
    };
    let mut conn = match builder.handshake::<_, FramedMessage>(io).await {
        Ok(conn) => conn,
        Err(e) => {
            errors.report("its HTTP/2 handshake", &e);
            return;
        }
    };
    // From here on only `drain` puts bytes on the wire, once per round.
    flusher.defer_writes();
    // Bounded by the connection's SETTINGS_MAX_CONCURRENT_STREAMS: h2 accepts no more streams.
    let mut batch: VecDeque<Accepted> = VecDeque::new();
    loop {
        // Collects every parsed request and sends whatever responses are queued.
        let round = poll_fn(|cx| drain(&mut conn, &flusher, &mut batch, cx)).await;
        let started = Instant::now();
        while let Some((request, mut respond)) = batch.pop_front() {
            let (parts, body) = request.into_parts();
            if let Err((http_status, status)) = check_request(&parts.method, &parts.headers) {
                send_status(&mut respond, http_status, &status);
            } else if handler.is_streaming(parts.uri.path()) {
                glommio::spawn_local(stream_call(handler.clone(), parts.uri, body, respond, message_bytes_max))
                    .detach();
            } else {
                // Runs at once: a handler that does not wait queues its response before this
                // returns. The task holds only what the call needs after this point (see `unary`).
                glommio::spawn_local(unary(handler.clone(), parts.uri, body, respond, message_bytes_max)).detach();
            }
            if matches!(round, Round::Requests) && started.elapsed() >= ROUND_BUDGET {
                break;
            }
        }
        match round {
            Round::Requests => {}
            Round::Closed => return,
            Round::Failed(e) => {
                errors.report("serving it", &e);
                return;
            }
        }
        if batch.is_empty() {
            glommio::yield_if_needed().await;
        } else {
            // Left over past the budget: let the shard's other connections have a round first.
            yield_now().await;
        }
    }
}

enum Round {
    /// Requests were collected into the batch.
    Requests,
    /// The client closed the connection.
    Closed,
    Failed(String),
}

/// Calls `poll_accept` until it is `Pending`, collecting requests behind any left over from the
/// last round, then sends what is buffered. Ready once the batch holds a request or the
/// connection is done.
fn drain<T>(
    conn: &mut h2::server::Connection<T, FramedMessage>,
    flusher: &Flusher,
    batch: &mut VecDeque<Accepted>,
    cx: &mut Context<'_>,
) -> Poll<Round>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match conn.poll_accept(cx) {
            Poll::Ready(Some(Ok(accepted))) => batch.push_back(accepted),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Round::Failed(e.to_string())),
            Poll::Ready(None) => return Poll::Ready(Round::Closed),
            Poll::Pending => break,
        }
    }
    // h2 has moved every queued response frame into the write buffer by now (its flush only
    // returned early because writes are deferred). If the socket is full, the waker is
    // registered for writability and the next round sends the rest.
    if let Poll::Ready(Err(e)) = flusher.poll_flush(cx) {
        return Poll::Ready(Round::Failed(e.to_string()));
    }
    if batch.is_empty() {
        Poll::Pending
    } else {
        Poll::Ready(Round::Requests)
    }
}

/// One unary call, on its own task (headers already checked). Each call's task is one
/// allocation of this future's size, so it holds as little as it can: the URI rather than the
/// request's parts, and the handler's future, which `service` keeps small. Past about 1 KiB glibc
/// serves the task from its slower large-chunk path (it showed as `malloc_consolidate` in the
/// profile when the task was 2.4 KiB); it is 856 bytes now. To re-measure:
/// `RUSTC_BOOTSTRAP=1 cargo rustc --release --lib -- -Zprint-type-sizes | grep 'server::unary'`.
async fn unary<H: Handler>(
    handler: Rc<H>,
    uri: Uri,
    mut body: RecvStream,
    mut respond: SendResponse<FramedMessage>,
    message_bytes_max: usize,
) {
    let message = match read_message(&mut body, message_bytes_max).await {
        Ok(message) => message,
        Err(Some(status)) => {
            send_status(&mut respond, StatusCode::OK, &status);
            return;
        }
        // The client reset the stream: nobody to answer.
        Err(None) => return,
    };
    drop(body);
    let result =
        contained(handler.call(uri.path(), message)).await.unwrap_or_else(|p| handler_panicked(p).map(Reply::from));
    match result.and_then(|r| Ok((FramedMessage::new(r.message)?, r.owner))) {
        Ok((framed, owner)) => send_message(&mut respond, framed, owner),
        Err(status) => send_status(&mut respond, StatusCode::OK, &status),
    }
}

/// `seqcore-shard` / `seqcore-shards` values for shard numbers, made once per thread from leaked
/// strings (at most `u16::MAX + 1` of them, each a few bytes), so a response clones a static
/// value instead of formatting and allocating one.
fn shard_value(n: u16) -> HeaderValue {
    thread_local! {
        static VALUES: std::cell::RefCell<Vec<HeaderValue>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    VALUES.with(|v| {
        let Ok(mut v) = v.try_borrow_mut() else { return HeaderValue::from(n) };
        while v.len() <= n as usize {
            let text: &'static str = Box::leak(v.len().to_string().into_boxed_str());
            v.push(HeaderValue::from_static(text));
        }
        v[n as usize].clone()
    })
}

/// A handler that panicked fails its call with INTERNAL (see `sched::contained`).
fn handler_panicked(panic: Box<dyn std::any::Any + Send>) -> Result<Bytes, Status> {
    log_panic("a gRPC handler", &*panic);
    Err(Status::internal("internal error: the handler failed"))
}

/// One bidirectional streaming call (see the module doc).
async fn stream_call<H: Handler>(
    handler: Rc<H>,
    uri: Uri,
    mut body: RecvStream,
    mut respond: SendResponse<FramedMessage>,
    message_bytes_max: usize,
) {
    let mut response = Response::new(());
    response.headers_mut().insert(http::header::CONTENT_TYPE, CONTENT_TYPE_GRPC);
    let Ok(mut stream) = respond.send_response(response, false) else { return };
    let mut decoder = StreamDecoder::new(message_bytes_max);
    let status = 'call: loop {
        let chunk = match body.data().await {
            None => break 'call decoder.finish().err(),
            Some(Ok(chunk)) => chunk,
            // The client reset the stream: nobody to answer.
            Some(Err(_)) => return,
        };
        decoder.push(&chunk);
        loop {
            let message = match decoder.next_message() {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => break 'call Some(status),
            };
            let result = contained(handler.call_stream(uri.path(), message)).await.unwrap_or_else(handler_panicked);
            match result.and_then(FramedMessage::new) {
                Ok(framed) => {
                    if !send_when_room(&mut stream, framed).await {
                        return;
                    }
                }
                Err(status) => break 'call Some(status),
            }
        }
        // Every message of this chunk is answered: let the client send more.
        let _ = body.flow_control().release_capacity(chunk.len());
    };
    let status = status.unwrap_or_else(|| Status::new(super::Code::Ok, ""));
    let mut trailers = HeaderMap::with_capacity(2);
    status.append_to(&mut trailers);
    let _ = stream.send_trailers(trailers);
}

/// Queues one answer on a stream once the stream has send capacity (bounded by the client's
/// flow-control window and h2's per-stream send buffer). False if the stream is gone.
async fn send_when_room(stream: &mut SendStream<FramedMessage>, message: FramedMessage) -> bool {
    use bytes::Buf;
    stream.reserve_capacity(message.remaining());
    while stream.capacity() == 0 {
        match poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(Ok(_)) => {}
            _ => return false,
        }
    }
    stream.send_data(message, false).is_ok()
}

fn check_request(method: &Method, headers: &HeaderMap) -> Result<(), (StatusCode, Status)> {
    if method != Method::POST {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            Status::unimplemented(format!("HTTP method {method} is not allowed; gRPC uses POST")),
        ));
    }
    let content_type = headers.get(http::header::CONTENT_TYPE).map(HeaderValue::as_bytes);
    if !content_type.is_some_and(is_grpc_content_type) {
        let shown = content_type.map_or_else(|| "none".into(), String::from_utf8_lossy);
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Status::internal(format!(
                "content-type {shown} is not supported; use application/grpc or application/grpc+proto"
            )),
        ));
    }
    Ok(())
}

fn is_grpc_content_type(value: &[u8]) -> bool {
    let essence = value.split(|&b| b == b';').next().unwrap_or(value).trim_ascii();
    essence.eq_ignore_ascii_case(b"application/grpc") || essence.eq_ignore_ascii_case(b"application/grpc+proto")
}

/// The request message; `Err(None)` if the stream was reset by the client.
async fn read_message(body: &mut RecvStream, message_bytes_max: usize) -> Result<Bytes, Option<Status>> {
    let mut decoder = MessageDecoder::new(message_bytes_max);
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| None)?;
        // Hand the window back at once: the decoder bounds what we hold, not flow control.
        let _ = body.flow_control().release_capacity(chunk.len());
        decoder.push(chunk).map_err(Some)?;
    }
    decoder.finish().map_err(Some)
}

fn send_message(respond: &mut SendResponse<FramedMessage>, message: FramedMessage, owner: Option<Owner>) {
    let mut response = Response::new(());
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, CONTENT_TYPE_GRPC);
    if let Some(o) = owner {
        headers.insert(SHARD_HEADER, shard_value(o.shard));
        headers.insert(SHARDS_HEADER, shard_value(o.shards));
    }
    // Errors here mean the client reset the stream or the connection is gone.
    let Ok(mut stream) = respond.send_response(response, false) else { return };
    if stream.send_data(message, false).is_err() {
        return;
    }
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let _ = stream.send_trailers(trailers);
}

/// A trailers-only response: one HEADERS frame with end of stream.
fn send_status(respond: &mut SendResponse<FramedMessage>, http_status: StatusCode, status: &Status) {
    let mut response = Response::new(());
    *response.status_mut() = http_status;
    let headers = response.headers_mut();
    if http_status == StatusCode::OK {
        headers.insert(http::header::CONTENT_TYPE, CONTENT_TYPE_GRPC);
    }
    if status.refuses_compression() {
        headers.insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
    }
    status.append_to(headers);
    let _ = respond.send_response(response, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(is_grpc_content_type(b"application/grpc"));
        assert!(is_grpc_content_type(b"application/grpc+proto"));
        assert!(is_grpc_content_type(b"Application/GRPC; charset=utf-8"));
        assert!(!is_grpc_content_type(b"application/grpc+json"));
        assert!(!is_grpc_content_type(b"application/json"));
        assert!(!is_grpc_content_type(b""));
    }

    #[test]
    fn request_checks() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        assert!(check_request(&Method::POST, &h).is_ok());
        let (code, status) = check_request(&Method::GET, &h).unwrap_err();
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(status.code, super::super::Code::Unimplemented);
        let (code, _) = check_request(&Method::POST, &HeaderMap::new()).unwrap_err();
        assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
