//! Local rate limits through the real gateway: exact counts, no double burst at a window
//! boundary, independent keys, combined limits, dry-run, headers.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn gateway(up: &Upstream, extra: &str, limits: &str) -> Gateway {
    let a = portico::policy::auth::api_key::hash_key("key-a");
    let b = portico::policy::auth::api_key::hash_key("key-b");
    Gateway::start(&format!(
        r#"{extra}
consumers:
  - {{name: a, api_keys: ["{a}"]}}
  - {{name: b, api_keys: ["{b}"]}}
upstreams:
  - name: up
    targets: [{{address: "{up}"}}]
routes:
  - name: limited
    upstream: up
    access: {{providers: [api_key], anonymous: true}}
    rate_limits:
{limits}"#,
        up = up.addr
    ))
}

fn status(gw: &Gateway, headers: &[(&str, &str)]) -> u16 {
    send("GET", &gw.url("/"), headers).status
}

#[test]
fn exactly_the_burst_passes_then_429_with_headers() {
    let up = Upstream::start("up");
    let gw = gateway(
        &up,
        "",
        "      - {name: per-route, requests: 5, per: 10s, key: route}\n",
    );
    for i in 0..5 {
        assert_eq!(status(&gw, &[]), 200, "request {i}");
    }
    let r = get(&gw.url("/"));
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("2"), "one request per 2 s");
    assert_eq!(r.header("ratelimit-policy"), Some("\"per-route\";q=5;w=10"));
    assert_eq!(r.header("ratelimit"), Some("\"per-route\";r=0;t=10"));
    let j = r.json();
    assert_eq!(j["status"], 429);
    assert!(j["error"].as_str().unwrap().contains("per-route"));
    assert_eq!(up.count(), 5);
}

#[test]
fn a_window_boundary_lets_no_double_burst_through() {
    let up = Upstream::start("up");
    let gw = gateway(
        &up,
        "",
        "      - {name: fast, requests: 20, per: 1s, key: route}\n",
    );
    let start = Instant::now();
    let mut admitted = 0u64;
    while start.elapsed() < Duration::from_millis(1500) {
        if status(&gw, &[]) == 200 {
            admitted += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // GCRA bound: burst + rate × time; a fixed window would allow up to 2 × 20 + ... here.
    let bound = 20.0 + 20.0 * elapsed;
    assert!(
        admitted as f64 <= bound + 1.0,
        "{admitted} admitted, bound {bound:.1}"
    );
    assert!(
        admitted as f64 >= 20.0 + 20.0 * 1.2,
        "{admitted} admitted, fewer than the rate allows"
    );
}

#[test]
fn consumers_are_counted_separately_and_limits_combine() {
    let up = Upstream::start("up");
    let gw = gateway(
        &up,
        "",
        "      - {name: per-consumer, requests: 3, per: 1m, key: consumer}\n      - {name: per-route, requests: 5, per: 1m, key: route}\n",
    );
    let a = [("x-api-key", "key-a")];
    let b = [("x-api-key", "key-b")];
    for _ in 0..3 {
        assert_eq!(status(&gw, &a), 200);
    }
    let r = send("GET", &gw.url("/"), &a);
    assert_eq!(r.status, 429);
    assert!(
        r.json()["error"].as_str().unwrap().contains("per-consumer"),
        "{r:?}"
    );
    // b has its own consumer allowance, but only 2 route-wide requests are left.
    assert_eq!(status(&gw, &b), 200);
    assert_eq!(status(&gw, &b), 200);
    let r = send("GET", &gw.url("/"), &b);
    assert_eq!(r.status, 429);
    assert!(
        r.json()["error"].as_str().unwrap().contains("per-route"),
        "{r:?}"
    );
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"per-consumer\";q=3;w=60, \"per-route\";q=5;w=60")
    );
    assert_eq!(up.count(), 5);
}

#[test]
fn client_ips_behind_a_trusted_proxy_are_counted_separately() {
    let up = Upstream::start("up");
    let limits = "      - {name: per-ip, requests: 2, per: 1m, key: client_ip}\n";
    let gw = gateway(&up, "trusted_proxies: [127.0.0.1]", limits);
    for ip in ["198.51.100.1", "198.51.100.2"] {
        let h = [("x-forwarded-for", ip)];
        assert_eq!(status(&gw, &h), 200);
        assert_eq!(status(&gw, &h), 200);
        assert_eq!(status(&gw, &h), 429, "{ip}");
    }
    // Without trust, a forged X-Forwarded-For does not buy a new allowance.
    let gw = gateway(&up, "", limits);
    assert_eq!(status(&gw, &[("x-forwarded-for", "198.51.100.1")]), 200);
    assert_eq!(status(&gw, &[("x-forwarded-for", "198.51.100.2")]), 200);
    assert_eq!(status(&gw, &[("x-forwarded-for", "198.51.100.3")]), 429);
}

#[test]
fn dry_run_admits_everything_and_logs_what_it_would_refuse() {
    let up = Upstream::start("up");
    let gw = gateway(
        &up,
        "",
        "      - {name: trial, requests: 2, per: 1m, key: route, dry_run: true}\n",
    );
    for _ in 0..5 {
        assert_eq!(status(&gw, &[]), 200);
    }
    assert_eq!(up.count(), 5);
    assert!(eventually(Duration::from_secs(2), || gw
        .log_text()
        .matches("dry-run limit trial would answer 429")
        .count()
        == 3));
}

#[test]
fn headers_on_admitted_responses_when_asked() {
    let up = Upstream::start("up");
    let gw = gateway(
        &up,
        "",
        "      - {name: visible, requests: 10, per: 1m, key: route, headers_on_success: true}\n",
    );
    let r = get(&gw.url("/"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), Some("\"visible\";q=10;w=60"));
    assert_eq!(r.header("ratelimit"), Some("\"visible\";r=9;t=6"));
}

#[test]
fn a_path_parameter_keys_its_own_allowance() {
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  - name: up
    targets: [{{address: "{up}"}}]
routes:
  - name: items
    match: {{path_regex: '^/items/(?P<id>\d+)$'}}
    upstream: up
    rate_limits:
      - {{name: per-item, requests: 1, per: 1m, key: "path:id"}}
"#,
        up = up.addr
    ));
    assert_eq!(get(&gw.url("/items/1")).status, 200);
    assert_eq!(get(&gw.url("/items/1")).status, 429);
    assert_eq!(get(&gw.url("/items/2")).status, 200);
}

/// Send `n` requests at once (each on its own connection, released together) with
/// `headers`; how many were admitted.
fn admitted_at_once(gw: &Gateway, n: usize, headers: &[(&str, &str)]) -> usize {
    let statuses = at_once(n, &gw.url("/"), headers);
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    statuses.iter().filter(|s| **s == 200).count()
}

#[test]
fn concurrent_requests_never_get_past_a_local_limit() {
    let up = Upstream::start("up");
    let gw = gateway(
        &up,
        "",
        "      - {name: per-run, requests: 5, per: 1m, key: \"header:x-run\"}\n",
    );
    for run in 0..10 {
        let run = run.to_string();
        let admitted = admitted_at_once(&gw, 60, &[("x-run", &run)]);
        assert_eq!(admitted, 5, "run {run}");
    }
    assert_eq!(up.count(), 50);
}

#[test]
fn impossible_limits_are_refused_at_load() {
    let (ok, out) = check_config(&format!(
        "listeners:\n  - address: 127.0.0.1:{}\nupstreams: [{{name: u, targets: [{{address: \"127.0.0.1:1\"}}]}}]\nroutes:\n  - name: r\n    upstream: u\n    rate_limits:\n      - {{name: huge, requests: 1, per: 1h, burst: 10000000}}\n      - {{name: v6, requests: 1, per: 1s, ipv6_prefix: 129}}\n",
        free_port()
    ));
    assert!(!ok);
    assert!(out.contains("routes[0].rate_limits[0].burst"), "{out}");
    assert!(
        out.contains("routes[0].rate_limits[1].ipv6_prefix"),
        "{out}"
    );
}

#[test]
fn ipv6_clients_are_counted_by_their_network() {
    let up = Upstream::start("up");
    let gw = gateway(
        &up,
        "trusted_proxies: [127.0.0.1/32]",
        "      - {name: per-client, requests: 1, per: 1m, key: client_ip}\n",
    );
    let from = |ip: &str| status(&gw, &[("x-forwarded-for", ip)]);
    assert_eq!(from("2001:db8:0:1::1"), 200);
    // Another address of the same /64: the same holder.
    assert_eq!(from("2001:db8:0:1:ffff::2"), 429);
    assert_eq!(from("2001:db8:0:2::1"), 200);
    assert_eq!(up.count(), 2);
}

#[test]
fn the_policy_states_the_burst_a_client_can_use() {
    let up = Upstream::start("up");
    let gw = gateway(
        &up,
        "",
        "      - {name: bursty, requests: 5, per: 10s, burst: 6, key: route}\n",
    );
    let codes: Vec<u16> = (0..7).map(|_| status(&gw, &[])).collect();
    assert_eq!(codes, [200, 200, 200, 200, 200, 200, 429]);
    let r = send("GET", &gw.url("/"), &[]);
    assert_eq!(r.header("ratelimit-policy"), Some("\"bursty\";q=6;w=12"));
}

#[test]
fn a_sustained_flood_gets_no_more_than_burst_plus_rate() {
    let up = Upstream::start("up");
    let gw = gateway(
        &up,
        "",
        "      - {name: steady, requests: 50, per: 1s, burst: 10, key: route}\n",
    );
    let url = gw.url("/");
    let stop = Instant::now() + Duration::from_secs(4);
    let start = Instant::now();
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let agent = ureq::Agent::new_with_defaults();
                let mut admitted = 0;
                while Instant::now() < stop {
                    if let Ok(r) = agent.get(&url).call() {
                        admitted += usize::from(r.status() == 200);
                    }
                }
                admitted
            })
        })
        .collect();
    let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    // GCRA's guarantee over any interval t: at most burst + t / T. The measured t can only
    // be longer than the time the gateway decided in, so the bound only loosens under load.
    let t = start.elapsed().as_secs_f64();
    let bound = 10 + (t * 50.0).ceil() as usize;
    assert!(
        admitted <= bound,
        "{admitted} admitted in {t:.2}s, bound {bound}"
    );
    assert!(admitted >= 10, "{admitted}");
    assert_eq!(up.count(), admitted);
}
