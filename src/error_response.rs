//! Every response the gateway makes up itself is JSON: `{"error", "status", "request_id"}`.

use crate::observe::request_id::RequestId;
use bytes::Bytes;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// The JSON body of an error response.
pub fn body(status: u16, message: &str, request_id: &str) -> Bytes {
    let v = serde_json::json!({
        "error": message,
        "status": status,
        "request_id": request_id,
    });
    Bytes::from(v.to_string())
}

/// Write a complete error response. `extra` headers are added (e.g. `Allow` on a 405).
pub async fn send(
    session: &mut Session,
    status: u16,
    message: &str,
    request_id: &RequestId,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    reply(
        session,
        status,
        body(status, message, request_id),
        request_id,
        extra,
    )
    .await
}

/// Write a complete JSON response with `body`.
pub async fn reply(
    session: &mut Session,
    status: u16,
    body: Bytes,
    request_id: &RequestId,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len())?;
    resp.insert_header(request_id.header.clone(), request_id.as_str())?;
    resp.insert_header("cache-control", "no-store")?;
    for (name, value) in extra {
        resp.insert_header(*name, *value)?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
