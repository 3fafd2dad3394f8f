//! The JSON access log: one line per request with what operators need and no secrets,
//! written off the request path, reopened on SIGUSR1 for logrotate.

mod common;
use common::*;
use std::time::Duration;

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn one_json_line_per_request_without_secrets_and_reopened_on_sigusr1() {
    let up = Upstream::start("app");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let key = portico::policy::auth::api_key::hash_key("key-a");
    let gw = Gateway::start(&format!(
        r#"access_log: {log}
consumers:
  - {{name: app-a, api_keys: ["{key}"]}}
upstreams:
  - name: app
    targets: [{{address: "{up}"}}]
routes:
  - name: api
    match: {{path_prefix: /api}}
    upstream: app
    access: {{providers: [api_key]}}
"#,
        log = log.display(),
        up = up.addr
    ));
    let r = send(
        "GET",
        &gw.url("/api/items?token=s3cret&page=2"),
        &[
            ("x-api-key", "key-a"),
            ("x-request-id", "log-1"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
    );
    assert_eq!(r.status, 200);
    assert_eq!(get(&gw.url("/nowhere")).status, 404);
    assert!(eventually(Duration::from_secs(5), || lines(&log).len() == 2));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("s3cret") && !text.contains("key-a"),
        "{text}"
    );
    let l = lines(&log);
    let a = &l[0];
    assert_eq!(a["request_id"], "log-1");
    assert_eq!(a["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(a["client_ip"], "127.0.0.1");
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/api/items");
    assert_eq!(a["status"], 200);
    assert_eq!(a["route"], "api");
    assert_eq!(a["upstream"], "app");
    assert_eq!(a["target"], up.addr.to_string());
    assert_eq!(a["consumer"], "app-a");
    assert!(a["bytes_out"].as_u64().unwrap() > 0);
    assert!(a["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(a["upstream_response_ms"].as_f64().is_some());
    assert!(a["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        (&a["protocol"], &a["tls"], &a["attempts"]),
        (
            &serde_json::json!("HTTP/1.1"),
            &serde_json::json!(false),
            &serde_json::json!(1)
        )
    );
    assert_eq!(l[1]["status"], 404);
    assert_eq!(l[1]["route"], serde_json::Value::Null);
    assert_eq!(l[1]["attempts"], 0);

    // logrotate: move the file away, signal, and the next lines go to a new file.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    signal(gw.pid(), "USR1");
    assert!(eventually(Duration::from_secs(5), || {
        get(&gw.url("/nowhere"));
        !lines(&log).is_empty()
    }));
    assert_eq!(lines(&rotated).len(), 2, "the old file keeps its lines");
}

#[test]
fn lines_logged_just_before_a_graceful_stop_reach_the_file() {
    let up = Upstream::start("app");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut gw = Gateway::start(&format!(
        "access_log: {}\nupstreams:\n  - name: app\n    targets: [{{address: \"{}\"}}]\nroutes:\n  - name: all\n    upstream: app\n",
        log.display(),
        up.addr
    ));
    for i in 0..5 {
        assert_eq!(get(&gw.url(&format!("/last/{i}"))).status, 200);
    }
    signal(gw.pid(), "TERM");
    let status = gw.child.wait().expect("portico exits");
    assert!(status.success(), "{status}");
    // Threads write their own buffers: lines of one 20 ms window may interleave.
    let mut paths: Vec<String> = lines(&log)
        .iter()
        .map(|l| l["path"].as_str().unwrap_or_default().to_string())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        (0..5).map(|i| format!("/last/{i}")).collect::<Vec<_>>()
    );
}
