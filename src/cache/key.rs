//! Cache keys. The primary key is the URL as the route normalises it (host, path, query;
//! the host is validated, so it holds no `/` and `host` + `path` cannot be read two ways):
//! everything a purge or an invalidation can name. Whatever else separates responses (the
//! route's key headers and consumer, the origin's `Vary`) goes into the variance, so all
//! variants of one URL share a primary key and go together.

use crate::config::{CacheKeySpec, QueryKey};
use http::HeaderName;
use pingora_cache::key::{CacheHashKey, HashBinary};
use pingora_cache::{CacheKey, CacheMeta, VarianceBuilder};
use pingora_http::RequestHeader;

pub struct KeySpec {
    query: QueryKey,
    ignore_query: Vec<String>,
    headers: Vec<HeaderName>,
    consumer: bool,
}

impl KeySpec {
    pub fn new(spec: &CacheKeySpec) -> Result<Self, String> {
        let headers = spec
            .headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("{h:?} is not a valid header name"))
            })
            .collect::<Result<_, _>>()?;
        Ok(KeySpec {
            query: spec.query,
            ignore_query: spec.ignore_query.clone(),
            headers,
            consumer: spec.consumer,
        })
    }

    /// Whether the key separates callers, so per-caller responses can be stored.
    pub fn per_consumer(&self) -> bool {
        self.consumer
    }

    /// `host/path?query`, the query as the route's key wants it.
    pub fn url(&self, host: &str, path: &str, query: Option<&str>) -> String {
        let mut url =
            String::with_capacity(host.len() + path.len() + 1 + query.map_or(0, str::len));
        url.push_str(host);
        url.push_str(path);
        let Some(query) = query.filter(|q| !q.is_empty()) else {
            return url;
        };
        let kept = |pair: &&str| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !pair.is_empty() && !self.ignore_query.iter().any(|i| i == name)
        };
        match self.query {
            QueryKey::Ignore => {}
            QueryKey::Exact if self.ignore_query.is_empty() => {
                url.push('?');
                url.push_str(query);
            }
            QueryKey::Exact => push_query(&mut url, query.split('&').filter(kept)),
            QueryKey::Sorted => {
                let mut pairs: Vec<&str> = query.split('&').filter(kept).collect();
                pairs.sort_unstable();
                push_query(&mut url, pairs.into_iter());
            }
        }
        url
    }

    pub fn cache_key(&self, host: &str, path: &str, query: Option<&str>) -> CacheKey {
        CacheKey::new(self.url(host, path, query), "")
    }

    /// The variance of a request: the route's key headers and consumer, and the request
    /// headers the stored response names in `Vary`, and the Host's port.
    pub fn variance(
        &self,
        req: &RequestHeader,
        consumer: Option<&str>,
        meta: &CacheMeta,
    ) -> Option<HashBinary> {
        let mut b = VarianceBuilder::new();
        for name in &self.headers {
            b.add_owned_value(name.as_str(), joined(req, name.as_str()));
        }
        if self.consumer {
            b.add_value("\0consumer", consumer.unwrap_or(""));
        }
        // The primary key leaves the port out (purges name URLs without it), but the
        // upstream sees it in X-Forwarded-Host and Forwarded and may render it into links:
        // responses to another port are another variant. Always added, so that a request
        // without a port cannot take a variant stored for one as "nothing varies".
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()));
        b.add_value(
            "\0port",
            host.and_then(crate::canonical::host::port).unwrap_or(""),
        );
        for value in meta.headers().get_all(http::header::VARY) {
            let Ok(value) = value.to_str() else { continue };
            for field in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                let name = field.to_ascii_lowercase();
                let v = joined(req, &name);
                b.add_owned_name_value(name, v);
            }
        }
        b.finalize()
    }
}

fn push_query<'a>(url: &mut String, pairs: impl Iterator<Item = &'a str>) {
    let mut first = true;
    for pair in pairs {
        url.push(if first { '?' } else { '&' });
        url.push_str(pair);
        first = false;
    }
}

/// All values of a request header as one byte string, empty when absent.
fn joined(req: &RequestHeader, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, v) in req.headers.get_all(name).iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// The primary hash `CacheKey` gives a URL.
pub fn primary_hash(url: String) -> HashBinary {
    CacheKey::new(url, "").primary_bin()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(query: QueryKey, ignore: &[&str]) -> KeySpec {
        KeySpec::new(&CacheKeySpec {
            query,
            ignore_query: ignore.iter().map(|s| s.to_string()).collect(),
            headers: vec![],
            consumer: false,
        })
        .unwrap()
    }

    #[test]
    fn normalises_the_query() {
        let exact = spec(QueryKey::Exact, &[]);
        assert_eq!(exact.url("h", "/p", Some("b=2&a=1")), "h/p?b=2&a=1");
        assert_eq!(exact.url("h", "/p", Some("")), "h/p");
        let sorted = spec(QueryKey::Sorted, &["utm_source"]);
        assert_eq!(
            sorted.url("h", "/p", Some("b=2&utm_source=x&a=1")),
            "h/p?a=1&b=2"
        );
        assert_eq!(sorted.url("h", "/p", Some("utm_source=x")), "h/p");
        let ignore = spec(QueryKey::Ignore, &[]);
        assert_eq!(ignore.url("h", "/p", Some("a=1")), "h/p");
        let dropped = spec(QueryKey::Exact, &["t"]);
        assert_eq!(dropped.url("h", "/p", Some("z=1&t=9&a=2")), "h/p?z=1&a=2");
    }
}
