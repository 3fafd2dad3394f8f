//! What resilience adds to every request: choosing a target with outlier detection on (the
//! ejection check per candidate), recording an attempt's outcome for outlier detection and
//! the circuit breaker, and the retry budget's request count.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use portico::clock;
use portico::config::Algorithm;
use portico::upstream::breaker::BreakerPolicy;
use portico::upstream::failure::FailureSet;
use portico::upstream::outlier::OutlierPolicy;
use portico::upstream::{Pool, PoolOptions, TargetSpec};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

fn pool(resilient: bool) -> Arc<Pool> {
    let targets = (1..=3)
        .map(|i| TargetSpec {
            addr: SocketAddr::from(([127, 0, 0, i], 8080)),
            weight: 1,
            host: http::HeaderValue::from_static("svc"),
        })
        .collect();
    let all = FailureSet::CONNECT_ONLY;
    let opts = PoolOptions {
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        keepalive: true,
        retries: 2,
        max_concurrent: None,
        metrics: true,
        outlier: resilient.then_some(OutlierPolicy {
            consecutive: 5,
            on: all,
            base_ms: 30_000,
            max_ms: 300_000,
            max_ejected_percent: 50,
        }),
        breaker: resilient.then_some(BreakerPolicy {
            error_rate: 50,
            min_requests: 20,
            window_ms: 10_000,
            open_ms: 10_000,
            probes: 3,
            on: all,
        }),
        budget: (20, 10),
        tls: None,
        http2: false,
        max_h2_streams: 1,
    };
    Arc::new(Pool::new(
        "bench",
        targets,
        Algorithm::RoundRobin,
        None,
        None,
        opts,
    ))
}

fn resilience(c: &mut Criterion) {
    let mut group = c.benchmark_group("resilience");
    let plain = pool(false);
    let guarded = pool(true);
    group.bench_function("select_plain", |b| {
        b.iter(|| plain.select(b"", black_box(&[])))
    });
    group.bench_function("select_with_outlier_detection", |b| {
        b.iter(|| guarded.select(b"", black_box(&[])))
    });
    let target = guarded.select(b"", &[]);
    // What one request adds with both on: the breaker's admission, the budget's count,
    // and the attempt's outcome for the target and the breaker.
    group.bench_function("admit_and_record_attempt", |b| {
        b.iter(|| {
            let probe = guarded.breaker_admit(true).ok().flatten();
            guarded.budget.request(clock::now_ms());
            guarded.record(black_box(target), Ok(()), probe);
        })
    });
    group.bench_function("clock_now_ms", |b| b.iter(clock::now_ms));
    group.finish();
}

criterion_group!(benches, resilience);
criterion_main!(benches);
