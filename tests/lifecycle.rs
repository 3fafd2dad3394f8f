//! Pingora's process model keeps working under our CLI: `-u` takes the listeners over from a
//! running gateway without failing a request, and `-d` runs in the background.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

fn route_to(up: &Upstream) -> String {
    format!(
        "upstreams:\n  - name: up\n    targets: [{{address: \"{}\"}}]\nroutes:\n  - name: all\n    upstream: up\n",
        up.addr
    )
}

/// Every request across the hand-over gets a 200 and no connection is dropped: a
/// connection the old process accepted in its last instant is waited for until it has sent
/// its first request, before Pingora aborts sessions still waiting for one
/// (`HttpProxy::http_cleanup`).
#[test]
fn upgrade_hands_over_listeners_without_an_error_response() {
    let up = Upstream::start("up");
    // In-flight requests of the old process get a grace period (the default is 5 s; the
    // test helper's 0 s would end them at once).
    let mut old = Gateway::start_with(
        "  grace_period: 3s
",
        &route_to(&up),
    );
    let new_log = old.dir.path().join("new.log");
    // Killed on drop, so a failing assertion leaves no process behind.
    let mut new = KillOnDrop(
        Command::new(portico_bin())
            .args(["run", "-u", "-c"])
            .arg(&old.conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&new_log).unwrap())
            .spawn()
            .unwrap(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let url = old.url("/during");
    let client = {
        let (stop, ok, failed, dropped) =
            (stop.clone(), ok.clone(), failed.clone(), dropped.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // A fresh connection each time, as new clients would open.
                match try_send("GET", &url, &[("connection", "close")], "") {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    Ok(_) => failed.fetch_add(1, Ordering::SeqCst),
                    Err(_) => dropped.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };
    // The new process is ready to take the sockets once it listens on the upgrade socket.
    let sock = old.dir.path().join("upgrade.sock");
    assert!(
        eventually(Duration::from_secs(20), || sock.exists()),
        "the new process never waited for the sockets"
    );
    assert!(eventually(Duration::from_secs(10), || ok
        .load(Ordering::SeqCst)
        > 0));
    signal(old.pid(), "QUIT");
    let t = Instant::now();
    let exited = loop {
        if let Ok(Some(_)) = old.child.try_wait() {
            break true;
        }
        if t.elapsed() > Duration::from_secs(20) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The new process answers what comes after.
    let before = ok.load(Ordering::SeqCst);
    let served_after = eventually(Duration::from_secs(10), || {
        ok.load(Ordering::SeqCst) >= before + 10
    });
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    assert!(served_after, "nothing answered after the hand-over");
    let new_alive = new.0.try_wait().unwrap().is_none();
    new.kill();
    let new_text = std::fs::read_to_string(&new_log).unwrap_or_default();
    assert!(exited, "the old process did not exit after SIGQUIT");
    assert!(new_alive, "the new process died:\n{new_text}");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during the upgrade"
    );
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        0,
        "connections dropped during the upgrade"
    );
    assert!(ok.load(Ordering::SeqCst) > 10);
}

/// A request in flight when the gateway is told to stop is answered: in-flight requests get
/// `grace_period` after the listeners close (`shutdown_timeout` only bounds how long the
/// runtimes then take to exit; Pingora ends what still runs at the end of the grace period).
#[test]
fn a_request_in_flight_at_sigterm_is_answered_within_the_grace_period() {
    let up = Upstream::start("up");
    up.set_delay(Duration::from_secs(2));
    let gw = Gateway::start_with(
        "  grace_period: 20s
  shutdown_timeout: 1s
",
        &route_to(&up),
    );
    let url = gw.url("/slow");
    let request = std::thread::spawn(move || try_send("GET", &url, &[], "").map(|r| r.status));
    // It reached the upstream: now it is in flight.
    assert!(eventually(Duration::from_secs(10), || up.count() == 1));
    signal(gw.pid(), "TERM");
    let status = request.join().unwrap();
    assert_eq!(status.ok(), Some(200), "{}", gw.log_text());
}

#[test]
fn daemon_mode_forks_writes_its_pid_and_serves() {
    let up = Upstream::start("up");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("portico.yaml");
    let pid_file = dir.path().join("portico.pid");
    let log = dir.path().join("error.log");
    std::fs::write(
        &conf,
        format!(
            "server:\n  threads: 1\n  pid_file: {}\n  upgrade_sock: {}/upgrade.sock\n  error_log: {}\n  grace_period: 0s\n  shutdown_timeout: 1s\nlisteners:\n  - address: 127.0.0.1:{port}\n{}",
            pid_file.display(),
            dir.path().display(),
            log.display(),
            route_to(&up)
        ),
    )
    .unwrap();
    let status = Command::new(portico_bin())
        .args(["run", "-d", "-c"])
        .arg(&conf)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the foreground process should exit 0 after forking"
    );
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(
            &pid_file
        )
        .is_ok_and(|p| !p.trim().is_empty())),
        "no pid file"
    );
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/x");
    let served = eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }) && get(&url).status == 200;
    signal(pid, "TERM");
    let gone = eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    assert!(
        served,
        "the daemon did not serve; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(gone, "the daemon did not stop on SIGTERM");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("portico"),
        "the error log file was not written"
    );
}
