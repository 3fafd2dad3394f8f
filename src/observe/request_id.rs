//! Request ids: unique per process run and cheap to make (a counter behind a random prefix).

use http::HeaderName;
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

/// A request's id and the header it travels in (`server.request_id_header`).
pub struct RequestId {
    pub header: HeaderName,
    value: String,
}

impl RequestId {
    /// The client's id from `header` when it is acceptable, else a fresh one.
    pub fn take(header: &HeaderName, req: &http::HeaderMap) -> RequestId {
        let value = match req.get(header).and_then(|v| accept(v.as_bytes())) {
            Some(id) => id.to_string(),
            None => next(),
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
            value: String::new(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl Deref for RequestId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

/// A fresh id such as `5f3a9c01-00000000002a`.
pub fn next() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:08x}-{:012x}", prefix(), n)
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
        assert_eq!(accept(b"abc-123"), Some("abc-123"));
        assert_eq!(accept(b"has space"), None);
        assert_eq!(accept(&[b'a'; 200]), None);
    }
}
