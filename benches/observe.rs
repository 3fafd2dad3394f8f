//! Cost of what every request pays for observability: recording its metrics (a counter and
//! a histogram through pre-resolved handles, two byte counters) and the access log's time
//! stamp.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::Method;
use portico::observe::access_log::Rfc3339;
use portico::observe::metrics::{Finished, RouteMetrics};
use std::time::{Duration, SystemTime};

fn observe(c: &mut Criterion) {
    let mut group = c.benchmark_group("observe");
    let route = RouteMetrics::new("bench", true);
    let outcome = Finished {
        method: &Method::GET,
        status: Some(200),
        duration: Duration::from_micros(850),
        bytes_in: 0,
        bytes_out: 100,
    };
    group.bench_function("metrics_request", |b| {
        b.iter(|| route.request(black_box(&outcome)))
    });
    group.bench_function("metrics_rate_limit_allowed", |b| {
        b.iter(|| route.rate_limit(black_box("allowed")))
    });
    group.bench_function("access_log_time", |b| {
        b.iter(|| black_box(Rfc3339::new(SystemTime::now())))
    });
    group.finish();
}

criterion_group!(benches, observe);
criterion_main!(benches);
