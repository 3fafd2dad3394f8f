//! Mirroring a share of a route's requests to a shadow upstream. The copy is the request as
//! it goes upstream, sent from its own task after the client's request is on its way; its response is read and dropped, so
//! a slow or failing shadow never touches the client.

use super::Pool;
use http::header::{HeaderName, AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION};
use pingora_http::RequestHeader;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies larger than this are not mirrored.
pub const MAX_MIRROR_BODY: usize = 1 << 20;

pub struct Mirror {
    pub pool: usize,
    /// Share of requests mirrored, in basis points.
    pub share: u32,
    pub timeout: Duration,
    /// The client's credentials go to the shadow too.
    pub forward_credentials: bool,
    /// One permit per copy on its way; none left means the copy is dropped.
    pub slots: Arc<Semaphore>,
}

impl Mirror {
    /// The copy's header: the request exactly as it goes upstream (after every rewrite and
    /// transform, with the gateway's forwarding and identity headers), less the client's
    /// credentials unless the route forwards them.
    pub fn copy_of(
        &self,
        upstream: &RequestHeader,
        credentials: &[HeaderName],
        credential_query: Option<&str>,
    ) -> Box<RequestHeader> {
        let mut copy = Box::new(upstream.clone());
        if self.forward_credentials {
            return copy;
        }
        for name in [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE]
            .iter()
            .chain(credentials)
        {
            copy.remove_header(name);
        }
        if let Some(name) = credential_query {
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

/// Send the copy from a task of its own; errors are only logged.
pub fn send(
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
