//! JSON responses for the gateway's own small HTTP apps (admin API, demo services).

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use serde_json::Value;

pub fn json(status: StatusCode, body: Value) -> Response<Vec<u8>> {
    let bytes = body.to_string().into_bytes();
    let mut resp = Response::new(Vec::new());
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    *resp.body_mut() = bytes;
    resp
}
