//! The one `ProxyHttp` implementation: the glue between Pingora's phases and the modules
//! that own each concern. Each phase looks things up in the `Runtime` the request started
//! with and hands over; the route's policies run as a pipeline (`route/policies.rs`).

mod attempt;
pub mod connection;
mod ctx;
mod edge;
mod failures;
mod logging;
mod lookup;
mod upstream_request;

pub use ctx::Ctx;

use crate::admin;
use crate::cache::{self, phases as cache_phases};
use crate::canonical;
use crate::error_response;
use crate::forwarding;
use crate::observe::access_log::LazyAccessLog;
use crate::observe::log_budget::LogBudget;
use crate::observe::request_id::RequestId;
use crate::observe::spans::Recorder;
use crate::observe::trace::TraceContext;
use crate::policy::cors::Cors;
use crate::request_parts::request_host;
use crate::route::RouteTarget;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use failures::{describe, fast_fail, AT_CAPACITY, BREAKER_OPEN, ROUTE_AT_CAPACITY};
use pingora_cache::key::HashBinary;
use pingora_cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::Instant;

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

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.runtime.load_full())
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        connection::header_read();
        connection::apply_server_settings(session, &ctx.rt().server);
        let rt = ctx.config.rt();
        ctx.request_id = RequestId::take(&rt.request_id_header, &session.req_header().headers);
        // Everything after this decides on the canonical request, and the upstream gets it.
        if let Err(r) = canonical::canonicalise(session.req_header_mut(), &rt.edge_rules) {
            ctx.refusal = Some(r);
        }
        ctx.policy.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let traceparent = session.req_header().headers.get("traceparent");
        let mut trace = TraceContext::from_header(traceparent.map(|v| v.as_bytes()));
        let sampled = ctx
            .config
            .rt()
            .tracer
            .as_ref()
            .map(|t| t.sampler.sampled(&trace));
        if let Some(sampled) = sampled {
            trace.set_sampled(sampled);
        }
        ctx.trace = Some(trace);
        ctx.policy.explain = edge::explain_asked(session, ctx.config.rt());
        if sampled == Some(true) || ctx.policy.explain {
            ctx.policy.trace = Some(Recorder::new(ctx.times.start));
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if let Some(r) = ctx.refusal {
            log::debug!("request {}: {} {}", ctx.request_id, r.status, r.message);
            session.set_keepalive(None);
            let answer = error_response::send(session, r.status, r.message, &ctx.request_id, &[]);
            Box::pin(answer).await?;
            return Ok(true);
        }
        if edge::listener_answers(session, ctx).await? {
            return Ok(true);
        }
        if ctx.rt().cache.purge_method && session.req_header().method.as_str() == "PURGE" {
            Box::pin(admin::purge_request(session, ctx.rt(), &ctx.request_id)).await?;
            return Ok(true);
        }
        if let Some(method) = Cors::is_preflight(session.req_header()) {
            if Box::pin(lookup::preflight(session, ctx, &method)).await? {
                return Ok(true);
            }
        }
        let Some(route) = lookup::find_route(session, ctx).await? else {
            return Ok(true);
        };
        ctx.config.set_route(route);
        if edge::route_answers(session, ctx).await? {
            return Ok(true);
        }
        let rt = ctx.config.rt();
        ctx.policy.effective_ip =
            forwarding::effective_client_ip(session.req_header(), ctx.policy.client_ip, |ip| {
                rt.trusted_proxies.contains(ip)
            });
        let Some((route, mut x)) = ctx.exchange(session) else {
            return Ok(false);
        };
        route.policies.request(&mut x).await
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        if let Some(policy) = ctx.config.cache_policy() {
            let engine = ctx.config.rt().cache;
            cache_phases::enable(policy, engine, session, &mut ctx.cache);
            if let Some(rec) = ctx.policy.trace.as_deref_mut() {
                rec.cache_lookup_started();
            }
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        let policy = ctx
            .config
            .cache_policy()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "cache without policy"))?;
        Ok(cache_phases::key(policy, session.req_header()))
    }

    fn cache_miss(&self, session: &mut Session, ctx: &mut Ctx) {
        cache_phases::miss(session, &mut ctx.cache);
        if let Some(rec) = ctx.policy.trace.as_deref_mut() {
            rec.cache_lookup_ended("miss");
        }
    }

    async fn cache_hit_filter(
        &self,
        _session: &mut Session,
        meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        if let Some(rec) = ctx.policy.trace.as_deref_mut() {
            rec.cache_lookup_ended(if is_fresh { "hit" } else { "stale" });
        }
        let policy = ctx.config.cache_policy();
        Ok(cache_phases::hit(policy, &mut ctx.cache, meta, is_fresh))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        let policy = ctx.config.cache_policy();
        cache_phases::vary(policy, meta, req, ctx.policy.consumer())
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if ctx
            .route()
            .is_some_and(|r| matches!(r.target, RouteTarget::Compose(_)))
        {
            let traceparent = ctx.trace.as_ref().map(TraceContext::header_value);
            let traceparent = traceparent.as_ref().and_then(|v| v.to_str().ok());
            if let Some((route, mut x)) = ctx.exchange(session) {
                if let RouteTarget::Compose(c) = &route.target {
                    Box::pin(c.answer(&mut x, traceparent, &route.policies)).await?;
                }
            }
            return Ok(false);
        }
        if !cache_phases::only_if_cached(&ctx.cache, session) {
            return Ok(true);
        }
        let status = "portico; fwd=miss; detail=only-if-cached";
        let message = "only-if-cached: no stored response can be used";
        let extra = [("cache-status", status)];
        Box::pin(error_response::send(
            session,
            504,
            message,
            &ctx.request_id,
            &extra,
        ))
        .await?;
        Ok(false)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        let policy = ctx.config.cache_policy();
        let authenticated = ctx.policy.identity.is_some();
        let req = session.req_header();
        Ok(cache_phases::storable(
            policy,
            &mut ctx.cache,
            req,
            resp,
            authenticated,
        ))
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        cache_phases::serve_stale(&mut ctx.cache, error)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        match ctx.exchange(session) {
            Some((route, mut x)) => route.policies.request_body(&mut x, body, end_of_stream),
            None => Ok(()),
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let peer = attempt::peer(session, ctx).await;
        if let Some(rec) = ctx.policy.trace.as_deref_mut() {
            rec.attempt_started(ctx.attempt.count, ctx.attempt.target);
            if let (Err(e), Some(a)) = (&peer, rec.current_attempt()) {
                a.error = Some(e.etype().as_str().to_string());
            }
        }
        peer
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        spans_attempt_failed(ctx, &e);
        attempt::connect_failed(session, ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("Peer: {peer}"));
        spans_attempt_failed(ctx, &e);
        attempt::proxy_failed(session, ctx, e, client_reused)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream_request::build(session, upstream, ctx)?;
        match ctx.exchange(session) {
            Some((route, mut x)) => route.policies.upstream_request(&mut x, upstream),
            None => Ok(()),
        }
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(a) = ctx
            .policy
            .trace
            .as_deref_mut()
            .and_then(|r| r.current_attempt())
        {
            a.response = Some((Instant::now(), resp.status.as_u16()));
        }
        attempt::answered(session, ctx, resp)?;
        cache_phases::upstream_response(session, &mut ctx.cache, resp);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        forwarding::strip_response_hop_headers(resp);
        let policy = ctx.config.cache_policy();
        cache_phases::response(policy, session, &ctx.cache, resp)?;
        if let Some((route, mut x)) = ctx.exchange(session) {
            route.policies.response(&mut x, resp)?;
        }
        let rt = ctx.config.rt();
        let req = session.req_header();
        if rt.caching && cache::is_unsafe(&req.method) && resp.status.as_u16() < 400 {
            let host = request_host(req).unwrap_or_default();
            let n = cache::purge::invalidate(rt, host, req, resp);
            if n > 0 {
                log::debug!(
                    "request {}: invalidated {n} cached responses",
                    ctx.request_id
                );
            }
        }
        resp.insert_header(ctx.request_id.header.clone(), ctx.request_id.header_value())?;
        let route = ctx.route().map(|r| r.name.as_str());
        if let Some(summary) = crate::policy::pipeline::explain_value(&ctx.policy, route) {
            if let Ok(v) = http::HeaderValue::from_str(&summary) {
                resp.insert_header(crate::observe::spans::EXPLAIN_HEADER, v)?;
            }
        }
        if let Some(v) = ctx.hsts.take() {
            resp.insert_header(http::header::STRICT_TRANSPORT_SECURITY, v)?;
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
        let late = ctx.attempt.deadline.is_some_and(|d| Instant::now() >= d);
        if !end_of_stream && late && !session.was_upgraded() {
            // The response has started: all the deadline can do is end it here.
            return Error::e_explain(
                ErrorType::Custom(failures::DEADLINE),
                "while sending the body",
            );
        }
        if let Some((route, mut x)) = ctx.exchange(session) {
            route.policies.response_body(&mut x, body, end_of_stream)?;
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
        attempt::connected(ctx, reused);
        if let Some(a) = ctx
            .policy
            .trace
            .as_deref_mut()
            .and_then(|r| r.current_attempt())
        {
            a.connected = Some((Instant::now(), reused));
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        connection::request_done();
        attempt::finished(ctx);
        logging::record_metrics(session, ctx);
        if let Some(log) = self.access_log.as_ref().and_then(|l| l.get()) {
            logging::write_access_line(log, session, ctx);
        }
        logging::send_spans(session, ctx);
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let upstream = ctx.pool().map_or("", |p| p.name.as_str());
        let (mut status, message) = describe(e, upstream);
        if status > 0 && session.response_written().is_none() {
            session.set_keepalive(None);
            let fallback = ctx
                .route()
                .and_then(|r| r.fallback.as_ref())
                .filter(|_| fast_fail(e));
            let sent = if let Some((code, body)) = fallback {
                status = *code;
                error_response::reply(session, status, body.clone(), &ctx.request_id, &[]).await
            } else {
                let retry_after = match e.etype() {
                    ErrorType::Custom(BREAKER_OPEN) => {
                        Some(ctx.attempt.breaker_retry_after.to_string())
                    }
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

/// A traced request's current attempt ends with `e`.
fn spans_attempt_failed(ctx: &mut Ctx, e: &Error) {
    if let Some(a) = ctx
        .policy
        .trace
        .as_deref_mut()
        .and_then(|r| r.current_attempt())
    {
        a.error = Some(e.etype().as_str().to_string());
        a.end = Some(Instant::now());
    }
}
