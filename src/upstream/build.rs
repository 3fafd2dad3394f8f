//! Compiling an upstream section into a [`Pool`], each fault with its YAML path.

use super::breaker::BreakerPolicy;
use super::hash_key::HashKey;
use super::health;
use super::outlier::OutlierPolicy;
use super::{Pool, PoolOptions, TargetSpec, TlsOptions};
use crate::config::{self, Fault, Upstream};
use crate::tls;
use http::HeaderValue;
use std::net::{SocketAddr, ToSocketAddrs};

impl Pool {
    /// Build upstream `u` (at YAML path `path`); `None` when it has faults.
    pub fn from_config(
        path: &str,
        u: &Upstream,
        metrics: bool,
        faults: &mut Vec<Fault>,
    ) -> Option<Pool> {
        let before = faults.len();
        if u.name.is_empty() {
            faults.push(Fault::new(
                format!("{path}.name"),
                "an upstream needs a name",
            ));
        }
        if u.targets.is_empty() {
            faults.push(Fault::new(
                format!("{path}.targets"),
                "the pool is empty; list at least one target",
            ));
        }
        let mut targets: Vec<TargetSpec> = Vec::new();
        for (i, t) in u.targets.iter().enumerate() {
            let tpath = format!("{path}.targets[{i}]");
            if t.weight == 0 || t.weight > 100 {
                faults.push(Fault::new(
                    format!("{tpath}.weight"),
                    format!("weight {} is not between 1 and 100", t.weight),
                ));
            }
            let Ok(host) = HeaderValue::from_str(&t.address) else {
                faults.push(Fault::new(
                    format!("{tpath}.address"),
                    "not a valid address",
                ));
                continue;
            };
            match resolve(&t.address) {
                Ok(addrs) => {
                    for addr in addrs {
                        if targets.iter().any(|x| x.addr == addr) {
                            faults.push(Fault::new(
                                format!("{tpath}.address"),
                                format!("target {addr} is listed twice"),
                            ));
                        } else {
                            targets.push(TargetSpec {
                                addr,
                                weight: t.weight,
                                host: host.clone(),
                            });
                        }
                    }
                }
                Err(e) => faults.push(Fault::new(format!("{tpath}.address"), e)),
            }
        }

        let hash_key = match (&u.hash_key, u.algorithm) {
            (Some(spec), config::Algorithm::ConsistentHash) => match HashKey::parse(spec) {
                Ok(k) => Some(k),
                Err(e) => {
                    faults.push(Fault::new(format!("{path}.hash_key"), e));
                    None
                }
            },
            (None, config::Algorithm::ConsistentHash) => {
                faults.push(Fault::new(
                format!("{path}.algorithm"),
                "consistent_hash needs a hash_key (header:NAME, cookie:NAME, query:NAME, path or client_ip)",
            ));
                None
            }
            (Some(_), _) => {
                faults.push(Fault::new(
                    format!("{path}.hash_key"),
                    "hash_key only applies to algorithm: consistent_hash",
                ));
                None
            }
            (None, _) => None,
        };

        if let Some(hc) = &u.health_check {
            health::check_config(&format!("{path}.health_check"), hc, faults);
        }
        let t = &u.timeouts;
        config::positive(t.connect, format!("{path}.timeouts.connect"), faults);
        config::positive(t.read, format!("{path}.timeouts.read"), faults);
        config::positive(t.write, format!("{path}.timeouts.write"), faults);
        if u.retries > 10 {
            faults.push(Fault::new(
                format!("{path}.retries"),
                format!("{} retries is more than the 10 allowed", u.retries),
            ));
        }
        if faults.len() > before {
            return None;
        }
        let tls = u
            .tls
            .as_ref()
            .and_then(|t| upstream_tls(&format!("{path}.tls"), t, faults));
        if u.max_h2_streams == 0 {
            faults.push(Fault::new(
                format!("{path}.max_h2_streams"),
                "must be at least 1",
            ));
        }
        // Checks name the first target (or the configured SNI) when they need a server name.
        let first_host = targets
            .first()
            .and_then(|t| t.host.to_str().ok())
            .map(crate::upstream::host_only)
            .unwrap_or_default()
            .to_string();
        let check = u.health_check.as_ref().map(|hc| {
            let tls = tls.as_ref().map(|t| (t, first_host.as_str()));
            (health::build(&u.name, hc, tls, u.http2), hc.interval.0)
        });
        if u.max_concurrent == Some(0) {
            faults.push(Fault::new(
                format!("{path}.max_concurrent"),
                "must be at least 1",
            ));
        }
        let outlier = u
            .outlier_detection
            .as_ref()
            .map(|o| OutlierPolicy::from_config(&format!("{path}.outlier_detection"), o, faults));
        let breaker = u
            .circuit_breaker
            .as_ref()
            .map(|b| BreakerPolicy::from_config(&format!("{path}.circuit_breaker"), b, faults));
        if u.retry_budget.percent > 1000 {
            faults.push(Fault::new(
                format!("{path}.retry_budget.percent"),
                "must be at most 1000",
            ));
        }
        let opts = PoolOptions {
            connect_timeout: t.connect.0,
            read_timeout: t.read.0,
            write_timeout: t.write.0,
            idle_timeout: t.idle.0,
            keepalive: u.keepalive,
            retries: u.retries,
            max_concurrent: u.max_concurrent,
            outlier,
            breaker,
            budget: (u.retry_budget.percent, u.retry_budget.min_per_second),
            tls,
            http2: u.http2,
            max_h2_streams: u.max_h2_streams,
            metrics,
        };
        let mut pool = Pool::new(&u.name, targets, u.algorithm, hash_key, check, opts);
        pool.source = Some(Source::of(u, metrics));
        Some(pool)
    }
}

fn upstream_tls(
    path: &str,
    t: &config::UpstreamTls,
    faults: &mut Vec<Fault>,
) -> Option<TlsOptions> {
    let before = faults.len();
    if let Some(sni) = &t.sni {
        if pingora_rustls::ServerName::try_from(sni.as_str()).is_err() {
            faults.push(Fault::new(
                format!("{path}.sni"),
                format!("{sni:?} is not a DNS name or IP address"),
            ));
        }
    }
    let ca = t.ca.as_ref().and_then(|f| {
        tls::upstream::ca_bundle(f)
            .map_err(|e| faults.push(Fault::new(format!("{path}.ca"), e)))
            .ok()
    });
    let client_cert = match (&t.client_cert, &t.client_key) {
        (Some(c), Some(k)) => tls::upstream::client_cert(c, k)
            .map_err(|(field, e)| faults.push(Fault::new(format!("{path}.{field}"), e)))
            .ok(),
        (None, None) => None,
        (Some(_), None) => {
            faults.push(Fault::new(
                format!("{path}.client_key"),
                "client_cert needs its client_key",
            ));
            None
        }
        (None, Some(_)) => {
            faults.push(Fault::new(
                format!("{path}.client_cert"),
                "client_key needs its client_cert",
            ));
            None
        }
    };
    (faults.len() == before).then(|| TlsOptions {
        sni: t.sni.clone(),
        ca,
        verify: t.verify,
        client_cert,
    })
}

/// What a pool is built from: its section, the contents of the files it names, the
/// addresses its targets resolve to now, and whether metrics are recorded. A reload keeps
/// the running pool (and the targets' health, ejections, breaker and budget) only when all
/// of it is equal, so a rotated CA or client certificate, or a name that resolves
/// elsewhere, takes effect.
#[derive(PartialEq)]
pub struct Source {
    section: Upstream,
    /// SHA-256 over the TLS files' contents and the resolved addresses.
    files_and_addresses: [u8; 32],
    metrics: bool,
}

impl Source {
    pub fn of(u: &Upstream, metrics: bool) -> Source {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        if let Some(t) = &u.tls {
            for file in [&t.ca, &t.client_cert, &t.client_key].into_iter().flatten() {
                // An unreadable file is reported by the build; here it only has to differ.
                h.update(std::fs::read(file).unwrap_or_default());
                h.update([0xff]);
            }
        }
        for t in &u.targets {
            if let Ok(addrs) = resolve(&t.address) {
                for a in addrs {
                    h.update(a.to_string().as_bytes());
                    h.update([0]);
                }
            }
        }
        Source {
            section: u.clone(),
            files_and_addresses: h.finalize().into(),
            metrics,
        }
    }
}

fn resolve(address: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = address.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    if address
        .rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        return Err(format!("{address:?} is not HOST:PORT"));
    }
    match address.to_socket_addrs() {
        Ok(addrs) => {
            let v: Vec<_> = addrs.collect();
            if v.is_empty() {
                Err(format!("{address:?} resolves to no address"))
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(format!("cannot resolve {address:?}: {e}")),
    }
}
