//! The outbound HTTP client: hyper-util's pooled legacy client over rustls (webpki roots plus optional extra CAs).
//! The proxy, JWKS fetches, token endpoints and vendor flows all use it; there is no second HTTP stack.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;

use crate::body::Body;

/// The pooled outbound client.
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// The client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// An extra CA certificate was rejected.
    #[error("extra CA certificate rejected: {0}")]
    BadCa(#[source] rustls::Error),
    /// rustls refused the configuration.
    #[error("TLS client configuration: {0}")]
    Tls(#[source] rustls::Error),
    /// The upstream's scheme and authority do not make a URI or a `Host` value.
    #[error("upstream address cannot be used as URI and Host")]
    Target,
}

/// The TLS client settings of every outbound connection but Redis's (upstreams, control plane, PostgreSQL):
/// aws-lc-rs, the webpki roots plus `extra_ca`, no client certificate.
pub(crate) fn tls_client_config(
    extra_ca: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, ClientBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for ca in extra_ca {
        roots.add(ca.clone()).map_err(ClientBuildError::BadCa)?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ClientBuildError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Build a client trusting the webpki roots plus `extra_ca`, with `connect_timeout` on TCP connects.
pub fn build(
    extra_ca: &[CertificateDer<'static>],
    connect_timeout: Duration,
) -> Result<HttpClient, ClientBuildError> {
    let tls = tls_client_config(extra_ca)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(https))
}

/// A small response read in full, for control-plane calls (JWKS, token endpoints, vendor flows).
#[derive(Debug)]
pub(crate) struct Fetched {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// Why a control-plane call failed. Carries no request or response content, so it is safe to log.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connect or send failed.
    #[error("request failed: {0}")]
    Send(#[source] hyper_util::client::legacy::Error),
    /// No complete answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The body was larger than allowed, or broke off.
    #[error("response body unreadable or over {0} bytes")]
    Body(usize),
}

/// Send `req` and read the whole response (at most `max_body` bytes), all within `timeout`.
pub(crate) async fn fetch(
    client: &HttpClient,
    req: Request<Body>,
    timeout: Duration,
    max_body: usize,
) -> Result<Fetched, FetchError> {
    let work = async {
        let rsp = client.request(req).await.map_err(FetchError::Send)?;
        let (parts, body) = rsp.into_parts();
        let body = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|_| FetchError::Body(max_body))?
            .to_bytes();
        Ok(Fetched {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}
