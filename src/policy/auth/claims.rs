//! What token-based providers share: where a token is read from, and how a token's claims
//! (or an introspection answer's members) become an [`Identity`].

use super::Identity;
use crate::config::{Fault, TokenSource};
use crate::request_parts;
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub enum Source {
    Bearer,
    Header(HeaderName),
    Query(String),
    Cookie(String),
}

/// The first token found in `req` at one of `sources`; an empty one counts as none.
pub fn token_in<'a>(sources: &[Source], req: &'a RequestHeader) -> Option<&'a str> {
    sources
        .iter()
        .find_map(|s| match s {
            Source::Bearer => req
                .headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, token) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                }),
            Source::Header(name) => req.headers.get(name).and_then(|v| v.to_str().ok()),
            Source::Query(name) => request_parts::query_param(req, name),
            Source::Cookie(name) => request_parts::cookie(req, name),
        })
        .filter(|t| !t.is_empty())
}

pub fn header_name(path: String, name: &str, faults: &mut Vec<Fault>) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            faults.push(Fault::new(
                path,
                format!("{name:?} is not a valid header name"),
            ));
            None
        }
    }
}

/// A provider's `token_from` (`path` is the provider's YAML path); bearer when empty.
pub fn sources(path: &str, list: &[TokenSource], faults: &mut Vec<Fault>) -> Vec<Source> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let spath = format!("{path}.token_from[{i}]");
        out.extend(match s {
            TokenSource::Bearer => Some(Source::Bearer),
            TokenSource::Header(h) => header_name(spath, h, faults).map(Source::Header),
            TokenSource::Query(q) => Some(Source::Query(q.clone())),
            TokenSource::Cookie(c) => Some(Source::Cookie(c.clone())),
        });
    }
    if list.is_empty() {
        out.push(Source::Bearer);
    }
    out
}

/// How claims become an identity: which claims name the consumer, which go upstream as
/// headers, and what the credential's own header and query parameter are.
pub struct ClaimMapping {
    /// Claims naming the consumer, first present wins.
    pub consumer_from: Vec<String>,
    pub forward: Vec<(String, HeaderName)>,
    /// Groups of each configured consumer, by name.
    pub consumer_groups: Arc<HashMap<String, Vec<String>>>,
    pub hide_header: Option<HeaderName>,
    pub hide_query: Option<String>,
}

impl ClaimMapping {
    /// `forward_claims` (claim → header) of the provider at `path`, and where its token is
    /// hidden from the upstream when `strip` says so.
    pub fn new(
        path: &str,
        consumer_from: Vec<String>,
        forward_claims: &BTreeMap<String, String>,
        sources: &[Source],
        strip: bool,
        consumer_groups: Arc<HashMap<String, Vec<String>>>,
        faults: &mut Vec<Fault>,
    ) -> ClaimMapping {
        let mut forward = Vec::new();
        for (claim, header) in forward_claims {
            if let Some(h) = header_name(format!("{path}.forward_claims.{claim}"), header, faults) {
                forward.push((claim.clone(), h));
            }
        }
        ClaimMapping {
            consumer_from,
            forward,
            consumer_groups,
            hide_header: strip.then_some(http::header::AUTHORIZATION),
            // A token in the query is a credential like one in a header: it stays here.
            hide_query: sources.iter().find_map(|s| match s {
                Source::Query(name) if strip => Some(name.clone()),
                _ => None,
            }),
        }
    }

    /// Header names this mapping sets upstream, which a client must never set itself.
    pub fn forwarded_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.forward.iter().map(|(_, h)| h)
    }

    pub fn identity(&self, provider: &str, claims: &Map<String, Value>) -> Identity {
        let consumer = self
            .consumer_from
            .iter()
            .find_map(|c| claims.get(c).and_then(Value::as_str))
            .map(str::to_string);
        let mut groups = claim_list(claims, "groups");
        if let Some(g) = consumer.as_ref().and_then(|c| self.consumer_groups.get(c)) {
            groups.extend(g.iter().cloned());
        }
        let mut scopes = claim_list(claims, "scope");
        scopes.extend(claim_list(claims, "scp"));
        let headers = self
            .forward
            .iter()
            .filter_map(|(claim, header)| {
                let v = header_value(claims.get(claim)?)?;
                Some((header.clone(), v))
            })
            .collect();
        Identity {
            provider: provider.to_string(),
            consumer,
            groups,
            scopes,
            headers,
            expires_at: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
            hide_header: self.hide_header.clone(),
            hide_query: self.hide_query.clone(),
            claims: claims
                .iter()
                .filter_map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => return None,
                    };
                    Some((k.clone(), v))
                })
                .collect(),
        }
    }
}

/// Values of a claim as a list: a space-separated string or an array of strings.
pub fn claim_list(claims: &Map<String, Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn header_value(v: &Value) -> Option<HeaderValue> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        Value::Null => return None,
        other => other.to_string(),
    };
    HeaderValue::from_str(&text).ok()
}
