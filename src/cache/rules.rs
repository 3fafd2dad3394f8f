//! RFC 9111 shared-cache rules: whether a response may be stored and for how long, and what a
//! request's own `Cache-Control` asks of a stored response.

use httpdate::HttpDate;
use pingora_cache::cache_control::{CacheControl, DirectiveKey, InterpretCacheControl};
use pingora_cache::{CacheMeta, ForcedFreshness};
use pingora_http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime};

/// Status codes a cache may store without explicit freshness (RFC 9110 §15.1), 206 aside:
/// the gateway always fetches whole representations.
fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// What the route allows, as far as these rules need it.
pub struct StoreLimits {
    /// Responses whose Content-Length exceeds this are not stored.
    pub max_object_size: usize,
    pub default_ttl: Option<Duration>,
    pub max_ttl: Option<Duration>,
    pub allow_set_cookie: bool,
    /// Targeted cache-control fields (RFC 9213), in order of precedence: the first one a
    /// response carries with a valid value replaces its Cache-Control and Expires.
    pub targeted: Vec<String>,
}

/// Facts about the request a response answers.
pub struct RequestFacts {
    /// `Authorization` was sent: the response must say it may be shared (RFC 9111 §3.5).
    pub credentials: bool,
    /// The caller was authenticated, the key does not separate callers and the route did
    /// not opt in to sharing: the response may be personal and is never stored.
    pub personal: bool,
    /// The request said `no-store`.
    pub no_store: bool,
}

/// The cache-control directives that govern a response for this cache, and whether they
/// came from a targeted field (RFC 9213 §2.1), which also sets Expires aside.
pub fn response_directives(
    resp: &ResponseHeader,
    targeted: &[String],
) -> (Option<CacheControl>, bool) {
    for name in targeted {
        if let Some(cc) = CacheControl::from_resp_headers_named(name, resp) {
            if !cc.directives.is_empty() {
                return (Some(cc), true);
            }
        }
    }
    (CacheControl::from_resp_headers(resp), false)
}

fn delta(cc: &CacheControl, key: DirectiveKey) -> Option<Result<u64, ()>> {
    match cc.directives.get(&key)? {
        Some(v) => Some(v.parse_as_delta_seconds().map(u64::from).map_err(|_| ())),
        None => Some(Err(())),
    }
}

fn http_date(resp: &ResponseHeader, name: http::HeaderName) -> Option<Result<SystemTime, ()>> {
    let mut values = resp.headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Err(()));
    }
    Some(
        first
            .to_str()
            .ok()
            .and_then(|s| s.parse::<HttpDate>().ok())
            .map(SystemTime::from)
            .ok_or(()),
    )
}

/// The freshness lifetime the origin gave (§4.2.1), or `None` when it gave none. Invalid
/// values count as stale (lifetime 0), as §4.2.1 encourages.
fn explicit_lifetime(
    cc: Option<&CacheControl>,
    targeted: bool,
    resp: &ResponseHeader,
    now: SystemTime,
) -> Option<u64> {
    if let Some(cc) = cc {
        if cc.no_cache() {
            return Some(0);
        }
        for key in [DirectiveKey::SMaxAge, DirectiveKey::MaxAge] {
            if let Some(v) = delta(cc, key) {
                return Some(v.unwrap_or(0));
            }
        }
    }
    if targeted {
        return None;
    }
    let expires = http_date(resp, http::header::EXPIRES)?;
    let Ok(expires) = expires else {
        return Some(0);
    };
    let date = match http_date(resp, http::header::DATE) {
        Some(Ok(d)) => d,
        _ => now,
    };
    Some(expires.duration_since(date).map_or(0, |d| d.as_secs()))
}

/// Age the response already had when it arrived (§4.2.3).
fn initial_age(resp: &ResponseHeader, now: SystemTime) -> u64 {
    // A list (`Age: 7200, 0`) counts by its first value (RFC 9111 §5.1).
    let age_value = resp
        .headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let apparent = match http_date(resp, http::header::DATE) {
        Some(Ok(date)) => now.duration_since(date).map_or(0, |d| d.as_secs()),
        _ => 0,
    };
    age_value.max(apparent)
}

/// Whether a stored response with these directives must never be served stale.
pub fn requires_revalidation(cc: &CacheControl) -> bool {
    cc.no_cache()
        || cc.must_revalidate()
        || cc.proxy_revalidate()
        || cc.has_directive(&DirectiveKey::SMaxAge)
}

fn stale_window(cc: Option<&CacheControl>, key: DirectiveKey) -> u32 {
    match cc {
        Some(cc) if !requires_revalidation(cc) => match delta(cc, key) {
            Some(Ok(s)) => s.min(u64::from(u32::MAX)) as u32,
            _ => 0,
        },
        _ => 0,
    }
}

/// Decide whether `resp` may be stored by a shared cache; on success the metadata to store,
/// otherwise the reason, short enough for `Cache-Status: detail=`.
pub fn storable(
    resp: &ResponseHeader,
    req: &RequestFacts,
    limits: &StoreLimits,
    now: SystemTime,
) -> Result<CacheMeta, &'static str> {
    let status = resp.status.as_u16();
    if status == 206 {
        return Err("partial-content");
    }
    let declared = resp
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limits.max_object_size) {
        return Err("too-large");
    }
    if req.no_store {
        return Err("request-no-store");
    }
    if req.personal {
        return Err("authenticated");
    }
    let (cc, targeted) = response_directives(resp, &limits.targeted);
    if let Some(cc) = &cc {
        if cc.no_store() {
            return Err("no-store");
        }
        if cc.private() {
            return Err("private");
        }
    }
    if req.credentials
        && !cc
            .as_ref()
            .is_some_and(|cc| cc.allow_caching_authorized_req())
    {
        return Err("authorization");
    }
    let vary_star = resp
        .headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == "*");
    if vary_star {
        return Err("vary-star");
    }
    if !limits.allow_set_cookie && resp.headers.contains_key(http::header::SET_COOKIE) {
        return Err("set-cookie");
    }
    let public = cc.as_ref().is_some_and(|cc| cc.public());
    let lifetime = match explicit_lifetime(cc.as_ref(), targeted, resp, now) {
        Some(l) => l,
        None => match limits.default_ttl {
            Some(ttl) if heuristically_cacheable(status) || public => ttl.as_secs(),
            _ => return Err("no-freshness"),
        },
    };
    let lifetime = match limits.max_ttl {
        Some(max) => lifetime.min(max.as_secs()),
        None => lifetime,
    };
    let has_validator = resp.headers.contains_key(http::header::ETAG)
        || resp.headers.contains_key(http::header::LAST_MODIFIED);
    let swr = stale_window(cc.as_ref(), DirectiveKey::StaleWhileRevalidate);
    let sie = stale_window(cc.as_ref(), DirectiveKey::StaleIfError);
    let age = initial_age(resp, now);
    let epoch = now.checked_sub(Duration::from_secs(age)).unwrap_or(now);
    // When the response became stale, even if that was before it arrived: the stale
    // windows run from that moment (RFC 5861 §3-4, RFC 9111 §4.2.3), not from arrival.
    let fresh_until = epoch
        .checked_add(Duration::from_secs(lifetime))
        .unwrap_or(epoch);
    let stale_for = now.duration_since(fresh_until).map_or(0, |d| d.as_secs());
    let usable_stale = stale_for < u64::from(swr.max(sie));
    if lifetime <= age && !has_validator && !usable_stale {
        // Stale on arrival, past its stale windows and nothing to revalidate with: storing
        // would only cost memory.
        return Err("stale-on-arrival");
    }
    let mut header = resp.clone();
    if let Some(cc) = &cc {
        cc.strip_private_headers(&mut header);
    }
    // Pingora reads a stored response as fresh while `fresh_until >= now`.
    let fresh_until = if lifetime > age {
        fresh_until
    } else {
        fresh_until.min(now.checked_sub(Duration::from_secs(1)).unwrap_or(now))
    };
    let mut meta = CacheMeta::new(fresh_until, now, swr, sie, header);
    if age > 0 {
        meta.set_epoch_override(epoch);
    }
    Ok(meta)
}

/// The request's `Cache-Control` directives that change how a stored response is used.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestDirectives {
    pub no_cache: bool,
    pub no_store: bool,
    pub max_age: Option<u64>,
    /// `Some(None)`: any staleness is acceptable.
    pub max_stale: Option<Option<u64>>,
    pub min_fresh: Option<u64>,
    pub only_if_cached: bool,
}

impl RequestDirectives {
    /// `None` when the request says nothing about caching.
    pub fn parse(req: &RequestHeader) -> Option<Self> {
        let Some(cc) = CacheControl::from_req_headers(req) else {
            // Pragma counts only without Cache-Control (RFC 9111 §5.4).
            let pragma_no_cache = req
                .headers
                .get_all(http::header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| {
                    v.split(',')
                        .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
                });
            return pragma_no_cache.then(|| RequestDirectives {
                no_cache: true,
                ..Self::default()
            });
        };
        let max_stale = match cc
            .directives
            .get(&DirectiveKey::Unknown("max-stale".into()))
        {
            None => None,
            Some(None) => Some(None),
            // An unreadable limit grants nothing.
            Some(Some(v)) => v.parse_as_delta_seconds().ok().map(|s| Some(u64::from(s))),
        };
        Some(RequestDirectives {
            no_cache: cc.has_directive(&DirectiveKey::NoCache),
            no_store: cc.no_store(),
            // An unreadable max-age asks for the most caution: revalidate.
            max_age: delta(&cc, DirectiveKey::MaxAge).map(|v| v.unwrap_or(0)),
            max_stale,
            min_fresh: delta(&cc, DirectiveKey::Unknown("min-fresh".into())).and_then(Result::ok),
            only_if_cached: cc.only_if_cached(),
        })
    }

    /// What these directives make of a stored response; `None` leaves its freshness alone.
    pub fn judge(
        &self,
        meta: &CacheMeta,
        is_fresh: bool,
        now: SystemTime,
        targeted: &[String],
    ) -> Option<ForcedFreshness> {
        if self.no_cache {
            return Some(ForcedFreshness::ForceExpired);
        }
        let age = meta.age().as_secs();
        if self.max_age.is_some_and(|max| age > max) {
            return Some(ForcedFreshness::ForceExpired);
        }
        let fresh_until = meta.fresh_until();
        if let Some(min) = self.min_fresh {
            let left = fresh_until.duration_since(now).map_or(0, |d| d.as_secs());
            if left < min {
                return Some(ForcedFreshness::ForceExpired);
            }
        }
        if !is_fresh {
            if let Some(limit) = self.max_stale {
                let stale_for = now.duration_since(fresh_until).map_or(0, |d| d.as_secs());
                let forbidden = response_directives(meta.response_header(), targeted)
                    .0
                    .is_some_and(|cc| requires_revalidation(&cc));
                if !forbidden && limit.is_none_or(|l| stale_for <= l) {
                    return Some(ForcedFreshness::ForceFresh);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    const NO_LIMITS: StoreLimits = StoreLimits {
        max_object_size: usize::MAX,
        default_ttl: None,
        max_ttl: None,
        allow_set_cookie: false,
        targeted: Vec::new(),
    };
    const PLAIN: RequestFacts = RequestFacts {
        credentials: false,
        personal: false,
        no_store: false,
    };

    fn ttl(r: &ResponseHeader, limits: &StoreLimits) -> Result<u64, &'static str> {
        let now = SystemTime::now();
        storable(r, &PLAIN, limits, now).map(|m| {
            m.fresh_until()
                .duration_since(now)
                .map_or(0, |d| d.as_secs())
        })
    }

    #[test]
    fn s_maxage_over_max_age_over_expires() {
        let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(500));
        let both = resp(
            200,
            &[
                ("cache-control", "max-age=100, s-maxage=200"),
                ("expires", &expires),
            ],
        );
        assert_eq!(ttl(&both, &NO_LIMITS), Ok(200));
        let max_age = resp(
            200,
            &[("cache-control", "max-age=100"), ("expires", &expires)],
        );
        assert_eq!(ttl(&max_age, &NO_LIMITS), Ok(100));
        let only_expires = resp(200, &[("expires", &expires)]);
        let t = ttl(&only_expires, &NO_LIMITS).unwrap();
        assert!((498..=500).contains(&t), "{t}");
    }

    #[test]
    fn malformed_values_make_a_stale_entry() {
        let bad = resp(200, &[("cache-control", "max-age=soon"), ("etag", "\"a\"")]);
        assert_eq!(ttl(&bad, &NO_LIMITS), Ok(0));
        let bad_expires = resp(200, &[("expires", "yesterday"), ("etag", "\"a\"")]);
        assert_eq!(ttl(&bad_expires, &NO_LIMITS), Ok(0));
        let unknown = resp(200, &[("cache-control", "frobnicate=7, max-age=9")]);
        assert_eq!(ttl(&unknown, &NO_LIMITS), Ok(9));
    }

    #[test]
    fn status_codes_need_explicit_freshness_unless_heuristic() {
        let limits = StoreLimits {
            default_ttl: Some(Duration::from_secs(30)),
            ..NO_LIMITS
        };
        assert_eq!(ttl(&resp(404, &[]), &limits), Ok(30));
        assert_eq!(ttl(&resp(302, &[]), &limits), Err("no-freshness"));
        assert_eq!(
            ttl(&resp(302, &[("cache-control", "max-age=5")]), &limits),
            Ok(5)
        );
        assert_eq!(ttl(&resp(200, &[]), &NO_LIMITS), Err("no-freshness"));
        assert_eq!(
            ttl(&resp(206, &[("cache-control", "max-age=5")]), &limits),
            Err("partial-content")
        );
    }

    #[test]
    fn authorization_needs_explicit_permission() {
        let now = SystemTime::now();
        let creds = RequestFacts {
            credentials: true,
            personal: false,
            no_store: false,
        };
        let plain = resp(200, &[("cache-control", "max-age=60")]);
        assert_eq!(
            storable(&plain, &creds, &NO_LIMITS, now).err(),
            Some("authorization")
        );
        let public = resp(200, &[("cache-control", "public, max-age=60")]);
        assert!(storable(&public, &creds, &NO_LIMITS, now).is_ok());
        let personal = RequestFacts {
            personal: true,
            ..creds
        };
        assert_eq!(
            storable(&public, &personal, &NO_LIMITS, now).err(),
            Some("authenticated")
        );
    }

    #[test]
    fn stale_windows_run_from_staleness_and_age_lists_count_their_first_value() {
        let now = SystemTime::now();
        let stale_long_ago = resp(
            200,
            &[
                (
                    "cache-control",
                    "max-age=1, stale-while-revalidate=10, stale-if-error=10",
                ),
                ("age", "100"),
            ],
        );
        // Stale for 99 s when it arrives: past both 10 s windows, nothing to revalidate.
        assert_eq!(
            storable(&stale_long_ago, &PLAIN, &NO_LIMITS, now).err(),
            Some("stale-on-arrival")
        );
        let with_validator = resp(
            200,
            &[
                ("cache-control", "max-age=1, stale-while-revalidate=10"),
                ("age", "100"),
                ("etag", "\"v1\""),
            ],
        );
        let meta = storable(&with_validator, &PLAIN, &NO_LIMITS, now).unwrap();
        assert!(!meta.serve_stale_while_revalidate(now));
        let recent = resp(
            200,
            &[
                ("cache-control", "max-age=1, stale-if-error=10"),
                ("age", "5"),
            ],
        );
        let meta = storable(&recent, &PLAIN, &NO_LIMITS, now).unwrap();
        assert!(meta.serve_stale_if_error(now));
        assert!(!meta.serve_stale_if_error(now + Duration::from_secs(7)));
        let listed = resp(200, &[("cache-control", "max-age=60"), ("age", "7200, 0")]);
        assert_eq!(
            storable(&listed, &PLAIN, &NO_LIMITS, now).err(),
            Some("stale-on-arrival")
        );
    }

    #[test]
    fn targeted_fields_take_precedence() {
        let limits = StoreLimits {
            targeted: vec!["portico-cache-control".into(), "cdn-cache-control".into()],
            ..NO_LIMITS
        };
        let r = resp(
            200,
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=30"),
                ("portico-cache-control", "max-age=20"),
            ],
        );
        assert_eq!(ttl(&r, &limits), Ok(20));
        let r = resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "no-store"),
            ],
        );
        assert_eq!(ttl(&r, &limits), Err("no-store"));
        // A targeted field sets Expires aside too.
        let r = resp(
            200,
            &[
                ("cdn-cache-control", "public"),
                ("expires", "Thu, 01 Jan 2099 00:00:00 GMT"),
            ],
        );
        assert_eq!(ttl(&r, &limits), Err("no-freshness"));
        // Without the targeted list, Cache-Control decides.
        let r = resp(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("cdn-cache-control", "no-store"),
            ],
        );
        assert_eq!(ttl(&r, &NO_LIMITS), Ok(60));
    }

    #[test]
    fn request_directives_parse() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("cache-control", "max-stale, min-fresh=5, max-age=oops")
            .unwrap();
        let d = RequestDirectives::parse(&req).unwrap();
        assert_eq!(d.max_stale, Some(None));
        assert_eq!(d.min_fresh, Some(5));
        assert_eq!(d.max_age, Some(0));
        let mut pragma = RequestHeader::build("GET", b"/", None).unwrap();
        pragma.insert_header("pragma", "no-cache").unwrap();
        assert!(RequestDirectives::parse(&pragma).unwrap().no_cache);
    }
}
