//! OpenAPI contracts (issue 22): the cost of checking a typical operation's request (its
//! parameters, and a 1 KB JSON body) against the document, and the route lookup among
//! 1,000 operations generated from one document.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use portico::route::openapi::{expand, ApiRoute};

fn storefront() -> Vec<ApiRoute> {
    let spec = format!(
        "{}/tests/fixtures/storefront.openapi.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    generated(&spec)
}

fn generated(spec: &str) -> Vec<ApiRoute> {
    let yaml = format!(
        "apis:\n  - {{name: store, spec: {spec}, base_path: /v2, upstream: up, validate: {{request: true}}}}\n"
    );
    let parsed = portico::config::parse("bench.yaml", &yaml).expect("config");
    let mut faults = Vec::new();
    let routes = expand(&parsed.config, &mut faults);
    assert!(faults.is_empty(), "{faults:?}");
    routes
}

fn operation<'a>(routes: &'a [ApiRoute], name: &str) -> &'a portico::policy::contract::Contract {
    routes
        .iter()
        .find(|r| r.route.name == name)
        .and_then(|r| r.contract.as_deref())
        .expect("operation")
}

fn check(c: &mut Criterion) {
    let routes = storefront();
    let mut group = c.benchmark_group("contract");

    // Six query parameters of five kinds.
    let list = operation(&routes, "store.listProducts");
    let headers = HeaderMap::new();
    let query =
        Some("limit=50&cursor=abc123&category=lamps&sort=-price&tags=desk&tags=led&in_stock=true");
    group.bench_function("query_parameters", |b| {
        b.iter(|| {
            let mut found = Vec::new();
            list.check_parameters("/v2/products", black_box(query), &headers, &mut found);
            assert!(found.is_empty());
        })
    });

    // A header parameter and a 1 KB body with nested $ref'd and allOf schemas.
    let place = operation(&routes, "store.placeOrder");
    let mut headers = HeaderMap::new();
    headers.insert(
        "idempotency-key",
        HeaderValue::from_static("0123456789abcdef0123"),
    );
    let body = format!(
        r#"{{"cart_id": "0f8b7a9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", "coupon": "SPRING24",
            "shipping": {{"line1": "1 Main Street", "line2": "Flat 4", "city": "Oslo",
            "postal_code": "0150", "country": "NO", "instructions": "Leave at the door"}},
            "gift_message": "{}"}}"#,
        "x".repeat(740)
    );
    assert!((1000..1100).contains(&body.len()), "{}", body.len());
    group.bench_function("header_and_1kb_json_body", |b| {
        b.iter(|| {
            let mut found = Vec::new();
            place.check_parameters("/v2/orders", None, &headers, &mut found);
            place.check_json_body(black_box(body.as_bytes()), &mut found);
            assert!(found.is_empty());
        })
    });
    group.finish();
}

/// 250 paths with four methods each, as a service team might publish them.
fn thousand_operations() -> String {
    let mut doc = String::from("openapi: 3.1.0\ninfo: {title: Big, version: '1'}\npaths:\n");
    for i in 0..250 {
        doc.push_str(&format!(
            "  /res{i}/{{id}}:\n    get: {{operationId: get{i}, responses: {{'200': {{description: ok}}}}}}\n    put: {{operationId: put{i}, responses: {{'200': {{description: ok}}}}}}\n    delete: {{operationId: delete{i}, responses: {{'204': {{description: ok}}}}}}\n  /res{i}:\n    post: {{operationId: create{i}, responses: {{'201': {{description: ok}}}}}}\n"
        ));
    }
    doc
}

fn lookup(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("big.yaml");
    std::fs::write(&spec, thousand_operations()).expect("write");
    let yaml = format!(
        "listeners: [{{address: 127.0.0.1:1}}]\nupstreams: [{{name: up, targets: [{{address: 127.0.0.1:9}}]}}]\n\
         apis:\n  - {{name: big, spec: {}, base_path: /v1, upstream: up}}\n",
        spec.display()
    );
    let rt = portico::runtime::load_str("bench.yaml", &yaml).expect("runtime");
    assert_eq!(rt.routes.len(), 1000);
    let headers = HeaderMap::new();
    let requests: Vec<(Method, String)> = (0..16)
        .map(|k| {
            let i = (k * 7919) % 250;
            match k % 4 {
                0 => (Method::GET, format!("/v1/res{i}/42")),
                1 => (Method::DELETE, format!("/v1/res{i}/abc")),
                2 => (Method::POST, format!("/v1/res{i}")),
                _ => (Method::PATCH, format!("/v1/res{i}/42")), // 405
            }
        })
        .collect();
    c.bench_function("route_lookup/1000_openapi_operations", |b| {
        let mut i = 0;
        b.iter(|| {
            let (method, path) = &requests[i % requests.len()];
            i += 1;
            black_box(rt.router.find("api.example.com", method, path, &headers))
        })
    });
}

criterion_group!(benches, check, lookup);
criterion_main!(benches);
