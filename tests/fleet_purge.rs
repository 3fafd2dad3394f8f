//! Purges reach every gateway sharing the Redis: three real gateways, one real Redis. A
//! purge through one gateway's admin API empties that URL on all three; a gateway whose
//! subscription was lost purges everything when it is back.

mod common;
use common::*;
use std::time::Duration;

const TOKEN: &str = "fleet-admin-token-0123";

fn gateway(redis: &RedisServer, up: &Upstream, admin: u16) -> Gateway {
    Gateway::start(&format!(
        r#"admin: {{address: 127.0.0.1:{admin}, token: {TOKEN}}}
redis: {{url: "{redis}", timeout: 1s}}
cache: {{purge_method: true}}
upstreams:
  - {{name: api, targets: [{{address: "{up}"}}]}}
routes:
  - {{name: items, upstream: api, cache: {{default_ttl: 60s}}}}
"#,
        redis = redis.url(),
        up = up.addr
    ))
}

/// Gateways subscribed to the purge channel, as Redis counts them.
fn subscribers(redis: &RedisServer) -> i64 {
    let Ok(client) = redis::Client::open(redis.url()) else {
        return 0;
    };
    let Ok(mut conn) = client.get_connection() else {
        return 0;
    };
    redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("portico:purge")
        .query::<(String, i64)>(&mut conn)
        .map_or(0, |(_, n)| n)
}

fn cache_status(gw: &Gateway, path: &str) -> String {
    let r = send("GET", &gw.url(path), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    r.header("cache-status").unwrap_or_default().to_string()
}

fn is_hit(status: &str) -> bool {
    status.contains("; hit")
}

#[test]
fn a_purge_through_one_gateway_reaches_all_three() {
    let redis = RedisServer::start();
    let up = Upstream::start("api");
    let admins = [free_port(), free_port(), free_port()];
    let fleet: Vec<Gateway> = admins.iter().map(|a| gateway(&redis, &up, *a)).collect();
    assert!(
        eventually(Duration::from_secs(30), || subscribers(&redis) == 3),
        "every gateway subscribes"
    );
    for gw in &fleet {
        assert!(!is_hit(&cache_status(gw, "/items/1")));
        assert!(
            is_hit(&cache_status(gw, "/items/1")),
            "stored on every gateway"
        );
        assert!(!is_hit(&cache_status(gw, "/items/2")));
    }
    assert_eq!(up.count(), 6);

    let purge = |admin: u16, body: &str| {
        let auth = format!("Bearer {TOKEN}");
        send_body(
            "POST",
            &format!("http://127.0.0.1:{admin}/cache/purge"),
            &[("authorization", auth.as_str())],
            body,
        )
    };
    let r = purge(admins[0], r#"{"url": "http://127.0.0.1/items/1"}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["purged"], 1);
    assert_eq!(r.json()["fleet"], "published");
    assert!(
        !is_hit(&cache_status(&fleet[0], "/items/1")),
        "gone here at once"
    );
    for gw in &fleet[1..] {
        assert!(
            eventually(Duration::from_secs(30), || !is_hit(&cache_status(
                gw, "/items/1"
            ))),
            "the purge reached {}",
            gw.addr
        );
    }
    // Only that URL: the other stays stored everywhere.
    for gw in &fleet {
        assert!(is_hit(&cache_status(gw, "/items/2")));
    }

    // Everything, through the third gateway.
    let r = purge(admins[2], r#"{"all": true}"#);
    assert_eq!(r.json()["fleet"], "published");
    for gw in &fleet {
        assert!(eventually(Duration::from_secs(30), || !is_hit(
            &cache_status(gw, "/items/2")
        )));
    }
    // PURGE on a proxy listener travels too.
    for gw in &fleet {
        cache_status(gw, "/items/3");
        assert!(is_hit(&cache_status(gw, "/items/3")));
    }
    let answer = raw(
        fleet[1].addr,
        &format!(
            "PURGE /items/3 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"fleet\":\"published\""), "{answer}");
    for gw in [&fleet[0], &fleet[2]] {
        assert!(eventually(Duration::from_secs(30), || !is_hit(
            &cache_status(gw, "/items/3")
        )));
    }
}

#[test]
fn a_gateway_that_lost_its_subscription_purges_everything_when_back() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let up = Upstream::start("api");
    let admin = free_port();
    let gw = gateway(&redis, &up, admin);
    assert!(eventually(Duration::from_secs(30), || subscribers(&redis) == 1));
    cache_status(&gw, "/items/1");
    assert!(is_hit(&cache_status(&gw, "/items/1")));

    // Redis goes away and comes back empty: purges published meanwhile were missed.
    redis.stop();
    let redis = RedisServer::start_on(port);
    assert!(eventually(Duration::from_secs(30), || subscribers(&redis) == 1));
    assert!(
        eventually(Duration::from_secs(30), || !is_hit(&cache_status(
            &gw, "/items/1"
        ))),
        "everything stored before is purged"
    );
    let metrics = admin_get(admin, "/metrics").body;
    assert!(
        metrics.contains("portico_fleet_purges_total{outcome=\"resubscribed\"} 1"),
        "{metrics}"
    );
}
