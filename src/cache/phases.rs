//! What the gateway does in each of Pingora's cache phases for a route that caches: the
//! proxy's cache callbacks call these and nothing else.

use super::rules::{self, RequestDirectives, RequestFacts};
use super::{status, updated_header, Engine, RequestState, RoutePolicy};
use crate::request_parts::request_host;
use crate::router::normalize_host;
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, NoCacheReason,
    RespCacheable,
};
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::time::SystemTime;

/// `request_cache_filter`: switch the cache on for a request the route may answer from it.
pub fn enable(policy: &RoutePolicy, engine: Engine, session: &mut Session, st: &mut RequestState) {
    let req = session.req_header();
    // An upgrade (WebSocket) is a conversation, not a response to store.
    if !policy.serves(&req.method) || session.is_upgrade_req() {
        return;
    }
    st.active = true;
    if policy.bypassed(req) {
        st.bypassed = true;
        return;
    }
    st.directives = RequestDirectives::parse(req);
    let mut overrides = CacheOptionOverrides::default();
    overrides.wait_timeout = Some(policy.lock_timeout);
    session.cache.enable(
        engine.store,
        Some(engine.eviction),
        None,
        Some(engine.lock),
        Some(overrides),
    );
}

/// `cache_key_callback`: the key from the canonical host and URL.
pub fn key(policy: &RoutePolicy, req: &RequestHeader) -> CacheKey {
    let host = request_host(req).map(normalize_host).unwrap_or_default();
    policy.key.cache_key(&host, req.uri.path(), req.uri.query())
}

/// `cache_miss`: Pingora's miss, and why the request goes upstream.
pub fn miss(session: &mut Session, st: &mut RequestState) {
    session.cache.cache_miss();
    let vary = session.cache.cache_key().variance_bin().is_some();
    st.fwd
        .get_or_insert(if vary { "vary-miss" } else { "uri-miss" });
}

/// `cache_hit_filter`: what the request's own directives say of a stored response.
pub fn hit(
    policy: Option<&RoutePolicy>,
    st: &mut RequestState,
    meta: &CacheMeta,
    is_fresh: bool,
) -> Option<ForcedFreshness> {
    let targeted = policy.map_or(&[][..], |p| &p.limits.targeted);
    let forced = st
        .directives
        .as_ref()
        .and_then(|d| d.judge(meta, is_fresh, SystemTime::now(), targeted));
    match forced {
        Some(ForcedFreshness::ForceExpired) => st.fwd = Some("request"),
        None if !is_fresh => st.fwd = Some("stale"),
        _ => {}
    }
    forced
}

/// `cache_vary_filter`: the variant of a request.
pub fn vary(
    policy: Option<&RoutePolicy>,
    meta: &CacheMeta,
    req: &RequestHeader,
    consumer: Option<&str>,
) -> Option<HashBinary> {
    policy?.key.variance(req, consumer, meta)
}

/// `response_cache_filter`: whether and how long the response may be stored.
pub fn storable(
    policy: Option<&RoutePolicy>,
    st: &mut RequestState,
    req: &RequestHeader,
    resp: &ResponseHeader,
    authenticated: bool,
) -> RespCacheable {
    let merged;
    let resp = match st.revalidated_fields.take() {
        Some(fields) => {
            merged = updated_header(resp, &fields);
            &merged
        }
        None => resp,
    };
    let Some(policy) = policy else {
        return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled);
    };
    // Credentials the gateway verified (`authenticated`); an Authorization it did not look
    // at follows RFC 9111 §3.5 (stored when the response says it may be shared).
    let facts = RequestFacts {
        credentials: req.headers.contains_key(http::header::AUTHORIZATION),
        // One caller's answer goes to another only where the key separates them or the
        // route says its answers are the same for everyone.
        personal: authenticated && !policy.key.per_consumer() && !policy.share_authenticated,
        no_store: st.directives.as_ref().is_some_and(|d| d.no_store),
    };
    match rules::storable(resp, &facts, &policy.limits, SystemTime::now()) {
        Ok(meta) => RespCacheable::Cacheable(meta),
        Err(reason) => {
            st.detail = Some(reason);
            RespCacheable::Uncacheable(NoCacheReason::Custom(reason))
        }
    }
}

/// `should_serve_stale`: which failures a stored response may stand in for.
pub fn serve_stale(st: &mut RequestState, error: Option<&Error>) -> bool {
    let Some(e) = error else {
        return true;
    };
    // For Cache-Status' fwd-status: what the upstream answered, if it answered.
    st.upstream_status = match e.etype() {
        ErrorType::HTTPStatus(s) => Some(*s),
        _ => None,
    };
    // The stored response's own stale-while-revalidate / stale-if-error window has been
    // checked already; what is left is which failures count as errors (RFC 5861 §4).
    e.esource() == &ErrorSource::Upstream
        || matches!(e.etype(), ErrorType::HTTPStatus(500 | 502 | 503 | 504))
}

/// `only-if-cached` with nothing stored: 504 without asking the upstream.
pub fn only_if_cached(st: &RequestState, session: &Session) -> bool {
    let only = st.directives.as_ref().is_some_and(|d| d.only_if_cached);
    only && session.subrequest_ctx.is_none()
}

/// `upstream_response_filter`: a 304 that revalidates a stored response.
pub fn upstream_response(session: &Session, st: &mut RequestState, resp: &ResponseHeader) {
    st.upstream_status = Some(resp.status.as_u16());
    if resp.status == http::StatusCode::NOT_MODIFIED && session.cache.phase() == CachePhase::Stale {
        st.revalidated_fields = Some(resp.headers.clone());
    }
}

/// `response_filter`: `Cache-Status`, the route's own targeted field removed.
pub fn response(
    policy: Option<&RoutePolicy>,
    session: &mut Session,
    st: &RequestState,
    resp: &mut ResponseHeader,
) -> Result<()> {
    if let Some(v) = status::render(&session.cache, st, resp.status.as_u16()) {
        resp.insert_header("cache-status", v)?;
    }
    if let Some(own) = policy.and_then(|p| p.own_field.as_ref()) {
        resp.remove_header(own);
    }
    if session.cache.phase() == CachePhase::Stale {
        // A stored response stands in for a failed upstream; Pingora does not reuse the
        // client connection after that, so say so rather than leave the client to find a
        // closed connection under its next request.
        session.set_keepalive(None);
    }
    Ok(())
}
