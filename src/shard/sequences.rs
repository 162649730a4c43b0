//! A shard's table of live sequences for one model version.
//!
//! Shape (after h2's stream store): a slab of slots plus an id → slot map, and an intrusive
//! doubly linked list through the slots in order of last activity. All sequences of a model share
//! one timeout, so the least recently active sequence is always the first to expire: expiry pops
//! from the front of the list and its cost grows with the number of expiries, never with the
//! number of live sequences.
//!
//! Lifecycle of a sequence (it lives on exactly one shard, the one `shard_of(id)` names):
//!
//! ```text
//!              START(id)                 step (control 0)
//!   absent ─────────────────▶ live ◀────────────────────┐
//!     ▲                        │ └──────────────────────┘
//!     │   END (after its       │
//!     ├─── inference) ─────────┤
//!     │                        │
//!     └─── idle > timeout ─────┘   (checked by the shard's own timer; never
//!                                   while a request is executing: execution has no await)
//! ```
//!
//! OVMS's intermediate "terminated" state does not exist here: END runs from lookup to removal
//! without yielding, so no other request can observe it.
//!
//! Saved states live in one arena (`states`, `state_bytes` per slot, indexed like the slots), so a
//! sequence costs no allocation of its own and a freed slot's buffer is reused as it is.

use crate::request::SequenceId;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

const NIL: u32 = u32::MAX;

/// A slot of the table and the generation of the sequence it was made for (h2's store keys do
/// the same): a key kept past its sequence's removal names nothing, even once the slot holds
/// another sequence. Every use checks the generation (one compare, always on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotIdx {
    index: u32,
    generation: u32,
}

impl SlotIdx {
    /// A key made up by a unit test of another module (never names a real slot).
    #[cfg(test)]
    pub fn for_tests(index: u32) -> SlotIdx {
        SlotIdx { index, generation: 0 }
    }
}

pub struct Slot {
    /// `SequenceId::NONE` while the slot is free.
    id: SequenceId,
    /// Bumped at each removal, so keys to the removed sequence go stale.
    generation: u32,
    prev: u32,
    next: u32,
    last_active_ms: u64,
    /// Requests executed for this sequence (tests prove routing with it).
    pub steps: u64,
    /// The infer request whose variables hold this sequence's current state, if any. While set,
    /// the saved state in the arena is stale and the infer request is the truth.
    pub resident_in: Option<u16>,
}

impl Slot {
    pub fn id(&self) -> &SequenceId {
        &self.id
    }
}

pub struct SequenceTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    index: HashMap<SequenceId, u32, SeededIdHash>,
    head: u32,
    tail: u32,
    state_bytes: usize,
    /// Saved states, `state_bytes` per slot, all variables back to back.
    states: Vec<u8>,
}

impl SequenceTable {
    /// `state_bytes`: size of one sequence's saved state; `reserve`: slots to preallocate.
    pub fn new(state_bytes: usize, reserve: usize, seed: u64) -> SequenceTable {
        SequenceTable {
            slots: Vec::with_capacity(reserve),
            free: Vec::new(),
            index: HashMap::with_capacity_and_hasher(reserve, SeededIdHash(seed)),
            head: NIL,
            tail: NIL,
            state_bytes,
            states: Vec::with_capacity(reserve * state_bytes),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn find(&self, id: &SequenceId) -> Option<SlotIdx> {
        self.index.get(id).map(|&i| self.key(i))
    }

    /// Whether `idx` still names a live sequence.
    pub fn is_live(&self, idx: SlotIdx) -> bool {
        self.slots.get(idx.index as usize).is_some_and(|s| s.generation == idx.generation && s.id.is_given())
    }

    fn key(&self, i: u32) -> SlotIdx {
        SlotIdx { index: i, generation: self.slots[i as usize].generation }
    }

    /// The slot's position, after checking that `idx` is not stale (a stale key is a bug).
    fn checked(&self, idx: SlotIdx) -> usize {
        let i = idx.index as usize;
        assert!(self.is_live(idx), "stale sequence slot key {idx:?}");
        i
    }

    pub fn contains(&self, id: &SequenceId) -> bool {
        self.index.contains_key(id)
    }

    /// Adds a new live sequence. The caller has checked that `id` is absent and non-zero.
    pub fn insert(&mut self, id: SequenceId, now_ms: u64) -> SlotIdx {
        assert!(id.is_given(), "sequence id 0 is reserved");
        let i = match self.free.pop() {
            Some(i) => {
                let s = &mut self.slots[i as usize];
                s.id = id.clone();
                s.steps = 0;
                s.resident_in = None;
                s.last_active_ms = now_ms;
                i
            }
            None => {
                // max_sequence_number is a u32, so a table never holds u32::MAX slots.
                let i = self.slots.len() as u32;
                self.slots.push(Slot {
                    id: id.clone(),
                    generation: 0,
                    prev: NIL,
                    next: NIL,
                    last_active_ms: now_ms,
                    steps: 0,
                    resident_in: None,
                });
                self.states.resize(self.states.len() + self.state_bytes, 0);
                i
            }
        };
        let previous = self.index.insert(id, i);
        assert!(previous.is_none(), "a sequence id inserted twice");
        self.link_tail(i);
        self.key(i)
    }

    pub fn get(&self, idx: SlotIdx) -> &Slot {
        &self.slots[self.checked(idx)]
    }

    pub fn get_mut(&mut self, idx: SlotIdx) -> &mut Slot {
        let i = self.checked(idx);
        &mut self.slots[i]
    }

    /// The saved state of a sequence (stale while `resident_in` is set).
    pub fn state(&self, idx: SlotIdx) -> &[u8] {
        let at = self.checked(idx) * self.state_bytes;
        &self.states[at..at + self.state_bytes]
    }

    pub fn state_mut(&mut self, idx: SlotIdx) -> &mut [u8] {
        let at = self.checked(idx) * self.state_bytes;
        &mut self.states[at..at + self.state_bytes]
    }

    /// Records activity: the sequence moves to the back of the expiry order.
    pub fn touch(&mut self, idx: SlotIdx, now_ms: u64) {
        let i = self.checked(idx);
        self.unlink(i as u32);
        self.slots[i].last_active_ms = now_ms;
        self.link_tail(i as u32);
    }

    /// Removes a sequence; returns the infer request its state was resident in, if any.
    pub fn remove(&mut self, idx: SlotIdx) -> Option<u16> {
        let i = self.checked(idx) as u32;
        let id = std::mem::replace(&mut self.slots[i as usize].id, SequenceId::NONE);
        self.unlink(i);
        self.index.remove(&id);
        let s = &mut self.slots[i as usize];
        s.generation = s.generation.wrapping_add(1);
        let resident = s.resident_in.take();
        self.free.push(i);
        resident
    }

    /// The least recently active sequence, if it has been idle for at least `timeout_ms`.
    pub fn first_expired(&self, now_ms: u64, timeout_ms: u64) -> Option<SlotIdx> {
        if self.head == NIL {
            return None;
        }
        let s = &self.slots[self.head as usize];
        (now_ms.saturating_sub(s.last_active_ms) >= timeout_ms).then_some(self.key(self.head))
    }

    /// The keys of the live sequences, least recently active first.
    pub fn keys(&self) -> Vec<SlotIdx> {
        let mut out = Vec::with_capacity(self.len());
        let mut at = self.head;
        while at != NIL {
            out.push(self.key(at));
            at = self.slots[at as usize].next;
        }
        out
    }

    /// When a sequence was last active (ms on the shard's clock).
    pub fn last_active_ms(&self, idx: SlotIdx) -> u64 {
        self.slots[self.checked(idx)].last_active_ms
    }

    /// Live sequences, least recently active first.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        let mut at = self.head;
        std::iter::from_fn(move || {
            if at == NIL {
                return None;
            }
            let s = &self.slots[at as usize];
            at = s.next;
            Some(s)
        })
    }

    fn link_tail(&mut self, i: u32) {
        let tail = self.tail;
        {
            let s = &mut self.slots[i as usize];
            s.prev = tail;
            s.next = NIL;
        }
        if tail == NIL {
            self.head = i;
        } else {
            self.slots[tail as usize].next = i;
        }
        self.tail = i;
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }
}

/// Hash for client-chosen ids: a seeded splitmix64 finaliser (cheap, and the per-process seed
/// keeps a client from aiming ids at one bucket).
#[derive(Clone, Copy)]
struct SeededIdHash(u64);

struct IdHasher(u64);

impl BuildHasher for SeededIdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.0)
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SequenceTable {
        SequenceTable::new(4, 0, 7)
    }

    fn ids(t: &SequenceTable) -> Vec<u64> {
        t.iter().map(|s| num(s.id())).collect()
    }

    fn num(id: &SequenceId) -> u64 {
        match id {
            SequenceId::Num(n) => *n,
            SequenceId::Str(_) => panic!("string id"),
        }
    }

    fn n(v: u64) -> SequenceId {
        SequenceId::Num(v)
    }

    #[test]
    fn insert_find_remove() {
        let mut t = table();
        let a = t.insert(n(10), 0);
        let b = t.insert(n(5_000_000_000), 0);
        assert_eq!(t.find(&n(10)), Some(a));
        assert_eq!(t.find(&n(5_000_000_000)), Some(b));
        assert_eq!(t.len(), 2);
        t.remove(a);
        assert_eq!(t.find(&n(10)), None);
        assert_eq!(t.len(), 1);
        assert_eq!(ids(&t), vec![5_000_000_000]);
    }

    #[test]
    fn freed_slots_and_their_buffers_are_reused() {
        let mut t = table();
        let a = t.insert(n(1), 0);
        t.state_mut(a).copy_from_slice(&[1, 2, 3, 4]);
        t.get_mut(a).resident_in = Some(3);
        assert_eq!(t.remove(a), Some(3));
        let b = t.insert(n(2), 0);
        assert_eq!(a.index, b.index, "the slot is reused");
        assert_ne!(a, b, "under a new generation");
        assert!(!t.is_live(a) && t.is_live(b));
        assert_eq!(t.get(b).resident_in, None);
        assert_eq!(t.get(b).steps, 0);
        assert_eq!(t.state(b), &[1, 2, 3, 4]);
    }

    #[test]
    #[should_panic(expected = "stale sequence slot key")]
    fn a_stale_key_is_caught_not_followed() {
        let mut t = table();
        let a = t.insert(n(1), 0);
        t.remove(a);
        let _b = t.insert(n(2), 0);
        t.touch(a, 1);
    }

    #[test]
    fn expiry_order_follows_activity() {
        let mut t = table();
        let s1 = t.insert(n(1), 0);
        let _s2 = t.insert(n(2), 10);
        let _s3 = t.insert(n(3), 20);
        t.touch(s1, 30);
        assert_eq!(ids(&t), vec![2, 3, 1]);
        // timeout 15: at t=30 sequences 2 (idle 20) and 3 (idle 10)… only 2 is expired.
        let e = t.first_expired(30, 15).unwrap();
        assert_eq!(num(t.get(e).id()), 2);
        t.remove(e);
        assert_eq!(t.first_expired(30, 15), None);
        // At t=100 everything is idle long enough; expiring pops in order.
        let mut popped = vec![];
        while let Some(e) = t.first_expired(100, 15) {
            popped.push(num(t.get(e).id()));
            t.remove(e);
        }
        assert_eq!(popped, vec![3, 1]);
        assert!(t.is_empty());
    }

    #[test]
    fn touching_the_only_sequence_keeps_the_list_consistent() {
        let mut t = table();
        let s = t.insert(n(9), 0);
        t.touch(s, 5);
        t.touch(s, 6);
        assert_eq!(ids(&t), vec![9]);
        t.remove(s);
        assert_eq!(ids(&t), Vec::<u64>::new());
        t.insert(n(4), 7);
        assert_eq!(ids(&t), vec![4]);
    }

    #[test]
    fn string_and_numeric_ids_are_distinct() {
        let mut t = table();
        let a = t.insert(n(7), 0);
        let b = t.insert(SequenceId::Str("7".into()), 0);
        assert_ne!(a, b);
        assert_eq!(t.find(&SequenceId::Str("7".into())), Some(b));
        t.remove(a);
        assert_eq!(t.find(&n(7)), None);
        assert_eq!(t.find(&SequenceId::Str("7".into())), Some(b));
    }

    #[test]
    fn many_sequences_stay_consistent() {
        let mut t = table();
        let mut live = std::collections::BTreeSet::new();
        let mut rng = 12345u64;
        for step in 0..20_000u64 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let id = rng % 500 + 1;
            match t.find(&n(id)) {
                Some(s) if rng & 1 == 0 => {
                    t.remove(s);
                    live.remove(&id);
                }
                Some(s) => t.touch(s, step),
                None => {
                    t.insert(n(id), step);
                    live.insert(id);
                }
            }
        }
        let mut listed = ids(&t);
        listed.sort();
        assert_eq!(listed, live.into_iter().collect::<Vec<_>>());
        assert_eq!(t.len(), listed.len());
    }
}
