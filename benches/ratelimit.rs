//! Cost of one local rate-limit decision (GCRA, counted) with 1 key and with 1 million keys.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portico::policy::ratelimit::local::{Gcra, GcraStore};
use std::time::Duration;

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit_local");
    // A limit never reached, so every decision admits and writes.
    let gcra = Gcra::new(1_000_000_000, Duration::from_secs(1), 1_000_000_000);

    let store = GcraStore::new(2_000_000);
    let key = store.key(1, &[b"ip", &[10, 0, 0, 1]]);
    group.bench_function("1_key", |b| {
        b.iter(|| black_box(store.check(key, gcra, true)))
    });

    let store = GcraStore::new(2_000_000);
    let keys: Vec<u64> = (0u32..1_000_000)
        .map(|i| store.key(1, &[b"ip", &i.to_be_bytes()]))
        .collect();
    for &k in &keys {
        store.check(k, gcra, true);
    }
    let mut i = 0usize;
    group.bench_function("1M_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            black_box(store.check(keys[i], gcra, true))
        })
    });
    group.bench_function("hash_key_ipv4", |b| {
        b.iter(|| black_box(store.key(1, &[b"ip", &[192, 0, 2, 1]])))
    });
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
