//! Per-route rate limits: compiled at load, decided per request against a shared store.

pub mod local;

use crate::config::{self, Fault};
use crate::router::PathMatch;
use http::HeaderName;
use local::{Gcra, GcraStore, Verdict};
use pingora_http::RequestHeader;
use regex::Regex;
use std::net::IpAddr;
use std::time::Duration;

/// What a limit counts separately.
#[derive(Debug, Clone)]
pub enum LimitKey {
    Route,
    /// The authenticated consumer; anonymous requests are counted by client IP.
    Consumer,
    ClientIp,
    /// A header's value; requests without it are counted by client IP.
    Header(HeaderName),
    /// A named capture of the route's path regex.
    PathParam(Regex, String),
}

pub struct Limit {
    /// Unique over the config, part of every store key.
    pub id: u32,
    pub name: String,
    gcra: Gcra,
    key: LimitKey,
    pub dry_run: bool,
    pub headers_on_success: bool,
    /// `"name";q=10;w=1`, ready for RateLimit-Policy.
    policy: String,
}

/// What a request sees of the route's limits.
pub struct Request<'a> {
    pub header: &'a RequestHeader,
    pub client_ip: Option<IpAddr>,
    pub consumer: Option<&'a str>,
}

/// The decision for one request over all limits of its route.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Set when a (non dry-run) limit refused the request.
    pub rejected_by: Option<String>,
    pub retry_after: Duration,
    /// RateLimit-Policy and RateLimit values, when they are to be sent.
    pub headers: Option<(String, String)>,
    /// Names of dry-run limits that would have refused it.
    pub would_reject: Vec<String>,
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Limit {
    fn store_key(&self, store: &GcraStore, req: &Request) -> u64 {
        let ip = |ip: Option<IpAddr>| match ip {
            Some(IpAddr::V4(v4)) => v4.octets().to_vec(),
            Some(IpAddr::V6(v6)) => v6.octets().to_vec(),
            None => Vec::new(),
        };
        match &self.key {
            LimitKey::Route => store.key(self.id, &[]),
            LimitKey::ClientIp => store.key(self.id, &[b"ip", &ip(req.client_ip)]),
            LimitKey::Consumer => match req.consumer {
                Some(c) => store.key(self.id, &[b"consumer", c.as_bytes()]),
                None => store.key(self.id, &[b"ip", &ip(req.client_ip)]),
            },
            LimitKey::Header(name) => match req.header.headers.get(name) {
                Some(v) => store.key(self.id, &[b"header", v.as_bytes()]),
                None => store.key(self.id, &[b"ip", &ip(req.client_ip)]),
            },
            LimitKey::PathParam(re, name) => {
                let path = req.header.uri.path();
                let value = re
                    .captures(path)
                    .and_then(|c| c.name(name))
                    .map_or("", |m| m.as_str());
                store.key(self.id, &[b"path", value.as_bytes()])
            }
        }
    }

    fn item(&self, v: &Verdict) -> String {
        format!(
            "\"{}\";r={};t={}",
            self.name,
            v.remaining,
            secs_ceil(v.reset_after)
        )
    }
}

/// Decide `req` against `limits`. Nothing is counted unless every enforcing limit admits the
/// request, so a refused request does not use up another limit's allowance.
pub fn decide(limits: &[Limit], store: &GcraStore, req: &Request) -> Outcome {
    let mut out = Outcome::default();
    let keys: Vec<u64> = limits.iter().map(|l| l.store_key(store, req)).collect();
    let mut verdicts = Vec::with_capacity(limits.len());
    for (limit, &key) in limits.iter().zip(&keys) {
        let v = store.check(key, limit.gcra, false);
        if !v.allowed {
            if limit.dry_run {
                out.would_reject.push(limit.name.clone());
            } else if v.retry_after >= out.retry_after {
                out.retry_after = v.retry_after;
                out.rejected_by = Some(limit.name.clone());
            }
        }
        verdicts.push(v);
    }
    if out.rejected_by.is_none() {
        for ((limit, &key), v) in limits.iter().zip(&keys).zip(verdicts.iter_mut()) {
            if v.allowed {
                *v = store.check(key, limit.gcra, true);
            }
        }
    }
    let send = out.rejected_by.is_some() || limits.iter().any(|l| l.headers_on_success);
    if send {
        let enforcing = || limits.iter().zip(&verdicts).filter(|(l, _)| !l.dry_run);
        let policy = enforcing()
            .map(|(l, _)| l.policy.as_str())
            .collect::<Vec<_>>();
        let state = enforcing().map(|(l, v)| l.item(v)).collect::<Vec<_>>();
        if !policy.is_empty() {
            out.headers = Some((policy.join(", "), state.join(", ")));
        }
    }
    out
}

/// Compile a route's limits. `next_id` numbers limits across the whole config.
pub fn compile(
    path: &str,
    limits: &[config::RateLimit],
    route_path: &PathMatch,
    next_id: &mut u32,
    faults: &mut Vec<Fault>,
) -> Vec<Limit> {
    let mut out: Vec<Limit> = Vec::new();
    let mut names: Vec<&str> = Vec::new();
    for (i, l) in limits.iter().enumerate() {
        let lpath = format!("{path}[{i}]");
        let before = faults.len();
        let valid_name = !l.name.is_empty()
            && l.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
        if !valid_name {
            faults.push(Fault::new(
                format!("{lpath}.name"),
                "a limit needs a name of letters, digits, - _ . :",
            ));
        } else if names.contains(&l.name.as_str()) {
            faults.push(Fault::new(
                format!("{lpath}.name"),
                format!("limit name {:?} is used twice on this route", l.name),
            ));
        }
        names.push(&l.name);
        if l.requests == 0 {
            faults.push(Fault::new(
                format!("{lpath}.requests"),
                "must be at least 1",
            ));
        }
        if l.per.0 < Duration::from_millis(1) {
            faults.push(Fault::new(format!("{lpath}.per"), "must be at least 1ms"));
        }
        if l.burst == Some(0) {
            faults.push(Fault::new(format!("{lpath}.burst"), "must be at least 1"));
        }
        let key = match l.key.split_once(':') {
            None => match l.key.as_str() {
                "route" => Some(LimitKey::Route),
                "consumer" => Some(LimitKey::Consumer),
                "client_ip" => Some(LimitKey::ClientIp),
                _ => None,
            },
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .ok()
                .map(LimitKey::Header),
            Some(("path", name)) => {
                match route_path {
                    PathMatch::Regex(re) if re.capture_names().flatten().any(|n| n == name) => {
                        Some(LimitKey::PathParam(re.clone(), name.to_string()))
                    }
                    _ => {
                        faults.push(Fault::new(
                        format!("{lpath}.key"),
                        format!("path:{name} needs a match.path_regex with a capture (?P<{name}>...)"),
                    ));
                        continue;
                    }
                }
            }
            Some(_) => None,
        };
        let Some(key) = key else {
            faults.push(Fault::new(
                format!("{lpath}.key"),
                format!(
                    "unknown key {:?}; use route, consumer, client_ip, header:NAME or path:NAME",
                    l.key
                ),
            ));
            continue;
        };
        if faults.len() > before {
            continue;
        }
        let burst = l.burst.unwrap_or(l.requests);
        *next_id += 1;
        out.push(Limit {
            id: *next_id,
            name: l.name.clone(),
            gcra: Gcra::new(l.requests, l.per.0, burst),
            key,
            dry_run: l.dry_run,
            headers_on_success: l.headers_on_success,
            policy: format!("\"{}\";q={};w={}", l.name, l.requests, secs_ceil(l.per.0)),
        });
    }
    out
}
