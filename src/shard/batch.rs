//! Collecting the steps of different sequences into batches (`max_batch_size` > 1).
//!
//! A step of a batching model that this shard owns does not run at once: it joins the model's
//! queue and its request waits for a ticket. The queue is run, one batch at a time, by
//!
//! - the shard's runner task for the model (`Shard::run_batches`), woken when the queue stops
//!   being empty: with `max_queue_delay_us` = 0 it first yields once, so every task already
//!   ready on the shard (the other connections' parsed requests, the mesh's forwarded ones) adds
//!   its steps, then runs what is there; with a delay it waits until the oldest step has waited
//!   that long;
//! - or the step that fills the queue to `max_batch_size`, which runs that batch itself.
//!
//! A batch takes the queue's steps in arrival order, the first step of each sequence only, so a
//! sequence's steps run in the order they came and never two in one batch. A START, which resets
//! the state, runs alone on the resident path, after the queue has run any step of the same id.
//!
//! Everything is bounded: the queue never holds more than `max_batch_size` steps (the one that
//! reaches it runs a batch), and the tickets of steps waiting or answered but not yet collected
//! are at most `TICKETS_MAX`. A forwarded step's answer goes back through the mesh when its batch
//! has run; a local step's waiter that is dropped leaves its step to run (as a step in progress
//! always does) and its answer is discarded.

use super::mesh::{Mesh, Token};
use super::router::ShardId;
use crate::error::{Error, Kind, Result};
use crate::request::{InferJob, Outcome, SequenceId};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Steps waiting in a queue or answered and not yet collected, per model per shard.
pub const TICKETS_MAX: usize = 1 << 16;

/// Names a waiting step's entry; the generation makes a stale ticket name nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    index: u32,
    generation: u32,
}

/// Where a step's answer goes.
#[derive(Clone, Copy, Debug)]
enum ReplyTo {
    Local(Ticket),
    Peer { from: ShardId, token: Token },
}

struct Queued {
    reply: ReplyTo,
    job: InferJob,
    at: Instant,
}

enum Entry {
    Free,
    Waiting(Option<Waker>),
    Done(Result<Outcome>),
    /// The waiter went away; the answer is dropped when it comes.
    Abandoned,
}

struct Tickets {
    entries: Vec<(u32, Entry)>,
    free: Vec<u32>,
}

impl Tickets {
    fn open(&mut self) -> Option<Ticket> {
        let index = match self.free.pop() {
            Some(i) => i,
            None if self.entries.len() < TICKETS_MAX => {
                self.entries.push((0, Entry::Free));
                (self.entries.len() - 1) as u32
            }
            None => return None,
        };
        let e = &mut self.entries[index as usize];
        e.1 = Entry::Waiting(None);
        Some(Ticket { index, generation: e.0 })
    }

    fn entry(&mut self, t: Ticket) -> Option<&mut Entry> {
        match self.entries.get_mut(t.index as usize) {
            Some((generation, e)) if *generation == t.generation => Some(e),
            _ => None,
        }
    }

    fn close(&mut self, t: Ticket) {
        if let Some((generation, e)) = self.entries.get_mut(t.index as usize) {
            if *generation == t.generation {
                *generation = generation.wrapping_add(1);
                *e = Entry::Free;
                self.free.push(t.index);
            }
        }
    }

    fn complete(&mut self, t: Ticket, r: Result<Outcome>) {
        match self.entry(t) {
            Some(e @ Entry::Waiting(_)) => {
                if let Entry::Waiting(Some(w)) = std::mem::replace(e, Entry::Done(r)) {
                    w.wake();
                }
            }
            Some(Entry::Abandoned) => self.close(t),
            // Completed twice or never opened: a bug; the answer has nowhere to go.
            _ => crate::log!(Error, "batch: an answer for a ticket nobody waits on was dropped"),
        }
    }
}

/// One batching model's queue on one shard.
pub struct Queue {
    max: usize,
    delay: Duration,
    waiting: RefCell<VecDeque<Queued>>,
    tickets: RefCell<Tickets>,
    /// The runner task, parked until the queue is not empty (or closed).
    runner: Cell<Option<Waker>>,
    /// Set when the model is unloaded: the runner task ends.
    closed: Cell<bool>,
    batch: RefCell<Scratch>,
}

/// One batch's jobs, where their answers go, and their results; reused by every batch.
struct Scratch {
    jobs: Vec<InferJob>,
    arrived: Vec<Instant>,
    replies: Vec<ReplyTo>,
    results: Vec<Result<Outcome>>,
}

impl Queue {
    pub fn new(max: usize, delay: Duration) -> Queue {
        Queue {
            max,
            delay,
            waiting: RefCell::new(VecDeque::with_capacity(max)),
            tickets: RefCell::new(Tickets { entries: Vec::new(), free: Vec::new() }),
            runner: Cell::new(None),
            closed: Cell::new(false),
            batch: RefCell::new(Scratch {
                jobs: Vec::with_capacity(max),
                arrived: Vec::with_capacity(max),
                replies: Vec::with_capacity(max),
                results: Vec::with_capacity(max),
            }),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn len(&self) -> usize {
        self.waiting.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.borrow().is_empty()
    }

    /// Whether a step of sequence `id` is waiting.
    pub fn holds(&self, id: &SequenceId) -> bool {
        self.waiting.borrow().iter().any(|q| q.job.sequence.as_ref().is_some_and(|s| s.id == *id))
    }

    /// Queues a local step; its answer is collected with `wait`. Returns whether the queue is
    /// now full (the caller runs a batch) and wakes the runner if it was empty.
    pub fn push_local(&self, job: InferJob) -> std::result::Result<(Ticket, bool), Error> {
        let Some(t) = self.tickets.borrow_mut().open() else {
            return Err(Error::with(Kind::ResourceExhausted, format!("{TICKETS_MAX} steps already wait for a batch")));
        };
        Ok((t, self.push(ReplyTo::Local(t), job)))
    }

    /// Queues a forwarded step; its answer goes back through the mesh. Returns whether the
    /// queue is now full.
    pub fn push_peer(&self, job: InferJob, from: ShardId, token: Token) -> bool {
        self.push(ReplyTo::Peer { from, token }, job)
    }

    fn push(&self, reply: ReplyTo, job: InferJob) -> bool {
        let mut w = self.waiting.borrow_mut();
        w.push_back(Queued { reply, job, at: Instant::now() });
        if w.len() == 1 {
            if let Some(r) = self.runner.take() {
                r.wake();
            }
        }
        w.len() >= self.max
    }

    /// The waiting step's answer.
    pub fn wait(&self, ticket: Ticket) -> Wait<'_> {
        Wait { queue: self, ticket, done: false }
    }

    /// Ends the runner task (the model is unloaded; nothing waits, as it has no sequences).
    pub fn close(&self) {
        self.closed.set(true);
        if let Some(r) = self.runner.take() {
            r.wake();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Ready once a step is waiting (or the queue is closed); parks the runner until then.
    pub fn poll_nonempty(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_empty() && !self.closed.get() {
            self.runner.set(Some(cx.waker().clone()));
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// When the oldest waiting step has waited `max_queue_delay_us` (None if nothing waits).
    pub fn due(&self) -> Option<Instant> {
        self.waiting.borrow().front().map(|q| q.at + self.delay)
    }

    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Takes the next batch out of the queue into the scratch (arrival order, the first step of
    /// each sequence, at most `max`) and hands it to `run`, which fills the results in order;
    /// then delivers every answer. Returns how many steps ran.
    pub fn run_one(
        &self,
        mesh: &Mesh,
        run: impl FnOnce(&mut Vec<InferJob>, &[Instant], &mut Vec<Result<Outcome>>),
    ) -> usize {
        let Ok(mut scratch) = self.batch.try_borrow_mut() else {
            // A batch is running (run re-entered from within one): leave the queue to it.
            return 0;
        };
        let Scratch { jobs, arrived, replies, results } = &mut *scratch;
        jobs.clear();
        arrived.clear();
        replies.clear();
        results.clear();
        {
            let mut waiting = self.waiting.borrow_mut();
            let mut i = 0;
            while i < waiting.len() && jobs.len() < self.max {
                let id = waiting[i].job.sequence.as_ref().map(|s| &s.id);
                let taken_already = jobs.iter().any(|j| j.sequence.as_ref().map(|s| &s.id) == id);
                if taken_already {
                    i += 1;
                    continue;
                }
                if let Some(q) = waiting.remove(i) {
                    jobs.push(q.job);
                    arrived.push(q.at);
                    replies.push(q.reply);
                }
            }
        }
        let n = replies.len();
        if n == 0 {
            return 0;
        }
        run(jobs, arrived, results);
        jobs.clear();
        let mut results = results.drain(..);
        let mut tickets = self.tickets.borrow_mut();
        for reply in replies.drain(..) {
            let r = results.next().unwrap_or_else(|| Err(Error::with(Kind::Internal, "a batched step got no result")));
            match reply {
                ReplyTo::Local(t) => tickets.complete(t, r),
                ReplyTo::Peer { from, token } => mesh.answer_infer(from, token, r),
            }
        }
        n
    }
}

/// A local step's answer, once its batch has run.
pub struct Wait<'a> {
    queue: &'a Queue,
    ticket: Ticket,
    done: bool,
}

impl Future for Wait<'_> {
    type Output = Result<Outcome>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Outcome>> {
        let queue: &Queue = self.queue;
        let mut tickets = queue.tickets.borrow_mut();
        let ticket = self.ticket;
        let Some(entry) = tickets.entry(ticket) else {
            drop(tickets);
            self.done = true;
            return Poll::Ready(Err(Error::with(Kind::Internal, "a batched step lost its ticket")));
        };
        match entry {
            Entry::Waiting(w) => {
                *w = Some(cx.waker().clone());
                Poll::Pending
            }
            Entry::Done(_) => {
                let Entry::Done(r) = std::mem::replace(entry, Entry::Free) else {
                    return Poll::Pending;
                };
                tickets.close(ticket);
                drop(tickets);
                self.done = true;
                Poll::Ready(r)
            }
            Entry::Free | Entry::Abandoned => {
                drop(tickets);
                self.done = true;
                Poll::Ready(Err(Error::with(Kind::Internal, "a batched step lost its ticket")))
            }
        }
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Ok(mut tickets) = self.queue.tickets.try_borrow_mut() else { return };
        match tickets.entry(self.ticket) {
            Some(e @ Entry::Waiting(_)) => *e = Entry::Abandoned,
            Some(Entry::Done(_)) => tickets.close(self.ticket),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_reused_and_stale_ones_name_nothing() {
        let mut t = Tickets { entries: Vec::new(), free: Vec::new() };
        let a = t.open().expect("ticket");
        t.close(a);
        let b = t.open().expect("ticket");
        assert_eq!(a.index, b.index);
        assert_ne!(a.generation, b.generation);
        assert!(t.entry(a).is_none());
        assert!(matches!(t.entry(b), Some(Entry::Waiting(None))));
        // An answer for an abandoned step frees its entry.
        if let Some(e) = t.entry(b) {
            *e = Entry::Abandoned;
        }
        t.complete(b, Err(Error::new(Kind::Internal)));
        assert!(t.entry(b).is_none());
        assert_eq!(t.free.len(), 1);
    }
}
