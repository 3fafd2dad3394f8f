//! The `Cache-Status` response header (RFC 9211).

use super::RequestState;
use pingora_cache::{CachePhase, HttpCache};
use std::fmt::Write;
use std::time::SystemTime;

const NAME: &str = "portico";

/// Seconds of freshness left (negative once stale).
fn ttl(cache: &HttpCache) -> Option<i64> {
    let meta = cache.maybe_cache_meta()?;
    let now = SystemTime::now();
    let until = meta.fresh_until();
    Some(match until.duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    })
}

/// The header value for this response, or `None` when the route does not cache.
pub fn render(cache: &HttpCache, state: &RequestState, status: u16) -> Option<String> {
    if !state.active {
        return None;
    }
    let mut v = String::with_capacity(64);
    v.push_str(NAME);
    let fwd = state.fwd.unwrap_or("uri-miss");
    match cache.phase() {
        CachePhase::Hit => {
            v.push_str("; hit");
            if let Some(t) = ttl(cache) {
                let _ = write!(v, "; ttl={t}");
            }
        }
        CachePhase::StaleUpdating => {
            v.push_str("; hit");
            if let Some(t) = ttl(cache) {
                let _ = write!(v, "; ttl={t}");
            }
            v.push_str("; detail=stale-while-revalidate");
        }
        CachePhase::Stale => {
            // The status of the failed upstream answer this response stands in for; none
            // when the upstream gave no answer at all (RFC 9211 §2.5).
            v.push_str("; fwd=stale");
            if let Some(s) = state.upstream_status {
                let _ = write!(v, "; fwd-status={s}");
            }
            if let Some(t) = ttl(cache) {
                let _ = write!(v, "; ttl={t}");
            }
            v.push_str("; detail=stale-if-error");
        }
        CachePhase::Revalidated => {
            let _ = write!(v, "; fwd={fwd}; fwd-status=304");
            if let Some(t) = ttl(cache) {
                let _ = write!(v, "; ttl={t}");
            }
        }
        CachePhase::RevalidatedNoCache(_) => {
            let _ = write!(v, "; fwd={fwd}; fwd-status=304");
        }
        CachePhase::Miss | CachePhase::Expired => {
            let _ = write!(v, "; fwd={fwd}; fwd-status={status}; stored");
        }
        CachePhase::Disabled(reason) => {
            if state.bypassed {
                v.push_str("; fwd=bypass");
            } else {
                let _ = write!(v, "; fwd={fwd}; fwd-status={status}");
                let detail = state.detail.unwrap_or_else(|| reason.as_str());
                let _ = write!(v, "; detail={detail}");
            }
        }
        CachePhase::Bypass | CachePhase::Uninit | CachePhase::CacheKey => {
            v.push_str("; fwd=bypass");
        }
    }
    if cache.lock_duration().is_some() {
        v.push_str("; collapsed");
    }
    Some(v)
}
