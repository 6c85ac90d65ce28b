//! The demo's dev issuer: a freshly generated P-256 key served as a JWKS on loopback, the `[[issuers]]` TOML that
//! trusts it, and a caller token it signed. Sandbox only: the key lives in memory for the demo's lifetime.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::Response;
use http::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::net::TcpListener;

use crate::body;

/// The demo issuer's `iss`.
pub const ISSUER: &str = "https://dev-issuer.credgate.invalid/";
/// The audience demo tokens carry.
pub const AUDIENCE: &str = "credgate-demo";
/// The scope the demo route requires.
pub const SCOPE: &str = "echo:read";
const KID: &str = "demo-1";

/// A running dev issuer.
pub struct DevIssuer {
    /// Where its JWKS is served.
    pub addr: SocketAddr,
    /// The `[[issuers]]` TOML trusting it.
    pub issuer_toml: String,
    /// A caller token it signed, valid for an hour.
    pub token: String,
    key: EncodingKey,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl DevIssuer {
    /// Another caller token for subject `sub`, valid for an hour: for callers that need many distinct tokens.
    pub fn mint(&self, sub: &str) -> Result<String, DevIssuerError> {
        mint(&self.key, sub)
    }
}

fn mint(key: &EncodingKey, sub: &str) -> Result<String, DevIssuerError> {
    let now = crate::unix_time::now_secs();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(KID.into());
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": SCOPE,
        "iat": now, "exp": now + 3600,
    });
    jsonwebtoken::encode(&header, &claims, key).map_err(|e| DevIssuerError::Key(e.to_string()))
}

/// Why the dev issuer could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    /// Key generation or signing failed.
    #[error("dev issuer key: {0}")]
    Key(String),
    /// The JWKS listener could not bind.
    #[error("dev issuer listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Generate a key, serve its JWKS on 127.0.0.1 and mint a caller token.
pub async fn start() -> Result<DevIssuer, DevIssuerError> {
    let kp = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .map_err(|e| DevIssuerError::Key(e.to_string()))?;
    let pkcs8 = kp
        .to_pkcs8v1()
        .map_err(|e| DevIssuerError::Key(e.to_string()))?;
    let key = EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)
        .map_err(|e| DevIssuerError::Key(e.to_string()))?;
    jwk.common.key_id = Some(KID.into());
    let jwks = serde_json::to_string(&JwkSet { keys: vec![jwk] })
        .map_err(|e| DevIssuerError::Key(e.to_string()))?;

    let token = mint(&key, "demo-service")?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let jwks = jwks.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let mut rsp = Response::new(body::full(jwks.clone()));
                    rsp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    async move { Ok::<_, Infallible>(rsp) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let issuer_toml = format!(
        r#"[[issuers]]
name = "demo"
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["ES256"]
jwks_url = "http://{addr}/jwks.json"
"#
    );
    Ok(DevIssuer {
        addr,
        issuer_toml,
        token,
        key,
    })
}
