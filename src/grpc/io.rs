//! The one adapter between glommio's `TcpStream` (futures-io traits) and h2 (tokio io traits).
//!
//! Reads copy out of glommio's buffered stream (so one `recv` takes up to [`READ_BUFFER_BYTES`]
//! even when h2 offers a smaller buffer: it reads into 8 KiB); writes to the stream go through
//! `tokio_util::compat`.
//!
//! Writes are *deferred*: h2 flushes after every DATA frame it does not copy into its own 16 KiB
//! buffer (payloads over 256 bytes are chained and written out before the next frame is encoded),
//! which would mean at least one `send` per response of a few KiB. Instead, once
//! [`Io::defer_writes`] is on, whatever h2 writes is appended to our write buffer (up to
//! [`WRITE_BUFFER_BYTES`]) and h2's flushes return at once; the connection task calls
//! [`Flusher::poll_flush`] when it has nothing more to do in a round (see `server.rs`), so a
//! round's responses leave in one `send`. Past the buffer limit, a write goes straight to the
//! socket together with what is buffered (one `sendmsg`), so large tensors are not copied and h2
//! still sees backpressure.
//!
//! The socket is only written by the connection's own task, through `Io` (owned by h2) or the
//! `Flusher`; both share the state through an `Rc` (one thread, never borrowed across an await).
//!
//! TCP_NODELAY is set on every connection: responses are already coalesced here, and Nagle's delay
//! on top collapsed throughput ~10x when measured.
//!
//! # TLS
//!
//! [`Io::tls`] wraps a connection whose handshake is done (`crate::tls`). The transport is an
//! enum, so a plaintext connection pays one branch per call and nothing else. Over TLS, reads
//! decrypt into h2's buffer (at most [`TLS_READ_BYTES`] per call); the deferred write buffer is
//! the same, and flushing it hands the whole buffer to rustls in one write, so a round's responses
//! become a few full-size records and one `send`. Past the buffer limit a write goes through
//! rustls at once (vectored), after what is buffered.

use futures_rustls::server::TlsStream;
use glommio::net::{Preallocated, TcpStream};
use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

/// Receive buffer per connection.
pub const READ_BUFFER_BYTES: usize = 64 << 10;
/// Deferred-write buffer per connection; writes that do not fit go to the socket at once.
pub const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// Most plaintext one read over TLS hands h2 (one full TLS record).
pub const TLS_READ_BYTES: usize = 16 << 10;

/// Most slices handed to one `sendmsg` (h2 passes at most 64, plus our buffer).
const IOV_MAX: usize = 65;

/// The socket, plain or under TLS.
enum Stream {
    Plain(Compat<TcpStream<Preallocated>>),
    Tls(Box<TlsStream<TcpStream<Preallocated>>>),
}

struct Shared {
    stream: RefCell<Stream>,
    /// The socket (for `sendmsg` on the plaintext path).
    fd: RawFd,
    /// Bytes accepted from h2 but not yet sent: `wbuf[wpos..]`.
    wbuf: RefCell<Vec<u8>>,
    wpos: Cell<usize>,
    defer: Cell<bool>,
}

/// A glommio TCP connection as h2 needs it.
pub struct Io {
    shared: Rc<Shared>,
}

/// The connection task's handle to send what `Io` has buffered.
pub struct Flusher {
    shared: Rc<Shared>,
}

impl Io {
    /// Wraps an accepted connection, turning TCP_NODELAY on. Writes are not deferred until
    /// [`defer_writes`](Self::defer_writes).
    pub fn new(stream: TcpStream) -> io::Result<(Io, Flusher)> {
        stream.set_nodelay(true).map_err(io::Error::from)?;
        let fd = stream.as_raw_fd();
        let stream = stream.buffered_with(Preallocated::new(READ_BUFFER_BYTES));
        Ok(Io::with(Stream::Plain(stream.compat()), fd))
    }

    /// Wraps a connection whose TLS handshake is done (TCP_NODELAY is set before the handshake,
    /// see `server.rs`). Writes are not deferred until [`defer_writes`](Self::defer_writes).
    pub fn tls(stream: TlsStream<TcpStream<Preallocated>>) -> (Io, Flusher) {
        let fd = stream.get_ref().0.as_raw_fd();
        Io::with(Stream::Tls(Box::new(stream)), fd)
    }

    fn with(stream: Stream, fd: RawFd) -> (Io, Flusher) {
        let shared = Rc::new(Shared {
            stream: RefCell::new(stream),
            fd,
            wbuf: RefCell::new(Vec::new()),
            wpos: Cell::new(0),
            defer: Cell::new(false),
        });
        (Io { shared: shared.clone() }, Flusher { shared })
    }
}

impl Flusher {
    /// From now on, h2's writes are buffered until [`poll_flush`](Self::poll_flush).
    pub fn defer_writes(&self) {
        self.shared.defer.set(true);
    }

    /// Sends everything buffered; `Pending` (with the waker registered for writability) if the
    /// socket is full.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.poll_drain(cx)
    }
}

impl Shared {
    fn pending(&self) -> usize {
        self.wbuf.borrow().len() - self.wpos.get()
    }

    fn consume(&self, n: usize) {
        let pos = self.wpos.get() + n;
        let mut wbuf = self.wbuf.borrow_mut();
        if pos >= wbuf.len() {
            wbuf.clear();
            self.wpos.set(0);
        } else {
            self.wpos.set(pos);
        }
    }

    /// Writes out the buffer through glommio (which sends right away if it can, and otherwise
    /// registers for writability); over TLS, through rustls, then flushes its records.
    fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending() > 0 {
            let n = {
                let wbuf = self.wbuf.borrow();
                let buf = &wbuf[self.wpos.get()..];
                match &mut *self.stream.borrow_mut() {
                    Stream::Plain(stream) => ready!(Pin::new(stream).poll_write(cx, buf))?,
                    Stream::Tls(tls) => ready!(futures_lite::AsyncWrite::poll_write(Pin::new(&mut **tls), cx, buf))?,
                }
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume(n);
        }
        match &mut *self.stream.borrow_mut() {
            Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::Tls(tls) => futures_lite::AsyncWrite::poll_flush(Pin::new(&mut **tls), cx),
        }
    }

    /// The TLS form of [`poll_write_through`](Self::poll_write_through): what is buffered goes
    /// first (and is flushed), then `bufs` through rustls.
    fn poll_write_tls(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        match &mut *self.stream.borrow_mut() {
            Stream::Tls(tls) => futures_lite::AsyncWrite::poll_write_vectored(Pin::new(&mut **tls), cx, bufs),
            // Not reached: called for TLS streams only; a plain one writes through directly.
            Stream::Plain(stream) => {
                let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
                Pin::new(stream).poll_write(cx, first)
            }
        }
    }

    /// Writes the buffer and then `bufs` with as few `sendmsg` as the socket allows; returns how
    /// much of `bufs` went out (never 0 for non-empty `bufs` when Ready(Ok)).
    #[allow(unsafe_code)]
    fn poll_write_through(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        loop {
            let pending = self.pending();
            let sent = {
                let wbuf = self.wbuf.borrow();
                let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOV_MAX];
                let mut n = 0;
                if pending > 0 {
                    let p = &wbuf[self.wpos.get()..];
                    iov[0] = libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() };
                    n = 1;
                }
                for b in bufs.iter().filter(|b| !b.is_empty()) {
                    if n == IOV_MAX {
                        break;
                    }
                    iov[n] = libc::iovec { iov_base: b.as_ptr() as *mut _, iov_len: b.len() };
                    n += 1;
                }
                if n == 0 {
                    return Poll::Ready(Ok(0));
                }
                // SAFETY: the iovecs point into `wbuf` and `bufs`, both alive for the call.
                unsafe {
                    let mut msg: libc::msghdr = std::mem::zeroed();
                    msg.msg_iov = iov.as_mut_ptr();
                    msg.msg_iovlen = n as _;
                    libc::sendmsg(self.fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                }
            };
            if sent >= 0 {
                let sent = sent as usize;
                if sent > pending {
                    self.consume(pending);
                    return Poll::Ready(Ok(sent - pending));
                }
                self.consume(sent);
                continue;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => {
                    // Wait for writability through glommio; it also retries the send.
                    if pending > 0 {
                        ready!(self.poll_drain(cx))?;
                        continue;
                    }
                    let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
                    return match &mut *self.stream.borrow_mut() {
                        Stream::Plain(stream) => Pin::new(stream).poll_write(cx, first),
                        Stream::Tls(tls) => futures_lite::AsyncWrite::poll_write(Pin::new(&mut **tls), cx, first),
                    };
                }
                _ => return Poll::Ready(Err(err)),
            }
        }
    }

    fn poll_write(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.defer.get() && self.wbuf.borrow().len() + total <= WRITE_BUFFER_BYTES {
            let mut wbuf = self.wbuf.borrow_mut();
            for b in bufs {
                wbuf.extend_from_slice(b);
            }
            return Poll::Ready(Ok(total));
        }
        if matches!(*self.stream.borrow(), Stream::Tls(_)) {
            return self.poll_write_tls(cx, bufs);
        }
        self.poll_write_through(cx, bufs)
    }
}

impl AsyncRead for Io {
    /// Copies from glommio's receive buffer into h2's, without the zero-fill of h2's whole free
    /// space that the futures → tokio `compat` read does on every call.
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        use futures_lite::AsyncBufRead;
        let mut stream = self.shared.stream.borrow_mut();
        let inner = match &mut *stream {
            Stream::Plain(stream) => stream.get_mut(),
            Stream::Tls(tls) => {
                let want = buf.remaining().min(TLS_READ_BYTES);
                let n = ready!(futures_lite::AsyncRead::poll_read(
                    Pin::new(&mut **tls),
                    cx,
                    buf.initialize_unfilled_to(want)
                ))?;
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
        };
        let n = {
            let data = ready!(Pin::new(&mut *inner).poll_fill_buf(cx))?;
            let n = data.len().min(buf.remaining());
            buf.put_slice(&data[..n]);
            n
        };
        Pin::new(inner).consume(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.shared.poll_write(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.shared.poll_write(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.shared.defer.get() {
            // The connection task flushes at the end of its round.
            return Poll::Ready(Ok(()));
        }
        self.shared.poll_drain(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.shared.poll_drain(cx))?;
        match &mut *self.shared.stream.borrow_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            // Sends close_notify, then shuts the socket's write side.
            Stream::Tls(tls) => futures_lite::AsyncWrite::poll_close(Pin::new(&mut **tls), cx),
        }
    }
}
