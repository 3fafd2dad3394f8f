//! Compiling a route: its matcher, target, rewrite, policy pipeline and resilience
//! settings, each fault with its YAML path.

use super::policies::Pipeline;
use super::rewrite::Rewrite;
use super::{HostPolicy, RouteAction, RouteTarget};
use crate::cache::RoutePolicy as CachePolicy;
use crate::compose::Compose;
use crate::config::{self, Fault, Route};
use crate::observe::metrics::RouteMetrics;
use crate::policy::contract::Contract;
use crate::policy::pipeline::{Build, Sources};
use crate::router::{normalize_host, PathMatch, RouteMatcher};
use crate::upstream::limit::ConcurrencyLimit;
use crate::upstream::retry::RetryPolicy;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use std::sync::Arc;
use std::time::Duration;

fn check_name(path: &str, r: &Route, faults: &mut Vec<Fault>) {
    if r.name.is_empty() {
        faults.push(Fault::new(format!("{path}.name"), "a route needs a name"));
    }
}

/// Where the route goes, before the composition (if any) is compiled.
enum Target {
    Upstream(usize),
    Compose,
}

fn target(src: &Sources<'_>, path: &str, r: &Route, faults: &mut Vec<Fault>) -> Option<Target> {
    if r.compose.is_some() {
        if !r.upstream.is_empty() {
            faults.push(Fault::new(
                format!("{path}.upstream"),
                "a compose route calls its upstreams itself; remove upstream",
            ));
        }
        return Some(Target::Compose);
    }
    if r.upstream.is_empty() {
        faults.push(Fault::new(
            format!("{path}.upstream"),
            "give the upstream (or compose) of this route",
        ));
        return None;
    }
    match src.upstreams.get(r.upstream.as_str()) {
        Some(i) => i.map(Target::Upstream),
        None => {
            if !src.unparsed.upstreams.contains(&r.upstream) {
                faults.push(Fault::new(
                    format!("{path}.upstream"),
                    format!("no upstream named {:?}", r.upstream),
                ));
            }
            None
        }
    }
}

/// How the route's attempts are bounded and what it answers when none can be made.
struct Resilience {
    retry: Option<RetryPolicy>,
    deadline: Option<Duration>,
    limit: Option<Arc<ConcurrencyLimit>>,
    fallback: Option<(u16, bytes::Bytes)>,
}

impl Resilience {
    fn from_config(src: &Sources<'_>, path: &str, r: &Route, faults: &mut Vec<Fault>) -> Self {
        let retry = r
            .retry
            .as_ref()
            .map(|spec| RetryPolicy::from_config(&format!("{path}.retry"), spec, faults));
        let deadline = r.timeout.map(|t| {
            config::positive(t, format!("{path}.timeout"), faults);
            t.0
        });
        let limit = match r.max_concurrent {
            Some(0) => {
                faults.push(Fault::new(
                    format!("{path}.max_concurrent"),
                    "must be at least 1",
                ));
                None
            }
            Some(max) => {
                let kept = src.route_limits.get(&(r.name.clone(), max)).cloned();
                Some(kept.unwrap_or_else(|| ConcurrencyLimit::new(max)))
            }
            None => None,
        };
        let fallback = r.fallback.as_ref().map(|f| {
            if !(200..=599).contains(&f.status) {
                faults.push(Fault::new(
                    format!("{path}.fallback.status"),
                    format!("{} is not a status between 200 and 599", f.status),
                ));
            }
            (f.status, bytes::Bytes::from(f.body.to_string()))
        });
        Resilience {
            retry,
            deadline,
            limit,
            fallback,
        }
    }
}

fn check_host_pattern(h: &str) -> Result<String, String> {
    let lower = h.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && normalize_host(name) == name;
    if valid {
        Ok(lower)
    } else {
        Err(format!(
            "{h:?} is not a host name or a *.example.com wildcard (no port, no scheme)"
        ))
    }
}

impl RouteAction {
    /// Compile route `r` (at YAML path `path`) and its matcher, with the request rules of
    /// its OpenAPI operation when it has them; `None` when it has faults.
    pub fn from_config(
        src: &Sources<'_>,
        path: &str,
        r: &Route,
        contract: Option<&Arc<Contract>>,
        faults: &mut Vec<Fault>,
    ) -> Option<(RouteMatcher, RouteAction)> {
        let before = faults.len();
        check_name(path, r, faults);
        let target = target(src, path, r, faults);
        let m = &r.matcher;
        let mpath = format!("{path}.match");
        let mut hosts = Vec::new();
        for (i, h) in m.hosts.iter().enumerate() {
            match check_host_pattern(h) {
                Ok(h) => hosts.push(h),
                Err(e) => faults.push(Fault::new(format!("{mpath}.hosts[{i}]"), e)),
            }
        }
        let given = [
            m.path_exact.is_some(),
            m.path_prefix.is_some(),
            m.path_regex.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            faults.push(Fault::new(
                mpath.clone(),
                "give only one of path_exact, path_prefix and path_regex",
            ));
        }
        let slash = |field: &str, p: &str, faults: &mut Vec<Fault>| {
            if !p.starts_with('/') {
                faults.push(Fault::new(
                    format!("{mpath}.{field}"),
                    format!("{p:?} does not start with /"),
                ));
                return;
            }
            // Requests are matched in canonical form, so another spelling never matches.
            let lenient = crate::canonical::path::PathRules {
                merge_slashes: false,
                encoded_slash: crate::canonical::path::EncodedSlash::Keep,
            };
            match crate::canonical::path::canonical(p.as_bytes(), &lenient) {
                Ok(None) => {}
                Ok(Some(c)) => faults.push(Fault::new(
                    format!("{mpath}.{field}"),
                    format!("{p:?} would never match: request paths are canonical; write {c:?}"),
                )),
                Err(e) => faults.push(Fault::new(
                    format!("{mpath}.{field}"),
                    format!("{p:?} would never match: {}", e.message()),
                )),
            }
        };
        let path_match = if let Some(p) = &m.path_exact {
            slash("path_exact", p, faults);
            PathMatch::Exact(p.clone())
        } else if let Some(p) = &m.path_prefix {
            slash("path_prefix", p, faults);
            PathMatch::Prefix(p.clone())
        } else if let Some(p) = &m.path_regex {
            match Regex::new(p) {
                Ok(re) => PathMatch::Regex(re),
                Err(e) => {
                    faults.push(Fault::new(
                        format!("{mpath}.path_regex"),
                        format!(
                            "invalid regex: {}",
                            e.to_string()
                                .split_whitespace()
                                .collect::<Vec<_>>()
                                .join(" ")
                        ),
                    ));
                    PathMatch::Any
                }
            }
        } else {
            PathMatch::Any
        };
        let mut methods = Vec::new();
        for (i, name) in m.methods.iter().enumerate() {
            let upper = name.to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(method) if !methods.contains(&method) => methods.push(method),
                Ok(_) => faults.push(Fault::new(
                    format!("{mpath}.methods[{i}]"),
                    format!("{name} is listed twice"),
                )),
                Err(_) => faults.push(Fault::new(
                    format!("{mpath}.methods[{i}]"),
                    format!("{name:?} is not an HTTP method"),
                )),
            }
        }
        let mut headers = Vec::new();
        for (i, h) in m.headers.iter().enumerate() {
            let hpath = format!("{mpath}.headers[{i}]");
            let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                faults.push(Fault::new(
                    format!("{hpath}.name"),
                    format!("{:?} is not a valid header name", h.name),
                ));
                continue;
            };
            let value = match &h.value {
                None => None,
                Some(v) => match HeaderValue::from_str(v) {
                    Ok(v) => Some(v),
                    Err(_) => {
                        faults.push(Fault::new(
                            format!("{hpath}.value"),
                            "not a valid header value",
                        ));
                        continue;
                    }
                },
            };
            headers.push((name, value));
        }

        let rewrite = match (&r.rewrite, r.strip_prefix, &path_match) {
            (Some(_), true, _) => {
                faults.push(Fault::new(
                    format!("{path}.rewrite"),
                    "use either strip_prefix or rewrite, not both",
                ));
                Rewrite::Keep
            }
            (None, true, PathMatch::Prefix(p)) => Rewrite::Prefix {
                prefix: p.clone(),
                with: String::new(),
            },
            (None, true, _) => {
                faults.push(Fault::new(
                    format!("{path}.strip_prefix"),
                    "strip_prefix needs match.path_prefix",
                ));
                Rewrite::Keep
            }
            (Some(to), false, PathMatch::Prefix(p)) => Rewrite::Prefix {
                prefix: p.clone(),
                with: to.clone(),
            },
            (Some(to), false, PathMatch::Exact(_)) => Rewrite::Exact(to.clone()),
            (Some(to), false, PathMatch::Regex(re)) => Rewrite::Regex {
                regex: re.clone(),
                template: to.clone(),
            },
            (Some(_), false, PathMatch::Any) => {
                faults.push(Fault::new(
                format!("{path}.rewrite"),
                "rewrite replaces the matched path: it needs path_exact, path_prefix or path_regex",
            ));
                Rewrite::Keep
            }
            (None, false, _) => Rewrite::Keep,
        };
        if let Some(to) = &r.rewrite {
            let sample = to.replace('$', "");
            if http::uri::PathAndQuery::try_from(format!("/{sample}").as_str()).is_err()
                || to.contains('?')
            {
                faults.push(Fault::new(
                    format!("{path}.rewrite"),
                    format!("{to:?} is not a valid path (a query string is kept from the request)"),
                ));
            }
        }
        let host = match (&r.host_header, r.preserve_host) {
            (Some(_), true) => {
                faults.push(Fault::new(
                    format!("{path}.host_header"),
                    "use either preserve_host or host_header, not both",
                ));
                HostPolicy::Target
            }
            (Some(h), false) => match HeaderValue::from_str(h) {
                Ok(v) if !h.is_empty() => HostPolicy::Fixed(v),
                _ => {
                    faults.push(Fault::new(
                        format!("{path}.host_header"),
                        "not a valid Host value",
                    ));
                    HostPolicy::Target
                }
            },
            (None, true) => HostPolicy::Client,
            (None, false) => HostPolicy::Target,
        };
        let resilience = Resilience::from_config(src, path, r, faults);
        let mut b = Build {
            path,
            route: r,
            path_match: &path_match,
            src,
            contract,
            faults,
        };
        let policies = Pipeline::from_config(&mut b);
        let target = match target? {
            Target::Upstream(i) => RouteTarget::Upstream(i),
            Target::Compose => RouteTarget::Compose(Compose::from_config(&mut b)?),
        };
        let cache = r.cache.as_ref().and_then(|c| {
            CachePolicy::build(c, &src.config.cache)
                .map_err(|(field, message)| {
                    faults.push(Fault::new(format!("{path}.cache.{field}"), message))
                })
                .ok()
                .flatten()
        });
        if faults.len() > before {
            return None;
        }
        Some((
            RouteMatcher {
                hosts,
                path: path_match,
                methods,
                headers,
                priority: r.priority,
            },
            RouteAction {
                metrics: RouteMetrics::new(&r.name, src.metrics),
                name: r.name.clone(),
                target,
                rewrite,
                host,
                policies,
                cache,
                retry: resilience.retry,
                deadline: resilience.deadline,
                limit: resilience.limit,
                fallback: resilience.fallback,
                redirect_https: r.redirect_https,
                upgrade_idle: r.upgrade_idle_timeout.0,
            },
        ))
    }
}
