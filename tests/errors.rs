//! Failing upstreams get honest, fast, JSON answers: 502, 503, 504, and connect failures
//! are retried on another target.

mod common;
use common::*;
use std::time::Duration;

fn one_route(upstream_body: &str) -> String {
    format!("upstreams:\n  - name: svc\n{upstream_body}routes:\n  - name: all\n    upstream: svc\n")
}

fn assert_json_error(r: &Resp, status: u16, contains: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["status"], status);
    assert!(
        j["error"].as_str().unwrap_or_default().contains(contains),
        "{j}"
    );
    assert_eq!(j["request_id"].as_str(), r.header("x-request-id"));
}

#[test]
fn slow_upstream_gets_504() {
    let up = Upstream::start("slow");
    // Longer than the client waits (15 s): a 504 at all is the 300 ms read timeout's.
    up.set_delay(Duration::from_secs(60));
    let gw = Gateway::start(&one_route(&format!(
        "    targets: [{{address: \"{}\"}}]\n    timeouts: {{read: 300ms}}\n",
        up.addr
    )));
    let r = get(&gw.url("/slow"));
    assert_json_error(&r, 504, "timed out");
}

#[test]
fn refused_connection_gets_502() {
    let port = free_port();
    let gw = Gateway::start(&one_route(&format!(
        "    retries: 0\n    targets: [{{address: \"127.0.0.1:{port}\"}}]\n"
    )));
    let r = get(&gw.url("/"));
    assert_json_error(&r, 502, "could not connect");
    // Another request on the same gateway is answered the same way: nothing is stuck.
    assert_json_error(&get(&gw.url("/")), 502, "could not connect");
}

#[test]
fn no_healthy_target_gets_503() {
    let (p1, p2) = (free_port(), free_port());
    let gw = Gateway::start(&one_route(&format!(
        "    targets: [{{address: \"127.0.0.1:{p1}\"}}, {{address: \"127.0.0.1:{p2}\"}}]\n    health_check: {{type: tcp, interval: 100ms, timeout: 50ms}}\n"
    )));
    assert!(
        eventually(Duration::from_secs(5), || get(&gw.url("/")).status == 503),
        "never answered 503"
    );
    assert_json_error(&get(&gw.url("/")), 503, "no healthy target");
}

#[test]
fn connect_failure_is_retried_on_another_target() {
    let up = Upstream::start("alive");
    let dead = free_port();
    // No health check: only the retry can save these requests.
    let gw = Gateway::start(&one_route(&format!(
        "    retries: 1\n    targets: [{{address: \"127.0.0.1:{dead}\"}}, {{address: \"{}\"}}]\n",
        up.addr
    )));
    for _ in 0..20 {
        let r = send("POST", &gw.url("/orders"), &[]);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.server(), "alive");
    }
    assert_eq!(
        up.count(),
        20,
        "each request reached the live target exactly once"
    );
}

#[test]
fn without_retries_a_dead_target_fails_some_requests() {
    // The counterpart of the retry test: it shows the retry is what saves requests there.
    let up = Upstream::start("alive");
    let dead = free_port();
    let gw = Gateway::start(&one_route(&format!(
        "    retries: 0\n    targets: [{{address: \"127.0.0.1:{dead}\"}}, {{address: \"{}\"}}]\n",
        up.addr
    )));
    let failures = (0..20).filter(|_| get(&gw.url("/")).status == 502).count();
    assert!((5..=15).contains(&failures), "{failures} of 20 failed");
}
