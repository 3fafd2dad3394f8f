//! `portico routes`: the route table a config makes, hand-written routes and those made from
//! OpenAPI documents alike, in the order the router ranks them among equals.

use super::openapi::ApiRoute;
use crate::config::{Config, Route};
use std::fmt::Write as _;

/// One line per route: name, methods, hosts, path, upstream, policies.
pub fn table(cfg: &Config, generated: &[ApiRoute]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "METHODS".into(),
        "HOSTS".into(),
        "PATH".into(),
        "UPSTREAM".into(),
        "POLICIES".into(),
    ]];
    let written = cfg.routes.iter().map(|r| (r, path_of(r)));
    let from_apis = generated.iter().map(|g| (&g.route, g.template.clone()));
    for (r, path) in written.chain(from_apis) {
        rows.push([
            r.name.clone(),
            list_or_any(&r.matcher.methods),
            list_or_any(&r.matcher.hosts),
            path,
            upstream_of(r),
            policies_of(r).join(","),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn list_or_any(items: &[String]) -> String {
    if items.is_empty() {
        "*".into()
    } else {
        items.join(",")
    }
}

/// `= /exact`, `/prefix*`, `~ regex`, or `*` for every path.
fn path_of(r: &Route) -> String {
    let m = &r.matcher;
    if let Some(p) = &m.path_exact {
        format!("= {p}")
    } else if let Some(p) = &m.path_prefix {
        format!("{p}*")
    } else if let Some(p) = &m.path_regex {
        format!("~ {p}")
    } else {
        "*".into()
    }
}

fn upstream_of(r: &Route) -> String {
    if r.compose.is_some() {
        "(composed)".into()
    } else if let Some(split) = &r.split {
        let names: Vec<&str> = split.to.iter().map(|s| s.upstream.as_str()).collect();
        format!("split:{}", names.join("/"))
    } else if r.upstream.is_empty() {
        "-".into()
    } else {
        r.upstream.clone()
    }
}

/// The route's policies in the order the pipeline runs them, then those of later phases.
fn policies_of(r: &Route) -> Vec<&'static str> {
    let set = [
        ("maintenance", r.maintenance.is_some()),
        ("ip_filter", !r.ip_allow.is_empty() || !r.ip_deny.is_empty()),
        ("body_limit", r.max_request_body.is_some()),
        ("access", r.access.is_some()),
        ("rate_limits", r.rate_limits.is_some()),
        ("compression", r.compression.is_some()),
        ("transform", r.transform.is_some()),
        ("mirror", r.mirror.is_some()),
        ("cors", r.cors.is_some()),
        ("cache", r.cache.is_some()),
        ("retry", r.retry.is_some()),
        ("timeout", r.timeout.is_some()),
        ("max_concurrent", r.max_concurrent.is_some()),
        ("fallback", r.fallback.is_some()),
    ];
    let names: Vec<&'static str> = set.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect();
    if names.is_empty() {
        vec!["-"]
    } else {
        names
    }
}
