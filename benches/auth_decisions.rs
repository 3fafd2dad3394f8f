//! What a provider that asks a service adds per request once its decision is kept: the
//! digest of the credential (or of the cache key) and the lookup. Introspection and
//! external authorization are warmed by one real call to a local server (the `jwt` bench
//! has a cached JWT for scale).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use futures::executor::block_on;
use pingora_http::RequestHeader;
use portico::config::{ExternalAuth as ExternalSection, IntrospectionProvider};
use portico::policy::auth::external::ExternalAuth;
use portico::policy::auth::introspection::Introspector;
use portico::policy::auth::Verification;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A local service answering introspection (a JSON object) at `/introspect` and
/// admitting everything else, on keep-alive connections.
fn service() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let (mut target, mut length) = (String::new(), 0usize);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.trim_end().to_ascii_lowercase();
                        if l.is_empty() {
                            break;
                        }
                        if target.is_empty() {
                            target = l.split(' ').nth(1).unwrap_or("").to_string();
                        }
                        if let Some(v) = l.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let exp = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_secs()
                        + 3600;
                    let answer = if target.starts_with("/introspect") {
                        format!(
                            r#"{{"active":true,"sub":"ada","scope":"orders:read","exp":{exp}}}"#
                        )
                    } else {
                        String::new()
                    };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-user-id: u-42\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if conn.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn decisions(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = service();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "bench-secret").unwrap();
    let section: IntrospectionProvider = serde_yaml::from_str(&format!(
        "{{name: opaque, endpoint: 'http://{addr}/introspect', client_id: portico, client_secret_file: '{}'}}",
        secret.display()
    ))
    .unwrap();
    let mut faults = Vec::new();
    let introspection =
        Introspector::from_config("bench", &section, Arc::default(), &mut faults).unwrap();
    let section: ExternalSection = serde_yaml::from_str(&format!(
        "{{name: authz, url: 'http://{addr}/check', upstream_headers: [x-user-id], cache: {{ttl: 1h, key: ['header:authorization']}}}}"
    ))
    .unwrap();
    let external =
        ExternalAuth::from_config("bench", &section, Arc::default(), &mut faults).unwrap();
    assert!(faults.is_empty(), "{faults:?}");

    let mut req = RequestHeader::build("GET", b"/orders/7?full=1", None).unwrap();
    req.insert_header("host", "api.example.com").unwrap();
    req.insert_header(
        "authorization",
        "Bearer 2YotnFZFEjr1zCsicMWpAA-opaque-token-of-usual-length",
    )
    .unwrap();
    let client: Option<IpAddr> = Some([192, 0, 2, 7].into());
    // One real call each fills the cache.
    rt.block_on(async {
        assert!(matches!(
            introspection.authenticate(&req).await,
            Verification::Accepted(_)
        ));
        assert!(matches!(
            external.decide(&req, client, None).await,
            Verification::Accepted(_)
        ));
    });

    let mut group = c.benchmark_group("auth_decisions");
    group.bench_function("introspection/warm", |b| {
        b.iter(|| {
            let v = block_on(introspection.authenticate(black_box(&req)));
            assert!(matches!(v, Verification::Accepted(_)));
        })
    });
    group.bench_function("external/warm", |b| {
        b.iter(|| {
            let v = block_on(external.decide(black_box(&req), client, None));
            assert!(matches!(v, Verification::Accepted(_)));
        })
    });
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
