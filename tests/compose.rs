//! API composition: concurrent calls combined into one JSON answer, with per-call timeouts
//! and failure policies.

mod common;
use common::*;
use std::time::Duration;

fn gateway(a: &Upstream, b: &Upstream, c: &Upstream, calls: &str) -> Gateway {
    Gateway::start(&format!(
        r#"upstreams:
  - name: a
    targets: [{{address: "{a}"}}]
  - name: b
    targets: [{{address: "{b}"}}]
  - name: c
    targets: [{{address: "{c}"}}]
routes:
  - name: overview
    match: {{path_exact: /overview}}
    compose:
      calls:
{calls}
"#,
        a = a.addr,
        b = b.addr,
        c = c.addr
    ))
}

/// As [`CALLS`], each required and with time to spare on a busy machine.
const CONCURRENT_CALLS: &str = "        - {key: orders, upstream: a, path: \"/orders?user=$query.user\", timeout: 20s}\n        - {key: user, upstream: b, path: /users/1, timeout: 20s}\n        - {key: stock, upstream: c, path: /stock, timeout: 20s}\n";

const CALLS: &str = "        - {key: orders, upstream: a, path: \"/orders?user=$query.user\", timeout: 1s}\n        - {key: user, upstream: b, path: /users/1, timeout: 1s, required: false}\n        - {key: stock, upstream: c, path: /stock, timeout: 300ms, required: false}\n";

#[test]
fn all_calls_succeed_concurrently() {
    let (a, b, c) = (
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("c"),
    );
    a.script(
        "/orders",
        200,
        &[("content-type", "application/json")],
        "[{\"id\": 1}]",
    );
    b.script(
        "/users/1",
        200,
        &[("content-type", "application/json")],
        "{\"name\": \"Ada\"}",
    );
    c.script(
        "/stock",
        200,
        &[("content-type", "application/json")],
        "{\"left\": 3}",
    );
    // No service answers before all three calls have arrived: calls made one after
    // another would never get past the first.
    let gate = Gate::new(3);
    for up in [&a, &b, &c] {
        up.set_gate(gate.clone());
    }
    let gw = gateway(&a, &b, &c, CONCURRENT_CALLS);
    let r = send(
        "GET",
        &gw.url("/overview?user=7"),
        &[("x-request-id", "compose-1")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        serde_json::json!({"orders": [{"id": 1}], "user": {"name": "Ada"}, "stock": {"left": 3}})
    );
    assert_eq!(gate.arrived(), 3);
    let seen = a.last("/orders").unwrap();
    assert_eq!(seen.target, "/orders?user=7");
    assert_eq!(seen.header("x-request-id"), Some("compose-1"));
}

#[test]
fn optional_failures_become_null_and_required_ones_fail_the_whole() {
    let (a, b, c) = (
        Upstream::start("a"),
        Upstream::start("b"),
        Upstream::start("c"),
    );
    a.script(
        "/orders",
        200,
        &[("content-type", "application/json")],
        "[]",
    );
    b.script("/users/1", 500, &[], "boom");
    c.script("/stock", 200, &[("content-type", "application/json")], "{}");
    // Longer than the client waits (15 s): an answer at all shows the 300 ms timeout cut it.
    c.set_delay(Duration::from_secs(60));
    let gw = gateway(&a, &b, &c, CALLS);
    let r = get(&gw.url("/overview"));
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["orders"], serde_json::json!([]));
    assert_eq!(j["user"], serde_json::Value::Null);
    assert_eq!(j["stock"], serde_json::Value::Null);
    assert_eq!(j["errors"]["user"], "answered 500");
    assert!(
        j["errors"]["stock"]
            .as_str()
            .unwrap()
            .starts_with("timed out"),
        "{j}"
    );

    // The same failures on required calls: 502 naming the call.
    let strict = gateway(
        &a,
        &b,
        &c,
        "        - {key: orders, upstream: a, path: /orders}\n        - {key: user, upstream: b, path: /users/1}\n",
    );
    let r = get(&strict.url("/overview"));
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.json()["error"].as_str().unwrap().contains("\"user\""),
        "{r:?}"
    );
    let slow = gateway(
        &a,
        &b,
        &c,
        "        - {key: stock, upstream: c, path: /stock, timeout: 200ms}\n",
    );
    let r = get(&slow.url("/overview"));
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.json()["error"].as_str().unwrap().contains("timed out"),
        "{r:?}"
    );
}
