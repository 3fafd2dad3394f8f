//! OAuth 2.0 token introspection (RFC 7662): an opaque token is sent to the authorization
//! server, whose answer says whether it is active and whose it is. Answers are kept by a
//! digest of the token (never the token), active ones until the token expires or
//! `cache_ttl` ends, inactive ones for `negative_cache_ttl`.

use super::claims::{token_in, ClaimMapping, Source};
use super::decisions::{CallCounters, Decisions};
use super::{Identity, Reject, Verification};
use crate::config::{self, Fault, OnFailure};
use crate::outbound::{CallError, Cap, Endpoint};
use base64::Engine;
use bytes::Bytes;
use http::HeaderValue;
use pingora_http::RequestHeader;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// An introspection answer larger than this is not one.
const MAX_ANSWER: usize = 64 << 10;

#[derive(Clone)]
enum Outcome {
    Active(Arc<Identity>),
    Refused(Reject),
    /// The server did not answer in time, or not with an introspection answer.
    Unavailable,
}

pub struct Introspector {
    pub name: String,
    endpoint: Endpoint,
    /// `Basic` credentials of the gateway as a client (RFC 6749 §2.3.1).
    authorization: HeaderValue,
    sources: Vec<Source>,
    cache_ttl: Duration,
    negative_ttl: Duration,
    timeout: Duration,
    on_failure: OnFailure,
    issuer: Option<String>,
    audiences: Vec<String>,
    mapping: ClaimMapping,
    decisions: Decisions<Outcome>,
    counters: CallCounters,
}

use crate::clock::unix_secs as now;

/// RFC 6749 §2.3.1: the client id and secret are form-encoded, then joined for Basic.
fn basic(client_id: &str, secret: &str) -> Option<HeaderValue> {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", enc(client_id), enc(secret));
    let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
    HeaderValue::from_str(&format!("Basic {b64}")).ok()
}

impl Introspector {
    /// `auth.introspection[i]` at `path`.
    pub fn from_config(
        path: &str,
        p: &config::IntrospectionProvider,
        consumer_groups: Arc<HashMap<String, Vec<String>>>,
        faults: &mut Vec<Fault>,
    ) -> Option<Introspector> {
        let before = faults.len();
        if let Some(ca) = &p.ca_file {
            if let Err(e) = crate::outbound::check_ca_file(ca) {
                faults.push(Fault::new(format!("{path}.ca_file"), e));
            }
        }
        let endpoint = Endpoint::parse(&p.endpoint, p.ca_file.clone(), 16)
            .map_err(|e| faults.push(Fault::new(format!("{path}.endpoint"), e)))
            .ok();
        let authorization = match config::read_secret(&p.client_secret_file) {
            Ok(secret) => basic(&p.client_id, &secret),
            Err(e) => {
                faults.push(Fault::new(format!("{path}.client_secret_file"), e));
                None
            }
        };
        if p.client_id.is_empty() {
            faults.push(Fault::new(format!("{path}.client_id"), "must not be empty"));
        }
        config::positive(p.timeout, format!("{path}.timeout"), faults);
        if p.consumer_from.is_empty() {
            faults.push(Fault::new(
                format!("{path}.consumer_from"),
                "name at least one member, e.g. [sub]",
            ));
        }
        let sources = super::claims::sources(path, &p.token_from, faults);
        let mapping = ClaimMapping::new(
            path,
            p.consumer_from.clone(),
            &p.forward_claims,
            &sources,
            p.strip_authorization,
            consumer_groups,
            faults,
        );
        if faults.len() > before {
            return None;
        }
        Some(Introspector {
            name: p.name.clone(),
            endpoint: endpoint?,
            authorization: authorization?,
            sources,
            cache_ttl: p.cache_ttl.0,
            negative_ttl: p.negative_cache_ttl.0,
            timeout: p.timeout.0,
            on_failure: p.on_failure,
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            mapping,
            decisions: Decisions::new(&p.name),
            counters: CallCounters::new(&p.name),
        })
    }

    /// Header names this provider sets upstream, which a client must never set itself.
    pub fn forwarded_headers(&self) -> impl Iterator<Item = &http::HeaderName> {
        self.mapping.forwarded_headers()
    }

    pub async fn authenticate(&self, req: &RequestHeader) -> Verification {
        let Some(token) = token_in(&self.sources, req) else {
            return Verification::Absent;
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let outcome = self
            .decisions
            .get(digest, || self.introspect(token.to_string()))
            .await;
        match outcome {
            Outcome::Active(id) if now() < id.expires_at => Verification::Accepted(id),
            Outcome::Active(_) => Verification::Rejected(Reject::Expired),
            Outcome::Refused(r) => Verification::Rejected(r),
            Outcome::Unavailable => match self.on_failure {
                OnFailure::Deny => Verification::Unavailable,
                OnFailure::Allow => {
                    self.counters.waived.inc();
                    Verification::Waived
                }
            },
        }
    }

    /// Ask the server; the outcome and how long it may be kept.
    async fn introspect(&self, token: String) -> (Outcome, Duration) {
        self.counters.call.inc();
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", &token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let answer = async {
            let mut req = self
                .endpoint
                .request("POST", self.endpoint.path_and_query())
                .map_err(CallError::Failed)?;
            let set = |req: &mut RequestHeader, k: &'static str, v: HeaderValue| {
                req.insert_header(k, v)
                    .map_err(|e| CallError::Failed(e.to_string()))
            };
            set(&mut req, "authorization", self.authorization.clone())?;
            set(
                &mut req,
                "content-type",
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )?;
            set(
                &mut req,
                "accept",
                HeaderValue::from_static("application/json"),
            )?;
            self.endpoint
                .call(
                    req,
                    Some(Bytes::from(body)),
                    (MAX_ANSWER, Cap::Fail),
                    self.timeout,
                )
                .await
        }
        .await;
        let reply = match answer {
            Ok(r) if r.status() == 200 => r,
            Ok(r) => {
                self.counters.error.inc();
                log::warn!(
                    "introspection provider {}: the endpoint answered {}",
                    self.name,
                    r.status()
                );
                return (Outcome::Unavailable, Duration::ZERO);
            }
            Err(e) => {
                match e {
                    CallError::Timeout => self.counters.timeout.inc(),
                    CallError::Failed(_) => self.counters.error.inc(),
                }
                log::warn!("introspection provider {}: {e}", self.name);
                return (Outcome::Unavailable, Duration::ZERO);
            }
        };
        let Ok(Value::Object(members)) = serde_json::from_slice::<Value>(&reply.body) else {
            self.counters.error.inc();
            log::warn!(
                "introspection provider {}: the answer is not a JSON object",
                self.name
            );
            return (Outcome::Unavailable, Duration::ZERO);
        };
        match self.judge(&members) {
            Ok(identity) => {
                let left = identity.expires_at.saturating_sub(now());
                let keep = self.cache_ttl.min(Duration::from_secs(left));
                (Outcome::Active(Arc::new(identity)), keep)
            }
            Err(r) => (Outcome::Refused(r), self.negative_ttl),
        }
    }

    /// RFC 7662 §2.2: only `active: true` counts; then the same checks as for a JWT.
    fn judge(&self, m: &Map<String, Value>) -> Result<Identity, Reject> {
        if m.get("active") != Some(&Value::Bool(true)) {
            return Err(Reject::Inactive);
        }
        let now = now();
        let exp = match m.get("exp") {
            None => None,
            Some(v) => Some(v.as_u64().ok_or(Reject::Malformed)?),
        };
        if exp.is_some_and(|e| e <= now) {
            return Err(Reject::Expired);
        }
        if m.get("nbf")
            .and_then(Value::as_u64)
            .is_some_and(|n| n > now)
        {
            return Err(Reject::NotYetValid);
        }
        if let Some(iss) = &self.issuer {
            if m.get("iss").and_then(Value::as_str) != Some(iss.as_str()) {
                return Err(Reject::WrongIssuer);
            }
        }
        if !self.audiences.is_empty() {
            let aud = super::claims::claim_list(m, "aud");
            if !aud.iter().any(|a| self.audiences.contains(a)) {
                return Err(Reject::WrongAudience);
            }
        }
        let mut identity = self.mapping.identity(&self.name, m);
        // Without `exp`, the answer itself is what bounds the token's use.
        identity.expires_at =
            exp.unwrap_or_else(|| now.saturating_add(self.cache_ttl.as_secs().max(1)));
        Ok(identity)
    }
}
