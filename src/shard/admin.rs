//! An operator's requests to the lifecycle controller (reload the configuration, load or unload
//! a model), as a front end on any shard makes them: the shard sends the request to the
//! controller's thread and the front end waits, without blocking the shard, until the
//! controller's answer comes back through the shard's control channel (`Shard::admin_answer`).
//! The controller publishes the new model status to every shard before it answers, so a front
//! end that reads its catalog after the answer sees the state the request left.
//!
//! Bounded: at most `WAITING_MAX` requests wait per shard; one more is refused at once.

use super::router::ShardId;
use crate::error::{Error, Kind, Result};
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::{Context, Poll, Waker};

/// Operator requests waiting for the controller, per shard.
pub const WAITING_MAX: usize = 16;

/// What an operator asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminRequest {
    /// Re-read the configuration file and the version directories now (OVMS's config reload,
    /// TF-Serving's HandleReloadConfigRequest).
    Reload,
    /// Serve this model of the configuration again (Triton's RepositoryModelLoad): clears an
    /// earlier unload, then reloads.
    Load(String),
    /// Stop serving this model (Triton's RepositoryModelUnload): every version goes UNLOADING,
    /// its live sequences may finish, and it stays out until a load or a restart.
    Unload(String),
}

/// Why an operator request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminFailure {
    /// The configuration file cannot be read.
    ConfigUnreadable,
    /// The configuration file is not a valid configuration.
    ConfigInvalid,
    /// A model or version failed to load (what was serving stays).
    LoadFailed,
    /// The model named is not in the configuration.
    UnknownModel,
}

/// The controller's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminAnswer {
    /// Whether the request changed what is served (a version loaded, unloading or reconfigured).
    pub changed: bool,
    /// What failed, with the controller's message (None: everything asked was done).
    pub failure: Option<(AdminFailure, String)>,
}

/// A request as it travels to the controller: from which shard, under which ticket.
#[derive(Debug)]
pub struct AdminCall {
    pub shard: ShardId,
    pub ticket: u64,
    pub request: AdminRequest,
}

struct Waiting {
    ticket: u64,
    answer: Option<AdminAnswer>,
    waker: Option<Waker>,
}

/// A shard's end of the operator channel.
#[derive(Default)]
pub struct Admin {
    to_controller: RefCell<Option<mpsc::Sender<AdminCall>>>,
    waiting: RefCell<Vec<Waiting>>,
    next_ticket: std::cell::Cell<u64>,
}

impl Admin {
    /// Connects this shard to the controller (the server does, at start-up).
    pub fn connect(&self, to_controller: mpsc::Sender<AdminCall>) {
        *self.to_controller.borrow_mut() = Some(to_controller);
    }

    /// Sends `request` to the controller and waits for its answer.
    pub fn call(&self, shard: ShardId, request: AdminRequest) -> Result<AdminWait<'_>> {
        let tx = self.to_controller.borrow();
        let Some(tx) = tx.as_ref() else {
            return Err(Error::with(Kind::Internal, "no lifecycle controller runs in this process"));
        };
        let mut waiting = self.waiting.borrow_mut();
        if waiting.len() >= WAITING_MAX {
            return Err(Error::with(Kind::ResourceExhausted, format!("{WAITING_MAX} operator requests already wait")));
        }
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket.wrapping_add(1));
        tx.send(AdminCall { shard, ticket, request })
            .map_err(|_| Error::with(Kind::Internal, "the lifecycle controller has stopped"))?;
        waiting.push(Waiting { ticket, answer: None, waker: None });
        Ok(AdminWait { admin: self, ticket })
    }

    /// Delivers the controller's answer to the request waiting under `ticket` (none: dropped).
    pub fn answer(&self, ticket: u64, answer: AdminAnswer) {
        let mut waiting = self.waiting.borrow_mut();
        if let Some(w) = waiting.iter_mut().find(|w| w.ticket == ticket) {
            w.answer = Some(answer);
            if let Some(waker) = w.waker.take() {
                waker.wake();
            }
        }
    }
}

/// An operator request's answer, once the controller has sent it.
pub struct AdminWait<'a> {
    admin: &'a Admin,
    ticket: u64,
}

impl Future for AdminWait<'_> {
    type Output = AdminAnswer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<AdminAnswer> {
        let mut waiting = self.admin.waiting.borrow_mut();
        let Some(at) = waiting.iter().position(|w| w.ticket == self.ticket) else {
            return Poll::Pending;
        };
        match waiting[at].answer.take() {
            Some(a) => {
                waiting.swap_remove(at);
                Poll::Ready(a)
            }
            None => {
                waiting[at].waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for AdminWait<'_> {
    fn drop(&mut self) {
        // Answered or not, the ticket is done: a late answer finds nobody and is dropped.
        if let Ok(mut waiting) = self.admin.waiting.try_borrow_mut() {
            waiting.retain(|w| w.ticket != self.ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_reaches_its_waiter_and_the_table_is_bounded() {
        let admin = Admin::default();
        assert_eq!(admin.call(ShardId(0), AdminRequest::Reload).err().map(|e| e.kind), Some(Kind::Internal));
        let (tx, rx) = mpsc::channel();
        admin.connect(tx);
        let waits: Vec<AdminWait<'_>> =
            (0..WAITING_MAX).map(|_| admin.call(ShardId(1), AdminRequest::Reload).unwrap()).collect();
        let e = admin.call(ShardId(1), AdminRequest::Reload).err().unwrap();
        assert_eq!(e.kind, Kind::ResourceExhausted);
        let calls: Vec<AdminCall> = rx.try_iter().collect();
        assert_eq!(calls.len(), WAITING_MAX);
        assert!(calls.iter().all(|c| c.shard == ShardId(1) && c.request == AdminRequest::Reload));
        let answer = AdminAnswer { changed: true, failure: None };
        admin.answer(calls[3].ticket, answer.clone());
        let mut waits = waits;
        let third = waits.swap_remove(3);
        assert_eq!(futures_lite::future::block_on(third), answer);
        drop(waits);
        assert!(admin.waiting.borrow().is_empty(), "dropped waiters leave nothing behind");
        admin.answer(calls[0].ticket, AdminAnswer { changed: false, failure: None });
        assert!(admin.waiting.borrow().is_empty(), "a late answer is dropped");
    }
}
