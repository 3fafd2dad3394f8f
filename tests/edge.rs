//! The edge, tried as an attacker would: every decision (route, access, IP lists, cache key)
//! is taken on the canonical request, and that request is what the upstream receives.
//! Each test sends raw bytes to the real gateway and reads what a recording origin got.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const KEY: &str = "edge-test-key-1";

fn gateway(up: &Upstream, server: &str) -> Gateway {
    let digest = portico::policy::auth::api_key::hash_key(KEY);
    Gateway::start_with(
        server,
        &format!(
            r#"
auth:
  api_keys: {{query: api_key}}
consumers:
  - {{name: ops, api_keys: ["{digest}"]}}
upstreams:
  - name: up
    targets: [{{address: "{addr}"}}]
routes:
  - name: admin
    match: {{path_prefix: /admin}}
    upstream: up
    access: {{providers: [api_key]}}
  - name: denied
    match: {{path_prefix: /internal}}
    upstream: up
    ip_deny: [127.0.0.0/8]
  - name: api-admin
    match: {{path_prefix: /api/admin}}
    upstream: up
    access: {{providers: [api_key]}}
  - name: api
    match: {{path_prefix: /api}}
    upstream: up
    strip_prefix: true
  - name: cached
    match: {{path_prefix: /c}}
    upstream: up
    cache: {{default_ttl: 60s}}
  - name: public
    upstream: up
"#,
            addr = up.addr
        ),
    )
}

/// Send `request` on a fresh connection; the status and the whole answer.
fn raw_status(addr: SocketAddr, request: &str) -> (u16, String) {
    let out = raw(addr, request);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn get_raw(addr: SocketAddr, target: &str, extra: &str) -> (u16, String) {
    raw_status(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: a.test\r\n{extra}Connection: close\r\n\r\n"),
    )
}

#[test]
fn access_rules_cannot_be_walked_around() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "");
    let attacks = [
        "//admin/secret",
        "/./admin/secret",
        "/public/../admin/secret",
        "/public/%2e%2e/admin/secret",
        "/%61dmin/secret",
        "/x/./../admin/secret",
    ];
    for target in attacks {
        let (status, out) = get_raw(gw.addr, target, "");
        assert_eq!(status, 401, "{target}: {out}");
        assert!(out.contains("\"request_id\""), "{target}: JSON body: {out}");
    }
    // Absolute form, reduced to origin form before the route is chosen.
    let (status, _) = get_raw(gw.addr, "http://a.test/x/../admin/secret", "");
    assert_eq!(status, 401);
    // Encoded separators and climbing above the root are refused outright.
    for target in [
        "/public%2F..%2Fadmin",
        "/public/..%2Fadmin",
        "/../admin",
        "/a\\b",
    ] {
        let (status, out) = get_raw(gw.addr, target, "");
        assert_eq!(status, 400, "{target}: {out}");
        assert!(out.contains("\"status\":400"), "{target}: {out}");
    }
    // On a strip_prefix route, `//` cannot skip the more specific protected route.
    let (status, _) = get_raw(gw.addr, "/api//admin", "");
    assert_eq!(status, 401);
    assert_eq!(
        up.count(),
        0,
        "nothing reached the origin: {:?}",
        up.requests()
    );

    // With the key, the origin gets the canonical path, not the client's spelling.
    let (status, _) = get_raw(
        gw.addr,
        "//admin/./x/../secret",
        &format!("x-api-key: {KEY}\r\n"),
    );
    assert_eq!(status, 200);
    assert_eq!(up.requests()[0].target, "/admin/secret");
    // Other escapes are kept, upper-cased.
    let (status, _) = get_raw(gw.addr, "/files/a%2fb%20c", "");
    assert_eq!(status, 400, "%2F is refused by default");
    let (status, _) = get_raw(gw.addr, "/files/a%7eb%20c%e2%82%ac", "");
    assert_eq!(status, 200);
    assert_eq!(up.requests()[1].target, "/files/a~b%20c%E2%82%AC");
}

#[test]
fn ip_deny_cannot_be_walked_around() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "");
    for target in [
        "/internal/x",
        "//internal/x",
        "/public/../internal/x",
        "/%69nternal/x",
    ] {
        let (status, _) = get_raw(gw.addr, target, "");
        assert_eq!(status, 403, "{target}");
    }
    assert_eq!(up.count(), 0);
}

#[test]
fn encoded_slashes_can_be_kept_and_slashes_unmerged() {
    let up = Upstream::start("up");
    let gw = gateway(
        &up,
        "  paths: {merge_slashes: false, encoded_slash: keep}\n",
    );
    let (status, _) = get_raw(gw.addr, "/files/a%2fb//c", "");
    assert_eq!(status, 200);
    assert_eq!(up.requests()[0].target, "/files/a%2Fb//c");
    // Still refused: %5C and climbing out.
    assert_eq!(get_raw(gw.addr, "/files/a%5cb", "").0, 400);
    assert_eq!(get_raw(gw.addr, "/files/../../x", "").0, 400);
}

#[test]
fn request_targets_that_are_not_origin_form() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "");
    // An absolute-form authority must agree with Host.
    let (status, _) = raw_status(
        gw.addr,
        "GET http://b.test/x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400);
    let (status, _) = raw_status(
        gw.addr,
        "GET http://a.test/x/../y?q=1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let r = up.last("/y").expect("origin got /y");
    assert_eq!(r.target, "/y?q=1");
    // `*` is for OPTIONS only.
    let (status, _) = raw_status(
        gw.addr,
        "GET * HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400);
}

#[test]
fn hosts_are_validated() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "");
    for host in [
        "a.test/c",
        "a b",
        "a.test:evil",
        "a,for=6.6.6.6",
        "a.test:1\", for=6.6.6.6;host=\"x",
    ] {
        let (status, out) = raw_status(
            gw.addr,
            &format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status, 400, "{host}: {out}");
    }
    let (status, _) = raw_status(gw.addr, "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 400, "HTTP/1.1 without Host");
    let (status, _) = raw_status(
        gw.addr,
        "GET /x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400, "two Hosts");
    assert_eq!(up.count(), 0);
    // A valid one is forwarded in canonical form.
    let (status, _) = raw_status(
        gw.addr,
        "GET /x HTTP/1.1\r\nHost: A.Test.:0080\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let r = &up.requests()[0];
    assert_eq!(r.header("x-forwarded-host"), Some("a.test:80"));
    assert_eq!(
        r.header("forwarded"),
        Some("for=127.0.0.1;host=\"a.test:80\";proto=http")
    );
}

#[test]
fn the_cache_cannot_be_poisoned_through_the_host() {
    let up = Upstream::start("up");
    up.script(
        "/c/c/x",
        200,
        &[("cache-control", "max-age=60")],
        "real c/c/x",
    );
    up.script("/c/x", 200, &[("cache-control", "max-age=60")], "poison");
    let gw = gateway(&up, "");
    // Host `a.test/c` + `/c/x` once made the key of `a.test` + `/c/c/x`.
    let (status, _) = raw_status(
        gw.addr,
        "GET /c/x HTTP/1.1\r\nHost: a.test/c\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400);
    let (status, out) = get_raw(gw.addr, "/c/c/x", "");
    assert_eq!(status, 200);
    assert!(out.ends_with("real c/c/x"), "{out}");
    // A response made for another port (reflected in X-Forwarded-Host) is another variant.
    up.script(
        "/c/port",
        200,
        &[("cache-control", "max-age=60")],
        "fwd-host",
    );
    let port_req = |host: &str| {
        raw_status(
            gw.addr,
            &format!("GET /c/port HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
    };
    assert_eq!(port_req("a.test:1234").0, 200);
    let (_, out) = port_req("a.test");
    assert!(
        out.to_ascii_lowercase()
            .contains("cache-status: portico; fwd="),
        "a miss: {out}"
    );
    assert_eq!(up.count_path("/c/port"), 2);
    let (_, out) = port_req("a.test");
    assert!(
        out.to_ascii_lowercase()
            .contains("cache-status: portico; hit"),
        "{out}"
    );
    assert_eq!(up.count_path("/c/port"), 2);
}

#[test]
fn forwarding_headers_cannot_be_forged() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "");
    let (status, _) = get_raw(
        gw.addr,
        "/x",
        "X-Real-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n",
    );
    assert_eq!(status, 200);
    let r = &up.requests()[0];
    assert_eq!(r.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(r.header("true-client-ip"), None);
    assert_eq!(r.header("x-forwarded-for"), Some("127.0.0.1"));
    let forwarded: Vec<_> = r.headers.iter().filter(|(n, _)| n == "forwarded").collect();
    assert_eq!(forwarded.len(), 1);
    assert!(!forwarded[0].1.contains("6.6.6.6"));
}

#[test]
fn ambiguous_headers_are_refused_or_made_single() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "");
    // A second Authorization would reach the origin unverified.
    let (status, _) = get_raw(
        gw.addr,
        "/admin/x",
        &format!(
            "x-api-key: {KEY}\r\nAuthorization: Bearer a\r\nAuthorization: Basic YWRtaW46eA==\r\n"
        ),
    );
    assert_eq!(status, 400);
    assert_eq!(up.count(), 0);
    // Identical Content-Length values become one; differing ones are refused.
    let (status, _) = raw_status(
        gw.addr,
        "POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5, 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(status, 200);
    let r = &up.requests()[0];
    let lengths: Vec<_> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .collect();
    assert_eq!(lengths.len(), 1);
    assert_eq!(lengths[0].1, "5");
    assert_eq!(r.body, "hello");
    let (status, _) = raw_status(
        gw.addr,
        "POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5, 6\r\nConnection: close\r\n\r\nhello!",
    );
    assert_eq!(status, 400);
    assert_eq!(up.count(), 1);
}

#[test]
fn api_keys_in_the_query_stay_at_the_gateway_and_out_of_logs() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "");
    let (status, _) = get_raw(gw.addr, &format!("/admin/x?a=1&api_key={KEY}&b=2"), "");
    assert_eq!(status, 200);
    assert_eq!(up.requests()[0].target, "/admin/x?a=1&b=2");
    // A failing upstream makes Pingora log the request: never with its query.
    up.stop();
    let (status, _) = get_raw(gw.addr, &format!("/admin/down?api_key={KEY}"), "");
    assert_eq!(status, 502);
    assert!(
        eventually(Duration::from_secs(5), || gw
            .log_text()
            .contains("/admin/down")),
        "the failure is logged: {}",
        gw.log_text()
    );
    assert!(!gw.log_text().contains(KEY), "{}", gw.log_text());
}

#[test]
fn oversized_headers_get_431() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "");
    let token = "a".repeat(800 * 1024);
    let (status, out) = get_raw(gw.addr, "/x", &format!("Authorization: Bearer {token}\r\n"));
    assert_eq!(status, 431, "{}", &out[..out.len().min(300)]);
    let small = "a".repeat(1000);
    let (status, _) = get_raw(gw.addr, "/x", &format!("Authorization: Bearer {small}\r\n"));
    assert_eq!(status, 200);
    assert_eq!(up.count(), 1);
}

/// Read until the server closes the connection; `false` if it was still open after `limit`.
fn closed_by_server(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).ok();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn idle_keepalive_connections_are_closed() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "  keepalive_timeout: 1s\n");
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    // The response, then the close (Pingora's default would wait for ever).
    assert!(closed_by_server(&mut s, Duration::from_secs(30)));
    assert_eq!(up.count(), 1);
}

/// Read one response with a `Content-Length` body off a kept-alive connection.
fn read_response(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return text,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Between two requests a kept-alive connection waits for the next request's first byte
/// outside the request machinery: that byte must reach the parser with the rest, however
/// the request is split, and a stop must close the waiting connection.
#[test]
fn a_kept_alive_connection_waits_for_its_next_request_and_closes_at_stop() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "");
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"GET /x/1 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut s).starts_with("HTTP/1.1 200"));
    // Idle, then a request whose first byte comes alone.
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"G").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"ET /x/2 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut s).starts_with("HTTP/1.1 200"));
    let targets: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, ["/x/1", "/x/2"]);
    signal(gw.pid(), "TERM");
    assert!(closed_by_server(&mut s, Duration::from_secs(30)));
}

#[test]
fn slow_headers_are_cut_while_normal_clients_are_served() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "  header_timeout: 2s\n");
    let addr = gw.addr;
    const SLOW: usize = 500;
    let outcome = rt().block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut slow = Vec::new();
        for _ in 0..SLOW {
            slow.push(tokio::spawn(async move {
                let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                    return false;
                };
                // One byte a second; the header never ends. Closed = a write or read fails.
                for b in
                    b"GET /x HTTP/1.1\r\nHost: a.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                        .iter()
                {
                    if s.write_all(&[*b]).await.is_err() {
                        return true;
                    }
                    let mut buf = [0u8; 64];
                    if let Ok(r) =
                        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await
                    {
                        return matches!(r, Ok(0) | Err(_));
                    }
                }
                false
            }));
        }
        // A normal client is served throughout.
        let mut served = 0;
        for _ in 0..10 {
            let r = tokio::task::spawn_blocking(move || {
                raw(
                    addr,
                    "GET /ok HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
                )
            })
            .await
            .unwrap_or_default();
            if r.starts_with("HTTP/1.1 200") {
                served += 1;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut closed = 0;
        for h in slow {
            if h.await.unwrap_or(false) {
                closed += 1;
            }
        }
        (served, closed)
    });
    assert_eq!(outcome.0, 10, "normal requests served");
    assert_eq!(
        outcome.1, SLOW,
        "every slow connection closed by the gateway"
    );
    assert_eq!(up.count_path("/x"), 0);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "");
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(
        b"GET /p1 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /p2 HTTP/1.1\r\nHost: a.test\r\n\r\nGET /p3 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let _ = s.read_to_string(&mut out);
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    let targets: Vec<_> = up.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, ["/p1", "/p2", "/p3"]);
    // The echo bodies come back in the order asked.
    let p1 = out.find("/p1").unwrap();
    let p2 = out.find("/p2").unwrap();
    let p3 = out.find("/p3").unwrap();
    assert!(p1 < p2 && p2 < p3, "{out}");
}

#[test]
fn a_stalled_body_is_cut() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "  body_timeout: 1s\n");
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\nab")
        .unwrap();
    assert!(closed_by_server(&mut s, Duration::from_secs(30)));
}

#[test]
fn mirrors_get_the_upstream_request_without_credentials_and_are_bounded() {
    let up = Upstream::start("up");
    let shadow = Upstream::start("shadow");
    // The first copy holds the only slot for as long as the shadow takes.
    shadow.set_delay(Duration::from_secs(10));
    let admin = free_port();
    let digest = portico::policy::auth::api_key::hash_key(KEY);
    let gw = Gateway::start(&format!(
        r#"
admin: {{address: "127.0.0.1:{admin}"}}
consumers:
  - {{name: ops, api_keys: ["{digest}"]}}
upstreams:
  - name: up
    targets: [{{address: "{up}"}}]
  - name: shadow
    targets: [{{address: "{shadow}"}}]
routes:
  - name: mirrored
    match: {{path_prefix: /api}}
    upstream: up
    strip_prefix: true
    access: {{providers: [api_key]}}
    mirror: {{upstream: shadow, percent: 100, timeout: 20s, max_in_flight: 1}}
"#,
        up = up.addr,
        shadow = shadow.addr
    ));
    for i in 0..3 {
        let (status, _) = raw_status(
            gw.addr,
            &format!(
                "GET /api/./items/{i} HTTP/1.1\r\nHost: a.test\r\nx-api-key: {KEY}\r\nCookie: sid=secret\r\nX-Consumer: root\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n"
            ),
        );
        assert_eq!(status, 200);
    }
    assert!(eventually(Duration::from_secs(10), || shadow.count() == 1));
    let copy = &shadow.requests()[0];
    let primary = &up.requests()[0];
    assert_eq!(copy.target, "/items/0", "rewritten like the primary");
    assert_eq!(copy.target, primary.target);
    assert_eq!(copy.header("x-consumer"), Some("ops"));
    assert_eq!(copy.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(copy.header("x-api-key"), None);
    assert_eq!(copy.header("cookie"), None);
    assert_eq!(copy.header("x-mirrored"), Some("1"));
    let metrics = admin_get(admin, "/metrics").body;
    assert!(
        metrics.contains("portico_mirror_dropped_total{route=\"mirrored\"} 2"),
        "{metrics}"
    );
    assert_eq!(shadow.count(), 1);
    assert_eq!(up.count(), 3);
}

#[test]
fn composition_encodes_client_values() {
    let users = Upstream::start("users");
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  - name: users
    targets: [{{address: "{addr}"}}]
routes:
  - name: profile
    match: {{path_exact: /profile}}
    compose:
      calls:
        - {{key: user, upstream: users, path: "/users/$query.id?view=$query.view", timeout: 2s}}
"#,
        addr = users.addr
    ));
    let (status, out) = get_raw(
        gw.addr,
        "/profile?id=../admin/secret?role=admin&view=a%26b%3Dc",
        "",
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        users.requests()[0].target,
        "/users/..%2Fadmin%2Fsecret%3Frole%3Dadmin?view=a%26b%3Dc"
    );
    // A value that would be a dot segment is refused.
    let (status, _) = get_raw(gw.addr, "/profile?id=..", "");
    assert_eq!(status, 400);
    assert_eq!(users.count(), 1);
}

#[test]
fn check_explains_each_edge_refusal() {
    let cases = [
        ("admin: {address: \"0.0.0.0:9901\"}\n", "admin.address"),
        ("server: {paths: {encoded_slash: decode}}\n", "server.paths.encoded_slash"),
        ("server: {max_request_header_bytes: 2MiB}\n", "server.max_request_header_bytes"),
        ("server: {header_timeout: 0s}\n", "server.header_timeout"),
        (
            "auth:\n  jwt:\n    - {name: h, algorithms: [HS256], keys: {secret_file: /nonexistent/secret}}\n",
            "auth.jwt[0].keys.secret_file",
        ),
        (
            "redis: {url: \"redis://127.0.0.1:1\", password_file: /nonexistent/pw}\n",
            "redis.password_file",
        ),
        (
            "upstreams: [{name: u, targets: [{address: \"127.0.0.1:1\"}]}]\nroutes: [{name: r, upstream: u, match: {path_prefix: /%61dmin}}]\n",
            "routes[0].match.path_prefix",
        ),
    ];
    for (yaml, path) in cases {
        let config = format!("listeners:\n  - address: 127.0.0.1:{}\n{yaml}", free_port());
        let (ok, out) = check_config(&config);
        assert!(!ok, "{yaml} accepted");
        assert!(out.contains(path), "{yaml}: {out}");
    }
    // Off loopback with a token is fine.
    let (ok, out) = check_config(&format!(
        "listeners:\n  - address: 127.0.0.1:{}\nadmin: {{address: \"0.0.0.0:9901\", token: a-long-enough-admin-token}}\n",
        free_port()
    ));
    assert!(ok, "{out}");
}

#[test]
fn secrets_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "a-file-secret-that-is-long-enough-for-hs256";
    let secret_file = dir.path().join("jwt-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let password_file = dir.path().join("redis-password");
    std::fs::write(&password_file, "s3cret-pw\n").unwrap();
    let redis = RedisServer::start_with(free_port(), &["--requirepass", "s3cret-pw"]);
    let up = Upstream::start("up");
    let admin = free_port();
    let gw = Gateway::start(&format!(
        r#"
admin: {{address: "127.0.0.1:{admin}", token: a-long-enough-admin-token}}
redis: {{url: "{redis}", password_file: {pw}, timeout: 2s, on_failure: fail_closed}}
auth:
  jwt:
    - {{name: h, algorithms: [HS256], keys: {{secret_file: {sf}}}}}
upstreams:
  - name: up
    targets: [{{address: "{up}"}}]
routes:
  - name: api
    upstream: up
    access: {{providers: [h]}}
    rate_limits:
      - {{name: fleet, requests: 2, per: 1m, key: route, cluster: true}}
"#,
        redis = redis.url(),
        pw = password_file.display(),
        sf = secret_file.display(),
        up = up.addr
    ));
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "ada", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap();
    let bearer = format!("Bearer {token}");
    let statuses: Vec<u16> = (0..3)
        .map(|_| send("GET", &gw.url("/x"), &[("authorization", &bearer)]).status)
        .collect();
    // Verified with the file's secret; counted in Redis, which needs the file's password.
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(up.count(), 2);
    // The admin token scheme is case-insensitive (RFC 9110 §11.1).
    let purge = send_body(
        "POST",
        &format!("http://127.0.0.1:{admin}/cache/purge"),
        &[("authorization", "bearer a-long-enough-admin-token")],
        "{\"all\": true}",
    );
    assert_eq!(purge.status, 200, "{}", purge.body);
}

#[test]
fn http2_requests_are_made_canonical_too() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "  h2c: true\n");
    let mut h2 = common::tls::H2::cleartext(gw.addr).unwrap();
    for path in [
        "//admin/secret",
        "/public/%2e%2e/admin/secret",
        "/%61dmin/secret",
    ] {
        let r = h2.request("GET", "a.test", path, &[], b"").unwrap();
        assert_eq!(r.status, 401, "{path}");
    }
    let r = h2
        .request("GET", "a.test", "/public/%2F..", &[], b"")
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(up.count(), 0);
    let r = h2
        .request(
            "GET",
            "a.test",
            "/x/../admin/./secret",
            &[("x-api-key", KEY)],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.requests()[0].target, "/admin/secret");
    // An :authority that is not a host is refused like a Host would be.
    let r = h2.request("GET", "a,for=6.6.6.6", "/x", &[], b"");
    assert!(r.is_err() || r.unwrap().status == 400);
}

#[test]
fn a_slow_header_on_a_kept_alive_connection_is_cut_too() {
    let up = Upstream::start("up");
    let gw = gateway(&up, "  keepalive_timeout: 1s\n  header_timeout: 1s\n");
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // The second request's header, one byte every 300 ms: 60 bytes would take 18 s; it is
    // due 2 s (keep-alive wait + header timeout) after the first request ended.
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let header = b"GET /second HTTP/1.1\r\nHost: a.test\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n\r\n";
    let mut sent = 0;
    let mut closed = false;
    for b in header {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        sent += 1;
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(_) => panic!("answered a header that never ended"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(closed, "the connection outlived its header deadline");
    assert!(
        sent < header.len(),
        "closed only after the whole header ({sent} bytes)"
    );
    assert_eq!(up.count_path("/second"), 0);
    assert_eq!(up.count(), 1);
}
