//! Verification keys: static ones from the config and JSON Web Key Sets, from a file or from
//! a URL that is fetched again in the background and when a token names an unknown `kid`.

use super::key_checks;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::ConnectorOptions;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Responses larger than this are not a key set.
const MAX_JWKS_BYTES: usize = 1 << 20;

pub struct KeyEntry {
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// The only algorithm this key may verify, when its JWK says so.
    pub alg: Option<Algorithm>,
}

#[derive(Default)]
pub struct KeySet {
    pub keys: Vec<KeyEntry>,
}

impl KeySet {
    /// Keys that may verify a token with this `kid` and `alg`: same family (no HMAC/RSA
    /// confusion), same `kid` when the token names one, and the JWK's own `alg` if given.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a KeyEntry> + 'a {
        self.keys.iter().filter(move |k| {
            k.key.family() == alg.family()
                && k.alg.is_none_or(|a| a == alg)
                // A key without a kid (a secret, a PEM file) may verify a token naming any:
                // identity providers put a kid in every token.
                && match (kid, k.kid.as_deref()) {
                    (Some(kid), Some(own)) => own == kid,
                    _ => true,
                }
        })
    }

    /// Parse a JWKS document. Keys for encryption or of unsupported types are skipped;
    /// keys that must not verify (see [`key_checks::check_jwk`]) and a second key with the
    /// same `kid` are refused, each with a reason. A document without a single usable key
    /// is an error.
    pub fn from_jwks(json: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| format!("not a JWK set: {e}"))?;
        let mut keys: Vec<KeyEntry> = Vec::new();
        let mut refused = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let name = match &jwk.common.key_id {
                Some(kid) => format!("key {kid:?}"),
                None => format!("key #{i}"),
            };
            if let Err(why) = key_checks::check_jwk(jwk) {
                refused.push(format!("{name}: {why}"));
                continue;
            }
            if let Some(kid) = &jwk.common.key_id {
                if keys.iter().any(|k| k.kid.as_deref() == Some(kid)) {
                    refused.push(format!("{name}: a second key with this kid"));
                    continue;
                }
            }
            let alg = match &jwk.common.key_algorithm {
                None => None,
                Some(a) => match format!("{a:?}").parse::<Algorithm>() {
                    Ok(alg) => Some(alg),
                    Err(_) => continue,
                },
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            keys.push(KeyEntry {
                kid: jwk.common.key_id.clone(),
                key,
                alg,
            });
        }
        if keys.is_empty() {
            let why = refused.join("; ");
            return Err(format!("the JWK set has no usable signing key {why}")
                .trim()
                .into());
        }
        Ok((KeySet { keys }, refused))
    }

    /// A public key PEM file (RSA, EC or Ed25519), without a `kid`.
    pub fn add_pem(&mut self, pem: &[u8]) -> Result<(), String> {
        if key_checks::is_private_pem(pem) {
            return Err("holds a private key, which cannot verify; give the public key".into());
        }
        key_checks::check_rsa_pem(pem)?;
        let key = DecodingKey::from_rsa_pem(pem)
            .or_else(|_| DecodingKey::from_ec_pem(pem))
            .or_else(|_| DecodingKey::from_ed_pem(pem))
            .map_err(|_| "not an RSA, EC or Ed25519 public key in PEM form".to_string())?;
        self.keys.push(KeyEntry {
            kid: None,
            key,
            alg: None,
        });
        Ok(())
    }
}

/// A provider's `keys` section and the digest of the CA file it names: a rotated CA file
/// counts as a change, like a changed section.
#[derive(PartialEq)]
pub struct KeysSource {
    section: crate::config::JwtKeys,
    ca_digest: Option<[u8; 32]>,
}

impl KeysSource {
    pub fn of(k: &crate::config::JwtKeys) -> KeysSource {
        use sha2::Digest;
        KeysSource {
            section: k.clone(),
            ca_digest: k
                .jwks_ca_file
                .as_ref()
                .map(|f| sha2::Sha256::digest(std::fs::read(f).unwrap_or_default()).into()),
        }
    }
}

/// A key set served at an http or https URL. HTTPS certificates are verified, with the
/// system's CAs or those of a configured CA file.
pub struct RemoteKeys {
    pub provider: String,
    /// What the key set was made from: a reload that leaves it unchanged keeps this key
    /// set (and its refresh task) instead of starting empty.
    pub source: KeysSource,
    url: http::Uri,
    current: ArcSwap<KeySet>,
    /// Bumped whenever a new set is installed, so cached verifications can be retired.
    generation: AtomicU64,
    /// When the last fetch started; held while fetching, so fetches never overlap.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    refresh_interval: Duration,
    min_refetch_interval: Duration,
    connector: Connector,
}

/// Check a CA file the way the TLS connector will load it (the connector panics on a bad one).
pub fn check_ca_file(path: &str) -> Result<(), String> {
    let mut store = pingora_core::tls::RootCertStore::empty();
    pingora_core::tls::load_ca_file_into_store(path, &mut store)
        .map_err(|e| format!("cannot use {path} as a CA file: {e}"))
}

impl RemoteKeys {
    /// `url` must be http or https with a host, and `ca_file` checked by [`check_ca_file`].
    pub fn new(
        provider: &str,
        url: http::Uri,
        ca_file: Option<String>,
        refresh: Duration,
        min_refetch: Duration,
        source: KeysSource,
    ) -> Self {
        let mut options = ConnectorOptions::new(4);
        options.ca_file = ca_file;
        RemoteKeys {
            provider: provider.to_string(),
            source,
            url,
            current: ArcSwap::from_pointee(KeySet::default()),
            generation: AtomicU64::new(0),
            last_fetch: tokio::sync::Mutex::new(None),
            refresh_interval: refresh,
            min_refetch_interval: min_refetch,
            connector: Connector::new(Some(options)),
        }
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    async fn download(&self) -> Result<Vec<u8>, String> {
        let host = self.url.host().ok_or("the URL has no host")?;
        let tls = self.url.scheme_str() == Some("https");
        let port = self.url.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        let sni = if tls { host.to_string() } else { String::new() };
        let mut peer = HttpPeer::new(addr, tls, sni);
        let timeout = Some(Duration::from_secs(5));
        peer.options.connection_timeout = timeout;
        peer.options.read_timeout = timeout;
        peer.options.write_timeout = timeout;
        let path = self.url.path_and_query().map_or("/", |p| p.as_str());
        let mut req =
            RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
        let authority = self.url.authority().map_or(host, |a| a.as_str());
        req.insert_header("host", authority)
            .map_err(|e| e.to_string())?;
        req.insert_header("accept", "application/json")
            .map_err(|e| e.to_string())?;
        req.insert_header("user-agent", "portico-jwks")
            .map_err(|e| e.to_string())?;
        let (mut session, _) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| e.to_string())?;
        session.set_read_timeout(timeout);
        session.set_write_timeout(timeout);
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| e.to_string())?;
        session
            .finish_request_body()
            .await
            .map_err(|e| e.to_string())?;
        session
            .read_response_header()
            .await
            .map_err(|e| e.to_string())?;
        let status = session.response_header().map_or(0, |r| r.status.as_u16());
        if status != 200 {
            return Err(format!("answered {status}"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| e.to_string())?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("the key set is larger than 1 MiB".into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Fetch and install the key set; on any failure the last good set stays in use.
    async fn fetch(&self, last: &mut Option<Instant>) {
        *last = Some(Instant::now());
        match self.download().await.and_then(|b| KeySet::from_jwks(&b)) {
            Ok((set, refused)) => {
                for why in &refused {
                    log::warn!(
                        "jwt provider {}: key from {} refused: {why}",
                        self.provider,
                        self.url
                    );
                }
                crate::observe::metrics::jwks_keys_refused(&self.provider, refused.len());
                log::debug!(
                    "jwt provider {}: {} keys from {}",
                    self.provider,
                    set.keys.len(),
                    self.url
                );
                self.current.store(Arc::new(set));
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => log::warn!(
                "jwt provider {}: fetching keys from {} failed, keeping the last good set: {e}",
                self.provider,
                self.url
            ),
        }
    }

    /// A token named a `kid` we do not have: fetch again unless a fetch happened within
    /// `min_refetch_interval`. Concurrent callers wait for one fetch instead of each making one.
    pub async fn refetch_for_unknown_kid(&self) {
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refetch_interval) {
            return;
        }
        self.fetch(&mut last).await;
    }

    async fn refresh(&self) {
        let mut last = self.last_fetch.lock().await;
        self.fetch(&mut last).await;
    }
}

/// Keep `keys` fresh on the current runtime until its config is dropped.
pub fn spawn_refresh(keys: &Arc<RemoteKeys>) {
    crate::periodic::spawn_while_alive(keys, |keys| async move {
        keys.refresh().await;
        keys.refresh_interval
    });
}
