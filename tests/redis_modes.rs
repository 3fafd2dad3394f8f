//! Cluster limits and purges on a real Redis Cluster (three masters, a replica each) and on
//! a real Sentinel deployment, through two real gateways: the limit is exact across both,
//! and when a master is killed under load the clients see `fail_closed` answers for the gap
//! and decisions again once a replica has taken over, without any reload.

mod common;
use common::phased_load::{Load, Tally};
use common::redis_deployments::{RedisCluster, RedisSentinels};
use common::*;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const TOKEN: &str = "fleet-admin-token-0123";
/// The shared limit: `BURST` at once, then `RATE` a second, across the fleet.
const RATE: f64 = 100.0;
const BURST: f64 = 50.0;

fn gateway(redis: &str, up: &Upstream, admin: u16) -> Gateway {
    Gateway::start(&format!(
        r#"admin: {{address: 127.0.0.1:{admin}, token: {TOKEN}}}
redis: {{{redis}, timeout: 250ms, on_failure: fail_closed}}
upstreams:
  - {{name: api, targets: [{{address: "{up}"}}]}}
routes:
  - name: shared
    match: {{path_prefix: /shared}}
    upstream: api
    rate_limits:
      - {{name: fleet, requests: {RATE}, per: 1s, burst: {BURST}, key: route, cluster: true}}
      # Never binding (and its counters outlive the test), but decided in the same script.
      - {{name: per-client, requests: 10000, per: 1h, key: "header:x-client", cluster: true}}
  - name: items
    match: {{path_prefix: /items}}
    upstream: api
    cache: {{default_ttl: 60s}}
    rate_limits:
      - {{name: generous, requests: 10000, per: 1s, key: client_ip, cluster: true}}
"#,
        up = up.addr
    ))
}

/// Both gateways together admit `burst + rate × t` of a continuous overload, within 2%.
fn limit_is_exact_across(gateways: &[&Gateway], up: &Upstream) {
    // Every gateway connects to Redis first, so t starts with the first decision.
    for gw in gateways {
        assert_eq!(send("GET", &gw.url("/items/0"), &[]).status, 200);
    }
    let urls: Vec<String> = gateways.iter().map(|g| g.url("/shared/a")).collect();
    let before = up.count();
    let start = Instant::now();
    let load = Load::start(urls, 4);
    // Long enough that the rate, not the burst, dominates; the bound uses the time measured.
    std::thread::sleep(Duration::from_secs(3));
    let tally = load.finish().swap_remove(0);
    let t = start.elapsed().as_secs_f64();
    let bound = BURST + RATE * t;
    let admitted = tally.ok as f64;
    println!("accuracy: {tally:?} over {t:.2}s, bound {bound:.0}");
    assert_eq!(
        tally.unavailable + tally.other + tally.dropped,
        0,
        "{tally:?}"
    );
    assert!(tally.limited > 0, "the load exceeded the limit: {tally:?}");
    assert!(
        admitted <= bound + 1.0,
        "{admitted} admitted, bound {bound:.1}"
    );
    assert!(
        admitted >= bound * 0.98,
        "{admitted} admitted, more than 2% under {bound:.1}"
    );
    assert_eq!(
        up.count() - before,
        tally.ok,
        "every admitted request reached the service"
    );
}

/// Kill a master under load: count what the clients saw before, during the failover and
/// after it, and require decisions to come back by themselves.
fn master_killed_under_load(
    gateways: &[&Gateway],
    kill: impl FnOnce(),
    failed_over: impl Fn() -> bool,
    describe: impl Fn() -> String,
) -> Vec<Tally> {
    let urls: Vec<String> = gateways.iter().map(|g| g.url("/shared/b")).collect();
    let load = Load::start(urls, 4);
    assert!(eventually(Duration::from_secs(30), || load.deciding(50)));
    load.enter(1);
    kill();
    assert!(
        eventually(Duration::from_secs(60), &failed_over),
        "the deployment did not fail over: {}",
        describe()
    );
    load.enter(2);
    // Resumed: a run of decisions, and among them both answers of a working limit.
    let resumed = eventually(Duration::from_secs(30), || {
        let t = load.tally(2);
        load.deciding(100) && t.ok > 0 && t.limited > 0
    });
    let tallies = load.finish();
    println!(
        "failover: before {:?}; until a replica took over {:?}; after {:?}",
        tallies[0], tallies[1], tallies[2]
    );
    assert!(resumed, "decisions did not resume: {tallies:?}");
    for t in &tallies {
        assert_eq!(
            t.other + t.dropped,
            0,
            "only decisions and fail_closed answers: {tallies:?}"
        );
    }
    assert!(
        tallies[1].unavailable > 0,
        "with the master gone, fail_closed answers 503: {tallies:?}"
    );
    assert!(
        tallies[2].ok > 0 && tallies[2].limited > 0,
        "the limit holds after: {tallies:?}"
    );
    tallies
}

fn purge(admin: u16, url: &str) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    send_body(
        "POST",
        &format!("http://127.0.0.1:{admin}/cache/purge"),
        &[("authorization", auth.as_str())],
        &format!(r#"{{"url": "http://127.0.0.1{url}"}}"#),
    )
}

fn cached(gw: &Gateway, path: &str) -> bool {
    let r = send("GET", &gw.url(path), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    r.header("cache-status")
        .is_some_and(|s| s.contains("; hit"))
}

/// A purge through `from` empties `path` on every gateway (each had it stored), once every
/// gateway is subscribed (a gateway subscribing again purges everything on its own, which
/// must not pass for a delivery).
fn purge_reaches_all(gateways: &[&Gateway], subscribers: impl Fn() -> i64, from: u16, path: &str) {
    assert!(
        eventually(Duration::from_secs(30), || subscribers()
            == gateways.len() as i64),
        "every gateway subscribes to the purge channel"
    );
    for gw in gateways {
        cached(gw, path);
        assert!(cached(gw, path), "stored on every gateway");
    }
    let r = purge(from, path);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["fleet"], "published", "{r:?}");
    for gw in gateways {
        // Delivery to the other gateway is asynchronous: wait for it, by what it serves.
        assert!(
            eventually(Duration::from_secs(10), || !cached(gw, path)),
            "the purge reached every gateway"
        );
    }
}

#[test]
fn redis_cluster_shares_limits_and_purges_and_survives_a_master_failover() {
    let cluster = RedisCluster::start();
    let up = Upstream::start("api");
    let redis = format!(
        "mode: cluster, urls: {}, password_file: {}",
        cluster.urls(),
        cluster.secret.file.display()
    );
    let admins = [free_port(), free_port()];
    let a = gateway(&redis, &up, admins[0]);
    let b = gateway(&redis, &up, admins[1]);
    let gateways = [&a, &b];

    limit_is_exact_across(&gateways, &up);
    // Two limits counting by different keys share the route's hash tag: one atomic script.
    let keys: Vec<String> = (0..cluster.nodes.len())
        .flat_map(|i| cluster.keys_on(i, "portico:rl:*"))
        .collect();
    assert!(
        keys.iter()
            .any(|k| k.starts_with("portico:rl:{shared}:fleet:")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with("portico:rl:{shared}:per-client:")),
        "{keys:?}"
    );
    purge_reaches_all(
        &gateways,
        || cluster.purge_subscribers(),
        admins[0],
        "/items/1",
    );

    // Kill the master that holds the route's counters.
    let key = keys
        .iter()
        .find(|k| k.contains(":fleet:"))
        .expect("the fleet limit's key")
        .clone();
    let dead = cluster
        .master_of(&key)
        .expect("a master holds the counters");
    let cluster = Mutex::new(cluster);
    master_killed_under_load(
        &gateways,
        || cluster.lock().unwrap().nodes[dead].stop(),
        || cluster.lock().unwrap().failed_over(&key, dead),
        || cluster.lock().unwrap().describe(),
    );
    let cluster = cluster.into_inner().unwrap();
    purge_reaches_all(
        &gateways,
        || cluster.purge_subscribers(),
        admins[1],
        "/items/2",
    );
}

#[test]
fn sentinel_shares_limits_and_purges_and_follows_the_promoted_master() {
    let sentinels = RedisSentinels::start();
    let up = Upstream::start("api");
    let redis = format!(
        "mode: sentinel, master_name: {}, urls: {}, password_file: {}",
        common::redis_deployments::MASTER_NAME,
        sentinels.urls(),
        sentinels.secret.file.display()
    );
    let admins = [free_port(), free_port()];
    let a = gateway(&redis, &up, admins[0]);
    let b = gateway(&redis, &up, admins[1]);
    let gateways = [&a, &b];

    limit_is_exact_across(&gateways, &up);
    purge_reaches_all(
        &gateways,
        || sentinels.purge_subscribers(),
        admins[0],
        "/items/1",
    );

    let old_master = sentinels.master.port;
    let replica = sentinels.replica.port;
    let sentinels = Mutex::new(sentinels);
    master_killed_under_load(
        &gateways,
        || sentinels.lock().unwrap().master.stop(),
        || sentinels.lock().unwrap().master_port() == Some(replica),
        || format!("master: {:?}", sentinels.lock().unwrap().master_port()),
    );
    assert_ne!(old_master, replica);
    // The purge subscription followed the master too.
    let sentinels = sentinels.into_inner().unwrap();
    purge_reaches_all(
        &gateways,
        || sentinels.purge_subscribers(),
        admins[1],
        "/items/2",
    );
}

#[test]
fn check_names_the_redis_field_at_fault() {
    let cases = [
        ("{}", "redis.url"),
        ("{mode: ring, url: \"redis://127.0.0.1:1\"}", "redis.mode"),
        ("{mode: cluster}", "redis.urls"),
        ("{mode: cluster, url: \"redis://127.0.0.1:1\"}", "redis.url"),
        (
            "{mode: cluster, urls: [\"redis://127.0.0.1:1\", \"http://x\"]}",
            "redis.urls[1]",
        ),
        (
            "{mode: cluster, urls: [\"redis://127.0.0.1:1\"], key_prefix: \"rl:{a}:\"}",
            "redis.key_prefix",
        ),
        (
            "{mode: sentinel, urls: [\"redis://127.0.0.1:1\"]}",
            "redis.master_name",
        ),
        ("{mode: sentinel, master_name: m}", "redis.urls"),
        (
            "{url: \"redis://127.0.0.1:1\", master_name: m}",
            "redis.master_name",
        ),
        (
            "{url: \"redis://127.0.0.1:1\", urls: [\"redis://127.0.0.1:2\"]}",
            "redis.urls",
        ),
    ];
    for (section, path) in cases {
        let config = format!(
            "listeners:\n  - address: 127.0.0.1:{}\nredis: {section}\n",
            free_port()
        );
        let (ok, out) = check_config(&config);
        assert!(!ok, "{section} accepted");
        assert!(out.contains(path), "{section}: {out}");
    }
    for section in [
        "{mode: cluster, urls: [\"redis://127.0.0.1:1\", \"redis://127.0.0.1:2\"]}",
        "{mode: sentinel, master_name: m, urls: [\"redis://127.0.0.1:1\"]}",
        "{urls: [\"redis://127.0.0.1:1\"]}",
    ] {
        let config = format!(
            "listeners:\n  - address: 127.0.0.1:{}\nredis: {section}\n",
            free_port()
        );
        let (ok, out) = check_config(&config);
        assert!(ok, "{section}: {out}");
    }
}
