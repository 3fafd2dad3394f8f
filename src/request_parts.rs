//! Reading a named cookie, a query parameter or the client address as key bytes, without
//! allocating; and the media type of a Content-Type.

use pingora_http::RequestHeader;
use std::net::IpAddr;

/// The request's host as the client gave it: the Host header, else the URI's authority
/// (HTTP/2). Canonical by the time any policy sees it.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// The request target made of `path` and `query`; 400 when they make no valid one.
pub fn target_uri(path: &str, query: Option<&str>) -> pingora_error::Result<http::Uri> {
    use pingora_error::{ErrorType, OrErr};
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    http::Uri::try_from(target).or_err(
        ErrorType::HTTPStatus(400),
        "rewritten path is not a valid URI",
    )
}

/// The body length a request or response declares (`Content-Length`).
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The value of cookie `name`, from any `Cookie` header.
pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The raw (not percent-decoded) value of query parameter `name`; `""` when it has none.
pub fn query_param<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// `query` without parameter `name`; `None` when it has no such parameter.
pub fn without_query_param(query: &str, name: &str) -> Option<String> {
    let is_it = |pair: &&str| pair.split_once('=').map_or(*pair, |(k, _)| k) == name;
    if !query.split('&').any(|p| is_it(&p)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_it(p)).collect();
    Some(kept.join("&"))
}

/// Remove query parameter `name` from `req`'s target; `false` when it had none.
pub fn remove_query_param(req: &mut RequestHeader, name: &str) -> bool {
    let Some(kept) = req.uri.query().and_then(|q| without_query_param(q, name)) else {
        return false;
    };
    let path = req.uri.path();
    let mut target = String::with_capacity(path.len() + kept.len() + 1);
    target.push_str(path);
    if !kept.is_empty() {
        target.push('?');
        target.push_str(&kept);
    }
    // A path and what was left of a valid query form a valid target.
    match http::Uri::try_from(target) {
        Ok(uri) => {
            req.set_uri(uri);
            true
        }
        Err(_) => false,
    }
}

/// The media type of a Content-Type value, lower-case, without parameters.
pub fn media_type(content_type: Option<&http::HeaderValue>) -> Option<String> {
    let ct = content_type?.to_str().ok()?;
    Some(
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// Whether a media type (as [`media_type`] gives it) is JSON: `application/json` or
/// `application/*+json`.
pub fn is_json_media(media: &str) -> bool {
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// The address's octets in `scratch`, or nothing without an address: a key without
/// allocating.
pub fn ip_bytes(ip: Option<IpAddr>, scratch: &mut [u8; 16]) -> &[u8] {
    match ip {
        Some(IpAddr::V4(v4)) => {
            scratch[..4].copy_from_slice(&v4.octets());
            &scratch[..4]
        }
        Some(IpAddr::V6(v6)) => {
            *scratch = v6.octets();
            &scratch[..]
        }
        None => b"",
    }
}

/// As [`ip_bytes`], an IPv6 address cut to its first `v6_prefix` bits (its network).
pub fn ip_network_bytes(ip: Option<IpAddr>, v6_prefix: u8, scratch: &mut [u8; 16]) -> &[u8] {
    match ip {
        Some(IpAddr::V6(v6)) if v6_prefix < 128 => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(v6_prefix))
                .unwrap_or(0);
            *scratch = (u128::from(v6) & mask).to_be_bytes();
            &scratch[..]
        }
        _ => ip_bytes(ip, scratch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cookies_and_parameters() {
        let mut req = RequestHeader::build("GET", b"/p?a=1&flag&b=two", None).unwrap();
        req.append_header("cookie", "x=1; sid=abc").unwrap();
        req.append_header("cookie", "late=2").unwrap();
        assert_eq!(cookie(&req, "sid"), Some("abc"));
        assert_eq!(cookie(&req, "late"), Some("2"));
        assert_eq!(cookie(&req, "none"), None);
        assert_eq!(query_param(&req, "b"), Some("two"));
        assert_eq!(query_param(&req, "flag"), Some(""));
        assert_eq!(query_param(&req, "c"), None);
        assert_eq!(
            without_query_param("a=1&key=s&b=2", "key").as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(without_query_param("key=s", "key").as_deref(), Some(""));
        assert_eq!(without_query_param("a=1", "key"), None);
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(
            ip_network_bytes(Some(one), 64, &mut a),
            ip_network_bytes(Some(other), 64, &mut b)
        );
        assert_ne!(
            ip_network_bytes(Some(one), 128, &mut a),
            ip_network_bytes(Some(other), 128, &mut b)
        );
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(ip_network_bytes(Some(v4), 64, &mut a), &[10, 1, 2, 3]);
    }
}
