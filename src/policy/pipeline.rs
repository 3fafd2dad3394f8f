//! A route's policies as a pipeline. Each policy is a compiled struct in its own file that
//! implements [`RoutePolicy`] for the phases it takes part in; a route runs its list in
//! order in every phase (the list and its order: `route/policies.rs`). A request-phase
//! policy returns [`Decision::Continue`] or [`Decision::Respond`], and [`answer`] is the one
//! place a `Respond` becomes the JSON answer, the log line and the metric.

use crate::config::{self, Config, Fault};
use crate::error_response;
use crate::observe::metrics::RouteMetrics;
use crate::observe::request_id::RequestId;
use crate::policy::auth::build::Auth;
use crate::policy::auth::Identity;
use crate::policy::ratelimit::local::GcraStore;
use crate::policy::ratelimit::redis::RedisLimiter;
use crate::router::PathMatch;
use crate::upstream::limit::ConcurrencyLimit;
use crate::upstream::Pool;
use bytes::Bytes;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

/// What a request-phase policy decided.
pub enum Decision {
    Continue,
    /// Answer the client now; nothing goes upstream. Boxed: the rare path.
    Respond(Box<Respond>),
}

/// A local answer: a JSON error body `{"error", "status", "request_id"}` with `headers`.
pub struct Respond {
    pub status: u16,
    pub message: Cow<'static, str>,
    pub headers: Vec<(&'static str, String)>,
    /// Close the client connection after the answer (its body was not read).
    pub close: bool,
    /// Why, in a word from a fixed set: the log line and the metric label.
    pub reason: &'static str,
    /// An RFC 9457 problem to answer with (`application/problem+json`) instead of the
    /// gateway's usual JSON error.
    pub problem: Option<Box<serde_json::Value>>,
    /// Another service's answer to pass on as it is (an authorization service's refusal).
    pub relay: Option<Box<Relay>>,
}

/// An answer made elsewhere: its headers and body go to the client unchanged.
#[derive(Clone)]
pub struct Relay {
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: Bytes,
}

impl Respond {
    pub fn new(
        status: u16,
        reason: &'static str,
        message: impl Into<Cow<'static, str>>,
    ) -> Box<Self> {
        Box::new(Respond {
            status,
            message: message.into(),
            headers: Vec::new(),
            close: false,
            reason,
            problem: None,
            relay: None,
        })
    }

    pub fn header(mut self: Box<Self>, name: &'static str, value: impl Into<String>) -> Box<Self> {
        self.headers.push((name, value.into()));
        self
    }

    /// The client connection ends with this answer.
    pub fn closing(mut self: Box<Self>) -> Box<Self> {
        self.close = true;
        self
    }
}

/// What the policies of one request know and leave for each other and for the log.
#[derive(Default)]
pub struct PolicyState {
    /// The peer's address.
    pub client_ip: Option<IpAddr>,
    /// The client's address as policies see it: behind trusted proxies, the one they report.
    pub effective_ip: Option<IpAddr>,
    /// Who is calling, when the route's access rule established it.
    pub identity: Option<Arc<Identity>>,
    /// RateLimit-Policy and RateLimit values for the response.
    pub rate_headers: Option<(String, String)>,
    /// `allowed` or `limited` when the route has rate limits (for the access log).
    pub rate_limit: Option<&'static str>,
    /// Its cluster limits were decided in Redis (for the trace).
    pub rate_limit_redis: bool,
    /// The upstream a traffic split chose (else the route's), an index into the runtime's.
    pub upstream: Option<usize>,
    /// Request body bytes seen.
    pub body_bytes: u64,
    /// Request and response bodies gathered for a JSON transform.
    pub request_json: Option<Vec<u8>>,
    pub response_json: Option<Vec<u8>>,
    /// A response body being gathered to check against the OpenAPI contract: which of the
    /// operation's responses, and the bytes so far.
    pub contract_body: Option<(usize, Vec<u8>)>,
    /// What this request records for its spans, when it is traced or explained.
    pub trace: Option<Box<crate::observe::spans::Recorder>>,
    /// The request asked for `Portico-Explain` with the admin token.
    pub explain: bool,
    /// The mirror's draw has been made (it is made once per request).
    pub mirror_drawn: bool,
    /// The whole request body, when a policy had to read it before going upstream
    /// (Pingora's retry buffer sends it on).
    pub request_body: Option<Bytes>,
    /// A mirror copy's header and the body gathered for it, sent when the body is complete.
    pub mirror: Option<Box<(RequestHeader, Vec<u8>)>>,
}

impl PolicyState {
    pub fn consumer(&self) -> Option<&str> {
        self.identity.as_ref().and_then(|id| id.consumer.as_deref())
    }
}

/// One request as a policy sees it in any phase.
pub struct Exchange<'a> {
    pub session: &'a mut Session,
    pub route: &'a str,
    pub metrics: &'a RouteMetrics,
    pub request_id: &'a RequestId,
    pub state: &'a mut PolicyState,
}

/// A route policy. Every phase has a default that does nothing, so a policy implements
/// only the phases it takes part in.
pub trait RoutePolicy {
    /// The policy's name in logs and metrics.
    const NAME: &'static str;

    /// Before anything goes upstream (Pingora's `request_filter`).
    fn request(&self, _x: &mut Exchange<'_>) -> impl Future<Output = Decision> + Send {
        std::future::ready(Decision::Continue)
    }

    /// Each chunk of the request body on its way upstream.
    fn request_body(
        &self,
        _x: &mut Exchange<'_>,
        _body: &mut Option<Bytes>,
        _end: bool,
    ) -> Result<()> {
        Ok(())
    }

    /// The request header as it goes upstream (each attempt).
    fn upstream_request(&self, _x: &mut Exchange<'_>, _upstream: &mut RequestHeader) -> Result<()> {
        Ok(())
    }

    /// The response header on its way to the client.
    fn response(&self, _x: &mut Exchange<'_>, _resp: &mut ResponseHeader) -> Result<()> {
        Ok(())
    }

    /// A response the gateway makes itself from upstream answers (composition).
    fn local_response(&self, _x: &mut Exchange<'_>, _resp: &mut ResponseHeader) -> Result<()> {
        Ok(())
    }

    /// What the policy needs of a request, in a line, for `portico explain`.
    fn describe(&self) -> String {
        String::new()
    }

    /// Each chunk of the response body on its way to the client.
    fn response_body(
        &self,
        _x: &mut Exchange<'_>,
        _body: &mut Option<Bytes>,
        _end: bool,
    ) -> Result<()> {
        Ok(())
    }
}

/// The upstreams of a config by name; `None` for one that is declared but failed to build
/// (routes naming it are not reported a second time).
pub type UpstreamIndex<'a> = HashMap<&'a str, Option<usize>>;

/// What routes are compiled against: the rest of the config, already built.
pub struct Sources<'a> {
    pub config: &'a Config,
    pub upstreams: &'a UpstreamIndex<'a>,
    pub pools: &'a [Arc<Pool>],
    pub unparsed: &'a config::Unparsed,
    pub auth: &'a Auth,
    pub limiter: &'a Arc<GcraStore>,
    pub redis: Option<&'a Arc<RedisLimiter>>,
    /// Route concurrency limits of the running config, by route name and size: requests
    /// still in flight on it hold their slots.
    pub route_limits: &'a HashMap<(String, usize), Arc<ConcurrencyLimit>>,
    /// Metrics are recorded (an admin listener serves them).
    pub metrics: bool,
}

/// What a route's policies are compiled from, and where their faults go.
pub struct Build<'a> {
    /// `routes[N]`, the YAML path of the route.
    pub path: &'a str,
    pub route: &'a config::Route,
    pub path_match: &'a PathMatch,
    pub src: &'a Sources<'a>,
    /// The OpenAPI operation's request rules, for a route made from an API that validates.
    pub contract: Option<&'a std::sync::Arc<super::contract::Contract>>,
    pub faults: &'a mut Vec<Fault>,
}

impl Build<'_> {
    pub fn fault(&mut self, field: impl std::fmt::Display, message: impl Into<String>) {
        self.faults
            .push(Fault::new(format!("{}.{field}", self.path), message));
    }

    /// A (field, message) fault of a section compiler, under `section`.
    pub fn fault_in(&mut self, section: &str, (field, message): (String, String)) {
        self.fault(format_args!("{section}.{field}"), message);
    }

    /// The index of the upstream `name`, reporting at `field` when there is none.
    pub fn upstream(&mut self, field: impl std::fmt::Display, name: &str) -> Option<usize> {
        match self.src.upstreams.get(name) {
            Some(i) => *i,
            None => {
                if !self.src.unparsed.upstreams.iter().any(|u| u == name) {
                    self.fault(field, format!("no upstream named {name:?}"));
                }
                None
            }
        }
    }
}

/// The `Portico-Explain` value for a request that asked for it.
pub fn explain_value(state: &PolicyState, route: Option<&str>) -> Option<String> {
    if !state.explain {
        return None;
    }
    let rec = state.trace.as_deref()?;
    Some(rec.summary(route))
}

/// Turn a policy's `Respond` into the answer, its log line and its metric.
pub async fn answer(x: &mut Exchange<'_>, policy: &'static str, r: Box<Respond>) -> Result<()> {
    x.metrics.refused(policy, r.reason);
    log::info!(
        "request {} on route {}: {} {policy} {} ({})",
        x.request_id,
        x.route,
        r.status,
        r.reason,
        r.message
    );
    if r.close {
        x.session.set_keepalive(None);
    }
    let mut r = r;
    if let Some(summary) = explain_value(x.state, Some(x.route)) {
        if let (Some(relay), Ok(v)) = (&mut r.relay, http::HeaderValue::from_str(&summary)) {
            let name = http::HeaderName::from_static(crate::observe::spans::EXPLAIN_HEADER);
            relay.headers.push((name, v));
        }
        r.headers
            .push((crate::observe::spans::EXPLAIN_HEADER, summary));
    }
    if let Some(relay) = r.relay {
        return error_response::relay(
            x.session,
            r.status,
            &relay.headers,
            relay.body,
            x.request_id,
        )
        .await;
    }
    let mut headers: Vec<(&str, &str)> = r.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    if let Some(mut problem) = r.problem {
        problem["request_id"] = serde_json::Value::from(x.request_id.as_str());
        headers.push(("content-type", "application/problem+json"));
        let body = bytes::Bytes::from(problem.to_string());
        return error_response::reply(x.session, r.status, body, x.request_id, &headers).await;
    }
    error_response::send(x.session, r.status, &r.message, x.request_id, &headers).await
}

/// The whole request body, read into Pingora's retry buffer (which sends it upstream
/// afterwards) by the first policy that needs it; `limit` is at most that buffer's 64 KiB.
pub async fn read_request_body(x: &mut Exchange<'_>, limit: u64) -> Result<Bytes, Box<Respond>> {
    if let Some(body) = &x.state.request_body {
        if body.len() as u64 > limit {
            return Err(body_too_large(limit));
        }
        return Ok(body.clone());
    }
    let declared = crate::request_parts::declared_length(&x.session.req_header().headers);
    if declared.is_some_and(|l| l > limit) {
        // Refused before a byte of it is read.
        return Err(body_too_large(limit));
    }
    x.session.as_mut().enable_retry_buffering();
    let mut raw = Vec::new();
    loop {
        match x.session.read_request_body().await {
            Ok(Some(chunk)) => {
                if (raw.len() + chunk.len()) as u64 > limit {
                    return Err(body_too_large(limit));
                }
                raw.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(Respond::new(
                    400,
                    "body_read",
                    format!("the request body could not be read: {e}"),
                )
                .closing())
            }
        }
    }
    let body = Bytes::from(raw);
    x.state.request_body = Some(body.clone());
    Ok(body)
}

/// 413 for a body over what a policy can read first; the rest of it is left unread.
pub fn body_too_large(limit: u64) -> Box<Respond> {
    Respond::new(
        413,
        "too_large",
        format!("a body checked before it goes upstream may have {limit} bytes at most"),
    )
    .closing()
}
