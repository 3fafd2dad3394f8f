//! Reading a named cookie or query parameter from a request, without allocating.

use pingora_http::RequestHeader;

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
    }
}
