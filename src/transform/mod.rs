//! Request and response transformation of a route: headers, path and query (with
//! variables), compiled at load.

pub mod headers;
pub mod json;
pub mod query;
pub mod template;

use crate::config::TransformSpec;
use crate::policy::pipeline::{Build, Exchange, RoutePolicy};
use crate::request_parts::{declared_length, target_uri};
use bytes::Bytes;
use headers::HeaderOps;
use json::JsonOps;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use query::QueryOps;
use regex::Regex;
use std::borrow::Cow;
use template::Vars;

pub struct RouteTransforms {
    pub request_headers: HeaderOps,
    pub query: QueryOps,
    pub path: Option<(Regex, String)>,
    pub response_headers: HeaderOps,
    pub request_json: Option<JsonOps>,
    pub response_json: Option<JsonOps>,
    /// Largest body a JSON transform buffers.
    pub max_body: usize,
}

impl RouteTransforms {
    pub fn from_config(b: &mut Build<'_>) -> Option<Self> {
        let spec = b.route.transform.as_ref()?;
        RouteTransforms::compile(spec)
            .map_err(|e| b.fault_in("transform", e))
            .ok()
    }

    /// Faults come back as (path below `transform`, message).
    pub fn compile(spec: &TransformSpec) -> Result<Self, (String, String)> {
        let under =
            |prefix: &'static str| move |(p, m): (String, String)| (format!("{prefix}.{p}"), m);
        let path = match &spec.request.path {
            Some(p) => Some((
                Regex::new(&p.regex)
                    .map_err(|e| ("request.path.regex".to_string(), e.to_string()))?,
                p.replace.clone(),
            )),
            None => None,
        };
        Ok(RouteTransforms {
            request_headers: HeaderOps::compile(&spec.request.headers)
                .map_err(under("request.headers"))?,
            query: QueryOps::compile(&spec.request.query).map_err(under("request.query"))?,
            path,
            response_headers: HeaderOps::compile(&spec.response.headers)
                .map_err(under("response.headers"))?,
            request_json: JsonOps::compile(&spec.request.json).map_err(under("request.json"))?,
            response_json: JsonOps::compile(&spec.response.json).map_err(under("response.json"))?,
            max_body: usize::try_from(spec.max_body.0).unwrap_or(usize::MAX),
        })
    }

    /// Whether the URI sent upstream changes.
    pub fn rewrites_uri(&self) -> bool {
        self.path.is_some() || !self.query.is_empty()
    }
}

/// A JSON request body is on its way (not compressed, not empty).
fn json_body_follows(req: &RequestHeader) -> bool {
    let encoded = req.headers.contains_key(http::header::CONTENT_ENCODING);
    let has_body = req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || declared_length(&req.headers).is_some_and(|l| l > 0);
    !encoded && has_body && json::is_json(req.headers.get(http::header::CONTENT_TYPE))
}

impl RouteTransforms {
    /// The path (after the route's rewrite) and query as the transform makes them.
    fn rewrite_uri(&self, upstream: &mut RequestHeader, vars: &Vars) -> Result<()> {
        let mut path = Cow::Borrowed(upstream.uri.path());
        let mut query = upstream.uri.query().map(Cow::Borrowed);
        if let Some((re, replace)) = &self.path {
            if let Cow::Owned(p) = re.replace(&path, replace.as_str()) {
                path = Cow::Owned(p);
            }
        }
        if !self.query.is_empty() {
            query = self.query.apply(query.as_deref(), vars).map(Cow::Owned);
        }
        let uri = target_uri(&path, query.as_deref())?;
        upstream.set_uri(uri);
        Ok(())
    }
}

impl RoutePolicy for RouteTransforms {
    const NAME: &'static str = "transform";

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.path.is_some() {
            parts.push("path");
        }
        if self.request_json.is_some() {
            parts.push("request JSON");
        }
        if self.response_json.is_some() {
            parts.push("response JSON");
        }
        if parts.is_empty() {
            "rewrites headers or the query".into()
        } else {
            format!("rewrites headers, query and the {}", parts.join(", "))
        }
    }

    fn upstream_request(&self, x: &mut Exchange<'_>, upstream: &mut RequestHeader) -> Result<()> {
        let vars = Vars::of(x);
        if self.rewrites_uri() {
            self.rewrite_uri(upstream, &vars)?;
        }
        self.request_headers.apply(upstream, &vars)?;
        if self.response_json.is_some() {
            // Bodies to edit must come uncompressed; one that still does is passed on.
            upstream.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
        }
        let client = x.session.req_header();
        if self.request_json.is_some() && json_body_follows(client) && !x.session.is_upgrade_req() {
            if declared_length(&client.headers).is_some_and(|l| l > self.max_body as u64) {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    format!("JSON body over {} bytes", self.max_body),
                );
            }
            // The edited body has a new length, known only once it is all read.
            upstream.remove_header(&http::header::CONTENT_LENGTH);
            upstream.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            x.state.request_json = Some(Vec::new());
        }
        Ok(())
    }

    /// Gather the request body; at its end, send the edited one (or the original when it
    /// is not JSON).
    fn request_body(
        &self,
        x: &mut Exchange<'_>,
        body: &mut Option<Bytes>,
        end: bool,
    ) -> Result<()> {
        let Some(buf) = &mut x.state.request_json else {
            return Ok(());
        };
        if !json::gather(buf, body, end, self.max_body, self.request_json.as_ref()) {
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                format!("JSON body over {} bytes", self.max_body),
            );
        }
        if end {
            x.state.request_json = None;
        }
        Ok(())
    }

    fn response(&self, x: &mut Exchange<'_>, resp: &mut ResponseHeader) -> Result<()> {
        if !self.response_headers.is_empty() {
            self.response_headers.apply(resp, &Vars::of(x))?;
        }
        if self.response_json.is_none() {
            return Ok(());
        }
        let req = x.session.req_header();
        let has_body = req.method != http::Method::HEAD
            && !matches!(resp.status.as_u16(), 204 | 304)
            && !resp.status.is_informational();
        let encoded = resp
            .headers
            .get(http::header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() != b"identity");
        if has_body && !encoded && json::is_json(resp.headers.get(http::header::CONTENT_TYPE)) {
            if declared_length(&resp.headers).is_some_and(|l| l > self.max_body as u64) {
                return Error::e_explain(
                    ErrorType::HTTPStatus(502),
                    format!("upstream JSON body over {} bytes", self.max_body),
                );
            }
            resp.remove_header(&http::header::CONTENT_LENGTH);
            resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            x.state.response_json = Some(Vec::new());
        }
        Ok(())
    }

    fn local_response(&self, x: &mut Exchange<'_>, resp: &mut ResponseHeader) -> Result<()> {
        self.response_headers.apply(resp, &Vars::of(x))
    }

    fn response_body(
        &self,
        x: &mut Exchange<'_>,
        body: &mut Option<Bytes>,
        end: bool,
    ) -> Result<()> {
        let Some(buf) = &mut x.state.response_json else {
            return Ok(());
        };
        if !json::gather(buf, body, end, self.max_body, self.response_json.as_ref()) {
            // The header is out already: all that is left is to end the response.
            return Error::e_explain(
                ErrorType::HTTPStatus(502),
                format!("upstream JSON body over {} bytes", self.max_body),
            );
        }
        if end {
            x.state.response_json = None;
        }
        Ok(())
    }
}
