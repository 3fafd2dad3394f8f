//! TLS for the end-to-end tests: a throwaway certificate authority (rcgen) writing PEM
//! files, and HTTPS / HTTP/2 clients that report what the handshake chose.

use super::rt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// A certificate authority that signs certificates for the tests, as PEM files in a
/// directory of its own (removed with it).
pub struct TestCa {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub cert_file: PathBuf,
    dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_file = dir.path().join(format!("{name}-ca.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        TestCa {
            ca: rcgen::Issuer::new(params, key),
            cert_file,
            dir,
        }
    }

    pub fn ca_path(&self) -> String {
        self.cert_file.display().to_string()
    }

    /// A certificate for `names` (DNS names or IP addresses), written as `FILE.pem` and
    /// `FILE.key`; returns both paths.
    pub fn issue(&self, file: &str, names: &[&str]) -> (String, String) {
        self.issue_with(file, names, |_| {})
    }

    /// A client certificate with common name `cn` and alternative names `sans` (DNS
    /// names, or URIs when they contain `://`), written as `FILE.pem` and `FILE.key`.
    pub fn issue_client(&self, file: &str, cn: &str, sans: &[&str]) -> (String, String) {
        let sans: Vec<rcgen::SanType> = sans
            .iter()
            .map(|s| {
                if s.contains("://") {
                    rcgen::SanType::URI(s.to_string().try_into().unwrap())
                } else {
                    rcgen::SanType::DnsName(s.to_string().try_into().unwrap())
                }
            })
            .collect();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Acme");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{file}.pem")),
            self.dir.path().join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }

    /// A certificate that expired at the start of 2021.
    pub fn issue_expired(&self, file: &str, names: &[&str]) -> (String, String) {
        self.issue_with(file, names, |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
    }

    fn issue_with(
        &self,
        file: &str,
        names: &[&str],
        adjust: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        adjust(&mut params);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, file);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{file}.pem")),
            self.dir.path().join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }
}

/// What a TLS handshake with the gateway chose.
#[derive(Debug)]
pub struct Handshake {
    /// DNS names of the certificate the server presented.
    pub names: Vec<String>,
    pub alpn: Option<String>,
    pub version: String,
}

/// A server config for PEM files offering `alpn`; with `client_ca`, clients must present
/// a certificate that authority signed.
pub fn server_config(
    cert: &str,
    key: &str,
    alpn: &[&str],
    client_ca: Option<&str>,
) -> Arc<rustls::ServerConfig> {
    let certs = rustls_pemfile::certs(&mut &std::fs::read(cert).unwrap()[..])
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut &std::fs::read(key).unwrap()[..])
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut &std::fs::read(ca).unwrap()[..]) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

fn client_config(ca: &str, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
    client_config_with(ca, alpn, None)
}

/// A client that presents `cert` (certificate and key PEM files) when asked for one.
fn client_config_with(
    ca: &str,
    alpn: &[&str],
    cert: Option<(&str, &str)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &std::fs::read(ca).unwrap()[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        None => config.with_no_client_auth(),
        Some((c, k)) => {
            let chain = rustls_pemfile::certs(&mut &std::fs::read(c).unwrap()[..])
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls_pemfile::private_key(&mut &std::fs::read(k).unwrap()[..])
                .unwrap()
                .unwrap();
            config.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(
    addr: SocketAddr,
    sni: &str,
    ca: &str,
    alpn: &[&str],
) -> Result<(TlsStream, Handshake), String> {
    connect_with(addr, sni, ca, alpn, None).await
}

async fn connect_with(
    addr: SocketAddr,
    sni: &str,
    ca: &str,
    alpn: &[&str],
    cert: Option<(&str, &str)>,
) -> Result<(TlsStream, Handshake), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(client_config_with(ca, alpn, cert))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = stream.get_ref();
    let names = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|leaf| {
            let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
            cert.subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .map(|n| match n {
                            x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                            other => format!("{other}"),
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let handshake = Handshake {
        names,
        alpn: conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).to_string()),
        version: format!("{:?}", conn.protocol_version()),
    };
    Ok((stream, handshake))
}

/// Handshake only: what the server chose for `sni` and the offered ALPN protocols.
pub fn handshake(
    addr: SocketAddr,
    sni: &str,
    ca: &str,
    alpn: &[&str],
) -> Result<Handshake, String> {
    rt().block_on(async { connect(addr, sni, ca, alpn).await.map(|(_, h)| h) })
}

/// A response as the tests look at it.
#[derive(Debug, Default)]
pub struct Reply {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

/// One HTTP/1.1 request over TLS (the connection is closed after it).
pub fn https1(
    addr: SocketAddr,
    sni: &str,
    ca: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    https1_as(addr, sni, ca, None, method, path, headers)
}

/// Like [`https1`], presenting a client certificate (certificate and key files) when the
/// gateway asks for one.
pub fn https1_as(
    addr: SocketAddr,
    sni: &str,
    ca: &str,
    cert: Option<(&str, &str)>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    rt().block_on(async {
        let (mut s, _) = connect_with(addr, sni, ca, &["http/1.1"], cert).await?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        // A close_notify may be missing; what arrived is what counts.
        let _ = s.read_to_end(&mut raw).await;
        parse_http1(&raw)
    })
}

/// Parse a complete HTTP/1.1 response (content-length, chunked or until close).
pub fn parse_http1(raw: &[u8]) -> Result<Reply, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no response head in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        let mut body = Vec::new();
        while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&rest[..i]).trim(), 16).unwrap_or(0);
            if size == 0 || rest.len() < i + 2 + size {
                break;
            }
            body.extend_from_slice(&rest[i + 2..i + 2 + size]);
            rest.drain(..i + 2 + size + 2);
        }
        body
    } else {
        rest
    };
    Ok(Reply {
        status,
        headers,
        body,
        trailers: Vec::new(),
    })
}

/// An HTTP/2 connection (over TLS with ALPN h2, or cleartext prior knowledge) that sends
/// requests as streams of one connection.
pub struct H2 {
    send: h2::client::SendRequest<bytes::Bytes>,
    pub handshake: Option<Handshake>,
}

impl H2 {
    pub fn tls(addr: SocketAddr, sni: &str, ca: &str) -> Result<H2, String> {
        rt().block_on(async {
            let (stream, hs) = connect(addr, sni, ca, &["h2"]).await?;
            if hs.alpn.as_deref() != Some("h2") {
                return Err(format!("ALPN chose {:?}", hs.alpn));
            }
            H2::over(stream, Some(hs)).await
        })
    }

    pub fn cleartext(addr: SocketAddr) -> Result<H2, String> {
        rt().block_on(async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            H2::over(tcp, None).await
        })
    }

    async fn over<S>(io: S, handshake: Option<Handshake>) -> Result<H2, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = h2::client::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H2 { send, handshake })
    }

    /// One request; `authority` becomes `:authority` (the Host).
    pub fn request(
        &mut self,
        method: &str,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply, String> {
        let mut send = self.send.clone();
        let body = bytes::Bytes::copy_from_slice(body);
        rt().block_on(async move {
            send = send.ready().await.map_err(|e| e.to_string())?;
            let mut req = http::Request::builder()
                .method(method)
                .uri(format!("https://{authority}{path}"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(()).map_err(|e| e.to_string())?;
            let (resp, mut stream) = send
                .send_request(req, body.is_empty())
                .map_err(|e| e.to_string())?;
            if !body.is_empty() {
                stream.send_data(body, true).map_err(|e| e.to_string())?;
            }
            let resp = resp.await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let headers = pairs(resp.headers());
            let mut recv = resp.into_body();
            let mut body = Vec::new();
            while let Some(chunk) = recv.data().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                let _ = recv.flow_control().release_capacity(chunk.len());
                body.extend_from_slice(&chunk);
            }
            let trailers = recv
                .trailers()
                .await
                .map_err(|e| e.to_string())?
                .map(|t| pairs(&t))
                .unwrap_or_default();
            Ok(Reply {
                status,
                headers,
                body,
                trailers,
            })
        })
    }
}

fn pairs(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}
