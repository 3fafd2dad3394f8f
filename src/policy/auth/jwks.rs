//! Verification keys: static ones from the config and JSON Web Key Sets, from a file or from
//! a URL that is fetched again in the background and when a token names an unknown `kid`.

use super::key_checks;
use crate::outbound::{Cap, Endpoint};
use arc_swap::ArcSwap;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Responses larger than this are not a key set.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// A key set or discovery document must arrive within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

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

/// What a provider's remote keys are made from: its `keys` section, its discovery settings
/// and the digest of the CA file they name. A reload that leaves them unchanged keeps the
/// running key set (and its refresh task); a rotated CA file counts as a change.
#[derive(PartialEq)]
pub struct KeysSource {
    section: crate::config::JwtKeys,
    discovery: Option<String>,
    issuer: Option<String>,
    ca_digest: Option<[u8; 32]>,
}

impl KeysSource {
    pub fn of(k: &crate::config::JwtKeys, discovery: Option<&str>, issuer: Option<&str>) -> Self {
        use sha2::Digest;
        KeysSource {
            section: k.clone(),
            discovery: discovery.map(str::to_string),
            issuer: issuer.map(str::to_string),
            ca_digest: k
                .jwks_ca_file
                .as_ref()
                .map(|f| sha2::Sha256::digest(std::fs::read(f).unwrap_or_default()).into()),
        }
    }
}

/// OpenID Connect discovery: where the provider document is, the issuer it must name, and
/// what the last good document said.
struct Discovery {
    endpoint: Endpoint,
    issuer: String,
    ca_file: Option<String>,
    /// The key set's endpoint from the last good document.
    jwks: ArcSwapOption<Endpoint>,
}

/// The discovery document's members the gateway uses (OpenID Connect Discovery 1.0 §3).
#[derive(serde::Deserialize)]
struct ProviderMetadata {
    issuer: String,
    jwks_uri: String,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
}

/// A key set served at an http or https URL, given or found by discovery. HTTPS
/// certificates are verified, with the system's CAs or those of a configured CA file.
pub struct RemoteKeys {
    pub provider: String,
    pub source: KeysSource,
    /// The configured key set URL (without discovery).
    jwks: Option<Endpoint>,
    discovery: Option<Discovery>,
    current: ArcSwap<KeySet>,
    /// Algorithms the discovery document advertises, as a bit per [`alg_bit`]; all
    /// without discovery.
    advertised: AtomicU32,
    /// Bumped whenever a new set is installed, so cached verifications can be retired.
    generation: AtomicU64,
    /// When the last fetch started; held while fetching, so fetches never overlap.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    refresh_interval: Duration,
    min_refetch_interval: Duration,
}

pub use crate::outbound::check_ca_file;

/// A bit per algorithm, for the advertised set.
pub fn alg_bit(alg: Algorithm) -> u32 {
    1 << (alg as u32 % 32)
}

/// Where the keys come from.
pub enum KeysAt {
    Url(Endpoint),
    /// The discovery document's URL and the issuer it must name.
    Discovery(Endpoint, String),
}

impl RemoteKeys {
    pub fn new(
        provider: &str,
        at: KeysAt,
        ca_file: Option<String>,
        refresh: Duration,
        min_refetch: Duration,
        source: KeysSource,
    ) -> Self {
        let (jwks, discovery) = match at {
            KeysAt::Url(e) => (Some(e), None),
            KeysAt::Discovery(endpoint, issuer) => (
                None,
                Some(Discovery {
                    endpoint,
                    issuer,
                    ca_file,
                    jwks: ArcSwapOption::empty(),
                }),
            ),
        };
        RemoteKeys {
            provider: provider.to_string(),
            source,
            advertised: AtomicU32::new(if discovery.is_some() { 0 } else { u32::MAX }),
            jwks,
            discovery,
            current: ArcSwap::from_pointee(KeySet::default()),
            generation: AtomicU64::new(0),
            last_fetch: tokio::sync::Mutex::new(None),
            refresh_interval: refresh,
            min_refetch_interval: min_refetch,
        }
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the provider's discovery document (if any) advertises `alg`.
    pub fn advertises(&self, alg: Algorithm) -> bool {
        self.advertised.load(Ordering::Acquire) & alg_bit(alg) != 0
    }

    async fn get_json(&self, endpoint: &Endpoint) -> Result<Bytes, String> {
        let mut req = endpoint.request("GET", endpoint.path_and_query())?;
        req.insert_header("accept", "application/json")
            .map_err(|e| e.to_string())?;
        req.insert_header("user-agent", "portico")
            .map_err(|e| e.to_string())?;
        let reply = endpoint
            .call(req, None, (MAX_JWKS_BYTES, Cap::Fail), FETCH_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        match reply.status() {
            200 => Ok(reply.body),
            status => Err(format!("answered {status}")),
        }
    }

    /// Fetch the discovery document; on success, remember its key set URL and algorithms.
    async fn discover(&self, d: &Discovery) -> Result<(), String> {
        let body = self.get_json(&d.endpoint).await?;
        let meta: ProviderMetadata = serde_json::from_slice(&body)
            .map_err(|e| format!("not a provider metadata document: {e}"))?;
        // OpenID Connect Discovery §4.3: exactly the configured issuer, or the document
        // (and the keys it points to) could be anyone's.
        if meta.issuer != d.issuer {
            return Err(format!(
                "the document names issuer {:?}, not {:?}",
                meta.issuer, d.issuer
            ));
        }
        let same_scheme_or_better =
            meta.jwks_uri.starts_with("https://") || d.endpoint.url.scheme_str() == Some("http");
        if !same_scheme_or_better {
            return Err("its jwks_uri is not https".into());
        }
        let mut advertised = 0;
        for a in &meta.id_token_signing_alg_values_supported {
            if let Ok(alg) = a.parse::<Algorithm>() {
                advertised |= alg_bit(alg);
            }
        }
        let unchanged = d
            .jwks
            .load()
            .as_ref()
            .is_some_and(|e| e.url.to_string() == meta.jwks_uri);
        if !unchanged {
            let e = Endpoint::parse(&meta.jwks_uri, d.ca_file.clone(), 2)?;
            d.jwks.store(Some(Arc::new(e)));
        }
        // A document that lists no algorithm leaves the choice to `algorithms`.
        self.advertised.store(
            if advertised == 0 {
                u32::MAX
            } else {
                advertised
            },
            Ordering::Release,
        );
        Ok(())
    }

    async fn download(&self) -> Result<Bytes, String> {
        if let Some(e) = &self.jwks {
            return self.get_json(e).await;
        }
        let Some(d) = &self.discovery else {
            return Err("no key set URL".into());
        };
        if let Err(why) = self.discover(d).await {
            log::warn!(
                "jwt provider {}: discovery at {} failed, keeping the last good document: {why}",
                self.provider,
                d.endpoint.url
            );
            crate::observe::metrics::auth_call(&self.provider, "discovery_failed");
        }
        let Some(jwks) = d.jwks.load_full() else {
            return Err("no discovery document yet".into());
        };
        self.get_json(&jwks).await
    }

    fn url(&self) -> String {
        match (&self.jwks, &self.discovery) {
            (Some(e), _) => e.url.to_string(),
            (None, Some(d)) => d.endpoint.url.to_string(),
            (None, None) => String::new(),
        }
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
                        self.url()
                    );
                }
                crate::observe::metrics::jwks_keys_refused(&self.provider, refused.len());
                log::debug!(
                    "jwt provider {}: {} keys from {}",
                    self.provider,
                    set.keys.len(),
                    self.url()
                );
                self.current.store(Arc::new(set));
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => log::warn!(
                "jwt provider {}: fetching keys from {} failed, keeping the last good set: {e}",
                self.provider,
                self.url()
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
