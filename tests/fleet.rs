//! A fleet end to end: three real gateways sharing a real Redis Cluster (three masters, a
//! replica each) in front of the example services, with clients counting what they see:
//! the shared limit is exact across the three, a purge through one reaches all, a config
//! change rolled out host by host shows on each host's `/status`, one gateway is upgraded
//! while the others serve, and a Redis master is killed under load.

mod common;
use common::phased_load::Load;
use common::redis_deployments::RedisCluster;
use common::*;
use sha2::Digest;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "fleet-admin-token-0123";
const RATE: f64 = 60.0;
const BURST: f64 = 30.0;

/// Every host's config: the same but for its own ports and files.
fn config(cluster: &RedisCluster, services: &Services, admin: u16) -> String {
    format!(
        r#"admin: {{address: 127.0.0.1:{admin}, token: {TOKEN}}}
redis: {{mode: cluster, urls: {urls}, password_file: {pw}, timeout: 250ms, on_failure: fail_open}}
upstreams:
  - {{name: catalog, targets: [{{address: "{catalog}"}}]}}
  - {{name: orders, targets: [{{address: "{orders}"}}]}}
routes:
  - name: search
    match: {{path_prefix: /search}}
    upstream: catalog
    rate_limits:
      - {{name: fleet, requests: {RATE}, per: 1s, burst: {BURST}, key: route, cluster: true}}
  - name: products
    match: {{path_prefix: /products}}
    upstream: catalog
    cache: {{default_ttl: 60s}}
  - name: orders
    match: {{path_prefix: /orders}}
    upstream: orders
    rate_limits:
      - {{name: per-client, requests: 10000, per: 1s, key: client_ip, cluster: true}}
"#,
        urls = cluster.urls(),
        pw = cluster.secret.file.display(),
        catalog = services.catalog.addr,
        orders = services.orders.addr,
    )
}

/// The example services behind the fleet.
struct Services {
    catalog: Upstream,
    orders: Upstream,
}

fn file_digest(path: &std::path::Path) -> String {
    hex::encode(sha2::Sha256::digest(
        std::fs::read(path).expect("config file"),
    ))
}

fn status_digest(admin: u16) -> String {
    admin_get(admin, "/status").json()["config"]["sha256"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn cached(gw: &Gateway, path: &str) -> bool {
    let r = send("GET", &gw.url(path), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    r.header("cache-status")
        .is_some_and(|s| s.contains("; hit"))
}

/// `portico reload` or `portico upgrade` on one host, as systemd or an operator runs it.
fn control(action: &str, gw: &Gateway) {
    let out = Command::new(portico_bin())
        .args([action, "-c"])
        .arg(&gw.conf)
        .output()
        .expect("portico runs");
    assert!(
        out.status.success(),
        "portico {action}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pid_in(gw: &Gateway) -> u32 {
    std::fs::read_to_string(gw.dir.path().join("portico.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .expect("a pid file")
}

#[test]
fn a_fleet_of_three_shares_limits_and_purges_rolls_out_and_rides_out_a_master_failure() {
    let cluster = RedisCluster::start();
    let services = Services {
        catalog: Upstream::start("catalog"),
        orders: Upstream::start("orders"),
    };
    let admins = [free_port(), free_port(), free_port()];
    let mut fleet: Vec<Gateway> = admins
        .iter()
        .map(|a| Gateway::start_with("  grace_period: 2s\n", &config(&cluster, &services, *a)))
        .collect();
    let addrs: Vec<std::net::SocketAddr> = fleet.iter().map(|g| g.addr).collect();
    let urls = |path: &str| {
        addrs
            .iter()
            .map(|a| format!("http://{a}{path}"))
            .collect::<Vec<_>>()
    };

    // 1. The shared limit is exact across the three: burst + rate × t, within 2%. Every
    //    gateway has its cluster connection first, so t starts with the first decision.
    for gw in &fleet {
        assert_eq!(send("GET", &gw.url("/orders/0"), &[]).status, 200);
    }
    let before = services.catalog.count();
    let start = Instant::now();
    let load = Load::start(urls("/search?q=a"), 6);
    std::thread::sleep(Duration::from_secs(3));
    let t = load.finish().swap_remove(0);
    let secs = start.elapsed().as_secs_f64();
    let bound = BURST + RATE * secs;
    println!("limit: {t:?} over {secs:.2}s, bound {bound:.0}");
    assert_eq!(t.other + t.dropped + t.unavailable, 0, "{t:?}");
    assert!(
        t.answered_by.iter().all(|n| *n > 0),
        "every gateway took its share: {t:?}"
    );
    assert!(
        t.ok as f64 <= bound + 1.0 && t.ok as f64 >= bound * 0.98,
        "{t:?}, bound {bound:.1}"
    );
    assert_eq!(services.catalog.count() - before, t.ok);

    // 2. A purge through the third gateway empties the URL on all three.
    assert!(
        eventually(Duration::from_secs(30), || cluster.purge_subscribers() == 3),
        "every gateway subscribes to purges"
    );
    for gw in &fleet {
        cached(gw, "/products/7");
        assert!(cached(gw, "/products/7"), "stored on every gateway");
    }
    let fetched = services.catalog.count();
    let auth = format!("Bearer {TOKEN}");
    let r = send_body(
        "POST",
        &format!("http://127.0.0.1:{}/cache/purge", admins[2]),
        &[("authorization", auth.as_str())],
        r#"{"url": "http://127.0.0.1/products/7"}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["fleet"], "published", "{r:?}");
    for gw in &fleet {
        assert!(eventually(Duration::from_secs(10), || !cached(
            gw,
            "/products/7"
        )));
    }
    assert_eq!(
        services.catalog.count() - fetched,
        3,
        "each gateway fetched it once more"
    );

    // 3. A config change rolled out host by host: each host's /status shows the digest of
    //    the file it runs, and the fleet answers throughout.
    for a in &admins {
        let redis = &admin_get(*a, "/status").json()["redis"];
        assert_eq!(redis["mode"], "cluster", "{redis}");
        assert_eq!(redis["connected"], true, "{redis}");
    }
    let old: Vec<String> = admins.iter().map(|a| status_digest(*a)).collect();
    for (gw, digest) in fleet.iter().zip(&old) {
        assert_eq!(*digest, file_digest(&gw.conf), "each host runs its file");
    }
    let load = Load::start(urls("/orders/1"), 3);
    for (i, gw) in fleet.iter().enumerate() {
        let text = std::fs::read_to_string(&gw.conf).expect("the host's config");
        let raised = text.replace(
            &format!("requests: {RATE}, per: 1s"),
            &format!("requests: {}, per: 1s", RATE * 2.0),
        );
        assert_ne!(raised, text);
        std::fs::write(&gw.conf, raised).expect("write the new config");
        control("reload", gw);
        assert!(eventually(Duration::from_secs(10), || status_digest(
            admins[i]
        ) == file_digest(
            &gw.conf
        )));
        for (j, a) in admins.iter().enumerate().skip(i + 1) {
            assert_eq!(status_digest(*a), old[j], "host {j} not reloaded yet");
        }
    }
    let rollout = load.finish().swap_remove(0);
    println!("rollout: {rollout:?}");
    assert_eq!(
        rollout.ok,
        rollout.answered_by.iter().sum::<usize>(),
        "{rollout:?}"
    );
    assert_eq!(rollout.dropped, 0, "{rollout:?}");

    // 4. The first gateway is upgraded in place while all three serve.
    let load = Load::start(urls("/orders/2"), 3);
    assert!(eventually(Duration::from_secs(10), || load.deciding(30)));
    let old_pid = fleet[0].pid();
    load.enter(1);
    control("upgrade", &fleet[0]);
    let new_pid = pid_in(&fleet[0]);
    let served = eventually(Duration::from_secs(10), || load.deciding(60));
    let upgrade = load.finish();
    // The upgraded process is not this test's child: stop it by pid at the end.
    let _stop_new = StopOnDrop(new_pid);
    println!("upgrade: during {:?}", upgrade[1]);
    assert_ne!(new_pid, old_pid);
    assert!(served);
    let during = &upgrade[1];
    assert_eq!(during.dropped + during.other, 0, "{during:?}");
    assert!(during.answered_by.iter().all(|n| *n > 0), "{during:?}");
    // The old process drains and exits; until then it may still answer on the admin port.
    assert!(
        eventually(Duration::from_secs(20), || matches!(
            fleet[0].child.try_wait(),
            Ok(Some(_))
        )),
        "the old process exits after draining"
    );
    assert_eq!(admin_get(admins[0], "/status").json()["pid"], new_pid);

    // 5. The master holding the shared counter is killed under load. fail_open: clients
    //    are served through the gap, and limited again once a replica has taken over.
    let load = Load::start(urls("/search?q=b"), 6);
    assert!(eventually(Duration::from_secs(30), || load.deciding(50)));
    // Under load the counter exists (it expires when its bucket is full again).
    let key = (0..cluster.nodes.len())
        .flat_map(|i| cluster.keys_on(i, "portico:rl:*"))
        .find(|k| k.starts_with("portico:rl:{search:route:") && k.ends_with("}:fleet"))
        .expect("the shared counter's key, tagged by route and value");
    let dead = cluster.master_of(&key).expect("a master holds it");
    load.enter(1);
    let mut cluster = cluster;
    cluster.nodes[dead].stop();
    assert!(
        eventually(Duration::from_secs(60), || cluster.failed_over(&key, dead)),
        "no failover: {}",
        cluster.describe()
    );
    load.enter(2);
    // Decisions are back once limits refuse again.
    let limited_again = eventually(Duration::from_secs(30), || {
        load.deciding(50) && load.tally(2).limited > 0
    });
    let phases = load.finish();
    println!(
        "master killed: before {:?}; gap {:?}; after {:?}",
        phases[0], phases[1], phases[2]
    );
    assert!(limited_again, "{phases:?}");
    for t in &phases[..3] {
        assert_eq!(
            t.other + t.dropped + t.unavailable,
            0,
            "fail_open serves: {t:?}"
        );
    }
    let store_errors: f64 = admins
        .iter()
        .map(|a| metric(*a, "portico_rate_limit_store_errors_total", ""))
        .sum();
    let failed: u64 = admins
        .iter()
        .map(|a| {
            admin_get(*a, "/status").json()["redis"]["failed_decisions"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    println!("store errors counted by the gateways: {store_errors} (/status: {failed})");

    assert!(
        store_errors > 0.0,
        "the gap is counted where an operator sees it"
    );
    assert_eq!(failed as f64, store_errors, "/status and the metric agree");
    drop(_stop_new);
    fleet.clear();
}

/// A process this test started indirectly (through `portico upgrade`), stopped by pid.
struct StopOnDrop(u32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        signal(self.0, "TERM");
        eventually(Duration::from_secs(10), || {
            !std::path::Path::new(&format!("/proc/{}", self.0)).exists()
        });
    }
}
