//! The request as it goes upstream: the canonical path with the route's rewrite, the Host
//! the route asks for, and forwarding headers rebuilt from validated parts. The route's
//! policies (identity, transforms, mirror) run on it after this.

use super::ctx::Ctx;
use super::edge::is_tls;
use crate::forwarding::{self, ClientInfo};
use crate::request_parts::{request_host, target_uri};
use crate::route::HostPolicy;
use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;

pub fn build(session: &Session, upstream: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
    // The current attempt's target, for a route that sends the target's own Host.
    let target_host = ctx.attempt.upstream_host.take();
    let Some(route) = ctx.route() else {
        return Ok(());
    };
    let client_req = session.req_header();
    if let Some(path) = route.rewrite.apply(client_req.uri.path()) {
        upstream.set_uri(target_uri(&path, client_req.uri.query())?);
    }
    let client_host = request_host(client_req);
    match &route.host {
        HostPolicy::Target => {
            if let Some(h) = target_host {
                upstream.insert_header(http::header::HOST, h)?;
            }
        }
        HostPolicy::Client => {
            if let Some(h) = client_host {
                upstream.insert_header(http::header::HOST, h)?;
            }
        }
        HostPolicy::Fixed(h) => upstream.insert_header(http::header::HOST, h.clone())?,
    }
    let keepalive = ctx.pool().is_none_or(|p| p.keepalive);
    forwarding::strip_request_hop_headers(upstream, session.is_upgrade_req(), keepalive);
    let rt = ctx.rt();
    let ip = ctx.policy.client_ip;
    let client = ClientInfo {
        ip,
        trusted: ip.is_some_and(|ip| rt.trusted_proxies.contains(ip)),
        proto: if is_tls(session) { "https" } else { "http" },
        host: client_host,
        real_ip: ctx.policy.effective_ip,
    };
    forwarding::set_forwarded_headers(upstream, &client);
    upstream.insert_header(ctx.request_id.header.clone(), ctx.request_id.header_value())?;
    if let Some(t) = &ctx.trace {
        // A traced attempt is the upstream's parent; else the gateway's span is.
        let attempt = ctx.policy.trace.as_ref().and_then(|r| r.attempts.last());
        let value = match attempt {
            Some(a) => t.header_value_with(a.span_id),
            None => t.header_value(),
        };
        upstream.insert_header("traceparent", value)?;
    }
    // Identity headers come from the gateway only, never from the client.
    for name in &rt.auth.identity_headers {
        upstream.remove_header(name);
    }
    Ok(())
}
