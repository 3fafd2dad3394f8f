//! Complete responses (mostly JSON) for the gateway's own small HTTP apps (admin API, demo services).

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use serde_json::Value;

pub fn json(status: StatusCode, body: Value) -> Response<Vec<u8>> {
    bytes(status, "application/json", body.to_string().into_bytes())
}

/// A complete response of `content_type`.
pub fn bytes(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Vec<u8>> {
    let mut resp = Response::new(Vec::new());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    *resp.body_mut() = body;
    resp
}
