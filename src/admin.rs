//! The admin listener: metrics, health, readiness and status, cache statistics and purges.
//! Calls that change state need the configured admin token (`Authorization: Bearer ...`);
//! without a token they are refused.

use crate::cache::purge;
use crate::clock;
use crate::error_response;
use crate::fleet::{self, Purge};
use crate::http_reply::{self, json};
use crate::lifecycle;
use crate::observe::request_id::RequestId;
use crate::observe::{access_log, metrics};
use crate::reload::Reloader;
use crate::request_parts::request_host;
use crate::router::normalize_host;
use crate::runtime::Runtime;
use crate::upstream::breaker;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};
use sha2::Digest;
use std::sync::Arc;
use std::time::SystemTime;

/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

pub struct AdminApi {
    runtime: Arc<ArcSwap<Runtime>>,
    reloader: Arc<Reloader>,
}

impl AdminApi {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>, reloader: Arc<Reloader>) -> Self {
        AdminApi { runtime, reloader }
    }
}

fn error(status: StatusCode, message: &str) -> Response<Vec<u8>> {
    json(status, json!({"error": message, "status": status.as_u16()}))
}

/// Whether `header` carries the token whose digest is `expected`.
pub fn token_matches(
    expected: Option<&[u8; 32]>,
    header: Option<&http::HeaderValue>,
) -> Result<(), (StatusCode, &'static str)> {
    let Some(expected) = expected else {
        return Err((
            StatusCode::FORBIDDEN,
            "no admin token is configured; state changes are off",
        ));
    };
    let presented = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .ok_or((
            StatusCode::UNAUTHORIZED,
            "admin token required (Authorization: Bearer ...)",
        ))?;
    // Digests compare in fixed length, so timing says nothing about the token.
    let digest: [u8; 32] = sha2::Sha256::digest(presented.trim().as_bytes()).into();
    if &digest == expected {
        Ok(())
    } else {
        Err((StatusCode::FORBIDDEN, "wrong admin token"))
    }
}

/// Calls that change state need the configured token: the answer when it is missing.
fn refusal(rt: &Runtime, session: &ServerSession) -> Option<Response<Vec<u8>>> {
    let expected = rt.admin.as_ref().and_then(|a| a.token_sha256.as_ref());
    let auth = session
        .req_header()
        .headers
        .get(http::header::AUTHORIZATION);
    token_matches(expected, auth)
        .err()
        .map(|(status, message)| error(status, message))
}

/// A request body of at most 64 KiB, or the answer refusing it.
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "body over 64 KiB"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(error(StatusCode::BAD_REQUEST, &e.to_string())),
        }
    }
}

/// What `POST /explain` accepts: the request as `portico explain` takes it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainRequest {
    /// `METHOD URL`.
    request: String,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    client: Option<std::net::IpAddr>,
}

/// What the running config would do with a request (nothing is sent upstream).
fn explain(rt: &Runtime, body: &[u8]) -> Response<Vec<u8>> {
    let asked: ExplainRequest = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"request\": \"METHOD URL\", \"headers\": [\"Name: value\"], \"client\": IP}}: {e}"),
            )
        }
    };
    match crate::explain::request(&asked.request, &asked.headers) {
        Ok(req) => {
            let e = crate::explain::explain(rt, req, asked.client);
            json(
                StatusCode::OK,
                serde_json::to_value(e).unwrap_or(Value::Null),
            )
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

/// What `POST /cache/purge` accepts.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    url: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    all: bool,
}

/// `PURGE /path` on a proxy listener, with the admin token: drop that URL's stored
/// responses.
pub async fn purge_request(
    session: &mut pingora_proxy::Session,
    rt: &Runtime,
    request_id: &RequestId,
) -> pingora_error::Result<()> {
    let req = session.req_header();
    let expected = rt.admin.as_ref().and_then(|a| a.token_sha256.as_ref());
    if let Err((status, message)) =
        token_matches(expected, req.headers.get(http::header::AUTHORIZATION))
    {
        return error_response::send(session, status.as_u16(), message, request_id, &[]).await;
    }
    let host = request_host(req).unwrap_or_default();
    let n = purge::url(rt, host, req.uri.path(), req.uri.query(), &req.headers);
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("http://{}{target}", normalize_host(host));
    let mut answer = json!({"purged": n, "request_id": request_id.as_str()});
    match fleet::publish(rt, &Purge::Url(url)).await {
        None => {}
        Some(Ok(())) => answer["fleet"] = json!("published"),
        Some(Err(e)) => answer["fleet"] = json!(format!("not published: {e}")),
    }
    let body = answer.to_string();
    error_response::reply(session, 200, body.into(), request_id, &[]).await
}

/// A purge here, then on every gateway sharing the Redis.
async fn purge(rt: &Runtime, body: &[u8]) -> Response<Vec<u8>> {
    let req: PurgeRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected {{\"url\": ...}}, {{\"prefix\": ...}} or {{\"all\": true}}: {e}"
                ),
            )
        }
    };
    let what = match (req.url, req.prefix, req.all) {
        (Some(url), None, false) => Purge::Url(url),
        (None, Some(prefix), false) => Purge::Prefix(prefix),
        (None, None, true) => Purge::All,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of url, prefix, all",
            )
        }
    };
    let purged = match fleet::apply(rt, &what) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let mut answer = json!({ "purged": purged });
    match fleet::publish(rt, &what).await {
        None => {}
        Some(Ok(())) => answer["fleet"] = json!("published"),
        Some(Err(e)) => answer["fleet"] = json!(format!("not published: {e}")),
    }
    json(StatusCode::OK, answer)
}

/// What runs: version, state, which config, and every upstream target's health.
fn status(rt: &Runtime) -> Value {
    let upstreams: Vec<Value> = rt
        .upstreams
        .iter()
        .map(|pool| {
            let now = clock::now_ms();
            let targets: Vec<Value> = pool
                .targets()
                .iter()
                .map(|t| {
                    let mut v =
                        json!({"address": t.addr, "weight": t.weight, "healthy": t.healthy});
                    if pool.outlier.is_some() {
                        v["ejected_for_ms"] = json!(t.ejected_ms);
                        v["ejections"] = json!(t.ejections);
                    }
                    if pool.counts_in_flight() {
                        v["in_flight"] = json!(t.in_flight);
                    }
                    v
                })
                .collect();
            let budget = pool.budget.usage(now);
            let mut v = json!({
                "name": pool.name,
                "targets": targets,
                "retry_budget": {
                    "window_requests": budget.requests,
                    "window_retries": budget.retries,
                    "allowed": budget.allowed,
                },
            });
            if let Some(l) = &pool.limit {
                v["in_flight"] = json!(l.in_flight());
                v["max_concurrent"] = json!(l.max);
            }
            if let Some(b) = &pool.breaker {
                let (attempts, failures) = b.window(now);
                v["circuit_breaker"] = json!({
                    "state": b.state().as_str(),
                    "half_open_in_ms": b.opens_in(now),
                    "window_attempts": attempts,
                    "window_failures": failures,
                    "opened": b.opened.load(std::sync::atomic::Ordering::Relaxed),
                });
            }
            v
        })
        .collect();
    let tls: Vec<Value> = rt
        .listener_specs
        .iter()
        .filter_map(|l| {
            let t = l.tls.as_ref()?;
            // What handshakes get now, which is this config's set once it is applied.
            let live = t.resolver.current();
            let certs: Vec<Value> = live
                .certs
                .iter()
                .map(|c| {
                    let expires = std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(c.not_after.max(0) as u64);
                    json!({"file": c.file, "names": c.names, "expires": access_log::rfc3339(expires)})
                })
                .collect();
            Some(json!({"listener": l.addr, "http2": t.http2, "certificates": certs}))
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "state": lifecycle::state().as_str(),
        "config": {
            "generation": rt.info.generation,
            "sha256": rt.info.sha256,
            "loaded_at": access_log::rfc3339(rt.info.loaded_at),
            "routes": rt.routes.len(),
            "listeners": rt.listeners(),
        },
        "upstreams": upstreams,
        "tls": tls,
        "redis": rt.redis.as_ref().map(|r| json!({
            "mode": r.link.mode,
            "connected": r.link.connected(),
            "failed_decisions": r.failures.load(std::sync::atomic::Ordering::Relaxed),
        })),
    })
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let rt = self.runtime.load_full();
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method.as_str(), path.as_str()) {
            ("GET", "/metrics") => http_reply::bytes(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                {
                    refresh_gauges(&rt);
                    metrics::render().into_bytes()
                },
            ),
            // The process answers, so it is alive.
            ("GET", "/healthz") => json(StatusCode::OK, json!({"status": "alive"})),
            ("GET", "/readyz") => {
                let state = lifecycle::state();
                let status = if state == lifecycle::State::Ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                json(status, json!({"status": state.as_str()}))
            }
            // Off loopback it names too much (addresses, files) to be open.
            ("GET", "/status") => match rt.admin.as_ref().filter(|a| !a.address.ip().is_loopback())
            {
                Some(_) => {
                    refusal(&rt, session).unwrap_or_else(|| json(StatusCode::OK, status(&rt)))
                }
                None => json(StatusCode::OK, status(&rt)),
            },
            ("POST", "/reload") => {
                if let Some(refused) = refusal(&rt, session) {
                    return refused;
                }
                match self.reloader.reload().await {
                    Ok(applied) => json(
                        StatusCode::OK,
                        serde_json::to_value(applied).unwrap_or(Value::Null),
                    ),
                    Err(faults) => json(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({
                            "error": "config refused; the running config keeps serving",
                            "faults": faults,
                            "generation": rt.info.generation,
                        }),
                    ),
                }
            }
            ("GET", "/cache") => {
                let stats = serde_json::to_value(rt.cache.store.stats()).unwrap_or(Value::Null);
                json(StatusCode::OK, stats)
            }
            ("POST", "/cache/purge") => {
                if let Some(refused) = refusal(&rt, session) {
                    return refused;
                }
                match read_body(session).await {
                    Ok(body) => purge(&rt, &body).await,
                    Err(refused) => refused,
                }
            }
            ("POST", "/explain") => {
                // The answer names routes, targets and policies: the token is required.
                if let Some(refused) = refusal(&rt, session) {
                    return refused;
                }
                match read_body(session).await {
                    Ok(body) => explain(&rt, &body),
                    Err(refused) => refused,
                }
            }
            (
                _,
                "/metrics" | "/healthz" | "/readyz" | "/status" | "/reload" | "/cache"
                | "/cache/purge" | "/explain",
            ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
            _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }
}

/// Metrics that are states rather than events are read when scraped.
fn refresh_gauges(rt: &Runtime) {
    let f = metrics::state_gauges();
    f.generation.set(rt.info.generation as i64);
    if let Ok(t) = rt.info.loaded_at.duration_since(SystemTime::UNIX_EPOCH) {
        f.loaded_at.set(t.as_secs_f64());
    }
    // Targets of a previous config must not linger after a reload.
    f.target_healthy.reset();
    f.target_ejected.reset();
    f.breaker_state.reset();
    f.budget_used.reset();
    f.cert_expiry.reset();
    for l in &rt.listener_specs {
        if let Some(t) = &l.tls {
            let listener = l.addr.to_string();
            for c in &t.resolver.current().certs {
                f.cert_expiry
                    .with_label_values(&[listener.as_str(), c.file.as_str()])
                    .set(c.not_after);
            }
        }
    }
    let now = clock::now_ms();
    for pool in &rt.upstreams {
        let name = pool.name.as_str();
        for t in pool.targets() {
            let labels = [name, &t.addr.to_string()];
            f.target_healthy
                .with_label_values(&labels)
                .set(i64::from(t.healthy));
            if pool.outlier.is_some() {
                f.target_ejected
                    .with_label_values(&labels)
                    .set(i64::from(t.ejected_ms > 0));
            }
        }
        if let Some(b) = &pool.breaker {
            let state = match b.state() {
                breaker::State::Closed => 0,
                breaker::State::HalfOpen => 1,
                breaker::State::Open => 2,
            };
            f.breaker_state.with_label_values(&[name]).set(state);
        }
        let budget = pool.budget.usage(now);
        f.budget_used
            .with_label_values(&[name])
            .set(budget.retries as f64 / budget.allowed.max(1) as f64);
    }
    let s = rt.cache.store.stats();
    f.cache_entries.set(s.entries as i64);
    f.cache_bytes.set(s.bytes as i64);
    f.cache_budget.set(s.budget as i64);
    let evicted = s.evicted_entries as u64;
    f.cache_evictions
        .inc_by(evicted.saturating_sub(f.cache_evictions.get()));
    let evicted_bytes = s.evicted_bytes as u64;
    f.cache_evicted_bytes
        .inc_by(evicted_bytes.saturating_sub(f.cache_evicted_bytes.get()));
}
