//! JWT verification for one provider: token extraction, algorithm allowlist, key choice by
//! `kid` within the algorithm's key family, claim checks, and a cache of verified tokens.
//!
//! Keys named by the token itself (`jku`, `x5u`, `jwk`, `x5c`) are never used: only the
//! provider's configured keys verify.

use super::claims::{token_in, ClaimMapping, Source};
use super::jwks::{KeySet, RemoteKeys};
use super::{Identity, Reject, Verification};
use http::HeaderName;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use pingora_http::RequestHeader;
use pingora_memory_cache::MemoryCache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Verified tokens kept per provider.
const CACHE_ENTRIES: usize = 65_536;
/// A cached verification is trusted at most this long, whatever the token's `exp`.
const CACHE_TTL_CAP: u64 = 300;
/// Keys tried for a token without `kid`.
const MAX_KEYS_TRIED: usize = 4;

#[derive(Clone)]
struct Cached {
    digest: [u8; 32],
    identity: Arc<Identity>,
    /// The remote key set generation it was verified against: a rotation retires it.
    generation: u64,
}

pub struct JwtProvider {
    pub name: String,
    validations: Vec<(Algorithm, Validation)>,
    static_keys: KeySet,
    pub remote: Option<Arc<RemoteKeys>>,
    sources: Vec<Source>,
    /// Non-standard claims that must be present.
    required_claims: Vec<String>,
    mapping: ClaimMapping,
    cache: MemoryCache<[u8; 32], Cached>,
}

pub struct ProviderSpec {
    pub name: String,
    pub algorithms: Vec<Algorithm>,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub leeway: Duration,
    pub required_claims: Vec<String>,
    pub static_keys: KeySet,
    pub remote: Option<Arc<RemoteKeys>>,
    pub sources: Vec<Source>,
    pub mapping: ClaimMapping,
}

const SPEC_CLAIMS: [&str; 5] = ["exp", "nbf", "aud", "iss", "sub"];

use crate::clock::unix_secs as now;

fn reject_for(kind: &ErrorKind) -> Reject {
    match kind {
        ErrorKind::ExpiredSignature => Reject::Expired,
        ErrorKind::ImmatureSignature => Reject::NotYetValid,
        ErrorKind::InvalidIssuer => Reject::WrongIssuer,
        ErrorKind::InvalidAudience => Reject::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) => Reject::MissingClaim,
        ErrorKind::InvalidAlgorithm => Reject::AlgorithmNotAllowed,
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => Reject::BadSignature,
        _ => Reject::Malformed,
    }
}

impl JwtProvider {
    pub fn new(spec: ProviderSpec) -> JwtProvider {
        let mut required: Vec<&str> = vec!["exp"];
        // A configured issuer or audience makes the claim required (RFC 8725 §3.8-3.9):
        // a token without it must not pass as one that has the right value.
        if spec.issuer.is_some() {
            required.push("iss");
        }
        if !spec.audiences.is_empty() {
            required.push("aud");
        }
        required.extend(
            spec.required_claims
                .iter()
                .map(String::as_str)
                .filter(|c| SPEC_CLAIMS.contains(c)),
        );
        let validations = spec
            .algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = spec.leeway.as_secs();
                v.validate_nbf = true;
                v.set_required_spec_claims(&required);
                if let Some(iss) = &spec.issuer {
                    v.set_issuer(&[iss]);
                }
                if spec.audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(&spec.audiences);
                }
                (alg, v)
            })
            .collect();
        JwtProvider {
            name: spec.name,
            validations,
            static_keys: spec.static_keys,
            remote: spec.remote,
            sources: spec.sources,
            required_claims: spec
                .required_claims
                .into_iter()
                .filter(|c| !SPEC_CLAIMS.contains(&c.as_str()))
                .collect(),
            mapping: spec.mapping,
            cache: MemoryCache::new(CACHE_ENTRIES),
        }
    }

    /// Header names this provider sets upstream, which a client must never set itself.
    pub fn forwarded_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.mapping.forwarded_headers()
    }

    pub async fn authenticate(&self, req: &RequestHeader) -> Verification {
        let Some(token) = token_in(&self.sources, req) else {
            return Verification::Absent;
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let generation = self.remote.as_ref().map_or(0, |r| r.generation());
        if let (Some(hit), _) = self.cache.get(&digest) {
            // The cache hashes keys to 64 bits; the full digest rules out a collision.
            if hit.digest == digest
                && hit.generation == generation
                && now() < hit.identity.expires_at
            {
                return Verification::Accepted(hit.identity);
            }
        }
        match self.verify(token).await {
            Ok(identity) => {
                let identity = Arc::new(identity);
                let ttl = identity.expires_at.saturating_sub(now()).min(CACHE_TTL_CAP);
                if ttl > 0 {
                    let cached = Cached {
                        digest,
                        identity: identity.clone(),
                        generation,
                    };
                    self.cache
                        .put(&digest, cached, Some(Duration::from_secs(ttl)));
                }
                Verification::Accepted(identity)
            }
            Err(reason) => Verification::Rejected(reason),
        }
    }

    /// Verify a token without the cache (what a cache miss costs).
    pub async fn verify(&self, token: &str) -> Result<Identity, Reject> {
        crate::observe::metrics::jwt_verification(&self.name);
        let header = jsonwebtoken::decode_header(token).map_err(|_| Reject::Malformed)?;
        let alg = header.alg;
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(Reject::AlgorithmNotAllowed)?;
        if self.remote.as_ref().is_some_and(|r| !r.advertises(alg)) {
            return Err(Reject::AlgorithmNotAllowed);
        }
        let kid = header.kid.as_deref();
        let mut result = self.try_keys(token, kid, alg, validation);
        if result == Err(Reject::UnknownKid) && kid.is_some() {
            if let Some(remote) = &self.remote {
                Box::pin(remote.refetch_for_unknown_kid()).await;
                result = self.try_keys(token, kid, alg, validation);
            }
        }
        let claims = result?;
        for c in &self.required_claims {
            if !claims.contains_key(c) {
                return Err(Reject::MissingClaim);
            }
        }
        Ok(self.mapping.identity(&self.name, &claims))
    }

    /// Verify against every candidate key; the first that verifies gives the claims.
    fn try_keys(
        &self,
        token: &str,
        kid: Option<&str>,
        alg: Algorithm,
        validation: &Validation,
    ) -> Result<Map<String, Value>, Reject> {
        let remote = self.remote.as_ref().map(|r| r.keys());
        let remote_keys = remote.iter().flat_map(|set| set.candidates(kid, alg));
        let mut last = Reject::UnknownKid;
        let candidates = self.static_keys.candidates(kid, alg).chain(remote_keys);
        for entry in candidates.take(MAX_KEYS_TRIED) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &entry.key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = reject_for(e.kind());
                    // Another key may still verify; any other fault is the token's own.
                    if last != Reject::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}
