//! What each listener does besides routing: HTTPS with its certificates, redirecting plain
//! HTTP to HTTPS, and HSTS.

use super::certs::load_pair;
use super::client_auth::{build_verifier, ClientVerifier};
use super::sni::{CertSet, SniResolver};
use crate::config::{self, Fault};
use http::HeaderValue;
use pingora_rustls::ClientCertVerifier;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct ListenerTls {
    /// The live resolver of a running listener (carried over reloads).
    pub resolver: Arc<SniResolver>,
    /// The certificates this config brings; served once it is applied.
    pub certs: Arc<CertSet>,
    pub http2: bool,
    /// The live client certificate verifier of a running listener (carried over reloads).
    pub verifier: Arc<ClientVerifier>,
    /// What it verifies with once this config is applied (`None`: no certificate is asked).
    pub client_auth: Option<Arc<dyn ClientCertVerifier>>,
}

pub struct ListenerSpec {
    pub addr: SocketAddr,
    pub tls: Option<ListenerTls>,
    pub redirect_https: bool,
    pub hsts: Option<HeaderValue>,
}

/// What the running TLS listeners use, by address: kept so a reload changes what they
/// serve and whom they ask for certificates.
pub struct Live<'a> {
    pub resolvers: &'a HashMap<SocketAddr, Arc<SniResolver>>,
    pub verifiers: &'a HashMap<SocketAddr, Arc<ClientVerifier>>,
}

/// Build each listener's TLS and edge settings, taking over what the running listeners use.
pub fn build(
    cfg: &config::Config,
    addrs: &[Option<SocketAddr>],
    live: Live<'_>,
    faults: &mut Vec<Fault>,
) -> Vec<ListenerSpec> {
    let Live {
        resolvers,
        verifiers,
    } = live;
    let mut specs = Vec::new();
    for (i, (l, addr)) in cfg.listeners.iter().zip(addrs).enumerate() {
        let path = cfg.item_path("listeners", i);
        let tls = l.tls.as_ref().and_then(|t| {
            let mut loaded = Vec::new();
            for (j, c) in t.certificates.iter().enumerate() {
                match load_pair(&c.cert, &c.key) {
                    Ok(cert) => loaded.push(cert),
                    Err((field, e)) => faults.push(Fault::new(
                        format!("{path}.tls.certificates[{j}].{field}"),
                        e,
                    )),
                }
            }
            if t.certificates.is_empty() {
                faults.push(Fault::new(
                    format!("{path}.tls.certificates"),
                    "list at least one {cert, key}",
                ));
            }
            let client_auth = t.client_auth.as_ref().and_then(|c| {
                build_verifier(&c.ca, c.required)
                    .map_err(|e| faults.push(Fault::new(format!("{path}.tls.client_auth.ca"), e)))
                    .ok()
            });
            let verifier = match addr.and_then(|a| verifiers.get(&a)) {
                Some(v) => v.clone(),
                None => ClientVerifier::new(),
            };
            let certs = Arc::new(CertSet::new(loaded)?);
            let resolver = match addr.and_then(|a| resolvers.get(&a)) {
                Some(r) => r.clone(),
                None => SniResolver::new(certs.clone()),
            };
            Some(ListenerTls {
                resolver,
                certs,
                http2: t.http2,
                verifier,
                client_auth,
            })
        });
        let hsts = l.tls.as_ref().and_then(|t| t.hsts.as_ref()).and_then(|v| {
            HeaderValue::from_str(v)
                .map_err(|_| {
                    faults.push(Fault::new(
                        format!("{path}.tls.hsts"),
                        "not a valid header value",
                    ))
                })
                .ok()
        });
        if l.redirect_https && l.tls.is_some() {
            faults.push(Fault::new(
                format!("{path}.redirect_https"),
                "a TLS listener cannot redirect to HTTPS; set it on the plain one",
            ));
        }
        if let Some(addr) = *addr {
            specs.push(ListenerSpec {
                addr,
                tls,
                redirect_https: l.redirect_https,
                hsts,
            });
        }
    }
    specs
}

/// The port plain requests are redirected to: the first TLS listener's.
/// The listeners' addresses in config order (`None` where one is not valid).
pub fn addresses(cfg: &config::Config, faults: &mut Vec<Fault>) -> Vec<Option<SocketAddr>> {
    if cfg.listeners.is_empty() {
        faults.push(Fault::new("listeners", "at least one listener is needed"));
    }
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let path = format!("{}.address", cfg.item_path("listeners", i));
        let addr = match l.address.parse::<SocketAddr>() {
            Ok(a) if seen.contains(&a) => {
                faults.push(Fault::new(path, format!("{a} is listed twice")));
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                faults.push(Fault::new(
                    path,
                    format!("{:?} is not an IP:PORT address", l.address),
                ));
                None
            }
        };
        seen.extend(addr);
        out.push(addr);
    }
    out
}

/// Listeners and routes that redirect to HTTPS need a TLS listener to redirect to.
pub fn check_redirects(cfg: &config::Config, https_port: Option<u16>, faults: &mut Vec<Fault>) {
    if https_port.is_some() {
        return;
    }
    let listeners = cfg
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (cfg.item_path("listeners", i), l.redirect_https));
    let routes = cfg
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| (cfg.item_path("routes", i), r.redirect_https));
    for (path, _) in listeners.chain(routes).filter(|(_, on)| *on) {
        faults.push(Fault::new(
            format!("{path}.redirect_https"),
            "there is no TLS listener to redirect to",
        ));
    }
}

pub fn https_port(specs: &[ListenerSpec]) -> Option<u16> {
    specs
        .iter()
        .find(|s| s.tls.is_some())
        .map(|s| s.addr.port())
}

/// The listener a connection came in on: by address, or by port for a wildcard bind.
pub fn find(specs: &[ListenerSpec], local: SocketAddr) -> Option<&ListenerSpec> {
    specs.iter().find(|s| s.addr == local).or_else(|| {
        specs
            .iter()
            .find(|s| s.addr.ip().is_unspecified() && s.addr.port() == local.port())
    })
}

/// Certificates due for renewal: expired, or expiring within three weeks.
pub fn expiry_warnings(specs: &[ListenerSpec], now_unix: i64) -> Vec<String> {
    const SOON: i64 = 21 * 24 * 3600;
    let mut out = Vec::new();
    for l in specs {
        for c in l.tls.iter().flat_map(|t| t.certs.certs.iter()) {
            let left = c.not_after - now_unix;
            if left <= 0 {
                out.push(format!(
                    "listener {}: certificate {} ({}) has expired",
                    l.addr,
                    c.file,
                    c.names.join(", ")
                ));
            } else if left < SOON {
                out.push(format!(
                    "listener {}: certificate {} ({}) expires in {} days",
                    l.addr,
                    c.file,
                    c.names.join(", "),
                    left / 86_400
                ));
            }
        }
    }
    out
}
