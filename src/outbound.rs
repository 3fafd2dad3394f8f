//! Calls the gateway makes on its own behalf (key sets, OpenID discovery, token
//! introspection, external authorization): one request to a configured URL through
//! Pingora's connector, with pooled connections, a deadline for the whole exchange and a
//! cap on the answer's body.

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// A resolved name is used this long before it is looked up again.
const RESOLVED_FOR: Duration = Duration::from_secs(30);
/// Idle pooled connections are kept this long.
const IDLE: Duration = Duration::from_secs(60);

pub struct Endpoint {
    pub url: http::Uri,
    tls: bool,
    host: String,
    port: u16,
    /// The URL's path without a final `/`, for services that take a path under it.
    pub base_path: String,
    /// A literal address, or the last lookup of the host name and when it was made.
    fixed: Option<SocketAddr>,
    resolved: ArcSwapOption<(SocketAddr, Instant)>,
    connector: Connector,
}

/// What to do with an answer's body over the cap.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// The answer is a failure.
    Fail,
    /// Keep the first bytes (the connection is then not reused).
    Truncate,
}

/// The service's answer.
pub struct Reply {
    pub header: Box<ResponseHeader>,
    pub body: Bytes,
}

impl Reply {
    pub fn status(&self) -> u16 {
        self.header.status.as_u16()
    }
}

#[derive(Debug)]
pub enum CallError {
    /// No answer within the deadline.
    Timeout,
    /// Could not connect, or the exchange broke; why.
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Timeout => f.write_str("no answer in time"),
            CallError::Failed(why) => f.write_str(why),
        }
    }
}

/// Check a CA file the way the TLS connector will load it (the connector panics on a bad one).
pub fn check_ca_file(path: &str) -> Result<(), String> {
    let mut store = pingora_core::tls::RootCertStore::empty();
    pingora_core::tls::load_ca_file_into_store(path, &mut store)
        .map_err(|e| format!("cannot use {path} as a CA file: {e}"))
}

impl Endpoint {
    /// An `http://` or `https://` URL with a host; `ca_file` must have passed
    /// [`check_ca_file`]. `pool` is how many idle connections are kept.
    pub fn parse(url: &str, ca_file: Option<String>, pool: usize) -> Result<Endpoint, String> {
        let bad = || format!("{url:?} is not an http:// or https:// URL");
        let uri: http::Uri = url.parse().map_err(|_| bad())?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let host = uri.host().ok_or_else(bad)?.to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let fixed = bare
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, port));
        let mut options = ConnectorOptions::new(pool);
        options.ca_file = ca_file;
        Ok(Endpoint {
            base_path: uri.path().trim_end_matches('/').to_string(),
            url: uri,
            tls,
            host,
            port,
            fixed,
            resolved: ArcSwapOption::empty(),
            connector: Connector::new(Some(options)),
        })
    }

    /// A request for `path_and_query` on this endpoint's host.
    pub fn request(&self, method: &str, path_and_query: &str) -> Result<RequestHeader, String> {
        let mut req = RequestHeader::build(method, path_and_query.as_bytes(), Some(8))
            .map_err(|e| format!("cannot make a request for {path_and_query:?}: {e}"))?;
        let authority = self
            .url
            .authority()
            .map_or(self.host.as_str(), |a| a.as_str());
        req.insert_header(http::header::HOST, authority)
            .map_err(|e| e.to_string())?;
        Ok(req)
    }

    /// The URL's own path and query.
    pub fn path_and_query(&self) -> &str {
        self.url.path_and_query().map_or("/", |p| p.as_str())
    }

    async fn address(&self) -> Result<SocketAddr, String> {
        if let Some(a) = self.fixed {
            return Ok(a);
        }
        if let Some(r) = self.resolved.load().as_deref() {
            if r.1.elapsed() < RESOLVED_FOR {
                return Ok(r.0);
            }
        }
        let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", self.host))?;
        self.resolved
            .store(Some(std::sync::Arc::new((addr, Instant::now()))));
        Ok(addr)
    }

    /// Send `req` (with `body`) and read the answer, all within `deadline`. An answer
    /// with a body over `max_body` bytes is a failure or cut, as `cap` says.
    pub async fn call(
        &self,
        req: RequestHeader,
        body: Option<Bytes>,
        (max_body, cap): (usize, Cap),
        deadline: Duration,
    ) -> Result<Reply, CallError> {
        let exchange = self.exchange(req, body, (max_body, cap), deadline);
        match tokio::time::timeout(deadline, exchange).await {
            Ok(r) => r.map_err(CallError::Failed),
            Err(_) => Err(CallError::Timeout),
        }
    }

    async fn exchange(
        &self,
        mut req: RequestHeader,
        body: Option<Bytes>,
        (max_body, cap): (usize, Cap),
        deadline: Duration,
    ) -> Result<Reply, String> {
        let addr = self.address().await?;
        let sni = if self.tls {
            self.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, self.tls, sni);
        peer.options.connection_timeout = Some(deadline);
        peer.options.idle_timeout = Some(IDLE);
        if let Some(b) = &body {
            req.insert_header(http::header::CONTENT_LENGTH, b.len())
                .map_err(|e| e.to_string())?;
        }
        let (mut s, _) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {}", e.etype().as_str()))?;
        s.write_request_header(Box::new(req))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(b) = body {
            s.write_request_body(b, true)
                .await
                .map_err(|e| e.to_string())?;
        }
        s.finish_request_body().await.map_err(|e| e.to_string())?;
        s.read_response_header().await.map_err(|e| e.to_string())?;
        let header = Box::new(s.response_header().ok_or("no response header")?.clone());
        let mut out = Vec::new();
        while let Some(chunk) = s.read_response_body().await.map_err(|e| e.to_string())? {
            if out.len() + chunk.len() > max_body {
                if cap == Cap::Fail {
                    return Err(format!("the answer's body is over {max_body} bytes"));
                }
                let room = max_body.saturating_sub(out.len());
                out.extend_from_slice(&chunk[..room.min(chunk.len())]);
                // The rest is left unread: the connection cannot be reused.
                return Ok(Reply {
                    header,
                    body: out.into(),
                });
            }
            out.extend_from_slice(&chunk);
        }
        self.connector.release_http_session(s, &peer, None).await;
        Ok(Reply {
            header,
            body: out.into(),
        })
    }
}
