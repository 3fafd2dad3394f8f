//! Operations with real processes and load generated here: config reloads and binary
//! upgrades while clients keep sending (keep-alive, new connections, slow responses) lose
//! no request; a bad config is refused while the old one serves; the systemd unit verifies.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "admin-token-0123456789";

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: usize,
    failures: Vec<String>,
    /// Client kind, when the request was sent, how long it took.
    latencies: Vec<(&'static str, Instant, Duration)>,
}

/// The two upstreams `/svc` alternates between, and a slow one (300 ms).
fn load_upstreams() -> (Upstream, Upstream, Upstream) {
    let slow = Upstream::start("slow");
    slow.set_delay(Duration::from_millis(300));
    (Upstream::start("a"), Upstream::start("b"), slow)
}

/// The upstream generation `g` routes `/svc` to.
fn side(g: usize) -> &'static str {
    if g.is_multiple_of(2) {
        "a"
    } else {
        "b"
    }
}

/// The config of generation `g`: `/svc` goes to `a` on even generations and to `b` on odd
/// ones, and every answer says which generation served it.
fn config(g: usize, admin: u16, a: &Upstream, b: &Upstream, slow: &Upstream) -> String {
    let target = side(g);
    format!(
        r#"admin:
  address: 127.0.0.1:{admin}
  token: {TOKEN}
upstreams:
  - {{name: a, targets: [{{address: "{a}"}}]}}
  - {{name: b, targets: [{{address: "{b}"}}]}}
  - {{name: slow, targets: [{{address: "{slow}"}}], timeouts: {{read: 10s}}}}
routes:
  - name: svc
    match: {{path_prefix: /svc}}
    upstream: {target}
    transform:
      response:
        headers: {{set: {{x-gen: "{g}"}}}}
  - name: slow
    match: {{path_prefix: /slow}}
    upstream: slow
"#,
        a = a.addr,
        b = b.addr,
        slow = slow.addr
    )
}

/// Replace the generated config's body (after `listeners`) with `body`.
fn write_config(gw: &Gateway, body: &str) {
    let text = std::fs::read_to_string(&gw.conf).expect("config");
    let listener = format!("address: {}\n", gw.addr);
    let head_end = text.find(&listener).expect("listener line") + listener.len();
    std::fs::write(&gw.conf, format!("{}{body}", &text[..head_end])).expect("write config");
}

/// One request on a fresh connection; `Ok((status, x-gen, server))`.
fn fresh_connection(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    let status = out
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {out:?}"))?;
    Ok((status, out))
}

/// Check an answer of `/svc`: 200, and served by the upstream its generation routes to.
fn check_svc(status: u16, gen: Option<&str>, server: &str) -> Result<usize, String> {
    if status != 200 {
        return Err(format!("status {status}"));
    }
    let g: usize = gen.and_then(|g| g.parse().ok()).ok_or("no x-gen header")?;
    let expected = side(g);
    if server != expected {
        return Err(format!("generation {g} answered by {server}"));
    }
    Ok(g)
}

/// Clients until `stop`: two keep-alive, one new connection per request, one slow route.
fn start_load(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut clients = Vec::new();
    for kind in ["keepalive", "keepalive", "fresh", "slow"] {
        let (stop, tally) = (stop.clone(), tally.clone());
        clients.push(std::thread::spawn(move || {
            let url = format!("http://{addr}");
            let mut last_gen = 0;
            while !stop.load(Ordering::SeqCst) {
                let sent = Instant::now();
                let outcome: Result<(), String> = match kind {
                    "slow" => try_send("GET", &format!("{url}/slow"), &[], "")
                        .map_err(|e| e.to_string())
                        .and_then(|r| {
                            (r.status == 200)
                                .then_some(())
                                .ok_or(format!("slow: status {}", r.status))
                        }),
                    "fresh" => fresh_connection(addr, "/svc/fresh").and_then(|(status, raw)| {
                        let lower = raw.to_ascii_lowercase();
                        let gen = lower
                            .lines()
                            .find_map(|l| l.strip_prefix("x-gen: "))
                            .map(str::trim);
                        let server = if raw.contains("\"server\":\"a\"") {
                            "a"
                        } else {
                            "b"
                        };
                        check_svc(status, gen, server).map(|g| {
                            last_gen = last_gen.max(g);
                        })
                    }),
                    _ => try_send("GET", &format!("{url}/svc/ka"), &[], "")
                        .map_err(|e| e.to_string())
                        .and_then(|r| {
                            let g = check_svc(r.status, r.header("x-gen"), &r.server())?;
                            // One client's requests are sequential: a later one never sees
                            // an older config.
                            if g < last_gen {
                                return Err(format!("generation {g} after {last_gen}"));
                            }
                            last_gen = g;
                            Ok(())
                        }),
                };
                let mut t = tally.lock().unwrap();
                match outcome {
                    Ok(()) => {
                        t.ok += 1;
                        t.latencies.push((kind, sent, sent.elapsed()));
                    }
                    Err(e) => t.failures.push(format!("{kind}: {e}")),
                }
            }
        }));
    }
    clients
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() * 99 / 100).copied().unwrap_or_default()
}

fn admin_reload(admin: u16) -> Resp {
    send(
        "POST",
        &format!("http://127.0.0.1:{admin}/reload"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
}

fn generation(admin: u16) -> u64 {
    get(&format!("http://127.0.0.1:{admin}/status")).json()["config"]["generation"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn twenty_reloads_and_a_bad_config_under_load_lose_no_request() {
    let (a, b, slow) = load_upstreams();
    let admin = free_port();
    let gw = Gateway::start(&config(1, admin, &a, &b, &slow));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients = start_load(gw.addr, stop.clone(), tally.clone());

    std::thread::sleep(Duration::from_secs(2));
    let reloads_start = Instant::now();
    for g in 2..=21 {
        write_config(&gw, &config(g, admin, &a, &b, &slow));
        if g.is_multiple_of(2) {
            let r = admin_reload(admin);
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.json()["generation"], g as u64);
        } else {
            signal(gw.pid(), "HUP");
            assert!(
                eventually(Duration::from_secs(5), || generation(admin) == g as u64),
                "SIGHUP reload to generation {g} did not happen"
            );
        }
        // A request sent after the reload sees the new config.
        let r = get(&gw.url("/svc/after"));
        assert_eq!(r.header("x-gen"), Some(g.to_string().as_str()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let reloads_end = Instant::now();

    // A bad config: refused with its fault, the running one keeps serving.
    write_config(
        &gw,
        "upstreams:\n  - {name: a, targets: []}\nroutes:\n  - {name: r, upstream: nowhere}\n",
    );
    let r = admin_reload(admin);
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("upstream"), "{}", r.body);
    assert_eq!(r.json()["generation"], 21);
    signal(gw.pid(), "HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(generation(admin), 21);
    let r = get(&gw.url("/svc/still"));
    assert_eq!((r.status, r.header("x-gen")), (200, Some("21")));
    let metrics = get(&format!("http://127.0.0.1:{admin}/metrics")).body;
    assert!(
        metrics.contains("portico_config_reloads_total{result=\"success\"} 20"),
        "{metrics}"
    );
    assert!(
        metrics.contains("portico_config_reloads_total{result=\"failure\"} 2"),
        "{metrics}"
    );
    std::thread::sleep(Duration::from_secs(1));

    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let t = tally.lock().unwrap();
    let (during, steady): (Vec<_>, Vec<_>) = t
        .latencies
        .iter()
        .partition(|(_, sent, _)| *sent >= reloads_start && *sent <= reloads_end);
    let fast = |v: &Vec<&(&str, Instant, Duration)>| -> Vec<Duration> {
        // Every sample of the clients of the fast routes (the slow route's 300 ms would hide
        // everything else), so a stall during a reload shows.
        v.iter()
            .filter(|(kind, _, _)| *kind != "slow")
            .map(|(_, _, d)| *d)
            .collect()
    };
    eprintln!(
        "reload test: {} requests answered, {} failed; p99 steady {:?}, during reloads {:?}",
        t.ok,
        t.failures.len(),
        p99(fast(&steady)),
        p99(fast(&during))
    );
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    assert!(t.ok > 200, "only {} requests", t.ok);
}

#[test]
fn reload_keeps_state_of_unchanged_sections_and_reports_what_needs_an_upgrade() {
    let up = Upstream::start("app");
    let admin = free_port();
    let body = |limit: u32, listener_note: &str| {
        format!(
            "admin: {{address: 127.0.0.1:{admin}, token: {TOKEN}}}\nupstreams:\n  - {{name: app, targets: [{{address: \"{}\"}}]}}\nroutes:\n  - name: limited{listener_note}\n    upstream: app\n    rate_limits:\n      - {{name: three, requests: {limit}, per: 1m, key: route}}\n",
            up.addr
        )
    };
    let gw = Gateway::start(&body(3, ""));
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/x")).status, 200);
    }
    // Same limit: its counter carries over (one request left, then 429).
    write_config(&gw, &body(3, ""));
    assert_eq!(admin_reload(admin).status, 200);
    assert_eq!(get(&gw.url("/x")).status, 200);
    assert_eq!(get(&gw.url("/x")).status, 429);
    // A changed limit starts fresh.
    write_config(&gw, &body(5, ""));
    assert_eq!(admin_reload(admin).status, 200);
    assert_eq!(get(&gw.url("/x")).status, 200);

    // Listener changes are reported, not silently ignored.
    let text = std::fs::read_to_string(&gw.conf).unwrap();
    let moved = text.replacen(
        &format!("127.0.0.1:{}", gw.addr.port()),
        &format!("127.0.0.1:{}", free_port()),
        1,
    );
    std::fs::write(&gw.conf, moved).unwrap();
    let r = admin_reload(admin);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["needs_upgrade"], serde_json::json!(["listeners"]));
    assert_eq!(get(&gw.url("/x")).status, 200);

    // Reload without the token is refused.
    let r = send("POST", &format!("http://127.0.0.1:{admin}/reload"), &[]);
    assert_eq!(r.status, 401);
}

#[test]
fn two_binary_upgrades_under_load_lose_no_request() {
    let (a, b, slow) = load_upstreams();
    let admin = free_port();
    let mut gw = Gateway::start_with("  grace_period: 2s\n", &config(2, admin, &a, &b, &slow));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients = start_load(gw.addr, stop.clone(), tally.clone());
    std::thread::sleep(Duration::from_secs(1));

    let mut pids = vec![gw.pid()];
    for _ in 0..2 {
        // Pipes, as `portico upgrade | cat` would have: the command must end although the
        // new gateway lives on (it does not hold the pipes).
        let conf = gw.conf.clone();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let out = Command::new(portico_bin())
                .args(["upgrade", "-c"])
                .arg(&conf)
                .output()
                .expect("portico upgrade");
            let _ = done.send(out);
        });
        let out = finished
            .recv_timeout(Duration::from_secs(120))
            .expect("portico upgrade never returned: the new process holds its pipes");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "upgrade failed: {text}\n{}",
            gw.log_text()
        );
        let pid: u32 = std::fs::read_to_string(gw.dir.path().join("portico.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!pids.contains(&pid), "{text}");
        pids.push(pid);
        let st = get(&format!("http://127.0.0.1:{admin}/status")).json();
        assert!(
            eventually(Duration::from_secs(10), || {
                get(&format!("http://127.0.0.1:{admin}/status")).json()["pid"] == pid
            }),
            "admin still answered by the old process: {st}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The first process drains and exits.
    assert!(eventually(Duration::from_secs(10), || matches!(
        gw.child.try_wait(),
        Ok(Some(_))
    )));
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    // The processes started by `portico upgrade` are not our children: stop them by pid.
    let last = *pids.last().unwrap();
    signal(last, "TERM");
    let gone = eventually(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{last}")).exists()
    });
    let middle = pids[1];
    let middle_gone = eventually(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{middle}")).exists()
    });
    let t = tally.lock().unwrap();
    eprintln!(
        "upgrade test: {} requests answered across two upgrades, {} failed",
        t.ok,
        t.failures.len()
    );
    assert!(t.failures.is_empty(), "{:?}", t.failures);
    assert!(t.ok > 100, "only {} requests", t.ok);
    assert!(gone && middle_gone, "upgraded processes did not exit");
}

/// `systemd-analyze verify` on the shipped unit, pointed at the binary under test.
#[test]
fn the_systemd_unit_verifies() {
    let root = env!("CARGO_MANIFEST_DIR");
    let analyze = installed("systemd-analyze", "systemd");
    let unit = std::fs::read_to_string(format!("{root}/systemd/portico.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/portico", portico_bin())).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // Only findings about this unit count (the host's own units may have their own).
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("portico.service"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{text}");
}

/// `portico reload` (systemd's ExecReload): checks first, so a bad file fails the command
/// and changes nothing; a good one is reloaded; a replaced binary is upgraded instead.
#[test]
fn the_reload_command_checks_reloads_or_upgrades() {
    let up = Upstream::start("app");
    let admin = free_port();
    let dir = tempfile::tempdir().unwrap();
    // A copy of the binary that can be replaced like a package upgrade would.
    let bin = dir.path().join("portico");
    std::fs::copy(portico_bin(), &bin).unwrap();
    let body = format!(
        "admin: {{address: 127.0.0.1:{admin}, token: {TOKEN}}}\nupstreams:\n  - {{name: app, targets: [{{address: \"{}\"}}]}}\nroutes:\n  - {{name: all, upstream: app}}\n",
        up.addr
    );
    let gw = Gateway::start_with_binary(&bin, "", &body);
    let reload = || {
        Command::new(&bin)
            .args(["reload", "-c"])
            .arg(&gw.conf)
            .stdout(std::fs::File::create(dir.path().join("reload.out")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("reload.err")).unwrap())
            .status()
            .unwrap()
    };
    let said = || {
        std::fs::read_to_string(dir.path().join("reload.out")).unwrap_or_default()
            + &std::fs::read_to_string(dir.path().join("reload.err")).unwrap_or_default()
    };
    assert!(reload().success(), "{}", said());
    assert!(eventually(Duration::from_secs(5), || generation(admin) == 2));

    let good = std::fs::read_to_string(&gw.conf).unwrap();
    std::fs::write(&gw.conf, good.replace("upstream: app", "upstream: nowhere")).unwrap();
    assert!(!reload().success());
    assert!(said().contains("nowhere"), "{}", said());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(generation(admin), 2);
    std::fs::write(&gw.conf, good).unwrap();

    // Replace the binary file (a new inode, as package managers do): reload upgrades.
    let fresh = dir.path().join("portico.new");
    std::fs::copy(portico_bin(), &fresh).unwrap();
    std::fs::rename(&fresh, &bin).unwrap();
    let old_pid = gw.pid();
    assert!(reload().success(), "{}", said());
    assert!(said().contains("upgraded"), "{}", said());
    let new_pid = get(&format!("http://127.0.0.1:{admin}/status")).json()["pid"].clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            get(&format!("http://127.0.0.1:{admin}/status")).json()["pid"] != old_pid
        }),
        "still {new_pid}"
    );
    assert_eq!(get(&gw.url("/after-upgrade")).status, 200);
    let pid: u32 = std::fs::read_to_string(gw.dir.path().join("portico.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal(pid, "TERM");
    assert!(eventually(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    }));
}

/// An unchanged upstream keeps its pool over a reload: a target its health check took out
/// stays out, instead of coming back healthy with a fresh pool.
#[test]
fn reload_keeps_target_health_of_an_unchanged_upstream() {
    let (good, bad) = (Upstream::start("good"), Upstream::start("bad"));
    // Its checks (of /probe, which the test upstream delays like any path) time out after
    // 200 ms, so a fresh pool would show it healthy that long.
    bad.set_delay(Duration::from_secs(2));
    let admin = free_port();
    let body = |route: &str| {
        format!(
            "admin: {{address: 127.0.0.1:{admin}, token: {TOKEN}}}\nupstreams:\n  - name: pool\n    targets: [{{address: \"{}\"}}, {{address: \"{}\"}}]\n    health_check: {{type: http, path: /probe, interval: 5s, timeout: 200ms, unhealthy_threshold: 1, healthy_threshold: 1}}\nroutes:\n  - {{name: {route}, upstream: pool}}\n",
            good.addr, bad.addr
        )
    };
    let gw = Gateway::start(&body("first"));
    let bad_healthy = || {
        get(&format!("http://127.0.0.1:{admin}/status")).json()["upstreams"][0]["targets"]
            .as_array()
            .and_then(|ts| {
                ts.iter()
                    .find(|t| t["address"] == bad.addr.to_string())
                    .map(|t| t["healthy"] == true)
            })
            .unwrap_or(true)
    };
    assert!(eventually(Duration::from_secs(5), || !bad_healthy()));
    // A route change only; the next check is seconds away.
    write_config(&gw, &body("second"));
    assert_eq!(admin_reload(admin).status, 200);
    assert!(!bad_healthy(), "the reload forgot the target's health");
    for _ in 0..10 {
        assert_eq!(get(&gw.url("/x")).server(), "good");
    }
}
