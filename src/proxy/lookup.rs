//! Which route a request takes (or its 404/405), and the route a CORS preflight asks
//! about.

use super::Ctx;
use crate::error_response;
use crate::policy::cors;
use crate::request_parts::request_host;
use crate::router::{normalize_host, RouteLookup};
use pingora_error::Result;
use pingora_proxy::Session;

/// The route of the request, or the 404/405 answer (then `None`).
pub async fn find_route(session: &mut Session, ctx: &Ctx) -> Result<Option<usize>> {
    let req = session.req_header();
    let host = request_host(req).map(normalize_host).unwrap_or_default();
    let rt = ctx.config.rt();
    let (status, message, allow) =
        match rt
            .router
            .find(&host, &req.method, req.uri.path(), &req.headers)
        {
            RouteLookup::Found(i) => return Ok(Some(i)),
            RouteLookup::NotFound => (404, "no route matches this request".to_string(), None),
            RouteLookup::MethodNotAllowed(methods) => {
                let allow = methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                (
                    405,
                    format!("method {} is not allowed here", req.method),
                    Some(allow),
                )
            }
        };
    let explain = crate::policy::pipeline::explain_value(&ctx.policy, None);
    let mut extra: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &allow {
        extra.push(("allow", a.as_str()));
    }
    if let Some(e) = &explain {
        extra.push((crate::observe::spans::EXPLAIN_HEADER, e.as_str()));
    }
    Box::pin(error_response::send(
        session,
        status,
        &message,
        &ctx.request_id,
        &extra,
    ))
    .await?;
    Ok(None)
}

/// Answer a CORS preflight for the route the announced method would take; `false` when
/// no route with a CORS policy takes it (the request then goes on as any OPTIONS).
pub async fn preflight(session: &mut Session, ctx: &Ctx, method: &http::Method) -> Result<bool> {
    let req = session.req_header();
    let host = request_host(req).map(normalize_host).unwrap_or_default();
    let rt = ctx.config.rt();
    let RouteLookup::Found(i) = rt.router.find(&host, method, req.uri.path(), &req.headers) else {
        return Ok(false);
    };
    let Some(cors) = rt.routes.get(i).and_then(|r| r.policies.cors()) else {
        return Ok(false);
    };
    cors::answer_preflight(session, cors, method, &ctx.request_id).await?;
    Ok(true)
}
