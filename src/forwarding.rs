//! What a proxy must change in the headers it forwards: X-Forwarded-*, Forwarded (RFC 7239)
//! and hop-by-hop headers (RFC 9110 §7.6.1).

use crate::config::Fault;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, TE, UPGRADE};
use ipnet::IpNet;
use pingora_http::{RequestHeader, ResponseHeader};
use std::fmt::Write;
use std::net::IpAddr;

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const FORWARDED: &str = "forwarded";
const X_REAL_IP: &str = "x-real-ip";
const TRUE_CLIENT_IP: &str = "true-client-ip";

/// The peers that may tell us who the client is (X-Forwarded-For, Forwarded).
#[derive(Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// `trusted_proxies`: addresses and CIDR blocks.
    pub fn from_config(list: &[String], faults: &mut Vec<Fault>) -> TrustedProxies {
        let mut nets = Vec::new();
        for (i, t) in list.iter().enumerate() {
            let net = t
                .parse::<IpNet>()
                .or_else(|_| t.parse::<IpAddr>().map(IpNet::from));
            match net {
                Ok(n) => nets.push(n),
                Err(_) => faults.push(Fault::new(
                    format!("trusted_proxies[{i}]"),
                    format!("{t:?} is not an IP address or CIDR block"),
                )),
            }
        }
        TrustedProxies(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Hop-by-hop headers that never cross the proxy (Connection itself is handled apart).
const HOP_BY_HOP: [&str; 6] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Headers named in `Connection`, which are hop-by-hop by declaration.
fn connection_tokens(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| {
            let t = t.trim();
            if t.eq_ignore_ascii_case("close")
                || t.eq_ignore_ascii_case("keep-alive")
                || t.eq_ignore_ascii_case("upgrade")
            {
                return None;
            }
            HeaderName::from_bytes(t.as_bytes()).ok()
        })
        .collect()
}

/// Drop hop-by-hop headers from a request going upstream. An upgrade request (WebSocket)
/// keeps `Connection: upgrade` and `Upgrade`, which the upstream must see.
pub fn strip_request_hop_headers(req: &mut RequestHeader, is_upgrade: bool, keepalive: bool) {
    if req.headers.contains_key(CONNECTION) {
        for name in connection_tokens(&req.headers) {
            req.remove_header(&name);
        }
        req.remove_header(&CONNECTION);
    }
    // `TE: trailers` says the client takes trailers (gRPC needs it); other TE values are
    // about this hop's transfer codings.
    let te_trailers = req
        .headers
        .get(TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in HOP_BY_HOP {
        req.remove_header(name);
    }
    if te_trailers {
        let _ = req.insert_header(TE, "trailers");
    }
    if is_upgrade {
        let _ = req.insert_header(CONNECTION, "upgrade");
    } else {
        req.remove_header(&UPGRADE);
        if !keepalive {
            let _ = req.insert_header(CONNECTION, "close");
        }
    }
}

/// Drop hop-by-hop headers from a response going to the client; Pingora writes the
/// client-side `Connection` itself.
pub fn strip_response_hop_headers(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        // The client needs `Connection: upgrade` and `Upgrade` to accept the switch.
        for name in HOP_BY_HOP {
            resp.remove_header(name);
        }
        return;
    }
    if resp.headers.contains_key(CONNECTION) {
        for name in connection_tokens(&resp.headers) {
            resp.remove_header(&name);
        }
    }
    for name in HOP_BY_HOP {
        resp.remove_header(name);
    }
}

/// The address of the client for policies (rate limits): the direct peer, or, when that
/// peer is a trusted proxy, the right-most address in X-Forwarded-For that is not itself a
/// trusted proxy (entries further left could be forged by the client).
pub fn effective_client_ip(
    req: &RequestHeader,
    peer: Option<IpAddr>,
    trusted: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted(peer) {
        return Some(peer);
    }
    let mut found = peer;
    for value in req.headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(list) = value.to_str() else {
            return Some(found);
        };
        for item in list.rsplit(',') {
            match item.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    found = ip;
                    if !trusted(ip) {
                        return Some(ip);
                    }
                }
                Err(_) => return Some(found),
            }
        }
    }
    Some(found)
}

/// The client as the upstream should see it.
pub struct ClientInfo<'a> {
    pub ip: Option<IpAddr>,
    /// The direct peer is a trusted proxy, so headers it set are kept and appended to.
    pub trusted: bool,
    pub proto: &'static str,
    /// The validated, canonical Host.
    pub host: Option<&'a str>,
    /// The client address policies use (see [`effective_client_ip`]), sent as X-Real-IP.
    pub real_ip: Option<IpAddr>,
}

/// `value` as an RFC 7239 quoted-string (§4): quotes and backslashes escaped.
fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

fn joined(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut out = String::new();
    for v in headers.get_all(name) {
        let v = v.to_str().ok()?.trim();
        if v.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(v);
    }
    (!out.is_empty()).then_some(out)
}

/// Set X-Forwarded-For/-Proto/-Host, Forwarded and X-Real-IP. A client's own values survive
/// only when the direct peer is a trusted proxy; otherwise they are replaced, never trusted.
pub fn set_forwarded_headers(req: &mut RequestHeader, client: &ClientInfo) {
    // The client address is written once and shared by the headers that carry it.
    let ip_text = client.ip.map(IpText::new);
    let ip_value = ip_text
        .as_ref()
        .and_then(|t| HeaderValue::from_str(t.as_str()).ok());
    let real_ip = match client.real_ip {
        Some(ip) if Some(ip) == client.ip => ip_value.clone(),
        Some(ip) => HeaderValue::from_str(IpText::new(ip).as_str()).ok(),
        None => None,
    };
    match real_ip {
        Some(v) => {
            let _ = req.insert_header(X_REAL_IP, v);
        }
        None => {
            req.remove_header(X_REAL_IP);
        }
    }
    if !client.trusted {
        req.remove_header(TRUE_CLIENT_IP);
    }
    let prior =
        |req: &RequestHeader, name| client.trusted.then(|| joined(&req.headers, name)).flatten();

    if let (Some(ip), Some(value)) = (&ip_text, ip_value) {
        match prior(req, X_FORWARDED_FOR) {
            Some(p) => {
                let _ = req.insert_header(X_FORWARDED_FOR, format!("{p}, {}", ip.as_str()));
            }
            None => {
                let _ = req.insert_header(X_FORWARDED_FOR, value);
            }
        }
    } else if !client.trusted {
        req.remove_header(X_FORWARDED_FOR);
    }

    match prior(req, X_FORWARDED_PROTO) {
        Some(p) => {
            let _ = req.insert_header(X_FORWARDED_PROTO, p);
        }
        None => {
            let _ = req.insert_header(X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
        }
    }

    match prior(req, X_FORWARDED_HOST).or_else(|| client.host.map(str::to_string)) {
        Some(h) => {
            let _ = req.insert_header(X_FORWARDED_HOST, h);
        }
        None => {
            req.remove_header(X_FORWARDED_HOST);
        }
    }

    let host_len = client.host.map_or(0, str::len);
    let mut element = String::with_capacity(64 + 2 * host_len);
    match (&ip_text, client.ip) {
        (Some(t), Some(IpAddr::V4(_))) => {
            element.push_str("for=");
            element.push_str(t.as_str());
        }
        (Some(t), _) => {
            element.push_str("for=\"[");
            element.push_str(t.as_str());
            element.push_str("]\"");
        }
        (None, _) => element.push_str("for=unknown"),
    }
    if let Some(h) = client.host {
        // Always quoted: the value came from the client, even though it was validated.
        element.push_str(";host=");
        push_quoted(&mut element, h);
    }
    element.push_str(";proto=");
    element.push_str(client.proto);
    let forwarded = match prior(req, FORWARDED) {
        Some(p) => format!("{p}, {element}"),
        None => element,
    };
    let _ = req.insert_header(FORWARDED, forwarded);
}

/// An address as text, written without a heap allocation.
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; 48],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + octet / 10 % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                let _ = write!(t, "{v6}");
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        let mut addrs: Vec<IpAddr> = Vec::new();
        for a in [0u8, 1, 9, 10, 42, 99, 100, 199, 200, 255] {
            addrs.push(IpAddr::from([a, 255 - a, a / 3, 7]));
        }
        for v6 in [
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
            "fe80::1:2:3:4",
        ] {
            addrs.push(v6.parse().unwrap());
        }
        for ip in addrs {
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }

    fn req_with(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn get<'a>(r: &'a RequestHeader, n: &str) -> &'a str {
        r.headers.get(n).unwrap().to_str().unwrap()
    }

    #[test]
    fn untrusted_client_values_are_replaced() {
        let mut r = req_with(&[("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=6.6.6.6")]);
        let c = ClientInfo {
            ip: Some("10.1.1.1".parse().unwrap()),
            trusted: false,
            proto: "http",
            host: Some("a.com"),
            real_ip: Some("10.1.1.1".parse().unwrap()),
        };
        set_forwarded_headers(&mut r, &c);
        assert_eq!(get(&r, "x-forwarded-for"), "10.1.1.1");
        assert_eq!(
            get(&r, "forwarded"),
            "for=10.1.1.1;host=\"a.com\";proto=http"
        );
        assert_eq!(get(&r, "x-real-ip"), "10.1.1.1");
        assert_eq!(get(&r, "x-forwarded-host"), "a.com");
    }

    #[test]
    fn trusted_proxy_values_are_appended() {
        let mut r = req_with(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "https"),
        ]);
        let c = ClientInfo {
            ip: Some("::1".parse().unwrap()),
            trusted: true,
            proto: "http",
            host: Some("a.com:8080"),
            real_ip: Some("2.2.2.2".parse().unwrap()),
        };
        set_forwarded_headers(&mut r, &c);
        assert_eq!(get(&r, "x-forwarded-for"), "1.1.1.1, 2.2.2.2, ::1");
        assert_eq!(get(&r, "x-forwarded-proto"), "https");
        assert_eq!(
            get(&r, "forwarded"),
            "for=\"[::1]\";host=\"a.com:8080\";proto=http"
        );
    }

    #[test]
    fn quoted_strings_escape() {
        let mut out = String::new();
        push_quoted(&mut out, "a\"b\\c");
        assert_eq!(out, "\"a\\\"b\\\\c\"");
    }

    #[test]
    fn effective_client_ip_skips_trusted_hops_only() {
        let r = req_with(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.7"),
            ("x-forwarded-for", "10.0.0.2"),
        ]);
        let trusted = |ip: IpAddr| ip.to_string().starts_with("10.");
        let peer = Some("10.0.0.1".parse().unwrap());
        assert_eq!(
            effective_client_ip(&r, peer, trusted),
            Some("203.0.113.7".parse().unwrap())
        );
        let direct = Some("198.51.100.1".parse().unwrap());
        assert_eq!(effective_client_ip(&r, direct, trusted), direct);
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut r = req_with(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("te", "gzip"),
            ("x-keep", "1"),
        ]);
        strip_request_hop_headers(&mut r, false, true);
        assert!(r.headers.get("x-secret").is_none());
        assert!(r.headers.get("keep-alive").is_none());
        assert!(r.headers.get("te").is_none());
        assert!(r.headers.get("connection").is_none());
        assert_eq!(get(&r, "x-keep"), "1");
        // Only `TE: trailers` goes on (gRPC needs it).
        let mut r = req_with(&[("te", "trailers")]);
        strip_request_hop_headers(&mut r, false, true);
        assert_eq!(get(&r, "te"), "trailers");
    }
}
