//! The certificates of one HTTPS listener, chosen by the name the client asks for (SNI).
//! The set is swapped whole when a reload brings new certificates, without a restart:
//! handshakes in progress finish with the set they started with.

use super::certs::LoadedCert;
use arc_swap::ArcSwap;
use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{ClientHello, ResolvesServerCert};
use std::collections::HashMap;
use std::sync::Arc;

/// The certificates of a listener, indexed by name.
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the part after `*.`: `*.example.com` serves `a.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For clients that send no name, or one no certificate has.
    default: Arc<CertifiedKey>,
    pub certs: Vec<LoadedCert>,
}

impl CertSet {
    /// Index `certs`; the first is the default. The first certificate naming a host wins.
    pub fn new(certs: Vec<LoadedCert>) -> Option<CertSet> {
        let default = certs.first()?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in &certs {
            for name in &c.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(rest) => (&mut wildcard, rest),
                    None => (&mut exact, name.as_str()),
                };
                map.entry(key.to_string()).or_insert_with(|| c.key.clone());
            }
        }
        Some(CertSet {
            exact,
            wildcard,
            default,
            certs,
        })
    }

    pub fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.');
        // Clients almost always send lower case: no copy then.
        let name: std::borrow::Cow<str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            name.to_ascii_lowercase().into()
        } else {
            name.into()
        };
        if let Some(k) = self.exact.get(name.as_ref()) {
            return k.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
            .clone()
    }
}

/// The live certificates of one listener.
pub struct SniResolver {
    set: ArcSwap<CertSet>,
}

impl SniResolver {
    pub fn new(set: Arc<CertSet>) -> Arc<SniResolver> {
        Arc::new(SniResolver {
            set: ArcSwap::new(set),
        })
    }

    /// Serve `set` from the next handshake on.
    pub fn replace(&self, set: Arc<CertSet>) {
        self.set.store(set);
    }

    pub fn current(&self) -> Arc<CertSet> {
        self.set.load_full()
    }
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SniResolver")
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.set.load().pick(hello.server_name()))
    }
}
