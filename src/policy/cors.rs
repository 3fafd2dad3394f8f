//! CORS: preflights answered at the gateway, and the response headers of actual requests.

use super::pipeline::{Build, Exchange, RoutePolicy};
use crate::config::Cors as CorsSpec;
use crate::error_response;
use crate::observe::request_id::RequestId;
use http::{HeaderValue, Method};
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    methods: Vec<Method>,
    /// Pre-rendered `Access-Control-Allow-Methods`.
    methods_value: HeaderValue,
    /// Lower-case; empty with `any_header`.
    headers: Vec<String>,
    any_header: bool,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

/// A preflight's outcome: the headers to answer with, or a refusal (403).
pub enum Preflight {
    Allowed(Vec<(&'static str, HeaderValue)>),
    Refused(&'static str),
}

fn value(s: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(s).map_err(|_| format!("{s:?} is not a header value"))
}

impl Cors {
    pub fn from_config(b: &mut Build<'_>) -> Option<Self> {
        let spec = b.route.cors.as_ref()?;
        Cors::compile(spec).map_err(|e| b.fault_in("cors", e)).ok()
    }

    pub fn compile(c: &CorsSpec) -> Result<Self, (String, String)> {
        let any_origin = c.allow_origins.iter().any(|o| o == "*");
        if any_origin && c.allow_credentials {
            return Err((
                "allow_credentials".into(),
                "credentials cannot be allowed for any origin (\"*\"); list the origins".into(),
            ));
        }
        if c.allow_origins.is_empty() {
            return Err((
                "allow_origins".into(),
                "list at least one origin or \"*\"".into(),
            ));
        }
        let methods = c
            .allow_methods
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    (
                        format!("allow_methods[{i}]"),
                        format!("{m:?} is not a method"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let methods_value = methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let any_header = c.allow_headers.iter().any(|h| h == "*");
        Ok(Cors {
            any_origin,
            origins: c
                .allow_origins
                .iter()
                .filter(|o| *o != "*")
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            methods_value: value(&methods_value).map_err(|e| ("allow_methods".into(), e))?,
            methods,
            headers: c
                .allow_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            any_header,
            expose: match c.expose_headers.is_empty() {
                true => None,
                false => Some(
                    value(&c.expose_headers.join(", "))
                        .map_err(|e| ("expose_headers".into(), e))?,
                ),
            },
            credentials: c.allow_credentials,
            max_age: HeaderValue::from(c.max_age.0.as_secs()),
        })
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.any_origin
            || self
                .origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin.trim_end_matches('/')))
    }

    /// `Access-Control-Allow-Origin` for this origin: `*` when any origin may call without
    /// credentials, else the origin itself.
    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Whether `req` is a CORS preflight (OPTIONS with Origin and the method to come).
    pub fn is_preflight(req: &RequestHeader) -> Option<Method> {
        if req.method != Method::OPTIONS || !req.headers.contains_key(http::header::ORIGIN) {
            return None;
        }
        let m = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)?;
        Method::from_bytes(m.as_bytes()).ok()
    }

    pub fn preflight(&self, req: &RequestHeader, method: &Method) -> Preflight {
        let Some(origin) = req.headers.get(http::header::ORIGIN) else {
            return Preflight::Refused("no Origin");
        };
        if !origin.to_str().is_ok_and(|o| self.origin_allowed(o)) {
            return Preflight::Refused("origin not allowed");
        }
        if !self.methods.contains(method) {
            return Preflight::Refused("method not allowed for cross-origin requests");
        }
        let requested = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut asked = requested
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty());
        if !self.any_header
            && !asked.all(|h| self.headers.iter().any(|a| a.eq_ignore_ascii_case(h)))
        {
            return Preflight::Refused("header not allowed for cross-origin requests");
        }
        let mut out = vec![
            ("access-control-allow-origin", self.allow_origin(origin)),
            ("access-control-allow-methods", self.methods_value.clone()),
            ("access-control-max-age", self.max_age.clone()),
            (
                "vary",
                HeaderValue::from_static(
                    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
                ),
            ),
        ];
        if !requested.is_empty() {
            if let Ok(v) = HeaderValue::from_str(requested) {
                out.push(("access-control-allow-headers", v));
            }
        }
        if self.credentials {
            out.push((
                "access-control-allow-credentials",
                HeaderValue::from_static("true"),
            ));
        }
        Preflight::Allowed(out)
    }

    /// Headers for the response to an actual cross-origin request.
    pub fn respond(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
    ) -> pingora_error::Result<()> {
        let Some(origin) = req.headers.get(http::header::ORIGIN) else {
            return Ok(());
        };
        resp.append_header("vary", "Origin")?;
        if !origin.to_str().is_ok_and(|o| self.origin_allowed(o)) {
            return Ok(());
        }
        resp.insert_header("access-control-allow-origin", self.allow_origin(origin))?;
        if self.credentials {
            resp.insert_header("access-control-allow-credentials", "true")?;
        }
        if let Some(e) = &self.expose {
            resp.insert_header("access-control-expose-headers", e.clone())?;
        }
        Ok(())
    }
}

impl RoutePolicy for Cors {
    const NAME: &'static str = "cors";

    fn describe(&self) -> String {
        if self.any_origin {
            "CORS headers for any origin".into()
        } else {
            format!("CORS headers for {}", self.origins.join(", "))
        }
    }

    fn response(&self, x: &mut Exchange<'_>, resp: &mut ResponseHeader) -> Result<()> {
        self.respond(x.session.req_header(), resp)
    }

    fn local_response(&self, x: &mut Exchange<'_>, resp: &mut ResponseHeader) -> Result<()> {
        self.respond(x.session.req_header(), resp)
    }
}

/// Answer a preflight for the route that `method` would take, with its CORS policy.
pub async fn answer_preflight(
    session: &mut Session,
    cors: &Cors,
    method: &Method,
    request_id: &RequestId,
) -> Result<()> {
    match cors.preflight(session.req_header(), method) {
        Preflight::Allowed(headers) => {
            let mut resp = ResponseHeader::build(204, Some(headers.len() + 2))?;
            for (name, value) in headers {
                resp.append_header(name, value)?;
            }
            resp.insert_header("content-length", "0")?;
            resp.insert_header(request_id.header.clone(), request_id.header_value())?;
            session.write_response_header(Box::new(resp), true).await
        }
        Preflight::Refused(why) => {
            let message = format!("CORS preflight refused: {why}");
            error_response::send(session, 403, &message, request_id, &[]).await
        }
    }
}
