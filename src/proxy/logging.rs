//! The end of every request: its metrics and its access-log line.

use super::{edge::is_tls, Ctx};
use crate::observe::access_log::{self, AccessLog};
use crate::observe::metrics::Finished;
use crate::observe::spans;
use crate::observe::trace::TraceContext;
use crate::request_parts::request_host;
use pingora_proxy::Session;
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime};

/// Count a finished request in the route's and upstream's metrics.
pub fn record_metrics(session: &Session, ctx: &Ctx) {
    let metrics = ctx.route().map_or(&ctx.rt().unrouted, |r| &r.metrics);
    if !metrics.enabled() {
        return;
    }
    metrics.request(&Finished {
        method: &session.req_header().method,
        status: session.response_written().map(|r| r.status.as_u16()),
        duration: ctx.times.start.elapsed(),
        bytes_in: session.body_bytes_read(),
        bytes_out: session.body_bytes_sent(),
    });
    if ctx.cache.active {
        metrics.cache(session.cache.phase().as_str());
    }
    let Some(pool) = ctx.pool() else {
        return;
    };
    if let (Some(start), Some(end)) = (ctx.times.connect_start, ctx.times.response) {
        pool.metrics
            .response
            .observe(end.saturating_duration_since(start).as_secs_f64());
    }
}

fn millis(from: Option<Instant>, to: Option<Instant>) -> Option<f64> {
    match (from, to) {
        (Some(a), Some(b)) if b >= a => Some((b - a).as_secs_f64() * 1000.0),
        _ => None,
    }
}

/// One access-log line, serialized straight from borrowed fields (no intermediate map).
#[derive(serde::Serialize)]
struct AccessRecord<'a> {
    time: access_log::Rfc3339,
    request_id: &'a str,
    trace_id: Option<&'a str>,
    client_ip: Option<IpAddr>,
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    status: Option<u16>,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    target: Option<SocketAddr>,
    consumer: Option<&'a str>,
    bytes_in: usize,
    bytes_out: usize,
    duration_ms: f64,
    upstream_connect_ms: Option<f64>,
    upstream_response_ms: Option<f64>,
    cache: Option<&'static str>,
    rate_limit: Option<&'static str>,
    /// `HTTP/1.1`, `HTTP/2`...
    protocol: &'static str,
    tls: bool,
    /// Attempts at the upstream, retries included (0 when none was made).
    attempts: u32,
}

/// One access-log line. The path is logged without its query, and no header values, so
/// tokens and keys sent in either never reach the log.
pub fn write_access_line(log: &AccessLog, session: &Session, ctx: &Ctx) {
    let req = session.req_header();
    let t = &ctx.times;
    let trace_digits = ctx.trace.as_ref().map(TraceContext::trace_id_digits);
    let record = AccessRecord {
        time: access_log::Rfc3339::new(SystemTime::now()),
        request_id: &ctx.request_id,
        trace_id: trace_digits
            .as_ref()
            .and_then(|d| std::str::from_utf8(d).ok()),
        client_ip: ctx.policy.client_ip,
        method: req.method.as_str(),
        host: request_host(req),
        path: req.uri.path(),
        status: session.response_written().map(|r| r.status.as_u16()),
        route: ctx.route().map(|r| r.name.as_str()),
        upstream: ctx.pool().map(|p| p.name.as_str()),
        target: ctx.attempt.target,
        consumer: ctx.policy.consumer(),
        bytes_in: session.body_bytes_read(),
        bytes_out: session.body_bytes_sent(),
        duration_ms: t.start.elapsed().as_secs_f64() * 1000.0,
        upstream_connect_ms: millis(t.connect_start, t.connected),
        upstream_response_ms: millis(t.connect_start, t.response),
        cache: ctx.cache.active.then(|| session.cache.phase().as_str()),
        rate_limit: ctx.policy.rate_limit,
        protocol: match req.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        },
        tls: is_tls(session),
        attempts: ctx.attempt.count,
    };
    log.write_with(|buf| {
        // Serializing plain fields into memory cannot fail.
        let _ = serde_json::to_writer(buf, &record);
    });
}

/// A traced request's spans, to the export queue.
pub fn send_spans(session: &Session, ctx: &mut Ctx) {
    let Some(rec) = ctx.policy.trace.take() else {
        return;
    };
    let (Some(tracer), Some(trace)) = (&ctx.config.rt().tracer, &ctx.trace) else {
        return;
    };
    // Recorded only to explain the request to an operator: not a sampled trace.
    if trace.flags & 1 == 0 {
        return;
    }
    let req = session.req_header();
    let identity = ctx.policy.identity.as_deref();
    let facts = spans::RequestFacts {
        method: req.method.as_str(),
        path: req.uri.path(),
        host: request_host(req),
        route: ctx.route().map(|r| r.name.as_str()),
        status: session.response_written().map_or(0, |r| r.status.as_u16()),
        client: ctx.policy.client_ip.map(|ip| ip.to_string()),
        request_id: ctx.request_id.as_str(),
        protocol: match req.version {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        },
        consumer: identity.and_then(|i| i.consumer.as_deref()),
        auth_provider: identity.map(|i| i.provider.as_str()),
        rate_limit: ctx.policy.rate_limit,
        rate_limit_redis: ctx.policy.rate_limit_redis,
    };
    tracer.send(spans::spans(&rec, trace, &facts));
}
