//! `portico explain` and the admin's `POST /explain`: what the gateway would do with a
//! request, without sending anything upstream — its canonical form, every route and why it
//! matches or not, the chosen route, its policies in the order they run with what each
//! needs, the upstream and the target it would pick, and the cache key.

use crate::canonical;
use crate::request_parts::request_host;
use crate::router::{normalize_host, RouteLookup};
use crate::runtime::Runtime;
use pingora_http::RequestHeader;
use serde::Serialize;
use std::net::IpAddr;

#[derive(Serialize, Debug)]
pub struct RouteConsidered {
    pub name: String,
    pub matches: bool,
    /// Why not, when it does not match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct PolicyStep {
    pub policy: &'static str,
    pub needs: String,
}

#[derive(Serialize, Debug)]
pub struct TargetInfo {
    pub address: String,
    pub healthy: bool,
}

#[derive(Serialize, Debug)]
pub struct UpstreamChoice {
    pub name: String,
    pub targets: Vec<TargetInfo>,
    /// The target the balancer picks for this request now.
    pub picks: Option<String>,
    /// The path the upstream receives.
    pub path: String,
}

#[derive(Serialize, Debug)]
pub struct Explanation {
    pub method: String,
    /// The canonical path (and query).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canonical: Option<String>,
    /// Why the request has no canonical form (it is answered with this).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    pub host: String,
    /// Routes in the order they are tried (priority, then file order).
    pub routes: Vec<RouteConsidered>,
    /// The route that takes the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    /// The answer when no route takes it (404, 405).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    pub policies: Vec<PolicyStep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub composition: Option<usize>,
    /// The response cache's key, for a route with `cache`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
}

/// A request as given to explain: `METHOD URL`, headers as `Name: value`.
pub fn request(line: &str, headers: &[String]) -> Result<RequestHeader, String> {
    let (method, url) = line
        .trim()
        .split_once(' ')
        .ok_or("write the request as METHOD URL, e.g. 'GET https://api.example.com/v1/users/7'")?;
    let uri: http::Uri = url
        .trim()
        .parse()
        .map_err(|_| format!("{url:?} is not a URL"))?;
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build(method.trim(), target.as_bytes(), None)
        .map_err(|e| format!("{method:?} {target:?}: {e}"))?;
    if let Some(a) = uri.authority() {
        req.insert_header(http::header::HOST, a.as_str())
            .map_err(|e| e.to_string())?;
    }
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("{h:?} is not a `Name: value` header"))?;
        req.append_header(name.trim().to_string(), value.trim())
            .map_err(|e| format!("{h:?}: {e}"))?;
    }
    Ok(req)
}

/// What `rt` would do with `req` from `client`.
pub fn explain(rt: &Runtime, mut req: RequestHeader, client: Option<IpAddr>) -> Explanation {
    let method = req.method.to_string();
    let canonical = canonical::canonicalise(&mut req, &rt.edge_rules)
        .map(|()| {
            req.uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string()
        })
        .map_err(|r| format!("{} {}", r.status, r.message));
    let host = request_host(&req).map(normalize_host).unwrap_or_default();
    let mut out = Explanation {
        method,
        canonical: canonical.as_ref().ok().cloned(),
        refused: canonical.as_ref().err().cloned(),
        host: host.to_string(),
        routes: Vec::new(),
        chosen: None,
        answer: None,
        policies: Vec::new(),
        upstream: None,
        composition: None,
        cache_key: None,
    };
    if canonical.is_err() {
        return out;
    }
    let path = req.uri.path();
    let mut ranked: Vec<usize> = (0..rt.matchers.len()).collect();
    ranked.sort_by_key(|&i| std::cmp::Reverse(rt.matchers[i].priority));
    for i in ranked {
        let why_not = rt.matchers[i].mismatch(&host, &req.method, path, &req.headers);
        out.routes.push(RouteConsidered {
            name: rt
                .routes
                .get(i)
                .map_or_else(String::new, |r| r.name.clone()),
            matches: why_not.is_none(),
            why_not,
        });
    }
    let index = match rt.router.find(&host, &req.method, path, &req.headers) {
        RouteLookup::Found(i) => i,
        RouteLookup::NotFound => {
            out.answer = Some("404: no route matches".into());
            return out;
        }
        RouteLookup::MethodNotAllowed(allowed) => {
            let allowed: Vec<&str> = allowed.iter().map(http::Method::as_str).collect();
            out.answer = Some(format!("405: the path allows {}", allowed.join(", ")));
            return out;
        }
    };
    let Some(route) = rt.routes.get(index) else {
        return out;
    };
    out.chosen = Some(route.name.clone());
    out.policies = route
        .policies
        .describe()
        .into_iter()
        .map(|(policy, needs)| PolicyStep { policy, needs })
        .collect();
    if let Some(c) = &route.cache {
        let key = crate::cache::phases::key(c, &req);
        out.cache_key = Some(
            key.primary_key_str()
                .map_or_else(|| format!("{key:?}"), str::to_string),
        );
    }
    match &route.target {
        crate::route::RouteTarget::Compose(c) => out.composition = Some(c.calls.len()),
        crate::route::RouteTarget::Upstream(u) => {
            if let Some(pool) = rt.upstreams.get(*u) {
                let mut scratch = [0u8; 16];
                let key = match &pool.hash_key {
                    Some(k) => k.extract(&req, client, &mut scratch),
                    None => b"",
                };
                let upstream_path = route
                    .rewrite
                    .apply(path)
                    .map_or_else(|| path.to_string(), |p| p.into_owned());
                out.upstream = Some(UpstreamChoice {
                    name: pool.name.clone(),
                    targets: pool
                        .targets()
                        .into_iter()
                        .map(|t| TargetInfo {
                            address: t.addr.to_string(),
                            healthy: t.healthy && t.ejected_ms == 0,
                        })
                        .collect(),
                    picks: pool.select(key, &[]).map(|a| a.to_string()),
                    path: upstream_path,
                });
            }
        }
    }
    out
}

/// The explanation as text, for the terminal.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    if let Some(why) = &e.refused {
        line(format!(
            "refused:    {why} (the request has no canonical form)"
        ));
        return out;
    }
    if let Some(p) = &e.canonical {
        line(format!("canonical:  {} {p}  (host {})", e.method, e.host));
    }
    line("routes, in the order they are tried:".into());
    for r in &e.routes {
        match &r.why_not {
            None => line(format!("  + {:<24} matches", r.name)),
            Some(why) => line(format!("  - {:<24} {why}", r.name)),
        }
    }
    if let Some(why) = &e.answer {
        line(format!("answer:     {why}"));
        return out;
    }
    if let Some(name) = &e.chosen {
        line(format!("chosen:     {name}"));
    }
    if e.policies.is_empty() {
        line("policies:   none".into());
    } else {
        line("policies, in the order they run:".into());
        for (i, p) in e.policies.iter().enumerate() {
            let needs = if p.needs.is_empty() {
                String::new()
            } else {
                format!(": {}", p.needs)
            };
            line(format!("  {}. {}{needs}", i + 1, p.policy));
        }
    }
    if let Some(u) = &e.upstream {
        let targets: Vec<String> = u
            .targets
            .iter()
            .map(|t| format!("{}{}", t.address, if t.healthy { "" } else { " (down)" }))
            .collect();
        line(format!("upstream:   {} [{}]", u.name, targets.join(", ")));
        line(format!(
            "target:     {}",
            u.picks.as_deref().unwrap_or("none healthy")
        ));
        line(format!("upstream path: {}", u.path));
    }
    if let Some(n) = e.composition {
        line(format!("answer:     composed from {n} calls"));
    }
    if let Some(k) = &e.cache_key {
        line(format!("cache key:  {k}"));
    }
    out
}
