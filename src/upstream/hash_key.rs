//! Where a consistent-hash key comes from in a request.

use crate::request_parts;
use http::HeaderName;
use pingora_http::RequestHeader;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    Path,
    ClientIp,
}

impl HashKey {
    /// Parse `header:NAME`, `cookie:NAME`, `query:NAME`, `path` or `client_ip`.
    pub fn parse(spec: &str) -> Result<HashKey, String> {
        let bad = || {
            format!(
                "unknown hash key {spec:?}; use header:NAME, cookie:NAME, query:NAME, path or client_ip"
            )
        };
        match spec.split_once(':') {
            None => match spec {
                "path" => Ok(HashKey::Path),
                "client_ip" => Ok(HashKey::ClientIp),
                _ => Err(bad()),
            },
            Some((_, "")) => Err(format!(
                "hash key {spec:?} names no header, cookie or parameter"
            )),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("{name:?} is not a valid header name")),
            Some(("cookie", name)) => Ok(HashKey::Cookie(name.to_string())),
            Some(("query", name)) => Ok(HashKey::Query(name.to_string())),
            Some(_) => Err(bad()),
        }
    }

    /// The key bytes of `req`. When the request lacks the header, cookie or parameter, the
    /// client IP stands in so that such clients still spread over the pool.
    pub fn extract<'a>(
        &self,
        req: &'a RequestHeader,
        client_ip: Option<IpAddr>,
        scratch: &'a mut [u8; 16],
    ) -> &'a [u8] {
        let found = match self {
            HashKey::Header(name) => req.headers.get(name).map(|v| v.as_bytes()),
            HashKey::Cookie(name) => request_parts::cookie(req, name).map(str::as_bytes),
            HashKey::Query(name) => request_parts::query_param(req, name).map(str::as_bytes),
            HashKey::Path => Some(req.uri.path().as_bytes()),
            HashKey::ClientIp => None,
        };
        match found {
            Some(key) => key,
            None => request_parts::ip_bytes(client_ip, scratch),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_each_kind() {
        let mut req = RequestHeader::build("GET", b"/a/b?x=1&user=42", None).unwrap();
        req.insert_header("x-user", "alice").unwrap();
        req.insert_header("cookie", "a=1; sid=s3; b=2").unwrap();
        let ip = Some("10.0.0.1".parse().unwrap());
        let mut s = [0u8; 16];
        let k = |spec: &str, s: &mut [u8; 16]| {
            HashKey::parse(spec).unwrap().extract(&req, ip, s).to_vec()
        };
        assert_eq!(k("header:x-user", &mut s), b"alice");
        assert_eq!(k("cookie:sid", &mut s), b"s3");
        assert_eq!(k("query:user", &mut s), b"42");
        assert_eq!(k("path", &mut s), b"/a/b");
        assert_eq!(k("client_ip", &mut s), [10, 0, 0, 1]);
        assert_eq!(k("header:missing", &mut s), [10, 0, 0, 1]);
        assert!(HashKey::parse("header:").is_err());
        assert!(HashKey::parse("body").is_err());
    }
}
