//! The route table: host → path → method/headers, compiled once per config.
//!
//! Routes rank by priority (higher first), then by file order; a request goes to the
//! best-ranked route that matches. Lookup cost does not grow with the number of routes for
//! exact and prefix paths: hosts and paths are hash lookups, and a prefix lookup probes one
//! key per path segment. Regex routes of a host are matched together by one `RegexSet`.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::{Regex, RegexSet};
use std::borrow::Cow;
use std::collections::HashMap;

/// How a route matches the path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Any,
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

/// What a route matches, already validated.
#[derive(Debug, Clone)]
pub struct RouteMatcher {
    /// Lower-case exact names or `*.suffix` wildcards; empty means any host.
    pub hosts: Vec<String>,
    pub path: PathMatch,
    /// Empty means any method.
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, Option<HeaderValue>)>,
    pub priority: i32,
}

/// The outcome of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteLookup {
    /// Index of the route in the order routes were given to [`Router::new`].
    Found(usize),
    /// Some route matches host and path but none allows this method.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

struct Compiled {
    methods: Vec<Method>,
    headers: Vec<(HeaderName, Option<HeaderValue>)>,
}

impl Compiled {
    fn headers_match(&self, headers: &HeaderMap) -> bool {
        self.headers.iter().all(|(name, want)| match want {
            None => headers.contains_key(name),
            Some(v) => headers.get_all(name).iter().any(|got| got == v),
        })
    }
    fn method_allowed(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }
}

/// Routes of one host entry, indexed by path. Every id list is sorted by rank.
#[derive(Default)]
struct Bucket {
    exact: HashMap<Box<str>, Vec<u32>>,
    prefix: HashMap<Box<str>, Vec<u32>>,
    any: Vec<u32>,
    regex_src: Vec<(String, u32)>,
    regex: Option<(RegexSet, Vec<u32>)>,
    /// Best rank among the regex routes, to skip the set when a better match is known.
    regex_best: u32,
}

/// State of one lookup: the best route found so far and whether a method was refused.
struct Search<'a> {
    method: &'a Method,
    headers: &'a HeaderMap,
    best: u32,
    method_refused: bool,
    /// Collects the methods of routes that matched all but the method (second pass only).
    allowed: Option<Vec<Method>>,
}

impl Search<'_> {
    /// Consider `ids` (sorted by rank, which equals the id) as candidates.
    fn consider(&mut self, routes: &[Compiled], ids: &[u32]) {
        for &id in ids {
            if id >= self.best {
                return;
            }
            let route = &routes[id as usize];
            if !route.headers_match(self.headers) {
                continue;
            }
            if let Some(allowed) = self.allowed.as_mut() {
                allowed.extend(route.methods.iter().cloned());
                continue;
            }
            if route.method_allowed(self.method) {
                self.best = id;
                return;
            }
            self.method_refused = true;
        }
    }
}

impl Bucket {
    fn finish(&mut self) -> Result<(), regex::Error> {
        for list in self.exact.values_mut().chain(self.prefix.values_mut()) {
            list.sort_unstable();
        }
        self.any.sort_unstable();
        if !self.regex_src.is_empty() {
            self.regex_src.sort_by_key(|(_, id)| *id);
            let set = RegexSet::new(self.regex_src.iter().map(|(r, _)| r))?;
            let ids = self.regex_src.iter().map(|(_, id)| *id).collect();
            self.regex_best = self.regex_src[0].1;
            self.regex = Some((set, ids));
        }
        Ok(())
    }

    fn search(&self, routes: &[Compiled], path: &str, s: &mut Search) {
        if let Some(ids) = self.exact.get(path) {
            s.consider(routes, ids);
        }
        if !self.prefix.is_empty() {
            if let Some(ids) = self.prefix.get(path) {
                s.consider(routes, ids);
            }
            for (i, b) in path.bytes().enumerate() {
                if b != b'/' {
                    continue;
                }
                if i > 0 {
                    if let Some(ids) = self.prefix.get(&path[..i]) {
                        s.consider(routes, ids);
                    }
                }
                if i + 1 < path.len() {
                    if let Some(ids) = self.prefix.get(&path[..=i]) {
                        s.consider(routes, ids);
                    }
                }
            }
        }
        if let Some((set, ids)) = &self.regex {
            if self.regex_best < s.best {
                for m in set.matches(path).iter() {
                    s.consider(routes, &ids[m..=m]);
                }
            }
        }
        s.consider(routes, &self.any);
    }
}

pub struct Router {
    /// Compiled routes by rank; `order[rank]` is the caller's index.
    routes: Vec<Compiled>,
    order: Vec<usize>,
    exact_hosts: HashMap<Box<str>, Bucket>,
    /// Keyed by the suffix including its leading dot: `*.example.com` → `.example.com`.
    wildcard_hosts: HashMap<Box<str>, Bucket>,
    any_host: Bucket,
}

/// Lower-cases a Host value and drops its port and trailing dot.
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let no_port = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let h = no_port.strip_suffix('.').unwrap_or(no_port);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    }
}

impl Router {
    /// Build the table. Regexes are compiled already; an error here means the regex set
    /// exceeded its size limit.
    pub fn new(matchers: Vec<RouteMatcher>) -> Result<Router, regex::Error> {
        let mut order: Vec<usize> = (0..matchers.len()).collect();
        // Stable sort keeps file order among equal priorities.
        order.sort_by_key(|&i| std::cmp::Reverse(matchers[i].priority));
        let mut router = Router {
            routes: Vec::with_capacity(matchers.len()),
            order: order.clone(),
            exact_hosts: HashMap::new(),
            wildcard_hosts: HashMap::new(),
            any_host: Bucket::default(),
        };
        let mut slots: Vec<Option<RouteMatcher>> = matchers.into_iter().map(Some).collect();
        for (rank, &index) in order.iter().enumerate() {
            let Some(m) = slots[index].take() else {
                continue;
            };
            let id = rank as u32;
            let insert = |bucket: &mut Bucket| match &m.path {
                PathMatch::Any => bucket.any.push(id),
                PathMatch::Exact(p) => bucket.exact.entry(p.as_str().into()).or_default().push(id),
                PathMatch::Prefix(p) => {
                    bucket.prefix.entry(p.as_str().into()).or_default().push(id)
                }
                PathMatch::Regex(r) => bucket.regex_src.push((r.as_str().to_string(), id)),
            };
            if m.hosts.is_empty() {
                insert(&mut router.any_host);
            }
            for host in &m.hosts {
                let bucket = match host.strip_prefix('*') {
                    Some(suffix) => router.wildcard_hosts.entry(suffix.into()).or_default(),
                    None => router.exact_hosts.entry(host.as_str().into()).or_default(),
                };
                insert(bucket);
            }
            router.routes.push(Compiled {
                methods: m.methods,
                headers: m.headers,
            });
        }
        for b in router
            .exact_hosts
            .values_mut()
            .chain(router.wildcard_hosts.values_mut())
        {
            b.finish()?;
        }
        router.any_host.finish()?;
        Ok(router)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    fn search(&self, host: &str, path: &str, s: &mut Search) {
        if let Some(b) = self.exact_hosts.get(host) {
            b.search(&self.routes, path, s);
        }
        if !self.wildcard_hosts.is_empty() {
            for (i, b) in host.bytes().enumerate() {
                if b == b'.' {
                    if let Some(bucket) = self.wildcard_hosts.get(&host[i..]) {
                        bucket.search(&self.routes, path, s);
                    }
                }
            }
        }
        self.any_host.search(&self.routes, path, s);
    }

    /// Find the route for a request. `host` must be normalized ([`normalize_host`]).
    pub fn find(
        &self,
        host: &str,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> RouteLookup {
        let mut s = Search {
            method,
            headers,
            best: u32::MAX,
            method_refused: false,
            allowed: None,
        };
        self.search(host, path, &mut s);
        if s.best != u32::MAX {
            return RouteLookup::Found(self.order[s.best as usize]);
        }
        if !s.method_refused {
            return RouteLookup::NotFound;
        }
        // Cold path: collect what the matching routes would allow.
        s.allowed = Some(Vec::new());
        self.search(host, path, &mut s);
        let mut allowed = s.allowed.unwrap_or_default();
        allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        allowed.dedup();
        RouteLookup::MethodNotAllowed(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(hosts: &[&str], path: PathMatch, methods: &[&str], priority: i32) -> RouteMatcher {
        RouteMatcher {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path,
            methods: methods.iter().map(|x| x.parse().unwrap()).collect(),
            headers: vec![],
            priority,
        }
    }

    fn prefix(p: &str) -> PathMatch {
        PathMatch::Prefix(p.into())
    }

    #[test]
    fn prefix_is_segment_aware() {
        let r = Router::new(vec![m(&[], prefix("/api"), &[], 0)]).unwrap();
        let h = HeaderMap::new();
        assert_eq!(r.find("x", &Method::GET, "/api", &h), RouteLookup::Found(0));
        assert_eq!(
            r.find("x", &Method::GET, "/api/v1", &h),
            RouteLookup::Found(0)
        );
        assert_eq!(
            r.find("x", &Method::GET, "/apix", &h),
            RouteLookup::NotFound
        );
    }

    #[test]
    fn priority_then_file_order() {
        let r = Router::new(vec![
            m(&[], prefix("/"), &[], 0),
            m(&[], prefix("/a"), &[], 0),
            m(&[], PathMatch::Regex(Regex::new("^/a/b").unwrap()), &[], 5),
        ])
        .unwrap();
        let h = HeaderMap::new();
        assert_eq!(r.find("x", &Method::GET, "/a/b", &h), RouteLookup::Found(2));
        assert_eq!(r.find("x", &Method::GET, "/a/c", &h), RouteLookup::Found(0));
    }

    #[test]
    fn hosts_and_wildcards() {
        let r = Router::new(vec![
            m(&["api.example.com"], prefix("/"), &[], 0),
            m(&["*.example.com"], prefix("/"), &[], 0),
        ])
        .unwrap();
        let h = HeaderMap::new();
        assert_eq!(
            r.find("api.example.com", &Method::GET, "/", &h),
            RouteLookup::Found(0)
        );
        assert_eq!(
            r.find("a.b.example.com", &Method::GET, "/", &h),
            RouteLookup::Found(1)
        );
        assert_eq!(
            r.find("example.com", &Method::GET, "/", &h),
            RouteLookup::NotFound
        );
        assert_eq!(normalize_host("API.Example.com:8080"), "api.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }

    #[test]
    fn method_not_allowed_lists_methods() {
        let r = Router::new(vec![
            m(&[], PathMatch::Exact("/x".into()), &["GET"], 0),
            m(&[], PathMatch::Exact("/x".into()), &["POST", "GET"], 0),
        ])
        .unwrap();
        let h = HeaderMap::new();
        assert_eq!(
            r.find("h", &Method::DELETE, "/x", &h),
            RouteLookup::MethodNotAllowed(vec![Method::GET, Method::POST])
        );
    }
}
