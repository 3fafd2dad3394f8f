//! Response caching: the store, per-route policies, and the RFC 9111 / RFC 9211 logic the
//! gateway's cache phases call.

pub mod key;
pub mod phases;
pub mod purge;
pub mod rules;
pub mod status;
pub mod store;

use crate::config::{CacheSection, RouteCache, TokenSource};
use crate::request_parts;
use key::KeySpec;
use pingora_cache::eviction::lru;
use pingora_cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora_http::RequestHeader;
use rules::{RequestDirectives, StoreLimits};
use std::sync::OnceLock;
use std::time::Duration;
use store::{MemoryStore, SHARDS};

/// Entries the LRU preallocates room for per shard.
const LRU_CAPACITY_PER_SHARD: usize = 1024;

/// The process-wide cache. Pingora wants `'static` storage, eviction and lock; they are made
/// once and outlive any config, so a reload keeps what is cached.
#[derive(Clone, Copy)]
pub struct Engine {
    pub store: &'static MemoryStore,
    pub eviction: &'static lru::Manager<SHARDS>,
    pub lock: &'static CacheKeyLockImpl,
    pub purge_method: bool,
}

struct Statics {
    store: &'static MemoryStore,
    eviction: &'static lru::Manager<SHARDS>,
    lock: &'static CacheLock,
}

static STATICS: OnceLock<Statics> = OnceLock::new();

impl Engine {
    /// The process's cache, sized by `section` (a later config may change the budget).
    pub fn get(section: &CacheSection) -> Engine {
        let budget = usize::try_from(section.memory.0).unwrap_or(usize::MAX);
        let s = STATICS.get_or_init(|| {
            let eviction: &'static lru::Manager<SHARDS> = Box::leak(Box::new(
                lru::Manager::with_capacity(budget, LRU_CAPACITY_PER_SHARD),
            ));
            Statics {
                store: Box::leak(Box::new(MemoryStore::new(eviction))),
                eviction,
                // A fill that takes longer than this stops holding readers back.
                lock: Box::leak(Box::new(CacheLock::new(section.lock_timeout.0))),
            }
        });
        s.eviction.set_weight_limit(budget);
        s.store
            .set_max_object_size(usize::try_from(section.max_object_size.0).unwrap_or(usize::MAX));
        Engine {
            store: s.store,
            eviction: s.eviction,
            lock: s.lock,
            purge_method: section.purge_method,
        }
    }
}

/// A route's cache policy, compiled at load.
pub struct RoutePolicy {
    pub get: bool,
    pub head: bool,
    pub limits: StoreLimits,
    pub key: KeySpec,
    bypass: Vec<TokenSource>,
    pub lock_timeout: Duration,
    pub share_authenticated: bool,
    /// The gateway's own targeted field, removed from responses to clients.
    pub own_field: Option<http::HeaderName>,
}

impl RoutePolicy {
    /// `None` when the route's cache is switched off; `Err` names the faulty field.
    pub fn build(c: &RouteCache, section: &CacheSection) -> Result<Option<Self>, (String, String)> {
        if !c.enabled {
            return Ok(None);
        }
        let (mut get, mut head) = (false, false);
        for (i, m) in c.methods.iter().enumerate() {
            match m.to_ascii_uppercase().as_str() {
                "GET" => get = true,
                "HEAD" => head = true,
                _ => {
                    return Err((
                        format!("methods[{i}]"),
                        format!("{m:?} cannot be served from a cache; use GET and/or HEAD"),
                    ))
                }
            }
        }
        if let (Some(d), Some(m)) = (c.default_ttl, c.max_ttl) {
            if d > m {
                return Err((
                    "default_ttl".into(),
                    format!("{d} is longer than max_ttl {m}"),
                ));
            }
        }
        let key = KeySpec::new(&c.key).map_err(|e| ("key.headers".to_string(), e))?;
        let own_field = match section.targeted_field.as_str() {
            "" => None,
            name => Some(http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                (
                    "targeted_field".to_string(),
                    format!("cache.targeted_field {name:?} is not a header name"),
                )
            })?),
        };
        if c.bypass.iter().any(|b| matches!(b, TokenSource::Bearer)) {
            return Err((
                "bypass".into(),
                "use {header: NAME}, {cookie: NAME} or {query: NAME}".into(),
            ));
        }
        Ok(Some(RoutePolicy {
            get,
            head,
            limits: StoreLimits {
                max_object_size: usize::try_from(section.max_object_size.0).unwrap_or(usize::MAX),
                default_ttl: c.default_ttl.map(|d| d.0),
                max_ttl: c.max_ttl.map(|d| d.0),
                allow_set_cookie: c.allow_set_cookie,
                targeted: own_field
                    .iter()
                    .map(|h| h.as_str().to_string())
                    .chain(std::iter::once("cdn-cache-control".to_string()))
                    .collect(),
            },
            key,
            bypass: c.bypass.clone(),
            lock_timeout: c.lock_timeout.unwrap_or(section.lock_timeout).0,
            share_authenticated: c.share_authenticated,
            own_field,
        }))
    }

    pub fn serves(&self, method: &http::Method) -> bool {
        (self.get && method == http::Method::GET) || (self.head && method == http::Method::HEAD)
    }

    /// Whether a bypass condition holds for this request.
    pub fn bypassed(&self, req: &RequestHeader) -> bool {
        self.bypass.iter().any(|b| match b {
            TokenSource::Header(h) => req.headers.contains_key(h.as_str()),
            TokenSource::Cookie(c) => request_parts::cookie(req, c).is_some(),
            TokenSource::Query(q) => request_parts::query_param(req, q).is_some(),
            TokenSource::Bearer => false,
        })
    }
}

/// How one request used the cache, for `Cache-Status` and the log.
#[derive(Debug, Default)]
pub struct RequestState {
    pub directives: Option<RequestDirectives>,
    /// Why the request went upstream: `uri-miss`, `vary-miss`, `request`, `stale`.
    pub fwd: Option<&'static str>,
    /// Why the response was not stored, or why the cache was skipped.
    pub detail: Option<&'static str>,
    pub bypassed: bool,
    /// The route caches, so the response gets a `Cache-Status`.
    pub active: bool,
    /// Header fields of a 304 that revalidated the stored response.
    pub revalidated_fields: Option<http::HeaderMap>,
    /// The status the upstream answered, for `fwd-status` when a stored response is
    /// served in its place.
    pub upstream_status: Option<u16>,
}

/// Fields a 304 may not change in the stored response (RFC 9111 §3.2): framing and
/// hop-by-hop fields.
fn keeps_stored_value(name: &http::HeaderName) -> bool {
    use http::header::*;
    [
        CONTENT_LENGTH,
        CONTENT_ENCODING,
        CONTENT_RANGE,
        TRANSFER_ENCODING,
        CONNECTION,
        TE,
        TRAILER,
        UPGRADE,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

/// The stored header updated with every field of the 304 that revalidated it (RFC 9111
/// §4.3.4), where Pingora alone would update only the caching fields.
pub fn updated_header(
    stored: &pingora_http::ResponseHeader,
    fields: &http::HeaderMap,
) -> pingora_http::ResponseHeader {
    let mut header = stored.clone();
    for name in fields.keys() {
        if keeps_stored_value(name) {
            continue;
        }
        header.remove_header(name);
        for value in fields.get_all(name) {
            // Names and values came from a parsed response, so they are valid.
            let _ = header.append_header(name.clone(), value.clone());
        }
    }
    header
}

pub fn is_unsafe(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    )
}
