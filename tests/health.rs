//! Active health checks take a failed target out of rotation and bring it back.

mod common;
use common::*;
use std::collections::HashSet;
use std::time::Duration;

fn pool_config(ups: &[&Upstream], check: &str) -> String {
    let targets: String = ups
        .iter()
        .map(|u| format!("      - {{address: \"{}\"}}\n", u.addr))
        .collect();
    // retries: 0 so that only the health check, not a retry, can hide a dead target.
    format!(
        "upstreams:\n  - name: pool\n    retries: 0\n    targets:\n{targets}    health_check:\n{check}routes:\n  - name: all\n    upstream: pool\n"
    )
}

const HTTP_CHECK: &str = "      type: http\n      path: /health\n      expected_status: 200-299\n      interval: 200ms\n      timeout: 150ms\n      unhealthy_threshold: 2\n      healthy_threshold: 2\n";
const TCP_CHECK: &str = "      type: tcp\n      interval: 200ms\n      timeout: 150ms\n";

/// Servers that answered `n` requests.
fn answering(gw: &Gateway, n: usize) -> (HashSet<String>, usize) {
    let mut servers = HashSet::new();
    let mut errors = 0;
    for _ in 0..n {
        let r = get(&gw.url("/"));
        if r.status == 200 {
            servers.insert(r.server());
        } else {
            errors += 1;
        }
    }
    (servers, errors)
}

#[test]
fn killed_target_is_taken_out_and_comes_back() {
    let ups = [
        Upstream::start("u1"),
        Upstream::start("u2"),
        Upstream::start("u3"),
    ];
    let gw = Gateway::start(&pool_config(&[&ups[0], &ups[1], &ups[2]], HTTP_CHECK));
    let (servers, errors) = answering(&gw, 30);
    assert_eq!((servers.len(), errors), (3, 0));

    ups[1].stop();
    // Detection window: two failed checks 200 ms apart, plus slack for a loaded machine.
    std::thread::sleep(Duration::from_millis(1500));
    let (servers, errors) = answering(&gw, 60);
    assert_eq!(errors, 0, "5xx after the detection window");
    assert_eq!(servers, HashSet::from(["u1".to_string(), "u3".to_string()]));
    assert!(
        gw.log_text().contains("out of rotation"),
        "{}",
        gw.log_text()
    );

    let _back = ups[1].restart();
    assert!(
        eventually(Duration::from_secs(5), || answering(&gw, 6)
            .0
            .contains("u2")),
        "u2 never came back"
    );
    let (_, errors) = answering(&gw, 30);
    assert_eq!(errors, 0);
}

#[test]
fn http_check_fails_on_an_unexpected_status() {
    let ups = [Upstream::start("u1"), Upstream::start("u2")];
    let gw = Gateway::start(&pool_config(&[&ups[0], &ups[1]], HTTP_CHECK));
    ups[0].set_unhealthy(true);
    assert!(
        eventually(Duration::from_secs(5), || answering(&gw, 10).0
            == HashSet::from(["u2".to_string()])),
        "u1 answers 503 on /health but still gets traffic"
    );
    ups[0].set_unhealthy(false);
    assert!(eventually(Duration::from_secs(5), || answering(&gw, 10)
        .0
        .len()
        == 2));
}

#[test]
fn tcp_check_takes_out_a_closed_port() {
    let ups = [Upstream::start("u1"), Upstream::start("u2")];
    let gw = Gateway::start(&pool_config(&[&ups[0], &ups[1]], TCP_CHECK));
    assert_eq!(answering(&gw, 10).0.len(), 2);
    ups[0].stop();
    std::thread::sleep(Duration::from_millis(1000));
    let (servers, errors) = answering(&gw, 30);
    assert_eq!(errors, 0);
    assert_eq!(servers, HashSet::from(["u2".to_string()]));
}
