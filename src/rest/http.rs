//! HTTP/1.1 on glommio: request heads parsed by `httparse`, `Content-Length` bodies, keep-alive
//! and pipelining (requests of one connection are answered one after the other, in order; the
//! answers to requests that arrived together leave in one write), and the limits below. It knows
//! nothing of the routes: it hands a [`Request`] to a [`Handler`] and writes its [`Response`].
//!
//! # Limits and their errors (JSON bodies `{"error": "..."}`, then the connection is closed)
//!
//! - `header_bytes_max`: a request head larger than this → 431; more than [`HEADERS_MAX`] header
//!   fields → 431.
//! - `body_bytes_max`: checked on `Content-Length` before any of the body is read → 413; the
//!   body is then discarded (read and dropped for a short while, so the client sees the answer
//!   instead of a reset), never buffered.
//! - `Transfer-Encoding` (chunked) request bodies → 501 (send `Content-Length`).
//! - `Inference-Header-Content-Length` (the KServe binary tensor data extension) is not checked
//!   here: its value goes to the handler as [`Request::inference_header`], which answers its
//!   errors through `error::Kind` like any other request error.
//! - `idle_timeout`: a connection that sends nothing for this long (between requests or in the
//!   middle of one) is closed.
//! - `request_timeout`: a request must arrive whole (head and body) within this from its first
//!   byte → 408, then the connection is closed (a client trickling bytes, slowloris, cannot hold a
//!   connection by sending just often enough).
//! - `connections_max`: per listener (shard); a connection accepted past it is closed at once.
//! - A malformed head → 400.
//!
//! Over TLS (`crate::tls`, ALPN `http/1.1`) the handshake runs first, in the connection's task
//! and holding its connection slot, within the acceptor's handshake timeout; then the same
//! connection code runs over the TLS stream (generic over [`Conn`], so the plaintext path is
//! unchanged), with the same timeouts on the socket underneath.
//!
//! `Expect: 100-continue` is answered with `100 Continue` once the head passed the checks, so
//! curl does not wait before sending a large body. Every response has `Content-Length`;
//! TCP_NODELAY is on.

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::server::TlsStream;
use glommio::net::{TcpListener, TcpStream};
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

// This layer's own statuses (a malformed or oversized head, an unsupported body encoding), by name;
// domain errors reach it already mapped (`error::Kind::http_status`).
use crate::sched::{contained, log_panic};
use crate::status::http as status;
use crate::tls::Acceptor;

/// Largest number of header fields in one request.
pub const HEADERS_MAX: usize = 64;
/// How long a request may take to arrive, by default (`--rest_request_timeout_seconds`).
pub const REQUEST_TIMEOUT_SECONDS_DEFAULT: u64 = 30;
/// How much a read asks for at least.
const READ_CHUNK: usize = 16 << 10;
/// How much a read asks for at most.
const READ_MAX: usize = 1 << 20;
/// How long a connection closed on an error keeps reading (and dropping) what the client sends.
const LINGER: Duration = Duration::from_secs(1);
/// The most bytes dropped that way.
const LINGER_BYTES_MAX: usize = 16 << 20;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_bytes_max: usize,
    pub body_bytes_max: usize,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub connections_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_bytes_max: 16 << 10,
            body_bytes_max: 64 << 20,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(REQUEST_TIMEOUT_SECONDS_DEFAULT),
            connections_max: 4096,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Head,
    Other,
}

/// Header of the KServe binary tensor data extension: the length of the JSON at the start of
/// the body (request and answer alike).
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "Inference-Header-Content-Length";

/// A complete request as the handler sees it.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// The path, without the query string.
    pub path: String,
    /// The `Inference-Header-Content-Length` value as sent (trimmed, unchecked); repeated fields
    /// are joined with "," (RFC 9110 §5.3), which no number survives.
    pub inference_header: Option<String>,
    pub body: Bytes,
}

/// An answer. The status line's reason phrase and `Content-Length` are added when written.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Extra header fields (name, value); empty for almost every answer (no allocation).
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Written after `body` and counted in `Content-Length`: binary tensor data, as slices of
    /// the outcome's buffer, so it is copied once, into the connection's output buffer.
    pub tail: Vec<Bytes>,
}

pub const JSON: &str = "application/json";

impl Response {
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response { status, content_type: JSON, headers: Vec::new(), body, tail: Vec::new() }
    }

    /// Bytes of the body as sent: `body` then `tail`.
    pub fn body_len(&self) -> usize {
        self.body.len() + self.tail.iter().map(Bytes::len).sum::<usize>()
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: &str) -> Response {
        let mut body = b"{\"error\":".to_vec();
        super::tensor::write_str(&mut body, message);
        body.push(b'}');
        Response::json(status, body)
    }
}

pub trait Handler: 'static {
    fn call(&self, request: Request) -> impl Future<Output = Response>;
}

/// A request head that passed the checks.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head, including the blank line.
    pub len: usize,
    pub method: Method,
    pub path: String,
    pub body_len: usize,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub inference_header: Option<String>,
}

/// Why a request cannot be served; answered with `status` and the connection closed.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

fn http_error(status: u16, message: impl Into<String>) -> HttpError {
    HttpError { status, message: message.into() }
}

/// Parses the request head at the start of `buf`: `Ok(None)` when it is not complete yet.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let too_large = || {
        http_error(
            status::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request header fields are larger than {} bytes", limits.header_bytes_max),
        )
    };
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.header_bytes_max { Err(too_large()) } else { Ok(None) };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(http_error(
                status::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("more than {HEADERS_MAX} header fields"),
            ));
        }
        Err(e) => return Err(http_error(status::BAD_REQUEST, format!("malformed HTTP request: {e}"))),
    };
    if len > limits.header_bytes_max {
        return Err(too_large());
    }
    let version = req.version.unwrap_or(1);
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let target = req.path.unwrap_or("/");
    let path = target.split_once('?').map_or(target, |(p, _)| p).to_string();
    let mut body_len: Option<usize> = None;
    let mut keep_alive = version >= 1;
    let mut expect_continue = false;
    let mut inference_header: Option<String> = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok());
            let Some(n) = n else {
                return Err(http_error(status::BAD_REQUEST, "invalid Content-Length header"));
            };
            if body_len.is_some_and(|m| m != n) {
                return Err(http_error(status::BAD_REQUEST, "conflicting Content-Length headers"));
            }
            body_len = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(http_error(
                status::NOT_IMPLEMENTED,
                "Transfer-Encoding request bodies are not supported; send the body with Content-Length",
            ));
        } else if name.eq_ignore_ascii_case(INFERENCE_HEADER_CONTENT_LENGTH) {
            let value = String::from_utf8_lossy(h.value.trim_ascii());
            match &mut inference_header {
                None => inference_header = Some(value.into_owned()),
                Some(v) => {
                    v.push(',');
                    v.push_str(&value);
                }
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = version >= 1;
            } else {
                return Err(http_error(status::EXPECTATION_FAILED, "only Expect: 100-continue is supported"));
            }
        }
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > limits.body_bytes_max {
        return Err(http_error(
            status::CONTENT_TOO_LARGE,
            format!("request body of {body_len} bytes is larger than the limit of {} bytes", limits.body_bytes_max),
        ));
    }
    Ok(Some(Head { len, method, path, body_len, keep_alive, expect_continue, inference_header }))
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends a whole response to `out`. `body` is false for HEAD (the length is still given).
pub fn write_response(out: &mut Vec<u8>, r: &Response, keep_alive: bool, body: bool) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body_len(),
    );
    for (name, value) in &r.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(if keep_alive { b"\r\n" } else { b"Connection: close\r\n\r\n" });
    if body {
        out.extend_from_slice(&r.body);
        for t in &r.tail {
            out.extend_from_slice(t);
        }
    }
}

/// A connection as this server reads and writes it: the socket itself, or TLS over it.
pub trait Conn: AsyncRead + AsyncWrite + Unpin {
    /// The socket underneath (for its timeouts).
    fn tcp(&self) -> &TcpStream;
}

impl Conn for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Conn for TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Accepts connections forever (until the listener fails), one task per connection; with
/// `tls`, every connection is TLS.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Rc<H>,
    limits: Limits,
    tls: Option<Rc<Acceptor>>,
) -> io::Error {
    let active = Rc::new(Cell::new(0usize));
    let mut starved = crate::log::Throttle::new(crate::sched::ACCEPT_WARNING_PERIOD);
    let mut refused = crate::log::Throttle::new(crate::sched::ACCEPT_WARNING_PERIOD);
    loop {
        let stream = match crate::sched::accept(&listener, &mut starved, "REST").await {
            Ok(stream) => stream,
            Err(e) => return e,
        };
        if active.get() >= limits.connections_max {
            crate::sched::warn_connection_limit(&mut refused, "REST", limits.connections_max);
            drop(stream);
            continue;
        }
        active.set(active.get() + 1);
        let active = active.clone();
        let (handler, tls) = (handler.clone(), tls.clone());
        glommio::spawn_local(async move {
            let served = match tls {
                None => contained(connection(stream, handler, limits)).await,
                Some(acceptor) => {
                    contained(async move {
                        // TCP_NODELAY first, so the handshake's flights are not delayed.
                        if stream.set_nodelay(true).is_err() {
                            return Ok(());
                        }
                        match acceptor.accept(stream).await {
                            Some(tls) => connection(tls, handler, limits).await,
                            None => Ok(()),
                        }
                    })
                    .await
                }
            };
            if let Err(panic) = served {
                log_panic("a REST connection", &*panic);
            }
            active.set(active.get() - 1);
        })
        .detach();
    }
}

/// Serves one connection until the client closes it, an error, or the idle timeout.
async fn connection<H: Handler, C: Conn>(mut stream: C, handler: Rc<H>, limits: Limits) -> io::Result<()> {
    stream.tcp().set_nodelay(true)?;
    stream.tcp().set_read_timeout(Some(limits.idle_timeout))?;
    stream.tcp().set_write_timeout(Some(limits.idle_timeout))?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    // Whether `100 Continue` went out for the request at the front of `buf`.
    let mut continued = false;
    // When the first byte of the request at the front of `buf` arrived (None: `buf` is empty).
    let mut first_byte: Option<Instant> = None;
    loop {
        let head = match parse_head(&buf, &limits) {
            Ok(h) => h,
            Err(e) => {
                write_response(&mut out, &Response::error(e.status, &e.message), false, true);
                send(&mut stream, &out).await?;
                return linger(stream).await;
            }
        };
        let Some(head) = head else {
            // Nothing complete to answer: send what is pending, then wait for more.
            flush(&mut stream, &mut out).await?;
            match read_within(&mut stream, &mut buf, READ_CHUNK, &mut first_byte, &limits).await? {
                Read::More => continue,
                Read::End => return Ok(()),
                Read::Late => return late(stream, &mut out).await,
            }
        };
        let total = head.len + head.body_len;
        if buf.len() < total {
            if head.expect_continue && !continued {
                out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                continued = true;
            }
            flush(&mut stream, &mut out).await?;
            let want = total - buf.len();
            match read_within(&mut stream, &mut buf, want, &mut first_byte, &limits).await? {
                Read::More => continue,
                Read::End => return Ok(()),
                Read::Late => return late(stream, &mut out).await,
            }
        }
        continued = false;
        first_byte = None;
        let mut request_bytes = buf.split_to(total);
        let body = request_bytes.split_off(head.len).freeze();
        let is_head = head.method == Method::Head;
        let request = Request { method: head.method, path: head.path, inference_header: head.inference_header, body };
        // A panic in a handler fails this request with 500; the connection and the shard go on.
        let response = contained(handler.call(request)).await.unwrap_or_else(|panic| {
            log_panic("a REST handler", &*panic);
            Response::error(status::INTERNAL_SERVER_ERROR, "Internal server error")
        });
        write_response(&mut out, &response, head.keep_alive, !is_head);
        if !head.keep_alive {
            flush(&mut stream, &mut out).await?;
            // Shuts the write side (after TLS's close_notify).
            let _ = stream.close().await;
            return Ok(());
        }
        if buf.is_empty() {
            flush(&mut stream, &mut out).await?;
        }
    }
}

/// What waiting for more of a request gave.
enum Read {
    More,
    End,
    /// The request did not arrive whole within `request_timeout`.
    Late,
}

/// `read_more`, within the request's deadline when part of one is buffered (the read timeout is
/// then the shorter of the idle timeout and what is left of `request_timeout`).
async fn read_within<C: Conn>(
    stream: &mut C,
    buf: &mut BytesMut,
    want: usize,
    first_byte: &mut Option<Instant>,
    limits: &Limits,
) -> io::Result<Read> {
    let deadline = if buf.is_empty() {
        *first_byte = None;
        None
    } else {
        Some(*first_byte.get_or_insert_with(Instant::now) + limits.request_timeout)
    };
    if let Some(d) = deadline {
        let left = d.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Read::Late);
        }
        stream.tcp().set_read_timeout(Some(left.min(limits.idle_timeout)))?;
    }
    let was_empty = buf.is_empty();
    let read = read_more(stream, buf, want).await;
    if deadline.is_some() {
        stream.tcp().set_read_timeout(Some(limits.idle_timeout))?;
    }
    match read {
        Ok(true) => {
            if was_empty {
                *first_byte = Some(Instant::now());
            }
            Ok(Read::More)
        }
        Ok(false) => Ok(Read::End),
        Err(e) if deadline.is_some_and(|d| Instant::now() >= d) && e.kind() == io::ErrorKind::TimedOut => {
            Ok(Read::Late)
        }
        Err(e) => Err(e),
    }
}

/// Answers a request that did not arrive in time with 408, and closes.
async fn late<C: Conn>(mut stream: C, out: &mut Vec<u8>) -> io::Result<()> {
    write_response(out, &Response::error(status::REQUEST_TIMEOUT, "the request did not arrive in time"), false, true);
    send(&mut stream, out).await?;
    linger(stream).await
}

async fn flush<C: Conn>(stream: &mut C, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        send(stream, out).await?;
        out.clear();
    }
    Ok(())
}

/// Writes `out` and flushes it: over TLS, rustls may keep records back when the socket is full
/// until flushed; on a plain socket the flush is a no-op (no syscall).
async fn send<C: Conn>(stream: &mut C, out: &[u8]) -> io::Result<()> {
    stream.write_all(out).await?;
    stream.flush().await
}

/// Reads at least one byte (asking for `want`, between [`READ_CHUNK`] and [`READ_MAX`], so the
/// buffer grows with what arrives, not with what a client announces); false at end of stream.
async fn read_more<C: Conn>(stream: &mut C, buf: &mut BytesMut, want: usize) -> io::Result<bool> {
    let at = buf.len();
    buf.resize(at + want.clamp(READ_CHUNK, READ_MAX), 0);
    let n = match stream.read(&mut buf[at..]).await {
        Ok(n) => n,
        Err(e) => {
            buf.truncate(at);
            return Err(e);
        }
    };
    buf.truncate(at + n);
    Ok(n > 0)
}

/// After an error answer: stop sending, then drop what the client still sends for a moment, so
/// that closing does not reset the connection before the client has read the answer.
async fn linger<C: Conn>(mut stream: C) -> io::Result<()> {
    let _ = stream.close().await;
    let _ = stream.tcp().set_read_timeout(Some(LINGER));
    let until = Instant::now() + LINGER;
    let mut sink = vec![0u8; READ_CHUNK];
    let mut dropped = 0;
    while Instant::now() < until && dropped < LINGER_BYTES_MAX {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(n) => dropped += n,
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::disallowed_types, reason = "a test's server thread and the test share a stop flag")]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { header_bytes_max: 256, body_bytes_max: 1000, ..Limits::default() }
    }

    fn parse(s: &str) -> Result<Option<Head>, HttpError> {
        parse_head(s.as_bytes(), &limits())
    }

    #[test]
    fn complete_and_partial_heads() {
        assert_eq!(parse("GET /v2 HTTP/1.1\r\nHost: x\r\n").unwrap(), None);
        let h = parse("POST /v1/models/m:predict?x=1 HTTP/1.1\r\nContent-Length: 12\r\n\r\n{}").unwrap().unwrap();
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.path, "/v1/models/m:predict");
        assert_eq!(h.body_len, 12);
        assert!(h.keep_alive && !h.expect_continue);
        assert_eq!(h.len, "POST /v1/models/m:predict?x=1 HTTP/1.1\r\nContent-Length: 12\r\n\r\n".len());
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!parse("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(parse("GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n").unwrap().unwrap().keep_alive);
    }

    #[test]
    fn header_limits_give_431() {
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(300));
        assert_eq!(parse(&big).unwrap_err().status, 431);
        // Still incomplete but already over the limit.
        let partial = format!("GET / HTTP/1.1\r\nX-Big: {}", "a".repeat(300));
        assert_eq!(parse(&partial).unwrap_err().status, 431);
        let many: String = (0..HEADERS_MAX + 1).map(|i| format!("X{i}: y\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_head(req.as_bytes(), &Limits::default()).unwrap_err().status, 431);
    }

    #[test]
    fn body_limits_and_framing() {
        assert_eq!(parse("POST / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n").unwrap_err().status, 413);
        assert_eq!(parse("POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n").unwrap().unwrap().body_len, 1000);
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n").unwrap_err().status,
            400
        );
        assert_eq!(parse("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(parse("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n").unwrap().unwrap().body_len,
            2
        );
        let e = parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err();
        assert_eq!(e.status, 501);
        // The binary data extension's header goes to the handler unchecked; repeats are joined.
        let h = parse("POST / HTTP/1.1\r\nInference-Header-Content-Length: 10 \r\nContent-Length: 20\r\n\r\n");
        assert_eq!(h.unwrap().unwrap().inference_header.as_deref(), Some("10"));
        let h = parse(
            "POST / HTTP/1.1\r\ninference-header-content-length: 1\r\nInference-Header-Content-Length: 2\r\n\r\n",
        );
        assert_eq!(h.unwrap().unwrap().inference_header.as_deref(), Some("1,2"));
        assert_eq!(parse("POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n").unwrap().unwrap().inference_header, None);
        assert!(
            parse("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
                .unwrap()
                .unwrap()
                .expect_continue
        );
        assert_eq!(parse("POST / HTTP/1.1\r\nExpect: magic\r\n\r\n").unwrap_err().status, 417);
    }

    #[test]
    fn malformed_heads_give_400() {
        assert_eq!(parse("GET / HTTP/1.1\r\nBad Header\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(parse("GET / HTTP/2.0\r\n\r\n").unwrap_err().status, 400);
        assert_eq!(parse("\x01\x02 / HTTP/1.1\r\n\r\n").unwrap_err().status, 400);
    }

    #[test]
    fn responses_always_have_a_length() {
        let mut out = Vec::new();
        write_response(&mut out, &Response::error(404, "nope"), true, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("Content-Length: 16\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"error\":\"nope\"}"));
        let mut out = Vec::new();
        write_response(&mut out, &Response::json(200, b"{}".to_vec()), false, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Length: 2\r\nConnection: close\r\n\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
        // Extra headers, and a tail counted in Content-Length and written after the body.
        let mut r = Response::json(200, b"{}".to_vec());
        r.headers.push((INFERENCE_HEADER_CONTENT_LENGTH, "2".into()));
        r.tail = vec![Bytes::from_static(b"ab"), Bytes::new(), Bytes::from_static(b"c")];
        let mut out = Vec::new();
        write_response(&mut out, &r, true, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Length: 5\r\nInference-Header-Content-Length: 2\r\n\r\n{}abc"), "{text}");
        assert!(text.ends_with("\r\n\r\n{}abc"));
    }

    // --- The connection loop, on a real glommio executor and real sockets. ---

    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Answers 200 with the request's body.
    struct Echo;

    impl Handler for Echo {
        async fn call(&self, r: Request) -> Response {
            Response::json(200, r.body.to_vec())
        }
    }

    /// Runs `serve` on its own executor while `f` talks to it.
    fn with_server(limits: Limits, f: impl FnOnce(std::net::SocketAddr)) {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                let server = async { serve(listener, Rc::new(Echo), limits, None).await };
                let stopper = async {
                    while !flag.load(Ordering::Relaxed) {
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                    }
                    io::Error::other("stopped")
                };
                futures_lite::future::or(server, stopper).await;
            })
            .unwrap();
        let addr = rx.recv().unwrap();
        f(addr);
        stop.store(true, Ordering::Relaxed);
        handle.join().unwrap();
    }

    fn connect(addr: std::net::SocketAddr) -> std::net::TcpStream {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// Reads one response with a Content-Length body; returns (status line, body).
    fn read_response(s: &mut std::net::TcpStream) -> (String, Vec<u8>) {
        let mut data = Vec::new();
        let mut byte = [0u8; 1];
        while !data.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed in a response head");
            data.push(byte[0]);
        }
        let head = String::from_utf8(data).unwrap();
        let len: usize =
            head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        (head.lines().next().unwrap().to_string(), body)
    }

    fn closed(s: &mut std::net::TcpStream) -> bool {
        let mut b = [0u8; 64];
        matches!(s.read(&mut b), Ok(0) | Err(_))
    }

    #[test]
    fn bodies_in_pieces_pipelining_and_continue() {
        with_server(Limits::default(), |addr| {
            let mut s = connect(addr);
            // A body that arrives in two writes.
            s.write_all(b"POST /a HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            s.write_all(b"world").unwrap();
            assert_eq!(read_response(&mut s), ("HTTP/1.1 200 OK".to_string(), b"helloworld".to_vec()));
            // Three pipelined requests in one write, answered in order.
            s.write_all(b"POST /1 HTTP/1.1\r\nContent-Length: 1\r\n\r\n1POST /2 HTTP/1.1\r\nContent-Length: 1\r\n\r\n2GET /3 HTTP/1.1\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut s).1, b"1");
            assert_eq!(read_response(&mut s).1, b"2");
            assert_eq!(read_response(&mut s).1, b"");
            // Expect: 100-continue gets its interim answer before the body is sent.
            s.write_all(b"POST /c HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n").unwrap();
            let mut interim = [0u8; 25];
            s.read_exact(&mut interim).unwrap();
            assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
            s.write_all(b"ok").unwrap();
            assert_eq!(read_response(&mut s).1, b"ok");
            // Connection: close is honoured.
            s.write_all(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
            read_response(&mut s);
            assert!(closed(&mut s));
        });
    }

    #[test]
    fn idle_connections_are_closed() {
        let limits = Limits { idle_timeout: Duration::from_millis(200), ..Limits::default() };
        with_server(limits, |addr| {
            let mut s = connect(addr);
            s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            read_response(&mut s);
            let t = Instant::now();
            assert!(closed(&mut s));
            let waited = t.elapsed();
            assert!(waited >= Duration::from_millis(150) && waited < Duration::from_secs(3), "{waited:?}");
            // Also in the middle of a request.
            let mut s = connect(addr);
            s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab").unwrap();
            assert!(closed(&mut s));
        });
    }

    #[test]
    fn a_request_trickling_in_gets_408() {
        let limits = Limits { request_timeout: Duration::from_millis(400), ..Limits::default() };
        with_server(limits, |addr| {
            let mut s = connect(addr);
            let t = Instant::now();
            // One byte every 50 ms: never idle, never done.
            for b in b"GET / HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter()
            {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
                if t.elapsed() > Duration::from_millis(700) {
                    break;
                }
            }
            assert_eq!(read_response(&mut s).0, "HTTP/1.1 408 Request Timeout");
            // A request that arrives whole in time is answered, pipelined or not.
            let mut s = connect(addr);
            s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(b"\r\n").unwrap();
            assert_eq!(read_response(&mut s).0, "HTTP/1.1 200 OK");
        });
    }

    #[test]
    fn connections_over_the_limit_are_closed() {
        let limits = Limits { connections_max: 1, ..Limits::default() };
        with_server(limits, |addr| {
            let mut first = connect(addr);
            first.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            read_response(&mut first);
            let mut second = connect(addr);
            let _ = second.write_all(b"GET / HTTP/1.1\r\n\r\n");
            assert!(closed(&mut second));
            drop(first);
            // The slot is free again once the first connection is gone.
            std::thread::sleep(Duration::from_millis(100));
            let mut third = connect(addr);
            third.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut third).0, "HTTP/1.1 200 OK");
        });
    }

    #[test]
    fn limit_errors_reach_the_client() {
        let limits = Limits { body_bytes_max: 100, header_bytes_max: 1024, ..Limits::default() };
        with_server(limits, |addr| {
            let mut s = connect(addr);
            s.write_all(b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n").unwrap();
            s.write_all(&[b'x'; 101]).unwrap();
            let (status, body) = read_response(&mut s);
            assert_eq!(status, "HTTP/1.1 413 Content Too Large");
            assert!(String::from_utf8(body).unwrap().contains("larger than the limit of 100 bytes"));
            assert!(closed(&mut s));
            let mut s = connect(addr);
            s.write_all(format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(2000)).as_bytes()).unwrap();
            assert_eq!(read_response(&mut s).0, "HTTP/1.1 431 Request Header Fields Too Large");
        });
    }
}
