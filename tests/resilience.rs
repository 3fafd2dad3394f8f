//! Resilience through the real gateway, against upstreams that fail on command: outlier
//! detection, the circuit breaker, retries and their budget, the route deadline, and
//! concurrency limits.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn metric(port: u16, series: &str) -> Option<f64> {
    let text = admin_get(port, "/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The `/status` entry of upstream `name`.
fn upstream_status(port: u16, name: &str) -> serde_json::Value {
    let status = admin_get(port, "/status").json();
    status["upstreams"]
        .as_array()
        .and_then(|list| list.iter().find(|u| u["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no upstream {name} in {status}"))
}

fn target_status(port: u16, upstream: &str, addr: std::net::SocketAddr) -> serde_json::Value {
    let u = upstream_status(port, upstream);
    u["targets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["address"] == addr.to_string()).cloned())
        .unwrap_or_else(|| panic!("no target {addr} in {u}"))
}

#[test]
fn outlier_detection_ejects_a_failing_target_and_takes_it_back() {
    let bad = Upstream::start("bad");
    let good = Upstream::start("good");
    bad.set_fault(Fault::Status(500));
    let admin = free_port();
    let gw = Gateway::start(&format!(
        r#"admin: {{address: 127.0.0.1:{admin}}}
upstreams:
  - name: pool
    targets: [{{address: "{}"}}, {{address: "{}"}}]
    outlier_detection:
      consecutive_failures: 3
      on: [5xx]
      base_ejection: 1s
      max_ejection: 4s
      max_ejected_percent: 50
routes:
  - {{name: all, upstream: pool}}
"#,
        bad.addr, good.addr
    ));
    let url = gw.url("/x");
    for _ in 0..20 {
        get(&url);
    }
    // Three 500s in a row, and the target is out.
    assert_eq!(bad.count(), 3);
    assert_eq!(good.count(), 17);
    let t = target_status(admin, "pool", bad.addr);
    assert!(
        t["ejected_for_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0 && ms <= 1000),
        "{t}"
    );
    assert_eq!(t["ejections"], 1);
    assert_eq!(
        metric(admin, "portico_upstream_ejections_total{upstream=\"pool\"}"),
        Some(1.0)
    );
    let series = format!(
        "portico_upstream_target_ejected{{target=\"{}\",upstream=\"pool\"}}",
        bad.addr
    );
    assert_eq!(metric(admin, &series), Some(1.0));

    // Recovered and back after its second; the next ejection in a row lasts twice as long.
    bad.set_fault(Fault::None);
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..6 {
        assert_eq!(get(&url).status, 200);
    }
    assert_eq!(bad.count(), 6);
    assert_eq!(metric(admin, &series), Some(0.0));
    bad.set_fault(Fault::Status(500));
    for _ in 0..10 {
        get(&url);
    }
    assert_eq!(bad.count(), 9);
    let t = target_status(admin, "pool", bad.addr);
    assert!(
        t["ejected_for_ms"].as_u64().is_some_and(|ms| ms > 1000),
        "{t}"
    );

    // Never more than half the pool out: the other target failing too stays in.
    good.set_fault(Fault::Status(500));
    for _ in 0..5 {
        assert_eq!(get(&url).status, 500);
    }
    assert_eq!(bad.count(), 9);
    let t = target_status(admin, "pool", good.addr);
    assert_eq!(t["ejected_for_ms"], 0, "{t}");
    assert!(gw.log_text().contains("maximum share of targets ejected"));
}

#[test]
fn circuit_breaker_opens_fails_fast_half_opens_and_closes() {
    let up = Upstream::start("flaky");
    up.set_fault(Fault::Status(503));
    let admin = free_port();
    let gw = Gateway::start(&format!(
        r#"admin: {{address: 127.0.0.1:{admin}}}
upstreams:
  - name: flaky
    targets: [{{address: "{}"}}]
    circuit_breaker: {{error_rate: 50, min_requests: 5, window: 10s, open_for: 1s, probes: 2}}
routes:
  - {{name: degraded, match: {{path_prefix: /list}}, upstream: flaky, fallback: {{status: 200, body: {{items: [], degraded: true}}}}}}
  - {{name: plain, upstream: flaky}}
"#,
        up.addr
    ));
    let url = gw.url("/x");
    for _ in 0..5 {
        let r = get(&url);
        assert_eq!((r.status, r.header("x-served-by")), (503, Some("flaky")));
    }
    // Open: refused at once, without reaching the upstream (its count stays at 5).
    let r = get(&url);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("circuit breaker is open"),
        "{}",
        r.body
    );
    let r = get(&gw.url("/list"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"items": [], "degraded": true}));
    assert_eq!(up.count(), 5);
    assert_eq!(
        upstream_status(admin, "flaky")["circuit_breaker"]["state"],
        "open"
    );
    assert_eq!(
        metric(admin, "portico_upstream_breaker_state{upstream=\"flaky\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(
            admin,
            "portico_upstream_breaker_rejections_total{upstream=\"flaky\"}"
        ),
        Some(2.0)
    );

    // Half-open with the upstream still failing: the probe fails and it opens again.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(&url).header("x-served-by"), Some("flaky"));
    assert_eq!(up.count(), 6);
    assert!(get(&url).header("x-served-by").is_none());
    assert_eq!(up.count(), 6);

    // Recovered: two successful probes close it.
    up.set_fault(Fault::None);
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..2 {
        assert_eq!(get(&url).status, 200);
    }
    assert_eq!(
        upstream_status(admin, "flaky")["circuit_breaker"]["state"],
        "closed"
    );
    for _ in 0..5 {
        assert_eq!(get(&url).status, 200);
    }
    assert_eq!(up.count(), 13);
    assert_eq!(
        metric(
            admin,
            "portico_upstream_breaker_opened_total{upstream=\"flaky\"}"
        ),
        Some(2.0)
    );
}

#[test]
fn retries_only_idempotent_requests_that_reached_the_upstream() {
    let failing = Upstream::start("failing");
    let hanging = Upstream::start("hanging");
    let resetting = Upstream::start("resetting");
    let good = Upstream::start("good");
    failing.set_fault(Fault::Status(503));
    hanging.set_fault(Fault::Hang);
    resetting.set_fault(Fault::ResetBeforeHead);
    let refused = free_port();
    let retry = "retry: {attempts: 2, try_timeout: 300ms, backoff: 1ms, max_backoff: 5ms}";
    let gw = Gateway::start(&format!(
        r#"upstreams:
  - {{name: status, targets: [{{address: "{f}"}}, {{address: "{g}"}}]}}
  - {{name: hang, targets: [{{address: "{h}"}}, {{address: "{g}"}}]}}
  - {{name: reset, targets: [{{address: "{r}"}}, {{address: "{g}"}}]}}
  - {{name: refuse, targets: [{{address: "127.0.0.1:{refused}"}}, {{address: "{g}"}}]}}
routes:
  - {{name: status, match: {{path_prefix: /status}}, upstream: status, {retry}}}
  - {{name: hang, match: {{path_prefix: /hang}}, upstream: hang, {retry}}}
  - {{name: reset, match: {{path_prefix: /reset}}, upstream: reset, {retry}}}
  - {{name: refuse, match: {{path_prefix: /refuse}}, upstream: refuse}}
  - {{name: no-retry, match: {{path_prefix: /once}}, upstream: status}}
"#,
        f = failing.addr,
        g = good.addr,
        h = hanging.addr,
        r = resetting.addr,
    ));
    for (path, failing) in [
        ("/status", &failing),
        ("/hang", &hanging),
        ("/reset", &resetting),
    ] {
        // Every GET ends well: one that met the failing target went on to the good one.
        for _ in 0..4 {
            assert_eq!(get(&gw.url(path)).status, 200, "GET {path}");
        }
        // Retries move the round robin on, so the split is not even: each GET met the
        // failing target at most once, and the good one answered all four.
        let tried = failing.count_path(path);
        assert!((1..=4).contains(&tried), "{path}: {tried}");
        assert_eq!(good.count_path(path), 4, "{path}");
        // A POST that reached the failing target is not sent again.
        let statuses: Vec<u16> = (0..4)
            .map(|_| send_body("POST", &gw.url(path), &[], "{}").status)
            .collect();
        let expected = match path {
            "/status" => 503,
            "/hang" => 504,
            _ => 502,
        };
        let posts = |u: &Upstream| {
            u.requests()
                .iter()
                .filter(|r| r.method == "POST" && r.target == path)
                .count()
        };
        let (to_failing, to_good) = (posts(failing), posts(&good));
        assert!(
            to_failing >= 1 && to_failing + to_good == 4,
            "{path}: {to_failing} {to_good}"
        );
        let count = |code| statuses.iter().filter(|s| **s == code).count();
        assert_eq!(
            (count(expected), count(200)),
            (to_failing, to_good),
            "{path}: {statuses:?}"
        );
    }
    // A POST whose connect was refused never left, so it goes to the other target.
    for _ in 0..4 {
        assert_eq!(send_body("POST", &gw.url("/refuse"), &[], "{}").status, 200);
    }
    // Without a retry section, a 503 goes back to the client as it is.
    let statuses: Vec<u16> = (0..4).map(|_| get(&gw.url("/once")).status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        2,
        "{statuses:?}"
    );
}

#[test]
fn the_retry_budget_caps_retries_at_a_share_of_requests() {
    let up = Upstream::start("down");
    up.set_fault(Fault::Status(503));
    let admin = free_port();
    let _gw = Gateway::start(&format!(
        r#"admin: {{address: 127.0.0.1:{admin}}}
upstreams:
  - name: down
    targets: [{{address: "{}"}}]
    retry_budget: {{percent: 20, min_per_second: 0}}
routes:
  - {{name: all, upstream: down, retry: {{attempts: 3, backoff: 1ms, max_backoff: 2ms}}}}
"#,
        up.addr
    ));
    let url = format!("http://{}/x", _gw.addr);
    for _ in 0..20 {
        assert_eq!(get(&url).status, 503);
    }
    // 20 requests allow 4 retries (the 5th, 10th, 15th and 20th request get one each),
    // where 40 were wanted.
    assert_eq!(up.count(), 24);
    assert_eq!(
        metric(admin, "portico_upstream_retries_total{upstream=\"down\"}"),
        Some(4.0)
    );
    assert_eq!(
        metric(
            admin,
            "portico_upstream_retry_budget_exhausted_total{upstream=\"down\"}"
        ),
        Some(20.0)
    );
    let budget = &upstream_status(admin, "down")["retry_budget"];
    assert_eq!(
        (
            budget["window_requests"].as_u64(),
            budget["window_retries"].as_u64()
        ),
        (Some(20), Some(4)),
        "{budget}"
    );
}

#[test]
fn the_route_deadline_holds_across_attempts() {
    let hanging = Upstream::start("hanging");
    hanging.set_fault(Fault::Hang);
    let slow = Upstream::start("slow");
    slow.set_delay(Duration::from_secs(3));
    let gw = Gateway::start(&format!(
        r#"upstreams:
  - {{name: hang, targets: [{{address: "{}"}}]}}
  - {{name: slow, targets: [{{address: "{}"}}]}}
routes:
  - name: retried
    match: {{path_prefix: /retried}}
    upstream: hang
    timeout: 800ms
    retry: {{attempts: 5, try_timeout: 300ms, backoff: 1ms, max_backoff: 2ms}}
  - {{name: slow, upstream: slow, timeout: 500ms}}
"#,
        hanging.addr, slow.addr
    ));
    let t = Instant::now();
    let r = get(&gw.url("/retried"));
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.body);
    // Not before the deadline (time only grows on a busy machine, so no upper bound here:
    // the count of tries shows the deadline cut the retries short).
    assert!(took >= Duration::from_millis(750), "{took:?}");
    // Two full tries of 300 ms, a third cut short by the deadline (five were allowed).
    assert_eq!(hanging.count(), 3);
    // The service takes 3 s: a 504 is the 500 ms deadline's.
    let t = Instant::now();
    let r = get(&gw.url("/slow"));
    let took = t.elapsed();
    assert_eq!(r.status, 504);
    assert!(took >= Duration::from_millis(450), "{took:?}");
}

#[test]
fn requests_beyond_max_concurrent_get_503_at_once() {
    let up = Upstream::start("slow");
    up.set_delay(Duration::from_millis(1000));
    let admin = free_port();
    let gw = Gateway::start(&format!(
        "admin: {{address: 127.0.0.1:{admin}}}\nupstreams:\n  - {{name: slow, max_concurrent: 2, targets: [{{address: \"{}\"}}]}}\n  - {{name: other, targets: [{{address: \"{}\"}}]}}\nroutes:\n  - {{name: limited, match: {{path_prefix: /limited}}, upstream: other, max_concurrent: 2}}\n  - {{name: all, upstream: slow}}\n",
        up.addr, up.addr
    ));
    for (path, series) in [
        (
            "/work",
            "portico_upstream_overload_rejections_total{upstream=\"slow\"} 3",
        ),
        (
            "/limited",
            "portico_route_overload_rejections_total{route=\"limited\"} 3",
        ),
    ] {
        let url = gw.url(path);
        let clients: Vec<_> = (0..5)
            .map(|i| {
                let url = url.clone();
                std::thread::spawn(move || {
                    // The first two take the slots before the rest arrive.
                    std::thread::sleep(Duration::from_millis(if i < 2 { 0 } else { 300 }));
                    let t = Instant::now();
                    let r = get(&url);
                    (
                        r.status,
                        r.header("retry-after").map(str::to_string),
                        t.elapsed(),
                    )
                })
            })
            .collect();
        let results: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        let served: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
        let shed: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
        assert_eq!((served.len(), shed.len()), (2, 3), "{path}: {results:?}");
        // Shed, not queued: a queued request would have been served once a slot freed.
        for (_, retry, _) in &shed {
            assert_eq!(retry.as_deref(), Some("1"));
        }
        let metrics = admin_get(admin, "/metrics").body;
        assert!(metrics.contains(series), "{metrics}");
    }
    // The slots are free again once the first requests ended.
    up.set_delay(Duration::ZERO);
    assert_eq!(get(&gw.url("/work")).status, 200);
    assert_eq!(get(&gw.url("/limited")).status, 200);
}

#[test]
fn one_hanging_target_of_three_keeps_latency_bounded() {
    let hanging = Upstream::start("hanging");
    hanging.set_fault(Fault::Hang);
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let gw = Gateway::start(&format!(
        r#"upstreams:
  - name: pool
    targets: [{{address: "{}"}}, {{address: "{}"}}, {{address: "{}"}}]
    outlier_detection: {{consecutive_failures: 2, on: [timeout, connect], base_ejection: 30s}}
routes:
  - {{name: all, upstream: pool, retry: {{attempts: 2, try_timeout: 200ms, backoff: 1ms, max_backoff: 5ms}}}}
"#,
        hanging.addr, a.addr, b.addr
    ));
    let url = gw.url("/x");
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                (0..250)
                    .map(|_| {
                        let t = Instant::now();
                        let status = get(&url).status;
                        (status, t.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut results: Vec<(u16, Duration)> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        results.iter().all(|r| r.0 == 200),
        "every request is answered"
    );
    results.sort_by_key(|r| r.1);
    let at = |q: f64| results[((results.len() as f64 * q) as usize).min(results.len() - 1)].1;
    let (p50, p99, max) = (at(0.5), at(0.99), results[results.len() - 1].1);
    println!("1 of 3 targets hanging, 1000 requests: p50 {p50:?} p99 {p99:?} max {max:?}; the hanging target got {}", hanging.count());
    // The hanging target costs a request one try timeout at most, and only until it is out:
    // counted, not timed (the latencies above are reported; a busy machine stretches them).
    assert!(hanging.count() <= 8, "{}", hanging.count());
}

#[test]
fn resilience_settings_are_checked() {
    let (ok, text) = check_config(
        r#"listeners: [{address: 127.0.0.1:1}]
upstreams:
  - name: u
    max_concurrent: 0
    targets: [{address: 127.0.0.1:2}]
    outlier_detection: {on: [refused], max_ejected_percent: 120}
    circuit_breaker: {error_rate: 0, probes: 0}
routes:
  - {name: r, upstream: u, retry: {attempts: 0, on: [404]}, timeout: 0s, max_concurrent: 0, fallback: {status: 700, body: {}}}
"#,
    );
    assert!(!ok);
    for path in [
        "upstreams[0].max_concurrent",
        "upstreams[0].outlier_detection.on",
        "upstreams[0].outlier_detection.max_ejected_percent",
        "upstreams[0].circuit_breaker.error_rate",
        "upstreams[0].circuit_breaker.probes",
        "routes[0].retry.attempts",
        "routes[0].retry.on",
        "routes[0].timeout",
        "routes[0].max_concurrent",
        "routes[0].fallback.status",
    ] {
        assert!(text.contains(path), "{path} missing in:\n{text}");
    }
}

#[test]
fn a_response_cut_mid_body_is_not_retried_but_counts_against_its_target() {
    let cutting = Upstream::start("cutting");
    cutting.set_fault(Fault::ResetMidBody);
    let good = Upstream::start("good");
    let gw = Gateway::start(&format!(
        r#"upstreams:
  - name: pool
    targets: [{{address: "{}"}}, {{address: "{}"}}]
    outlier_detection: {{consecutive_failures: 2, on: [reset], base_ejection: 30s}}
routes:
  - {{name: all, upstream: pool, retry: {{attempts: 3, backoff: 1ms, max_backoff: 2ms}}}}
"#,
        cutting.addr, good.addr
    ));
    let mut cut = 0;
    for _ in 0..10 {
        match try_send("GET", &gw.url("/file"), &[], "") {
            Ok(r) if r.status == 200 && r.header("x-served-by") == Some("good") => {}
            // The header had gone out: the client sees the body end early.
            Ok(r) => {
                assert!(r.body.len() < 1000, "{} bytes", r.body.len());
                cut += 1;
            }
            Err(_) => cut += 1,
        }
    }
    assert_eq!(
        (cut, cutting.count()),
        (2, 2),
        "sent once each, then ejected"
    );
    assert_eq!(good.count(), 8);
}

#[test]
fn an_open_breaker_stays_open_over_a_reload() {
    let up = Upstream::start("down");
    up.set_fault(Fault::Status(503));
    let admin = free_port();
    let gw = Gateway::start(&format!(
        r#"admin: {{address: 127.0.0.1:{admin}}}
upstreams:
  - name: down
    targets: [{{address: "{}"}}]
    circuit_breaker: {{min_requests: 3, open_for: 60s}}
routes:
  - {{name: all, upstream: down}}
"#,
        up.addr
    ));
    for _ in 0..3 {
        get(&gw.url("/x"));
    }
    assert_eq!(
        upstream_status(admin, "down")["circuit_breaker"]["state"],
        "open"
    );
    // A reload that leaves the upstream's section alone keeps its breaker open.
    let text = std::fs::read_to_string(&gw.conf).unwrap();
    std::fs::write(
        &gw.conf,
        text.replace(
            "routes:\n",
            "routes:\n  - {name: new, match: {path_prefix: /new}, upstream: down}\n",
        ),
    )
    .unwrap();
    signal(gw.pid(), "HUP");
    assert!(eventually(Duration::from_secs(5), || {
        admin_get(admin, "/status").json()["config"]["generation"] == 2
    }));
    assert_eq!(
        upstream_status(admin, "down")["circuit_breaker"]["state"],
        "open"
    );
    assert_eq!(get(&gw.url("/new")).status, 503);
    assert_eq!(up.count(), 3);
}
