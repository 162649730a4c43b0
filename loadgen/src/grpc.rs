//! A minimal unary gRPC client over h2 on glommio (the server's stack, mirrored).
//!
//! One [`Channel`] is one HTTP/2 connection owned by one client thread; its connection driver
//! runs as a glommio task on that thread. Calls are unary: HEADERS + one DATA frame (the
//! 5-byte-prefixed message) with END_STREAM, then the response message and the trailers.

use bytes::{Buf, Bytes, BytesMut};
use glommio::net::TcpStream;
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request};
use std::cell::RefCell;
use std::io;
use std::time::Duration;
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// Largest response message accepted.
pub const MESSAGE_BYTES_MAX: usize = 64 << 20;
const STREAM_WINDOW_BYTES: u32 = 1 << 20;
const CONNECTION_WINDOW_BYTES: u32 = 4 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
            CallError::Transport(_) => "TRANSPORT".into(),
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
            CallError::Transport(m) => write!(f, "transport: {m}"),
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

/// One HTTP/2 connection; reconnects lazily after a failure.
pub struct Channel {
    addr: String,
    authority: String,
    send: RefCell<Option<SendRequest<Bytes>>>,
}

impl Channel {
    pub fn new(addr: &str) -> Channel {
        Channel { addr: addr.to_string(), authority: addr.to_string(), send: RefCell::new(None) }
    }

    /// Connects now (used at start-up so an unreachable server is reported at once).
    pub async fn connect(&self) -> Result<(), CallError> {
        let send = connect(&self.addr).await?;
        *self.send.borrow_mut() = Some(send);
        Ok(())
    }

    async fn sender(&self) -> Result<SendRequest<Bytes>, CallError> {
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

    pub fn drop_connection(&self) {
        self.send.borrow_mut().take();
    }

    /// One unary call; `message` is the un-prefixed request message.
    pub async fn unary(&self, path: &str, message: &[u8], timeout: Duration) -> Result<Bytes, CallError> {
        let mut framed = BytesMut::with_capacity(5 + message.len());
        framed.extend_from_slice(&[0]);
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(message);
        self.unary_framed(path, framed.freeze(), timeout).await
    }

    /// One unary call with an already prefixed message.
    pub async fn unary_framed(&self, path: &str, framed: Bytes, timeout: Duration) -> Result<Bytes, CallError> {
        match glommio::timer::timeout(timeout, async { Ok(self.call(path, framed).await) }).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout),
        }
    }

    async fn call(&self, path: &str, framed: Bytes) -> Result<Bytes, CallError> {
        let send = self.sender().await?;
        let result = call_on(send, &self.authority, path, framed).await;
        if let Err(CallError::Transport(_)) = &result {
            self.drop_connection();
        }
        result
    }
}

/// One bidirectional streaming call (e.g. KServe's ModelStreamInfer): messages go out with
/// [`Bidi::send`], answers come back one by one from [`Bidi::recv`].
pub struct Bidi {
    send: h2::SendStream<Bytes>,
    resp: Option<h2::client::ResponseFuture>,
    body: Option<h2::RecvStream>,
    buf: BytesMut,
}

impl Channel {
    /// Opens a streaming call on `path` (headers only; nothing is awaited from the server).
    pub async fn open_bidi(&self, path: &str) -> Result<Bidi, CallError> {
        let send = self.sender().await?;
        let r = async {
            let mut send = send.ready().await.map_err(transport)?;
            let (resp, stream) = send.send_request(grpc_request(&self.authority, path)?, false).map_err(transport)?;
            Ok(Bidi { send: stream, resp: Some(resp), body: None, buf: BytesMut::new() })
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
            if let Some(msg) = take_message(&mut self.buf)? {
                return Ok(msg);
            }
            let body = self.body().await?;
            match body.data().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(transport)?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
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

/// Takes one complete 5-byte-prefixed message off the front of `buf`, if there is one.
fn take_message(buf: &mut BytesMut) -> Result<Option<Bytes>, CallError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err(CallError::Protocol("compressed message".into()));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MESSAGE_BYTES_MAX {
        return Err(CallError::Protocol(format!("message of {len} bytes is over {MESSAGE_BYTES_MAX}")));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let mut msg = buf.split_to(5 + len).freeze();
    msg.advance(5);
    Ok(Some(msg))
}

fn grpc_request(authority: &str, path: &str) -> Result<Request<()>, CallError> {
    Request::builder()
        .method(Method::POST)
        .uri(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|e| CallError::Protocol(e.to_string()))
}

async fn connect(addr: &str) -> Result<SendRequest<Bytes>, CallError> {
    let stream = match glommio::timer::timeout(CONNECT_TIMEOUT, async {
        TcpStream::connect(addr).await.map_err(|e| glommio::GlommioError::from(io::Error::from(e)))
    })
    .await
    {
        Ok(s) => s,
        Err(e) => return Err(CallError::Transport(format!("cannot connect to {addr}: {e}"))),
    };
    stream.set_nodelay(true).map_err(|e| CallError::Transport(format!("TCP_NODELAY: {e}")))?;
    // Compat gives h2 the tokio io traits over glommio's futures-io stream.
    let io = stream.compat();
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(1 << 20)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| CallError::Transport(format!("HTTP/2 handshake with {addr}: {e}")))?;
    glommio::spawn_local(async move {
        let _ = conn.await;
    })
    .detach();
    Ok(send)
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

async fn call_on(send: SendRequest<Bytes>, authority: &str, path: &str, framed: Bytes) -> Result<Bytes, CallError> {
    let mut send = send.ready().await.map_err(transport)?;
    let (resp, mut stream) = send.send_request(grpc_request(authority, path)?, false).map_err(transport)?;
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
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(transport)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if buf.len() + chunk.len() > MESSAGE_BYTES_MAX + 5 {
            return Err(CallError::Protocol(format!("response larger than {MESSAGE_BYTES_MAX} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.map_err(transport)?;
    if let Some(err) = trailers.as_ref().and_then(grpc_status) {
        return Err(err);
    }
    if trailers.as_ref().and_then(|t| t.get("grpc-status")).is_none() && parts.headers.get("grpc-status").is_none() {
        return Err(CallError::Protocol("response without grpc-status".into()));
    }
    if buf.len() < 5 {
        return Err(CallError::Protocol(format!("response of {} bytes has no message", buf.len())));
    }
    if buf[0] != 0 {
        return Err(CallError::Protocol("compressed response".into()));
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    let mut buf = buf.freeze();
    buf.advance(5);
    if buf.len() != len {
        return Err(CallError::Protocol(format!("message prefix says {len} bytes, got {}", buf.len())));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_split_off_a_stream() {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[0, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 1]);
        assert_eq!(&take_message(&mut b).unwrap().unwrap()[..], b"ab");
        assert_eq!(take_message(&mut b).unwrap(), None);
        b.extend_from_slice(b"c");
        assert_eq!(&take_message(&mut b).unwrap().unwrap()[..], b"c");
        assert!(b.is_empty());
        b.extend_from_slice(&[1, 0, 0, 0, 0]);
        assert!(take_message(&mut b).is_err());
    }
}
