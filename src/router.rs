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

impl RouteMatcher {
    /// Why this route does not match a request, or `None` when it does (`host` normalized),
    /// for `portico explain`. The router decides the same way, faster.
    pub fn mismatch(
        &self,
        host: &str,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<String> {
        let host_ok = self.hosts.is_empty()
            || self.hosts.iter().any(|h| match h.strip_prefix('*') {
                Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
                None => h == host,
            });
        if !host_ok {
            return Some(format!(
                "host {host} is not one of {}",
                self.hosts.join(", ")
            ));
        }
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => {
                path == p
                    || (path.starts_with(p.as_str())
                        && (p.ends_with('/') || path.as_bytes().get(p.len()) == Some(&b'/')))
            }
            PathMatch::Regex(re) => re.is_match(path),
        };
        if !path_ok {
            return Some(match &self.path {
                PathMatch::Exact(p) => format!("path is not {p}"),
                PathMatch::Prefix(p) => format!("path is not under {p}"),
                PathMatch::Regex(re) => format!("path does not match {}", re.as_str()),
                PathMatch::Any => String::new(),
            });
        }
        if !self.methods.is_empty() && !self.methods.contains(method) {
            let list: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
            return Some(format!("method {method} is not one of {}", list.join(", ")));
        }
        for (name, want) in &self.headers {
            let ok = match want {
                None => headers.contains_key(name),
                Some(v) => headers.get_all(name).iter().any(|got| got == v),
            };
            if !ok {
                return Some(match want {
                    None => format!("no {name} header"),
                    Some(v) => format!("{name} is not {}", String::from_utf8_lossy(v.as_bytes())),
                });
            }
        }
        None
    }
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
    /// Checked on every candidate found through its literal directory.
    regex: Option<Regex>,
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

type Map<V> = HashMap<Box<str>, V, ahash::RandomState>;

/// Route ids keyed by a path prefix. Only the prefix lengths that occur are probed, so a
/// lookup hashes little more than once per bucket in practice.
#[derive(Default)]
struct PrefixIndex {
    map: Map<Vec<u32>>,
    /// `lens[n]` is true when some key is `n` bytes long.
    lens: Vec<bool>,
}

impl PrefixIndex {
    fn insert(&mut self, key: &str, id: u32) {
        if self.lens.len() <= key.len() {
            self.lens.resize(key.len() + 1, false);
        }
        self.lens[key.len()] = true;
        self.map.entry(key.into()).or_default().push(id);
    }

    fn finish(&mut self) {
        for list in self.map.values_mut() {
            list.sort_unstable();
        }
    }

    fn probe(&self, path: &str, len: usize, s: &mut Search, routes: &[Compiled]) {
        if self.lens.get(len).copied().unwrap_or(false) {
            if let Some(ids) = self.map.get(&path[..len]) {
                s.consider(routes, ids);
            }
        }
    }

    /// Every key that is a segment-wise prefix of `path`: the path itself, the path up to
    /// (not including) each `/`, and up to and including each `/`.
    fn search(&self, path: &str, s: &mut Search, routes: &[Compiled]) {
        if self.map.is_empty() {
            return;
        }
        let longest = self.lens.len() - 1;
        for (i, b) in path.bytes().enumerate() {
            if i > longest {
                break;
            }
            if b == b'/' {
                if i > 0 {
                    self.probe(path, i, s, routes);
                }
                self.probe(path, i + 1, s, routes);
            }
        }
        if path.len() <= longest && !path.ends_with('/') {
            self.probe(path, path.len(), s, routes);
        }
    }
}

/// The literal directory a regex's matches must start with: `^/items/(\d+)$` →
/// `/items/`. `None` when the regex is not anchored or could match paths without it.
fn regex_literal_dir(pattern: &str) -> Option<&str> {
    let rest = pattern.strip_prefix('^')?;
    if pattern.contains('|') {
        return None;
    }
    let end = rest
        .find(|c: char| "\\.+*?()[]{}^$|".contains(c))
        .unwrap_or(rest.len());
    let mut lit = &rest[..end];
    // A quantifier may make the character before it optional.
    if rest[end..].starts_with(['*', '?', '{']) {
        lit = &lit[..lit
            .len()
            .saturating_sub(lit.chars().last().map_or(0, char::len_utf8))];
    }
    let cut = lit.rfind('/')?;
    lit[..=cut].starts_with('/').then(|| &lit[..=cut])
}

/// Routes of one host entry, indexed by path. Every id list is sorted by rank.
#[derive(Default)]
struct Bucket {
    exact: Map<Vec<u32>>,
    prefix: PrefixIndex,
    /// Regex routes keyed by the literal directory they start with.
    regex_by_dir: PrefixIndex,
    any: Vec<u32>,
    /// Regex routes without a literal directory, matched together.
    regex_rest_src: Vec<(String, u32)>,
    regex_rest: Option<(RegexSet, Vec<u32>)>,
    /// Best rank among `regex_rest`, to skip the set when a better match is known.
    regex_rest_best: u32,
}

/// State of one lookup: the best route found so far and whether a method was refused.
struct Search<'a> {
    method: &'a Method,
    path: &'a str,
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
            if route
                .regex
                .as_ref()
                .is_some_and(|re| !re.is_match(self.path))
                || !route.headers_match(self.headers)
            {
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
    fn insert(&mut self, path: &PathMatch, id: u32) {
        match path {
            PathMatch::Any => self.any.push(id),
            PathMatch::Exact(p) => self.exact.entry(p.as_str().into()).or_default().push(id),
            PathMatch::Prefix(p) => self.prefix.insert(p, id),
            PathMatch::Regex(r) => match regex_literal_dir(r.as_str()) {
                Some(dir) => self.regex_by_dir.insert(dir, id),
                None => self.regex_rest_src.push((r.as_str().to_string(), id)),
            },
        }
    }

    fn finish(&mut self) -> Result<(), regex::Error> {
        for list in self.exact.values_mut() {
            list.sort_unstable();
        }
        self.prefix.finish();
        self.regex_by_dir.finish();
        self.any.sort_unstable();
        if !self.regex_rest_src.is_empty() {
            self.regex_rest_src.sort_by_key(|(_, id)| *id);
            let set = RegexSet::new(self.regex_rest_src.iter().map(|(r, _)| r))?;
            let ids = self.regex_rest_src.iter().map(|(_, id)| *id).collect();
            self.regex_rest_best = self.regex_rest_src[0].1;
            self.regex_rest = Some((set, ids));
        }
        Ok(())
    }

    fn search(&self, routes: &[Compiled], s: &mut Search) {
        let path = s.path;
        if let Some(ids) = self.exact.get(path) {
            s.consider(routes, ids);
        }
        self.prefix.search(path, s, routes);
        self.regex_by_dir.search(path, s, routes);
        if let Some((set, ids)) = &self.regex_rest {
            if self.regex_rest_best < s.best {
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
    exact_hosts: Map<Bucket>,
    /// Keyed by the suffix including its leading dot: `*.example.com` → `.example.com`.
    wildcard_hosts: Map<Bucket>,
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
            exact_hosts: Map::default(),
            wildcard_hosts: Map::default(),
            any_host: Bucket::default(),
        };
        let mut slots: Vec<Option<RouteMatcher>> = matchers.into_iter().map(Some).collect();
        for (rank, &index) in order.iter().enumerate() {
            let Some(m) = slots[index].take() else {
                continue;
            };
            let id = rank as u32;
            if m.hosts.is_empty() {
                router.any_host.insert(&m.path, id);
            }
            for host in &m.hosts {
                let bucket = match host.strip_prefix('*') {
                    Some(suffix) => router.wildcard_hosts.entry(suffix.into()).or_default(),
                    None => router.exact_hosts.entry(host.as_str().into()).or_default(),
                };
                bucket.insert(&m.path, id);
            }
            let regex = match m.path {
                PathMatch::Regex(re) if regex_literal_dir(re.as_str()).is_some() => Some(re),
                _ => None,
            };
            router.routes.push(Compiled {
                methods: m.methods,
                headers: m.headers,
                regex,
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

    fn search(&self, host: &str, s: &mut Search) {
        if let Some(b) = self.exact_hosts.get(host) {
            b.search(&self.routes, s);
        }
        if !self.wildcard_hosts.is_empty() {
            for (i, b) in host.bytes().enumerate() {
                if b == b'.' {
                    if let Some(bucket) = self.wildcard_hosts.get(&host[i..]) {
                        bucket.search(&self.routes, s);
                    }
                }
            }
        }
        self.any_host.search(&self.routes, s);
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
            path,
            headers,
            best: u32::MAX,
            method_refused: false,
            allowed: None,
        };
        self.search(host, &mut s);
        if s.best != u32::MAX {
            return RouteLookup::Found(self.order[s.best as usize]);
        }
        if !s.method_refused {
            return RouteLookup::NotFound;
        }
        // Cold path: collect what the matching routes would allow.
        s.allowed = Some(Vec::new());
        self.search(host, &mut s);
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
    fn regex_literal_dirs() {
        assert_eq!(regex_literal_dir(r"^/items/(\d+)$"), Some("/items/"));
        assert_eq!(regex_literal_dir(r"^/a/b/c"), Some("/a/b/"));
        assert_eq!(regex_literal_dir(r"^/a/b/?$"), Some("/a/"));
        assert_eq!(regex_literal_dir(r"^/a/|^/b/"), None);
        assert_eq!(regex_literal_dir(r"/items/\d+"), None);
        assert_eq!(regex_literal_dir(r"^(?i)/items/"), None);
        assert_eq!(regex_literal_dir(r"^/a\.b/"), Some("/"));
    }

    #[test]
    fn regexes_with_and_without_a_literal_dir() {
        let r = Router::new(vec![
            m(
                &[],
                PathMatch::Regex(Regex::new(r"^/items/(\d+)$").unwrap()),
                &[],
                0,
            ),
            m(
                &[],
                PathMatch::Regex(Regex::new(r"\.json$").unwrap()),
                &[],
                0,
            ),
        ])
        .unwrap();
        let h = HeaderMap::new();
        assert_eq!(
            r.find("h", &Method::GET, "/items/42", &h),
            RouteLookup::Found(0)
        );
        assert_eq!(
            r.find("h", &Method::GET, "/items/x", &h),
            RouteLookup::NotFound
        );
        assert_eq!(
            r.find("h", &Method::GET, "/items/x.json", &h),
            RouteLookup::Found(1)
        );
        assert_eq!(
            r.find("h", &Method::GET, "/other/42", &h),
            RouteLookup::NotFound
        );
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
