//! Checks of the config sections that are used as they are (server, cache, admin): each
//! fault with its YAML path.

use super::{AdminSection, CacheSection, Fault, ServerSection};
use std::net::SocketAddr;

/// The admin listener and the digest of its token.
pub struct AdminSettings {
    pub address: SocketAddr,
    pub token_sha256: Option<[u8; 32]>,
    /// The header that asks for `Portico-Explain` (with the admin token as its value).
    pub debug_header: Option<http::HeaderName>,
}

impl ServerSection {
    pub fn check(&self, faults: &mut Vec<Fault>) {
        let s = self;
        if s.threads == 0 || s.threads > 1024 {
            faults.push(Fault::new(
                "server.threads",
                format!("{} threads is not between 1 and 1024", s.threads),
            ));
        }
        if !matches!(
            s.log_level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace" | "off"
        ) {
            faults.push(Fault::new(
                "server.log_level",
                format!(
                    "unknown log level {:?}; use error, warn, info, debug, trace or off",
                    s.log_level
                ),
            ));
        }
        if s.read_buffer.0 != 0 && !(1024..=16 << 20).contains(&s.read_buffer.0) {
            faults.push(Fault::new(
                "server.read_buffer",
                "must be 0 (unbuffered) or between 1KiB and 16MiB",
            ));
        }
        // Pingora refuses headers over 1 MiB itself, before any of our code sees them.
        if !(1024..=1 << 20).contains(&s.max_request_header_bytes.0) {
            faults.push(Fault::new(
                "server.max_request_header_bytes",
                "must be between 1KiB and 1MiB",
            ));
        }
        for (field, value) in [
            ("keepalive_timeout", s.keepalive_timeout),
            ("header_timeout", s.header_timeout),
            ("body_timeout", s.body_timeout),
        ] {
            if value.0 < std::time::Duration::from_secs(1) {
                faults.push(Fault::new(format!("server.{field}"), "must be at least 1s"));
            }
        }
        for (field, value) in [("pid_file", &s.pid_file), ("upgrade_sock", &s.upgrade_sock)] {
            if value.is_empty() {
                faults.push(Fault::new(format!("server.{field}"), "must not be empty"));
            }
        }
    }
}

impl CacheSection {
    pub fn check(&self, faults: &mut Vec<Fault>) {
        let c = self;
        if c.memory.0 < 1 << 20 {
            faults.push(Fault::new("cache.memory", "give the cache at least 1MiB"));
        }
        if c.max_object_size.0 == 0 || c.max_object_size.0 > c.memory.0 {
            faults.push(Fault::new(
                "cache.max_object_size",
                "must be more than 0 and at most cache.memory",
            ));
        }
        if c.lock_timeout.0.is_zero() {
            faults.push(Fault::new("cache.lock_timeout", "must be longer than 0s"));
        }
    }
}

/// Shortest admin token accepted: guessing it must be hopeless.
const MIN_ADMIN_TOKEN: usize = 16;

impl AdminSection {
    /// The admin listener's address and token digest.
    pub fn settings(&self, faults: &mut Vec<Fault>) -> Option<AdminSettings> {
        let a = self;
        use sha2::Digest;
        let address = match a.address.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                faults.push(Fault::new(
                    "admin.address",
                    format!("{:?} is not an IP:port address", a.address),
                ));
                return None;
            }
        };
        let token = match (&a.token, &a.token_file) {
            (Some(_), Some(_)) => {
                faults.push(Fault::new(
                    "admin.token_file",
                    "give token or token_file, not both",
                ));
                return None;
            }
            (Some(t), None) => Some((t.clone(), "admin.token")),
            (None, Some(f)) => match std::fs::read_to_string(f) {
                Ok(t) => Some((t.trim().to_string(), "admin.token_file")),
                Err(e) => {
                    faults.push(Fault::new(
                        "admin.token_file",
                        format!("cannot read {f:?}: {e}"),
                    ));
                    return None;
                }
            },
            (None, None) => None,
        };
        if let Some((t, path)) = &token {
            if t.len() < MIN_ADMIN_TOKEN {
                faults.push(Fault::new(
                    *path,
                    format!("an admin token needs at least {MIN_ADMIN_TOKEN} characters"),
                ));
                return None;
            }
        }
        // /status names upstream addresses and certificate files: off loopback, only with a
        // token (a listener opened to the network by a typo must not serve them).
        if token.is_none() && !address.ip().is_loopback() {
            faults.push(Fault::new(
                "admin.address",
                format!("{address} is not a loopback address: set admin.token or admin.token_file"),
            ));
            return None;
        }
        let debug_header = match &a.debug_header {
            None => None,
            Some(_) if token.is_none() => {
                faults.push(Fault::new(
                    "admin.debug_header",
                    "needs admin.token or admin.token_file: its value is the token",
                ));
                return None;
            }
            Some(name) => match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    faults.push(Fault::new(
                        "admin.debug_header",
                        format!("{name:?} is not a header name"),
                    ));
                    return None;
                }
            },
        };
        Some(AdminSettings {
            address,
            token_sha256: token.map(|(t, _)| sha2::Sha256::digest(t.as_bytes()).into()),
            debug_header,
        })
    }
}
