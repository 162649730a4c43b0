//! Cross-shard messaging: one bounded glommio `shared_channel` per ordered pair of shards,
//! carrying one enum of messages. A request that arrives on a shard that does not own its
//! sequence travels to the owner and its answer comes back the same way; state never travels.
//!
//! Bounds:
//! - a shard keeps at most `MeshLimits::forwarded_per_peer` forwarded steps of its own
//!   outstanding at each peer (`--mesh_max_forwarded_steps`), and besides them at most
//!   `CONTROL_PER_PEER_MAX` statistics or metrics requests. One more step waits for room, first
//!   come first served (`room.rs`), up to `MeshLimits::forward_wait`
//!   (`--mesh_forward_wait_ms`), and at most `WAITING_PER_FORWARDED` times the bound wait; past
//!   either it is refused with RESOURCE_EXHAUSTED, for that request only. So a peer held up for
//!   a moment (a stall of a few hundred ms, a burst) delays the steps sent to it instead of
//!   failing them, and one that stays behind still sheds load. One more statistics or metrics
//!   request is refused at once. So a peer swamped with steps still answers a scrape (behind the
//!   steps already queued) rather than refusing it: an operator sees the overload instead of
//!   losing the metrics to it;
//! - a request stays outstanding until its answer arrives, even when its waiter was dropped (its
//!   client went away), so the count never undercounts what is in flight;
//! - the channel from A to B carries only A's requests to B (at most `per_peer()`, both kinds
//!   together) and A's answers to B's requests (at most `per_peer()`, by B's own bound: every
//!   shard has the same limits),
//!   so a capacity of twice that means a send never finds the channel full. Should it ever (a
//!   bug), a request fails with RESOURCE_EXHAUSTED and an answer waits for room: neither is
//!   lost and nothing panics.
//!
//! Answers are matched to waiting requests by a `Token`: an index into the origin shard's local
//! table of pending requests plus that slot's generation, so an answer for a slot that has since
//! been reused is recognised and dropped (no cross-thread oneshot, no `Arc` per request).

use super::room::Room;
use super::router::ShardId;
use crate::error::{Error, Kind, Result};
use crate::metrics::Snapshot;
use crate::request::{InferJob, Outcome};
use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender};
use glommio::{GlommioError, ResourceType};
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::Duration;

/// Forwarded steps one shard may have outstanding at one peer, by default.
pub const FORWARDED_PER_PEER_DEFAULT: usize = crate::config::MESH_FORWARDED_STEPS_DEFAULT;
/// How long a step waits for room at a peer whose steps' bound is full, by default.
pub const FORWARD_WAIT_DEFAULT: Duration = Duration::from_millis(crate::config::MESH_FORWARD_WAIT_MS_DEFAULT);
/// Steps that may wait for room at one peer, as a multiple of the forwarded steps' bound; one
/// more is refused at once.
pub const WAITING_PER_FORWARDED: usize = 4;
/// Statistics and metrics requests one shard may have outstanding at one peer, besides its steps.
pub const CONTROL_PER_PEER_MAX: usize = 16;

/// The mesh's bounds, the same on every shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshLimits {
    /// Forwarded steps outstanding per peer (`--mesh_max_forwarded_steps`).
    pub forwarded_per_peer: usize,
    /// How long one more step waits for room (`--mesh_forward_wait_ms`; zero: refused at once).
    pub forward_wait: Duration,
}

impl Default for MeshLimits {
    fn default() -> MeshLimits {
        MeshLimits { forwarded_per_peer: FORWARDED_PER_PEER_DEFAULT, forward_wait: FORWARD_WAIT_DEFAULT }
    }
}

impl MeshLimits {
    /// Requests of both kinds one shard may have outstanding at one peer.
    fn per_peer(&self) -> usize {
        self.forwarded_per_peer + CONTROL_PER_PEER_MAX
    }

    /// Steps that may wait for room at one peer.
    pub fn waiting_per_peer(&self) -> usize {
        WAITING_PER_FORWARDED * self.forwarded_per_peer
    }
}

/// Names a pending request on the shard that sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    index: u32,
    generation: u32,
}

pub enum Msg {
    Request { from: ShardId, token: Token, body: Request },
    Answer { token: Token, body: Answer },
}

/// What one shard asks of another.
pub enum Request {
    Infer(InferJob),
    Stats,
    Metrics,
}

/// The answer to a `Request`, of the same kind.
pub enum Answer {
    Infer(Result<Outcome>),
    Stats(serde_json::Value),
    Metrics(Box<Snapshot>),
}

/// What a shard does with its peers' requests.
pub trait Peer {
    /// Runs a forwarded job; None when it was queued for a batch, whose run answers it through
    /// `Mesh::answer_infer` with `from` and `token`.
    fn execute(&self, job: InferJob, from: ShardId, token: Token) -> Option<Result<Outcome>>;
    fn stats(&self) -> serde_json::Value;
    fn snapshot(&self) -> Snapshot;
}

/// The unconnected ends of every channel, made on the main thread before the shards start.
pub struct MeshPlan {
    /// senders[from][to], receivers[to][from]; None on the diagonal.
    senders: Vec<Vec<Option<SharedSender<Msg>>>>,
    receivers: Vec<Vec<Option<SharedReceiver<Msg>>>>,
    limits: MeshLimits,
}

impl MeshPlan {
    pub fn new(shards: usize, limits: MeshLimits) -> MeshPlan {
        let mut senders: Vec<Vec<Option<SharedSender<Msg>>>> =
            (0..shards).map(|_| (0..shards).map(|_| None).collect()).collect();
        let mut receivers: Vec<Vec<Option<SharedReceiver<Msg>>>> =
            (0..shards).map(|_| (0..shards).map(|_| None).collect()).collect();
        for from in 0..shards {
            for to in 0..shards {
                if from != to {
                    let (tx, rx) = glommio::channels::shared_channel::new_bounded(2 * limits.per_peer());
                    senders[from][to] = Some(tx);
                    receivers[to][from] = Some(rx);
                }
            }
        }
        MeshPlan { senders, receivers, limits }
    }

    /// The ends that belong to `shard`: its senders to every peer and receivers from every peer.
    pub fn take(&mut self, shard: usize) -> MeshEnds {
        MeshEnds {
            senders: self.senders[shard].iter_mut().map(Option::take).collect(),
            receivers: self.receivers[shard].iter_mut().map(Option::take).collect(),
            limits: self.limits,
        }
    }
}

pub struct MeshEnds {
    senders: Vec<Option<SharedSender<Msg>>>,
    receivers: Vec<Option<SharedReceiver<Msg>>>,
    limits: MeshLimits,
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
        let peers = connected_senders.len();
        let outstanding = (0..peers).map(|_| [Cell::new(0), Cell::new(0)]).collect();
        let room = (0..peers).map(|_| Room::new()).collect();
        let pending = Pending::with_capacity(peers.saturating_sub(1) * self.limits.per_peer());
        let mesh = Mesh {
            me,
            senders: connected_senders,
            outstanding,
            room,
            limits: self.limits,
            pending: RefCell::new(pending),
        };
        (mesh, connected_receivers)
    }
}

pub struct Mesh {
    me: ShardId,
    senders: Vec<Option<ConnectedSender<Msg>>>,
    /// Requests of this shard outstanding at each peer, answered or not yet (see the bounds):
    /// `[steps, control]`.
    outstanding: Vec<[Cell<usize>; 2]>,
    /// By peer: the steps waiting for room under its steps' bound.
    room: Vec<Room>,
    limits: MeshLimits,
    pending: RefCell<Pending>,
}

impl Mesh {
    pub fn me(&self) -> ShardId {
        self.me
    }

    /// Steps of this shard waiting for room at `peer` (for tests).
    pub fn waiting(&self, peer: ShardId) -> usize {
        self.room.get(peer.0 as usize).map_or(0, Room::waiting)
    }

    /// Requests of this shard outstanding at `peer` (for tests and statistics).
    pub fn outstanding(&self, peer: ShardId) -> usize {
        self.outstanding.get(peer.0 as usize).map_or(0, |[steps, control]| steps.get() + control.get())
    }

    /// Sends `job` to the shard that owns it and waits for the answer.
    pub async fn forward(&self, to: ShardId, job: InferJob) -> Result<Outcome> {
        match self.call(to, Request::Infer(job)).await? {
            Answer::Infer(r) => r,
            _ => Err(mismatched_answer(to)),
        }
    }

    /// Asks a peer for its statistics.
    pub async fn stats(&self, to: ShardId) -> Result<serde_json::Value> {
        match self.call(to, Request::Stats).await? {
            Answer::Stats(v) => Ok(v),
            _ => Err(mismatched_answer(to)),
        }
    }

    /// Asks a peer for its metrics snapshot.
    pub async fn metrics(&self, to: ShardId) -> Result<Snapshot> {
        match self.call(to, Request::Metrics).await? {
            Answer::Metrics(s) => Ok(*s),
            _ => Err(mismatched_answer(to)),
        }
    }

    /// Sends one request to a peer and waits for its answer, within the bounds above.
    async fn call(&self, to: ShardId, body: Request) -> Result<Answer> {
        let t = to.0 as usize;
        let Some(sender) = self.senders.get(t).and_then(Option::as_ref) else {
            crate::log!(Error, "shard {}: no channel to shard {}", self.me.0, to.0);
            return Err(Error::with(Kind::Internal, format!("no channel to shard {}", to.0)));
        };
        let kind = usize::from(!matches!(body, Request::Infer(_)));
        let (Some(counts), Some(room)) = (self.outstanding.get(t), self.room.get(t)) else {
            return Err(Error::with(Kind::Internal, format!("no channel to shard {}", to.0)));
        };
        let (count, max) = (&counts[kind], [self.limits.forwarded_per_peer, CONTROL_PER_PEER_MAX][kind]);
        if kind == 1 && count.get() >= max {
            return Err(Error::with(
                Kind::ResourceExhausted,
                format!("{max} statistics or metrics requests already waiting for shard {}", to.0),
            ));
        }
        if kind == 0 && (count.get() >= max || room.waiting() > 0) {
            let queued = self.limits.waiting_per_peer();
            if room.waiting() >= queued {
                return Err(Error::with(
                    Kind::ResourceExhausted,
                    format!("{max} requests already waiting for shard {} and {queued} more queued", to.0),
                ));
            }
            let turn = async {
                room.wait(|| count.get() < max).await;
                true
            };
            let wait = self.limits.forward_wait;
            let late = async {
                glommio::timer::sleep(wait).await;
                false
            };
            if !futures_lite::FutureExt::or(turn, late).await {
                return Err(Error::with(
                    Kind::ResourceExhausted,
                    format!(
                        "{max} requests already waiting for shard {}, none answered within {} ms",
                        to.0,
                        wait.as_millis()
                    ),
                ));
            }
        }
        let token = self.pending.borrow_mut().open(t, kind);
        if sender.try_send(Msg::Request { from: self.me, token, body }).is_err() {
            // Not reachable while the bounds hold; refuse this request rather than wait.
            self.pending.borrow_mut().close(token);
            crate::log!(Warning, "shard {}: channel to shard {} full", self.me.0, to.0);
            return Err(Error::with(Kind::ResourceExhausted, format!("channel to shard {} full", to.0)));
        }
        count.set(count.get() + 1);
        let mut guard = AbandonOnDrop { mesh: self, token, done: false };
        let answer = poll_fn(|cx| self.pending.borrow_mut().poll_answer(token, cx.waker())).await;
        guard.done = true;
        self.finish(token);
        answer
    }

    /// Handles one message from a peer; a request's answer goes back to the requester.
    pub async fn handle(&self, msg: Msg, peer: &impl Peer) {
        match msg {
            Msg::Request { from, token, body } => {
                let body = match body {
                    Request::Infer(job) => match peer.execute(job, from, token) {
                        Some(r) => Answer::Infer(r),
                        None => return,
                    },
                    Request::Stats => Answer::Stats(peer.stats()),
                    Request::Metrics => Answer::Metrics(Box::new(peer.snapshot())),
                };
                self.reply(from, Msg::Answer { token, body }).await;
            }
            Msg::Answer { token, body } => self.complete(token, Ok(body)),
        }
    }

    /// Answers a forwarded job outside `handle` (its batch ran later). The channel always has
    /// room: it holds twice `per_peer()`, the peer's requests to us and our
    /// answers to it are each at most that, so a full channel means a broken bound, logged.
    pub fn answer_infer(&self, to: ShardId, token: Token, r: Result<Outcome>) {
        let Some(sender) = self.senders.get(to.0 as usize).and_then(Option::as_ref) else {
            crate::log!(Error, "shard {}: an answer for shard {} has no channel; dropped", self.me.0, to.0);
            return;
        };
        if sender.try_send(Msg::Answer { token, body: Answer::Infer(r) }).is_err() {
            crate::log!(Error, "shard {}: answer channel to shard {} full or gone; answer dropped", self.me.0, to.0);
        }
    }

    async fn reply(&self, to: ShardId, msg: Msg) {
        let Some(sender) = self.senders.get(to.0 as usize).and_then(Option::as_ref) else {
            crate::log!(Error, "shard {}: an answer for shard {} has no channel; dropped", self.me.0, to.0);
            return;
        };
        match sender.try_send(msg) {
            Ok(()) => {}
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                // Not reachable while the peer keeps its bound; never drop an answer its
                // requester waits for: wait for room instead (fails only if the peer is gone).
                crate::log!(Warning, "shard {}: answer channel to shard {} full; waiting for room", self.me.0, to.0);
                if sender.send(msg).await.is_err() {
                    crate::log!(Error, "shard {}: shard {} went away; answer dropped", self.me.0, to.0);
                }
            }
            Err(_) => crate::log!(Error, "shard {}: shard {} went away; answer dropped", self.me.0, to.0),
        }
    }

    fn complete(&self, token: Token, answer: Result<Answer>) {
        let mut p = self.pending.borrow_mut();
        let Some(slot) = p.slot_mut(token) else {
            // An answer for no pending request: a bug in a peer; ignore it rather than crash.
            crate::log!(Error, "shard {}: answer for unknown token {token:?} dropped", self.me.0);
            return;
        };
        if slot.abandoned {
            let (peer, kind) = (slot.peer, slot.kind);
            p.close(token);
            drop(p);
            self.release(peer, kind);
            return;
        }
        slot.answer = Some(answer);
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }

    /// The waiter has its answer: free its slot and its place in the peer's bound.
    fn finish(&self, token: Token) {
        let slot = {
            let mut p = self.pending.borrow_mut();
            let slot = p.slot_mut(token).map(|s| (s.peer, s.kind));
            p.close(token);
            slot
        };
        if let Some((peer, kind)) = slot {
            self.release(peer, kind);
        }
    }

    fn release(&self, peer: usize, kind: usize) {
        if let Some(o) = self.outstanding.get(peer).and_then(|o| o.get(kind)) {
            o.set(o.get().saturating_sub(1));
        }
        if kind == 0 {
            if let Some(room) = self.room.get(peer) {
                room.notify_one();
            }
        }
    }
}

fn mismatched_answer(to: ShardId) -> Error {
    crate::log!(Error, "shard {} answered with the wrong kind of answer", to.0);
    Error::with(Kind::Internal, "mismatched cross-shard answer")
}

/// If the waiting request is dropped (its client went away), the slot stays reserved until the
/// answer arrives; only then are the slot freed and the outstanding count lowered, so the
/// channel-capacity argument above holds for abandoned requests too.
struct AbandonOnDrop<'a> {
    mesh: &'a Mesh,
    token: Token,
    done: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let answered = {
            let mut p = self.mesh.pending.borrow_mut();
            match p.slot_mut(self.token) {
                Some(slot) if slot.answer.is_some() => true,
                Some(slot) => {
                    slot.abandoned = true;
                    slot.waker = None;
                    false
                }
                None => false,
            }
        };
        if answered {
            self.mesh.finish(self.token);
        }
    }
}

/// The origin shard's table of pending requests: a slab of slots with a generation each.
struct Pending {
    slots: Vec<PendingSlot>,
    free: Vec<u32>,
}

#[derive(Default)]
struct PendingSlot {
    generation: u32,
    in_use: bool,
    abandoned: bool,
    peer: usize,
    /// 0: a forwarded step; 1: a statistics or metrics request (which bound it counts in).
    kind: usize,
    answer: Option<Result<Answer>>,
    waker: Option<Waker>,
}

impl Pending {
    fn with_capacity(n: usize) -> Pending {
        Pending { slots: Vec::with_capacity(n), free: Vec::with_capacity(n) }
    }

    fn open(&mut self, peer: usize, kind: usize) -> Token {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(PendingSlot::default());
                // Bounded by peers × per_peer(), far below u32::MAX.
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[index as usize];
        s.in_use = true;
        s.abandoned = false;
        s.peer = peer;
        s.kind = kind;
        s.answer = None;
        s.waker = None;
        Token { index, generation: s.generation }
    }

    /// The slot `token` names, if it is still the request the token was made for.
    fn slot_mut(&mut self, token: Token) -> Option<&mut PendingSlot> {
        self.slots.get_mut(token.index as usize).filter(|s| s.in_use && s.generation == token.generation)
    }

    fn poll_answer(&mut self, token: Token, waker: &Waker) -> Poll<Result<Answer>> {
        let Some(slot) = self.slot_mut(token) else {
            return Poll::Ready(Err(Error::with(Kind::Internal, "cross-shard request lost")));
        };
        match slot.answer.take() {
            Some(a) => Poll::Ready(a),
            None => {
                if !slot.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    slot.waker = Some(waker.clone());
                }
                Poll::Pending
            }
        }
    }

    /// Frees the slot `token` names; a stale token frees nothing.
    fn close(&mut self, token: Token) {
        let Some(s) = self.slot_mut(token) else { return };
        s.in_use = false;
        s.answer = None;
        s.waker = None;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(token.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_outlives_nothing_its_slot_was_reused_for() {
        let mut p = Pending::with_capacity(2);
        let a = p.open(1, 0);
        p.close(a);
        let b = p.open(1, 0);
        assert_eq!(a.index, b.index, "the slot is reused");
        assert_ne!(a, b, "with a new generation");
        assert!(p.slot_mut(a).is_none(), "the old token names nothing");
        assert!(p.slot_mut(b).is_some());
        p.close(a); // stale: frees nothing
        assert!(p.slot_mut(b).is_some());
        assert!(p.free.is_empty());
    }
}
