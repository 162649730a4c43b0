//! Per-request timeouts that cost no glommio timer per request.
//!
//! `glommio::timer::timeout` registers a timer in the reactor for every request, and while any
//! timer is pending glommio arms (and on waking cancels) an io_uring timeout on *every* sleep of
//! the executor, on top of the timer's own bookkeeping. Measured with callgrind at one request
//! in flight, glommio's park fell from 9.2 k to 6.8 k instructions per request without it (the
//! extra submissions rode on `io_uring_enter`s glommio makes anyway, so their count did not
//! change); see docs/loadgen.md, "Is the loadgen an honest measuring stick?".
//!
//! Here a call registers its deadline and waker in a per-thread table (a `Vec` slot, no
//! allocation in the steady state) and unregisters when it finishes. One process-wide ticker
//! thread wakes, every [`TICK`], a watchdog task on each client thread that has calls in flight
//! (a wake from another thread, through glommio's eventfd); the watchdog wakes the calls whose
//! deadline has passed, which then answer [`Elapsed`]. So a timeout fires between its deadline
//! and one tick after it, and an idle or answering client executor has no timer at all.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// How often deadlines are checked: the most a timeout fires late. Small against the 10 s
/// default timeout and against any timeout worth setting on a loaded server; 20 wake-ups a
/// second of an otherwise parked client cost nothing measurable.
pub const TICK: Duration = Duration::from_millis(50);

/// A call took longer than its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Runs `fut`, giving up with [`Elapsed`] once `timeout` has passed (at most [`TICK`] later).
/// Must run on a glommio executor (the watchdog is a task on it). `fut` is polled first, so an
/// answer that is already there is taken even past the deadline.
pub async fn within<F: Future>(timeout: Duration, fut: F) -> Result<F::Output, Elapsed> {
    let deadline = Instant::now() + timeout;
    let mut fut = std::pin::pin!(fut);
    // Unregisters on every way out, including the caller dropping this future.
    let mut reg = Registration { local: Local::get(), slot: None };
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            reg.clear();
            return Poll::Ready(Ok(v));
        }
        if Instant::now() >= deadline {
            reg.clear();
            return Poll::Ready(Err(Elapsed));
        }
        match reg.slot {
            Some(i) => reg.local.refresh(i, cx.waker()),
            None => reg.slot = Some(reg.local.register(deadline, cx.waker())),
        }
        Poll::Pending
    })
    .await
}

struct Registration {
    local: Rc<Local>,
    slot: Option<usize>,
}

impl Registration {
    fn clear(&mut self) {
        if let Some(i) = self.slot.take() {
            self.local.unregister(i);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.clear();
    }
}

/// What the ticker thread sees of one client thread.
struct Shared {
    /// Calls registered on that thread (the ticker skips threads with none).
    in_flight: AtomicUsize,
    /// Bumped by the ticker before each wake, so the watchdog knows a tick has come.
    ticks: AtomicU64,
    /// The watchdog task's waker; `None` once that task is gone.
    waker: Mutex<Option<Waker>>,
}

struct Slot {
    deadline: Instant,
    waker: Option<Waker>,
}

/// One client thread's table of calls in flight.
struct Local {
    shared: Arc<Shared>,
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

impl Local {
    /// This thread's table, created with its watchdog task on first use.
    fn get() -> Rc<Local> {
        LOCAL.with(|l| {
            l.borrow_mut()
                .get_or_insert_with(|| {
                    let shared = Arc::new(Shared {
                        in_flight: AtomicUsize::new(0),
                        ticks: AtomicU64::new(0),
                        waker: Mutex::new(None),
                    });
                    ticker().lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&shared));
                    let local =
                        Rc::new(Local { shared, slots: RefCell::new(Vec::new()), free: RefCell::new(Vec::new()) });
                    glommio::spawn_local(watchdog(Rc::downgrade(&local))).detach();
                    local
                })
                .clone()
        })
    }

    fn register(&self, deadline: Instant, waker: &Waker) -> usize {
        self.shared.in_flight.fetch_add(1, Relaxed);
        let slot = Some(Slot { deadline, waker: Some(waker.clone()) });
        let mut slots = self.slots.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(i) => {
                slots[i] = slot;
                i
            }
            None => {
                slots.push(slot);
                slots.len() - 1
            }
        }
    }

    fn refresh(&self, i: usize, waker: &Waker) {
        if let Some(Some(s)) = self.slots.borrow_mut().get_mut(i) {
            match &s.waker {
                Some(w) if w.will_wake(waker) => {}
                _ => s.waker = Some(waker.clone()),
            }
        }
    }

    fn unregister(&self, i: usize) {
        if let Some(s) = self.slots.borrow_mut().get_mut(i) {
            if s.take().is_some() {
                self.shared.in_flight.fetch_sub(1, Relaxed);
                self.free.borrow_mut().push(i);
            }
        }
    }

    /// Wakes the calls whose deadline has passed (they see it when polled).
    fn expire(&self, now: Instant) {
        let due: Vec<Waker> = self
            .slots
            .borrow_mut()
            .iter_mut()
            .flatten()
            .filter(|s| s.deadline <= now)
            .filter_map(|s| s.waker.take())
            .collect();
        for w in due {
            w.wake();
        }
    }
}

/// The watchdog: on each tick, wake the calls that are past their deadline. Ends when its
/// thread's table is gone.
async fn watchdog(local: std::rc::Weak<Local>) {
    let shared = match local.upgrade() {
        Some(l) => l.shared.clone(),
        None => return,
    };
    // Forget the waker when the task goes (its executor shutting down), so the ticker never
    // wakes a task that no longer exists.
    struct Forget(Arc<Shared>);
    impl Drop for Forget {
        fn drop(&mut self) {
            self.0.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
    }
    let _forget = Forget(shared.clone());
    let mut seen = shared.ticks.load(Relaxed);
    loop {
        std::future::poll_fn(|cx| {
            let now = shared.ticks.load(Relaxed);
            if now != seen {
                seen = now;
                return Poll::Ready(());
            }
            *shared.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            // A tick may have come between the load and storing the waker.
            if shared.ticks.load(Relaxed) != seen {
                seen = shared.ticks.load(Relaxed);
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
        match local.upgrade() {
            Some(l) => l.expire(Instant::now()),
            None => return,
        }
    }
}

/// The process-wide ticker thread and the client threads it serves.
fn ticker() -> &'static Mutex<Vec<Weak<Shared>>> {
    static THREADS: OnceLock<&'static Mutex<Vec<Weak<Shared>>>> = OnceLock::new();
    THREADS.get_or_init(|| {
        let threads: &'static Mutex<Vec<Weak<Shared>>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        std::thread::Builder::new()
            .name("loadgen-deadlines".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                let mut list = threads.lock().unwrap_or_else(|e| e.into_inner());
                list.retain(|w| match w.upgrade() {
                    Some(s) => {
                        if s.in_flight.load(Relaxed) > 0 {
                            s.ticks.fetch_add(1, Relaxed);
                            // Woken under the lock: a watchdog being dropped waits for it.
                            if let Some(w) = s.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
                                w.wake();
                            }
                        }
                        true
                    }
                    None => false,
                });
            })
            .expect("spawning the deadline ticker thread");
        threads
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use glommio::{LocalExecutorBuilder, Placement};

    fn on_executor<T, F>(f: impl FnOnce() -> F + Send + 'static) -> T
    where
        T: Send + 'static,
        F: std::future::Future<Output = T> + 'static,
    {
        LocalExecutorBuilder::new(Placement::Unbound).spawn(f).unwrap().join().unwrap()
    }

    #[test]
    fn a_call_that_never_answers_times_out_within_a_tick() {
        let (r, waited, in_flight) = on_executor(|| async {
            let t0 = Instant::now();
            let r = within(Duration::from_millis(120), std::future::pending::<()>()).await;
            (r, t0.elapsed(), Local::get().shared.in_flight.load(Relaxed))
        });
        assert_eq!(r, Err(Elapsed));
        assert!(waited >= Duration::from_millis(120), "{waited:?}");
        // One tick late at most, plus scheduling slack on a busy machine.
        assert!(waited < Duration::from_millis(120) + TICK * 4, "{waited:?}");
        assert_eq!(in_flight, 0);
    }

    #[test]
    fn answers_pass_through_and_dropped_calls_unregister() {
        let (first, second, in_flight, slots_reused) = on_executor(|| async {
            let first = within(Duration::from_secs(5), async { 7 }).await;
            // Pending once, then answered: registers, then unregisters.
            let mut polled = false;
            let second = within(
                Duration::from_secs(5),
                std::future::poll_fn(move |cx| {
                    if polled {
                        Poll::Ready(8)
                    } else {
                        polled = true;
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }),
            )
            .await;
            // A call dropped while pending (the caller gave up) leaves nothing registered.
            let pending = within(Duration::from_secs(5), std::future::pending::<()>());
            let _ = futures_lite::future::poll_once(Box::pin(pending)).await;
            let local = Local::get();
            let in_flight = local.shared.in_flight.load(Relaxed);
            let slots = local.slots.borrow().len();
            (first, second, in_flight, slots <= 1)
        });
        assert_eq!(first, Ok(7));
        assert_eq!(second, Ok(8));
        assert_eq!(in_flight, 0);
        assert!(slots_reused, "slots are reused, not grown per call");
    }
}
