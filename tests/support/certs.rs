//! Per-test certificates (rcgen) written to a temp dir, and real rustls clients that trust them (HTTP/1.1 and HTTP/2).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A dev CA with a localhost server cert, written to disk for config files.
pub struct TestCerts {
    /// Directory holding the files.
    pub dir: super::Scratch,
    /// CA certificate file.
    pub ca: super::Scratch,
    /// Server certificate file.
    pub cert: super::Scratch,
    /// Server key file.
    pub key: super::Scratch,
    /// The generated material.
    pub pem: credgate::dev_certs::DevCerts,
}

/// Generate and write certs for localhost/127.0.0.1.
pub fn make() -> TestCerts {
    let dir = super::temp_dir("certs");
    let pem = credgate::dev_certs::generate("test CA", &["localhost", "127.0.0.1"]).expect("certs");
    let ca = dir.join("ca.crt");
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&ca, &pem.ca_cert_pem).expect("write");
    std::fs::write(&cert, &pem.cert_pem).expect("write");
    std::fs::write(&key, &pem.key_pem).expect("write");
    TestCerts {
        dir,
        ca,
        cert,
        key,
        pem,
    }
}

/// Test client type (full bodies).
pub type TestClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Which HTTP versions the client offers via ALPN.
#[derive(Clone, Copy, Debug)]
pub enum Alpn {
    /// HTTP/1.1 only.
    H1,
    /// HTTP/2 only (and the client speaks only h2).
    H2,
}

/// A rustls client config trusting `ca_pem`, optionally presenting a client certificate.
pub fn client_tls(ca_pem: &str, client_cert: Option<(&str, &str)>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("add ca");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    match client_cert {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("cert");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            b.with_client_auth_cert(chain, key).expect("client auth")
        }
    }
}

/// A pooled HTTPS client trusting `ca_pem`.
pub fn client(ca_pem: &str, alpn: Alpn) -> TestClient {
    client_with(client_tls(ca_pem, None), alpn)
}

/// A pooled HTTPS client from a rustls config.
pub fn client_with(tls: rustls::ClientConfig, alpn: Alpn) -> TestClient {
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let conn = match alpn {
        Alpn::H1 => b.enable_http1().build(),
        Alpn::H2 => b.enable_http2().build(),
    };
    let mut cb = Client::builder(TokioExecutor::new());
    if matches!(alpn, Alpn::H2) {
        cb.http2_only(true);
    }
    cb.build(conn)
}

/// A rustls server config for `certs`' localhost leaf, offering `alpn` (e.g. `[b"h2", b"http/1.1"]`).
pub fn server_tls(certs: &TestCerts, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(certs.pem.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_slice(certs.pem.key_pem.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server cert");
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}
