//! What a traced request records as it goes — each policy's run and decision, the cache
//! lookup, each upstream attempt — and the spans made from that when it ends: one server
//! span for the request and a child span for each of those. Nothing is recorded for a
//! request that is not traced.

use super::trace::TraceContext;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

/// The response header that explains a request to an operator who asked for it.
pub const EXPLAIN_HEADER: &str = "portico-explain";

pub struct PolicyRun {
    pub name: &'static str,
    pub start: Instant,
    pub end: Instant,
    /// `continue`, or the reason of the refusal.
    pub outcome: &'static str,
}

pub struct AttemptRun {
    pub number: u32,
    pub span_id: [u8; 8],
    pub target: Option<SocketAddr>,
    pub start: Instant,
    pub connected: Option<(Instant, bool)>,
    pub response: Option<(Instant, u16)>,
    pub end: Option<Instant>,
    pub error: Option<String>,
}

/// The record of one traced request.
pub struct Recorder {
    pub start: Instant,
    pub start_wall: SystemTime,
    pub policies: Vec<PolicyRun>,
    /// When the cache lookup started, ended, and what it found.
    pub cache: Option<(Instant, Option<Instant>, &'static str)>,
    pub attempts: Vec<AttemptRun>,
}

impl Recorder {
    /// A record of a request that started at `start`.
    pub fn new(start: Instant) -> Box<Recorder> {
        let start_wall = SystemTime::now()
            .checked_sub(start.elapsed())
            .unwrap_or_else(SystemTime::now);
        Box::new(Recorder {
            start,
            start_wall,
            policies: Vec::with_capacity(4),
            cache: None,
            attempts: Vec::new(),
        })
    }

    fn wall(&self, at: Instant) -> SystemTime {
        self.start_wall + at.saturating_duration_since(self.start)
    }

    pub fn policy(&mut self, name: &'static str, start: Instant, outcome: &'static str) {
        self.policies.push(PolicyRun {
            name,
            start,
            end: Instant::now(),
            outcome,
        });
    }

    pub fn cache_lookup_started(&mut self) {
        self.cache = Some((Instant::now(), None, "lookup"));
    }

    pub fn cache_lookup_ended(&mut self, status: &'static str) {
        if let Some(c) = &mut self.cache {
            if c.1.is_none() {
                *c = (c.0, Some(Instant::now()), status);
            }
        }
    }

    /// A new attempt starts (ending the one before); its span id, the parent the upstream
    /// is told of.
    pub fn attempt_started(&mut self, number: u32, target: Option<SocketAddr>) -> [u8; 8] {
        let now = Instant::now();
        if let Some(last) = self.attempts.last_mut() {
            last.end.get_or_insert(now);
        }
        let span_id = super::trace::new_span();
        self.attempts.push(AttemptRun {
            number,
            span_id,
            target,
            start: now,
            connected: None,
            response: None,
            end: None,
            error: None,
        });
        span_id
    }

    /// One line for `Portico-Explain`: the route, each policy with its decision and time,
    /// the cache lookup, each attempt (target, status or error, connect and response
    /// times), and the time so far.
    pub fn summary(&self, route: Option<&str>) -> String {
        use std::fmt::Write;
        let ms = |d: Duration| millis(d);
        let mut out = format!("route={}", route.unwrap_or("-"));
        out.push_str("; policies=");
        for (i, p) in self.policies.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(
                out,
                "{sep}{}:{}:{:.3}ms",
                p.name,
                p.outcome,
                ms(p.end - p.start)
            );
        }
        if self.policies.is_empty() {
            out.push('-');
        }
        if let Some((start, end, status)) = self.cache {
            let took = end.map_or(0.0, |e| ms(e - start));
            let _ = write!(out, "; cache={status}:{took:.3}ms");
        }
        for a in &self.attempts {
            let target = a.target.map_or_else(|| "-".to_string(), |t| t.to_string());
            let _ = write!(out, "; attempt={}:{target}", a.number);
            match (&a.error, a.response) {
                (Some(e), _) => {
                    let _ = write!(out, ":{e}");
                }
                (None, Some((_, status))) => {
                    let _ = write!(out, ":{status}");
                }
                _ => {}
            }
            if let Some((at, reused)) = a.connected {
                let how = if reused { "reused" } else { "new" };
                let _ = write!(out, ":connect={:.3}ms({how})", ms(at - a.start));
            }
            if let Some((at, _)) = a.response {
                let _ = write!(out, ":response={:.3}ms", ms(at - a.start));
            }
        }
        let _ = write!(out, "; total={:.3}ms", ms(self.start.elapsed()));
        out
    }

    pub fn current_attempt(&mut self) -> Option<&mut AttemptRun> {
        self.attempts.last_mut().filter(|a| a.end.is_none())
    }
}

/// What the server span says about the request, gathered when it ends.
pub struct RequestFacts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub route: Option<&'a str>,
    pub status: u16,
    pub client: Option<String>,
    pub request_id: &'a str,
    pub protocol: &'static str,
    pub consumer: Option<&'a str>,
    pub auth_provider: Option<&'a str>,
    pub rate_limit: Option<&'static str>,
    /// Cluster limits were decided in Redis.
    pub rate_limit_redis: bool,
}

fn scope() -> InstrumentationScope {
    static SCOPE: OnceLock<InstrumentationScope> = OnceLock::new();
    SCOPE
        .get_or_init(|| {
            InstrumentationScope::builder("portico")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build()
        })
        .clone()
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The spans of a finished request: the server span first, then its children.
pub fn spans(rec: &Recorder, trace: &TraceContext, f: &RequestFacts<'_>) -> Vec<SpanData> {
    let end = Instant::now();
    let trace_id = TraceId::from_bytes(trace.trace_id);
    let server_id = SpanId::from_bytes(trace.span_id);
    let context = |span_id: [u8; 8]| {
        SpanContext::new(
            trace_id,
            SpanId::from_bytes(span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        )
    };
    let span = |span_id: [u8; 8],
                parent: SpanId,
                kind: SpanKind,
                name: Cow<'static, str>,
                (start, stop): (Instant, Instant),
                attributes: Vec<KeyValue>,
                status: Status| SpanData {
        span_context: context(span_id),
        parent_span_id: parent,
        parent_span_is_remote: false,
        span_kind: kind,
        name,
        start_time: rec.wall(start),
        end_time: rec.wall(stop),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope(),
    };
    let mut out = Vec::with_capacity(2 + rec.policies.len() + rec.attempts.len());

    let name = match f.route {
        Some(r) => format!("{} {r}", f.method),
        None => f.method.to_string(),
    };
    let mut attributes = vec![
        KeyValue::new("http.request.method", f.method.to_string()),
        KeyValue::new("url.path", f.path.to_string()),
        KeyValue::new("http.response.status_code", i64::from(f.status)),
        KeyValue::new("network.protocol.version", f.protocol),
        KeyValue::new("portico.request_id", f.request_id.to_string()),
    ];
    if let Some(r) = f.route {
        attributes.push(KeyValue::new("http.route", r.to_string()));
    }
    if let Some(h) = f.host {
        attributes.push(KeyValue::new("server.address", h.to_string()));
    }
    if let Some(c) = &f.client {
        attributes.push(KeyValue::new("client.address", c.clone()));
    }
    let status = if f.status >= 500 {
        Status::error(format!("answered {}", f.status))
    } else {
        Status::Unset
    };
    let mut server = span(
        trace.span_id,
        trace.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
        SpanKind::Server,
        name.into(),
        (rec.start, end),
        attributes,
        status,
    );
    server.parent_span_is_remote = trace.parent.is_some();
    out.push(server);

    for p in &rec.policies {
        let name = match p.name {
            "access" => "auth",
            other => other,
        };
        let mut attributes = vec![
            KeyValue::new("portico.policy", p.name),
            KeyValue::new("portico.decision", p.outcome),
        ];
        match p.name {
            "access" => {
                if let Some(c) = f.consumer {
                    attributes.push(KeyValue::new("enduser.id", c.to_string()));
                }
                if let Some(a) = f.auth_provider {
                    attributes.push(KeyValue::new("portico.auth.provider", a.to_string()));
                }
            }
            "rate_limit" => {
                if let Some(r) = f.rate_limit {
                    attributes.push(KeyValue::new("portico.rate_limit.result", r));
                }
                let store = if f.rate_limit_redis { "redis" } else { "local" };
                attributes.push(KeyValue::new("portico.rate_limit.store", store));
            }
            _ => {}
        }
        out.push(span(
            super::trace::new_span(),
            server_id,
            SpanKind::Internal,
            Cow::Borrowed(name),
            (p.start, p.end),
            attributes,
            Status::Unset,
        ));
    }
    if let Some((start, stop, status)) = rec.cache {
        out.push(span(
            super::trace::new_span(),
            server_id,
            SpanKind::Internal,
            Cow::Borrowed("cache lookup"),
            (start, stop.unwrap_or(end)),
            vec![KeyValue::new("portico.cache.status", status)],
            Status::Unset,
        ));
    }
    for a in &rec.attempts {
        let mut attributes = vec![KeyValue::new("portico.attempt", i64::from(a.number))];
        if let Some(t) = a.target {
            attributes.push(KeyValue::new("server.address", t.ip().to_string()));
            attributes.push(KeyValue::new("server.port", i64::from(t.port())));
        }
        if let Some((at, reused)) = a.connected {
            attributes.push(KeyValue::new("portico.connect_ms", millis(at - a.start)));
            attributes.push(KeyValue::new("portico.connection_reused", reused));
        }
        if let Some((at, code)) = a.response {
            attributes.push(KeyValue::new("portico.response_ms", millis(at - a.start)));
            attributes.push(KeyValue::new("http.response.status_code", i64::from(code)));
        }
        let status = match &a.error {
            Some(e) => {
                attributes.push(KeyValue::new("error.type", e.clone()));
                Status::error(e.clone())
            }
            None => Status::Unset,
        };
        out.push(span(
            a.span_id,
            server_id,
            SpanKind::Client,
            Cow::Borrowed("upstream attempt"),
            (a.start, a.end.unwrap_or(end)),
            attributes,
            status,
        ));
    }
    out
}
