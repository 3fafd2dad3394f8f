//! Request validation against an OpenAPI operation (`apis[].validate.request`): path, query
//! and header parameters and JSON bodies are checked with JSON Schema validators compiled
//! at load; a request that does not conform gets 400 with an RFC 9457 problem listing every
//! violation (bounded), a body of a type the operation does not take gets 415, and in both
//! cases nothing reaches the upstream. The body is read before the upstream is chosen (up to
//! Pingora's 64 KiB retry buffer, which then sends it on), and only for operations that
//! declare a JSON body.

use super::pipeline::{read_request_body, Build, Decision, Exchange, Respond, RoutePolicy};
use crate::request_parts::{is_json_media, media_type};
use bytes::Bytes;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use serde_json::{json, Value};
use std::sync::Arc;

/// Violations listed in one answer, at most; the count says how many there were.
const MAX_LISTED: usize = 20;
/// Pingora re-sends a body read early from its retry buffer, which holds 64 KiB.
pub const MAX_BODY: u64 = 64 * 1024;

/// Where a parameter is read from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum In {
    Path,
    Query,
    Header,
}

impl In {
    fn as_str(self) -> &'static str {
        match self {
            In::Path => "path",
            In::Query => "query",
            In::Header => "header",
        }
    }
}

pub struct Parameter {
    pub name: String,
    pub location: In,
    pub required: bool,
    /// The schema's `type`, to turn the text of the request into a JSON value.
    pub kind: Kind,
    pub schema: jsonschema::Validator,
}

/// What a parameter's text becomes before it is validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Text,
    Integer,
    Number,
    Boolean,
    /// Comma-separated (path, header) or repeated (query) values of the item kind.
    Array(Scalar),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    Text,
    Integer,
    Number,
    Boolean,
}

pub struct Body {
    pub required: bool,
    /// Media types the operation takes (lower case, without parameters); `*/*` and
    /// `type/*` ranges allowed.
    pub media_types: Vec<String>,
    /// The schema of its JSON media type, when it has one.
    pub json: Option<jsonschema::Validator>,
}

/// Which responses a rule is for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Statuses {
    Exact(u16),
    /// `2XX`: the first digit.
    Class(u16),
    Default,
}

/// What one documented response may look like.
pub struct ResponseRule {
    pub statuses: Statuses,
    /// Media types it may have; any when empty (the document lists no content).
    pub media_types: Vec<String>,
    pub json: Option<jsonschema::Validator>,
}

/// One operation's request rules (and, with `validate.response: report`, its responses).
pub struct Contract {
    pub operation: String,
    /// The path regex with one capture group per path parameter, in template order.
    pub path: regex::Regex,
    pub path_names: Vec<String>,
    pub parameters: Vec<Parameter>,
    pub body: Option<Body>,
    pub max_body: u64,
    /// Whether requests are checked (else only responses are reported).
    pub requests: bool,
    /// The documented responses, when they are reported on.
    pub responses: Option<Vec<ResponseRule>>,
}

impl Contract {
    /// Check the path, query and header parameters of a request (its canonical path).
    pub fn check_parameters(
        &self,
        path: &str,
        query: Option<&str>,
        headers: &http::HeaderMap,
        found: &mut Vec<Violation>,
    ) {
        let captures = if self.path_names.is_empty() {
            None
        } else {
            self.path.captures(path)
        };
        let pairs: Vec<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> = match query {
            Some(q) if self.parameters.iter().any(|p| p.location == In::Query) => {
                form_urlencoded::parse(q.as_bytes()).collect()
            }
            _ => Vec::new(),
        };
        for p in &self.parameters {
            let texts: Vec<String> = match p.location {
                In::Path => self
                    .path_names
                    .iter()
                    .position(|n| *n == p.name)
                    .and_then(|i| captures.as_ref()?.get(i + 1))
                    .map(|m| vec![percent_decoded(m.as_str())])
                    .unwrap_or_default(),
                In::Query => pairs
                    .iter()
                    .filter(|(k, _)| *k == p.name)
                    .map(|(_, v)| v.to_string())
                    .collect(),
                In::Header => headers
                    .get_all(p.name.as_str())
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(str::to_string)
                    .collect(),
            };
            if texts.is_empty() {
                if p.required {
                    found.push(Violation {
                        location: p.location.as_str(),
                        name: p.name.clone(),
                        pointer: String::new(),
                        message: "is required".into(),
                    });
                }
                continue;
            }
            // A single value given twice: the service may read the other one than we checked.
            if texts.len() > 1 && !matches!(p.kind, Kind::Array(_)) {
                found.push(Violation {
                    location: p.location.as_str(),
                    name: p.name.clone(),
                    pointer: String::new(),
                    message: format!("is given {} times; it takes one value", texts.len()),
                });
                continue;
            }
            let value = typed(p.kind, p.location, &texts);
            for e in p.schema.iter_errors(&value) {
                found.push(Violation {
                    location: p.location.as_str(),
                    name: p.name.clone(),
                    pointer: e.instance_path.to_string(),
                    message: e.to_string(),
                });
            }
        }
    }

    /// Check a JSON request body (bytes as received) against the operation's schema.
    pub fn check_json_body(&self, raw: &[u8], found: &mut Vec<Violation>) {
        let Some(schema) = self.body.as_ref().and_then(|b| b.json.as_ref()) else {
            return;
        };
        match serde_json::from_slice::<Value>(raw) {
            Ok(value) => {
                for e in schema.iter_errors(&value) {
                    found.push(Violation {
                        location: "body",
                        name: String::new(),
                        pointer: e.instance_path.to_string(),
                        message: e.to_string(),
                    });
                }
            }
            Err(e) => found.push(Violation {
                location: "body",
                name: String::new(),
                pointer: String::new(),
                message: format!("not JSON: {e}"),
            }),
        }
    }
}

impl std::fmt::Debug for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Contract({})", self.operation)
    }
}

/// Compiled contracts compare by identity: a reload builds new ones.
impl PartialEq for Contract {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

/// The route policy that checks a request against its operation's contract.
pub struct RequestValidation {
    contract: Arc<Contract>,
}

impl RequestValidation {
    pub fn from_config(b: &mut Build<'_>) -> Option<Self> {
        Some(RequestValidation {
            contract: b.contract?.clone(),
        })
    }
}

/// One thing that does not conform: where (`path`, `query`, `header`, `body`), which
/// parameter, the JSON pointer within its value, and what is wrong.
#[derive(Debug)]
pub struct Violation {
    pub location: &'static str,
    pub name: String,
    pub pointer: String,
    pub message: String,
}

impl RoutePolicy for RequestValidation {
    const NAME: &'static str = "validation";

    fn describe(&self) -> String {
        "parameters and body checked against the OpenAPI operation".into()
    }

    /// `validate.response: report`: the status and media type now, a JSON body as it ends.
    fn response(&self, x: &mut Exchange<'_>, resp: &mut ResponseHeader) -> Result<()> {
        let Some(rules) = &self.contract.responses else {
            return Ok(());
        };
        let status = resp.status.as_u16();
        let Some(i) = Self::rule_for(rules, status) else {
            Self::mismatch(x, "status", &format!("status {status} is not documented"));
            return Ok(());
        };
        let rule = &rules[i];
        let head = x.session.req_header().method == http::Method::HEAD;
        if head || matches!(status, 204 | 304) || rule.media_types.is_empty() {
            return Ok(());
        }
        let media = media_type(resp.headers.get(http::header::CONTENT_TYPE)).unwrap_or_default();
        if !rule.media_types.iter().any(|m| media_matches(m, &media)) {
            Self::mismatch(
                x,
                "media_type",
                &format!("{media:?} is not documented for status {status}"),
            );
            return Ok(());
        }
        // A compressed body would have to be inflated to be read: not for a report.
        if rule.json.is_some()
            && is_json_media(&media)
            && !resp.headers.contains_key(http::header::CONTENT_ENCODING)
        {
            x.state.contract_body = Some((i, Vec::new()));
        }
        Ok(())
    }

    fn response_body(
        &self,
        x: &mut Exchange<'_>,
        body: &mut Option<Bytes>,
        end: bool,
    ) -> Result<()> {
        let Some((i, buf)) = &mut x.state.contract_body else {
            return Ok(());
        };
        if let Some(chunk) = body {
            if (buf.len() + chunk.len()) as u64 > self.contract.max_body {
                // Too large to check: the report says nothing rather than something wrong.
                x.state.contract_body = None;
                return Ok(());
            }
            buf.extend_from_slice(chunk);
        }
        if !end {
            return Ok(());
        }
        let (i, buf) = (*i, std::mem::take(buf));
        x.state.contract_body = None;
        let schema = self
            .contract
            .responses
            .as_ref()
            .and_then(|r| r.get(i))
            .and_then(|r| r.json.as_ref());
        let Some(schema) = schema else {
            return Ok(());
        };
        let detail = match serde_json::from_slice::<Value>(&buf) {
            Ok(value) => schema
                .iter_errors(&value)
                .next()
                .map(|e| format!("{}: {e}", e.instance_path)),
            Err(e) => Some(format!("not JSON: {e}")),
        };
        if let Some(detail) = detail {
            Self::mismatch(x, "body", &truncated(detail));
        }
        Ok(())
    }

    async fn request(&self, x: &mut Exchange<'_>) -> Decision {
        let c = &self.contract;
        if !c.requests {
            return Decision::Continue;
        }
        let mut found = Vec::new();
        self.check_parameters(x, &mut found);
        if let Some(body) = &c.body {
            match self.check_body(x, body, &mut found).await {
                Ok(()) => {}
                Err(r) => return Decision::Respond(r),
            }
        }
        if found.is_empty() {
            return Decision::Continue;
        }
        Decision::Respond(problem(c, found))
    }
}

impl RequestValidation {
    /// The documented response for `status`: an exact one, else its class, else `default`.
    fn rule_for(rules: &[ResponseRule], status: u16) -> Option<usize> {
        let find = |want: Statuses| rules.iter().position(|r| r.statuses == want);
        find(Statuses::Exact(status))
            .or_else(|| find(Statuses::Class(status / 100)))
            .or_else(|| find(Statuses::Default))
    }

    fn mismatch(x: &Exchange<'_>, kind: &'static str, detail: &str) {
        x.metrics.contract_mismatch(kind);
        log::warn!(
            "request {} on route {}: the response does not match the API's contract ({kind}): {detail}",
            x.request_id,
            x.route,
        );
    }

    fn check_parameters(&self, x: &mut Exchange<'_>, found: &mut Vec<Violation>) {
        let req = x.session.req_header();
        self.contract
            .check_parameters(req.uri.path(), req.uri.query(), &req.headers, found);
    }

    async fn check_body(
        &self,
        x: &mut Exchange<'_>,
        body: &Body,
        found: &mut Vec<Violation>,
    ) -> Result<(), Box<Respond>> {
        let headers = &x.session.req_header().headers;
        let declared = media_type(headers.get(http::header::CONTENT_TYPE));
        let has_body = !x.session.is_body_empty();
        if !has_body {
            if body.required {
                found.push(Violation {
                    location: "body",
                    name: String::new(),
                    pointer: String::new(),
                    message: "a request body is required".into(),
                });
            }
            return Ok(());
        }
        let Some(media) = declared else {
            return Err(Respond::new(
                415,
                "media_type",
                "the body has no Content-Type",
            ));
        };
        if !body.media_types.iter().any(|m| media_matches(m, &media)) {
            return Err(Respond::new(
                415,
                "media_type",
                format!(
                    "{media} is not a media type of this operation; it takes {}",
                    body.media_types.join(", ")
                ),
            ));
        }
        if body.json.is_none() || !is_json_media(&media) {
            return Ok(());
        }
        let raw = read_request_body(x, self.contract.max_body).await?;
        self.contract.check_json_body(&raw, found);
        Ok(())
    }
}

fn problem(c: &Contract, found: Vec<Violation>) -> Box<Respond> {
    let total = found.len();
    let listed: Vec<Value> = found
        .into_iter()
        .take(MAX_LISTED)
        .map(|v| {
            let mut item =
                json!({"in": v.location, "pointer": v.pointer, "message": truncated(v.message)});
            if !v.name.is_empty() {
                item["name"] = json!(v.name);
            }
            item
        })
        .collect();
    let detail = format!(
        "{total} violation{} of operation {}",
        if total == 1 { "" } else { "s" },
        c.operation
    );
    let mut r = Respond::new(400, "invalid_request", detail.clone());
    r.problem = Some(Box::new(json!({
        "type": "about:blank",
        "title": "The request does not match the API's contract",
        "status": 400,
        "detail": detail,
        "violations": listed,
        "violation_count": total,
    })));
    r
}

/// A violation message of bounded length (they quote the offending value).
fn truncated(mut s: String) -> String {
    const MAX: usize = 300;
    if s.len() > MAX {
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// A path segment's value: the canonical path keeps only the percent-encodings it must.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let (h, l) = (hex(h).unwrap_or(0), hex(l).unwrap_or(0));
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request's text as the JSON value its schema expects; text that does not parse stays
/// text, so the schema's `type` reports it.
fn typed(kind: Kind, location: In, texts: &[String]) -> Value {
    let scalar = |k: Scalar, t: &str| -> Value {
        let t = t.trim();
        match k {
            Scalar::Integer => t
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or_else(|_| t.into()),
            Scalar::Number => t
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .unwrap_or_else(|| t.into()),
            Scalar::Boolean => match t {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => t.into(),
            },
            Scalar::Text => t.into(),
        }
    };
    match kind {
        Kind::Array(item) => {
            let parts: Vec<&str> = if location == In::Query && texts.len() > 1 {
                texts.iter().map(String::as_str).collect()
            } else {
                texts.iter().flat_map(|t| t.split(',')).collect()
            };
            Value::Array(parts.into_iter().map(|t| scalar(item, t)).collect())
        }
        Kind::Text => texts[0].clone().into(),
        Kind::Integer => scalar(Scalar::Integer, &texts[0]),
        Kind::Number => scalar(Scalar::Number, &texts[0]),
        Kind::Boolean => scalar(Scalar::Boolean, &texts[0]),
    }
}

fn media_matches(range: &str, media: &str) -> bool {
    range == "*/*"
        || range == media
        || range
            .strip_suffix("/*")
            .is_some_and(|t| media.split('/').next() == Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_text_becomes_the_schema_type() {
        let one = |k, t: &str| typed(k, In::Query, &[t.to_string()]);
        assert_eq!(one(Kind::Integer, "42"), json!(42));
        assert_eq!(one(Kind::Integer, "4x"), json!("4x"));
        assert_eq!(one(Kind::Boolean, "true"), json!(true));
        assert_eq!(one(Kind::Array(Scalar::Integer), "1,2"), json!([1, 2]));
        let repeated = typed(
            Kind::Array(Scalar::Text),
            In::Query,
            &["a".into(), "b,c".into()],
        );
        assert_eq!(repeated, json!(["a", "b,c"]));
    }

    #[test]
    fn media_ranges() {
        assert!(media_matches("application/json", "application/json"));
        assert!(media_matches("application/*", "application/json"));
        assert!(media_matches("*/*", "text/plain"));
        assert!(!media_matches("application/json", "text/plain"));
    }
}
