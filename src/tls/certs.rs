//! Reading PEM certificate chains and keys, and what a certificate says about itself.

use pingora_rustls::sign::CertifiedKey;
use pingora_rustls::{CertificateDer, CryptoProvider, PrivateKeyDer};
use rustls_pemfile::Item;
use std::sync::Arc;
use x509_parser::extensions::GeneralName;

/// A certificate chain with its key, ready to serve, and what it covers.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// DNS names of the leaf (its subject alternative names, else its common name),
    /// lower case; `*.example.com` for wildcards.
    pub names: Vec<String>,
    /// End of validity, seconds since the Unix epoch.
    pub not_after: i64,
    pub file: String,
}

fn read_pem(path: &str) -> Result<Vec<Item>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    rustls_pemfile::read_all(&mut text.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path:?} is not valid PEM: {e}"))
}

/// Every certificate in a PEM file, in file order; at least one.
pub fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = read_pem(path)?
        .into_iter()
        .filter_map(|item| match item {
            Item::X509Certificate(c) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!("{path:?} holds no certificate"));
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| format!("{path:?} holds a certificate that cannot be parsed: {e}"))?;
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn read_key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    read_pem(path)?
        .into_iter()
        .find_map(|item| match item {
            Item::Pkcs8Key(k) => Some(PrivateKeyDer::from(k)),
            Item::Pkcs1Key(k) => Some(PrivateKeyDer::from(k)),
            Item::Sec1Key(k) => Some(PrivateKeyDer::from(k)),
            _ => None,
        })
        .ok_or_else(|| format!("{path:?} holds no private key"))
}

/// The process's rustls crypto provider (ring, installed as Pingora does).
pub fn provider() -> Option<Arc<CryptoProvider>> {
    pingora_rustls::install_default_crypto_provider();
    CryptoProvider::get_default().cloned()
}

/// Load a chain and its key; the error names the field at fault (`cert` or `key`).
pub fn load_pair(cert: &str, key: &str) -> Result<LoadedCert, (&'static str, String)> {
    let chain = read_certs(cert).map_err(|e| ("cert", e))?;
    let private = read_key(key).map_err(|e| ("key", e))?;
    let (names, not_after) = describe(&chain[0]).map_err(|e| ("cert", e))?;
    let certified = certify(chain, private, (cert, key)).map_err(|e| ("key", e))?;
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_after,
        file: cert.to_string(),
    })
}

/// A chain and the key that must fit its first certificate; `files` name them in errors.
pub fn certify(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    files: (&str, &str),
) -> Result<CertifiedKey, String> {
    let provider = provider().ok_or("no TLS crypto provider")?;
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
        format!(
            "{:?} does not fit the certificate in {:?}: {e}",
            files.1, files.0
        )
    })
}

/// The DNS names and expiry of a certificate.
pub fn describe(der: &CertificateDer) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok((names, cert.validity().not_after.timestamp()))
}
