//! Load balancing through pingora-load-balancing: weighted round robin, random and
//! consistent hashing, and least request.

mod common;
use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn targets(ups: &[(&Upstream, usize)]) -> String {
    ups.iter()
        .map(|(u, w)| format!("      - {{address: \"{}\", weight: {w}}}\n", u.addr))
        .collect()
}

#[test]
fn weighted_round_robin_follows_weights_within_5_percent() {
    let ups = [
        Upstream::start("u1"),
        Upstream::start("u2"),
        Upstream::start("u3"),
    ];
    let weights = [5, 3, 2];
    let gw = Gateway::start(&format!(
        "upstreams:\n  - name: pool\n    algorithm: round_robin\n    targets:\n{}routes:\n  - name: all\n    upstream: pool\n",
        targets(&[(&ups[0], weights[0]), (&ups[1], weights[1]), (&ups[2], weights[2])])
    ));
    for _ in 0..1000 {
        assert_eq!(get(&gw.url("/")).status, 200);
    }
    let total: usize = weights.iter().sum();
    for (u, w) in ups.iter().zip(weights) {
        let share = u.count() as f64 / 1000.0;
        let want = w as f64 / total as f64;
        assert!(
            (share - want).abs() <= 0.05,
            "{} got {share:.3} of requests, weight says {want:.3}",
            u.name
        );
    }
}

#[test]
fn random_spreads_over_every_target() {
    let ups = [Upstream::start("u1"), Upstream::start("u2")];
    let gw = Gateway::start(&format!(
        "upstreams:\n  - name: pool\n    algorithm: random\n    targets:\n{}routes:\n  - name: all\n    upstream: pool\n",
        targets(&[(&ups[0], 1), (&ups[1], 1)])
    ));
    for _ in 0..400 {
        assert_eq!(get(&gw.url("/")).status, 200);
    }
    for u in &ups {
        let share = u.count() as f64 / 400.0;
        assert!((0.35..=0.65).contains(&share), "{} got {share}", u.name);
    }
}

fn hash_gateway(ups: &[&Upstream], key: &str) -> Gateway {
    let t: Vec<(&Upstream, usize)> = ups.iter().map(|u| (*u, 1)).collect();
    Gateway::start(&format!(
        "upstreams:\n  - name: pool\n    algorithm: consistent_hash\n    hash_key: {key}\n    targets:\n{}routes:\n  - name: all\n    upstream: pool\n",
        targets(&t)
    ))
}

/// Which server answers each of `keys`, sent in header x-user.
fn placement(gw: &Gateway, keys: &[String]) -> HashMap<String, String> {
    keys.iter()
        .map(|k| {
            let server = send("GET", &gw.url("/"), &[("x-user", k)]).server();
            (k.clone(), server)
        })
        .collect()
}

#[test]
fn consistent_hash_is_sticky_and_moves_about_one_nth_when_a_target_goes() {
    let ups: Vec<Upstream> = (1..=4).map(|i| Upstream::start(&format!("u{i}"))).collect();
    let keys: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();

    let all: Vec<&Upstream> = ups.iter().collect();
    let gw = hash_gateway(&all, "header:x-user");
    let first = placement(&gw, &keys);
    assert_eq!(
        first,
        placement(&gw, &keys),
        "a key always lands on the same target"
    );
    let used: std::collections::HashSet<_> = first.values().collect();
    assert_eq!(used.len(), 4, "keys spread over all targets");
    drop(gw);

    // The same pool without u4, as after removing it from the config.
    let gw = hash_gateway(&all[..3], "header:x-user");
    let second = placement(&gw, &keys);
    let mut moved = 0;
    for k in &keys {
        if first[k] == "u4" {
            assert_ne!(second[k], "u4");
            moved += 1;
        } else {
            assert_eq!(first[k], second[k], "{k} moved although its target stayed");
        }
    }
    let share = moved as f64 / keys.len() as f64;
    assert!(
        (0.15..=0.35).contains(&share),
        "{share:.2} of keys moved; about 1/4 expected"
    );
}

#[test]
fn consistent_hash_on_a_cookie_and_on_the_path() {
    let ups: Vec<Upstream> = (1..=3).map(|i| Upstream::start(&format!("u{i}"))).collect();
    let all: Vec<&Upstream> = ups.iter().collect();
    let gw = hash_gateway(&all, "cookie:sid");
    let mut seen = std::collections::HashSet::new();
    for i in 0..60 {
        let cookie = format!("theme=dark; sid=s{i}");
        let a = send("GET", &gw.url("/"), &[("cookie", &cookie)]).server();
        let b = send("GET", &gw.url("/other"), &[("cookie", &cookie)]).server();
        assert_eq!(a, b, "the same session goes to the same target");
        seen.insert(a);
    }
    assert_eq!(seen.len(), 3);
    drop(gw);

    let gw = hash_gateway(&all, "path");
    for i in 0..30 {
        let p = format!("/items/{i}");
        assert_eq!(get(&gw.url(&p)).server(), get(&gw.url(&p)).server());
    }
}

#[test]
fn least_request_sends_less_to_a_slow_target() {
    let slow = Upstream::start("slow");
    let fast = Upstream::start("fast");
    slow.set_delay(Duration::from_millis(200));
    let admin = free_port();
    let gw = Gateway::start(&format!(
        "admin: {{address: 127.0.0.1:{admin}}}\nupstreams:\n  - {{name: pool, algorithm: least_request, targets: [{{address: \"{}\"}}, {{address: \"{}\"}}]}}\nroutes:\n  - {{name: all, upstream: pool}}\n",
        slow.addr, fast.addr
    ));
    let url = gw.url("/work");
    // While a slow request is in flight, the next ones go to the idle fast target.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let end = Instant::now() + Duration::from_millis(1500);
                while Instant::now() < end {
                    assert_eq!(get(&url).status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let (s, f) = (slow.count(), fast.count());
    println!("least_request: slow target {s}, fast target {f}");
    // Round robin would split them evenly; here the slow one holds at most a request or
    // two at a time while the fast one answers hundreds.
    assert!(s * 10 < f, "slow {s} fast {f}");
    assert!(s >= 1, "the slow target still gets its share of draws");
    // Every request has ended for its client; the gateway drops a request's state just
    // after its last byte is written.
    let idle = || {
        let status = admin_get(admin, "/status").json();
        let targets = status["upstreams"][0]["targets"]
            .as_array()
            .unwrap()
            .clone();
        targets
            .iter()
            .all(|t| t["in_flight"] == 0)
            .then_some(())
            .ok_or(targets)
    };
    let settled = eventually(Duration::from_secs(10), || idle().is_ok());
    assert!(settled, "{:?}", idle());
}
