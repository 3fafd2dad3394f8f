//! Request ids: unique per process run and cheap to make (a counter behind a random prefix).

use http::{HeaderName, HeaderValue};
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static COUNTER: AtomicU64 = AtomicU64::new(1);

fn prefix() -> u32 {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    // std seeds RandomState from the OS, so two processes get different prefixes.
    *PREFIX.get_or_init(|| RandomState::new().hash_one(std::process::id()) as u32)
}

/// A request's id and the header it travels in (`server.request_id_header`). Kept as a
/// header value: it goes into the upstream request and the response, each a cheap clone.
pub struct RequestId {
    pub header: HeaderName,
    value: HeaderValue,
}

impl RequestId {
    /// The client's id from `header` when it is acceptable, else a fresh one.
    pub fn take(header: &HeaderName, req: &http::HeaderMap) -> RequestId {
        let value = match req.get(header) {
            Some(v) if accept(v.as_bytes()).is_some() => v.clone(),
            _ => next(),
        };
        RequestId {
            header: header.clone(),
            value,
        }
    }

    /// An id under the default header, before the config's header is known.
    pub fn unset() -> RequestId {
        RequestId {
            header: HeaderName::from_static("x-request-id"),
            value: HeaderValue::from_static(""),
        }
    }

    pub fn as_str(&self) -> &str {
        // Accepted ids are printable ASCII and fresh ones hex: always valid.
        self.value.to_str().unwrap_or_default()
    }

    pub fn header_value(&self) -> HeaderValue {
        self.value.clone()
    }
}

impl Deref for RequestId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `value` as `N` lower-case hex digits (the low `4 * N` bits).
pub fn hex_digits<const N: usize>(value: u64) -> [u8; N] {
    let mut out = [b'0'; N];
    for (i, d) in out.iter_mut().rev().enumerate() {
        *d = HEX[((value >> (4 * i)) & 0xf) as usize];
    }
    out
}

/// A fresh id such as `5f3a9c01-00000000002a`.
pub fn next() -> HeaderValue {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = [b'-'; 21];
    id[..8].copy_from_slice(&hex_digits::<8>(u64::from(prefix())));
    id[9..].copy_from_slice(&hex_digits::<12>(n));
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// A client-supplied id is kept when it is short and printable, so ids chain across hops.
pub fn accept(value: &[u8]) -> Option<&str> {
    let ok = !value.is_empty() && value.len() <= 128 && value.iter().all(|b| b.is_ascii_graphic());
    ok.then(|| std::str::from_utf8(value).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_checked() {
        assert_ne!(next(), next());
        let id = next();
        let id = id.to_str().unwrap();
        assert_eq!(id.len(), 21, "{id}");
        assert!(
            id.bytes().enumerate().all(|(i, b)| if i == 8 {
                b == b'-'
            } else {
                b.is_ascii_hexdigit() && !b.is_ascii_uppercase()
            }),
            "{id}"
        );
        assert_eq!(accept(b"abc-123"), Some("abc-123"));
        assert_eq!(accept(b"has space"), None);
        assert_eq!(accept(&[b'a'; 200]), None);
    }
}
