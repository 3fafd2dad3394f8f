//! The per-request work of `upstream_request_filter` that does not depend on the route: hop
//! headers removed, forwarding headers written from validated parts (X-Forwarded-For,
//! -Proto, -Host, Forwarded, X-Real-IP), the request id and traceparent set, on a typical
//! browser-like request. Each iteration works on a fresh copy of the request (the copy is
//! not timed; the baseline shows the batch's own cost).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use http::HeaderName;
use pingora_http::RequestHeader;
use portico::forwarding::{set_forwarded_headers, strip_request_hop_headers, ClientInfo};
use portico::observe::request_id::RequestId;
use portico::observe::trace::TraceContext;
use std::net::IpAddr;

fn request() -> RequestHeader {
    let mut r = RequestHeader::build("GET", b"/api/v1/orders/1234?page=2", Some(8)).unwrap();
    for (name, value) in [
        ("host", "api.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/133.0",
        ),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-GB,en;q=0.5"),
        ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"),
        ("connection", "keep-alive"),
        ("cookie", "session=abc123; theme=dark"),
    ] {
        r.append_header(name, value).unwrap();
    }
    r
}

fn bench(c: &mut Criterion) {
    let client: IpAddr = "203.0.113.7".parse().unwrap();
    let header = HeaderName::from_static("x-request-id");
    let fresh = request();
    let mut g = c.benchmark_group("upstream request");
    g.bench_function("baseline (batched copies)", |b| {
        b.iter_batched_ref(
            || fresh.clone(),
            |r| black_box(r.method.as_str().len()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function(
        "hop headers, forwarding headers, request id, traceparent",
        |b| {
            b.iter_batched_ref(
                || fresh.clone(),
                |r| {
                    let id = RequestId::take(&header, &r.headers);
                    let trace = TraceContext::from_header(None);
                    strip_request_hop_headers(r, false, true);
                    let info = ClientInfo {
                        ip: Some(client),
                        trusted: false,
                        proto: "https",
                        host: Some("api.example.com"),
                        real_ip: Some(client),
                    };
                    set_forwarded_headers(r, &info);
                    r.insert_header(id.header.clone(), id.header_value())
                        .unwrap();
                    r.insert_header("traceparent", trace.header_value())
                        .unwrap();
                    black_box(r.headers.len())
                },
                BatchSize::SmallInput,
            )
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
