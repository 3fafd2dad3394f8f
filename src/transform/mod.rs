//! Request and response transformation of a route: headers, path and query (with
//! variables), compiled at load.

pub mod headers;
pub mod json;
pub mod query;
pub mod template;

use crate::config::TransformSpec;
use headers::HeaderOps;
use json::JsonOps;
use query::QueryOps;
use regex::Regex;

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
