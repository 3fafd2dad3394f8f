//! A route's access rule: which credentials it accepts and what the caller must hold.

use super::auth::api_key::ApiKeys;
use super::auth::build::{self as auth_build, CONSUMER_HEADER};
use super::auth::client_cert::ClientCerts;
use super::auth::external::ExternalAuth;
use super::auth::introspection::Introspector;
use super::auth::jwt::JwtProvider;
use super::auth::{Identity, Reject, Verification};
use super::pipeline::{Build, Decision, Exchange, Respond, RoutePolicy};
use crate::tls::client_auth;
use http::HeaderValue;
use pingora_error::Result;
use pingora_http::RequestHeader;
use std::sync::Arc;

pub enum Provider {
    Jwt(Arc<JwtProvider>),
    ApiKey(Arc<ApiKeys>),
    Introspection(Arc<Introspector>),
    External(Arc<ExternalAuth>),
    ClientCert(Arc<ClientCerts>),
}

impl Provider {
    async fn authenticate(&self, x: &mut Exchange<'_>) -> Verification {
        match self {
            Provider::Jwt(p) => p.authenticate(x.session.req_header()).await,
            Provider::ApiKey(k) => k.authenticate(x.session.req_header()),
            Provider::Introspection(p) => p.authenticate(x.session.req_header()).await,
            Provider::External(p) => Box::pin(p.authenticate(x)).await,
            Provider::ClientCert(c) => c.authenticate(client_auth::of_session(x.session)),
        }
    }

    fn name(&self) -> &str {
        match self {
            Provider::Jwt(p) => &p.name,
            Provider::ApiKey(_) => super::auth::api_key::PROVIDER,
            Provider::Introspection(p) => &p.name,
            Provider::External(p) => &p.name,
            Provider::ClientCert(_) => super::auth::client_cert::PROVIDER,
        }
    }
}

pub struct AccessRule {
    pub providers: Vec<Provider>,
    pub scopes: Vec<String>,
    pub groups: Vec<String>,
    pub consumers: Vec<String>,
    pub anonymous: bool,
    /// `WWW-Authenticate` for a request without credentials, built at load.
    pub challenge: String,
}

impl AccessRule {
    pub fn from_config(b: &mut Build<'_>) -> Option<Self> {
        let a = b.route.access.as_ref()?;
        let path = format!("{}.access", b.path);
        auth_build::access_rule(
            &path,
            a,
            b.src.auth,
            &b.src.unparsed.jwt_providers,
            b.faults,
        )
    }

    /// Authenticate the request with the first provider whose credential it carries and
    /// that accepts it, then authorize. `Ok(None)` is a request that passes without an
    /// identity: anonymous where the rule allows it, or waived by a provider whose service
    /// is down and that says `on_failure: allow`.
    pub async fn check(&self, x: &mut Exchange<'_>) -> Result<Option<Arc<Identity>>, Box<Respond>> {
        let mut first_reject: Option<(Reject, &str)> = None;
        let mut identity = None;
        for provider in &self.providers {
            match provider.authenticate(x).await {
                Verification::Absent => {}
                Verification::Accepted(id) => {
                    identity = Some(id);
                    break;
                }
                Verification::Rejected(r) => {
                    first_reject.get_or_insert((r, provider.name()));
                }
                Verification::Answer(r) => return Err(r),
                Verification::Waived => return Ok(None),
                Verification::Unavailable => {
                    return Err(Respond::new(
                        503,
                        "auth_unavailable",
                        format!(
                            "credentials cannot be checked now (provider {})",
                            provider.name()
                        ),
                    )
                    .header("retry-after", "1"))
                }
            }
        }
        let Some(identity) = identity else {
            return match first_reject {
                Some((reason, provider)) => Err(Respond::new(
                    401,
                    reason.label(),
                    format!("{} (provider {provider})", reason.description()),
                )
                .header(
                    "www-authenticate",
                    format!(
                        "{}, error=\"invalid_token\", error_description=\"{}\"",
                        self.challenge,
                        reason.description()
                    ),
                )),
                None if self.anonymous => Ok(None),
                None => Err(
                    Respond::new(401, "missing_credentials", "credentials are required")
                        .header("www-authenticate", self.challenge.clone()),
                ),
            };
        };
        self.authorize(&identity)?;
        Ok(Some(identity))
    }

    fn authorize(&self, id: &Identity) -> Result<(), Box<Respond>> {
        let forbidden = |reason: &'static str, message: String, extra: String| {
            Respond::new(403, reason, message).header(
                "www-authenticate",
                format!("{}, error=\"insufficient_scope\"{extra}", self.challenge),
            )
        };
        let missing: Vec<&str> = self
            .scopes
            .iter()
            .filter(|s| !id.scopes.contains(s))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(forbidden(
                "missing_scope",
                format!("missing scope: {}", missing.join(" ")),
                format!(", scope=\"{}\"", self.scopes.join(" ")),
            ));
        }
        if !self.groups.is_empty() && !self.groups.iter().any(|g| id.groups.contains(g)) {
            return Err(forbidden(
                "missing_group",
                format!("requires membership of one of: {}", self.groups.join(", ")),
                String::new(),
            ));
        }
        if !self.consumers.is_empty()
            && !id
                .consumer
                .as_ref()
                .is_some_and(|c| self.consumers.contains(c))
        {
            return Err(forbidden(
                "consumer_not_allowed",
                "this consumer may not use this route".into(),
                String::new(),
            ));
        }
        Ok(())
    }
}

impl RoutePolicy for AccessRule {
    const NAME: &'static str = "access";

    fn describe(&self) -> String {
        let providers: Vec<&str> = self.providers.iter().map(Provider::name).collect();
        let mut out = format!("credentials from one of: {}", providers.join(", "));
        if !self.scopes.is_empty() {
            out.push_str(&format!("; scopes: {}", self.scopes.join(" ")));
        }
        if !self.groups.is_empty() {
            out.push_str(&format!("; one of the groups: {}", self.groups.join(", ")));
        }
        if !self.consumers.is_empty() {
            out.push_str(&format!("; only: {}", self.consumers.join(", ")));
        }
        if self.anonymous {
            out.push_str("; anonymous callers pass");
        }
        out
    }

    async fn request(&self, x: &mut Exchange<'_>) -> Decision {
        match self.check(x).await {
            Ok(identity) => {
                x.metrics.auth_ok();
                x.state.identity = identity;
                Decision::Continue
            }
            Err(r) => Decision::Respond(r),
        }
    }

    /// Who the gateway says is calling (a client's own copies of these headers were
    /// removed before), and the credential hidden when its provider says so.
    fn upstream_request(&self, x: &mut Exchange<'_>, upstream: &mut RequestHeader) -> Result<()> {
        let Some(id) = &x.state.identity else {
            return Ok(());
        };
        if let Some(consumer) = &id.consumer {
            if let Ok(v) = HeaderValue::from_str(consumer) {
                upstream.insert_header(CONSUMER_HEADER, v)?;
            }
        }
        for (name, value) in &id.headers {
            upstream.insert_header(name.clone(), value.clone())?;
        }
        if let Some(h) = &id.hide_header {
            upstream.remove_header(h);
        }
        if let Some(name) = &id.hide_query {
            crate::request_parts::remove_query_param(upstream, name);
        }
        Ok(())
    }
}
