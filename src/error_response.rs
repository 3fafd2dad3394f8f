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
/// A gRPC request gets it the way gRPC clients read errors: see [`grpc_status`].
pub async fn send(
    session: &mut Session,
    status: u16,
    message: &str,
    request_id: &RequestId,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    if is_grpc(session.req_header()) {
        return send_grpc(session, status, message, request_id, extra).await;
    }
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
    resp.insert_header(request_id.header.clone(), request_id.header_value())?;
    resp.insert_header("cache-control", "no-store")?;
    for (name, value) in extra {
        resp.insert_header(*name, *value)?;
    }
    write(session, resp, body).await
}

/// Pass on another service's answer: its status, the given headers and its body, with
/// the request id; never stored by a cache.
pub async fn relay(
    session: &mut Session,
    status: u16,
    headers: &[(http::HeaderName, http::HeaderValue)],
    body: Bytes,
    request_id: &RequestId,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(3 + headers.len()))?;
    for (name, value) in headers {
        resp.append_header(name.clone(), value.clone())?;
    }
    resp.insert_header("content-length", body.len())?;
    resp.insert_header(request_id.header.clone(), request_id.header_value())?;
    resp.insert_header("cache-control", "no-store")?;
    write(session, resp, body).await
}

/// Send `resp` and `body` (no body to HEAD, and none when it is empty), ending the response.
async fn write(session: &mut Session, resp: ResponseHeader, body: Bytes) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD || body.is_empty();
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// `content-type: application/grpc` or `application/grpc+proto` and the like.
fn is_grpc(req: &pingora_http::RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| {
            let v = v.as_bytes();
            v.len() >= 16
                && v[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(v.get(16), None | Some(b'+' | b';'))
        })
}

/// The gRPC status code for an HTTP status the gateway answers with (gRPC's own mapping
/// of HTTP statuses, made finer where the gateway knows more).
pub fn grpc_status(status: u16) -> u8 {
    match status {
        400 | 413 | 431 => 3, // INVALID_ARGUMENT: the request itself is refused
        401 => 16,            // UNAUTHENTICATED
        403 => 7,             // PERMISSION_DENIED
        404 | 405 => 12,      // UNIMPLEMENTED
        429 => 8,             // RESOURCE_EXHAUSTED
        502 | 503 => 14,      // UNAVAILABLE
        504 => 4,             // DEADLINE_EXCEEDED
        _ => 2,               // UNKNOWN
    }
}

/// `grpc-message`: percent-encoded outside printable ASCII, and `%` itself (gRPC over
/// HTTP/2).
fn grpc_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            crate::canonical::path::push_escaped(&mut out, b);
        }
    }
    out
}

/// A gRPC error answer: HTTP 200 with no message and `grpc-status`/`grpc-message` in the
/// trailers, which gRPC clients report as that status (an HTTP 502 would be read as a
/// transport failure). `extra` headers (Retry-After, RateLimit) are kept.
async fn send_grpc(
    session: &mut Session,
    status: u16,
    message: &str,
    request_id: &RequestId,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    let code = grpc_status(status).to_string();
    let message = grpc_message(message);
    let mut resp = ResponseHeader::build(200, Some(5 + extra.len()))?;
    resp.insert_header("content-type", "application/grpc")?;
    resp.insert_header(request_id.header.clone(), request_id.header_value())?;
    for (name, value) in extra {
        resp.insert_header(*name, *value)?;
    }
    if session.as_http2().is_none() {
        // HTTP/1.1 has no trailers here: the status in the header, an empty framed body.
        resp.insert_header("grpc-status", code)?;
        resp.insert_header("grpc-message", message)?;
        resp.insert_header("content-length", "0")?;
        return session.write_response_header(Box::new(resp), true).await;
    }
    session.write_response_header(Box::new(resp), false).await?;
    let mut trailers = http::HeaderMap::with_capacity(2);
    let value = |v: String| {
        http::HeaderValue::from_str(&v).unwrap_or(http::HeaderValue::from_static("error"))
    };
    trailers.insert("grpc-status", value(code));
    trailers.insert("grpc-message", value(message));
    session.write_response_trailers(trailers).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_details() {
        assert_eq!(grpc_status(401), 16);
        assert_eq!(grpc_status(503), 14);
        assert_eq!(grpc_status(504), 4);
        assert_eq!(grpc_message("100% \u{e9}"), "100%25 %C3%A9");
        let mut req = pingora_http::RequestHeader::build("POST", b"/s/M", None).unwrap();
        req.insert_header("content-type", "application/grpc+proto")
            .unwrap();
        assert!(is_grpc(&req));
        req.insert_header("content-type", "application/grpcx")
            .unwrap();
        assert!(!is_grpc(&req));
    }
}
