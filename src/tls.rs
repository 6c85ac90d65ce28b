//! Server-side TLS: rustls with TLS 1.2 and 1.3 only, ALPN `h2` then `http/1.1`, optional client-certificate
//! verification against a configured CA.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;

use crate::config::{ClientAuth, TlsConfig};

/// The TLS settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the certificate, key or versions.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA could not be used.
    #[error("client CA: {0}")]
    ClientCa(String),
}

/// Build the rustls server config for a listener.
pub(crate) fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some((cas, policy)) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in cas {
                roots.add(ca.clone())?;
            }
            let vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let vb = match policy {
                ClientAuth::Required => vb,
                ClientAuth::Optional => vb.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(
                vb.build().map_err(|e| TlsError::ClientCa(e.to_string()))?,
            )
        }
    };
    let mut config = builder.with_single_cert(cfg.cert_chain.clone(), cfg.key.clone_key())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
