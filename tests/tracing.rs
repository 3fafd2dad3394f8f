//! OpenTelemetry spans through the real gateway to an OTLP receiver in the test, which
//! decodes the official protobuf messages (`opentelemetry-proto`): span names, parent and
//! child links, attributes, the trace id of the access log, sampling, and a collector that
//! is down.

mod common;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An OTLP/HTTP receiver: takes `POST /v1/traces` with a protobuf body and keeps the spans
/// with their resource's `service.name`.
struct Receiver {
    addr: std::net::SocketAddr,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn decode(body: &[u8]) -> Vec<(String, Span)> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push((service.clone(), span));
            }
        }
    }
    out
}

async fn serve(mut conn: tokio::net::TcpStream, spans: Arc<Mutex<Vec<(String, Span)>>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 8192];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end..head_end + length].to_vec();
        buf.drain(..head_end + length);
        assert!(head.starts_with("post /v1/traces "), "{head}");
        assert!(
            head.contains("content-type: application/x-protobuf"),
            "{head}"
        );
        assert!(
            head.contains("x-tenant: edge-1"),
            "configured headers are sent: {head}"
        );
        spans.lock().unwrap().extend(decode(&body));
        let reply =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if conn.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

type Kept = Arc<Mutex<Vec<(String, Span)>>>;

impl Receiver {
    /// OTLP over HTTP/1.1.
    fn start() -> Receiver {
        Receiver::listen(serve)
    }

    /// A receiver on a free port whose connections `serve` takes.
    fn listen<F, Fut>(serve: F) -> Receiver
    where
        F: Fn(tokio::net::TcpStream, Kept) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let spans: Kept = Arc::default();
        let listener = rt()
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", free_port())))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let kept = spans.clone();
        let task = rt().spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, kept.clone()));
            }
        });
        Receiver { addr, spans, task }
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }

    /// The spans of one trace, once its server span has arrived.
    fn trace(&self, trace_id: &str) -> Vec<Span> {
        let id = hex::decode(trace_id).unwrap();
        assert!(
            eventually(Duration::from_secs(30), || self
                .spans()
                .iter()
                .any(|(_, s)| s.trace_id == id && s.kind == 2)),
            "the server span of {trace_id} arrives"
        );
        self.spans()
            .into_iter()
            .filter(|(_, s)| s.trace_id == id)
            .map(|(_, s)| s)
            .collect()
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            AnyValue::BoolValue(b) => Some(b.to_string()),
            AnyValue::DoubleValue(d) => Some(d.to_string()),
            _ => None,
        })
}

/// Line `n` (from 1) of the access log, once it is written (after the response).
fn log_line(log: &std::path::Path, n: usize) -> serde_json::Value {
    let mut line = String::new();
    assert!(eventually(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        match text.lines().nth(n - 1) {
            Some(l) => {
                line = l.to_string();
                true
            }
            None => false,
        }
    }));
    serde_json::from_str(&line).unwrap()
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn gateway(receiver: &str, sample: &str, up: &Upstream, log: &std::path::Path) -> Gateway {
    let key = portico::policy::auth::api_key::hash_key("key-a");
    Gateway::start(&format!(
        r#"access_log: {log}
tracing:
  service_name: edge-gateway
  otlp: {{endpoint: "http://{receiver}", headers: {{x-tenant: edge-1}}, timeout: 5s}}
  sample: {sample}
consumers:
  - {{name: app-a, api_keys: ["{key}"]}}
upstreams:
  - {{name: api, targets: [{{address: "{up}"}}]}}
routes:
  - name: orders
    match: {{path_prefix: /orders}}
    upstream: api
    access: {{providers: [api_key]}}
    rate_limits: [{{name: per-client, requests: 100, per: 1m}}]
  - name: catalog
    match: {{path_prefix: /catalog}}
    upstream: api
    cache: {{default_ttl: 60s}}
"#,
        log = log.display(),
        up = up.addr
    ))
}

#[test]
fn a_request_becomes_a_server_span_with_children_for_policies_cache_and_attempts() {
    let receiver = Receiver::start();
    let up = Upstream::start("api");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = gateway(&receiver.addr.to_string(), "{ratio: 1.0}", &up, &log);
    let parent = "00f067aa0ba902b7";
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = send(
        "GET",
        &gw.url("/orders/7"),
        &[
            ("x-api-key", "key-a"),
            ("traceparent", &format!("00-{trace_id}-{parent}-01")),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let spans = receiver.trace(trace_id);
    let server = named(&spans, "GET orders");
    assert_eq!(server.len(), 1, "{spans:#?}");
    let server = server[0];
    assert_eq!(server.kind, 2, "SERVER");
    assert_eq!(hex::encode(&server.parent_span_id), parent);
    assert_eq!(attr(server, "http.route").as_deref(), Some("orders"));
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(server, "client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr(server, "url.path").as_deref(), Some("/orders/7"));
    assert_eq!(
        attr(server, "portico.request_id").as_deref(),
        r.header("x-request-id")
    );
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);
    // Children: the access check, the rate limit, the attempt; all under the server span.
    for name in ["auth", "rate_limit", "upstream attempt"] {
        let child = named(&spans, name);
        assert_eq!(child.len(), 1, "{name}: {spans:#?}");
        assert_eq!(child[0].parent_span_id, server.span_id, "{name}");
        assert!(child[0].start_time_unix_nano >= server.start_time_unix_nano);
        assert!(child[0].end_time_unix_nano <= server.end_time_unix_nano);
    }
    let auth = named(&spans, "auth")[0];
    assert_eq!(attr(auth, "enduser.id").as_deref(), Some("app-a"));
    assert_eq!(attr(auth, "portico.decision").as_deref(), Some("continue"));
    let limit = named(&spans, "rate_limit")[0];
    assert_eq!(
        attr(limit, "portico.rate_limit.result").as_deref(),
        Some("allowed")
    );
    assert_eq!(
        attr(limit, "portico.rate_limit.store").as_deref(),
        Some("local")
    );
    let attempt = named(&spans, "upstream attempt")[0];
    assert_eq!(attempt.kind, 3, "CLIENT");
    assert_eq!(attr(attempt, "portico.attempt").as_deref(), Some("1"));
    assert_eq!(
        attr(attempt, "server.port").as_deref(),
        Some(up.addr.port().to_string().as_str())
    );
    assert_eq!(
        attr(attempt, "http.response.status_code").as_deref(),
        Some("200")
    );
    // The upstream was told the attempt is its parent, in the same trace.
    let seen = up.last("/orders/7").unwrap();
    assert_eq!(
        seen.header("traceparent"),
        Some(format!("00-{trace_id}-{}-01", hex::encode(&attempt.span_id)).as_str())
    );
    assert!(receiver
        .spans()
        .iter()
        .all(|(service, _)| service == "edge-gateway"));

    // A refused request: the auth span says why, and no attempt is made.
    let r = send("GET", &gw.url("/orders/8"), &[("x-api-key", "wrong")]);
    assert_eq!(r.status, 401);
    assert_eq!(
        log_line(&log, 1)["trace_id"],
        trace_id,
        "the access log has the trace id"
    );
    let refused_trace = log_line(&log, 2)["trace_id"].as_str().unwrap().to_string();
    let spans = receiver.trace(&refused_trace);
    assert_eq!(
        attr(named(&spans, "auth")[0], "portico.decision").as_deref(),
        Some("unknown_api_key")
    );
    assert!(named(&spans, "upstream attempt").is_empty());
    assert_eq!(
        attr(named(&spans, "GET orders")[0], "http.response.status_code").as_deref(),
        Some("401")
    );

    // The cache lookup: a miss, then a hit that makes no attempt. The trace ids are the
    // access log's.
    for (n, expected) in [(3, "miss"), (4, "hit")] {
        assert_eq!(send("GET", &gw.url("/catalog/1"), &[]).status, 200);
        let spans = receiver.trace(log_line(&log, n)["trace_id"].as_str().unwrap());
        let lookup = named(&spans, "cache lookup");
        assert_eq!(lookup.len(), 1, "{spans:#?}");
        assert_eq!(
            attr(lookup[0], "portico.cache.status").as_deref(),
            Some(expected)
        );
        assert_eq!(
            named(&spans, "upstream attempt").len(),
            usize::from(expected == "miss")
        );
    }
}

#[test]
fn sampling_follows_the_callers_flag_and_the_ratio() {
    let receiver = Receiver::start();
    let up = Upstream::start("api");
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(
        &receiver.addr.to_string(),
        "{ratio: 0.0, parent_based: true}",
        &up,
        &dir.path().join("access.log"),
    );
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let sampled = "5bf92f3577b34da6a3ce929d0e0e4736";
    // Not recorded: the caller says not sampled, or says nothing and the ratio is 0. The
    // upstream is told what the gateway decided.
    let r = send(
        "GET",
        &gw.url("/catalog/a"),
        &[(
            "traceparent",
            &format!("00-{unsampled}-b7ad6b7169203331-00"),
        )],
    );
    assert_eq!(r.status, 200);
    assert!(up
        .last("/catalog/a")
        .unwrap()
        .header("traceparent")
        .unwrap()
        .ends_with("-00"));
    for _ in 0..20 {
        assert_eq!(send("GET", &gw.url("/catalog/b"), &[]).status, 200);
    }
    assert!(up
        .last("/catalog/b")
        .unwrap()
        .header("traceparent")
        .unwrap()
        .ends_with("-00"));
    // Recorded: the caller says sampled. Spans leave in order, so once these arrived the
    // others would have too.
    let r = send(
        "GET",
        &gw.url("/catalog/c"),
        &[("traceparent", &format!("00-{sampled}-b7ad6b7169203331-01"))],
    );
    assert_eq!(r.status, 200);
    assert!(up
        .last("/catalog/c")
        .unwrap()
        .header("traceparent")
        .unwrap()
        .ends_with("-01"));
    let spans = receiver.trace(sampled);
    assert!(!spans.is_empty());
    let traces: std::collections::HashSet<Vec<u8>> = receiver
        .spans()
        .into_iter()
        .map(|(_, s)| s.trace_id)
        .collect();
    assert_eq!(traces.len(), 1, "only the sampled request was recorded");
}

#[test]
fn a_collector_that_is_down_never_holds_a_request_and_the_loss_is_counted() {
    let up = Upstream::start("api");
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let key = portico::policy::auth::api_key::hash_key("key-a");
    let gw = Gateway::start(&format!(
        r#"admin: {{address: 127.0.0.1:{admin}}}
tracing:
  otlp: {{endpoint: "http://127.0.0.1:{closed}/v1/traces", timeout: 1s}}
consumers:
  - {{name: app-a, api_keys: ["{key}"]}}
upstreams:
  - {{name: api, targets: [{{address: "{up}"}}]}}
routes:
  - {{name: all, upstream: api}}
"#,
        closed = free_port(),
        up = up.addr
    ));
    let _ = dir;
    for _ in 0..30 {
        assert_eq!(send("GET", &gw.url("/x"), &[]).status, 200);
    }
    assert_eq!(up.count(), 30);
    let lost = || metric(admin, "portico_trace_spans_total", "dropped");
    assert!(
        eventually(Duration::from_secs(60), || lost() >= 60.0),
        "every span of the 30 requests (a server span and an attempt each) is counted as lost: {}",
        lost()
    );
}

#[test]
fn a_cluster_limit_decided_in_redis_says_so_in_its_span() {
    let receiver = Receiver::start();
    let redis = RedisServer::start();
    let up = Upstream::start("api");
    let gw = Gateway::start(&format!(
        r#"redis: {{url: "{redis}", timeout: 2s}}
tracing:
  otlp: {{endpoint: "http://{receiver}", headers: {{x-tenant: edge-1}}}}
upstreams:
  - {{name: api, targets: [{{address: "{up}"}}]}}
routes:
  - name: fleet
    upstream: api
    rate_limits: [{{name: fleet, requests: 100, per: 1m, key: route, cluster: true}}]
"#,
        redis = redis.url(),
        receiver = receiver.addr,
        up = up.addr
    ));
    let trace_id = "6bf92f3577b34da6a3ce929d0e0e4736";
    let r = send(
        "GET",
        &gw.url("/x"),
        &[("traceparent", &format!("00-{trace_id}-b7ad6b7169203331-01"))],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let spans = receiver.trace(trace_id);
    let limit = named(&spans, "rate_limit");
    assert_eq!(limit.len(), 1, "{spans:#?}");
    assert_eq!(
        attr(limit[0], "portico.rate_limit.store").as_deref(),
        Some("redis")
    );
    assert_eq!(
        attr(limit[0], "portico.rate_limit.result").as_deref(),
        Some("allowed")
    );
}

/// An OTLP/gRPC receiver on HTTP/2 (h2c): the `TraceService/Export` call, its message in
/// gRPC framing, answered with an empty response and `grpc-status: 0`.
fn grpc_receiver() -> Receiver {
    Receiver::listen(serve_grpc)
}

async fn serve_grpc(conn: tokio::net::TcpStream, kept: Kept) {
    let Ok(mut h2) = h2::server::handshake(conn).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = h2.accept().await {
        let kept = kept.clone();
        tokio::spawn(async move {
            assert_eq!(
                req.uri().path(),
                "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
            );
            assert_eq!(req.headers()["x-tenant"], "edge-1");
            let mut body = req.into_body();
            let mut raw = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                raw.extend_from_slice(&chunk);
            }
            // 1 byte compressed flag, 4 bytes length, the message.
            kept.lock().unwrap().extend(decode(&raw[5..]));
            let response = http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            let Ok(mut stream) = respond.send_response(response, false) else {
                return;
            };
            let _ = stream.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), false);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let _ = stream.send_trailers(trailers);
        });
    }
}

#[test]
fn spans_go_over_grpc_too() {
    let receiver = grpc_receiver();
    let addr = receiver.addr;
    let up = Upstream::start("api");
    let gw = Gateway::start(&format!(
        r#"tracing:
  otlp: {{endpoint: "http://{addr}", protocol: grpc, headers: {{x-tenant: edge-1}}}}
upstreams:
  - {{name: api, targets: [{{address: "{up}"}}]}}
routes:
  - {{name: all, upstream: api}}
"#,
        up = up.addr
    ));
    let trace_id = "7bf92f3577b34da6a3ce929d0e0e4736";
    let r = send(
        "GET",
        &gw.url("/x"),
        &[("traceparent", &format!("00-{trace_id}-b7ad6b7169203331-01"))],
    );
    assert_eq!(r.status, 200);
    let id = hex::decode(trace_id).unwrap();
    assert!(eventually(Duration::from_secs(30), || {
        receiver
            .spans()
            .iter()
            .any(|(_, s)| s.trace_id == id && s.name == "GET all")
    }));
    let got = receiver.spans();
    assert!(got
        .iter()
        .any(|(service, s)| service == "portico" && s.name == "upstream attempt"));
}

#[test]
fn a_failed_attempt_and_its_retry_are_two_client_spans() {
    let receiver = Receiver::start();
    let up = Upstream::start("api");
    let dead = free_port();
    let gw = Gateway::start(&format!(
        r#"tracing:
  otlp: {{endpoint: "http://{receiver}", headers: {{x-tenant: edge-1}}}}
upstreams:
  - name: api
    algorithm: round_robin
    targets: [{{address: "127.0.0.1:{dead}"}}, {{address: "{up}"}}]
routes:
  - {{name: all, upstream: api, retry: {{attempts: 2}}}}
"#,
        receiver = receiver.addr,
        up = up.addr
    ));
    // Round robin: of two requests, at least one starts at the dead target and is retried.
    let ids = [
        "8bf92f3577b34da6a3ce929d0e0e4736",
        "9bf92f3577b34da6a3ce929d0e0e4736",
    ];
    for id in ids {
        let r = send(
            "GET",
            &gw.url("/x"),
            &[("traceparent", &format!("00-{id}-b7ad6b7169203331-01"))],
        );
        assert_eq!(r.status, 200, "{r:?}");
    }
    let retried: Vec<Vec<Span>> = ids
        .iter()
        .map(|id| receiver.trace(id))
        .filter(|spans| named(spans, "upstream attempt").len() == 2)
        .collect();
    assert!(
        !retried.is_empty(),
        "one of the two started at the dead target"
    );
    let attempts = named(&retried[0], "upstream attempt");
    let first = attempts
        .iter()
        .find(|a| attr(a, "portico.attempt").as_deref() == Some("1"))
        .unwrap();
    let second = attempts
        .iter()
        .find(|a| attr(a, "portico.attempt").as_deref() == Some("2"))
        .unwrap();
    assert_eq!(attr(first, "server.port"), Some(dead.to_string()));
    assert!(attr(first, "error.type").is_some(), "{first:#?}");
    assert_eq!(first.status.as_ref().map(|s| s.code), Some(2), "ERROR");
    assert_eq!(
        attr(second, "server.port"),
        Some(up.addr.port().to_string())
    );
    assert_eq!(
        attr(second, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(second.start_time_unix_nano >= first.end_time_unix_nano);
}
