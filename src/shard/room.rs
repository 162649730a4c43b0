//! Waiting for room under a bound, on one shard: the queue of tasks that found a bound full and
//! wait, first come first served, for a place to free. The bound itself (a count and its maximum)
//! stays with its owner, which asks `Room` to let the next waiter try whenever it frees a place
//! (`notify_one`). A waiter is a future, so the caller bounds the wait in time by racing it with
//! a timer, and a waiter dropped before its turn leaves the queue; one dropped after it was let
//! through, without taking the place, lets the next one through instead, so a place freed is
//! never lost to a waiter that went away.
//!
//! The mesh uses it for the steps a shard forwards to a peer whose bound of outstanding steps is
//! full: they wait a bounded time for room rather than fail at the first full moment.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct Entry {
    /// Let through by `notify_one`: its turn to look for room.
    notified: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// The waiters of one bound, oldest first.
#[derive(Default)]
pub struct Room {
    queue: RefCell<VecDeque<Rc<Entry>>>,
}

impl Room {
    pub fn new() -> Room {
        Room::default()
    }

    /// Tasks waiting (not counting one let through that has not run yet).
    pub fn waiting(&self) -> usize {
        self.queue.borrow().len()
    }

    /// A place was freed: lets the oldest waiter look for it.
    pub fn notify_one(&self) {
        let Some(entry) = self.queue.borrow_mut().pop_front() else { return };
        entry.notified.set(true);
        let waker = entry.waker.borrow_mut().take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Waits for this task's turn and a place: ready once `free()` is true on the turn, and then
    /// the caller takes the place at once (before awaiting anything else). Join the queue only
    /// when the place is not free or others wait already, so no one is overtaken.
    pub fn wait<F: Fn() -> bool + Unpin>(&self, free: F) -> Wait<'_, F> {
        Wait { room: self, free, entry: None, done: false }
    }
}

/// See [`Room::wait`].
pub struct Wait<'a, F: Fn() -> bool + Unpin> {
    room: &'a Room,
    free: F,
    entry: Option<Rc<Entry>>,
    done: bool,
}

impl<F: Fn() -> bool + Unpin> Future for Wait<'_, F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(());
        }
        match &this.entry {
            None => {
                let entry = Rc::new(Entry::default());
                *entry.waker.borrow_mut() = Some(cx.waker().clone());
                this.room.queue.borrow_mut().push_back(entry.clone());
                this.entry = Some(entry);
                Poll::Pending
            }
            Some(entry) if entry.notified.get() => {
                if (this.free)() {
                    this.done = true;
                    this.entry = None;
                    return Poll::Ready(());
                }
                // Someone new took the place first: back to the head of the queue.
                entry.notified.set(false);
                *entry.waker.borrow_mut() = Some(cx.waker().clone());
                this.room.queue.borrow_mut().push_front(entry.clone());
                Poll::Pending
            }
            Some(entry) => {
                let mut w = entry.waker.borrow_mut();
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl<F: Fn() -> bool + Unpin> Drop for Wait<'_, F> {
    fn drop(&mut self) {
        let Some(entry) = self.entry.take() else { return };
        if entry.notified.get() {
            // Let through but gone: the place goes to the next waiter.
            self.room.notify_one();
        } else {
            self.room.queue.borrow_mut().retain(|e| !Rc::ptr_eq(e, &entry));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn waiters_get_freed_places_in_arrival_order() {
        let room = Room::new();
        let places = Cell::new(0);
        let mut waits: Vec<_> = (0..3).map(|_| room.wait(|| places.get() > 0)).collect();
        for w in waits.iter_mut() {
            assert!(poll(w).is_pending());
        }
        assert_eq!(room.waiting(), 3);
        places.set(1);
        room.notify_one();
        assert!(poll(&mut waits[1]).is_pending(), "not its turn");
        assert!(poll(&mut waits[2]).is_pending(), "not its turn");
        assert!(poll(&mut waits[0]).is_ready(), "the oldest goes first");
        assert_eq!(room.waiting(), 2);
    }

    #[test]
    fn a_waiter_let_through_to_a_taken_place_keeps_its_turn() {
        let room = Room::new();
        let places = Cell::new(0);
        let mut first = room.wait(|| places.get() > 0);
        let mut second = room.wait(|| places.get() > 0);
        assert!(poll(&mut first).is_pending());
        assert!(poll(&mut second).is_pending());
        room.notify_one(); // a place freed, then taken by a newcomer before `first` ran
        assert!(poll(&mut first).is_pending());
        assert_eq!(room.waiting(), 2, "back in the queue");
        places.set(1);
        room.notify_one();
        assert!(poll(&mut second).is_pending(), "first is still first");
        assert!(poll(&mut first).is_ready());
    }

    #[test]
    fn a_dropped_waiter_leaves_the_queue_and_passes_on_a_place_it_was_given() {
        let room = Room::new();
        let places = Cell::new(1);
        let mut waits: Vec<_> = (0..3).map(|_| room.wait(|| places.get() > 0)).collect();
        for w in waits.iter_mut() {
            assert!(poll(w).is_pending());
        }
        drop(waits.remove(1)); // gone before its turn
        assert_eq!(room.waiting(), 2);
        room.notify_one();
        drop(waits.remove(0)); // let through, gone without the place
        assert_eq!(room.waiting(), 0, "the place went on to the last waiter");
        assert!(poll(&mut waits[0]).is_ready());
    }
}
