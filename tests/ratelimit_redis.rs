//! Cluster-wide rate limits through a real redis-server shared by two real gateways, and the
//! failure policies when Redis goes away.

mod common;
use common::*;
use std::time::{Duration, Instant};

fn gateway(up: &Upstream, redis_url: &str, policy: &str, limit: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
redis: {{url: "{redis_url}", timeout: 100ms, on_failure: {policy}}}
upstreams:
  - name: up
    targets: [{{address: "{up}"}}]
routes:
  - name: shared
    upstream: up
    rate_limits:
      - {limit}
"#,
        up = up.addr
    ))
}

#[test]
fn two_gateways_sharing_redis_admit_the_configured_count_together() {
    let redis = RedisServer::start();
    let up = Upstream::start("up");
    let limit = "{name: fleet, requests: 10, per: 1m, key: route, cluster: true}";
    let a = gateway(&up, &redis.url(), "fail_open", limit);
    let b = gateway(&up, &redis.url(), "fail_open", limit);
    let mut admitted = 0;
    for i in 0..30 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = get(&gw.url("/"));
        match r.status {
            200 => admitted += 1,
            429 => {
                assert!(r.header("retry-after").is_some());
                assert_eq!(r.header("ratelimit-policy"), Some("\"fleet\";q=10;w=60"));
            }
            s => panic!("unexpected {s}: {r:?}"),
        }
    }
    assert_eq!(
        admitted, 10,
        "the two gateways together admit the limit once"
    );
    assert_eq!(up.count(), 10);
}

#[test]
fn concurrent_requests_through_two_gateways_stay_within_the_limit() {
    let redis = RedisServer::start();
    let up = Upstream::start("up");
    let limit = "{name: fleet, requests: 25, per: 1m, key: route, cluster: true}";
    let gws = [
        gateway(&up, &redis.url(), "fail_open", limit),
        gateway(&up, &redis.url(), "fail_open", limit),
    ];
    let urls: Vec<String> = gws.iter().map(|g| g.url("/")).collect();
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let url = urls[t % 2].clone();
            std::thread::spawn(move || (0..10).filter(|_| get(&url).status == 200).count())
        })
        .collect();
    let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(
        admitted, 25,
        "atomic decisions in Redis: exactly the limit over 80 requests"
    );
}

#[test]
fn redis_down_fails_open_or_closed_as_configured_without_hanging() {
    let mut redis = RedisServer::start();
    let up = Upstream::start("up");
    let limit = "{name: fleet, requests: 100, per: 1m, key: route, cluster: true}";
    let open = gateway(&up, &redis.url(), "fail_open", limit);
    let closed = gateway(&up, &redis.url(), "fail_closed", limit);
    assert_eq!(get(&open.url("/")).status, 200);
    assert_eq!(get(&closed.url("/")).status, 200);

    redis.stop();
    // Answered at all (the client gives up after 15 s): no request hangs on Redis.
    for _ in 0..5 {
        assert_eq!(get(&open.url("/")).status, 200, "fail_open admits");
        let r = get(&closed.url("/"));
        assert_eq!(r.status, 503, "fail_closed refuses: {r:?}");
        assert_eq!(r.json()["status"], 503);
    }
    assert!(open.log_text().contains("admitting (fail_open)"));

    // Redis back at the same address: decisions resume without a restart.
    let _back = RedisServer::start_on(redis.port);
    assert!(
        eventually(Duration::from_secs(10), || get(&closed.url("/")).status
            == 200),
        "fail_closed never recovered; log:\n{}",
        closed.log_text()
    );
}

#[test]
fn a_local_limit_next_to_a_cluster_limit_admits_exactly_its_burst() {
    let redis = RedisServer::start();
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        r#"
redis: {{url: "{url}", timeout: 2s, on_failure: fail_closed}}
upstreams:
  - name: up
    targets: [{{address: "{up}"}}]
routes:
  - name: both
    upstream: up
    rate_limits:
      - {{name: local, requests: 5, per: 1m, key: "header:x-run"}}
      - {{name: fleet, requests: 100000, per: 1m, key: "header:x-run", cluster: true}}
"#,
        url = redis.url(),
        up = up.addr
    ));
    let url = gw.url("/");
    for run in 0..10 {
        let start = std::sync::Arc::new(std::sync::Barrier::new(60));
        let handles: Vec<_> = (0..60)
            .map(|_| {
                let (url, start, run) = (url.clone(), start.clone(), run.to_string());
                std::thread::spawn(move || {
                    start.wait();
                    send("GET", &url, &[("x-run", &run)]).status
                })
            })
            .collect();
        let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "{statuses:?}"
        );
        let admitted = statuses.iter().filter(|s| **s == 200).count();
        assert_eq!(admitted, 5, "run {run}: the local limit alone decides");
    }
    assert_eq!(up.count(), 50);
}

#[test]
fn the_first_request_after_a_redis_restart_is_decided() {
    let mut redis = RedisServer::start();
    let up = Upstream::start("up");
    let limit = "{name: fleet, requests: 100, per: 1m, key: route, cluster: true}";
    let gw = gateway(&up, &redis.url(), "fail_closed", limit);
    assert_eq!(get(&gw.url("/")).status, 200);
    // Restarted while the gateway was idle: its connection is dead, it does not know yet.
    redis.stop();
    let _back = RedisServer::start_on(redis.port);
    let r = get(&gw.url("/"));
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.log_text());
}

#[test]
fn an_unreachable_redis_is_tried_at_most_once_per_timeout() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // A "Redis" that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let up = Upstream::start("up");
    let gw = Gateway::start(&format!(
        r#"
redis: {{url: "redis://127.0.0.1:{port}", timeout: 300ms, on_failure: fail_closed}}
upstreams:
  - name: up
    targets: [{{address: "{up}"}}]
routes:
  - name: shared
    upstream: up
    rate_limits:
      - {{name: fleet, requests: 100, per: 1m, key: route, cluster: true}}
"#,
        up = up.addr
    ));
    let start = Instant::now();
    for _ in 0..20 {
        assert_eq!(get(&gw.url("/")).status, 503);
    }
    // An attempt waits out the 300ms timeout and the next waits another 300ms: at most one
    // per 600ms passed (the first one included). Measured time can only be longer than the
    // gateway's, so the bound only loosens on a busy machine.
    let elapsed = start.elapsed();
    let attempts = accepted.load(Ordering::SeqCst);
    let bound = (elapsed.as_secs_f64() / 0.6).ceil() as usize + 1;
    assert!(attempts >= 1, "Redis was never tried");
    assert!(attempts <= bound, "{attempts} connections in {elapsed:?}");
    assert_eq!(up.count(), 0);
}
