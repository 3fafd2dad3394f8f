//! `portico demo`: three small example services (orders, users, products) on loopback and
//! the gateway in front of them, configured by `conf/demo.yaml`.

use crate::config::{self, Config, ConfigError};
use crate::runtime::{self, Runtime};
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::services::listening::Service;
use pingora_core::services::ServiceWithDependents;
use serde_json::{json, Value};
use std::net::TcpListener;

/// The demo config, built into the binary so `portico demo` works from any directory.
pub const DEMO_YAML: &str = include_str!("../conf/demo.yaml");
/// The products service's OpenAPI document, which the demo config's `apis` names.
const PRODUCTS_OPENAPI: &str = include_str!("../conf/demo-products.openapi.yaml");

/// The example services, by the upstream name that routes to them.
pub const SERVICES: [&str; 5] = [
    "orders",
    "users",
    "products",
    "inventory",
    "recommendations",
];

struct ExampleService {
    kind: &'static str,
    /// Which instance answered, so load balancing is visible in the output.
    instance: String,
    /// Answers everything but `/health` with 503, to show retries, outlier detection
    /// and the circuit breaker at work.
    failing: bool,
}

/// Which demo instances are broken: the second of inventory, and recommendations.
fn fails(kind: &str, index: usize) -> bool {
    (kind == "inventory" && index == 1) || kind == "recommendations"
}

use crate::http_reply::json as json_response;

/// The external authorization provider the demo answers for itself.
const DEMO_AUTHZ: &str = "staff-sso";
/// The token the demo's authorization service admits.
const STAFF_TOKEN: &str = "staff-token";

/// The demo's authorization service: `Bearer staff-token` is Grace (user 7); anything
/// else is refused with a 401 of its own, which the gateway passes on.
struct DemoAuthz;

#[async_trait]
impl ServeHttp for DemoAuthz {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let auth = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if auth == Some(&format!("Bearer {STAFF_TOKEN}")) {
            let mut r = json_response(StatusCode::OK, json!({"allow": true}));
            r.headers_mut()
                .insert("x-user-id", http::HeaderValue::from_static("7"));
            r.headers_mut()
                .insert("x-staff-name", http::HeaderValue::from_static("grace"));
            return r;
        }
        let mut r = json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "staff only", "hint": format!("send Authorization: Bearer {STAFF_TOKEN}")}),
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"demo staff sso\""),
        );
        r
    }
}

fn catalogue(kind: &str) -> Value {
    match kind {
        "orders" => json!([
            {"id": 1, "user_id": 1, "product_id": 2, "quantity": 1, "status": "shipped"},
            {"id": 2, "user_id": 2, "product_id": 1, "quantity": 3, "status": "pending"},
        ]),
        "users" => json!([
            {"id": 1, "name": "Ada", "email": "ada@example.com"},
            {"id": 2, "name": "Linus", "email": "linus@example.com"},
        ]),
        "inventory" => json!([
            {"id": 1, "product_id": 1, "in_stock": 12},
            {"id": 2, "product_id": 2, "in_stock": 0},
        ]),
        "recommendations" => json!([{"id": 1, "product_id": 2}]),
        _ => json!([
            {"id": 1, "name": "Keyboard", "price_cents": 4900},
            {"id": 2, "name": "Monitor", "price_cents": 18900},
        ]),
    }
}

#[async_trait]
impl ServeHttp for ExampleService {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            if body.len() + chunk.len() > 64 * 1024 {
                return json_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    json!({"error": "body over 64 KiB"}),
                );
            }
            body.extend_from_slice(&chunk);
        }
        let mut served_by = json!({"service": self.kind, "instance": self.instance});
        // Who the gateway says is calling, so the demo shows what the service receives.
        for h in ["x-consumer", "x-user-id"] {
            if let Some(v) = session
                .req_header()
                .headers
                .get(h)
                .and_then(|v| v.to_str().ok())
            {
                served_by[h] = json!(v);
            }
        }
        if self.failing && path != "/health" {
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"served_by": served_by, "error": format!("{} is failing", self.instance)}),
            );
        }
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["health"]) => json_response(StatusCode::OK, json!({"status": "ok"})),
            ("GET", [k]) if *k == self.kind => json_response(
                StatusCode::OK,
                json!({"served_by": served_by, "items": catalogue(self.kind)}),
            ),
            ("GET", [k, id]) if *k == self.kind => {
                let item = id.parse::<u64>().ok().and_then(|id| {
                    catalogue(self.kind)
                        .as_array()
                        .and_then(|items| items.iter().find(|i| i["id"] == id).cloned())
                });
                match item {
                    Some(item) => json_response(
                        StatusCode::OK,
                        json!({"served_by": served_by, "item": item}),
                    ),
                    None => json_response(
                        StatusCode::NOT_FOUND,
                        json!({"served_by": served_by, "error": format!("no {} {id}", self.kind)}),
                    ),
                }
            }
            ("POST", [k]) if *k == self.kind => {
                let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                json_response(
                    StatusCode::CREATED,
                    json!({"served_by": served_by, "created": sent}),
                )
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                json!({"served_by": served_by, "error": format!("{} has no {method} {path}", self.kind)}),
            ),
        }
    }
}

/// Hands out loopback ports that are free right now, each one different: every port stays
/// bound until the allocator is dropped, so the OS cannot hand the same one out twice.
#[derive(Default)]
pub struct FreePorts(Vec<TcpListener>);

impl FreePorts {
    pub fn take(&mut self) -> std::io::Result<String> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?.to_string();
        self.0.push(l);
        Ok(addr)
    }
}

/// The demo, ready to run: its runtime and its example services.
pub struct Demo {
    pub runtime: Runtime,
    pub services: Vec<Box<dyn ServiceWithDependents>>,
    pub gateway: String,
    /// The HTTPS listener, when the config has one.
    pub https: Option<String>,
    /// The admin listener and its token, when the config has one.
    pub admin: Option<(String, String)>,
    /// Example tokens, when the config has a JWT provider named `demo` with a secret.
    pub tokens: Option<DemoTokens>,
}

/// Tokens the demo prints for each outcome.
pub struct DemoTokens {
    /// Carries the `users:read` scope.
    pub reader: String,
    /// A valid identity without that scope.
    pub no_scope: String,
}

/// Sign the demo's example tokens with the `demo` provider's secret, valid for a day.
fn demo_tokens(cfg: &Config) -> Option<DemoTokens> {
    let p = cfg.auth.jwt.iter().find(|p| p.name == "demo")?;
    let secret = p.keys.secret.as_deref()?;
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let sign = |scope: &str| {
        let claims = json!({
            "sub": "ada", "iss": p.issuer, "aud": p.audiences.first(),
            "iat": now, "exp": now + 86_400, "scope": scope,
        });
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        jsonwebtoken::encode(&header, &claims, &key).ok()
    };
    Some(DemoTokens {
        reader: sign("users:read orders:read")?,
        no_scope: sign("orders:read")?,
    })
}

/// Build the demo from `yaml`. With `free_ports`, the gateway and each example service
/// listen on ports the OS has free instead of those written in the file.
pub fn prepare(file: &str, yaml: &str, free_ports: bool) -> Result<Demo, ConfigError> {
    let mut parsed = config::parse(file, yaml)?;
    let cfg: &mut Config = &mut parsed.config;
    let err = |message: String| ConfigError {
        file: file.to_string(),
        faults: vec![config::Fault::new("", message)],
    };
    let mut ports = FreePorts::default();
    let mut fresh = |address: &mut String| -> Result<(), ConfigError> {
        if free_ports {
            *address = ports
                .take()
                .map_err(|e| err(format!("no free port: {e}")))?;
        }
        Ok(())
    };
    for l in &mut cfg.listeners {
        fresh(&mut l.address)?;
    }
    if let Some(a) = &mut cfg.admin {
        fresh(&mut a.address)?;
    }
    let admin = cfg
        .admin
        .as_ref()
        .and_then(|a| Some((a.address.clone(), a.token.clone()?)));
    let mut services: Vec<Box<dyn ServiceWithDependents>> = Vec::new();
    for upstream in cfg.upstreams.iter_mut() {
        let Some(kind) = SERVICES.iter().find(|s| **s == upstream.name) else {
            continue;
        };
        for (i, target) in upstream.targets.iter_mut().enumerate() {
            fresh(&mut target.address)?;
            let app = ExampleService {
                kind,
                instance: format!("{kind}-{}", i + 1),
                failing: fails(kind, i),
            };
            let mut svc = Service::new(format!("demo {kind}-{}", i + 1), app);
            svc.add_tcp(&target.address);
            services.push(Box::new(svc));
        }
    }
    for p in cfg
        .auth
        .external
        .iter_mut()
        .filter(|p| p.name == DEMO_AUTHZ)
    {
        let mut address = p
            .url
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default()
            .to_string();
        fresh(&mut address)?;
        p.url = format!("http://{address}/check");
        let mut svc = Service::new("demo staff-sso".into(), DemoAuthz);
        svc.add_tcp(&address);
        services.push(Box::new(svc));
    }
    // The demo never daemonizes or upgrades, but keep its files out of /run.
    let dir = std::env::temp_dir().join(format!("portico-demo-{}", std::process::id()));
    let mut https = None;
    for l in &mut cfg.listeners {
        let Some(tls) = &mut l.tls else {
            continue;
        };
        for c in &mut tls.certificates {
            if c.cert == "conf/demo-self-signed.pem" {
                let (cert, key) = self_signed(&dir).map_err(err)?;
                (c.cert, c.key) = (cert, key);
            }
        }
        https.get_or_insert_with(|| l.address.clone());
    }
    for api in &mut cfg.apis {
        if api.spec == "conf/demo-products.openapi.yaml" {
            let spec = dir.join("demo-products.openapi.yaml");
            std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::write(&spec, PRODUCTS_OPENAPI))
                .map_err(|e| err(format!("cannot write {}: {e}", spec.display())))?;
            api.spec = spec.display().to_string();
        }
    }
    cfg.server.pid_file = dir.join("portico.pid").display().to_string();
    cfg.server.upgrade_sock = dir.join("upgrade.sock").display().to_string();
    let gateway = cfg
        .listeners
        .first()
        .map(|l| l.address.clone())
        .unwrap_or_default();
    let tokens = demo_tokens(cfg);
    let runtime = runtime::build_parsed(file, parsed)?;
    Ok(Demo {
        runtime,
        services,
        gateway,
        https,
        admin,
        tokens,
    })
}

/// A certificate for localhost and 127.0.0.1 signed by itself, written into `dir`.
fn self_signed(dir: &std::path::Path) -> Result<(String, String), String> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot make the demo certificate: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (cert, key) = (dir.join("localhost.pem"), dir.join("localhost.key"));
    std::fs::write(&cert, made.cert.pem())
        .and_then(|_| std::fs::write(&key, made.signing_key.serialize_pem()))
        .map_err(|e| format!("cannot write the demo certificate: {e}"))?;
    Ok((cert.display().to_string(), key.display().to_string()))
}

/// What the demo prints for a newcomer to try.
pub fn instructions(
    gateway: &str,
    https: Option<&str>,
    admin: Option<&(String, String)>,
    tokens: Option<&DemoTokens>,
) -> String {
    let g = format!("http://{gateway}");
    let mut out = format!(
        "\
Portico demo: the gateway listens on {g} in front of three example services.
Try these in another terminal:

  curl -s -H 'x-api-key: demo-key-123' {g}/api/orders     # orders: API key of mobile-app; two instances, round robin
  curl -s -H 'x-api-key: demo-key-123' {g}/api/orders/1   # the service sees /orders/1
  curl -s -X POST {g}/api/orders -H 'x-api-key: demo-key-123' -H 'content-type: application/json' -d '{{\"product_id\": 2}}'
  curl -s -H 'x-user: ada' {g}/api/products               # products: public, consistent hashing on x-user
  for i in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w '%{{http_code}} ' {g}/api/products; done; echo   # 5 per 10 s, then 429
  curl -s -i {g}/nowhere                                  # 404 as JSON, with a request id
  curl -s --path-as-is {g}/api/products/../orders         # 401: decided on the canonical path /api/orders, which needs a key
  curl -s --path-as-is {g}/api/products/..%2Forders       # 400: an encoded separator is refused
  curl -s -H 'x-api-key: demo-key-123' {g}/api/overview   # orders, users and products in one answer
  curl -s {g}/products/2                                  # a route made from the products team's OpenAPI document
  curl -s -i -X POST {g}/products -d '{{\"name\":\"Mouse\",\"price_cents\":1900}}'   # 401: that operation needs a key
  curl -s -H 'x-api-key: demo-key-123' -X POST {g}/products -d '{{\"name\":\"Mouse\",\"price_cents\":1900}}'
  curl -s -o /dev/null -D - {g}/api/catalog | grep -i -e cache-status -e age   # cached 30 s: run twice, miss then hit
  for i in 1 2 3 4 5 6; do curl -s {g}/api/inventory; echo; done   # inventory-2 fails: retried on inventory-1, then ejected
  for i in 1 2 3 4 5 6 7; do curl -s {g}/api/recommendations; echo; done   # down: five 503s, the breaker opens, fallback answers
  curl -s -i {g}/api/reports                               # 503 with Retry-After: the route is under maintenance
  curl -s -i {g}/api/staff                                 # 401 from the staff authorization service, passed on as it gave it
  curl -s -H 'Authorization: Bearer {STAFF_TOKEN}' {g}/api/staff   # forward auth admits: users sees X-Consumer grace, X-User-Id 7
"
    );
    if let Some(address) = https {
        let port = address.rsplit(':').next().unwrap_or("8443");
        out.push_str(&format!(
            "  curl -sk --http2 -D - -o /dev/null https://localhost:{port}/api/catalog   # HTTPS with HTTP/2 (self-signed certificate; -k accepts it) and HSTS
"
        ));
    }
    if let Some((address, token)) = admin {
        out.push_str(&format!(
            "  curl -s http://{address}/status                  # admin: version, config hash, targets (health, ejections), breakers, retry budgets
  curl -s http://{address}/metrics | grep ^portico_requests_total   # Prometheus metrics per route, method, status
  curl -s http://{address}/cache                   # admin: cache entries, bytes, budget, evictions
  curl -s -X POST -H 'Authorization: Bearer {token}' http://{address}/cache/purge -d '{{\"prefix\": \"{g}/api/catalog\"}}'
  curl -s -o /dev/null -D - -H 'portico-debug: {token}' -H 'x-api-key: demo-key-123' {g}/api/orders | grep -i portico-explain   # route, policies, attempt, timings
  curl -s -X POST -H 'Authorization: Bearer {token}' http://{address}/explain -d '{{\"request\": \"GET {g}/api/products/2\"}}'   # what the gateway would do, nothing sent
"
        ));
    }
    if let Some(t) = tokens {
        out.push_str(&format!(
            "  curl -s -H 'Authorization: Bearer {reader}' {g}/api/users/2   # 200: a token with users:read
  curl -s -i {g}/api/users/2                                  # 401: no credentials
  curl -s -i -H 'Authorization: Bearer {no_scope}' {g}/api/users/2   # 403: token lacks users:read
  curl -s -i -X DELETE -H 'Authorization: Bearer {reader}' {g}/api/users/1   # 405 with an Allow header
",
            reader = t.reader,
            no_scope = t.no_scope,
        ));
    }
    out.push_str(
        "
Every answer carries X-Request-Id; upstreams also receive X-Forwarded-For, Forwarded and,
for authenticated calls, X-Consumer (and X-User-Id from the token).
More gateways sharing a Redis (one server, a Cluster or Sentinel) share rate limits and
cache purges: see 'Running a fleet' in README.md.
Press Ctrl-C to stop.
",
    );
    out
}
