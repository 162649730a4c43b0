//! A model's infer requests on one shard, as a cache of resident sequence states.
//!
//! Each request either holds one live sequence's state in its variables ("resident") or is free.
//! A step on a sequence that is not resident takes, in this order: a free request; a new request,
//! while the pool is below its cap (the memory budget divided by one request's memory); or the
//! least recently stepped resident request, whose sequence is then swapped out (its state saved
//! into the sequence's own buffer by the caller). So with the budget large enough, every active
//! sequence keeps its state resident and no step copies state; past it, the coldest sequences
//! pay the copies.
//!
//! Every operation is O(1): free requests on a stack, resident ones on an intrusive list in
//! least-recently-stepped order.

use super::sequences::SlotIdx;

const NIL: u32 = u32::MAX;

/// Most infer requests one model may hold on one shard (a sequence records its request in 16 bits).
pub const REQUESTS_MAX: usize = u16::MAX as usize;

struct Entry<R> {
    req: R,
    resident: Option<SlotIdx>,
    prev: u32,
    next: u32,
}

pub struct Pool<R> {
    entries: Vec<Entry<R>>,
    /// Requests with no resident sequence.
    free: Vec<u32>,
    /// Least recently stepped resident request.
    head: u32,
    /// Most recently stepped resident request.
    tail: u32,
    max: usize,
    /// Round robin for stateless steps.
    next_stateless: usize,
    /// A request taken and not yet assigned or put back: if the step panics in between,
    /// `recover` returns it to the free stack instead of losing it.
    pending: Option<u32>,
}

/// Where a step's request came from.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// A request that held no sequence (free, or just created).
    Free(usize),
    /// The least recently stepped resident request; the caller must save `evicted`'s state out
    /// of it before using it.
    Evicted { request: usize, evicted: SlotIdx },
}

impl<R> Pool<R> {
    /// A pool of the `initial` requests given, growing up to `max` (at least `initial.len()`).
    pub fn new(initial: Vec<R>, max: usize) -> Pool<R> {
        let max = max.clamp(initial.len().max(1), REQUESTS_MAX);
        let entries: Vec<Entry<R>> =
            initial.into_iter().map(|req| Entry { req, resident: None, prev: NIL, next: NIL }).collect();
        let free = (0..entries.len() as u32).rev().collect();
        Pool { entries, free, head: NIL, tail: NIL, max, next_stateless: 0, pending: None }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests holding a sequence's state.
    pub fn resident(&self) -> usize {
        self.entries.len() - self.free.len() - usize::from(self.pending.is_some())
    }

    pub fn request_mut(&mut self, r: usize) -> &mut R {
        &mut self.entries[r].req
    }

    pub fn resident_in(&self, r: usize) -> Option<SlotIdx> {
        self.entries[r].resident
    }

    /// A request for a step that carries no state (stateless models): round robin.
    pub fn stateless(&mut self) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let r = self.next_stateless % self.entries.len();
        self.next_stateless = r + 1;
        Some(r)
    }

    /// A request for a sequence that is not resident: free, else new (`create`, while below the
    /// cap; a failure to create falls back to eviction), else the least recently stepped.
    /// `None` only when the pool is empty and `create` fails.
    pub fn take<E>(&mut self, create: impl FnOnce() -> Result<R, E>) -> (Option<Taken>, Option<E>) {
        let (taken, error) = self.take_inner(create);
        self.pending = taken.as_ref().map(|t| match t {
            Taken::Free(r) | Taken::Evicted { request: r, .. } => *r as u32,
        });
        (taken, error)
    }

    fn take_inner<E>(&mut self, create: impl FnOnce() -> Result<R, E>) -> (Option<Taken>, Option<E>) {
        if let Some(r) = self.free.pop() {
            return (Some(Taken::Free(r as usize)), None);
        }
        let mut error = None;
        if self.entries.len() < self.max {
            match create() {
                Ok(req) => {
                    self.entries.push(Entry { req, resident: None, prev: NIL, next: NIL });
                    return (Some(Taken::Free(self.entries.len() - 1)), None);
                }
                Err(e) => error = Some(e),
            }
        }
        if self.head == NIL {
            return (None, error);
        }
        let r = self.head;
        self.unlink(r);
        let evicted = self.entries[r as usize].resident.take();
        match evicted {
            Some(evicted) => (Some(Taken::Evicted { request: r as usize, evicted }), error),
            // A request on the resident list always holds a sequence (`assign`/`release`).
            None => (Some(Taken::Free(r as usize)), error),
        }
    }

    /// Records that request `r` (just taken) now holds `slot`'s state: the most recently stepped.
    pub fn assign(&mut self, r: usize, slot: SlotIdx) {
        let e = &mut self.entries[r];
        assert!(
            e.resident.is_none() && e.prev == NIL && e.next == NIL && self.tail != r as u32,
            "request {r} assigned twice"
        );
        e.resident = Some(slot);
        self.link_tail(r as u32);
        self.pending = None;
    }

    /// Returns a request just taken, unassigned (its sequence's restore failed): it is free.
    pub fn put_back(&mut self, r: usize) {
        assert!(self.entries[r].resident.is_none() && self.pending == Some(r as u32), "request {r} was not just taken");
        self.free.push(r as u32);
        self.pending = None;
    }

    /// After a panic in a step: a request taken and never assigned goes back to the free stack,
    /// and every request whose resident sequence `dead` says is gone is freed.
    pub fn recover(&mut self, dead: impl Fn(SlotIdx) -> bool) {
        if let Some(r) = self.pending.take() {
            if self.entries[r as usize].resident.is_none() && !self.free.contains(&r) {
                self.free.push(r);
            }
        }
        for r in 0..self.entries.len() {
            if self.entries[r].resident.is_some_and(&dead) {
                self.release(r);
            }
        }
    }

    /// A step on the sequence resident in `r`: it becomes the most recently stepped.
    pub fn touch(&mut self, r: usize) {
        // Unlinking an entry that is not on the list would cut the list at its head.
        assert!(self.entries[r].resident.is_some(), "request {r} touched but holds no sequence");
        if self.tail != r as u32 {
            self.unlink(r as u32);
            self.link_tail(r as u32);
        }
    }

    /// The sequence resident in `r` ended (or its state is no longer trusted): `r` is free.
    pub fn release(&mut self, r: usize) {
        if self.entries[r].resident.take().is_some() {
            self.unlink(r as u32);
            self.free.push(r as u32);
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = (self.entries[i as usize].prev, self.entries[i as usize].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        self.entries[i as usize].prev = NIL;
        self.entries[i as usize].next = NIL;
    }

    fn link_tail(&mut self, i: u32) {
        self.entries[i as usize].prev = self.tail;
        self.entries[i as usize].next = NIL;
        if self.tail == NIL {
            self.head = i;
        } else {
            self.entries[self.tail as usize].next = i;
        }
        self.tail = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(i: u32) -> SlotIdx {
        SlotIdx::for_tests(i)
    }

    fn never() -> Result<u32, &'static str> {
        Err("no more")
    }

    #[test]
    fn free_first_then_grows_to_the_cap_then_evicts_the_least_recently_stepped() {
        let mut p = Pool::new(vec![10, 11], 3);
        let mut created = 0;
        let mut make = || {
            created += 1;
            Ok::<u32, ()>(20)
        };
        let (a, _) = p.take(&mut make);
        assert_eq!(a, Some(Taken::Free(0)));
        p.assign(0, slot(1));
        assert_eq!(p.take(&mut make).0, Some(Taken::Free(1)));
        p.assign(1, slot(2));
        assert_eq!(p.take(&mut make).0, Some(Taken::Free(2)));
        p.assign(2, slot(3));
        assert_eq!(p.len(), 3);
        assert_eq!(p.resident(), 3);
        // Full: seq 1 (request 0) is the coldest; stepping it makes seq 2 the coldest.
        p.touch(0);
        assert_eq!(p.take(&mut make).0, Some(Taken::Evicted { request: 1, evicted: slot(2) }));
        p.assign(1, slot(4));
        assert_eq!(p.take(&mut make).0, Some(Taken::Evicted { request: 2, evicted: slot(3) }));
        assert_eq!(created, 1);
        assert_eq!(*p.request_mut(2), 20);
    }

    #[test]
    fn a_released_request_is_reused_before_any_eviction() {
        let mut p = Pool::new(vec![0u32, 1], 2);
        let (Some(Taken::Free(a)), _) = p.take(never) else { panic!() };
        p.assign(a, slot(1));
        let (Some(Taken::Free(b)), _) = p.take(never) else { panic!() };
        p.assign(b, slot(2));
        p.release(a);
        assert_eq!(p.resident(), 1);
        assert_eq!(p.take(never).0, Some(Taken::Free(a)));
        p.assign(a, slot(3));
        p.recover(|s| s == slot(2));
        assert_eq!(p.resident_in(b), None);
        assert_eq!(p.take(never).0, Some(Taken::Free(b)));
        // Taken, then the step failed before assigning: put back, it is free again.
        p.put_back(b);
        assert_eq!(p.take(never).0, Some(Taken::Free(b)));
        // Taken, then the step panicked: recover returns it.
        p.recover(|_| false);
        assert_eq!(p.take(never).0, Some(Taken::Free(b)));
        assert_eq!(p.resident(), 1);
    }

    #[test]
    fn a_failed_creation_falls_back_to_eviction_and_reports_why() {
        let mut p = Pool::new(vec![0u32], 8);
        p.take(never);
        p.assign(0, slot(1));
        let (taken, err) = p.take(never);
        assert_eq!(taken, Some(Taken::Evicted { request: 0, evicted: slot(1) }));
        assert_eq!(err, Some("no more"));
        let mut empty: Pool<u32> = Pool::new(Vec::new(), 8);
        assert_eq!(empty.take(never), (None, Some("no more")));
        assert_eq!(empty.stateless(), None);
    }

    #[test]
    fn stateless_steps_go_round_robin() {
        let mut p = Pool::new(vec![0u32, 1, 2], 3);
        let got: Vec<_> = (0..4).filter_map(|_| p.stateless()).collect();
        assert_eq!(got, vec![0, 1, 2, 0]);
    }
}
