//! Per-request cache work: building the key, the variance, the storage decision, and a hit
//! from the in-memory store (meta decoded, body shared).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora_cache::storage::Storage;
use pingora_cache::trace::Span;
use pingora_cache::CacheMeta;
use pingora_http::{RequestHeader, ResponseHeader};
use portico::cache::key::KeySpec;
use portico::cache::rules::{self, RequestDirectives, RequestFacts, StoreLimits};
use portico::cache::Engine;
use portico::config::{CacheKeySpec, CacheSection, QueryKey};
use std::time::{Duration, SystemTime};

fn response(body_len: usize) -> ResponseHeader {
    let mut r = ResponseHeader::build(200, None).unwrap();
    r.insert_header("content-type", "application/json").unwrap();
    r.insert_header("content-length", body_len).unwrap();
    r.insert_header("cache-control", "public, max-age=60")
        .unwrap();
    r.insert_header("etag", "\"abc123\"").unwrap();
    r.insert_header("vary", "accept-encoding").unwrap();
    r
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache");
    let exact = KeySpec::new(&CacheKeySpec::default()).unwrap();
    let sorted = KeySpec::new(&CacheKeySpec {
        query: QueryKey::Sorted,
        ignore_query: vec!["utm_source".into()],
        headers: vec!["accept-language".into()],
        consumer: true,
    })
    .unwrap();
    let q = Some("page=2&sort=price&utm_source=mail&limit=50");
    g.bench_function("key_exact", |b| {
        b.iter(|| black_box(exact.cache_key("api.example.com", "/v1/products", q)))
    });
    g.bench_function("key_sorted", |b| {
        b.iter(|| black_box(sorted.cache_key("api.example.com", "/v1/products", q)))
    });

    let mut req = RequestHeader::build("GET", b"/v1/products?page=2", None).unwrap();
    req.insert_header("accept-encoding", "gzip, br").unwrap();
    req.insert_header("accept-language", "en").unwrap();
    let now = SystemTime::now();
    let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, response(100));
    g.bench_function("variance", |b| {
        b.iter(|| black_box(sorted.variance(&req, Some("ada"), &meta)))
    });

    let limits = StoreLimits {
        max_object_size: 1 << 20,
        default_ttl: None,
        max_ttl: Some(Duration::from_secs(3600)),
        allow_set_cookie: false,
        targeted: vec!["portico-cache-control".into(), "cdn-cache-control".into()],
    };
    let facts = RequestFacts {
        credentials: false,
        personal: false,
        no_store: false,
    };
    let resp = response(100);
    g.bench_function("storable", |b| {
        b.iter(|| black_box(rules::storable(&resp, &facts, &limits, SystemTime::now()).is_ok()))
    });
    let mut with_cc = req.clone();
    with_cc
        .insert_header("cache-control", "max-age=30")
        .unwrap();
    g.bench_function("request_directives", |b| {
        b.iter(|| black_box(RequestDirectives::parse(&with_cc)))
    });

    let engine = Engine::get(&CacheSection::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let span = Span::inactive().handle();
    for size in [100usize, 4096] {
        let key = exact.cache_key("api.example.com", &format!("/obj/{size}"), None);
        let stored = rules::storable(&response(size), &facts, &limits, SystemTime::now()).unwrap();
        rt.block_on(async {
            let mut fill = engine
                .store
                .get_miss_handler(&key, &stored, &span)
                .await
                .unwrap();
            fill.write_body(vec![b'x'; size].into(), true)
                .await
                .unwrap();
            fill.finish().await.unwrap();
        });
        g.bench_function(format!("store_hit_{size}B"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let (meta, mut hit) = engine.store.lookup(&key, &span).await.unwrap().unwrap();
                    let body = hit.read_body().await.unwrap();
                    black_box((meta, body))
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
