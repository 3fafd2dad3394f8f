//! External authorization (forward auth): an authorization service is asked about each
//! request, with its method, canonical path and query, the client's address and the
//! configured headers (and body). A 2xx answer admits, and its `upstream_headers` go to the
//! upstream request; any other answer goes back to the client as the service gave it.
//! Decisions may be kept for requests that are alike in a configured key.

use super::decisions::{CallCounters, Decisions};
use super::{Identity, Verification};
use crate::config::{self, Fault, OnFailure};
use crate::outbound::{CallError, Cap, Endpoint};
use crate::policy::pipeline::{read_request_body, Exchange, Relay, Respond};
use crate::request_parts;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// A body that may go to the service is read first, into Pingora's 64 KiB retry buffer.
pub const MAX_FORWARD_BODY: u64 = 64 << 10;
/// A refusal's body passed to the client may be this large.
const MAX_ANSWER: usize = 64 << 10;

/// A part of what makes two requests alike for the decision cache.
enum KeyPart {
    Header(HeaderName),
    Query(String),
    Cookie(String),
    Method,
    Path,
    ClientIp,
}

#[derive(Clone)]
enum Outcome {
    Admit(Arc<Identity>),
    Refuse(u16, Arc<Relay>),
    Unavailable,
}

pub struct ExternalAuth {
    pub name: String,
    endpoint: Endpoint,
    timeout: Duration,
    forward_headers: Vec<HeaderName>,
    forward_body: Option<u64>,
    pub upstream_headers: Vec<HeaderName>,
    consumer_header: Option<HeaderName>,
    client_headers: Vec<HeaderName>,
    cache: Option<(Duration, Vec<KeyPart>)>,
    on_failure: OnFailure,
    consumer_groups: Arc<HashMap<String, Vec<String>>>,
    decisions: Decisions<Outcome>,
    counters: CallCounters,
}

/// Headers that frame or route a message: the gateway sets them itself, so a service's
/// copies are never passed on, either way.
const FRAMING: [&str; 8] = [
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn headers(path: String, names: &[String], faults: &mut Vec<Fault>) -> Vec<HeaderName> {
    names
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let h = super::claims::header_name(format!("{path}[{i}]"), n, faults)?;
            if FRAMING.contains(&h.as_str()) {
                faults.push(Fault::new(
                    format!("{path}[{i}]"),
                    format!("{n:?} frames the message; the gateway sets it itself"),
                ));
                return None;
            }
            Some(h)
        })
        .collect()
}

fn key_part(path: String, text: &str, faults: &mut Vec<Fault>) -> Option<KeyPart> {
    let part = match text.split_once(':') {
        None => match text {
            "method" => Some(KeyPart::Method),
            "path" => Some(KeyPart::Path),
            "client_ip" => Some(KeyPart::ClientIp),
            _ => None,
        },
        Some(("header", h)) => {
            return super::claims::header_name(path, h, faults).map(KeyPart::Header)
        }
        Some(("query", q)) if !q.is_empty() => Some(KeyPart::Query(q.to_string())),
        Some(("cookie", c)) if !c.is_empty() => Some(KeyPart::Cookie(c.to_string())),
        Some(_) => None,
    };
    if part.is_none() {
        faults.push(Fault::new(
            path,
            format!(
                "{text:?} is not a key part; use header:NAME, query:NAME, cookie:NAME, \
                 method, path or client_ip"
            ),
        ));
    }
    part
}

impl ExternalAuth {
    /// `auth.external[i]` at `path`.
    pub fn from_config(
        path: &str,
        p: &config::ExternalAuth,
        consumer_groups: Arc<HashMap<String, Vec<String>>>,
        faults: &mut Vec<Fault>,
    ) -> Option<ExternalAuth> {
        let before = faults.len();
        if let Some(ca) = &p.ca_file {
            if let Err(e) = crate::outbound::check_ca_file(ca) {
                faults.push(Fault::new(format!("{path}.ca_file"), e));
            }
        }
        let endpoint = Endpoint::parse(&p.url, p.ca_file.clone(), 64)
            .map_err(|e| faults.push(Fault::new(format!("{path}.url"), e)))
            .ok();
        if endpoint.as_ref().is_some_and(|e| e.url.query().is_some()) {
            faults.push(Fault::new(
                format!("{path}.url"),
                "the request's own query is sent; the URL cannot have one",
            ));
        }
        config::positive(p.timeout, format!("{path}.timeout"), faults);
        let forward_body = p.forward_body.as_ref().map(|b| b.max.0);
        if forward_body.is_some_and(|m| m > MAX_FORWARD_BODY || m == 0) {
            faults.push(Fault::new(
                format!("{path}.forward_body.max"),
                "between 1 byte and 64KiB (the body is held while the service decides)",
            ));
        }
        let cache = p.cache.as_ref().map(|c| {
            config::positive(c.ttl, format!("{path}.cache.ttl"), faults);
            if c.key.is_empty() {
                faults.push(Fault::new(
                    format!("{path}.cache.key"),
                    "name what makes requests alike, e.g. [header:authorization]",
                ));
            }
            let parts = c
                .key
                .iter()
                .enumerate()
                .filter_map(|(i, k)| key_part(format!("{path}.cache.key[{i}]"), k, faults))
                .collect();
            (c.ttl.0, parts)
        });
        let consumer_header = p
            .consumer_header
            .as_ref()
            .and_then(|h| super::claims::header_name(format!("{path}.consumer_header"), h, faults));
        let out = ExternalAuth {
            name: p.name.clone(),
            endpoint: endpoint?,
            timeout: p.timeout.0,
            forward_headers: headers(
                format!("{path}.forward_headers"),
                &p.forward_headers,
                faults,
            ),
            forward_body,
            upstream_headers: headers(
                format!("{path}.upstream_headers"),
                &p.upstream_headers,
                faults,
            ),
            consumer_header,
            client_headers: headers(format!("{path}.client_headers"), &p.client_headers, faults),
            cache,
            on_failure: p.on_failure,
            consumer_groups,
            decisions: Decisions::new(&p.name),
            counters: CallCounters::new(&p.name),
        };
        (faults.len() == before).then_some(out)
    }

    /// The digest of what makes this request alike to others, for the decision cache.
    fn key(parts: &[KeyPart], req: &RequestHeader, client: Option<IpAddr>) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in parts {
            let value: &[u8] = match part {
                KeyPart::Header(name) => {
                    // Every copy counts: a second Authorization must not share a decision.
                    for v in req.headers.get_all(name) {
                        h.update((v.len() as u64).to_be_bytes());
                        h.update(v.as_bytes());
                    }
                    h.update(b"\xff");
                    continue;
                }
                KeyPart::Query(q) => request_parts::query_param(req, q)
                    .unwrap_or_default()
                    .as_bytes(),
                KeyPart::Cookie(c) => request_parts::cookie(req, c).unwrap_or_default().as_bytes(),
                KeyPart::Method => req.method.as_str().as_bytes(),
                KeyPart::Path => req.uri.path().as_bytes(),
                KeyPart::ClientIp => {
                    match client {
                        Some(IpAddr::V4(a)) => h.update(a.octets()),
                        Some(IpAddr::V6(a)) => h.update(a.octets()),
                        None => {}
                    }
                    h.update(b"\xff");
                    continue;
                }
            };
            h.update((value.len() as u64).to_be_bytes());
            h.update(value);
        }
        h.finalize().into()
    }

    pub async fn authenticate(&self, x: &mut Exchange<'_>) -> Verification {
        let body = match self.forward_body {
            None => None,
            Some(max) => match read_request_body(x, max).await {
                Ok(b) => Some(b),
                Err(r) => return Verification::Answer(r),
            },
        };
        self.decide(x.session.req_header(), x.state.effective_ip, body)
            .await
    }

    /// The decision on a request from `client` (with its body when the service takes it).
    pub async fn decide(
        &self,
        req: &RequestHeader,
        client: Option<IpAddr>,
        body: Option<Bytes>,
    ) -> Verification {
        let outcome = match &self.cache {
            Some((ttl, parts)) => {
                let digest = Self::key(parts, req, client);
                self.decisions
                    .get(digest, || async {
                        let outcome = self.ask(req, client, body).await;
                        let keep = match &outcome {
                            Outcome::Admit(_) => *ttl,
                            Outcome::Refuse(401 | 403, _) => *ttl,
                            _ => Duration::ZERO,
                        };
                        (outcome, keep)
                    })
                    .await
            }
            None => self.ask(req, client, body).await,
        };
        match outcome {
            Outcome::Admit(id) => Verification::Accepted(id),
            Outcome::Refuse(status, relay) => {
                let mut r = Respond::new(
                    status,
                    "external_refused",
                    "refused by the authorization service",
                );
                r.relay = Some(Box::new(Relay::clone(&relay)));
                Verification::Answer(r)
            }
            Outcome::Unavailable => match self.on_failure {
                OnFailure::Deny => Verification::Unavailable,
                OnFailure::Allow => {
                    self.counters.waived.inc();
                    Verification::Waived
                }
            },
        }
    }

    /// The request to the service: the client's method, the service's path followed by
    /// the canonical path and query, the listed headers and where the request came from.
    fn call_request(
        &self,
        req: &RequestHeader,
        client: Option<IpAddr>,
        body: bool,
    ) -> Result<RequestHeader, String> {
        let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let target = format!("{}{path}", self.endpoint.base_path);
        let mut call = self.endpoint.request(req.method.as_str(), &target)?;
        for name in &self.forward_headers {
            for v in req.headers.get_all(name) {
                call.append_header(name.clone(), v.clone())
                    .map_err(|e| e.to_string())?;
            }
        }
        if body {
            if let Some(ct) = req.headers.get(http::header::CONTENT_TYPE) {
                call.insert_header(http::header::CONTENT_TYPE, ct.clone())
                    .map_err(|e| e.to_string())?;
            }
        }
        let mut set =
            |k: &'static str, v: &str| call.insert_header(k, v).map_err(|e| e.to_string());
        if let Some(ip) = client {
            set("x-forwarded-for", &ip.to_string())?;
        }
        set("x-forwarded-method", req.method.as_str())?;
        set("x-forwarded-uri", path)?;
        if let Some(host) = req.uri.host() {
            set("x-forwarded-host", host)?;
        } else if let Some(host) = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
        {
            set("x-forwarded-host", host)?;
        }
        Ok(call)
    }

    async fn ask(
        &self,
        req: &RequestHeader,
        client: Option<IpAddr>,
        body: Option<Bytes>,
    ) -> Outcome {
        self.counters.call.inc();
        let call = match self.call_request(req, client, body.is_some()) {
            Ok(c) => c,
            Err(e) => {
                self.counters.error.inc();
                log::warn!("external auth {}: cannot make the request: {e}", self.name);
                return Outcome::Unavailable;
            }
        };
        let reply = match self
            .endpoint
            .call(call, body, (MAX_ANSWER, Cap::Truncate), self.timeout)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                match e {
                    CallError::Timeout => self.counters.timeout.inc(),
                    CallError::Failed(_) => self.counters.error.inc(),
                }
                log::warn!("external auth {}: {e}", self.name);
                return Outcome::Unavailable;
            }
        };
        let status = reply.status();
        if status < 200 {
            // Not a decision (Pingora reads past 100 Continue; a 101 or another 1xx here
            // cannot be passed on as an answer).
            self.counters.error.inc();
            log::warn!("external auth {}: answered {status}", self.name);
            return Outcome::Unavailable;
        }
        let h = &reply.header.headers;
        if (200..300).contains(&status) {
            let consumer = self
                .consumer_header
                .as_ref()
                .and_then(|n| h.get(n))
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_string);
            let groups = consumer
                .as_ref()
                .and_then(|c| self.consumer_groups.get(c))
                .cloned()
                .unwrap_or_default();
            let headers = self
                .upstream_headers
                .iter()
                .flat_map(|n| h.get_all(n).iter().map(move |v| (n.clone(), v.clone())))
                .collect();
            return Outcome::Admit(Arc::new(Identity {
                provider: self.name.clone(),
                consumer,
                groups,
                headers,
                expires_at: u64::MAX,
                ..Identity::default()
            }));
        }
        let headers = self
            .client_headers
            .iter()
            .flat_map(|n| h.get_all(n).iter().map(move |v| (n.clone(), v.clone())))
            .collect::<Vec<(HeaderName, HeaderValue)>>();
        Outcome::Refuse(
            status,
            Arc::new(Relay {
                headers,
                body: reply.body,
            }),
        )
    }
}
