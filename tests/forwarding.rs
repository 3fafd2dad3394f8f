//! What the upstream sees: Host policy, X-Forwarded-*, Forwarded, request ids and the
//! removal of hop-by-hop headers.

mod common;
use common::*;

fn gateway(up: &Upstream, trusted: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
trusted_proxies: [{trusted}]
upstreams:
  - name: up
    targets: [{{address: "{addr}"}}]
routes:
  - name: preserve
    match: {{path_prefix: /preserve}}
    upstream: up
    preserve_host: true
  - name: fixed
    match: {{path_prefix: /fixed}}
    upstream: up
    host_header: internal.svc
  - name: default
    upstream: up
"#,
        addr = up.addr
    ))
}

#[test]
fn forwarded_headers_do_not_trust_an_untrusted_client() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "10.0.0.0/8");
    send(
        "GET",
        &gw.url("/x"),
        &[
            ("host", "shop.example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
        ],
    );
    let r = &up.requests()[0];
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("http"));
    assert_eq!(r.header("x-forwarded-host"), Some("shop.example.com"));
    assert_eq!(
        r.header("forwarded"),
        Some("for=127.0.0.1;host=\"shop.example.com\";proto=http")
    );
    // Default Host: the target address as configured.
    assert_eq!(r.header("host"), Some(up.addr.to_string().as_str()));
}

#[test]
fn forwarded_headers_append_behind_a_trusted_proxy() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "127.0.0.1/32");
    send(
        "GET",
        &gw.url("/x"),
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ],
    );
    let r = &up.requests()[0];
    assert_eq!(r.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(r.header("x-forwarded-proto"), Some("https"));
}

#[test]
fn host_header_policies() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "10.0.0.0/8");
    send("GET", &gw.url("/preserve"), &[("host", "shop.example.com")]);
    send("GET", &gw.url("/fixed"), &[("host", "shop.example.com")]);
    let reqs = up.requests();
    assert_eq!(reqs[0].header("host"), Some("shop.example.com"));
    assert_eq!(reqs[1].header("host"), Some("internal.svc"));
}

#[test]
fn request_ids_are_made_or_kept_and_reach_both_sides() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "10.0.0.0/8");
    let a = get(&gw.url("/a"));
    let b = get(&gw.url("/b"));
    let kept = send("GET", &gw.url("/c"), &[("x-request-id", "trace-abc-123")]);
    let (ida, idb) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert_ne!(ida, idb);
    assert_eq!(kept.header("x-request-id"), Some("trace-abc-123"));
    let reqs = up.requests();
    assert_eq!(reqs[0].header("x-request-id"), Some(ida));
    assert_eq!(reqs[2].header("x-request-id"), Some("trace-abc-123"));
}

#[test]
fn hop_by_hop_headers_are_not_forwarded() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "10.0.0.0/8");
    let resp = raw(
        gw.addr,
        "GET /hop HTTP/1.1\r\nHost: a\r\nConnection: close, x-secret\r\nX-Secret: 1\r\n\
         Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nX-Kept: yes\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // The upstream's `keep-alive: timeout=5` response header is hop-by-hop too.
    assert!(
        !resp.to_ascii_lowercase().contains("keep-alive: timeout"),
        "{resp}"
    );
    let r = &up.requests()[0];
    for h in ["x-secret", "keep-alive", "te", "proxy-authorization"] {
        assert_eq!(r.header(h), None, "{h} was forwarded");
    }
    assert_eq!(r.header("x-kept"), Some("yes"));
}

#[test]
fn trace_context_is_continued_or_started() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        "upstreams:\n  - name: up\n    targets: [{{address: \"{}\"}}]\nroutes:\n  - {{name: all, upstream: up}}\n",
        up.addr
    ));
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    send(
        "GET",
        &gw.url("/t1"),
        &[("traceparent", incoming), ("tracestate", "vendor=abc")],
    );
    let seen = up.last("/t1").unwrap();
    let tp = seen.header("traceparent").unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(tp.ends_with("-01"));
    assert_ne!(
        &tp[36..52],
        "00f067aa0ba902b7",
        "the gateway's span is the parent"
    );
    assert_eq!(seen.header("tracestate"), Some("vendor=abc"));
    for (path, header) in [("/t2", None), ("/t3", Some("00-zz-bad-01"))] {
        let headers: Vec<(&str, &str)> = header.map(|h| ("traceparent", h)).into_iter().collect();
        send("GET", &gw.url(path), &headers);
        let tp = up
            .last(path)
            .unwrap()
            .header("traceparent")
            .unwrap()
            .to_string();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len()),
            ("00", 32, 16),
            "{tp}"
        );
        assert_ne!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
