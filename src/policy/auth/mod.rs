//! Who is calling: JWT providers and API keys turn credentials into an [`Identity`].

pub mod api_key;
pub mod build;
pub mod claims;
pub mod client_cert;
pub mod decisions;
pub mod external;
pub mod introspection;
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
    /// The authorization server says the token is not active (RFC 7662 §2.2).
    Inactive,
    /// A verified client certificate that names no consumer.
    UnknownCertificate,
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
            Reject::Inactive => "inactive",
            Reject::UnknownCertificate => "unknown_certificate",
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
            Reject::Inactive => "the token is not active",
            Reject::UnknownCertificate => "the client certificate names no consumer",
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The outcome of asking one provider about a request.
pub enum Verification {
    /// The request carries no credential this provider reads.
    Absent,
    Accepted(std::sync::Arc<Identity>),
    Rejected(Reject),
    /// The service that decides did not answer in time or failed, and the provider says
    /// `on_failure: deny`.
    Unavailable,
    /// The same, with `on_failure: allow`: the request passes without an identity.
    Waived,
    /// The provider's own answer to the client (an authorization service's refusal).
    Answer(Box<crate::policy::pipeline::Respond>),
}
