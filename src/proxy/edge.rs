//! What the listener a request came in on asks of it: plain HTTP redirected to HTTPS.

use super::{request_host, Ctx};
use crate::error_response;
use crate::router::normalize_host;
use pingora_error::Result;
use pingora_proxy::Session;

pub fn is_tls(session: &Session) -> bool {
    session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .is_some()
}

/// Send a plain-HTTP request to the same URL over HTTPS: 301 for GET and HEAD, 308 (the
/// method and body are kept) for the rest. ACME HTTP-01 challenges are left alone, and a
/// request without a usable Host cannot be redirected (false: handled as usual).
pub async fn redirect_https(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    let req = session.req_header();
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if path.starts_with("/.well-known/acme-challenge/") {
        return Ok(false);
    }
    let Some(port) = ctx.rt.https_port else {
        return Ok(false);
    };
    let Some(host) = request_host(req)
        .map(normalize_host)
        .filter(|h| !h.is_empty())
    else {
        return Ok(false);
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let status = if matches!(req.method, http::Method::GET | http::Method::HEAD) {
        301
    } else {
        308
    };
    let body = error_response::body(
        status,
        "this resource is served over HTTPS",
        &ctx.request_id,
    );
    error_response::reply(
        session,
        status,
        body,
        &ctx.request_id,
        &[("location", location.as_str())],
    )
    .await?;
    Ok(true)
}
