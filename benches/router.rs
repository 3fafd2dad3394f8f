//! Route lookup with 10, 1,000 and 10,000 routes: a mix of exact, wildcard and any-host
//! routes with exact, prefix and regex paths, looked up by a fixed mix of requests (hits on
//! each kind, method refusals and misses).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use portico::router::{PathMatch, RouteMatcher, Router};
use regex::Regex;

fn table(n: usize) -> Vec<RouteMatcher> {
    (0..n)
        .map(|i| {
            let hosts = match i % 4 {
                0 => vec![format!("svc{}.example.com", i % 50)],
                1 => vec![format!("*.tenant{}.example.net", i % 20)],
                _ => vec![],
            };
            let path = match i % 20 {
                0..=11 => PathMatch::Prefix(format!("/api/v{}/res{i}", i % 3)),
                12..=16 => PathMatch::Exact(format!("/exact/{i}/status")),
                _ => PathMatch::Regex(Regex::new(&format!("^/items/{i}/(\\d+)$")).unwrap()),
            };
            let methods = if i % 5 == 0 {
                vec![Method::GET, Method::HEAD]
            } else {
                vec![]
            };
            RouteMatcher {
                hosts,
                path,
                methods,
                headers: vec![],
                priority: (i % 3) as i32,
            }
        })
        .collect()
}

fn requests(n: usize) -> Vec<(String, Method, String)> {
    let last = n - 1;
    let pick = |k: usize| (k * 7919) % n;
    let mut v = Vec::new();
    for k in 0..8 {
        let i = pick(k);
        v.push((
            format!("svc{}.example.com", i % 50),
            Method::GET,
            format!("/api/v{}/res{i}/orders/17", i % 3),
        ));
        v.push((
            "a.tenant3.example.net".into(),
            Method::GET,
            format!("/exact/{i}/status"),
        ));
        v.push((
            "plain.host".into(),
            Method::GET,
            format!("/items/{last}/42"),
        ));
        v.push(("plain.host".into(), Method::POST, "/api/v0/res0/x".into()));
        v.push((
            "nowhere.org".into(),
            Method::GET,
            "/not/a/route/at/all".into(),
        ));
    }
    v
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    let headers = HeaderMap::new();
    for n in [10usize, 1_000, 10_000] {
        let router = Router::new(table(n)).unwrap();
        let reqs = requests(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &reqs, |b, reqs| {
            let mut i = 0;
            b.iter(|| {
                let (host, method, path) = &reqs[i % reqs.len()];
                i += 1;
                black_box(router.find(host, method, path, &headers))
            })
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_build");
    group.sample_size(10);
    for n in [1_000usize, 10_000] {
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_batched(
                || table(n),
                |t| Router::new(t).unwrap(),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, build);
criterion_main!(benches);
