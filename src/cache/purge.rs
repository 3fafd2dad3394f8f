//! Removing stored responses by URL: purges from the admin API or `PURGE`, and the
//! invalidation RFC 9111 §4.4 asks for after an unsafe request succeeds.

use super::store::MemoryStore;
use super::RoutePolicy;
use crate::router::normalize_host;
use http::{HeaderMap, Uri};

/// The routes of a config as purges see them.
pub trait CachedRoutes {
    /// The cache policy of the route that serves GET for `host` and `path`.
    fn cache_policy(&self, host: &str, path: &str, headers: &HeaderMap) -> Option<&RoutePolicy>;
    fn store(&self) -> &MemoryStore;
}

/// Drop every stored response (all variants) of one URL, keyed the way the route that serves
/// GET for it keys; returns how many were dropped.
pub fn url(
    routes: &impl CachedRoutes,
    host: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> usize {
    let host = normalize_host(host);
    let Some(policy) = routes.cache_policy(&host, path, headers) else {
        return 0;
    };
    let primary = super::key::primary_hash(policy.key.url(&host, path, query));
    routes.store().purge_family(&primary)
}

/// Host (normalised), path and query of an absolute `http(s)://` URL.
pub fn split_absolute(raw: &str) -> Option<(String, String, Option<String>)> {
    let uri: Uri = raw.parse().ok()?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return None;
    }
    let host = normalize_host(uri.authority()?.as_str()).into_owned();
    let path = match uri.path() {
        "" => "/".to_string(),
        p => p.to_string(),
    };
    Some((host, path, uri.query().map(str::to_string)))
}

/// After a successful unsafe request: drop the target URI and what `Location` and
/// `Content-Location` name on the same host.
pub fn invalidate(
    rt: &impl CachedRoutes,
    host: &str,
    req: &pingora_http::RequestHeader,
    resp: &pingora_http::ResponseHeader,
) -> usize {
    let mut n = url(rt, host, req.uri.path(), req.uri.query(), &req.headers);
    let own_host = normalize_host(host);
    for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
        let Some(v) = resp.headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let target = if v.starts_with('/') && !v.starts_with("//") {
            v.parse::<Uri>()
                .ok()
                .map(|u| (u.path().to_string(), u.query().map(str::to_string)))
        } else {
            // Only the same origin may be invalidated, so another host cannot be purged
            // by a response that names it.
            split_absolute(v)
                .filter(|(h, _, _)| *h == own_host)
                .map(|(_, p, q)| (p, q))
        };
        if let Some((path, query)) = target {
            n += url(rt, host, &path, query.as_deref(), &req.headers);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_absolute_urls() {
        assert_eq!(
            split_absolute("http://API.example.com:8080/p/1?x=2"),
            Some(("api.example.com".into(), "/p/1".into(), Some("x=2".into())))
        );
        assert_eq!(
            split_absolute("http://h"),
            Some(("h".into(), "/".into(), None))
        );
        assert_eq!(split_absolute("/relative"), None);
        assert_eq!(split_absolute("ftp://h/x"), None);
    }
}
