//! Compiles `consumers`, `auth` and the routes' `access` sections, with a fault for
//! everything that could not work.

use super::api_key::{self, ApiKeys};
use super::claims::{self, header_name, ClaimMapping};
use super::client_cert::{self, ClientCerts};
use super::external::ExternalAuth;
use super::introspection::Introspector;
use super::jwks::{KeySet, KeysAt, KeysSource, RemoteKeys};
use super::jwt::{JwtProvider, ProviderSpec};
use super::key_checks;
use super::Identity;
use crate::config::{self, Config, Fault};
use crate::outbound::Endpoint;
use crate::policy::access::{AccessRule, Provider};
use http::HeaderName;
use jsonwebtoken::{Algorithm, DecodingKey};
use std::collections::HashMap;
use std::sync::Arc;

/// Header naming the consumer of an authenticated request, for the upstream.
pub const CONSUMER_HEADER: &str = "x-consumer";

/// Everything authentication needs at run time.
pub struct Auth {
    pub jwt: HashMap<String, Arc<JwtProvider>>,
    pub introspection: HashMap<String, Arc<Introspector>>,
    pub external: HashMap<String, Arc<ExternalAuth>>,
    pub api_keys: Arc<ApiKeys>,
    pub client_certs: Arc<ClientCerts>,
    /// Headers only the gateway may set upstream; a client's copies are always removed.
    pub identity_headers: Vec<HeaderName>,
}

/// Build the auth section; `previous` holds the running config's remote key sets by
/// provider name, taken over where a provider's keys are configured the same.
pub fn build(
    cfg: &Config,
    previous: &HashMap<String, Arc<RemoteKeys>>,
    faults: &mut Vec<Fault>,
) -> Auth {
    let mut groups = HashMap::new();
    let mut by_digest = HashMap::new();
    let mut client_certs = ClientCerts::default();
    let key_header = header_name(
        "auth.api_keys.header".into(),
        &cfg.auth.api_keys.header,
        faults,
    )
    .unwrap_or(HeaderName::from_static("x-api-key"));
    for (i, c) in cfg.consumers.iter().enumerate() {
        let path = cfg.item_path("consumers", i);
        if c.name.is_empty() {
            faults.push(Fault::new(
                format!("{path}.name"),
                "a consumer needs a name",
            ));
        } else if groups.insert(c.name.clone(), c.groups.clone()).is_some() {
            faults.push(Fault::new(
                format!("{path}.name"),
                format!("consumer name {:?} is used twice", c.name),
            ));
        }
        let identity = Arc::new(Identity {
            provider: api_key::PROVIDER.into(),
            consumer: Some(c.name.clone()),
            groups: c.groups.clone(),
            hide_header: Some(key_header.clone()),
            hide_query: cfg.auth.api_keys.query.clone(),
            ..Identity::default()
        });
        for (k, m) in c.certificates.iter().enumerate() {
            let cpath = format!("{path}.certificates[{k}]");
            if m.subject.is_none() && m.san.is_none() {
                faults.push(Fault::new(cpath, "give subject or san"));
                continue;
            }
            let cert_identity = Arc::new(Identity {
                provider: client_cert::PROVIDER.into(),
                consumer: Some(c.name.clone()),
                groups: c.groups.clone(),
                ..Identity::default()
            });
            if !client_certs.add(m.subject.as_deref(), m.san.as_deref(), &cert_identity) {
                faults.push(Fault::new(
                    cpath,
                    "this certificate already names a consumer",
                ));
            }
        }
        for (k, digest) in c.api_keys.iter().enumerate() {
            let kpath = format!("{path}.api_keys[{k}]");
            match api_key::parse_digest(digest) {
                Ok(d) => {
                    if by_digest.insert(d, identity.clone()).is_some() {
                        faults.push(Fault::new(kpath, "this key digest is listed twice"));
                    }
                }
                Err(e) => faults.push(Fault::new(kpath, e)),
            }
        }
    }
    let consumer_groups = Arc::new(groups);
    let api_keys = Arc::new(ApiKeys::new(
        key_header.clone(),
        cfg.auth.api_keys.query.clone(),
        by_digest,
    ));

    let mut jwt = HashMap::new();
    let mut identity_headers = vec![HeaderName::from_static(CONSUMER_HEADER)];
    let mut names = Vec::new();
    let mut name_ok = |path: &str, name: &str, faults: &mut Vec<Fault>| {
        if name.is_empty() || name == api_key::PROVIDER || name == client_cert::PROVIDER {
            faults.push(Fault::new(
                format!("{path}.name"),
                format!(
                    "a provider needs a name other than {:?} and {:?}",
                    api_key::PROVIDER,
                    client_cert::PROVIDER
                ),
            ));
            return false;
        }
        if names.iter().any(|n| n == name) {
            faults.push(Fault::new(
                format!("{path}.name"),
                format!("provider name {name:?} is used twice"),
            ));
            return false;
        }
        names.push(name.to_string());
        true
    };
    for (i, p) in cfg.auth.jwt.iter().enumerate() {
        let path = cfg.item_path("auth.jwt", i);
        if !name_ok(&path, &p.name, faults) {
            continue;
        }
        if let Some(provider) = build_provider(&path, p, consumer_groups.clone(), previous, faults)
        {
            identity_headers.extend(provider.forwarded_headers().cloned());
            jwt.insert(p.name.clone(), Arc::new(provider));
        }
    }
    let mut introspection = HashMap::new();
    for (i, p) in cfg.auth.introspection.iter().enumerate() {
        let path = cfg.item_path("auth.introspection", i);
        if !name_ok(&path, &p.name, faults) {
            continue;
        }
        if let Some(provider) = Introspector::from_config(&path, p, consumer_groups.clone(), faults)
        {
            identity_headers.extend(provider.forwarded_headers().cloned());
            introspection.insert(p.name.clone(), Arc::new(provider));
        }
    }
    let mut external = HashMap::new();
    for (i, p) in cfg.auth.external.iter().enumerate() {
        let path = cfg.item_path("auth.external", i);
        if !name_ok(&path, &p.name, faults) {
            continue;
        }
        if let Some(provider) = ExternalAuth::from_config(&path, p, consumer_groups.clone(), faults)
        {
            identity_headers.extend(provider.upstream_headers.iter().cloned());
            external.insert(p.name.clone(), Arc::new(provider));
        }
    }
    identity_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    identity_headers.dedup();
    Auth {
        jwt,
        introspection,
        external,
        api_keys,
        client_certs: Arc::new(client_certs),
        identity_headers,
    }
}

fn build_provider(
    path: &str,
    p: &config::JwtProvider,
    consumer_groups: Arc<HashMap<String, Vec<String>>>,
    previous: &HashMap<String, Arc<RemoteKeys>>,
    faults: &mut Vec<Fault>,
) -> Option<JwtProvider> {
    let before = faults.len();
    let mut algorithms = Vec::new();
    if p.algorithms.is_empty() {
        faults.push(Fault::new(
            format!("{path}.algorithms"),
            "list the accepted algorithms, e.g. [RS256]",
        ));
    }
    for (i, a) in p.algorithms.iter().enumerate() {
        match a.parse::<Algorithm>() {
            Ok(alg) => algorithms.push(alg),
            Err(_) => faults.push(Fault::new(
                format!("{path}.algorithms[{i}]"),
                format!(
                    "{a:?} is not accepted; use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA"
                ),
            )),
        }
    }
    let k = &p.keys;
    let kpath = format!("{path}.keys");
    let mut keys = KeySet::default();
    let secret = match (&k.secret, &k.secret_file) {
        (Some(_), Some(_)) => {
            faults.push(Fault::new(
                format!("{kpath}.secret_file"),
                "give secret or secret_file, not both",
            ));
            None
        }
        (Some(s), None) => Some((s.clone(), "secret")),
        (None, Some(f)) => match crate::config::read_secret(f) {
            Ok(s) => Some((s, "secret_file")),
            Err(e) => {
                faults.push(Fault::new(format!("{kpath}.secret_file"), e));
                None
            }
        },
        (None, None) => None,
    };
    if let Some((secret, field)) = &secret {
        // RFC 7518 §3.2: at least as long as the hash output of every HMAC algorithm used.
        let (need, alg) = algorithms
            .iter()
            .map(|&a| (key_checks::min_hmac_bytes(a), a))
            .max_by_key(|(n, _)| *n)
            .filter(|(n, _)| *n > 0)
            .unwrap_or((32, Algorithm::HS256));
        if secret.len() < need {
            faults.push(Fault::new(
                format!("{kpath}.{field}"),
                format!("an HMAC secret needs at least {need} bytes for {alg:?} (RFC 7518 §3.2)"),
            ));
        }
        match DecodingKey::from_secret(secret.as_bytes()) {
            Ok(key) => keys.keys.push(super::jwks::KeyEntry {
                kid: None,
                key,
                alg: None,
            }),
            Err(e) => faults.push(Fault::new(format!("{kpath}.{field}"), e.to_string())),
        }
    }
    for (i, file) in k.pem_files.iter().enumerate() {
        let r = std::fs::read(file)
            .map_err(|e| format!("cannot read {file}: {e}"))
            .and_then(|pem| keys.add_pem(&pem).map_err(|e| format!("{file}: {e}")));
        if let Err(e) = r {
            faults.push(Fault::new(format!("{kpath}.pem_files[{i}]"), e));
        }
    }
    if let Some(file) = &k.jwks_file {
        let r = std::fs::read(file)
            .map_err(|e| format!("cannot read {file}: {e}"))
            .and_then(|json| KeySet::from_jwks(&json).map_err(|e| format!("{file}: {e}")));
        match r {
            Ok((set, refused)) => {
                // From a file, a refused key is a config fault: the operator can fix it.
                for why in refused {
                    faults.push(Fault::new(
                        format!("{kpath}.jwks_file"),
                        format!("{file}: {why}"),
                    ));
                }
                keys.keys.extend(set.keys)
            }
            Err(e) => faults.push(Fault::new(format!("{kpath}.jwks_file"), e)),
        }
    }
    let discovery = discovery_url(path, p, faults);
    if let Some(ca) = &k.jwks_ca_file {
        if k.jwks_url.is_none() && discovery.is_none() {
            faults.push(Fault::new(
                format!("{kpath}.jwks_ca_file"),
                "only used with jwks_url or discovery",
            ));
        } else if let Err(e) = super::jwks::check_ca_file(ca) {
            faults.push(Fault::new(format!("{kpath}.jwks_ca_file"), e));
        }
    }
    if discovery.is_some() && k.jwks_url.is_some() {
        faults.push(Fault::new(
            format!("{kpath}.jwks_url"),
            "give jwks_url or discovery, not both: discovery names the key set",
        ));
    }
    let at = match (&k.jwks_url, discovery) {
        (Some(url), None) => match Endpoint::parse(url, k.jwks_ca_file.clone(), 4) {
            Ok(e) => Some(KeysAt::Url(e)),
            Err(e) => {
                faults.push(Fault::new(format!("{kpath}.jwks_url"), e));
                None
            }
        },
        (None, Some((field, url))) => match Endpoint::parse(&url, k.jwks_ca_file.clone(), 2) {
            Ok(e) => Some(KeysAt::Discovery(e, p.issuer.clone().unwrap_or_default())),
            Err(e) => {
                faults.push(Fault::new(format!("{path}.{field}"), e));
                None
            }
        },
        _ => None,
    };
    let remote = at.map(|at| {
        let source = KeysSource::of(k, p.discovery_url.as_deref(), p.issuer.as_deref());
        match previous.get(&p.name).filter(|r| r.source == source) {
            Some(running) => running.clone(),
            None => Arc::new(RemoteKeys::new(
                &p.name,
                at,
                k.jwks_ca_file.clone(),
                k.refresh_interval.0,
                k.min_refetch_interval.0,
                source,
            )),
        }
    });
    if keys.keys.is_empty() && remote.is_none() && faults.len() == before {
        faults.push(Fault::new(
            kpath.clone(),
            "give at least one of secret, pem_files, jwks_file, jwks_url (or use discovery)",
        ));
    }
    if remote.is_none() {
        // Every accepted algorithm needs a key of its family, or it could never verify.
        for (i, alg) in algorithms.iter().enumerate() {
            if !keys.keys.iter().any(|e| e.key.family() == alg.family()) {
                faults.push(Fault::new(
                    format!("{path}.algorithms[{i}]"),
                    format!("no key of this provider can verify {alg:?}"),
                ));
            }
        }
    }
    if k.refresh_interval.0.is_zero() || k.min_refetch_interval.0.is_zero() {
        faults.push(Fault::new(
            kpath,
            "refresh intervals must be longer than 0s",
        ));
    }
    let sources = claims::sources(path, &p.token_from, faults);
    let mapping = ClaimMapping::new(
        path,
        vec![p.consumer_claim.clone()],
        &p.forward_claims,
        &sources,
        p.strip_authorization,
        consumer_groups,
        faults,
    );
    if faults.len() > before {
        return None;
    }
    Some(JwtProvider::new(ProviderSpec {
        name: p.name.clone(),
        algorithms,
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        leeway: p.leeway.0,
        required_claims: p.required_claims.clone(),
        static_keys: keys,
        remote,
        sources,
        mapping,
    }))
}

/// The discovery document's URL of a provider that uses discovery, with the field it
/// comes from: `discovery_url`, or the issuer's well-known location.
fn discovery_url(
    path: &str,
    p: &config::JwtProvider,
    faults: &mut Vec<Fault>,
) -> Option<(&'static str, String)> {
    if !p.issuer_discovery && p.discovery_url.is_none() {
        return None;
    }
    let Some(issuer) = &p.issuer else {
        faults.push(Fault::new(
            format!("{path}.issuer"),
            "discovery needs the issuer: the document must name it exactly",
        ));
        return None;
    };
    Some(match &p.discovery_url {
        Some(url) => ("discovery_url", url.clone()),
        None => (
            "issuer",
            format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            ),
        ),
    })
}

/// A route's access rule, or `None` with faults.
pub fn access_rule(
    path: &str,
    a: &config::Access,
    auth: &Auth,
    unparsed_providers: &[String],
    faults: &mut Vec<Fault>,
) -> Option<AccessRule> {
    if a.providers.is_empty() {
        faults.push(Fault::new(
            format!("{path}.providers"),
            "list the accepted providers (names from auth, api_key or client_cert)",
        ));
        return None;
    }
    let mut providers = Vec::new();
    let mut bearer = false;
    for (i, name) in a.providers.iter().enumerate() {
        if name == api_key::PROVIDER {
            providers.push(Provider::ApiKey(auth.api_keys.clone()));
        } else if name == client_cert::PROVIDER {
            providers.push(Provider::ClientCert(auth.client_certs.clone()));
        } else if let Some(p) = auth.jwt.get(name) {
            bearer = true;
            providers.push(Provider::Jwt(p.clone()));
        } else if let Some(p) = auth.introspection.get(name) {
            bearer = true;
            providers.push(Provider::Introspection(p.clone()));
        } else if let Some(p) = auth.external.get(name) {
            providers.push(Provider::External(p.clone()));
        } else if !unparsed_providers.contains(name) {
            faults.push(Fault::new(
                format!("{path}.providers[{i}]"),
                format!(
                    "no provider named {name:?} in auth.jwt, auth.introspection or \
                     auth.external (and it is not api_key or client_cert)"
                ),
            ));
        }
    }
    if providers.len() != a.providers.len() {
        return None;
    }
    let challenge = if bearer {
        "Bearer realm=\"portico\""
    } else if a.providers.iter().any(|p| p == api_key::PROVIDER) {
        "ApiKey realm=\"portico\""
    } else {
        "ClientCertificate realm=\"portico\""
    };
    Some(AccessRule {
        providers,
        scopes: a.scopes.clone(),
        groups: a.groups.clone(),
        consumers: a.consumers.clone(),
        anonymous: a.anonymous,
        challenge: challenge.into(),
    })
}
