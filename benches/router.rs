//! The router: `shard_of` (splitmix finaliser + multiply-shift) beside the naive SipHash modulo.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable)] // test code: a broken assumption should fail loudly

use criterion::{criterion_group, criterion_main, Criterion};
use seqcore::request::SequenceId;
use seqcore::shard::{shard_of, shard_of_id};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::hint::black_box;

fn naive(id: u64, shards: u16) -> u16 {
    let mut h = DefaultHasher::new();
    id.hash(&mut h);
    (h.finish() % u64::from(shards)) as u16
}

fn router(c: &mut Criterion) {
    let mut g = c.benchmark_group("router");
    g.bench_function("shard_of", |b| {
        let mut id = 1u64;
        b.iter(|| {
            id = id.wrapping_add(1);
            shard_of(black_box(id), 8)
        })
    });
    g.bench_function("naive_siphash_mod", |b| {
        let mut id = 1u64;
        b.iter(|| {
            id = id.wrapping_add(1);
            naive(black_box(id), 8)
        })
    });
    let s = SequenceId::Str("utterance-000042-speaker-7".into());
    g.bench_function("shard_of_id_string", |b| b.iter(|| shard_of_id(black_box(&s), 8)));
    g.finish();
}

criterion_group!(benches, router);
criterion_main!(benches);
