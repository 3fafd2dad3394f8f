//! Who is calling: JWT providers and API keys turn credentials into an [`Identity`].

pub mod api_key;
pub mod build;
pub mod jwks;
pub mod jwt;
pub mod key_checks;

use std::fmt;

/// A caller whose credentials checked out.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The provider that vouched for it: a JWT provider's name or `api_key`.
    pub provider: String,
    /// The consumer name (from the consumer claim, or the API key's owner).
    pub consumer: Option<String>,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    /// Headers to send upstream for this identity (forwarded claims).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Unix time after which a cached copy must not be used.
    pub expires_at: u64,
    /// The credential's header, removed before forwarding when the provider says so.
    pub hide_header: Option<http::HeaderName>,
    /// The credential's query parameter, removed before forwarding.
    pub hide_query: Option<String>,
    /// A token's claims with string, number or boolean values, for `$jwt.claim.NAME`.
    pub claims: Vec<(String, String)>,
}

/// Why credentials were refused; the label goes to the log (and later to metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Malformed,
    AlgorithmNotAllowed,
    UnknownKid,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
    UnknownApiKey,
}

impl Reject {
    /// Short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reject::UnknownKid => "unknown_kid",
            Reject::BadSignature => "bad_signature",
            Reject::Expired => "expired",
            Reject::NotYetValid => "not_yet_valid",
            Reject::WrongIssuer => "wrong_issuer",
            Reject::WrongAudience => "wrong_audience",
            Reject::MissingClaim => "missing_claim",
            Reject::UnknownApiKey => "unknown_api_key",
        }
    }

    /// What the client is told (RFC 6750 error_description).
    pub fn description(self) -> &'static str {
        match self {
            Reject::Malformed => "the token is malformed",
            Reject::AlgorithmNotAllowed => "the token's algorithm is not accepted",
            Reject::UnknownKid => "the token's signing key is unknown",
            Reject::BadSignature => "the token's signature is invalid",
            Reject::Expired => "the token has expired",
            Reject::NotYetValid => "the token is not valid yet",
            Reject::WrongIssuer => "the token's issuer is not accepted",
            Reject::WrongAudience => "the token's audience is not accepted",
            Reject::MissingClaim => "the token lacks a required claim",
            Reject::UnknownApiKey => "the API key is not valid",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The outcome of asking one provider about a request.
#[derive(Debug)]
pub enum Verification {
    /// The request carries no credential this provider reads.
    Absent,
    Accepted(std::sync::Arc<Identity>),
    Rejected(Reject),
}
