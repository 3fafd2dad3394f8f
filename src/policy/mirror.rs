//! Mirroring a share of a route's requests to a shadow upstream. The copy is the request as
//! it goes upstream, sent from its own task after the client's request is on its way; its response is read and dropped, so
//! a slow or failing shadow never touches the client.

use super::pipeline::{Build, Exchange, RoutePolicy};
use crate::request_parts::declared_length;
use crate::upstream::Pool;
use bytes::Bytes;
use http::header::{HeaderName, AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use pingora_error::Result;
use pingora_http::RequestHeader;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies larger than this are not mirrored.
pub const MAX_MIRROR_BODY: usize = 1 << 20;

pub struct Mirror {
    pub pool: Arc<Pool>,
    /// Share of requests mirrored, in basis points.
    pub share: u32,
    pub timeout: Duration,
    /// The client's credentials go to the shadow too.
    pub forward_credentials: bool,
    /// One permit per copy on its way; none left means the copy is dropped.
    pub slots: Arc<Semaphore>,
    /// The API key's header and query parameter: credentials like `Authorization`.
    pub credentials: Vec<HeaderName>,
    pub credential_query: Option<String>,
}

impl Mirror {
    pub fn from_config(b: &mut Build<'_>) -> Option<Self> {
        let m = b.route.mirror.as_ref()?;
        if !(0.0..=100.0).contains(&m.percent) {
            b.fault("mirror.percent", "must be between 0 and 100");
        }
        let pool = b.upstream("mirror.upstream", &m.upstream)?;
        if m.max_in_flight == 0 {
            b.fault("mirror.max_in_flight", "must be at least 1");
        }
        let keys = &b.src.auth.api_keys;
        Some(Mirror {
            pool: b.src.pools.get(pool)?.clone(),
            share: (m.percent * 100.0).round() as u32,
            timeout: m.timeout.0,
            forward_credentials: m.forward_credentials,
            slots: Arc::new(Semaphore::new(m.max_in_flight)),
            credentials: vec![keys.header().clone()],
            credential_query: keys.query().map(str::to_string),
        })
    }

    /// The copy's header: the request exactly as it goes upstream (after every rewrite and
    /// transform, with the gateway's forwarding and identity headers), less the client's
    /// credentials unless the route forwards them.
    pub fn copy_of(&self, upstream: &RequestHeader) -> RequestHeader {
        let mut copy = upstream.clone();
        if self.forward_credentials {
            return copy;
        }
        for name in [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE]
            .iter()
            .chain(&self.credentials)
        {
            copy.remove_header(name);
        }
        if let Some(name) = &self.credential_query {
            crate::request_parts::remove_query_param(&mut copy, name);
        }
        copy
    }
}

/// The request line and headers of the copy, minus hop-by-hop headers, with framing for
/// `body` and the shadow's own Host.
fn head(req: &RequestHeader, host: &str, body_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &req.headers {
        if matches!(
            name.as_str(),
            "host"
                | "connection"
                | "keep-alive"
                | "transfer-encoding"
                | "content-length"
                | "te"
                | "upgrade"
                | "proxy-connection"
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!("content-length: {body_len}\r\nx-mirrored: 1\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    );
    out
}

impl RoutePolicy for Mirror {
    const NAME: &'static str = "mirror";

    fn describe(&self) -> String {
        format!(
            "copies {}.{:02}% of requests to {}",
            self.share / 100,
            self.share % 100,
            self.pool.name
        )
    }

    /// The request is finished for the upstream: copy it, once per request. A request
    /// without a body is sent at once, one with a body once the body is read.
    fn upstream_request(&self, x: &mut Exchange<'_>, upstream: &mut RequestHeader) -> Result<()> {
        if std::mem::replace(&mut x.state.mirror_drawn, true) {
            return Ok(());
        }
        let req = x.session.req_header();
        let length = declared_length(&req.headers);
        let too_long = length.is_some_and(|l| l > MAX_MIRROR_BODY as u64);
        if too_long || super::split::draw() >= self.share {
            return Ok(());
        }
        let head = self.copy_of(upstream);
        let chunked = req.headers.contains_key(http::header::TRANSFER_ENCODING);
        match length {
            Some(0) | None if !chunked => self.dispatch(x, &head, Vec::new()),
            length => {
                let capacity = length.map_or(0, |l| l as usize).min(MAX_MIRROR_BODY);
                x.state.mirror = Some(Box::new((head, Vec::with_capacity(capacity))));
            }
        }
        Ok(())
    }

    fn request_body(
        &self,
        x: &mut Exchange<'_>,
        body: &mut Option<Bytes>,
        end: bool,
    ) -> Result<()> {
        let Some(pending) = &mut x.state.mirror else {
            return Ok(());
        };
        if let Some(b) = body {
            if pending.1.len() + b.len() > MAX_MIRROR_BODY {
                x.state.mirror = None;
                return Ok(());
            }
            pending.1.extend_from_slice(b);
        }
        if end {
            if let Some(pending) = x.state.mirror.take() {
                let (head, body) = *pending;
                self.dispatch(x, &head, body);
            }
        }
        Ok(())
    }
}

impl Mirror {
    /// Send the copy unless too many are on their way already.
    fn dispatch(&self, x: &Exchange<'_>, head: &RequestHeader, body: Vec<u8>) {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            x.metrics.mirror_dropped();
            log::debug!(
                "request {}: mirror copy dropped, too many on their way",
                x.request_id
            );
            return;
        };
        let id = x.request_id.to_string();
        send(self.pool.clone(), head, body, self.timeout, id, permit);
    }
}

/// Send the copy from a task of its own; errors are only logged.
fn send(
    pool: Arc<Pool>,
    req: &RequestHeader,
    body: Vec<u8>,
    timeout: Duration,
    request_id: String,
    permit: OwnedSemaphorePermit,
) {
    let Some(addr) = pool.select(b"", &[]) else {
        log::debug!(
            "request {request_id}: no healthy target to mirror to in {}",
            pool.name
        );
        return;
    };
    let host = pool
        .peer(&addr)
        .and_then(|(_, h)| h.to_str().ok().map(str::to_string))
        .unwrap_or_else(|| addr.to_string());
    let head = head(req, &host, body.len());
    tokio::spawn(async move {
        let _permit = permit;
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            s.write_all(&head).await?;
            s.write_all(&body).await?;
            let mut sink = [0u8; 4096];
            while s.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::debug!("request {request_id}: mirror to {addr} failed: {e}"),
            Err(_) => log::debug!("request {request_id}: mirror to {addr} timed out"),
        }
    });
}
