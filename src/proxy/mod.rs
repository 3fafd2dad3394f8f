//! The one `ProxyHttp` implementation. It stays thin: each phase looks things up in the
//! `Runtime` taken once per request, and calls the module that owns the concern.

pub mod connection;
mod edge;
mod failures;
mod logging;

use edge::{is_tls, redirect_https};
use failures::*;
use logging::{record_metrics, write_access_line};

use crate::admin;
use crate::cache::rules::{self, RequestDirectives, RequestFacts};
use crate::cache::{self, purge, status as cache_status};
use crate::canonical::{self, Refusal};
use crate::error_response;
use crate::forwarding::{self, ClientInfo};
use crate::lifecycle;
use crate::observe::access_log::LazyAccessLog;
use crate::observe::log_budget::LogBudget;
use crate::observe::request_id::RequestId;
use crate::observe::trace::TraceContext;
use crate::policy::auth::build::CONSUMER_HEADER;
use crate::policy::auth::Identity;
use crate::policy::cors::{Cors, Preflight};
use crate::policy::ratelimit;
use crate::router::{normalize_host, RouteLookup};
use crate::runtime::{HostPolicy, Runtime};
use crate::tls;
use crate::transform::json;
use crate::transform::template::Vars;
use crate::upstream::clock;
use crate::upstream::failure::Failure;
use crate::upstream::limit::Slot;
use crate::upstream::mirror::{self, MAX_MIRROR_BODY};
use crate::upstream::outlier::InFlight as TargetInFlight;
use crate::upstream::retry::RetryPolicy;
use crate::upstream::{Pool, Probe};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{HeaderValue, Uri};
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, HitHandler,
    NoCacheReason, RespCacheable,
};
use pingora_core::modules::http::compression::ResponseCompression;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, OrErr, Result, RetryType};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The gateway; `runtime` is swapped whole on reload.
pub struct Gateway {
    runtime: Arc<ArcSwap<Runtime>>,
    access_log: Option<Arc<LazyAccessLog>>,
}

impl Gateway {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>, access_log: Option<Arc<LazyAccessLog>>) -> Self {
        Gateway {
            runtime,
            access_log,
        }
    }
}

/// Per-request state.
pub struct Ctx {
    /// The config this request started with; it finishes on it even across a reload.
    rt: Arc<Runtime>,
    route: Option<usize>,
    request_id: RequestId,
    client_ip: Option<IpAddr>,
    /// The target of the current attempt.
    target: Option<SocketAddr>,
    /// Targets of failed attempts, tried again only when no other target is left.
    failed: Vec<SocketAddr>,
    /// Attempts started at the upstream.
    attempts: u32,
    /// Wait before the next attempt (a retry's back-off).
    backoff: Duration,
    /// When the route's `timeout` runs out.
    deadline: Option<Instant>,
    /// Seconds until an open breaker lets probes through, for `Retry-After`.
    breaker_retry_after: u64,
    /// The upstream's response header came and was no failure: the attempt succeeds
    /// unless its body breaks off.
    answered: bool,
    upstream_host: Option<HeaderValue>,
    /// Who is calling, when the route's access rule established it.
    identity: Option<Arc<Identity>>,
    /// RateLimit-Policy and RateLimit values for the response.
    rate_headers: Option<(String, String)>,
    cache: cache::RequestState,
    /// Request body bytes seen, against the route's `max_request_body`.
    body_bytes: u64,
    /// The upstream a traffic split chose (else the route's).
    upstream: Option<usize>,
    /// This request is copied to the route's mirror (decided on the first attempt).
    mirror_wanted: bool,
    /// The copy's header and the body gathered for it, sent when the body is complete.
    mirror: Option<(Box<RequestHeader>, Vec<u8>)>,
    /// Request and response bodies gathered for a JSON transform.
    request_json: Option<Vec<u8>>,
    response_json: Option<Vec<u8>>,
    trace: Option<TraceContext>,
    times: Timings,
    /// `allowed` or `limited` when the route has rate limits.
    rate_limit: Option<&'static str>,
    /// The request's slots in its route's and its upstream's `max_concurrent`, freed when
    /// the request ends.
    route_slot: Option<Slot>,
    upstream_slot: Option<Slot>,
    /// Set while this request is a half-open breaker's probe.
    probe: Option<Probe>,
    /// `Strict-Transport-Security` for the response (HTTPS listeners that set one).
    hsts: Option<HeaderValue>,
    /// This request, in flight to its target (for `least_request`).
    active: Option<TargetInFlight>,
    /// The request has no canonical form: answered with this before anything else.
    refusal: Option<Refusal>,
    /// The client's address as policies see it (behind trusted proxies, the one they
    /// report), worked out once when the route is known.
    effective_ip: Option<IpAddr>,
}

/// When the phases of a request happened, for the access log.
struct Timings {
    start: Instant,
    connect_start: Option<Instant>,
    connected: Option<Instant>,
    response: Option<Instant>,
}

impl Ctx {
    fn cache_policy(&self) -> Option<&cache::RoutePolicy> {
        self.rt.routes[self.route?].cache.as_ref()
    }

    fn pool_arc(&self) -> Option<&Arc<Pool>> {
        pool_of(&self.rt, self.route, self.upstream)
    }

    fn pool(&self) -> Option<&Pool> {
        self.pool_arc().map(|p| &**p)
    }

    fn retry_policy(&self) -> Option<&RetryPolicy> {
        let route = &self.rt.routes[self.route?];
        route
            .retry
            .as_ref()
            .or_else(|| self.pool().map(|p| &p.default_retry))
    }

    /// Count the current attempt's outcome for outlier detection and the breaker.
    fn record_attempt(&mut self, outcome: std::result::Result<(), Failure>) {
        let probe = self.probe.take();
        if let Some(pool) = self.pool() {
            pool.record(self.target, outcome, probe);
        }
    }

    /// After a failed attempt (whose target is already in `failed`): whether to try again,
    /// with the back-off to wait first set. Connect failures never reached the upstream;
    /// anything else is tried again only for idempotent requests whose body is still at
    /// hand and whose response has not started.
    fn retry(&mut self, session: &Session, failure: Failure) -> bool {
        let (Some(pool), Some(policy)) = (self.pool(), self.retry_policy()) else {
            return false;
        };
        if self.attempts as usize >= policy.attempts || !policy.retries(failure) {
            return false;
        }
        if failure != Failure::Connect {
            let safe = session.req_header().method.is_idempotent()
                && !session.as_ref().retry_buffer_truncated()
                && session.response_written().is_none();
            if !safe {
                return false;
            }
        }
        // A refused connect goes to another target or nowhere; other failures may try the
        // same target again when it is the only one.
        if failure == Failure::Connect && select(pool, session, self).is_none() {
            return false;
        }
        let backoff = policy.backoff(self.attempts);
        if self.deadline.is_some_and(|d| Instant::now() + backoff >= d) {
            return false;
        }
        if !pool.budget.try_retry(clock::now_ms()) {
            pool.metrics.budget_exhausted.inc();
            log::debug!(
                "request {}: retry budget of upstream {:?} used up",
                self.request_id,
                pool.name
            );
            return false;
        }
        if self.rt.metrics {
            pool.metrics.retries.inc();
        }
        self.backoff = backoff;
        true
    }

    /// The current attempt failed: its target is not the first choice again.
    fn attempt_failed(&mut self) {
        if let Some(t) = self.target.take() {
            self.failed.push(t);
        }
    }
}

/// The upstream of a request: the one a traffic split chose, else its route's.
fn pool_of(rt: &Runtime, route: Option<usize>, upstream: Option<usize>) -> Option<&Arc<Pool>> {
    let route = &rt.routes[route?];
    rt.upstreams.get(upstream.unwrap_or(route.upstream))
}

fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// A target not failed yet in this request.
fn select(pool: &Pool, session: &Session, ctx: &Ctx) -> Option<SocketAddr> {
    select_excluding(pool, session, ctx, &ctx.failed)
}

fn select_excluding(
    pool: &Pool,
    session: &Session,
    ctx: &Ctx,
    exclude: &[SocketAddr],
) -> Option<SocketAddr> {
    let mut scratch = [0u8; 16];
    let key = match &pool.hash_key {
        Some(k) => k.extract(session.req_header(), ctx.client_ip, &mut scratch),
        None => b"",
    };
    pool.select(key, exclude)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            rt: self.runtime.load_full(),
            route: None,
            request_id: RequestId::unset(),
            client_ip: None,
            target: None,
            failed: Vec::new(),
            upstream_host: None,
            identity: None,
            rate_headers: None,
            cache: cache::RequestState::default(),
            body_bytes: 0,
            upstream: None,
            mirror_wanted: false,
            mirror: None,
            request_json: None,
            response_json: None,
            trace: None,
            times: Timings {
                start: Instant::now(),
                connect_start: None,
                connected: None,
                response: None,
            },
            rate_limit: None,
            attempts: 0,
            backoff: Duration::ZERO,
            deadline: None,
            breaker_retry_after: 0,
            answered: false,
            route_slot: None,
            upstream_slot: None,
            probe: None,
            hsts: None,
            active: None,
            refusal: None,
            effective_ip: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        connection::header_read();
        let server = &ctx.rt.server;
        if lifecycle::state() == lifecycle::State::Draining {
            // Answer with `Connection: close` while draining, so that keep-alive clients
            // move to the new process (or away) before idle connections are closed under
            // them, which would fail a request sent at that moment.
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            // Pingora waits forever for the next request on a kept-alive connection.
            session.set_keepalive(Some(server.keepalive_timeout.ceil_secs()));
        }
        // Bounds each wait for more of the request body.
        session.set_read_timeout(Some(server.body_timeout.0));
        if server.pipelining {
            session.set_pipelining_enabled(true);
        }
        ctx.request_id = RequestId::take(&ctx.rt.request_id_header, &session.req_header().headers);
        // Everything after this decides on the canonical request, and the upstream gets it.
        if let Err(r) = canonical::canonicalise(session.req_header_mut(), &ctx.rt.edge_rules) {
            ctx.refusal = Some(r);
        }
        ctx.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let traceparent = session.req_header().headers.get("traceparent");
        ctx.trace = Some(TraceContext::from_header(traceparent.map(|v| v.as_bytes())));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(r) = ctx.refusal {
            log::debug!("request {}: {} {}", ctx.request_id, r.status, r.message);
            session.set_keepalive(None);
            error_response::send(session, r.status, r.message, &ctx.request_id, &[]).await?;
            return Ok(true);
        }
        if ctx.rt.edge {
            let local = session.server_addr().and_then(|a| a.as_inet()).copied();
            let listener = local.and_then(|a| tls::listeners::find(&ctx.rt.listener_specs, a));
            if let Some(l) = listener {
                if is_tls(session) {
                    ctx.hsts = l.hsts.clone();
                } else if l.redirect_https && redirect_https(session, ctx).await? {
                    return Ok(true);
                }
            }
        }
        if ctx.rt.cache.purge_method && session.req_header().method.as_str() == "PURGE" {
            purge_request(session, ctx).await?;
            return Ok(true);
        }
        if let Some(method) = Cors::is_preflight(session.req_header()) {
            if preflight(session, ctx, &method).await? {
                return Ok(true);
            }
        }
        let req = session.req_header();
        let host = request_host(req).map(normalize_host).unwrap_or_default();
        let lookup = ctx
            .rt
            .router
            .find(&host, &req.method, req.uri.path(), &req.headers);
        match lookup {
            RouteLookup::Found(i) => {
                ctx.route = Some(i);
                let rt = ctx.rt.clone();
                let route = &rt.routes[i];
                if route.redirect_https && !is_tls(session) && redirect_https(session, ctx).await? {
                    return Ok(true);
                }
                if session.is_upgrade_req() {
                    // The client's side of an upgraded connection: idle per the route, not
                    // per the body timeout (Pingora's default would cut it after 60 s).
                    session.set_read_timeout(Some(route.upgrade_idle));
                }
                let req = session.req_header();
                ctx.effective_ip =
                    forwarding::effective_client_ip(req, ctx.client_ip, |ip| rt.is_trusted(ip));

                if let Some(f) = &route.ip_filter {
                    let ip = ctx.effective_ip;
                    if !f.admits(ip) {
                        log::info!(
                            "request {} on route {}: 403 client address {ip:?} not admitted",
                            ctx.request_id,
                            route.name
                        );
                        let message = "your address may not call this route";
                        error_response::send(session, 403, message, &ctx.request_id, &[]).await?;
                        return Ok(true);
                    }
                }
                if let Some(max) = route.max_request_body {
                    let declared = session
                        .req_header()
                        .headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    if declared.is_some_and(|len| len > max) {
                        let message = format!("request body over {max} bytes");
                        session.set_keepalive(None);
                        error_response::send(session, 413, &message, &ctx.request_id, &[]).await?;
                        return Ok(true);
                    }
                }
                if let Some(access) = &route.access {
                    match access.check(session.req_header()).await {
                        Ok(identity) => {
                            if rt.metrics {
                                route.metrics.auth_ok();
                            }
                            ctx.identity = identity
                        }
                        Err(denial) => {
                            if rt.metrics {
                                route.metrics.auth_refused(denial.reason);
                            }
                            log::info!(
                                "request {} on route {}: {} {} ({})",
                                ctx.request_id,
                                route.name,
                                denial.status,
                                denial.reason,
                                denial.message
                            );
                            let challenge =
                                [("www-authenticate", denial.www_authenticate.as_str())];
                            error_response::send(
                                session,
                                denial.status,
                                &denial.message,
                                &ctx.request_id,
                                &challenge,
                            )
                            .await?;
                            return Ok(true);
                        }
                    }
                }
                if route.limits.is_empty() {
                    return Ok(false);
                }
                let header = session.req_header();
                let request = ratelimit::Request {
                    header,
                    client_ip: ctx.effective_ip,
                    consumer: ctx.identity.as_ref().and_then(|id| id.consumer.as_deref()),
                };
                let outcome =
                    ratelimit::decide(&route.limits, &rt.limiter, rt.redis.as_deref(), &request)
                        .await;
                if let Some((why, refuse)) = &outcome.store_failed {
                    if rt.metrics {
                        route.metrics.rate_limit_store_error();
                    }
                    log::warn!(
                        "request {} on route {}: Redis could not decide the cluster limits ({why}); {}",
                        ctx.request_id,
                        route.name,
                        if *refuse { "refusing (fail_closed)" } else { "admitting (fail_open)" }
                    );
                    if *refuse {
                        let extra = [("retry-after", "1")];
                        let message = "rate limit store unavailable";
                        error_response::send(session, 503, message, &ctx.request_id, &extra)
                            .await?;
                        return Ok(true);
                    }
                }
                if rt.metrics && !outcome.would_reject.is_empty() {
                    route.metrics.rate_limit("dry_run_limited");
                }
                for name in &outcome.would_reject {
                    log::info!(
                        "request {} on route {}: dry-run limit {name} would answer 429",
                        ctx.request_id,
                        route.name
                    );
                }
                let Some(limit) = outcome.rejected_by else {
                    ctx.rate_headers = outcome.headers;
                    ctx.rate_limit = Some("allowed");
                    if rt.metrics {
                        route.metrics.rate_limit("allowed");
                    }
                    return Ok(false);
                };
                ctx.rate_limit = Some("limited");
                if rt.metrics {
                    route.metrics.rate_limit("limited");
                }
                log::info!(
                    "request {} on route {}: 429 rate limit {limit}",
                    ctx.request_id,
                    route.name
                );
                let retry = outcome.retry_after.as_secs()
                    + u64::from(outcome.retry_after.subsec_nanos() > 0);
                let retry = retry.max(1).to_string();
                let mut extra = vec![("retry-after", retry.as_str())];
                if let Some((policy, state)) = &outcome.headers {
                    extra.push(("ratelimit-policy", policy));
                    extra.push(("ratelimit", state));
                }
                let message = format!("rate limit {limit} exceeded");
                error_response::send(session, 429, &message, &ctx.request_id, &extra).await?;
                Ok(true)
            }
            RouteLookup::NotFound => {
                error_response::send(
                    session,
                    404,
                    "no route matches this request",
                    &ctx.request_id,
                    &[],
                )
                .await?;
                Ok(true)
            }
            RouteLookup::MethodNotAllowed(methods) => {
                let allow = methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                let message = format!("method {} is not allowed here", req.method);
                error_response::send(
                    session,
                    405,
                    &message,
                    &ctx.request_id,
                    &[("allow", &allow)],
                )
                .await?;
                Ok(true)
            }
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let Some(policy) = ctx.route.and_then(|i| ctx.rt.routes[i].cache.as_ref()) else {
            return Ok(());
        };
        let req = session.req_header();
        // An upgrade (WebSocket) is a conversation, not a response to store.
        if !policy.serves(&req.method) || session.is_upgrade_req() {
            return Ok(());
        }
        ctx.cache.active = true;
        if policy.bypassed(req) {
            ctx.cache.bypassed = true;
            return Ok(());
        }
        ctx.cache.directives = RequestDirectives::parse(req);
        let engine = ctx.rt.cache;
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(policy.lock_timeout);
        session.cache.enable(
            engine.store,
            Some(engine.eviction),
            None,
            Some(engine.lock),
            Some(overrides),
        );
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        let policy = ctx
            .cache_policy()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache without policy"))?;
        let req = session.req_header();
        let host = request_host(req).map(normalize_host).unwrap_or_default();
        Ok(policy.key.cache_key(&host, req.uri.path(), req.uri.query()))
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut Ctx) {
        session.cache.cache_miss();
        let vary = session.cache.cache_key().variance_bin().is_some();
        ctx.cache
            .fwd
            .get_or_insert(if vary { "vary-miss" } else { "uri-miss" });
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        let targeted = ctx.cache_policy().map_or(&[][..], |p| &p.limits.targeted);
        let forced = ctx
            .cache
            .directives
            .as_ref()
            .and_then(|d| d.judge(meta, is_fresh, SystemTime::now(), targeted));
        match forced {
            Some(ForcedFreshness::ForceExpired) => ctx.cache.fwd = Some("request"),
            None if !is_fresh => ctx.cache.fwd = Some("stale"),
            _ => {}
        }
        Ok(forced)
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let consumer = ctx.identity.as_ref().and_then(|id| id.consumer.as_deref());
        ctx.cache_policy()?.key.variance(req, consumer, meta)
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if ctx
            .route
            .is_some_and(|i| ctx.rt.routes[i].compose.is_some())
        {
            compose(session, ctx).await?;
            return Ok(false);
        }
        let only_cached = ctx
            .cache
            .directives
            .as_ref()
            .is_some_and(|d| d.only_if_cached);
        if !only_cached || session.subrequest_ctx.is_some() {
            return Ok(true);
        }
        let status = "portico; fwd=miss; detail=only-if-cached";
        let message = "only-if-cached: no stored response can be used";
        error_response::send(
            session,
            504,
            message,
            &ctx.request_id,
            &[("cache-status", status)],
        )
        .await?;
        Ok(false)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        let merged;
        let resp = match ctx.cache.revalidated_fields.take() {
            Some(fields) => {
                merged = cache::updated_header(resp, &fields);
                &merged
            }
            None => resp,
        };
        let Some(policy) = ctx.cache_policy() else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        let req = session.req_header();
        // Credentials the gateway verified; an Authorization it did not look at follows
        // RFC 9111 §3.5 (stored when the response says it may be shared).
        let authenticated = ctx.identity.is_some();
        let facts = RequestFacts {
            credentials: req.headers.contains_key(http::header::AUTHORIZATION),
            // One caller's answer goes to another only where the key separates them or
            // the route says its answers are the same for everyone.
            personal: authenticated && !policy.key.per_consumer() && !policy.share_authenticated,
            no_store: ctx.cache.directives.as_ref().is_some_and(|d| d.no_store),
        };
        match rules::storable(resp, &facts, &policy.limits, SystemTime::now()) {
            Ok(meta) => Ok(RespCacheable::Cacheable(meta)),
            Err(reason) => {
                ctx.cache.detail = Some(reason);
                Ok(RespCacheable::Uncacheable(NoCacheReason::Custom(reason)))
            }
        }
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        if let Some(e) = error {
            // For Cache-Status' fwd-status: what the upstream answered, if it answered.
            ctx.cache.upstream_status = match e.etype() {
                ErrorType::HTTPStatus(s) => Some(*s),
                _ => None,
            };
        }
        // The stored response's own stale-while-revalidate / stale-if-error window has been
        // checked already; what is left is which failures count as errors (RFC 5861 §4).
        match error {
            None => true,
            Some(e) => {
                e.esource() == &ErrorSource::Upstream
                    || matches!(e.etype(), ErrorType::HTTPStatus(500 | 502 | 503 | 504))
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if ctx.request_json.is_some() {
            edit_request_json(body, end_of_stream, ctx)?;
        }
        if let Some((_, buf)) = &mut ctx.mirror {
            if let Some(b) = body {
                if buf.len() + b.len() > MAX_MIRROR_BODY {
                    ctx.mirror = None;
                } else {
                    buf.extend_from_slice(b);
                }
            }
            if end_of_stream {
                if let Some((head, buf)) = ctx.mirror.take() {
                    send_mirror(ctx, &head, buf);
                }
            }
        }
        let Some(max) = ctx.route.and_then(|i| ctx.rt.routes[i].max_request_body) else {
            return Ok(());
        };
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        if ctx.body_bytes > max {
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                format!("request body over {max} bytes"),
            );
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if ctx.upstream.is_none() {
            choose_upstream(session, ctx);
        }
        if !ctx.backoff.is_zero() {
            tokio::time::sleep(std::mem::take(&mut ctx.backoff)).await;
        }
        let now = Instant::now();
        ctx.times.connect_start = Some(now);
        // Borrowed from `ctx.rt` alone, so the other fields of `ctx` stay writable.
        let pool = pool_of(&ctx.rt, ctx.route, ctx.upstream);
        let (Some(ri), Some(pool)) = (ctx.route, pool) else {
            return Error::e_explain(ErrorType::InternalError, "no route selected");
        };
        let first = ctx.attempts == 0;
        ctx.attempts += 1;
        match pool.breaker_admit(first) {
            Ok(probe) => ctx.probe = probe,
            Err(ms) => {
                ctx.breaker_retry_after = ms.div_ceil(1000).max(1);
                pool.metrics.breaker_rejections.inc();
                return Error::e_explain(ErrorType::Custom(BREAKER_OPEN), "not tried");
            }
        }
        if first {
            let route = &ctx.rt.routes[ri];
            if let Some(limit) = &route.limit {
                ctx.route_slot = limit.acquire();
                if ctx.route_slot.is_none() {
                    if ctx.rt.metrics {
                        route.metrics.overloaded();
                    }
                    return Error::e_explain(
                        ErrorType::Custom(ROUTE_AT_CAPACITY),
                        "every max_concurrent slot of the route is taken",
                    );
                }
            }
            match pool.admit() {
                Ok(slot) => ctx.upstream_slot = slot,
                Err(_at_capacity) => {
                    if ctx.rt.metrics {
                        pool.metrics.overloaded.inc();
                    }
                    return Error::e_explain(
                        ErrorType::Custom(AT_CAPACITY),
                        "every max_concurrent slot is taken",
                    );
                }
            }
            ctx.deadline = route.deadline.map(|d| ctx.times.start + d);
            pool.budget.request(clock::now_ms());
        }
        // Each wait of this attempt ends by the try timeout and by the route's deadline.
        let mut bound = ctx.retry_policy().and_then(|p| p.try_timeout);
        if let Some(deadline) = ctx.deadline {
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                return Error::e_explain(ErrorType::Custom(DEADLINE), "before an attempt");
            }
            bound = Some(bound.map_or(left, |b| b.min(left)));
        }
        let addr = select(pool, session, ctx).or_else(|| {
            // Every target failed once already: a failure worth retrying may pass on a
            // second try at the same one.
            (!ctx.failed.is_empty())
                .then(|| select_excluding(pool, session, ctx, &[]))
                .flatten()
        });
        let Some(addr) = addr else {
            return Error::e_explain(ErrorType::Custom(NO_TARGET), "every target is out");
        };
        let (mut peer, host) = pool.peer(&addr).ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "selected target has no peer")
        })?;
        if session.is_upgrade_req() {
            // The service's side of an upgraded connection: the same idle limit.
            peer.options.read_timeout = Some(ctx.rt.routes[ri].upgrade_idle);
        }
        if let Some(b) = bound {
            let o = &mut peer.options;
            for t in [
                &mut o.connection_timeout,
                &mut o.read_timeout,
                &mut o.write_timeout,
            ] {
                *t = Some(t.map_or(b, |t| t.min(b)));
            }
        }
        ctx.upstream_host = Some(host.clone());
        ctx.target = Some(addr);
        // A retry's target counts instead of the failed one's.
        ctx.active = pool.track(&addr);
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.record_attempt(Err(Failure::Connect));
        ctx.attempt_failed();
        if let Some(pool) = ctx.pool().filter(|_| ctx.rt.metrics) {
            pool.metrics.connect_failures.inc();
            if e.etype() == &ErrorType::ConnectTimedout {
                pool.metrics.timeouts.inc();
            }
        }
        let retry = ctx.retry(session, Failure::Connect);
        e.set_retry(retry);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if e.etype() == &ErrorType::Custom(RETRY_STATUS) {
            // Recorded and decided when the response header came.
            return e;
        }
        if matches!(e.retry, RetryType::ReusedOnly) && client_reused {
            // A kept-alive connection the upstream had closed meanwhile: no fault of the
            // target's, but another attempt all the same, counted like any other (Pingora
            // alone would try up to 16 times).
            ctx.attempt_failed();
            let retry = ctx.retry(session, Failure::Reset);
            e.set_retry(retry);
            return e;
        }
        if e.esource() != &ErrorSource::Upstream {
            e.set_retry(false);
            return e;
        }
        let failure = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Failure::Timeout,
            _ => Failure::Reset,
        };
        if failure == Failure::Timeout {
            if let Some(pool) = ctx.pool().filter(|_| ctx.rt.metrics) {
                pool.metrics.timeouts.inc();
            }
        }
        ctx.answered = false;
        ctx.record_attempt(Err(failure));
        ctx.attempt_failed();
        let retry = ctx.retry(session, failure);
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = ctx.route.map(|i| &ctx.rt.routes[i]) else {
            return Ok(());
        };
        let client_req = session.req_header();
        let client_host = request_host(client_req).map(str::to_string);
        let vars = Vars {
            request_id: &ctx.request_id,
            client_ip: ctx.client_ip,
            identity: ctx.identity.as_deref(),
            route: &route.name,
            host: client_host.as_deref().unwrap_or(""),
            req: client_req,
        };
        let rewritten = route.rewrite.apply(client_req.uri.path());
        let transforms = route.transforms.as_ref();
        if rewritten.is_some() || transforms.is_some_and(|t| t.rewrites_uri()) {
            let mut path = rewritten.unwrap_or(Cow::Borrowed(client_req.uri.path()));
            let mut query = client_req.uri.query().map(Cow::Borrowed);
            if let Some(t) = transforms {
                if let Some((re, replace)) = &t.path {
                    if let Cow::Owned(p) = re.replace(&path, replace.as_str()) {
                        path = Cow::Owned(p);
                    }
                }
                if !t.query.is_empty() {
                    query = t.query.apply(query.as_deref(), &vars).map(Cow::Owned);
                }
            }
            let target = match query {
                Some(q) => format!("{path}?{q}"),
                None => path.into_owned(),
            };
            let uri = Uri::try_from(target).or_err(
                ErrorType::HTTPStatus(400),
                "rewritten path is not a valid URI",
            )?;
            upstream.set_uri(uri);
        }
        match &route.host {
            HostPolicy::Target => {
                if let Some(h) = ctx.upstream_host.take() {
                    upstream.insert_header(http::header::HOST, h)?;
                }
            }
            HostPolicy::Client => {
                if let Some(h) = &client_host {
                    upstream.insert_header(http::header::HOST, h.as_str())?;
                }
            }
            HostPolicy::Fixed(h) => upstream.insert_header(http::header::HOST, h.clone())?,
        }
        let keepalive = ctx.pool().is_none_or(|p| p.keepalive);
        forwarding::strip_request_hop_headers(upstream, session.is_upgrade_req(), keepalive);
        let proto = if session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .is_some()
        {
            "https"
        } else {
            "http"
        };
        let rt = &ctx.rt;
        let client = ClientInfo {
            ip: ctx.client_ip,
            trusted: ctx.client_ip.is_some_and(|ip| rt.is_trusted(ip)),
            proto,
            host: client_host.as_deref(),
            real_ip: ctx.effective_ip,
        };
        forwarding::set_forwarded_headers(upstream, &client);
        upstream.insert_header(ctx.request_id.header.clone(), ctx.request_id.as_str())?;
        if let Some(t) = &ctx.trace {
            upstream.insert_header("traceparent", t.header_value())?;
        }
        // Identity headers come from the gateway only, never from the client.
        for name in &ctx.rt.auth.identity_headers {
            upstream.remove_header(name);
        }
        if let Some(id) = &ctx.identity {
            if let Some(consumer) = &id.consumer {
                if let Ok(v) = HeaderValue::from_str(consumer) {
                    upstream.insert_header(CONSUMER_HEADER, v)?;
                }
            }
            for (name, value) in &id.headers {
                upstream.insert_header(name.clone(), value.clone())?;
            }
            if let Some(h) = &id.hide_header {
                upstream.remove_header(h);
            }
            if let Some(name) = &id.hide_query {
                crate::request_parts::remove_query_param(upstream, name);
            }
        }
        if let Some(t) = transforms {
            t.request_headers.apply(upstream, &vars)?;
            if t.response_json.is_some() {
                // Bodies to edit must come uncompressed; one that still does is passed on.
                upstream.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
            }
            if t.request_json.is_some()
                && json_body_follows(client_req)
                && !session.is_upgrade_req()
            {
                if declared_length(&client_req.headers).is_some_and(|l| l > t.max_body as u64) {
                    return Error::e_explain(
                        ErrorType::HTTPStatus(413),
                        format!("JSON body over {} bytes", t.max_body),
                    );
                }
                // The edited body has a new length, known only once it is all read.
                upstream.remove_header(&http::header::CONTENT_LENGTH);
                upstream.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
                ctx.request_json = Some(Vec::new());
            }
        }
        copy_for_mirror(session, upstream, ctx);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.times.response = Some(Instant::now());
        let status = resp.status.as_u16();
        ctx.cache.upstream_status = Some(status);
        if status >= 200 && ctx.pool().is_some() {
            if status < 500 {
                ctx.answered = true;
            } else {
                let failure = Failure::Status(status);
                ctx.record_attempt(Err(failure));
                ctx.attempt_failed();
                if ctx.retry(session, failure) {
                    let mut e = Error::explain(
                        ErrorType::Custom(RETRY_STATUS),
                        format!("upstream answered {status}"),
                    );
                    e.set_retry(true);
                    return Err(e);
                }
            }
        }
        if resp.status == http::StatusCode::NOT_MODIFIED
            && session.cache.phase() == CachePhase::Stale
        {
            ctx.cache.revalidated_fields = Some(resp.headers.clone());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        forwarding::strip_response_hop_headers(resp);
        if let Some(c) = ctx
            .route
            .and_then(|i| ctx.rt.routes[i].compression.as_ref())
        {
            if c.wants(resp) {
                compress(session, c.level)?;
            }
        }
        if let Some(v) = cache_status::render(&session.cache, &ctx.cache, resp.status.as_u16()) {
            resp.insert_header("cache-status", v)?;
        }
        if let Some(own) = ctx.cache_policy().and_then(|p| p.own_field.as_ref()) {
            resp.remove_header(own);
        }
        if session.cache.phase() == CachePhase::Stale {
            // A stored response stands in for a failed upstream; Pingora does not reuse
            // the client connection after that, so say so rather than leave the client to
            // find a closed connection under its next request.
            session.set_keepalive(None);
        }
        let req = session.req_header();
        if let Some(t) = ctx
            .route
            .and_then(|i| ctx.rt.routes[i].transforms.as_ref())
            .filter(|t| !t.response_headers.is_empty())
        {
            let route = ctx.route.map_or("", |i| ctx.rt.routes[i].name.as_str());
            let vars = Vars {
                request_id: &ctx.request_id,
                client_ip: ctx.client_ip,
                identity: ctx.identity.as_deref(),
                route,
                host: request_host(req).unwrap_or(""),
                req,
            };
            t.response_headers.apply(resp, &vars)?;
        }
        if let Some(c) = ctx.route.and_then(|i| ctx.rt.routes[i].cors.as_ref()) {
            c.respond(req, resp)?;
        }
        if let Some(t) = ctx
            .route
            .and_then(|i| ctx.rt.routes[i].transforms.as_ref())
            .filter(|t| t.response_json.is_some())
        {
            let has_body = req.method != http::Method::HEAD
                && !matches!(resp.status.as_u16(), 204 | 304)
                && !resp.status.is_informational();
            let encoded = resp
                .headers
                .get(http::header::CONTENT_ENCODING)
                .is_some_and(|v| v.as_bytes() != b"identity");
            if has_body && !encoded && json::is_json(resp.headers.get(http::header::CONTENT_TYPE)) {
                if declared_length(&resp.headers).is_some_and(|l| l > t.max_body as u64) {
                    return Error::e_explain(
                        ErrorType::HTTPStatus(502),
                        format!("upstream JSON body over {} bytes", t.max_body),
                    );
                }
                resp.remove_header(&http::header::CONTENT_LENGTH);
                resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
                ctx.response_json = Some(Vec::new());
            }
        }

        if ctx.rt.caching && cache::is_unsafe(&req.method) && resp.status.as_u16() < 400 {
            let host = request_host(req).unwrap_or_default();
            let n = purge::invalidate(&ctx.rt, host, req, resp);
            if n > 0 {
                log::debug!(
                    "request {}: invalidated {n} cached responses",
                    ctx.request_id
                );
            }
        }
        resp.insert_header(ctx.request_id.header.clone(), ctx.request_id.as_str())?;
        if let Some(v) = ctx.hsts.take() {
            resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, v)?;
        }
        if let Some((policy, state)) = ctx.rate_headers.take() {
            resp.insert_header("ratelimit-policy", policy)?;
            resp.insert_header("ratelimit", state)?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if !end_of_stream
            && ctx.deadline.is_some_and(|d| Instant::now() >= d)
            && !session.was_upgraded()
        {
            // The response has started: all the deadline can do is end it here.
            return Error::e_explain(ErrorType::Custom(DEADLINE), "while sending the body");
        }
        let Some(buf) = &mut ctx.response_json else {
            return Ok(None);
        };
        let rt = ctx.rt.clone();
        let Some(t) = ctx.route.and_then(|i| rt.routes[i].transforms.as_ref()) else {
            return Ok(None);
        };
        if !json::gather(
            buf,
            body,
            end_of_stream,
            t.max_body,
            t.response_json.as_ref(),
        ) {
            // The header is out already: all that is left is to end the response.
            return Error::e_explain(
                ErrorType::HTTPStatus(502),
                format!("upstream JSON body over {} bytes", t.max_body),
            );
        }
        if end_of_stream {
            ctx.response_json = None;
        }
        Ok(None)
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.times.connected = Some(Instant::now());
        if let Some(pool) = ctx.pool().filter(|_| ctx.rt.metrics) {
            if reused {
                pool.metrics.reused_connections.inc();
            } else {
                pool.metrics.new_connections.inc();
            }
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if std::mem::take(&mut ctx.answered) {
            ctx.record_attempt(Ok(()));
        }
        if ctx.rt.metrics {
            record_metrics(session, ctx);
        }
        if let Some(log) = self.access_log.as_ref().and_then(|l| l.get()) {
            write_access_line(log, session, ctx);
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let upstream = ctx.pool().map_or("", |p| p.name.as_str());
        let (mut status, message) = describe(e, upstream);
        if status > 0 && session.response_written().is_none() {
            session.set_keepalive(None);
            let fallback = ctx
                .route
                .and_then(|i| ctx.rt.routes[i].fallback.as_ref())
                .filter(|_| fast_fail(e));
            let sent = if let Some((code, body)) = fallback {
                status = *code;
                error_response::reply(session, status, body.clone(), &ctx.request_id, &[]).await
            } else {
                let retry_after = match e.etype() {
                    ErrorType::Custom(BREAKER_OPEN) => Some(ctx.breaker_retry_after.to_string()),
                    ErrorType::Custom(AT_CAPACITY | ROUTE_AT_CAPACITY) => Some("1".to_string()),
                    _ => None,
                };
                let extra: &[(&str, &str)] = match &retry_after {
                    Some(s) => &[("retry-after", s.as_str())],
                    None => &[],
                };
                error_response::send(session, status, &message, &ctx.request_id, extra).await
            };
            if let Err(we) = sent {
                log::debug!("could not send the {status} response: {we}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// What Pingora's error log says of a request: never its query, which may carry keys.
    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        let req = session.req_header();
        let host = request_host(req).unwrap_or("-");
        format!("{} {}, Host: {host}", req.method, req.uri.path())
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        // During an outage these come by the thousand; the metrics count them.
        if fast_fail(e) {
            return true;
        }
        // A client can cause these as fast as it likes (reset streams, dropped
        // connections): a few a second are logged, the access log has every one.
        static CLIENT_FAILURES: LogBudget = LogBudget::new(10);
        e.esource() == &ErrorSource::Downstream && !CLIENT_FAILURES.allow("client-side failures")
    }
}

/// `PURGE /path` with the admin token: drop that URL's stored responses.
async fn purge_request(session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    let req = session.req_header();
    let expected = ctx.rt.admin.as_ref().and_then(|a| a.token_sha256.as_ref());
    if let Err((status, message)) =
        admin::token_matches(expected, req.headers.get(http::header::AUTHORIZATION))
    {
        return error_response::send(session, status.as_u16(), message, &ctx.request_id, &[]).await;
    }
    let host = request_host(req).unwrap_or_default();
    let n = purge::url(&ctx.rt, host, req.uri.path(), req.uri.query(), &req.headers);
    let body = serde_json::json!({"purged": n, "request_id": ctx.request_id.as_str()}).to_string();
    error_response::reply(session, 200, body.into(), &ctx.request_id, &[]).await
}

/// Answer a CORS preflight for the route the announced method would take; `false` when
/// no route with a CORS policy takes it (the request then goes on as any OPTIONS).
async fn preflight(session: &mut Session, ctx: &mut Ctx, method: &http::Method) -> Result<bool> {
    let req = session.req_header();
    let host = request_host(req).map(normalize_host).unwrap_or_default();
    let RouteLookup::Found(i) = ctx
        .rt
        .router
        .find(&host, method, req.uri.path(), &req.headers)
    else {
        return Ok(false);
    };
    let rt = ctx.rt.clone();
    let Some(cors) = &rt.routes[i].cors else {
        return Ok(false);
    };
    match cors.preflight(req, method) {
        Preflight::Allowed(headers) => {
            let mut resp = ResponseHeader::build(204, Some(headers.len() + 2))?;
            for (name, value) in headers {
                resp.append_header(name, value)?;
            }
            resp.insert_header("content-length", "0")?;
            resp.insert_header(ctx.request_id.header.clone(), ctx.request_id.as_str())?;
            session.write_response_header(Box::new(resp), true).await?;
        }
        Preflight::Refused(why) => {
            let message = format!("CORS preflight refused: {why}");
            error_response::send(session, 403, &message, &ctx.request_id, &[]).await?;
        }
    }
    Ok(true)
}

/// First attempt of a request: the upstream (split) and whether a copy goes to the mirror.
fn choose_upstream(session: &Session, ctx: &mut Ctx) {
    let Some(route) = ctx.route.map(|i| &ctx.rt.routes[i]) else {
        return;
    };
    let req = session.req_header();
    let consumer = ctx.identity.as_ref().and_then(|id| id.consumer.as_deref());
    ctx.upstream = Some(match &route.split {
        Some(split) => split.choose(req, ctx.client_ip, consumer),
        None => route.upstream,
    });
    let Some(m) = &route.mirror else { return };
    let too_long = declared_length(&req.headers).is_some_and(|l| l > MAX_MIRROR_BODY as u64);
    ctx.mirror_wanted = !too_long && crate::upstream::split::draw() < m.share;
}

/// The request is finished for the upstream: copy it for the mirror, once. A request
/// without a body is sent at once, one with a body once the body is read.
fn copy_for_mirror(session: &Session, upstream: &RequestHeader, ctx: &mut Ctx) {
    if !std::mem::take(&mut ctx.mirror_wanted) {
        return;
    }
    let Some(m) = ctx.route.and_then(|i| ctx.rt.routes[i].mirror.as_ref()) else {
        return;
    };
    let keys = &ctx.rt.auth.api_keys;
    let head = m.copy_of(upstream, std::slice::from_ref(keys.header()), keys.query());
    let req = session.req_header();
    let chunked = req.headers.contains_key(http::header::TRANSFER_ENCODING);
    match declared_length(&req.headers) {
        Some(0) | None if !chunked => send_mirror(ctx, &head, Vec::new()),
        length => {
            let capacity = length.map_or(0, |l| l as usize).min(MAX_MIRROR_BODY);
            ctx.mirror = Some((head, Vec::with_capacity(capacity)));
        }
    }
}

fn send_mirror(ctx: &Ctx, head: &RequestHeader, body: Vec<u8>) {
    let Some(route) = ctx.route.map(|i| &ctx.rt.routes[i]) else {
        return;
    };
    let Some(m) = &route.mirror else {
        return;
    };
    let Ok(permit) = m.slots.clone().try_acquire_owned() else {
        if ctx.rt.metrics {
            route.metrics.mirror_dropped();
        }
        log::debug!(
            "request {}: mirror copy dropped, too many on their way",
            ctx.request_id
        );
        return;
    };
    let pool = ctx.rt.upstreams[m.pool].clone();
    mirror::send(
        pool,
        head,
        body,
        m.timeout,
        ctx.request_id.to_string(),
        permit,
    );
}

/// Switch Pingora's compression module on for this response. It saw the request while it
/// was off (the route was not known yet), so it is shown the client's Accept-Encoding now.
fn compress(session: &mut Session, level: u32) -> Result<()> {
    let Some(accept) = session
        .req_header()
        .headers
        .get(http::header::ACCEPT_ENCODING)
        .cloned()
    else {
        return Ok(());
    };
    let mut probe = RequestHeader::build("GET", b"/", Some(1))?;
    probe.insert_header(http::header::ACCEPT_ENCODING, accept)?;
    if let Some(m) = session
        .downstream_modules_ctx
        .get_mut::<ResponseCompression>()
    {
        if m.is_header_phase() {
            m.adjust_level(level);
            m.request_filter(&probe);
        }
    }
    Ok(())
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// A JSON request body is on its way (not compressed, not empty).
fn json_body_follows(req: &RequestHeader) -> bool {
    let encoded = req.headers.contains_key(http::header::CONTENT_ENCODING);
    let has_body = req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || declared_length(&req.headers).is_some_and(|l| l > 0);
    !encoded && has_body && json::is_json(req.headers.get(http::header::CONTENT_TYPE))
}

/// Gather the request body; at its end, send the edited one (or the original when it is
/// not JSON).
fn edit_request_json(body: &mut Option<bytes::Bytes>, end: bool, ctx: &mut Ctx) -> Result<()> {
    let rt = ctx.rt.clone();
    let Some(t) = ctx.route.and_then(|i| rt.routes[i].transforms.as_ref()) else {
        return Ok(());
    };
    let Some(buf) = &mut ctx.request_json else {
        return Ok(());
    };
    if !json::gather(buf, body, end, t.max_body, t.request_json.as_ref()) {
        return Error::e_explain(
            ErrorType::HTTPStatus(413),
            format!("JSON body over {} bytes", t.max_body),
        );
    }
    if end {
        ctx.request_json = None;
    }
    Ok(())
}

/// Answer a compose route: its calls made concurrently, combined into one JSON object.
async fn compose(session: &mut Session, ctx: &mut Ctx) -> Result<()> {
    let rt = ctx.rt.clone();
    let Some(route) = ctx.route.map(|i| &rt.routes[i]) else {
        return Ok(());
    };
    let Some(c) = &route.compose else {
        return Ok(());
    };
    let req = session.req_header();
    let vars = Vars {
        request_id: &ctx.request_id,
        client_ip: ctx.client_ip,
        identity: ctx.identity.as_deref(),
        route: &route.name,
        host: request_host(req).unwrap_or(""),
        req,
    };
    let traceparent = ctx.trace.as_ref().map(TraceContext::header_value);
    let fwd = crate::compose::Forward {
        traceparent: traceparent.as_deref(),
        request_id: &ctx.request_id,
        consumer: ctx.identity.as_ref().and_then(|i| i.consumer.as_deref()),
    };
    let paths = match c.targets(&vars) {
        Ok(p) => p,
        Err(why) => return error_response::send(session, 400, &why, &ctx.request_id, &[]).await,
    };
    match c.run(&rt, &paths, &fwd).await {
        Ok(body) => {
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let mut resp = ResponseHeader::build(200, Some(6))?;
            resp.insert_header("content-type", "application/json")?;
            resp.insert_header("content-length", body.len())?;
            resp.insert_header(ctx.request_id.header.clone(), ctx.request_id.as_str())?;
            if let Some((policy, state)) = &ctx.rate_headers {
                resp.insert_header("ratelimit-policy", policy.as_str())?;
                resp.insert_header("ratelimit", state.as_str())?;
            }
            // The route's response policies apply to a composed answer as to a proxied one.
            if let Some(t) = &route.transforms {
                t.response_headers.apply(&mut resp, &vars)?;
            }
            if let Some(cors) = &route.cors {
                cors.respond(req, &mut resp)?;
            }
            let head_only = req.method == http::Method::HEAD;
            session
                .write_response_header(Box::new(resp), head_only)
                .await?;
            if !head_only {
                session.write_response_body(Some(body.into()), true).await?;
            }
            Ok(())
        }
        Err((key, why)) => {
            log::warn!(
                "request {} on route {}: required call {key} failed: {why}",
                ctx.request_id,
                route.name
            );
            let message = format!("required call {key:?} failed: {why}");
            error_response::send(session, 502, &message, &ctx.request_id, &[]).await
        }
    }
}
