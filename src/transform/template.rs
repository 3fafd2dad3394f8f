//! Header and query values with variables (`$request_id`, `$header.x-user`, ...), parsed
//! at load so an unknown variable is a config error and a request only fills in values.

use crate::policy::auth::Identity;
use crate::policy::pipeline::Exchange;
use http::HeaderName;
use pingora_http::RequestHeader;
use std::fmt::Write;
use std::net::IpAddr;

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    RequestId,
    ClientIp,
    Consumer,
    Route,
    Host,
    Path,
    Claim(String),
    Query(String),
    Header(HeaderName),
}

/// A compiled value template.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
}

const KNOWN: &str = "$request_id, $client_ip, $consumer, $route, $host, $path, \
                     $jwt.claim.NAME, $query.NAME, $header.NAME";

fn variable(name: &str) -> Result<Part, String> {
    let part = match name {
        "request_id" => Part::RequestId,
        "client_ip" => Part::ClientIp,
        "consumer" => Part::Consumer,
        "route" => Part::Route,
        "host" => Part::Host,
        "path" => Part::Path,
        _ => {
            if let Some(c) = name.strip_prefix("jwt.claim.").filter(|c| !c.is_empty()) {
                Part::Claim(c.to_string())
            } else if let Some(q) = name.strip_prefix("query.").filter(|q| !q.is_empty()) {
                Part::Query(q.to_string())
            } else if let Some(h) = name.strip_prefix("header.") {
                Part::Header(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("${name}: {h:?} is not a header name"))?,
                )
            } else {
                return Err(format!("unknown variable ${name}; known: {KNOWN}"));
            }
        }
    };
    Ok(part)
}

impl Template {
    /// `$name` or `${name}`; `$$` is a literal `$`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
                let end = braced
                    .find('}')
                    .ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
                (&braced[..end], &braced[end + 1..])
            } else if let Some(tail) = after.strip_prefix('$') {
                lit.push('$');
                rest = tail;
                continue;
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
                    .unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            if name.is_empty() {
                return Err(format!("a lone $ in {s:?}; write $$ for a dollar sign"));
            }
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(variable(name)?);
            rest = tail;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template { parts })
    }

    /// The text when the template has no variables.
    pub fn as_static(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Lit(s)] => Some(s),
            _ => None,
        }
    }

    pub fn render(&self, v: &Vars) -> String {
        let mut out = String::new();
        for p in &self.parts {
            self.render_part(p, v, &mut out);
        }
        out
    }

    /// Render as a request target: each variable is percent-encoded as one path segment
    /// before the template's `?` and as one query value after it (RFC 3986 §3.3, §3.4), so
    /// no client value can add segments, climb with `..` or add parameters. A query
    /// parameter's value is decoded first (it arrived encoded). `$path` is the canonical
    /// request path and goes in as it is.
    pub fn render_target(&self, v: &Vars) -> Result<String, String> {
        let mut out = String::new();
        let mut value = String::new();
        let mut in_query = false;
        for p in &self.parts {
            match p {
                Part::Lit(s) => {
                    out.push_str(s);
                    in_query |= s.contains('?');
                }
                Part::Path => out.push_str(v.req.uri.path()),
                Part::Query(q) => {
                    let raw = crate::request_parts::query_param(v.req, q).unwrap_or("");
                    push_component(&mut out, &percent_decode(raw), in_query)?;
                }
                _ => {
                    value.clear();
                    self.render_part(p, v, &mut value);
                    push_component(&mut out, value.as_bytes(), in_query)?;
                }
            }
        }
        Ok(out)
    }

    fn render_part(&self, p: &Part, v: &Vars, out: &mut String) {
        {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::RequestId => out.push_str(v.request_id),
                Part::ClientIp => {
                    if let Some(ip) = v.client_ip {
                        let _ = write!(out, "{ip}");
                    }
                }
                Part::Consumer => {
                    out.push_str(v.identity.and_then(|i| i.consumer.as_deref()).unwrap_or(""))
                }
                Part::Route => out.push_str(v.route),
                Part::Host => out.push_str(v.host),
                Part::Path => out.push_str(v.req.uri.path()),
                Part::Claim(c) => {
                    if let Some((_, val)) = v
                        .identity
                        .and_then(|i| i.claims.iter().find(|(k, _)| k == c))
                    {
                        out.push_str(val);
                    }
                }
                Part::Query(q) => {
                    out.push_str(crate::request_parts::query_param(v.req, q).unwrap_or(""))
                }
                Part::Header(h) => {
                    if let Some(val) = v.req.headers.get(h).and_then(|x| x.to_str().ok()) {
                        out.push_str(val);
                    }
                }
            }
        }
    }
}

/// `%XX` escapes decoded; anything malformed is kept as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// `value` percent-encoded as one path segment or one query value: only unreserved
/// characters stay. A whole segment of `.` or `..` would be read as a dot segment.
fn push_component(out: &mut String, value: &[u8], in_query: bool) -> Result<(), String> {
    if !in_query && (value == b"." || value == b"..") {
        return Err(format!(
            "{:?} cannot stand as a path segment",
            String::from_utf8_lossy(value)
        ));
    }
    for &b in value {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            crate::canonical::path::push_escaped(out, b);
        }
    }
    Ok(())
}

/// Every value of a `name: template` map, parsed; a fault names `field.name`.
pub fn parse_map(
    field: &str,
    m: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(String, Template)>, (String, String)> {
    m.iter()
        .map(|(k, v)| {
            Template::parse(v)
                .map(|t| (k.clone(), t))
                .map_err(|e| (format!("{field}.{k}"), e))
        })
        .collect()
}

/// What variables are filled from: the client's request as it arrived.
pub struct Vars<'a> {
    pub request_id: &'a str,
    pub client_ip: Option<IpAddr>,
    pub identity: Option<&'a Identity>,
    pub route: &'a str,
    pub host: &'a str,
    pub req: &'a RequestHeader,
}

impl<'a> Vars<'a> {
    /// The variables of the request a route policy is working on.
    pub fn of(x: &'a Exchange<'_>) -> Vars<'a> {
        let req = x.session.req_header();
        Vars {
            request_id: x.request_id,
            client_ip: x.state.client_ip,
            identity: x.state.identity.as_deref(),
            route: x.route,
            host: crate::request_parts::request_host(req).unwrap_or(""),
            req,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        let mut req = RequestHeader::build("GET", b"/p/1?page=3", None).unwrap();
        req.insert_header("x-user", "ada").unwrap();
        let id = Identity {
            consumer: Some("app".into()),
            claims: vec![("tenant".into(), "acme".into())],
            ..Identity::default()
        };
        let v = Vars {
            request_id: "rid",
            client_ip: Some("10.0.0.1".parse().unwrap()),
            identity: Some(&id),
            route: "r",
            host: "h",
            req: &req,
        };
        let t = Template::parse(
            "$request_id|$client_ip|${consumer}x|$route|$host|$path|$jwt.claim.tenant|$query.page|$header.x-user|$$|$query.none",
        )
        .unwrap();
        assert_eq!(t.render(&v), "rid|10.0.0.1|appx|r|h|/p/1|acme|3|ada|$|");
        assert_eq!(Template::parse("plain").unwrap().as_static(), Some("plain"));
        let mut req = RequestHeader::build("GET", b"/p?id=..%2Fadmin%3Fx&u=a%20b", None).unwrap();
        req.insert_header("x-user", "..").unwrap();
        let v = Vars { req: &req, ..v };
        let target = Template::parse("/users/$query.id?u=$query.u&r=$route").unwrap();
        assert_eq!(
            target.render_target(&v).unwrap(),
            "/users/..%2Fadmin%3Fx?u=a%20b&r=r"
        );
        let dots = Template::parse("/users/$header.x-user").unwrap();
        assert!(dots.render_target(&v).is_err());
        assert!(Template::parse("$nope")
            .unwrap_err()
            .contains("unknown variable $nope"));
        assert!(Template::parse("a $ b").is_err());
        assert!(Template::parse("${route").is_err());
    }
}
