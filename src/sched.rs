//! Cooperative scheduling on a shard's executor (and the one helper for reporting a panic that a
//! request boundary caught, and the listeners' accept with its back-off), shared by every loop that runs handlers back to
//! back: a gRPC connection's rounds and the drain of the cross-shard mesh. Inference runs inline
//! on the shard, so a loop that handled everything ready before yielding would starve the
//! shard's other connections, its peers and its expiry timer. Each such loop counts its handler
//! time and yields once it has spent `ROUND_BUDGET`.

use futures_lite::future::CatchUnwind;
use futures_lite::FutureExt;
use std::future::{poll_fn, Future};
use std::panic::AssertUnwindSafe;
use std::task::Poll;
use std::time::Duration;

/// Handler time after which a loop lets the shard's other tasks run.
pub const ROUND_BUDGET: Duration = Duration::from_micros(300);

/// Handler time spent since the last yield.
pub struct Budget {
    spent: Duration,
}

impl Budget {
    pub fn new() -> Budget {
        Budget { spent: Duration::ZERO }
    }

    /// Adds time measured elsewhere.
    pub fn charge(&mut self, d: Duration) {
        self.spent += d;
    }

    pub fn is_spent(&self) -> bool {
        self.spent >= ROUND_BUDGET
    }

    /// Yields if the budget is spent, and starts a new one.
    pub async fn yield_if_spent(&mut self) {
        if self.is_spent() {
            yield_now().await;
            self.spent = Duration::ZERO;
        }
    }
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::new()
    }
}

/// Returns `Pending` once (waking itself), so every other ready task runs before this one goes on.
pub async fn yield_now() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// `fut` with its panics caught: awaiting it gives `Err(payload)` instead of an unwind through
/// the shard's executor, which would stop every task on the shard. The request boundaries use it
/// (a handler's future: that request fails) and so do connection tasks (a panic in a protocol
/// layer closes that connection only).
///
/// A plain function returning the wrapper, not an `async fn`: an async fn taking a future by value
/// holds it twice in its state, and a handler's future is most of a request task's allocation.
pub fn contained<F: Future>(fut: F) -> CatchUnwind<AssertUnwindSafe<F>> {
    AssertUnwindSafe(fut).catch_unwind()
}

/// Logs a panic that `contained` caught in `what`.
pub fn log_panic(what: &str, panic: &(dyn std::any::Any + Send)) {
    crate::log!(Error, "{what} panicked ({}); only it fails, the shard goes on", panic_message(panic));
}

/// The text of a caught panic's payload, for the log.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic"
    }
}

/// How often a listener that cannot accept (out of descriptors or memory) says so.
pub const ACCEPT_WARNING_PERIOD: Duration = Duration::from_secs(10);

/// Says that the `what` listener closed a new connection because `max` are open, at most once
/// per [`ACCEPT_WARNING_PERIOD`] through `refused` (a client sees only a closed connection).
pub fn warn_connection_limit(refused: &mut crate::log::Throttle, what: &str, max: usize) {
    if let Some(again) = refused.note(std::time::Instant::now()) {
        crate::log!(Warning, "{what} listener closed a new connection: {max} are open on this shard, its limit{again}");
    }
}

/// Waits for the next connection of `listener` (the `what` listener: "gRPC", "REST"), absorbing
/// what is not the listener's fault: a peer that gave up before it was accepted is skipped; out
/// of descriptors or memory, it waits 10 ms and tries again, so connections can close meanwhile
/// (the new ones wait in the listen backlog), saying so at most once per
/// [`ACCEPT_WARNING_PERIOD`] through `starved`. Any other error is the listener's own.
pub async fn accept(
    listener: &glommio::net::TcpListener,
    starved: &mut crate::log::Throttle,
    what: &str,
) -> Result<glommio::net::TcpStream, std::io::Error> {
    loop {
        let e = match listener.accept().await {
            Ok(stream) => return Ok(stream),
            Err(e) => std::io::Error::from(e),
        };
        match e.raw_os_error() {
            Some(libc::ECONNABORTED | libc::EINTR | libc::EAGAIN | libc::EPROTO) => {}
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                if let Some(again) = starved.note(std::time::Instant::now()) {
                    crate::log!(
                        Warning,
                        "{what} listener cannot accept: {e}{again}; new connections wait in the listen backlog, \
                         retried every 10 ms (raise the descriptor limit, `ulimit -n`, or lower the connection limits)"
                    );
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            _ => return Err(e),
        }
    }
}
