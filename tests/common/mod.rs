//! End-to-end test helpers: the real `portico` binary on loopback with a config file, real
//! upstream HTTP servers in this process, and a real HTTP client.
#![allow(dead_code)]

pub mod phased_load;
pub mod redis_deployments;
pub mod tls;

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

/// One tokio runtime shared by every upstream server of a test binary.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

/// A request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// Lower-case names; repeated headers keep every value in order.
    pub headers: Vec<(String, String)>,
    /// The request body (de-chunked).
    pub body: String,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How an upstream misbehaves on command (health checks are still answered).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Answer every request with this status.
    Status(u16),
    /// Read the request and never answer.
    Hang,
    /// Read the request and close the connection without a word.
    ResetBeforeHead,
    /// Send the header and part of the body, then close the connection.
    ResetMidBody,
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    delay: Mutex<Duration>,
    fault: Mutex<Fault>,
    unhealthy: AtomicBool,
    /// Served instead of the echo when set (e.g. a JWK set).
    body: Mutex<Option<String>>,
    /// Scripted answers by target (`/p?q`) or path.
    scripts: Mutex<HashMap<String, Script>>,
    /// Answers wait until this gate opens.
    gate: Mutex<Option<Arc<Gate>>>,
    /// Answers made from the request itself (a service with logic of its own).
    responder: Mutex<Option<Responder>>,
}

/// Makes the answer to a request, as a service with logic of its own would.
pub type Responder = Arc<dyn Fn(&Recorded) -> Script + Send + Sync>;

/// Opens once `needed` requests have arrived at the upstreams sharing it: proof by order
/// that they were all sent before any was answered.
pub struct Gate {
    arrived: std::sync::atomic::AtomicUsize,
    needed: usize,
    opened: AtomicBool,
}

impl Gate {
    pub fn new(needed: usize) -> Arc<Gate> {
        Arc::new(Gate {
            arrived: std::sync::atomic::AtomicUsize::new(0),
            needed,
            opened: AtomicBool::new(false),
        })
    }

    /// Let everything through now, however many have arrived.
    pub fn open(&self) {
        self.opened.store(true, Ordering::SeqCst);
    }

    pub fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    /// Count one arrival and wait (up to a minute) until all have arrived.
    async fn pass(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.arrived() < self.needed
            && !self.opened.load(Ordering::SeqCst)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A scripted answer. `{n}` in the body becomes how many requests the path has had. With
/// an `etag` or `last-modified` header, a matching conditional request gets a 304.
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Script {
    pub fn new(status: u16, headers: &[(&str, &str)], body: &str) -> Script {
        Script {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_string(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        302 => "Found",
        304 => "Not Modified",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// The scripted response to a request, if the target has a script.
fn scripted(
    state: &State,
    method: &str,
    target: &str,
    headers: &[(String, String)],
) -> Option<String> {
    let path = target.split('?').next().unwrap_or(target);
    let script = {
        let scripts = state.scripts.lock().unwrap();
        scripts.get(target).or_else(|| scripts.get(path)).cloned()?
    };
    let n = state
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.target.split('?').next() == Some(path))
        .count();
    let find = |list: &[(String, String)], name: &str| {
        list.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let not_modified = match (
        find(&script.headers, "etag"),
        find(headers, "if-none-match"),
    ) {
        (Some(tag), Some(inm)) => inm.split(',').any(|t| t.trim() == tag || t.trim() == "*"),
        _ => match (
            find(&script.headers, "last-modified"),
            find(headers, "if-modified-since"),
        ) {
            (Some(lm), Some(ims)) => lm == ims,
            _ => false,
        },
    };
    let status = if not_modified { 304 } else { script.status };
    let body = if matches!(status, 204 | 304) || method == "HEAD" {
        String::new()
    } else {
        script.body.replace("{n}", &n.to_string())
    };
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in &script.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let chunked = find(&script.headers, "transfer-encoding").is_some_and(|v| v == "chunked");
    if chunked {
        let body = if body.is_empty() {
            "0\r\n\r\n".to_string()
        } else {
            format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
        };
        return Some(format!("{head}\r\n{body}"));
    }
    if !matches!(status, 204 | 304) {
        let len = if method == "HEAD" {
            script.body.len()
        } else {
            body.len()
        };
        head.push_str(&format!("content-length: {len}\r\n"));
    }
    Some(format!("{head}\r\n{body}"))
}

/// An HTTP/1.1 server that answers every request with
/// `{"server": NAME, "method": ..., "target": ...}` and records what it got.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<State>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

async fn read_head<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end + 4);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A chunked body from `buf` (more read from `stream` as needed); consumed from `buf`.
async fn read_chunked<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        while buf.len() < line_end + 2 + size + 2 {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
        buf.drain(..line_end + 2 + size + 2);
        if size == 0 {
            return Some(body);
        }
    }
}

async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    name: String,
    state: Arc<State>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(head_len) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let method = first.next().unwrap_or_default().to_string();
        let target = first.next().unwrap_or_default().to_string();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let body = if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            buf.drain(..head_len);
            match read_chunked(&mut stream, &mut buf).await {
                Some(b) => b,
                None => return,
            }
        } else {
            let body_len: usize = find("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_len + body_len {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let body = buf[head_len..head_len + body_len].to_vec();
            buf.drain(..head_len + body_len);
            body
        };
        let close = find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let is_health = target == "/health";
        if !is_health {
            state.requests.lock().unwrap().push(Recorded {
                method: method.clone(),
                target: target.clone(),
                headers: headers.clone(),
                body: String::from_utf8_lossy(&body).to_string(),
            });
        }
        let gate = state.gate.lock().unwrap().clone();
        if let Some(g) = gate.filter(|_| !is_health) {
            g.pass().await;
        }
        let fault = *state.fault.lock().unwrap();
        if !is_health && fault != Fault::None {
            match fault {
                Fault::Status(code) => {
                    let body = format!("{{\"server\": \"{name}\", \"failing\": {code}}}");
                    let resp = format!(
                        "HTTP/1.1 {code} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-served-by: {name}\r\n\r\n{body}",
                        reason(code),
                        body.len()
                    );
                    if stream.write_all(resp.as_bytes()).await.is_err() || close {
                        return;
                    }
                    continue;
                }
                Fault::Hang => {
                    // Until the gateway gives up and closes its end.
                    let mut sink = [0u8; 1024];
                    loop {
                        match tokio::time::timeout(Duration::from_secs(600), stream.read(&mut sink))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => continue,
                            _ => return,
                        }
                    }
                }
                Fault::ResetBeforeHead => return,
                Fault::ResetMidBody => {
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\nx-served-by: {name}\r\n\r\n{}",
                        "x".repeat(100)
                    );
                    let _ = stream.write_all(resp.as_bytes()).await;
                    let _ = stream.flush().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return;
                }
                Fault::None => {}
            }
        }
        let delay = *state.delay.lock().unwrap();
        if !delay.is_zero() && !is_health {
            tokio::time::sleep(delay).await;
        }
        let status = if is_health && state.unhealthy.load(Ordering::SeqCst) {
            "503 Service Unavailable"
        } else {
            "200 OK"
        };
        let responder = state.responder.lock().unwrap().clone();
        if let Some(f) = responder.filter(|_| !is_health) {
            let recorded = Recorded {
                method: method.clone(),
                target: target.clone(),
                headers: headers.clone(),
                body: String::from_utf8_lossy(&body).to_string(),
            };
            let script = f(&recorded);
            let mut head = format!("HTTP/1.1 {} {}\r\n", script.status, reason(script.status));
            for (k, v) in &script.headers {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str(&format!("content-length: {}\r\n\r\n", script.body.len()));
            let resp = format!("{head}{}", script.body);
            if stream.write_all(resp.as_bytes()).await.is_err() || close {
                return;
            }
            continue;
        }
        if !is_health {
            if let Some(resp) = scripted(&state, &method, &target, &headers) {
                if stream.write_all(resp.as_bytes()).await.is_err() || close {
                    return;
                }
                continue;
            }
        }
        let fixed = state.body.lock().unwrap().clone();
        let body = fixed.unwrap_or_else(|| {
            serde_json::json!({"server": name, "method": method, "target": target}).to_string()
        });
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-served-by: {name}\r\nkeep-alive: timeout=5\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        if stream.write_all(resp.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

impl Upstream {
    /// Start on a free loopback port.
    pub fn start(name: &str) -> Upstream {
        // From the same registry as the gateways' ports: a port the OS picked for an
        // upstream could be one just handed to a gateway that has not bound it yet.
        Self::start_on(name, free_port())
    }

    /// Start on `port` (0 for any), e.g. to bring back a stopped upstream at its address.
    pub fn start_on(name: &str, port: u16) -> Upstream {
        Self::start_with(name, port, Arc::default())
    }

    /// Start on a free port, serving HTTPS with `tests/fixtures/localhost.pem` (signed by
    /// `tests/fixtures/test_ca.pem`).
    pub fn start_tls(name: &str) -> Upstream {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let (cert, key) = (
            format!("{dir}/localhost.pem"),
            format!("{dir}/localhost_key.pem"),
        );
        Self::start_tls_with(name, &cert, &key, None)
    }

    /// An HTTPS upstream serving `cert`/`key` (PEM files); with `client_ca`, it only
    /// accepts clients presenting a certificate that authority signed.
    pub fn start_tls_with(name: &str, cert: &str, key: &str, client_ca: Option<&str>) -> Upstream {
        let config = tls::server_config(cert, key, &[], client_ca);
        Self::spawn(
            name,
            free_port(),
            Arc::default(),
            Some(tokio_rustls::TlsAcceptor::from(config)),
        )
    }

    /// As [`Upstream::start_tls_with`], on `port` (e.g. the port of one just stopped).
    pub fn start_tls_on(name: &str, port: u16, cert: &str, key: &str) -> Upstream {
        let config = tls::server_config(cert, key, &[], None);
        Self::spawn(
            name,
            port,
            Arc::default(),
            Some(tokio_rustls::TlsAcceptor::from(config)),
        )
    }

    fn start_with(name: &str, port: u16, state: Arc<State>) -> Upstream {
        Self::spawn(name, port, state, None)
    }

    fn spawn(
        name: &str,
        port: u16,
        state: Arc<State>,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Upstream {
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let listener = rt().block_on(async {
            // A port just given up by a stopped upstream (restart) is free once the runtime
            // has dropped its aborted listener, which a busy machine may take a while to do.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let socket = TcpSocket::new_v4().expect("socket");
                socket.set_reuseaddr(true).expect("reuseaddr");
                match socket.bind(SocketAddr::from(([127, 0, 0, 1], port))) {
                    Ok(()) => break socket.listen(1024).expect("listen"),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::AddrInUse
                            && Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("bind upstream: {e}"),
                }
            }
        });
        let addr = listener.local_addr().expect("local addr");
        let (n, s, t) = (name.to_string(), state.clone(), tasks.clone());
        let accept = rt().spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (n, s) = (n.clone(), s.clone());
                let conn = match tls.clone() {
                    None => tokio::spawn(serve_conn(stream, n, s)),
                    Some(acceptor) => tokio::spawn(async move {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve_conn(stream, n, s).await;
                        }
                    }),
                };
                t.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Upstream {
            name: name.to_string(),
            addr,
            state,
            tasks,
        }
    }

    /// Close the listener and every open connection, as a crashed service would.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        // Let the runtime drop the aborted sockets before the test goes on.
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Start again at the same address, keeping the recorded requests.
    pub fn restart(&self) -> Upstream {
        Self::start_with(&self.name, self.addr.port(), self.state.clone())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    pub fn clear(&self) {
        self.state.requests.lock().unwrap().clear();
    }

    /// Hold every answer until `gate` opens.
    pub fn set_gate(&self, gate: Arc<Gate>) {
        *self.state.gate.lock().unwrap() = Some(gate);
    }

    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }

    /// Answer every request with this body (JSON) instead of the echo.
    pub fn set_body(&self, body: &str) {
        *self.state.body.lock().unwrap() = Some(body.to_string());
    }

    /// Misbehave on every request from now on (`Fault::None` to stop).
    pub fn set_fault(&self, f: Fault) {
        *self.state.fault.lock().unwrap() = f;
    }

    /// Answer every request (but health checks) with what `f` makes of it.
    pub fn respond_with(&self, f: impl Fn(&Recorded) -> Script + Send + Sync + 'static) {
        *self.state.responder.lock().unwrap() = Some(Arc::new(f));
    }

    /// Answer requests for `target` (a path, or path and query) as scripted.
    pub fn script(&self, target: &str, status: u16, headers: &[(&str, &str)], body: &str) {
        let script = Script::new(status, headers, body);
        self.state
            .scripts
            .lock()
            .unwrap()
            .insert(target.to_string(), script);
    }

    /// Requests received for `path` (any query).
    pub fn count_path(&self, path: &str) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.target.split('?').next() == Some(path))
            .count()
    }

    /// The last request received for `path`.
    pub fn last(&self, path: &str) -> Option<Recorded> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|r| r.target.split('?').next() == Some(path))
            .cloned()
    }

    /// Make `/health` answer 503 (true) or 200 (false).
    pub fn set_unhealthy(&self, v: bool) {
        self.state.unhealthy.store(v, Ordering::SeqCst);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// A loopback port nobody listens on right now, never the same twice in this process.
/// It lies below the kernel's ephemeral range: a port from that range can be taken as the
/// source port of some outgoing connection (the gateway's, a client's) between this check
/// and the bind, which then fails.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let span = u32::from(high - low);
    // Start somewhere that depends on the process, so test binaries run one after the
    // other do not walk the same ports.
    let mut n = std::process::id().wrapping_mul(7919) % span;
    let mut given = GIVEN.lock().unwrap();
    for _ in 0..span {
        n = (n + 1) % span;
        let port = low + n as u16;
        if given.contains(&port) || std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        given.push(port);
        return port;
    }
    panic!("no free port between {low} and {high}");
}

fn wait_for_port(addr: SocketAddr, child: &mut Child, log: &PathBuf, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status} before listening; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "{what} did not listen on {addr} within 20s; its log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Loopback addresses of the listeners a test config lists after the generated first one:
/// the entries before the config's first top-level key.
fn more_listeners(body: &str) -> Vec<SocketAddr> {
    body.lines()
        .take_while(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('-'))
        .filter_map(|l| {
            let at = l.find("address:")?;
            let rest = l[at + "address:".len()..]
                .trim_start()
                .trim_start_matches('"');
            let end = rest.find(|c: char| c == '"' || c == ',' || c == '}' || c.is_whitespace());
            rest[..end.unwrap_or(rest.len())].parse().ok()
        })
        .filter(|a: &SocketAddr| a.ip().is_loopback())
        .collect()
}

pub fn portico_bin() -> &'static str {
    env!("CARGO_BIN_EXE_portico")
}

/// The real `portico` binary, running a config, killed on drop.
pub struct Gateway {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub log: PathBuf,
}

impl Gateway {
    /// Run portico with `body` (upstreams, routes, ...) below a generated `server` and
    /// `listeners` section on a free port.
    pub fn start(body: &str) -> Gateway {
        Gateway::start_with("", body)
    }

    /// As [`Gateway::start`], with `server` lines (two-space indented) added to the
    /// generated server section; a key given here wins over the generated one.
    pub fn start_with(server: &str, body: &str) -> Gateway {
        Gateway::start_with_binary(std::path::Path::new(portico_bin()), server, body)
    }

    /// As [`Gateway::start_with`], running `binary` instead of the one under test.
    pub fn start_with_binary(binary: &std::path::Path, server: &str, body: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut lines = format!(
            "  threads: 2\n  pid_file: {d}/portico.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period: 0s\n  shutdown_timeout: 1s\n  log_level: info\n",
            d = dir.path().display()
        );
        for line in server.lines() {
            if let Some(key) = line.trim().split(':').next() {
                lines = lines
                    .lines()
                    .filter(|l| l.trim().split(':').next() != Some(key))
                    .map(|l| format!("{l}\n"))
                    .collect();
            }
        }
        lines.push_str(server);
        let config = format!("server:\n{lines}listeners:\n  - address: 127.0.0.1:{port}\n{body}");
        let conf = dir.path().join("portico.yaml");
        std::fs::write(&conf, config).expect("write config");
        let log = dir.path().join("portico.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut child = Command::new(binary)
            .args(["run", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn portico");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr, &mut child, &log, "portico");
        // Listeners start side by side: the others listed in `body` may open a moment
        // after the first.
        for other in more_listeners(body) {
            wait_for_port(other, &mut child, &log, "portico");
        }
        Gateway {
            child,
            addr,
            dir,
            conf,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `portico check` on `yaml`: whether it passed, and everything it printed.
pub fn check_config(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("bad.yaml");
    std::fs::write(&conf, yaml).expect("write config");
    let out = Command::new(portico_bin())
        .args(["check", "-c"])
        .arg(&conf)
        .output()
        .expect("run portico check");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.success(), text)
}

/// The path of an installed command; a missing one fails the test, naming the Debian
/// package that `.ci/run` installs for it.
pub fn installed(name: &str, package: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    found.unwrap_or_else(|| panic!("{name} is not installed: apt-get install {package}"))
}

/// Send a signal (`QUIT`, `TERM`, ...) to a process.
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{name} {pid} failed");
}

/// A real `redis-server` on a free loopback port, with no persistence; killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> RedisServer {
        Self::start_with(port, &[])
    }

    /// With more `redis-server` arguments, e.g. `--requirepass`.
    pub fn start_with(port: u16, args: &[&str]) -> RedisServer {
        Self::spawn(port, None, args)
    }

    /// A Sentinel (Redis in sentinel mode) with `config`; it rewrites its file, so the file
    /// lives in the server's own directory.
    pub fn start_sentinel(port: u16, config: &str) -> RedisServer {
        Self::spawn(port, Some(config), &["--sentinel"])
    }

    fn spawn(port: u16, config: Option<&str>, args: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("redis.log");
        let mut command = Command::new("redis-server");
        if let Some(text) = config {
            let file = dir.path().join("redis.conf");
            std::fs::write(&file, text).expect("redis config");
            command.arg(file);
        }
        let mut child = command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .args(args)
            .stdout(std::fs::File::create(&log).expect("redis log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        wait_for_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            &mut child,
            &log,
            "redis-server",
        );
        RedisServer {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kill it, as a crash would.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
    /// Which test upstream answered.
    pub fn server(&self) -> String {
        self.json()["server"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(15)))
        .build()
        .into()
}

/// Send one request; `headers` are added as given.
pub fn send(method: &str, url: &str, headers: &[(&str, &str)]) -> Resp {
    send_body(method, url, headers, "")
}

/// Send one request with a body.
pub fn send_body(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    try_send(method, url, headers, body).unwrap_or_else(|e| panic!("{method} {url} failed: {e}"))
}

/// Send one request; a connection-level failure is returned, not a panic.
pub fn try_send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Resp, ureq::Error> {
    let mut builder = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(body.as_bytes()).expect("request");
    let mut resp = agent().run(req)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let mut body = String::new();
    let _ = resp.body_mut().as_reader().read_to_string(&mut body);
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// GET `path` on the admin listener at `port`.
pub fn admin_get(port: u16, path: &str) -> Resp {
    get(&format!("http://127.0.0.1:{port}{path}"))
}

/// The sum of the samples of metric `name` whose labels contain `labels`, from the admin
/// listener on `admin` (0 when there is none).
pub fn metric(admin: u16, name: &str, labels: &str) -> f64 {
    admin_get(admin, "/metrics")
        .body
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn get(url: &str) -> Resp {
    send("GET", url, &[])
}

/// Send `n` GETs with `headers` at once, each on its own connection from its own thread,
/// released together; their statuses.
pub fn at_once(n: usize, url: &str, headers: &[(&str, &str)]) -> Vec<u16> {
    let start = Arc::new(std::sync::Barrier::new(n));
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (url, start, headers) = (url.to_string(), start.clone(), headers.clone());
            std::thread::spawn(move || {
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                start.wait();
                send("GET", &url, &h).status
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("a client thread"))
        .collect()
}

/// Send raw bytes on a fresh connection and return everything the server sent back
/// (the request should say `Connection: close`).
pub fn raw(addr: SocketAddr, request: &str) -> String {
    use std::io::Write;
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Wait until `cond` holds, up to `limit`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}
