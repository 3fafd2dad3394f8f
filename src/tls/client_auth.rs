//! Mutual TLS on a listener: clients are asked for a certificate from the configured
//! authorities, and a verified one's subject and alternative names are attached to the
//! connection for the `client_cert` provider. The verifier is swapped on reload, like the
//! certificates: a listener's `client_auth` can change without a restart.

use super::certs::read_certs;
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use pingora_rustls::{
    CertificateDer, ClientCertVerified, ClientCertVerifier, DigitallySignedStruct, RootCertStore,
    RusTlsError, SignatureScheme, UnixTime, WebPkiClientVerifier,
};
use std::any::Any;
use std::sync::Arc;
use x509_parser::extensions::GeneralName;

/// A verified client certificate's names, as the `client_cert` provider matches them.
#[derive(Debug)]
pub struct PeerCert {
    /// The subject, normalised by [`normalise_subject`].
    pub subject: String,
    /// DNS names, e-mail addresses and URIs.
    pub sans: Vec<String>,
}

/// `CN=a, O=b` and `cn=a,O=b` are the same subject: attribute types in upper case, no
/// space around the separators.
pub fn normalise_subject(s: &str) -> String {
    s.split(',')
        .map(|part| match part.split_once('=') {
            Some((k, v)) => format!("{}={}", k.trim().to_ascii_uppercase(), v.trim()),
            None => part.trim().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn peer_cert(der: &[u8]) -> Option<PeerCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let sans = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                GeneralName::RFC822Name(m) => Some(m.to_string()),
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(PeerCert {
        subject: normalise_subject(&cert.subject().to_string()),
        sans,
    })
}

/// Reads the names of a verified client certificate once, when the handshake completes.
pub struct PeerCertReader;

#[async_trait]
impl TlsAccept for PeerCertReader {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        // rustls completes a handshake only with a certificate its verifier accepted.
        let cert = peer_cert(tls.peer_certificate_der()?)?;
        Some(Arc::new(cert))
    }
}

/// The certificate the connection of `session` was verified with, if any.
pub fn of_session(session: &pingora_proxy::Session) -> Option<&PeerCert> {
    session
        .digest()?
        .ssl_digest
        .as_ref()?
        .extension
        .get::<PeerCert>()
}

/// A listener's client certificate verifier: none (no certificate is asked for) or the
/// one its current config makes.
#[derive(Debug, Default)]
pub struct ClientVerifier {
    current: ArcSwapOption<Arc<dyn ClientCertVerifier>>,
}

impl ClientVerifier {
    pub fn new() -> Arc<ClientVerifier> {
        Arc::new(ClientVerifier::default())
    }

    pub fn set(&self, v: Option<Arc<dyn ClientCertVerifier>>) {
        self.current.store(v.map(Arc::new));
    }
}

/// A verifier for certificates issued by the authorities in `ca_file`.
pub fn build_verifier(
    ca_file: &str,
    required: bool,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca_file)? {
        roots
            .add(c)
            .map_err(|e| format!("{ca_file:?}: not a usable authority: {e}"))?;
    }
    let provider = super::certs::provider().ok_or("no TLS crypto provider")?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| format!("{ca_file:?}: {e}"))
}

impl ClientVerifier {
    /// The verifier in use; none means no certificate is asked for, so none can arrive.
    fn installed(&self) -> Result<Arc<dyn ClientCertVerifier>, RusTlsError> {
        self.current
            .load_full()
            .map(|v| Arc::clone(&*v))
            .ok_or_else(|| RusTlsError::General("client certificates are not asked for".into()))
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.current.load().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|v| v.client_auth_mandatory())
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // Hints are optional (RFC 8446 §4.2.4); a swapped verifier cannot lend its own.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, RusTlsError> {
        self.installed()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<pingora_rustls::HandshakeSignatureValid, RusTlsError> {
        self.installed()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<pingora_rustls::HandshakeSignatureValid, RusTlsError> {
        self.installed()?.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        match self.current.load().as_ref() {
            Some(v) => v.supported_verify_schemes(),
            None => super::certs::provider()
                .map(|p| p.signature_verification_algorithms.supported_schemes())
                .unwrap_or_default(),
        }
    }
}
