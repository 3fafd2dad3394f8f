//! Request ids: unique per process run and cheap to make (a counter behind a random prefix).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static COUNTER: AtomicU64 = AtomicU64::new(1);

fn prefix() -> u32 {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    // std seeds RandomState from the OS, so two processes get different prefixes.
    *PREFIX.get_or_init(|| RandomState::new().hash_one(std::process::id()) as u32)
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
