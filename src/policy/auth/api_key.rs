//! API keys: kept in the config only as SHA-256 digests.
//!
//! A presented key is hashed and its digest looked up. Lookup time depends on the digest,
//! which an attacker cannot steer toward a stored one without a SHA-256 preimage, so timing
//! reveals nothing about stored keys.

use super::{Identity, Reject, Verification};
use pingora_http::RequestHeader;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

pub const PROVIDER: &str = "api_key";

/// The hex SHA-256 digest of `key`, as the config stores it.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Parse a stored digest: 64 hex digits, optionally prefixed `sha256:`.
pub fn parse_digest(s: &str) -> Result<[u8; 32], String> {
    let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| {
        "not a SHA-256 digest (64 hex digits); `portico hash-key` prints one".to_string()
    })?;
    Ok(out)
}

pub struct ApiKeys {
    header: http::HeaderName,
    query: Option<String>,
    by_digest: HashMap<[u8; 32], Arc<Identity>>,
}

impl ApiKeys {
    pub fn new(
        header: http::HeaderName,
        query: Option<String>,
        by_digest: HashMap<[u8; 32], Arc<Identity>>,
    ) -> Self {
        ApiKeys {
            header,
            query,
            by_digest,
        }
    }

    /// The header an API key comes in.
    pub fn header(&self) -> &http::HeaderName {
        &self.header
    }

    /// The query parameter an API key may come in.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    fn presented<'a>(&self, req: &'a RequestHeader) -> Option<&'a [u8]> {
        if let Some(v) = req.headers.get(&self.header) {
            return Some(v.as_bytes());
        }
        crate::request_parts::query_param(req, self.query.as_deref()?)
            .filter(|k| !k.is_empty())
            .map(str::as_bytes)
    }

    pub fn authenticate(&self, req: &RequestHeader) -> Verification {
        let Some(key) = self.presented(req) else {
            return Verification::Absent;
        };
        let digest: [u8; 32] = Sha256::digest(key).into();
        match self.by_digest.get(&digest) {
            Some(identity) => Verification::Accepted(identity.clone()),
            None => Verification::Rejected(Reject::UnknownApiKey),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip() {
        let h = hash_key("secret-key");
        assert_eq!(h.len(), 64);
        assert!(parse_digest(&h).is_ok());
        assert!(parse_digest(&format!("sha256:{h}")).is_ok());
        assert!(parse_digest("secret-key").is_err());
    }
}
