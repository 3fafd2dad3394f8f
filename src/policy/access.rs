//! A route's access rule: which credentials it accepts and what the caller must hold.

use super::auth::api_key::ApiKeys;
use super::auth::build::{self as auth_build, CONSUMER_HEADER};
use super::auth::jwt::JwtProvider;
use super::auth::{Identity, Reject, Verification};
use super::pipeline::{Build, Decision, Exchange, Respond, RoutePolicy};
use http::HeaderValue;
use pingora_error::Result;
use pingora_http::RequestHeader;
use std::sync::Arc;

pub enum Provider {
    Jwt(Arc<JwtProvider>),
    ApiKey(Arc<ApiKeys>),
}

impl Provider {
    async fn authenticate(&self, req: &RequestHeader) -> Verification {
        match self {
            Provider::Jwt(p) => p.authenticate(req).await,
            Provider::ApiKey(k) => k.authenticate(req),
        }
    }

    fn name(&self) -> &str {
        match self {
            Provider::Jwt(p) => &p.name,
            Provider::ApiKey(_) => super::auth::api_key::PROVIDER,
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

/// A refusal, ready to be written as a JSON error.
#[derive(Debug)]
pub struct Denial {
    pub status: u16,
    pub www_authenticate: String,
    pub message: String,
    /// For the log: why, in a word.
    pub reason: &'static str,
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
    /// that accepts it, then authorize. `Ok(None)` is an anonymous request the rule allows.
    pub async fn check(&self, req: &RequestHeader) -> Result<Option<Arc<Identity>>, Denial> {
        let mut first_reject: Option<(Reject, &str)> = None;
        let mut identity = None;
        for provider in &self.providers {
            match provider.authenticate(req).await {
                Verification::Absent => {}
                Verification::Accepted(id) => {
                    identity = Some(id);
                    break;
                }
                Verification::Rejected(r) => {
                    first_reject.get_or_insert((r, provider.name()));
                }
            }
        }
        let Some(identity) = identity else {
            return match first_reject {
                Some((reason, provider)) => Err(Denial {
                    status: 401,
                    www_authenticate: format!(
                        "{}, error=\"invalid_token\", error_description=\"{}\"",
                        self.challenge,
                        reason.description()
                    ),
                    message: format!("{} (provider {provider})", reason.description()),
                    reason: reason.label(),
                }),
                None if self.anonymous => Ok(None),
                None => Err(Denial {
                    status: 401,
                    www_authenticate: self.challenge.clone(),
                    message: "credentials are required".into(),
                    reason: "missing_credentials",
                }),
            };
        };
        self.authorize(&identity)?;
        Ok(Some(identity))
    }

    fn authorize(&self, id: &Identity) -> Result<(), Denial> {
        let forbidden = |reason: &'static str, message: String, extra: String| Denial {
            status: 403,
            www_authenticate: format!("{}, error=\"insufficient_scope\"{extra}", self.challenge),
            message,
            reason,
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

    async fn request(&self, x: &mut Exchange<'_>) -> Decision {
        match self.check(x.session.req_header()).await {
            Ok(identity) => {
                x.metrics.auth_ok();
                x.state.identity = identity;
                Decision::Continue
            }
            Err(denial) => {
                let r = Respond::new(denial.status, denial.reason, denial.message);
                Decision::Respond(r.header("www-authenticate", denial.www_authenticate))
            }
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
