//! The first thing done to every request: one canonical request target and one valid Host,
//! so that routing, access rules, IP lists, rate-limit keys, cache keys, rewrites, mirrors
//! and the upstream all see the same request. The canonical form replaces the client's in
//! the request header itself, so no later phase can look at the raw one by mistake.

pub mod host;
pub mod path;

use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Uri, Version};
use path::{EncodedSlash, PathRules};
use pingora_http::authority::{raw_target_authority, RawTargetAuthority};
use pingora_http::RequestHeader;

/// The edge settings the canonical step applies, compiled from `server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeRules {
    pub paths: PathRules,
    /// Request line plus header fields, in bytes.
    pub max_header_bytes: usize,
}

impl Default for EdgeRules {
    fn default() -> Self {
        EdgeRules {
            paths: PathRules::default(),
            max_header_bytes: 64 * 1024,
        }
    }
}

impl EdgeRules {
    pub fn new(merge_slashes: bool, keep_encoded_slash: bool, max_header_bytes: usize) -> Self {
        EdgeRules {
            paths: PathRules {
                merge_slashes,
                encoded_slash: if keep_encoded_slash {
                    EncodedSlash::Keep
                } else {
                    EncodedSlash::Reject
                },
            },
            max_header_bytes,
        }
    }
}

/// Why a request is refused before anything else looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: &'static str,
}

fn bad(message: &'static str) -> Refusal {
    Refusal {
        status: 400,
        message,
    }
}

/// Validate `req` and rewrite it into its canonical form in place.
pub fn canonicalise(req: &mut RequestHeader, rules: &EdgeRules) -> Result<(), Refusal> {
    // One pass over the fields (no lookups by name): the size, and how often the fields
    // that may come once only came. A second Authorization or Content-Type would be read
    // by one party and not the other (RFC 9110 §5.3).
    let mut size = req.raw_path().len() + req.method.as_str().len();
    let (mut authorizations, mut content_types) = (0u32, 0u32);
    let mut lengths_to_merge = false;
    let mut content_lengths = 0u32;
    for (name, value) in &req.headers {
        size = size.saturating_add(name.as_str().len() + value.len() + 4);
        if name == AUTHORIZATION {
            authorizations += 1;
        } else if name == CONTENT_TYPE {
            content_types += 1;
        } else if name == CONTENT_LENGTH {
            content_lengths += 1;
            lengths_to_merge |= content_lengths > 1 || value.as_bytes().contains(&b',');
        }
    }
    if size > rules.max_header_bytes {
        return Err(Refusal {
            status: 431,
            message: "request header fields too large",
        });
    }
    if authorizations > 1 {
        return Err(bad("more than one Authorization header"));
    }
    if content_types > 1 {
        return Err(bad("more than one Content-Type header"));
    }
    if lengths_to_merge {
        single_content_length(req)?;
    }
    let authority = target_authority(req)?;
    canonical_host(req, authority.as_deref())?;
    canonical_target(req, rules)
}

/// Identical `Content-Length` values (a list or repeated fields) become one; differing or
/// malformed ones are refused (RFC 9110 §8.6).
fn single_content_length(req: &mut RequestHeader) -> Result<(), Refusal> {
    let mut length: Option<u64> = None;
    for v in req.headers.get_all(CONTENT_LENGTH) {
        let text = v.to_str().map_err(|_| bad("malformed Content-Length"))?;
        for item in text.split(',') {
            let n = item
                .trim()
                .parse::<u64>()
                .map_err(|_| bad("malformed Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    if let Some(n) = length {
        let _ = req.insert_header(CONTENT_LENGTH, n);
    }
    Ok(())
}

/// The authority of an absolute-form target (RFC 9112 §3.2.2) or of an HTTP/2 request,
/// already checked as a host; the target itself is checked for its form.
fn target_authority(req: &RequestHeader) -> Result<Option<String>, Refusal> {
    if let Some(a) = req.uri.authority() {
        return checked_host(a.as_str().as_bytes()).map(Some);
    }
    let raw = req.raw_path();
    match raw_target_authority(raw) {
        RawTargetAuthority::Absolute {
            scheme, authority, ..
        } => {
            if !scheme.eq_ignore_ascii_case(b"http") && !scheme.eq_ignore_ascii_case(b"https") {
                return Err(bad("the request target's scheme is not http or https"));
            }
            checked_host(authority).map(Some)
        }
        RawTargetAuthority::AmbiguousAuthority => Err(bad("the request target is ambiguous")),
        RawTargetAuthority::None => match raw {
            [b'/', ..] => Ok(None),
            b"*" if req.method == Method::OPTIONS => Ok(None),
            b"*" => Err(bad("the target * is for OPTIONS only")),
            _ => Err(bad("the request target is not an absolute path")),
        },
    }
}

fn checked_host(value: &[u8]) -> Result<String, Refusal> {
    match host::canonical(value) {
        Ok(Some(c)) => Ok(c),
        // Valid and canonical: the bytes are ASCII.
        Ok(None) => Ok(String::from_utf8_lossy(value).into_owned()),
        Err(message) => Err(bad(message)),
    }
}

/// Exactly one valid Host (RFC 9112 §3.2), agreeing with the target's authority when there
/// is one; written back in canonical form.
fn canonical_host(req: &mut RequestHeader, authority: Option<&str>) -> Result<(), Refusal> {
    let mut hosts = req.headers.get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("more than one Host header"));
    }
    let canonical = match first {
        // An empty Host is what RFC 9112 asks for when there is no authority.
        Some(v) if v.is_empty() && authority.is_none() => return Ok(()),
        Some(v) => {
            let c = host::canonical(v.as_bytes()).map_err(bad)?;
            if let Some(a) = authority {
                let own = c.as_deref().map_or(v.as_bytes(), str::as_bytes);
                if own != a.as_bytes() {
                    return Err(bad(
                        "the Host does not match the request target's authority",
                    ));
                }
            }
            c
        }
        None => match authority {
            // HTTP/2 names its host in :authority; an absolute-form target in its authority.
            Some(a) if req.version == Version::HTTP_2 => {
                return match host::canonical(a.as_bytes()) {
                    Ok(_) => Ok(()),
                    Err(m) => Err(bad(m)),
                }
            }
            Some(a) => Some(a.to_string()),
            None if req.version == Version::HTTP_11 => {
                return Err(bad("an HTTP/1.1 request needs a Host header"))
            }
            None => None,
        },
    };
    if let Some(c) = canonical {
        let value = HeaderValue::from_str(&c).map_err(|_| bad("invalid Host"))?;
        let _ = req.insert_header(HOST, value);
    }
    Ok(())
}

/// The target as origin-form with a canonical path (HTTP/2 keeps its scheme and authority).
fn canonical_target(req: &mut RequestHeader, rules: &EdgeRules) -> Result<(), Refusal> {
    let raw = req.raw_path();
    let (absolute, path_and_query) = match raw_target_authority(raw) {
        RawTargetAuthority::Absolute { path_and_query, .. } => (true, path_and_query),
        _ => (false, raw),
    };
    if path_and_query == b"*" {
        return Ok(());
    }
    let (path, query) = match path_and_query.iter().position(|&b| b == b'?') {
        Some(i) => (&path_and_query[..i], Some(&path_and_query[i + 1..])),
        None => (path_and_query, None),
    };
    // An absolute-form target may have an empty path: it means `/`.
    let path = if path.is_empty() && absolute {
        b"/".as_slice()
    } else {
        path
    };
    let new_path = path::canonical(path, &rules.paths).map_err(|e| bad(e.message()))?;
    let new_query = query.and_then(path::escaped_query);
    if new_path.is_none() && new_query.is_none() && !absolute {
        return Ok(());
    }
    let mut target = String::with_capacity(path_and_query.len() + 8);
    match &new_path {
        Some(p) => target.push_str(p),
        None => target.push_str(&String::from_utf8_lossy(path)),
    }
    match (&new_query, query) {
        (Some(q), _) => {
            target.push('?');
            target.push_str(q);
        }
        (None, Some(q)) => {
            target.push('?');
            target.push_str(&String::from_utf8_lossy(q));
        }
        (None, None) => {}
    }
    let uri = match (req.uri.scheme().cloned(), req.uri.authority().cloned()) {
        (Some(scheme), Some(authority)) => Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(target)
            .build()
            .ok(),
        _ => Uri::try_from(target).ok(),
    }
    .ok_or(bad("the request target is not a valid URI"))?;
    req.set_uri(uri);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn run(r: &mut RequestHeader) -> Result<(), Refusal> {
        canonicalise(r, &EdgeRules::default())
    }

    #[test]
    fn absolute_form_becomes_origin_form() {
        let mut r = req("http://a.com/x/../admin/secret?q=1", &[("host", "a.com")]);
        run(&mut r).unwrap();
        assert_eq!(r.raw_path(), b"/admin/secret?q=1");
        let mut r = req("http://a.com/x", &[("host", "b.com")]);
        assert_eq!(run(&mut r).unwrap_err().status, 400);
        let mut r = req("ftp://a.com/x", &[("host", "a.com")]);
        assert!(run(&mut r).is_err());
    }

    #[test]
    fn hosts_checked_and_made_canonical() {
        let mut r = req("/x", &[("host", "A.com:080")]);
        run(&mut r).unwrap();
        assert_eq!(r.headers.get("host").unwrap(), "a.com:80");
        for bad_host in ["a.com/c", "a b", "a,for=6.6.6.6", "a.com:evil"] {
            let mut r = req("/x", &[("host", bad_host)]);
            assert!(run(&mut r).is_err(), "{bad_host}");
        }
        let mut r = req("/x", &[("host", "a.com"), ("host", "a.com")]);
        assert!(run(&mut r).is_err());
        let mut r = req("/x", &[]);
        assert!(run(&mut r).is_err(), "HTTP/1.1 without Host");
    }

    #[test]
    fn singletons_and_lengths() {
        let mut r = req(
            "/x",
            &[
                ("host", "a"),
                ("authorization", "a"),
                ("authorization", "b"),
            ],
        );
        assert!(run(&mut r).is_err());
        let mut r = req("/x", &[("host", "a"), ("content-length", "5, 5")]);
        run(&mut r).unwrap();
        assert_eq!(r.headers.get("content-length").unwrap(), "5");
        let mut r = req("/x", &[("host", "a"), ("content-length", "5, 6")]);
        assert!(run(&mut r).is_err());
    }

    #[test]
    fn oversized_headers_get_431() {
        let big = "x".repeat(70 * 1024);
        let mut r = req("/x", &[("host", "a"), ("authorization", &big)]);
        assert_eq!(run(&mut r).unwrap_err().status, 431);
    }

    #[test]
    fn asterisk_only_for_options() {
        let mut r = RequestHeader::build("OPTIONS", b"*", None).unwrap();
        r.append_header("host", "a").unwrap();
        run(&mut r).unwrap();
        let mut r = req("*", &[("host", "a")]);
        assert!(run(&mut r).is_err());
    }
}
