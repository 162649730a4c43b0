//! Cross-shard messaging: one bounded glommio `shared_channel` per ordered pair of shards,
//! carrying one enum of messages. A request that arrives on a shard that does not own its
//! sequence travels to the owner and its answer comes back the same way; state never travels.
//!
//! Capacity is arranged so that a send never finds a channel full: a shard keeps at most
//! `FORWARDS_MAX` of its own requests outstanding at each peer (past that, the client gets
//! RESOURCE_EXHAUSTED), and a channel from A to B carries only A's requests to B and A's answers
//! to B's requests, so `2 * FORWARDS_MAX` (plus a little for stats) always suffices.
//!
//! Answers are matched to waiting requests by a token: an index into the origin shard's local
//! table of pending forwards (no cross-thread oneshot, no `Arc` per request).

use super::router::ShardId;
use crate::error::{Error, Kind, Result};
use crate::metrics::Snapshot;
use crate::request::{InferJob, Outcome};
use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender};
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Requests one shard may have outstanding at one peer.
pub const FORWARDS_MAX: usize = 1024;
const CHANNEL_CAPACITY: usize = 2 * FORWARDS_MAX + 64;

pub enum Msg {
    Infer { from: ShardId, token: u32, job: InferJob },
    InferDone { token: u32, result: Result<Outcome> },
    Stats { from: ShardId, token: u32 },
    StatsDone { token: u32, stats: serde_json::Value },
    Metrics { from: ShardId, token: u32 },
    MetricsDone { token: u32, snapshot: Box<Snapshot> },
}

/// The unconnected ends of every channel, made on the main thread before the shards start.
pub struct MeshPlan {
    /// senders[from][to], receivers[to][from]; None on the diagonal.
    senders: Vec<Vec<Option<SharedSender<Msg>>>>,
    receivers: Vec<Vec<Option<SharedReceiver<Msg>>>>,
}

impl MeshPlan {
    pub fn new(shards: usize) -> MeshPlan {
        let mut senders: Vec<Vec<Option<SharedSender<Msg>>>> =
            (0..shards).map(|_| (0..shards).map(|_| None).collect()).collect();
        let mut receivers: Vec<Vec<Option<SharedReceiver<Msg>>>> =
            (0..shards).map(|_| (0..shards).map(|_| None).collect()).collect();
        for from in 0..shards {
            for to in 0..shards {
                if from != to {
                    let (tx, rx) = glommio::channels::shared_channel::new_bounded(CHANNEL_CAPACITY);
                    senders[from][to] = Some(tx);
                    receivers[to][from] = Some(rx);
                }
            }
        }
        MeshPlan { senders, receivers }
    }

    /// The ends that belong to `shard`: its senders to every peer and receivers from every peer.
    pub fn take(&mut self, shard: usize) -> MeshEnds {
        MeshEnds {
            senders: self.senders[shard].iter_mut().map(Option::take).collect(),
            receivers: self.receivers[shard].iter_mut().map(Option::take).collect(),
        }
    }
}

pub struct MeshEnds {
    senders: Vec<Option<SharedSender<Msg>>>,
    receivers: Vec<Option<SharedReceiver<Msg>>>,
}

impl MeshEnds {
    /// Connects the ends inside the shard's executor. Each `connect` waits for the peer's end,
    /// so all are started at once (connecting one by one would deadlock two shards that each
    /// wait for the other).
    pub async fn connect(self, me: ShardId) -> (Mesh, Vec<ConnectedReceiver<Msg>>) {
        let senders: Vec<_> = self.senders.into_iter().map(|s| s.map(|s| glommio::spawn_local(s.connect()))).collect();
        let receivers: Vec<_> =
            self.receivers.into_iter().flatten().map(|r| glommio::spawn_local(r.connect())).collect();
        let mut connected_senders = Vec::with_capacity(senders.len());
        for s in senders {
            connected_senders.push(match s {
                Some(task) => Some(task.await),
                None => None,
            });
        }
        let mut connected_receivers = Vec::with_capacity(receivers.len());
        for task in receivers {
            connected_receivers.push(task.await);
        }
        let outstanding = (0..connected_senders.len()).map(|_| Cell::new(0)).collect();
        (
            Mesh { me, senders: connected_senders, outstanding, pending: RefCell::new(Pending::default()) },
            connected_receivers,
        )
    }
}

enum Answer {
    Infer(Result<Outcome>),
    Stats(serde_json::Value),
    Metrics(Box<Snapshot>),
}

/// What a shard does with its peers' requests.
pub trait Peer {
    fn execute(&self, job: InferJob) -> Result<Outcome>;
    fn stats(&self) -> serde_json::Value;
    fn snapshot(&self) -> Snapshot;
}

#[derive(Default)]
struct Pending {
    slots: Vec<PendingSlot>,
    free: Vec<u32>,
}

#[derive(Default)]
struct PendingSlot {
    in_use: bool,
    abandoned: bool,
    peer: usize,
    answer: Option<Answer>,
    waker: Option<Waker>,
}

pub struct Mesh {
    me: ShardId,
    senders: Vec<Option<ConnectedSender<Msg>>>,
    outstanding: Vec<Cell<usize>>,
    pending: RefCell<Pending>,
}

impl Mesh {
    pub fn me(&self) -> ShardId {
        self.me
    }

    /// Sends `job` to the shard that owns it and waits for the answer.
    pub async fn forward(&self, to: ShardId, job: InferJob) -> Result<Outcome> {
        let t = to.0 as usize;
        if self.outstanding[t].get() >= FORWARDS_MAX {
            return Err(Error::with(
                Kind::ResourceExhausted,
                format!("{FORWARDS_MAX} requests already waiting for shard {}", to.0),
            ));
        }
        let token = self.pending.borrow_mut().open(t);
        let msg = Msg::Infer { from: self.me, token, job };
        match self.wait(to, token, msg).await {
            Answer::Infer(r) => r,
            _ => unreachable!("a non-infer answer to an infer token"),
        }
    }

    /// Asks a peer for its statistics.
    pub async fn stats(&self, to: ShardId) -> serde_json::Value {
        let token = self.pending.borrow_mut().open(to.0 as usize);
        match self.wait(to, token, Msg::Stats { from: self.me, token }).await {
            Answer::Stats(v) => v,
            _ => unreachable!("a non-stats answer to a stats token"),
        }
    }

    /// Asks a peer for its metrics snapshot.
    pub async fn metrics(&self, to: ShardId) -> Snapshot {
        let token = self.pending.borrow_mut().open(to.0 as usize);
        match self.wait(to, token, Msg::Metrics { from: self.me, token }).await {
            Answer::Metrics(s) => *s,
            _ => unreachable!("a non-metrics answer to a metrics token"),
        }
    }

    async fn wait(&self, to: ShardId, token: u32, msg: Msg) -> Answer {
        let t = to.0 as usize;
        let sender = self.senders[t].as_ref().expect("no channel to self");
        if sender.try_send(msg).is_err() {
            // Cannot happen with the capacities above; fail the request rather than wait.
            self.pending.borrow_mut().close(token);
            return Answer::Infer(Err(Error::with(Kind::Internal, "cross-shard channel full")));
        }
        self.outstanding[t].set(self.outstanding[t].get() + 1);
        let guard = AbandonOnDrop { mesh: self, token, peer: t, done: false };
        let answer = poll_fn(|cx| {
            let mut p = self.pending.borrow_mut();
            let slot = &mut p.slots[token as usize];
            match slot.answer.take() {
                Some(a) => Poll::Ready(a),
                None => {
                    slot.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        let mut guard = guard;
        guard.done = true;
        self.outstanding[t].set(self.outstanding[t].get() - 1);
        self.pending.borrow_mut().close(token);
        answer
    }

    /// Handles one message from a peer.
    pub fn handle(&self, msg: Msg, peer: &impl Peer) {
        match msg {
            Msg::Infer { from, token, job } => {
                let result = peer.execute(job);
                self.reply(from, Msg::InferDone { token, result });
            }
            Msg::Stats { from, token } => self.reply(from, Msg::StatsDone { token, stats: peer.stats() }),
            Msg::Metrics { from, token } => {
                self.reply(from, Msg::MetricsDone { token, snapshot: Box::new(peer.snapshot()) })
            }
            Msg::InferDone { token, result } => self.complete(token, Answer::Infer(result)),
            Msg::StatsDone { token, stats } => self.complete(token, Answer::Stats(stats)),
            Msg::MetricsDone { token, snapshot } => self.complete(token, Answer::Metrics(snapshot)),
        }
    }

    fn reply(&self, to: ShardId, msg: Msg) {
        let sender = self.senders[to.0 as usize].as_ref().expect("reply to self");
        // The peer keeps at most FORWARDS_MAX requests outstanding here, so there is room.
        assert!(sender.try_send(msg).is_ok(), "reply channel to shard {} full", to.0);
    }

    fn complete(&self, token: u32, answer: Answer) {
        let mut p = self.pending.borrow_mut();
        let slot = &mut p.slots[token as usize];
        assert!(slot.in_use, "answer for a token not in use");
        if slot.abandoned {
            let peer = slot.peer;
            p.close(token);
            let o = &self.outstanding[peer];
            o.set(o.get() - 1);
            return;
        }
        slot.answer = Some(answer);
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }
}

/// If the waiting request is dropped (its client went away), the slot stays reserved until the
/// answer arrives; only then are the slot freed and the outstanding count lowered, so the
/// channel-capacity argument above holds for abandoned requests too.
struct AbandonOnDrop<'a> {
    mesh: &'a Mesh,
    token: u32,
    peer: usize,
    done: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut p = self.mesh.pending.borrow_mut();
            let slot = &mut p.slots[self.token as usize];
            if slot.answer.is_some() {
                p.close(self.token);
                let o = &self.mesh.outstanding[self.peer];
                o.set(o.get() - 1);
            } else {
                slot.abandoned = true;
                slot.waker = None;
            }
        }
    }
}

impl Pending {
    fn open(&mut self, peer: usize) -> u32 {
        let token = match self.free.pop() {
            Some(t) => t,
            None => {
                self.slots.push(PendingSlot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[token as usize];
        debug_assert!(!s.in_use);
        s.in_use = true;
        s.abandoned = false;
        s.peer = peer;
        s.answer = None;
        s.waker = None;
        token
    }

    fn close(&mut self, token: u32) {
        let s = &mut self.slots[token as usize];
        assert!(s.in_use, "closing a free token");
        s.in_use = false;
        s.answer = None;
        s.waker = None;
        self.free.push(token);
    }
}
