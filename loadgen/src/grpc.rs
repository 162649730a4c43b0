//! A minimal gRPC client on glommio. Unary calls go over our own small HTTP/2 client
//! ([`crate::h2lite`], `--http2 lite`, the default) or over the h2 crate (`--http2 h2`, the
//! server's own stack from the other side, kept for cross-checking); bidirectional streams
//! ([`Bidi`], kserve-stream) always use h2.
//!
//! One [`Channel`] is one HTTP/2 connection (two when a `lite` channel also opens streams)
//! owned by one client thread; its tasks run on that thread. Calls are unary: HEADERS + one
//! DATA frame (the 5-byte-prefixed message) with END_STREAM, then the response message and the
//! trailers.
//!
//! The wire pieces are the server crate's (`seqcore::grpc`): the socket adapter between glommio
//! and h2 (`Io`: reads copy what arrived instead of zero-filling h2's whole free buffer on every
//! read as `tokio_util::compat` does, which was 18 % of the client's instructions), the message
//! prefix (`encode_prefix`, `StreamDecoder`) and the HTTP/2 window sizes.

use crate::cli::Http2;
use crate::deadline;
use crate::h2lite;
use crate::stats::{self, record};
use bytes::Bytes;
use glommio::net::TcpStream;
use h2::client::SendRequest;
use hdrhistogram::Histogram;
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use seqcore::grpc::{encode_prefix, Io, StreamDecoder, CONNECTION_WINDOW_BYTES, PREFIX_LEN, STREAM_WINDOW_BYTES};
use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Largest response message accepted.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;
/// Largest HTTP/2 frame we accept (SETTINGS_MAX_FRAME_SIZE): big tensors in few frames.
const FRAME_BYTES_MAX: u32 = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `--http2 h2`: unary calls over the h2 crate (set once at start-up, before any channel).
static UNARY_OVER_H2: AtomicBool = AtomicBool::new(false);

/// Chooses the HTTP/2 client of unary calls for every channel made from now on.
pub fn set_http2(mode: Http2) {
    UNARY_OVER_H2.store(mode == Http2::H2, Relaxed);
}

/// Why a call failed: a gRPC status from the server, or something on our side of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// grpc-status != 0, with its code name (e.g. "NOT_FOUND") and message.
    Status { code: i32, message: String },
    /// Connection-level failure (connect, reset, GOAWAY, protocol error).
    Transport(String),
    /// No answer within --timeout-ms.
    Timeout,
    /// The answer was not what the protocol says (bad framing, undecodable message).
    Protocol(String),
    /// h2lite: the connection refused the call before any of it was sent (it failed, was
    /// retired or got GOAWAY meanwhile); `Channel` retries once on a new connection, so callers
    /// only see it as `Transport`.
    NotSent(String),
    /// An error answered inside a stream (KServe's ModelStreamInferResponse.error_message).
    Stream(String),
    /// REST: an HTTP status other than 200, with the body's `error` message.
    Http { status: u16, message: String },
}

impl CallError {
    /// The key errors are counted under in the report.
    pub fn key(&self) -> String {
        match self {
            CallError::Status { code, .. } => code_name(*code).to_string(),
            CallError::Transport(_) | CallError::NotSent(_) => "TRANSPORT".into(),
            CallError::Timeout => "DEADLINE_EXCEEDED (client)".into(),
            CallError::Protocol(_) => "PROTOCOL".into(),
            CallError::Stream(_) => "STREAM_ERROR".into(),
            CallError::Http { status, .. } => format!("HTTP {status}"),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Status { code, message } => write!(f, "{} {message:?}", code_name(*code)),
            CallError::Transport(m) | CallError::NotSent(m) => write!(f, "transport: {m}"),
            CallError::Timeout => write!(f, "no answer before the timeout"),
            CallError::Protocol(m) => write!(f, "protocol: {m}"),
            CallError::Stream(m) => write!(f, "stream error: {m:?}"),
            CallError::Http { status, message } => write!(f, "HTTP {status} {message:?}"),
        }
    }
}

pub fn code_name(code: i32) -> &'static str {
    seqcore::grpc::Code::from_i32(code).name()
}

/// An h2lite request's HPACK block, shared by its calls.
type RequestBlock = Rc<[u8]>;

/// How many times a call refused before it was sent is tried, on ever newer connections.
const NOT_SENT_TRIES: u32 = 8;

/// One HTTP/2 connection; reconnects lazily after a failure.
pub struct Channel {
    addr: String,
    authority: String,
    /// Unary calls over h2lite (else over `send`).
    lite: bool,
    /// The h2 connection: unary calls with `--http2 h2`, streams always.
    send: RefCell<Option<(SendRequest<Bytes>, Rc<Turnaround>)>>,
    /// The h2lite connection.
    conn: RefCell<Option<Rc<h2lite::Connection>>>,
    /// The URIs of the methods called so far: parsed once, cloned per call (a refcount).
    uris: RefCell<Vec<(&'static str, Uri)>>,
    /// h2lite: the HPACK blocks of the methods called so far, built once.
    blocks: RefCell<Vec<(&'static str, RequestBlock)>>,
}

impl Channel {
    pub fn new(addr: &str) -> Channel {
        Channel {
            addr: addr.to_string(),
            authority: addr.to_string(),
            lite: !UNARY_OVER_H2.load(Relaxed),
            send: RefCell::new(None),
            conn: RefCell::new(None),
            uris: RefCell::new(Vec::new()),
            blocks: RefCell::new(Vec::new()),
        }
    }

    /// The h2lite request block of a call to `path`.
    fn block(&self, path: &'static str) -> Rc<[u8]> {
        if let Some((_, b)) = self.blocks.borrow().iter().find(|(p, _)| *p == path) {
            return b.clone();
        }
        let b: Rc<[u8]> = h2lite::request_block(&self.authority, path).into();
        self.blocks.borrow_mut().push((path, b.clone()));
        b
    }

    async fn lite_conn(&self) -> Result<Rc<h2lite::Connection>, CallError> {
        let existing = self.conn.borrow().clone();
        if let Some(c) = existing {
            if c.usable() {
                return Ok(c);
            }
            // GOAWAY or stream ids used up: a new connection; this one ends with its calls.
            c.retire();
        }
        let c = h2lite::connect(&self.addr, Rc::new(Turnaround::default())).await?;
        if let Some(old) = self.conn.borrow_mut().replace(c.clone()) {
            old.retire();
        }
        Ok(c)
    }

    /// The request head of a call to `path` (HEADERS: POST, the gRPC content type, `te`).
    fn request(&self, path: &'static str) -> Result<Request<()>, CallError> {
        let cached = self.uris.borrow().iter().find(|(p, _)| *p == path).map(|(_, u)| u.clone());
        let uri = match cached {
            Some(u) => u,
            None => {
                let u: Uri = format!("http://{}{path}", self.authority)
                    .parse()
                    .map_err(|e: http::uri::InvalidUri| CallError::Protocol(e.to_string()))?;
                self.uris.borrow_mut().push((path, u.clone()));
                u
            }
        };
        let mut req = Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        Ok(req)
    }

    /// Connects now (used at start-up so an unreachable server is reported at once).
    pub async fn connect(&self) -> Result<(), CallError> {
        if self.lite {
            return self.lite_conn().await.map(|_| ());
        }
        let send = connect(&self.addr).await?;
        *self.send.borrow_mut() = Some(send);
        Ok(())
    }

    async fn sender(&self) -> Result<(SendRequest<Bytes>, Rc<Turnaround>), CallError> {
        let existing = self.send.borrow().clone();
        if let Some(s) = existing {
            return Ok(s);
        }
        let s = connect(&self.addr).await?;
        // Another task may have reconnected meanwhile; keep one of them (the other closes when
        // its last call finishes).
        *self.send.borrow_mut() = Some(s.clone());
        Ok(s)
    }

    /// Drops the h2lite connection `conn` if it is still the channel's current one.
    fn drop_lite(&self, conn: &Rc<h2lite::Connection>) {
        let current = self.conn.borrow().as_ref().is_some_and(|c| Rc::ptr_eq(c, conn));
        if current {
            if let Some(c) = self.conn.borrow_mut().take() {
                c.retire();
            }
        }
    }

    pub fn drop_connection(&self) {
        self.send.borrow_mut().take();
        if let Some(c) = self.conn.borrow_mut().take() {
            c.retire();
        }
    }

    /// One unary call; `message` is the un-prefixed request message.
    pub async fn unary(&self, path: &'static str, message: &[u8], timeout: Duration) -> Result<Bytes, CallError> {
        let mut framed = Vec::with_capacity(PREFIX_LEN + message.len());
        framed.extend_from_slice(&encode_prefix(message.len() as u32));
        framed.extend_from_slice(message);
        self.unary_framed(path, Bytes::from(framed), timeout).await
    }

    /// One unary call with an already prefixed message.
    pub async fn unary_framed(&self, path: &'static str, framed: Bytes, timeout: Duration) -> Result<Bytes, CallError> {
        match deadline::within(timeout, self.call(path, framed)).await {
            Ok(r) => r,
            Err(deadline::Elapsed) => Err(CallError::Timeout),
        }
    }

    async fn call(&self, path: &'static str, framed: Bytes) -> Result<Bytes, CallError> {
        let result = if self.lite {
            // A call that waited for a stream slot on a connection retired meanwhile (an injected
            // disconnect, a GOAWAY) was not sent: it goes again, on the channel's current
            // connection (a few times: under load, connections retired one after another can
            // each leave it unsent; the call's deadline bounds it too). Only the connection the
            // call failed on is dropped, never a newer one.
            let mut tries = 0;
            loop {
                tries += 1;
                let conn = self.lite_conn().await?;
                let block = self.block(path);
                let lone = InFlight::start(conn.clock());
                let r = conn.unary(&block, &framed).await;
                lone.finish(r.is_ok());
                match r {
                    Err(CallError::NotSent(m)) if tries >= NOT_SENT_TRIES => {
                        self.drop_lite(&conn);
                        return Err(CallError::Transport(m));
                    }
                    Err(CallError::NotSent(_)) => self.drop_lite(&conn),
                    Err(CallError::Transport(m)) => {
                        self.drop_lite(&conn);
                        return Err(CallError::Transport(m));
                    }
                    r => return r,
                }
            }
        } else {
            let (send, clock) = self.sender().await?;
            let req = self.request(path)?;
            let lone = InFlight::start(&clock);
            let r = call_on(send, req, framed).await;
            lone.finish(r.is_ok());
            r
        };
        if let Err(CallError::Transport(_)) = &result {
            self.drop_connection();
        }
        result
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        if let Some(c) = self.conn.get_mut().take() {
            c.retire();
        }
    }
}

/// A call counted in its connection's [`Turnaround`]; a call dropped at its timeout is
/// counted out as failed.
struct InFlight<'a> {
    clock: &'a Turnaround,
    done: bool,
}

impl<'a> InFlight<'a> {
    fn start(clock: &'a Turnaround) -> InFlight<'a> {
        clock.started();
        InFlight { clock, done: false }
    }

    fn finish(mut self, ok: bool) {
        self.done = true;
        self.clock.finished(ok);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.clock.finished(false);
        }
    }
}

/// One bidirectional streaming call (e.g. KServe's ModelStreamInfer): messages go out with
/// [`Bidi::send`], answers come back one by one from [`Bidi::recv`].
pub struct Bidi {
    send: h2::SendStream<Bytes>,
    resp: Option<h2::client::ResponseFuture>,
    body: Option<h2::RecvStream>,
    messages: StreamDecoder,
}

impl Channel {
    /// Opens a streaming call on `path` (headers only; nothing is awaited from the server).
    pub async fn open_bidi(&self, path: &'static str) -> Result<Bidi, CallError> {
        let (send, _) = self.sender().await?;
        let r = async {
            let mut send = send.ready().await.map_err(transport)?;
            let (resp, stream) = send.send_request(self.request(path)?, false).map_err(transport)?;
            Ok(Bidi { send: stream, resp: Some(resp), body: None, messages: StreamDecoder::new(MESSAGE_BYTES_MAX) })
        }
        .await;
        if let Err(CallError::Transport(_)) = &r {
            self.drop_connection();
        }
        r
    }
}

impl Bidi {
    /// Queues one framed message; `end` half-closes our side.
    pub fn send(&mut self, framed: Bytes, end: bool) -> Result<(), CallError> {
        self.send.send_data(framed, end).map_err(transport)
    }

    async fn body(&mut self) -> Result<&mut h2::RecvStream, CallError> {
        if self.body.is_none() {
            let resp = self.resp.take().ok_or_else(|| CallError::Protocol("stream already failed".into()))?;
            let resp = resp.await.map_err(transport)?;
            let (parts, body) = resp.into_parts();
            if parts.status != http::StatusCode::OK {
                return Err(CallError::Protocol(format!("HTTP status {}", parts.status)));
            }
            if let Some(err) = grpc_status(&parts.headers) {
                return Err(err);
            }
            self.body = Some(body);
        }
        Ok(self.body.as_mut().expect("set above"))
    }

    /// The next answer message (un-prefixed).
    pub async fn recv(&mut self) -> Result<Bytes, CallError> {
        loop {
            if let Some(msg) = self.messages.next_message().map_err(answer_framing)? {
                return Ok(msg);
            }
            let body = self.body().await?;
            match body.data().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(transport)?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.messages.push(&chunk);
                }
                None => {
                    let trailers = body.trailers().await.map_err(transport)?;
                    return Err(trailers
                        .as_ref()
                        .and_then(grpc_status)
                        .unwrap_or_else(|| CallError::Protocol("stream ended before the answer".into())));
                }
            }
        }
    }

    /// After our side is closed: reads the end of the call and its status.
    pub async fn finish(&mut self) -> Result<(), CallError> {
        let body = self.body().await?;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(transport)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if !chunk.is_empty() {
                return Err(CallError::Protocol("unexpected message after the last answer".into()));
            }
        }
        let trailers = body.trailers().await.map_err(transport)?;
        match trailers.as_ref().and_then(grpc_status) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A framing error in an answer. `StreamDecoder` words its errors for what a server receives
/// ("request message is N bytes..."); here the message is the server's answer.
pub(crate) fn answer_framing(s: seqcore::grpc::Status) -> CallError {
    CallError::Protocol(format!("answer framing: {}", s.message))
}

/// The client's own turnaround on a connection with one call in flight: from the read that
/// delivered an answer to the write of the next request, i.e. h2's decoding, our bookkeeping and
/// encoding, h2's framing (not the wake-up before the read). It is the part of the latency the
/// client adds after the answer is in; the report shows it so that a figure can be read net of it.
#[derive(Default)]
pub(crate) struct Turnaround {
    in_flight: Cell<usize>,
    last_read: Cell<Option<Instant>>,
    /// Set when a lone call has its answer: the next request's write ends the turnaround.
    since: Cell<Option<Instant>>,
}

thread_local! {
    /// This client thread's turnarounds (all its connections, the whole run).
    static TURNAROUNDS: RefCell<Option<Histogram<u64>>> = const { RefCell::new(None) };
}

/// Takes this thread's turnaround histogram (empty when no connection ever had one call alone
/// in flight).
pub fn take_turnarounds() -> Histogram<u64> {
    TURNAROUNDS.with(|t| t.borrow_mut().take()).unwrap_or_else(stats::hist)
}

impl Turnaround {
    pub(crate) fn started(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
        if self.in_flight.get() != 1 {
            self.since.set(None);
        }
    }

    pub(crate) fn finished(&self, ok: bool) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        self.since.set(if ok && self.in_flight.get() == 0 { self.last_read.get() } else { None });
    }

    pub(crate) fn read(&self) {
        self.last_read.set(Some(Instant::now()));
    }

    pub(crate) fn write(&self) {
        // Only a request of the next lone call ends it (not, e.g., a WINDOW_UPDATE h2 sends
        // between calls).
        if self.in_flight.get() == 1 {
            if let Some(t) = self.since.take() {
                let ns = t.elapsed().as_nanos() as u64;
                TURNAROUNDS.with(|h| record(h.borrow_mut().get_or_insert_with(stats::hist), ns));
            }
        }
    }
}

/// The socket adapter with the turnaround's two clock readings around it.
struct Timed {
    io: Io,
    clock: Rc<Turnaround>,
}

impl tokio::io::AsyncRead for Timed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read();
        }
        r
    }
}

impl tokio::io::AsyncWrite for Timed {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.clock.write();
        Pin::new(&mut self.io).poll_write(cx, b)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.clock.write();
        Pin::new(&mut self.io).poll_write_vectored(cx, b)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A TCP connection to `addr` (at most [`CONNECT_TIMEOUT`]), TCP_NODELAY on.
pub(crate) async fn tcp_connect(addr: &str) -> Result<TcpStream, CallError> {
    let stream = match glommio::timer::timeout(CONNECT_TIMEOUT, async {
        TcpStream::connect(addr).await.map_err(|e| glommio::GlommioError::from(io::Error::from(e)))
    })
    .await
    {
        Ok(s) => s,
        Err(e) => return Err(CallError::Transport(format!("cannot connect to {addr}: {e}"))),
    };
    stream.set_nodelay(true).map_err(|e| CallError::Transport(format!("socket setup: {e}")))?;
    Ok(stream)
}

async fn connect(addr: &str) -> Result<(SendRequest<Bytes>, Rc<Turnaround>), CallError> {
    let stream = tcp_connect(addr).await?;
    // The server's adapter (TCP_NODELAY, buffered reads, vectored writes); its write deferral
    // (the Flusher) is for the server's response batching and is not turned on here, so every
    // write h2 makes goes out at once.
    let (io, _flusher) = Io::new(stream).map_err(|e| CallError::Transport(format!("socket setup: {e}")))?;
    let clock = Rc::new(Turnaround::default());
    let io = Timed { io, clock: clock.clone() };
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(FRAME_BYTES_MAX)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| CallError::Transport(format!("HTTP/2 handshake with {addr}: {e}")))?;
    glommio::spawn_local(async move {
        let _ = conn.await;
    })
    .detach();
    Ok((send, clock))
}

fn transport(e: h2::Error) -> CallError {
    CallError::Transport(e.to_string())
}

fn grpc_status(headers: &HeaderMap) -> Option<CallError> {
    let code = headers.get("grpc-status")?;
    let code: i32 = std::str::from_utf8(code.as_bytes()).ok()?.trim().parse().unwrap_or(2);
    if code == 0 {
        return None;
    }
    let message = headers.get("grpc-message").map(|m| seqcore::grpc::percent_decode(m.as_bytes())).unwrap_or_default();
    Some(CallError::Status { code, message })
}

async fn call_on(send: SendRequest<Bytes>, req: Request<()>, framed: Bytes) -> Result<Bytes, CallError> {
    let mut send = send.ready().await.map_err(transport)?;
    let (resp, mut stream) = send.send_request(req, false).map_err(transport)?;
    stream.send_data(framed, true).map_err(transport)?;
    let resp = resp.await.map_err(transport)?;
    let (parts, mut body) = resp.into_parts();
    if parts.status != http::StatusCode::OK {
        return Err(CallError::Protocol(format!("HTTP status {}", parts.status)));
    }
    // Trailers-only response (an error status without a message).
    if let Some(err) = grpc_status(&parts.headers) {
        return Err(err);
    }
    // The size limit is checked as soon as a message's prefix is in, before its body is kept.
    let mut messages = StreamDecoder::new(MESSAGE_BYTES_MAX);
    let mut message = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(transport)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        messages.push(&chunk);
        while let Some(m) = messages.next_message().map_err(answer_framing)? {
            if message.replace(m).is_some() {
                return Err(CallError::Protocol("more than one message in a unary answer".into()));
            }
        }
    }
    let trailers = body.trailers().await.map_err(transport)?;
    if let Some(err) = trailers.as_ref().and_then(grpc_status) {
        return Err(err);
    }
    if trailers.as_ref().and_then(|t| t.get("grpc-status")).is_none() && parts.headers.get("grpc-status").is_none() {
        return Err(CallError::Protocol("response without grpc-status".into()));
    }
    messages.finish().map_err(answer_framing)?;
    message.ok_or_else(|| CallError::Protocol("response has no message".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_split_off_a_stream_with_the_servers_decoder() {
        let mut d = StreamDecoder::new(MESSAGE_BYTES_MAX);
        d.push(&[0, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 1]);
        assert_eq!(&d.next_message().unwrap().unwrap()[..], b"ab");
        assert_eq!(d.next_message().unwrap(), None);
        d.push(b"c");
        assert_eq!(&d.next_message().unwrap().unwrap()[..], b"c");
        d.finish().unwrap();
        d.push(&[1, 0, 0, 0, 0]);
        assert!(matches!(d.next_message().map_err(answer_framing), Err(CallError::Protocol(_))));
    }

    #[test]
    fn turnaround_counts_only_lone_calls_up_to_the_next_request() {
        let _ = take_turnarounds();
        let t = Turnaround::default();
        t.started();
        t.write(); // the first request: nothing answered before it
        t.read();
        t.finished(true);
        t.write(); // e.g. a WINDOW_UPDATE between calls: not a request
        t.started();
        t.write(); // the next request ends the turnaround
        assert_eq!(take_turnarounds().len(), 1);
        // Two calls in flight: nothing is attributed.
        t.finished(true);
        t.started();
        t.started();
        t.read();
        t.finished(true);
        t.write();
        assert_eq!(take_turnarounds().len(), 0);
        // A failed call does not start one.
        let u = Turnaround::default();
        u.started();
        u.read();
        u.finished(false);
        u.started();
        u.write();
        assert_eq!(take_turnarounds().len(), 0);
    }

    #[test]
    fn request_heads_are_grpc_and_reuse_the_parsed_uri() {
        let ch = Channel::new("127.0.0.1:9");
        let a = ch.request("/a.B/C").unwrap();
        let b = ch.request("/a.B/C").unwrap();
        assert_eq!(a.method(), Method::POST);
        assert_eq!(a.uri(), "http://127.0.0.1:9/a.B/C");
        assert_eq!(a.uri(), b.uri());
        assert_eq!(a.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(a.headers()[TE], "trailers");
        assert_eq!(ch.uris.borrow().len(), 1);
    }
}
