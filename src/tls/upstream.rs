//! TLS to upstreams: the authorities to trust and the client certificate, read at load
//! into the forms Pingora's connector takes.

use super::certs::{certify, read_certs, read_key};
use pingora_core::protocols::tls::CaType;
use pingora_core::utils::tls::{CertKey, WrappedX509};
use std::sync::Arc;

/// A CA bundle for a peer's `options.ca`.
pub fn ca_bundle(path: &str) -> Result<Arc<CaType>, String> {
    let certs = read_certs(path)?;
    // read_certs parsed every one, so wrapping (which parses again) cannot fail.
    let wrapped: Vec<WrappedX509> = certs
        .into_iter()
        .map(|c| WrappedX509::new(c.to_vec(), pingora_core::utils::tls::parse_x509))
        .collect();
    Ok(Arc::from(wrapped.into_boxed_slice()))
}

/// A client certificate chain and key for mutual TLS; the error names the field at fault.
pub fn client_cert(cert: &str, key: &str) -> Result<Arc<CertKey>, (&'static str, String)> {
    let chain = read_certs(cert).map_err(|e| ("client_cert", e))?;
    let private = read_key(key).map_err(|e| ("client_key", e))?;
    let key_der = private.secret_der().to_vec();
    let chain_der = chain.iter().map(|c| c.to_vec()).collect();
    certify(chain, private, (cert, key)).map_err(|e| ("client_key", e))?;
    Ok(Arc::new(CertKey::new(chain_der, key_der)))
}
