//! Route policies added to the pipeline: `maintenance` (the worked example of
//! docs/architecture.md) answers before any other policy, lets the listed clients through,
//! and is counted like every policy's answer.

mod common;
use common::*;
use std::collections::HashMap;

const TOKEN: &str = "maintenance-test-admin-token";

fn gateway(up: &Upstream, admin: u16) -> Gateway {
    let key = portico::policy::auth::api_key::hash_key("key-ops");
    Gateway::start(&format!(
        r#"admin:
  address: 127.0.0.1:{admin}
  token: {TOKEN}
trusted_proxies: [127.0.0.1]
consumers:
  - {{name: ops, api_keys: ["{key}"]}}
upstreams:
  - name: app
    targets: [{{address: "{up}"}}]
routes:
  - name: orders
    match: {{path_prefix: /orders}}
    upstream: app
    access: {{providers: [api_key]}}
    maintenance:
      message: "orders are moving to the new database; back at 14:00 UTC"
      retry_after: 90s
      ip_allow: [10.0.0.0/8]
  - name: users
    match: {{path_prefix: /users}}
    upstream: app
"#,
        up = up.addr
    ))
}

fn refusals(admin: u16) -> f64 {
    let scrape = admin_get(admin, "/metrics").body;
    let series: HashMap<&str, f64> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            Some((s, v.parse().ok()?))
        })
        .collect();
    series
        .get(r#"portico_policy_refusals_total{policy="maintenance",reason="maintenance",route="orders"}"#)
        .copied()
        .unwrap_or(0.0)
}

#[test]
fn maintenance_answers_first_and_lets_the_listed_clients_through() {
    let up = Upstream::start("app");
    let admin = free_port();
    let gw = gateway(&up, admin);
    let outsider = [("x-forwarded-for", "203.0.113.9")];

    // Before authentication: no credentials, and still the maintenance answer, not a 401.
    for _ in 0..3 {
        let r = send("GET", &gw.url("/orders/7"), &outsider);
        assert_eq!(r.status, 503, "{r:?}");
        assert_eq!(r.header("retry-after"), Some("90"));
        let j = r.json();
        assert_eq!(j["status"], 503);
        assert_eq!(
            j["error"],
            "orders are moving to the new database; back at 14:00 UTC"
        );
        assert_eq!(j["request_id"].as_str(), r.header("x-request-id"));
    }
    // A valid key does not get past it either.
    let keyed = [("x-forwarded-for", "203.0.113.9"), ("x-api-key", "key-ops")];
    assert_eq!(send("GET", &gw.url("/orders/7"), &keyed).status, 503);
    assert_eq!(up.count(), 0, "nothing reached the upstream");

    // The team's network gets through, and the route's other policies still apply.
    let ops = [("x-forwarded-for", "10.1.2.3")];
    assert_eq!(send("GET", &gw.url("/orders/7"), &ops).status, 401);
    let ops_keyed = [("x-forwarded-for", "10.1.2.3"), ("x-api-key", "key-ops")];
    let r = send("GET", &gw.url("/orders/7"), &ops_keyed);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(up.count_path("/orders/7"), 1);

    // Other routes are untouched.
    assert_eq!(send("GET", &gw.url("/users/1"), &outsider).status, 200);
    assert_eq!(up.count(), 2);

    assert_eq!(
        refusals(admin),
        4.0,
        "every maintenance answer is counted once"
    );
}

#[test]
fn a_bad_maintenance_section_is_refused_with_its_path() {
    let (ok, out) = check_config(
        r#"listeners: [{address: "127.0.0.1:1"}]
upstreams: [{name: app, targets: [{address: "127.0.0.1:2"}]}]
routes:
  - name: orders
    upstream: app
    maintenance: {retry_after: 0s, ip_allow: [not-a-network]}
"#,
    );
    assert!(!ok, "{out}");
    assert!(out.contains("routes[0].maintenance.ip_allow[0]"), "{out}");
    assert!(out.contains("routes[0].maintenance.retry_after"), "{out}");
}
