//! A minimal HTTP/1.1 client for the REST protocols: keep-alive connections on glommio, one
//! request in flight per connection (HTTP/1.1 has no multiplexing), so a pool per
//! `--connections-per-core` slot grows to as many connections as that slot's sequences have
//! requests in flight (bounded by the sequences assigned to it) and reuses idle ones.

use crate::grpc::CallError;
use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::time::Duration;

/// Largest response head and body accepted.
const HEAD_MAX: usize = 64 << 10;
const BODY_MAX: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// Connections to one server.
pub struct Pool {
    addr: String,
    idle: RefCell<Vec<Conn>>,
}

/// An HTTP answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

enum Failure {
    /// The connection was closed before any byte of the answer (a stale keep-alive connection).
    Stale,
    Err(CallError),
}

impl Pool {
    pub fn new(addr: &str) -> Pool {
        Pool { addr: addr.to_string(), idle: RefCell::new(Vec::new()) }
    }

    async fn open(&self) -> Result<Conn, CallError> {
        let addr = self.addr.clone();
        let stream = match glommio::timer::timeout(CONNECT_TIMEOUT, async move {
            TcpStream::connect(addr.as_str()).await.map_err(|e| glommio::GlommioError::from(std::io::Error::from(e)))
        })
        .await
        {
            Ok(s) => s,
            Err(e) => return Err(CallError::Transport(format!("cannot connect to {}: {e}", self.addr))),
        };
        stream.set_nodelay(true).map_err(|e| CallError::Transport(format!("TCP_NODELAY: {e}")))?;
        Ok(Conn { stream, buf: Vec::with_capacity(8192) })
    }

    /// Closes every idle connection (an injected disconnect); calls in flight keep theirs.
    pub fn close_idle(&self) {
        self.idle.borrow_mut().clear();
    }

    /// Opens one connection now (start-up check).
    pub async fn connect(&self) -> Result<(), CallError> {
        let c = self.open().await?;
        self.idle.borrow_mut().push(c);
        Ok(())
    }

    /// One request; `body` is sent with `Content-Type: application/json` when not empty.
    pub async fn request(&self, method: &str, path: &str, body: &[u8], timeout: Duration) -> Result<Answer, CallError> {
        let fut = async {
            // A reused connection may have been closed by the server meanwhile: retry once on a
            // fresh one when nothing at all came back.
            for attempt in 0..2 {
                let reused = self.idle.borrow_mut().pop();
                let fresh = reused.is_none();
                let mut conn = match reused {
                    Some(c) => c,
                    None => self.open().await?,
                };
                match exchange(&mut conn, &self.addr, method, path, body).await {
                    Ok((answer, keep)) => {
                        if keep {
                            self.idle.borrow_mut().push(conn);
                        }
                        return Ok(answer);
                    }
                    Err(Failure::Stale) if !fresh && attempt == 0 => continue,
                    Err(Failure::Stale) => {
                        return Err(CallError::Transport("connection closed before the answer".into()))
                    }
                    Err(Failure::Err(e)) => return Err(e),
                }
            }
            Err(CallError::Transport("connection closed before the answer".into()))
        };
        match crate::deadline::within(timeout, fut).await {
            Ok(r) => r,
            Err(crate::deadline::Elapsed) => Err(CallError::Timeout),
        }
    }
}

async fn exchange(
    conn: &mut Conn,
    host: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(Answer, bool), Failure> {
    let io = |e: std::io::Error| Failure::Err(CallError::Transport(e.to_string()));
    let mut req = Vec::with_capacity(160 + body.len());
    req.extend_from_slice(format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
    if !body.is_empty() {
        req.extend_from_slice(b"Content-Type: application/json\r\n");
    }
    req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    req.extend_from_slice(body);
    if let Err(e) = conn.stream.write_all(&req).await {
        return Err(match e.kind() {
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => Failure::Stale,
            _ => io(e),
        });
    }
    conn.buf.clear();
    let mut chunk = [0u8; 16 << 10];
    // The head.
    let (status, head_len, length, chunked, close) = loop {
        let n = match conn.stream.read(&mut chunk).await {
            Ok(0) if conn.buf.is_empty() => return Err(Failure::Stale),
            Ok(0) => return Err(Failure::Err(CallError::Transport("connection closed inside the answer".into()))),
            Ok(n) => n,
            Err(e) if conn.buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(Failure::Stale)
            }
            Err(e) => return Err(io(e)),
        };
        conn.buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&conn.buf) {
            Ok(httparse::Status::Complete(len)) => {
                let mut length = None;
                let (mut chunked, mut close) = (false, false);
                for h in resp.headers.iter() {
                    let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                    if h.name.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse::<usize>().ok();
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = v.contains("chunked");
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        close = v.contains("close");
                    }
                }
                break (resp.code.unwrap_or(0), len, length, chunked, close);
            }
            Ok(httparse::Status::Partial) if conn.buf.len() < HEAD_MAX => continue,
            Ok(httparse::Status::Partial) => {
                return Err(Failure::Err(CallError::Protocol("answer head too large".into())))
            }
            Err(e) => return Err(Failure::Err(CallError::Protocol(format!("bad HTTP answer: {e}")))),
        }
    };
    let mut body_bytes = conn.buf.split_off(head_len);
    let read_more = |buf: &mut Vec<u8>, n: usize| {
        if buf.len() + n > BODY_MAX {
            Err(Failure::Err(CallError::Protocol(format!("answer body over {BODY_MAX} bytes"))))
        } else {
            Ok(())
        }
    };
    if chunked {
        let mut out = Vec::new();
        loop {
            if dechunk(&body_bytes, &mut out) == Some(true) {
                break;
            }
            let n = conn.stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                return Err(Failure::Err(CallError::Transport("connection closed inside the answer".into())));
            }
            read_more(&mut body_bytes, n)?;
            body_bytes.extend_from_slice(&chunk[..n]);
            out.clear();
        }
        return Ok((Answer { status, body: Bytes::from(out) }, !close));
    }
    let Some(length) = length else {
        // No length: the body runs to the end of the connection.
        loop {
            let n = conn.stream.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                return Ok((Answer { status, body: Bytes::from(body_bytes) }, false));
            }
            read_more(&mut body_bytes, n)?;
            body_bytes.extend_from_slice(&chunk[..n]);
        }
    };
    if length > BODY_MAX {
        return Err(Failure::Err(CallError::Protocol(format!("answer body of {length} bytes is over {BODY_MAX}"))));
    }
    while body_bytes.len() < length {
        let n = conn.stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            return Err(Failure::Err(CallError::Transport("connection closed inside the answer".into())));
        }
        body_bytes.extend_from_slice(&chunk[..n]);
    }
    body_bytes.truncate(length);
    Ok((Answer { status, body: Bytes::from(body_bytes) }, !close))
}

/// Decodes a complete chunked body into `out`: Some(true) when the last chunk was seen.
fn dechunk(mut b: &[u8], out: &mut Vec<u8>) -> Option<bool> {
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&b[..line_end]).ok()?.split(';').next()?.trim();
        let n = usize::from_str_radix(size, 16).ok()?;
        b = &b[line_end + 2..];
        if n == 0 {
            return Some(true);
        }
        if b.len() < n + 2 {
            return Some(false);
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies() {
        let mut out = Vec::new();
        assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", &mut out), Some(true));
        assert_eq!(out, b"abcde");
        out.clear();
        assert_eq!(dechunk(b"3\r\nab", &mut out), Some(false));
        out.clear();
        assert_eq!(dechunk(b"3", &mut out), None);
    }
}
