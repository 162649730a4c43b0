//! The sequence table at 10⁶ live sequences: insert, lookup, remove, and timeout expiry, beside
//! the naive alternative (a SipHash `HashMap<u64, Sequence>` whose expiry scans every sequence).
//! Expiry is the one that matters at scale: ours pops only expired sequences off the front of an
//! activity-ordered list, so its cost follows expiries, not live sequences.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable)] // test code: a broken assumption should fail loudly

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use seqcore::request::SequenceId;
use seqcore::shard::sequences::SequenceTable;
use std::collections::HashMap;
use std::hint::black_box;

const LIVE: u64 = 1_000_000;
const STATE_BYTES: usize = 4; // a summator's state

struct NaiveSeq {
    last_active_ms: u64,
    _state: Vec<u8>,
}

fn ours_full() -> SequenceTable {
    let mut t = SequenceTable::new(STATE_BYTES, LIVE as usize, 1);
    for id in 1..=LIVE {
        t.insert(SequenceId::Num(id), id / 1000);
    }
    t
}

fn naive_full() -> HashMap<u64, NaiveSeq> {
    let mut m = HashMap::with_capacity(LIVE as usize);
    for id in 1..=LIVE {
        m.insert(id, NaiveSeq { last_active_ms: id / 1000, _state: vec![0; STATE_BYTES] });
    }
    m
}

fn table(c: &mut Criterion) {
    let mut ours = ours_full();
    let mut naive = naive_full();
    let mut g = c.benchmark_group("sequences_1e6");
    let mut i = 0u64;
    g.bench_function("lookup/ours", |b| {
        b.iter(|| {
            i = i % LIVE + 1;
            ours.find(black_box(&SequenceId::Num(i)))
        })
    });
    g.bench_function("lookup/naive", |b| {
        b.iter(|| {
            i = i % LIVE + 1;
            naive.get(black_box(&i)).map(|s| s.last_active_ms)
        })
    });
    // Remove one and insert it again (the table stays at 10⁶).
    g.bench_function("remove_insert/ours", |b| {
        b.iter(|| {
            i = i % LIVE + 1;
            let id = SequenceId::Num(i);
            let s = ours.find(&id).unwrap();
            ours.remove(s);
            ours.insert(id, 2_000);
        })
    });
    g.bench_function("remove_insert/naive", |b| {
        b.iter(|| {
            i = i % LIVE + 1;
            let s = naive.remove(&i).unwrap();
            naive.insert(i, NaiveSeq { last_active_ms: 2_000, _state: s._state });
        })
    });
    g.finish();

    // Expiry of 100 idle sequences among 10⁶ live ones.
    let mut g = c.benchmark_group("expire_100_of_1e6");
    g.sample_size(10);
    g.bench_function("ours_activity_list", |b| {
        b.iter_batched_ref(
            || {
                let mut t = SequenceTable::new(STATE_BYTES, LIVE as usize, 1);
                for id in 1..=LIVE {
                    t.insert(SequenceId::Num(id), if id <= 100 { 0 } else { 10_000 });
                }
                t
            },
            |t| {
                let mut n = 0;
                while let Some(s) = t.first_expired(5_000, 1_000) {
                    t.remove(s);
                    n += 1;
                }
                assert_eq!(n, 100);
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("naive_full_scan", |b| {
        b.iter_batched_ref(
            || {
                let mut m = naive_full();
                for (id, s) in m.iter_mut() {
                    s.last_active_ms = if *id <= 100 { 0 } else { 10_000 };
                }
                m
            },
            |m| {
                let before = m.len();
                m.retain(|_, s| 5_000 - s.last_active_ms.min(5_000) < 1_000);
                assert_eq!(before - m.len(), 100);
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, table);
criterion_main!(benches);
