//! The canonical step every request goes through: a typical clean request (the fast path,
//! nothing allocated) and one whose path and Host need rewriting.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora_http::RequestHeader;
use portico::canonical::{canonicalise, EdgeRules};

fn request(target: &str, host: &str) -> RequestHeader {
    let mut r = RequestHeader::build("GET", target.as_bytes(), Some(8)).unwrap();
    r.append_header("host", host).unwrap();
    r.append_header("user-agent", "curl/8.5.0").unwrap();
    r.append_header("accept", "application/json").unwrap();
    r.append_header("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x")
        .unwrap();
    r.append_header("x-request-id", "b6a2c1e0-0000-0000-0000-000000000001")
        .unwrap();
    r
}

fn bench(c: &mut Criterion) {
    let rules = EdgeRules::default();
    let mut g = c.benchmark_group("canonical");
    // A canonical request is left as it is, so it can be checked again and again in place:
    // this is the per-request cost of the fast path.
    let mut clean = request("/api/v1/orders/1234?page=2&sort=desc", "api.example.com");
    g.bench_function("clean request", |b| {
        b.iter(|| black_box(canonicalise(black_box(&mut clean), &rules)))
    });
    // A rewritten one needs a fresh copy each time (its clone is not timed; the memory
    // traffic of the batch is: compare with the baseline).
    g.bench_function("baseline (batched copies)", |b| {
        b.iter_batched_ref(
            || clean.clone(),
            |r| black_box(r.method.as_str().len()),
            criterion::BatchSize::SmallInput,
        )
    });
    let dirty = request(
        "/api//v1/./orders/%31234/../1234?page=2",
        "API.Example.com:0443",
    );
    g.bench_function("rewritten request", |b| {
        b.iter_batched_ref(
            || dirty.clone(),
            |r| black_box(canonicalise(r, &rules)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
