//! Host values (RFC 9110 §7.2, RFC 3986 §3.2.2): a DNS-style name, an IPv4 address or a
//! bracketed IPv6 address, with an optional port of digits. Anything else is refused, so no
//! host can smuggle a path, a list or a quoted string into what is built from it (cache
//! keys, `Forwarded`, `X-Forwarded-Host`, links an upstream renders).

use std::net::Ipv6Addr;

/// Longest host name accepted (DNS: 253 characters plus a trailing dot).
const MAX_NAME: usize = 254;

/// The canonical form of a valid host value: lower-case, no trailing dot on a name, the
/// port as a plain number. `Ok(None)` when the value is canonical already.
pub fn canonical(value: &[u8]) -> Result<Option<String>, &'static str> {
    let (host, port) = split(value)?;
    let port = match port {
        None => None,
        Some(p) => Some(parse_port(p)?),
    };
    let is_ipv6 = host.first() == Some(&b'[');
    if is_ipv6 {
        let inner = &host[1..host.len() - 1];
        let text = std::str::from_utf8(inner).map_err(|_| "the Host is not an address")?;
        text.parse::<Ipv6Addr>()
            .map_err(|_| "the Host's IPv6 address is malformed")?;
    } else {
        check_name(host)?;
    }
    let name = if is_ipv6 {
        host
    } else {
        host.strip_suffix(b".").unwrap_or(host)
    };
    let changed = name.len() != host.len()
        || name.iter().any(u8::is_ascii_uppercase)
        || port.is_some_and(|(_, plain)| !plain);
    if !changed {
        return Ok(None);
    }
    let mut out = String::with_capacity(value.len());
    for &b in name {
        out.push(b.to_ascii_lowercase() as char);
    }
    if let Some((p, _)) = port {
        out.push(':');
        out.push_str(&p.to_string());
    }
    Ok(Some(out))
}

/// Host part and port part (without the colon).
fn split(value: &[u8]) -> Result<(&[u8], Option<&[u8]>), &'static str> {
    if value.is_empty() {
        return Err("the Host is empty");
    }
    if value[0] == b'[' {
        let end = value
            .iter()
            .position(|&b| b == b']')
            .ok_or("the Host's IPv6 address is not closed")?;
        let (host, rest) = value.split_at(end + 1);
        return match rest {
            [] => Ok((host, None)),
            [b':', port @ ..] => Ok((host, Some(port))),
            _ => Err("the Host has characters after its IPv6 address"),
        };
    }
    match value.iter().position(|&b| b == b':') {
        Some(i) => Ok((&value[..i], Some(&value[i + 1..]))),
        None => Ok((value, None)),
    }
}

/// The port's number, and whether it was written plainly (no leading zeros).
fn parse_port(p: &[u8]) -> Result<(u16, bool), &'static str> {
    if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return Err("the Host's port is not a number");
    }
    let mut n: u32 = 0;
    for &d in p {
        n = n * 10 + u32::from(d - b'0');
    }
    let port = u16::try_from(n).map_err(|_| "the Host's port is over 65535")?;
    let plain = p.len() == 1 || p[0] != b'0';
    Ok((port, plain))
}

/// Letters, digits, `-` and `_` in dot-separated labels (an IPv4 address is such a name);
/// one trailing dot allowed.
fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the Host has no name");
    }
    if name.len() > MAX_NAME {
        return Err("the Host is too long");
    }
    let body = name.strip_suffix(b".").unwrap_or(name);
    // One pass: allowed bytes, and no empty label (a leading dot or two in a row).
    let mut previous = b'.';
    for &b in body {
        if b == b'.' {
            if previous == b'.' {
                return Err("the Host has an empty label");
            }
        } else if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("the Host holds a character a host name cannot have");
        }
        previous = b;
    }
    if previous == b'.' {
        return Err("the Host has an empty label");
    }
    Ok(())
}

/// The port of a canonical host value, when it has one.
pub fn port(host: &str) -> Option<&str> {
    let after = match host.rfind(']') {
        Some(end) => &host[end + 1..],
        None => host,
    };
    after.rsplit_once(':').map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(v: &str) -> Result<String, &'static str> {
        canonical(v.as_bytes()).map(|c| c.unwrap_or_else(|| v.to_string()))
    }

    #[test]
    fn valid_hosts() {
        assert_eq!(c("a.com").as_deref(), Ok("a.com"));
        assert_eq!(
            c("API.Example.com.:080").as_deref(),
            Ok("api.example.com:80")
        );
        assert_eq!(c("127.0.0.1:8080").as_deref(), Ok("127.0.0.1:8080"));
        assert_eq!(c("[::1]:443").as_deref(), Ok("[::1]:443"));
        assert_eq!(c("my_host-1").as_deref(), Ok("my_host-1"));
    }

    #[test]
    fn invalid_hosts() {
        for bad in [
            "",
            "a.com/c",
            "a b",
            "a.com:evil",
            "a,for=6.6.6.6",
            "a.com:1\", for=6.6.6.6;host=\"x",
            "a..com",
            ".a.com",
            "a.com:",
            "a.com:65536",
            "[::1",
            "[zz]:1",
            "[::1]x",
            "a@b",
        ] {
            assert!(c(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(port("a.com:80"), Some("80"));
        assert_eq!(port("a.com"), None);
        assert_eq!(port("[::1]:9"), Some("9"));
        assert_eq!(port("[::1]"), None);
    }
}
