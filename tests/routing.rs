//! Routing by host, path, method, header and priority; path rewrites; forwarded headers.

mod common;
use common::*;

fn config(a: &Upstream, b: &Upstream, c: &Upstream, d: &Upstream) -> String {
    format!(
        r#"
upstreams:
  - name: a
    targets: [{{address: "{a}"}}]
  - name: b
    targets: [{{address: "{b}"}}]
  - name: c
    targets: [{{address: "{c}"}}]
  - name: d
    targets: [{{address: "{d}"}}]
routes:
  - name: exact-host
    match: {{hosts: [api.example.com]}}
    upstream: a
  - name: wildcard-host
    match: {{hosts: ["*.example.com"]}}
    upstream: b
  - name: orders-read
    match: {{path_prefix: /orders, methods: [GET, HEAD]}}
    upstream: c
  - name: orders-write
    match: {{path_prefix: /orders, methods: [POST]}}
    upstream: c
  - name: orders-canary
    priority: 5
    match:
      path_prefix: /orders
      methods: [POST]
      headers: [{{name: x-canary, value: "1"}}]
    upstream: d
  - name: debug-present
    priority: 5
    match:
      path_prefix: /orders
      headers: [{{name: x-debug}}]
    upstream: a
  - name: strip
    match: {{path_prefix: /svc/c}}
    upstream: c
    strip_prefix: true
  - name: regex
    match: {{path_regex: '^/users/(\d+)/profile$'}}
    upstream: d
    rewrite: /profiles/$1
  - name: exact
    match: {{path_exact: /status}}
    upstream: a
    rewrite: /healthz
  - name: prefix-rewrite
    match: {{path_prefix: /v1}}
    upstream: b
    rewrite: /api/v2
"#,
        a = a.addr,
        b = b.addr,
        c = c.addr,
        d = d.addr
    )
}

struct Setup {
    a: Upstream,
    b: Upstream,
    c: Upstream,
    d: Upstream,
    gw: Gateway,
}

fn setup() -> Setup {
    let (a, b, c, d) = (
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("c"),
        Upstream::start("d"),
    );
    let gw = Gateway::start(&config(&a, &b, &c, &d));
    Setup { a, b, c, d, gw }
}

#[test]
fn routes_by_host_with_wildcards_and_normalization() {
    let s = setup();
    let via = |host: &str| send("GET", &s.gw.url("/anything"), &[("host", host)]).server();
    assert_eq!(via("api.example.com"), "a");
    assert_eq!(
        via("API.Example.COM:8080"),
        "a",
        "host is case-insensitive, port ignored"
    );
    assert_eq!(via("shop.example.com"), "b");
    assert_eq!(via("deep.shop.example.com"), "b");
    // example.com itself is not covered by *.example.com, and no other route takes /anything.
    assert_eq!(
        send("GET", &s.gw.url("/anything"), &[("host", "example.com")]).status,
        404
    );
    assert_eq!(s.a.count(), 2);
    assert_eq!(s.b.count(), 2);
}

#[test]
fn routes_by_path_method_header_and_priority() {
    let s = setup();
    assert_eq!(get(&s.gw.url("/orders/7")).server(), "c");
    assert_eq!(send("POST", &s.gw.url("/orders"), &[]).server(), "c");
    assert_eq!(
        send("POST", &s.gw.url("/orders"), &[("x-canary", "1")]).server(),
        "d",
        "the priority-5 canary route wins over the earlier route"
    );
    assert_eq!(
        send("POST", &s.gw.url("/orders"), &[("x-canary", "2")]).server(),
        "c",
        "a header value that differs does not match"
    );
    assert_eq!(
        send("GET", &s.gw.url("/orders"), &[("x-debug", "")]).server(),
        "a",
        "header presence alone matches"
    );
    // Prefixes are segment-aware.
    let r = get(&s.gw.url("/ordersx"));
    assert_eq!(r.status, 404);

    let r = send("DELETE", &s.gw.url("/orders/7"), &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST"));
    let j = r.json();
    assert_eq!(j["status"], 405);
    assert!(j["error"].as_str().unwrap().contains("DELETE"));
    assert_eq!(j["request_id"].as_str(), r.header("x-request-id"));
    assert_eq!(s.d.count(), 1);
}

#[test]
fn not_found_is_json_with_a_request_id() {
    let s = setup();
    let r = get(&s.gw.url("/nothing/here"));
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["status"], 404);
    let id = j["request_id"].as_str().unwrap();
    assert!(!id.is_empty());
    assert_eq!(r.header("x-request-id"), Some(id));
    for u in [&s.a, &s.b, &s.c, &s.d] {
        assert_eq!(u.count(), 0, "nothing reached an upstream");
    }
}

#[test]
fn rewrites_keep_the_query_string() {
    let s = setup();
    get(&s.gw.url("/svc/c/items?x=1&y=2"));
    get(&s.gw.url("/svc/c"));
    let got: Vec<String> = s.c.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(got, ["/items?x=1&y=2", "/"]);

    get(&s.gw.url("/users/42/profile?full=1"));
    assert_eq!(s.d.requests()[0].target, "/profiles/42?full=1");
    assert_eq!(get(&s.gw.url("/users/abc/profile")).status, 404);

    get(&s.gw.url("/status"));
    assert_eq!(s.a.requests()[0].target, "/healthz");

    get(&s.gw.url("/v1/things/9?a=b"));
    assert_eq!(s.b.requests()[0].target, "/api/v2/things/9?a=b");
}
