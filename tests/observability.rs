//! The admin listener's metrics, health, readiness and status through the real gateway:
//! exact counts after known traffic, `promtool check metrics` on a live scrape, a real
//! Prometheus server scraping it, readiness during a graceful stop, and the configurable
//! request-id header.

mod common;
use common::*;
use sha2::Digest;
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "admin-token-0123456789";

/// Every sample of a scrape: `name{labels}` (labels as exposed, sorted by name) → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(all: &HashMap<String, f64>, series: &str) -> f64 {
    *all.get(series)
        .unwrap_or_else(|| panic!("no sample {series}; have:\n{all:#?}"))
}

/// A tool from Debian's `prometheus` package.
fn tool(name: &str) -> String {
    installed(name, "prometheus")
}

fn metrics_gateway(up: &Upstream, admin: u16) -> Gateway {
    let key = portico::policy::auth::api_key::hash_key("key-a");
    Gateway::start(&format!(
        r#"admin:
  address: 127.0.0.1:{admin}
  token: {TOKEN}
consumers:
  - {{name: app-a, api_keys: ["{key}"]}}
upstreams:
  - name: app
    targets: [{{address: "{up}"}}]
routes:
  - name: open
    match: {{path_prefix: /open}}
    upstream: app
  - name: keyed
    match: {{path_prefix: /keyed}}
    upstream: app
    access: {{providers: [api_key]}}
    rate_limits:
      - {{name: per-route, requests: 2, per: 1m, key: route}}
"#,
        up = up.addr
    ))
}

#[test]
fn metrics_count_known_traffic_exactly_and_pass_promtool() {
    let up = Upstream::start("app");
    up.set_body("0123456789");
    let admin = free_port();
    let gw = metrics_gateway(&up, admin);
    for _ in 0..3 {
        assert_eq!(get(&gw.url("/open/a")).status, 200);
    }
    assert_eq!(
        send_body("POST", &gw.url("/open/b"), &[], "hello").status,
        200
    );
    assert_eq!(get(&gw.url("/nowhere")).status, 404);
    assert_eq!(get(&gw.url("/keyed")).status, 401);
    let key = [("x-api-key", "key-a")];
    let wrong = [("x-api-key", "key-b")];
    assert_eq!(send("GET", &gw.url("/keyed"), &wrong).status, 401);
    let statuses: Vec<u16> = (0..3)
        .map(|_| send("GET", &gw.url("/keyed"), &key).status)
        .collect();
    assert_eq!(statuses, [200, 200, 429]);

    let scrape = admin_get(admin, "/metrics");
    assert_eq!(scrape.status, 200);
    assert!(
        scrape
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        scrape.headers
    );
    let m = samples(&scrape.body);
    let s = |series: &str| sample(&m, series);
    assert_eq!(
        s(r#"portico_requests_total{method="GET",route="open",status="2xx"}"#),
        3.0
    );
    assert_eq!(
        s(r#"portico_requests_total{method="POST",route="open",status="2xx"}"#),
        1.0
    );
    assert_eq!(
        s(r#"portico_requests_total{method="GET",route="",status="4xx"}"#),
        1.0
    );
    assert_eq!(
        s(r#"portico_requests_total{method="GET",route="keyed",status="4xx"}"#),
        3.0
    );
    assert_eq!(
        s(r#"portico_request_duration_seconds_count{method="GET",route="open",status="2xx"}"#),
        3.0
    );
    assert_eq!(s(r#"portico_request_body_bytes_total{route="open"}"#), 5.0);
    assert_eq!(
        s(r#"portico_response_body_bytes_total{route="open"}"#),
        40.0
    );
    assert_eq!(s(r#"portico_auth_total{result="ok",route="keyed"}"#), 3.0);
    let refused: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("portico_auth_total{") && !k.contains("result=\"ok\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(refused, 2.0, "{m:#?}");
    assert_eq!(
        s(r#"portico_rate_limit_decisions_total{result="allowed",route="keyed"}"#),
        2.0
    );
    assert_eq!(
        s(r#"portico_rate_limit_decisions_total{result="limited",route="keyed"}"#),
        1.0
    );
    assert_eq!(
        s(r#"portico_upstream_response_duration_seconds_count{upstream="app"}"#),
        6.0
    );
    let connections = s(r#"portico_upstream_connections_total{reused="false",upstream="app"}"#)
        + s(r#"portico_upstream_connections_total{reused="true",upstream="app"}"#);
    assert_eq!(connections, 6.0);
    assert_eq!(
        s(&format!(
            r#"portico_upstream_target_healthy{{target="{}",upstream="app"}}"#,
            up.addr
        )),
        1.0
    );
    assert_eq!(s("portico_config_generation"), 1.0);
    assert!(s("process_resident_memory_bytes") > 0.0);
    assert!(s("process_open_fds") > 0.0);
    // Label values come from the config only: no paths, ids or keys.
    for forbidden in ["/open/a", "/nowhere", "key-a", "app-a"] {
        assert!(!scrape.body.contains(forbidden), "{forbidden} leaked");
    }

    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        use std::io::Write;
        let mut stdin = promtool.stdin.take().expect("stdin");
        stdin
            .write_all(scrape.body.as_bytes())
            .expect("feed promtool");
    }
    let out = promtool.wait_with_output().expect("promtool output");
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
    drop(gw);
}

#[test]
fn health_status_and_admin_writes_need_the_token() {
    let up = Upstream::start("app");
    let admin = free_port();
    let gw = metrics_gateway(&up, admin);
    let h = admin_get(admin, "/healthz");
    assert_eq!(h.status, 200);
    let ready = admin_get(admin, "/readyz");
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (200, "ready".into())
    );

    let st = admin_get(admin, "/status").json();
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["state"], "ready");
    assert_eq!(st["config"]["generation"], 1);
    let text = std::fs::read(&gw.conf).expect("config");
    assert_eq!(
        st["config"]["sha256"],
        hex::encode(sha2::Sha256::digest(&text))
    );
    assert!(st["config"]["loaded_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    let target = &st["upstreams"][0]["targets"][0];
    assert_eq!(st["upstreams"][0]["name"], "app");
    assert_eq!(target["address"], up.addr.to_string());
    assert_eq!(target["healthy"], true);

    let purge = |headers: &[(&str, &str)]| {
        send_body(
            "POST",
            &format!("http://127.0.0.1:{admin}/cache/purge"),
            headers,
            r#"{"all": true}"#,
        )
    };
    assert_eq!(purge(&[]).status, 401);
    assert_eq!(purge(&[("authorization", "Bearer wrong")]).status, 403);
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(purge(&[("authorization", &bearer)]).status, 200);
    assert_eq!(admin_get(admin, "/nothing").status, 404);
    drop(gw);
}

#[test]
fn status_and_metrics_show_a_target_failing_its_health_check() {
    let good = Upstream::start("good");
    let bad = Upstream::start("bad");
    bad.set_unhealthy(true);
    let admin = free_port();
    let _gw = Gateway::start(&format!(
        r#"admin: {{address: 127.0.0.1:{admin}}}
upstreams:
  - name: pool
    targets: [{{address: "{good}"}}, {{address: "{bad}"}}]
    health_check: {{type: http, path: /health, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1, healthy_threshold: 1}}
routes:
  - name: all
    upstream: pool
"#,
        good = good.addr,
        bad = bad.addr
    ));
    let health_of = |addr: std::net::SocketAddr| {
        let st = admin_get(admin, "/status").json();
        st["upstreams"][0]["targets"]
            .as_array()
            .and_then(|ts| {
                ts.iter()
                    .find(|t| t["address"] == addr.to_string())
                    .map(|t| t["healthy"].clone())
            })
            .unwrap_or_default()
    };
    assert!(eventually(Duration::from_secs(5), || health_of(bad.addr) == false));
    assert_eq!(health_of(good.addr), true);
    let m = samples(&admin_get(admin, "/metrics").body);
    let gauge = |addr: std::net::SocketAddr| {
        sample(
            &m,
            &format!(r#"portico_upstream_target_healthy{{target="{addr}",upstream="pool"}}"#),
        )
    };
    assert_eq!((gauge(good.addr), gauge(bad.addr)), (1.0, 0.0));
}

/// A real Prometheus server scrapes the admin listener.
#[test]
fn prometheus_scrapes_the_admin_listener() {
    let up = Upstream::start("app");
    let admin = free_port();
    let gw = metrics_gateway(&up, admin);
    for _ in 0..7 {
        assert_eq!(get(&gw.url("/open/x")).status, 200);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("prometheus.yml");
    std::fs::write(
        &conf,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: portico\n    static_configs:\n      - targets: ['127.0.0.1:{admin}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let web = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
    let mut prom = Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", conf.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");
    let query = |q: &str| -> Option<f64> {
        let url = format!(
            "http://127.0.0.1:{web}/api/v1/query?query={}",
            q.replace('{', "%7B")
                .replace('}', "%7D")
                .replace('"', "%22")
                .replace('=', "%3D")
        );
        // Prometheus answers 503 (plain text) until its storage is ready: not yet, not a failure.
        let r = try_send("GET", &url, &[], "")
            .ok()
            .filter(|r| r.status == 200)?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = (None, None);
    while Instant::now() < deadline {
        seen = (
            query("up{job=\"portico\"}"),
            query("sum(portico_requests_total{route=\"open\"})"),
        );
        if seen == (Some(1.0), Some(7.0)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = prom.kill();
    let _ = prom.wait();
    assert_eq!(
        seen,
        (Some(1.0), Some(7.0)),
        "prometheus log:\n{}",
        std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
    );
    drop(gw);
}

/// After SIGTERM `/readyz` says draining for `drain_delay` while requests still flow; an
/// in-flight request finishes; then new connections are refused.
#[test]
fn readiness_flips_to_draining_on_sigterm_and_in_flight_requests_finish() {
    let up = Upstream::start("app");
    let admin = free_port();
    let mut gw = Gateway::start_with(
        "  drain_delay: 1500ms\n  grace_period: 3s\n",
        &format!(
            "admin: {{address: 127.0.0.1:{admin}}}\nupstreams:\n  - name: app\n    targets: [{{address: \"{}\"}}]\nroutes:\n  - name: all\n    upstream: app\n",
            up.addr
        ),
    );
    assert_eq!(admin_get(admin, "/readyz").status, 200);
    up.set_delay(Duration::from_millis(2500));
    let slow_url = gw.url("/slow");
    let slow = std::thread::spawn(move || try_send("GET", &slow_url, &[], "").map(|r| r.status));
    std::thread::sleep(Duration::from_millis(300));
    signal(gw.pid(), "TERM");
    assert!(
        eventually(Duration::from_secs(1), || {
            let r = admin_get(admin, "/readyz");
            r.status == 503 && r.json()["status"] == "draining"
        }),
        "readiness did not flip"
    );
    // Still accepting during the drain delay.
    up.set_delay(Duration::ZERO);
    assert_eq!(get(&gw.url("/during-drain")).status, 200);
    assert_eq!(
        slow.join().expect("slow client").expect("slow request"),
        200
    );
    let refused = eventually(Duration::from_secs(3), || {
        std::net::TcpStream::connect_timeout(&gw.addr, Duration::from_millis(200)).is_err()
    });
    assert!(refused, "new connections still accepted after the drain");
    let status = gw.child.wait().expect("portico exits");
    assert!(status.success(), "{status}");
}

#[test]
fn the_request_id_header_is_configurable() {
    let up = Upstream::start("app");
    let gw = Gateway::start_with(
        "  request_id_header: x-correlation-id\n",
        &format!(
            "upstreams:\n  - name: app\n    targets: [{{address: \"{}\"}}]\nroutes:\n  - name: api\n    match: {{path_prefix: /api}}\n    upstream: app\n",
            up.addr
        ),
    );
    let r = send("GET", &gw.url("/api/x"), &[("x-correlation-id", "corr-42")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-correlation-id"), Some("corr-42"));
    let seen = up.last("/api/x").expect("forwarded");
    assert_eq!(seen.header("x-correlation-id"), Some("corr-42"));
    // The default header is not taken as the id any more.
    let r = send("GET", &gw.url("/nowhere"), &[("x-request-id", "ignored")]);
    assert_eq!(r.status, 404);
    let id = r
        .header("x-correlation-id")
        .expect("generated id")
        .to_string();
    assert_ne!(id, "ignored");
    assert_eq!(r.json()["request_id"], id);
}

/// The shipped dashboard's queries are valid PromQL, the scrape config is valid, and the
/// alerting rules pass their unit tests.
#[test]
fn the_dashboard_queries_scrape_config_and_alerts_pass_promtool() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/conf/grafana/portico-dashboard.json"))
        .expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(exprs.len() > 20);
    // Grafana's variables, as Grafana would substitute them.
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("$job", ".*")
                .replace("$instance", ".*")
                .replace("$route", ".*");
            format!("      - record: dashboard:query{i}\n        expr: '{e}'\n")
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rules.yml");
    std::fs::write(
        &file,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .expect("write rules");
    let promtool = tool("promtool");
    for args in [
        vec![
            "check".to_string(),
            "rules".into(),
            file.display().to_string(),
        ],
        vec![
            "check".into(),
            "config".into(),
            format!("{root}/conf/prometheus.yml"),
        ],
        // The alerting rules fire when they should (and the file is valid).
        vec![
            "test".into(),
            "rules".into(),
            format!("{root}/conf/portico-alerts.test.yml"),
        ],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
