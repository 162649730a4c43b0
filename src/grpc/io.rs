//! The one adapter between glommio's `TcpStream` (futures-io traits) and h2 (tokio io traits).
//!
//! Reads, writes, flush and shutdown go through `tokio_util::compat`. On top of that the adapter
//! offers vectored writes (`sendmsg(MSG_DONTWAIT)` straight on the socket, falling back to
//! glommio's `poll_write` — which registers for writability — when the socket buffer is full),
//! because glommio has none: with them h2 writes a buffered batch of frames plus a chained large
//! DATA payload in one syscall instead of two.
//!
//! TCP_NODELAY is set on every connection: responses are already coalesced by the server (see
//! `server.rs`), and Nagle's delay on top collapsed throughput ~10x when measured.

use glommio::net::TcpStream;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

/// Whether h2 is told it may write vectored (see the module doc).
const VECTORED_WRITES: bool = true;

/// Linux's IOV_MAX.
const IOV_MAX: usize = 1024;

/// A glommio TCP connection as h2 needs it.
pub struct Io {
    inner: Compat<TcpStream>,
    fd: RawFd,
}

impl Io {
    /// Wraps an accepted connection, turning TCP_NODELAY on.
    pub fn new(stream: TcpStream) -> io::Result<Io> {
        stream.set_nodelay(true).map_err(io::Error::from)?;
        let fd = stream.as_raw_fd();
        Ok(Io { inner: stream.compat(), fd })
    }
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !VECTORED_WRITES || bufs.len() <= 1 {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
            return Pin::new(&mut self.inner).poll_write(cx, first);
        }
        let iovlen = bufs.len().min(IOV_MAX);
        loop {
            // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` on Unix; `msg` only points
            // into `bufs`, which outlives the call; the fd is owned by `self.inner`.
            let sent = unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
                msg.msg_iovlen = iovlen as _;
                libc::sendmsg(self.fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            };
            if sent >= 0 {
                return Poll::Ready(Ok(sent as usize));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    // Let glommio wait for writability (it retries the send itself first).
                    let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
                    return Pin::new(&mut self.inner).poll_write(cx, first);
                }
                _ => return Poll::Ready(Err(err)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        VECTORED_WRITES
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
