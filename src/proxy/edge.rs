//! What the listener a request came in on, and its route, ask of it: plain HTTP
//! redirected to HTTPS, HSTS on HTTPS, the idle limit of an upgraded connection; and
//! whether an operator asked (with the admin token) to have the request explained.

use super::Ctx;
use crate::error_response;
use crate::request_parts::request_host;
use crate::router::normalize_host;
use crate::tls;
use pingora_error::Result;
use pingora_proxy::Session;

pub fn is_tls(session: &Session) -> bool {
    session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .is_some()
}

/// The listener's rules: `true` when the request was answered (redirected).
pub async fn listener_answers(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    let rt = ctx.config.rt();
    if !rt.edge {
        return Ok(false);
    }
    let local = session.server_addr().and_then(|a| a.as_inet()).copied();
    let Some(l) = local.and_then(|a| tls::listeners::find(&rt.listener_specs, a)) else {
        return Ok(false);
    };
    if is_tls(session) {
        ctx.hsts = l.hsts.clone();
        return Ok(false);
    }
    if l.redirect_https {
        return Box::pin(redirect_https(session, ctx)).await;
    }
    Ok(false)
}

/// The route's rules: `true` when the request was answered (redirected).
pub async fn route_answers(session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
    let Some(route) = ctx.route() else {
        return Ok(false);
    };
    if session.is_upgrade_req() {
        // The client's side of an upgraded connection: idle per the route, not per the
        // body timeout (Pingora's default would cut it after 60 s).
        session.set_read_timeout(Some(route.upgrade_idle));
    }
    if route.redirect_https && !is_tls(session) {
        return Box::pin(redirect_https(session, ctx)).await;
    }
    Ok(false)
}

/// Send a plain-HTTP request to the same URL over HTTPS: 301 for GET and HEAD, 308 (the
/// method and body are kept) for the rest. ACME HTTP-01 challenges are left alone, and a
/// request without a usable Host cannot be redirected (false: handled as usual).
async fn redirect_https(session: &mut Session, ctx: &Ctx) -> Result<bool> {
    let req = session.req_header();
    let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
    if path.starts_with("/.well-known/acme-challenge/") {
        return Ok(false);
    }
    let Some(port) = ctx.rt().https_port else {
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

/// Whether the request carries the debug header with the admin token. The header is
/// removed either way: it holds a secret and never goes upstream.
pub fn explain_asked(session: &mut Session, rt: &crate::runtime::Runtime) -> bool {
    let Some(admin) = &rt.admin else {
        return false;
    };
    let (Some(name), Some(expected)) = (&admin.debug_header, &admin.token_sha256) else {
        return false;
    };
    let req = session.req_header_mut();
    let Some(value) = req.headers.get(name) else {
        return false;
    };
    use sha2::Digest;
    // Digests compare in fixed length, so timing says nothing about the token.
    let digest: [u8; 32] = sha2::Sha256::digest(value.as_bytes().trim_ascii()).into();
    let asked = &digest == expected;
    req.remove_header(name);
    asked
}
