//! One cross-shard hop (request there, answer back) between two pinned glommio executors over
//! bounded `shared_channel`s — the mesh's transport — beside the naive alternative, std's
//! `mpsc` channels between two threads (a mutex and a futex wake per message).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::unreachable)] // test code: a broken assumption should fail loudly

use criterion::{criterion_group, criterion_main, Criterion};
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};
use std::time::{Duration, Instant};

fn cpus() -> (usize, usize) {
    let ids: Vec<usize> = core_affinity::get_core_ids().unwrap().into_iter().map(|c| c.id).collect();
    (ids[0], *ids.get(1).unwrap_or(&ids[0]))
}

fn glommio_round_trips(iters: u64, spin: Option<Duration>) -> Duration {
    let (a, b) = cpus();
    let (req_tx, req_rx) = shared_channel::new_bounded::<u64>(1024);
    let (rep_tx, rep_rx) = shared_channel::new_bounded::<u64>(1024);
    let builder = |cpu| {
        let b = LocalExecutorBuilder::new(Placement::Fixed(cpu));
        match spin {
            Some(d) => b.spin_before_park(d),
            None => b,
        }
    };
    let server = builder(b)
        .spawn(move || async move {
            let rx = req_rx.connect().await;
            let tx = rep_tx.connect().await;
            while let Some(v) = rx.recv().await {
                tx.send(v + 1).await.unwrap();
            }
        })
        .unwrap();
    let client = builder(a)
        .spawn(move || async move {
            let tx = req_tx.connect().await;
            let rx = rep_rx.connect().await;
            let start = Instant::now();
            for i in 0..iters {
                tx.send(i).await.unwrap();
                assert_eq!(rx.recv().await, Some(i + 1));
            }
            start.elapsed()
        })
        .unwrap();
    let elapsed = client.join().unwrap();
    server.join().unwrap();
    elapsed
}

fn std_round_trips(iters: u64) -> Duration {
    let (req_tx, req_rx) = std::sync::mpsc::sync_channel::<u64>(1024);
    let (rep_tx, rep_rx) = std::sync::mpsc::sync_channel::<u64>(1024);
    let server = std::thread::spawn(move || {
        while let Ok(v) = req_rx.recv() {
            rep_tx.send(v + 1).unwrap();
        }
    });
    let start = Instant::now();
    for i in 0..iters {
        req_tx.send(i).unwrap();
        assert_eq!(rep_rx.recv().unwrap(), i + 1);
    }
    let elapsed = start.elapsed();
    drop(req_tx);
    server.join().unwrap();
    elapsed
}

fn hop(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_shard_round_trip");
    g.sample_size(20);
    g.bench_function("glommio_shared_channel_parking", |b| b.iter_custom(|n| glommio_round_trips(n, None)));
    g.bench_function("glommio_shared_channel_spin_100us", |b| {
        b.iter_custom(|n| glommio_round_trips(n, Some(Duration::from_micros(100))))
    });
    g.bench_function("naive_std_mpsc_threads", |b| b.iter_custom(std_round_trips));
    g.finish();
}

criterion_group!(benches, hop);
criterion_main!(benches);
