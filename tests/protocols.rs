//! WebSocket upgrades and HTTP/2 (gRPC-style calls with trailers, cleartext h2c, and the
//! route policies) through the real gateway.

mod common;
use common::tls::{TestCa, H2};
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// RFC 6455's example handshake key and its accept value.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A WebSocket service: it accepts any upgrade, then echoes every byte it gets.
fn websocket_echo() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = free_port();
    let upgrades = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = upgrades.clone();
    let listener = rt()
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap();
    rt().spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !head.contains("upgrade: websocket") {
                    let _ = s.write_all(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n").await;
                    return;
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                // Answer as a service across a network would, not within microseconds:
                // Pingora 0.9.1 can tear down a tunnel whose 101 it reads before it has
                // passed on the request's own (empty) body (cloudflare/pingora#946).
                tokio::time::sleep(Duration::from_millis(200)).await;
                let reply = format!("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {WS_ACCEPT}\r\n\r\n");
                if s.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (SocketAddr::from(([127, 0, 0, 1], port)), upgrades)
}

/// A masked client text frame.
fn frame(text: &str) -> Vec<u8> {
    let mask = [7u8, 1, 9, 3];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Open a WebSocket through the gateway: the response head, and the stream when it is 101.
fn open_websocket(gw: SocketAddr, headers: &[(&str, &str)]) -> (String, TcpStream) {
    let mut s = TcpStream::connect(gw).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!("GET /ws/chat HTTP/1.1\r\nhost: chat.test\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: {WS_KEY}\r\nsec-websocket-version: 13\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).to_string(), s)
}

#[test]
fn websocket_upgrades_are_proxied_after_auth_and_rate_limits() {
    let (ws, upgrades) = websocket_echo();
    let gw = Gateway::start(&format!(
        r#"consumers:
  - {{name: app, api_keys: ["{}"]}}
upstreams:
  - {{name: chat, targets: [{{address: "{ws}"}}]}}
routes:
  - name: ws
    match: {{path_prefix: /ws}}
    upstream: chat
    access: {{providers: [api_key]}}
    rate_limits: [{{name: upgrades, requests: 2, per: 1m, key: consumer}}]
    cache: {{default_ttl: 60s}}
"#,
        portico::policy::auth::api_key::hash_key("chat-key")
    ));
    let key = [("x-api-key", "chat-key")];
    // Without credentials the upgrade never reaches the service.
    let (head, _) = open_websocket(gw.addr, &[]);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    for round in 0..2 {
        let (head, mut s) = open_websocket(gw.addr, &key);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(
            lower.contains("upgrade: websocket") && lower.contains(&WS_ACCEPT.to_ascii_lowercase()),
            "{head}"
        );
        // Frames both ways, more than once, on the upgraded connection.
        for text in ["hello", "again"] {
            let sent = frame(&format!("{text} {round}"));
            s.write_all(&sent).unwrap();
            let mut back = vec![0u8; sent.len()];
            if let Err(e) = s.read_exact(&mut back) {
                panic!("round {round} {text}: {e}\n{}", gw.log_text());
            }
            assert_eq!(back, sent);
        }
    }
    // The rate limit counts upgrades like any request.
    let (head, _) = open_websocket(gw.addr, &key);
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert_eq!(upgrades.load(std::sync::atomic::Ordering::SeqCst), 2);
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A service answering gRPC-style over HTTP/2 (h2c, or TLS with ALPN h2): header, the
/// request's message echoed, then trailers carrying the status.
fn grpc_service(tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr {
    let port = free_port();
    let listener = rt()
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .unwrap();
    rt().spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let io: Box<dyn Io> = match tls {
                    Some(acceptor) => match acceptor.accept(s).await {
                        Ok(s) => Box::new(s),
                        Err(_) => return,
                    },
                    None => Box::new(s),
                };
                let Ok(mut conn) = h2::server::handshake(io).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let path = req.uri().path().to_string();
                        let te = req
                            .headers()
                            .get("te")
                            .map(|v| v.to_str().unwrap_or("").to_string());
                        let mut body = req.into_body();
                        let mut got = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            got.extend_from_slice(&chunk);
                        }
                        let resp = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .header("x-path", path)
                            .header("x-te", te.unwrap_or_default())
                            .body(())
                            .unwrap();
                        let Ok(mut send) = respond.send_response(resp, false) else {
                            return;
                        };
                        // Echo the request message back.
                        let _ = send.send_data(bytes::Bytes::from(got), false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("grpc-message", "done".parse().unwrap());
                        let _ = send.send_trailers(trailers);
                    });
                }
            });
        }
    });
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn grpc_style_calls_keep_their_trailers_over_tls_and_h2c() {
    let ca = TestCa::new("edge");
    let (cert, key) = ca.issue("api", &["api.test"]);
    let svc = grpc_service(None);
    let (svc_cert, svc_key) = ca.issue("greeter", &["greeter.internal"]);
    let tls_svc = grpc_service(Some(tokio_rustls::TlsAcceptor::from(
        common::tls::server_config(&svc_cert, &svc_key, &["h2"], None),
    )));
    let tls_port = free_port();
    let gw = Gateway::start_with(
        "  h2c: true\n",
        &format!(
            r#"  - {{address: "127.0.0.1:{tls_port}", tls: {{certificates: [{{cert: {cert}, key: {key}}}]}}}}
upstreams:
  - name: greeter
    targets: [{{address: "{svc}"}}]
    http2: true
    health_check: {{type: http, path: /health, interval: 100ms, timeout: 100ms}}
  - name: greeter-tls
    targets: [{{address: "{tls_svc}"}}]
    http2: true
    tls: {{sni: greeter.internal, ca: "{ca_file}"}}
    health_check: {{type: http, path: /health, interval: 100ms, timeout: 100ms}}
routes:
  - {{name: grpc, match: {{path_prefix: /helloworld.Greeter/}}, upstream: greeter}}
  - {{name: grpc-tls, match: {{path_prefix: /secure.Greeter/}}, upstream: greeter-tls}}
"#,
            ca_file = ca.ca_path()
        ),
    );
    // The health checks speak HTTP/2 too (an HTTP/1.1 check would fail and take the
    // h2-only services out of rotation).
    std::thread::sleep(Duration::from_millis(400));
    // A length-prefixed gRPC message: flag, 4-byte length, payload.
    let mut message = vec![0u8, 0, 0, 0, 5];
    message.extend_from_slice(b"world");
    let headers = [("content-type", "application/grpc"), ("te", "trailers")];
    let tls = H2::tls(
        SocketAddr::from(([127, 0, 0, 1], tls_port)),
        "api.test",
        &ca.ca_path(),
    );
    let cleartext = H2::cleartext(gw.addr);
    for (how, conn) in [("TLS", tls), ("h2c", cleartext)] {
        let mut conn = conn.unwrap_or_else(|e| panic!("{how}: {e}"));
        // To a service in the clear (h2c) and to one over TLS with ALPN h2.
        for path in ["/helloworld.Greeter/SayHello", "/secure.Greeter/SayHello"] {
            let r = conn
                .request("POST", "api.test", path, &headers, &message)
                .unwrap();
            assert_eq!(r.status, 200, "{how}");
            assert_eq!(r.header("content-type"), Some("application/grpc"));
            assert_eq!(r.header("x-path"), Some(path));
            assert_eq!(
                r.header("x-te"),
                Some("trailers"),
                "{how}: TE: trailers reaches the service"
            );
            assert_eq!(r.body, message, "{how}");
            let trailer = |n: &str| {
                r.trailers
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(
                (trailer("grpc-status"), trailer("grpc-message")),
                (Some("0"), Some("done")),
                "{how}: {r:?}"
            );
        }
    }
}

#[test]
fn route_policies_work_the_same_over_http2() {
    let ca = TestCa::new("edge");
    let (cert, key) = ca.issue("api", &["api.test"]);
    let up = Upstream::start("app");
    up.script(
        "/cached",
        200,
        &[("cache-control", "max-age=60")],
        "{\"n\": {n}}",
    );
    let tls_port = free_port();
    let _gw = Gateway::start(&format!(
        r#"  - {{address: "127.0.0.1:{tls_port}", tls: {{certificates: [{{cert: {cert}, key: {key}}}]}}}}
consumers:
  - {{name: app, api_keys: ["{}"]}}
cache: {{memory: 8MiB}}
upstreams:
  - {{name: app, targets: [{{address: "{}"}}]}}
routes:
  - name: api
    match: {{path_prefix: /api}}
    upstream: app
    access: {{providers: [api_key]}}
    rate_limits: [{{name: per-consumer, requests: 3, per: 1m, key: consumer, headers_on_success: true}}]
    transform: {{response: {{headers: {{set: {{x-served-via: "h2 $consumer"}}}}}}}}
  - {{name: cached, match: {{path_prefix: /cached}}, upstream: app, cache: {{}}}}
"#,
        portico::policy::auth::api_key::hash_key("h2-key"),
        up.addr
    ));
    let mut h2 = H2::tls(
        SocketAddr::from(([127, 0, 0, 1], tls_port)),
        "api.test",
        &ca.ca_path(),
    )
    .unwrap();
    let r = h2.request("GET", "api.test", "/api/x", &[], b"").unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["status"],
        401
    );
    let key = [("x-api-key", "h2-key")];
    for _ in 0..3 {
        let r = h2.request("GET", "api.test", "/api/x", &key, b"").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-served-via"), Some("h2 app"));
        assert!(r.header("ratelimit").is_some());
    }
    let r = h2.request("GET", "api.test", "/api/x", &key, b"").unwrap();
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    assert_eq!(up.count_path("/api/x"), 3);
    let upstream_saw = up.last("/api/x").unwrap();
    assert_eq!(upstream_saw.header("x-consumer"), Some("app"));
    assert_eq!(upstream_saw.header("x-forwarded-proto"), Some("https"));
    // The cache answers HTTP/2 requests too.
    let first = h2.request("GET", "api.test", "/cached", &[], b"").unwrap();
    let second = h2.request("GET", "api.test", "/cached", &[], b"").unwrap();
    assert_eq!(first.body, second.body);
    assert!(
        second.header("cache-status").unwrap().contains("hit"),
        "{second:?}"
    );
    assert_eq!(up.count_path("/cached"), 1);
}

#[test]
fn an_idle_websocket_lives_by_its_own_timeout() {
    let (ws, _) = websocket_echo();
    let gw = Gateway::start_with(
        "  body_timeout: 1s\n",
        &format!(
            r#"upstreams:
  - {{name: chat, targets: [{{address: "{ws}"}}], timeouts: {{read: 1s}}}}
routes:
  - {{name: ws, upstream: chat, upgrade_idle_timeout: 10s}}
"#
        ),
    );
    let (head, mut s) = open_websocket(gw.addr, &[]);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Quiet for longer than the read and body timeouts: still open.
    std::thread::sleep(Duration::from_millis(2500));
    let sent = frame("still there");
    s.write_all(&sent).unwrap();
    let mut back = vec![0u8; sent.len()];
    s.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("closed while idle under its limit: {e}"));
    assert_eq!(back, sent);
    // Quiet past the route's idle limit: the gateway closes it.
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 64];
    let closed = match s.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(closed, "the idle WebSocket was not closed");
}

#[test]
fn errors_the_gateway_answers_to_grpc_calls_are_grpc_statuses() {
    let svc = grpc_service(None);
    let down = free_port();
    let gw = Gateway::start_with(
        "  h2c: true\n",
        &format!(
            r#"consumers:
  - {{name: app, api_keys: ["{key}"]}}
upstreams:
  - {{name: greeter, targets: [{{address: "{svc}"}}], http2: true}}
  - {{name: gone, targets: [{{address: "127.0.0.1:{down}"}}], http2: true}}
routes:
  - {{name: locked, match: {{path_prefix: /locked.Greeter/}}, upstream: greeter, access: {{providers: [api_key]}}}}
  - {{name: limited, match: {{path_prefix: /limited.Greeter/}}, upstream: greeter, rate_limits: [{{name: one, requests: 1, per: 1m, key: route}}]}}
  - {{name: down, match: {{path_prefix: /down.Greeter/}}, upstream: gone}}
"#,
            key = portico::policy::auth::api_key::hash_key("grpc-key")
        ),
    );
    let mut h2 = H2::cleartext(gw.addr).unwrap();
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let message = [0u8, 0, 0, 0, 0];
    let mut call = |path: &str| {
        h2.request("POST", "api.test", path, &grpc, &message)
            .unwrap()
    };
    let status_of = |r: &common::tls::Reply| {
        let trailer = |n: &str| {
            r.trailers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_string())
        };
        (
            r.status,
            trailer("grpc-status"),
            r.header("content-type").map(str::to_string),
            trailer("grpc-message"),
        )
    };
    let r = call("/locked.Greeter/SayHello");
    let (status, code, content_type, message) = status_of(&r);
    assert_eq!(
        (status, code.as_deref(), content_type.as_deref()),
        (200, Some("16"), Some("application/grpc")),
        "UNAUTHENTICATED: {r:?}"
    );
    assert!(message.is_some_and(|m| !m.is_empty()));
    assert_eq!(call("/limited.Greeter/SayHello").status, 200);
    let r = call("/limited.Greeter/SayHello");
    assert_eq!(
        status_of(&r).1.as_deref(),
        Some("8"),
        "RESOURCE_EXHAUSTED: {r:?}"
    );
    let r = call("/down.Greeter/SayHello");
    assert_eq!(status_of(&r).1.as_deref(), Some("14"), "UNAVAILABLE: {r:?}");
}

#[test]
fn client_reset_streams_do_not_flood_the_error_log() {
    let up = Upstream::start("up");
    up.set_delay(Duration::from_secs(5));
    let gw = Gateway::start_with(
        "  h2c: true\n",
        &format!(
            "upstreams:\n  - {{name: up, targets: [{{address: \"{}\"}}]}}\nroutes:\n  - {{name: all, upstream: up}}\n",
            up.addr
        ),
    );
    // As many as the gateway takes at once on one connection (its h2 default is 100).
    const STREAMS: usize = 100;
    let addr = gw.addr;
    let streams = rt().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut streams = Vec::new();
        for i in 0..STREAMS {
            let mut send = send.clone().ready().await.unwrap();
            let req = http::Request::get(format!("http://a.test/r/{i}"))
                .body(())
                .unwrap();
            streams.push(send.send_request(req, true).unwrap());
        }
        (send, streams)
    });
    // The requests reached the service; then the client walks away from every one.
    assert!(
        eventually(Duration::from_secs(20), || up.count() >= STREAMS),
        "{} of {STREAMS} reached the service",
        up.count()
    );
    let start = std::time::Instant::now();
    for (_response, mut stream) in streams.1 {
        stream.send_reset(h2::Reason::CANCEL);
    }
    drop(streams.0);
    std::thread::sleep(Duration::from_millis(500));
    let log = gw.log_text();
    let lines = log.lines().filter(|l| l.contains("ERROR")).count();
    // Ten a second at most: the time measured here can only exceed the gateway's.
    let bound = 10 * (start.elapsed().as_secs() as usize + 2);
    eprintln!("{lines} ERROR lines for {STREAMS} reset streams (bound {bound})");
    assert!(lines <= bound, "{lines} error lines:\n{log}");
}
