//! Traffic splits (weights, stickiness, pins) and mirroring through the real gateway.

mod common;
use common::*;
use std::time::Duration;

fn gateway(stable: &Upstream, canary: &Upstream, route_extra: &str, extra_up: &str) -> Gateway {
    Gateway::start(&format!(
        r#"upstreams:
  - name: stable
    targets: [{{address: "{s}"}}]
  - name: canary
    targets: [{{address: "{c}"}}]
{extra_up}
routes:
  - name: api
    upstream: stable
{route_extra}
"#,
        s = stable.addr,
        c = canary.addr
    ))
}

#[test]
fn weights_hold_within_three_percent_and_sticky_callers_stay_put() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let gw = gateway(
        &stable,
        &canary,
        "    split:\n      to: [{upstream: canary, weight: 20}]\n",
        "",
    );
    let url = gw.url("/r");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                for _ in 0..500 {
                    assert_eq!(get(&url).status, 200);
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let share = canary.count() as f64 / 2000.0;
    assert!((0.17..=0.23).contains(&share), "canary got {share}");

    let sticky = gateway(
        &stable,
        &canary,
        "    split:\n      to: [{upstream: canary, weight: 50}]\n      sticky: header:x-user\n      pins: [{header: x-canary, value: always, upstream: canary}, {cookie: side, value: stable, upstream: stable}]\n",
        "",
    );
    let mut sides = std::collections::HashSet::new();
    for user in 0..40 {
        let who = format!("user-{user}");
        let first = send("GET", &sticky.url("/s"), &[("x-user", &who)]).server();
        for _ in 0..5 {
            assert_eq!(
                send("GET", &sticky.url("/s"), &[("x-user", &who)]).server(),
                first
            );
        }
        sides.insert(first);
    }
    assert_eq!(sides.len(), 2, "40 users spread over both sides");
    for _ in 0..10 {
        let pinned = send("GET", &sticky.url("/s"), &[("x-canary", "always")]);
        assert_eq!(pinned.server(), "canary");
        let back = send("GET", &sticky.url("/s"), &[("cookie", "side=stable")]);
        assert_eq!(back.server(), "stable");
    }
}

#[test]
fn mirrored_copies_never_slow_the_client() {
    let stable = Upstream::start("stable");
    let canary = Upstream::start("canary");
    let shadow = Upstream::start("shadow");
    // Longer than the client waits (15 s): a client that waited for its copy would fail.
    shadow.set_delay(Duration::from_secs(60));
    let gw = gateway(
        &stable,
        &canary,
        "    mirror: {upstream: shadow, percent: 100, timeout: 90s}\n",
        &format!(
            "  - name: shadow\n    targets: [{{address: \"{}\"}}]\n",
            shadow.addr
        ),
    );
    for i in 0..5 {
        let r = send_body(
            "POST",
            &gw.url(&format!("/m/{i}")),
            &[("content-type", "application/json")],
            "{\"n\": 1}",
        );
        assert_eq!(r.server(), "stable");
    }
    assert!(
        eventually(Duration::from_secs(5), || shadow.count() == 5),
        "{}",
        shadow.count()
    );
    let copy = shadow.last("/m/0").unwrap();
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.header("x-mirrored"), Some("1"));
    assert_eq!(copy.header("content-length"), Some("8"));
    assert_eq!(stable.count(), 5);
}
