//! Upstream credentials: what the gateway attaches to a forwarded request. Each kind implements [`Credential`]; the
//! pipeline only asks for the current [`Attachment`] and reports upstream rejections. Values are secret: they are
//! marked sensitive in headers and never logged.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use http::{HeaderName, HeaderValue, StatusCode};
use secrecy::ExposeSecret;

use crate::config::CredentialConfig;
use crate::config::credentials::StaticConfig;
use crate::error::Problem;

/// Headers to add to one upstream request, shared cheaply between requests.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// Header name and sensitive value pairs.
    pub headers: Arc<[(HeaderName, HeaderValue)]>,
    /// Which token generation these headers carry (0 for static credentials).
    pub generation: u64,
}

/// No valid credential can be attached right now.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The token endpoint failed and no unexpired token is left.
    #[error("credential {credential} has no valid token")]
    Unavailable {
        /// Credential name.
        credential: String,
    },
}

/// Map a credential error to the caller's problem.
pub fn problem(e: &CredentialError) -> Problem {
    match e {
        CredentialError::Unavailable { .. } => Problem {
            retry_after: Some(5),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_credentials_unavailable",
                "Upstream credentials unavailable",
            )
        },
    }
}

/// One kind of upstream credential: async, fallible, and cheap on the hot path once warm.
pub trait Credential: Send + Sync + fmt::Debug {
    /// The header names this credential sets; they are removed from the caller's request before attaching.
    fn header_names(&self) -> &[HeaderName];

    /// The headers to attach now.
    fn attach(&self) -> BoxFuture<'_, Result<Attachment, CredentialError>>;

    /// The upstream rejected `used` (e.g. 401). Returns true when a retry with a fresh attachment may succeed.
    fn rejected(&self, used: &Attachment) -> bool {
        let _ = used;
        false
    }
}

/// Fixed secret headers, rendered once at startup.
#[derive(Debug)]
pub struct StaticCredential {
    names: Vec<HeaderName>,
    attachment: Attachment,
}

impl StaticCredential {
    /// Build from validated config.
    pub fn new(cfg: &StaticConfig) -> Result<Self, InvalidHeaderValue> {
        let mut pairs = Vec::with_capacity(cfg.headers.len());
        for (name, value) in &cfg.headers {
            pairs.push((
                name.clone(),
                sensitive_value(value.expose_secret())
                    .ok_or_else(|| InvalidHeaderValue(name.clone()))?,
            ));
        }
        Ok(Self {
            names: pairs.iter().map(|(n, _)| n.clone()).collect(),
            attachment: Attachment {
                headers: pairs.into(),
                generation: 0,
            },
        })
    }
}

impl Credential for StaticCredential {
    fn header_names(&self) -> &[HeaderName] {
        &self.names
    }

    fn attach(&self) -> BoxFuture<'_, Result<Attachment, CredentialError>> {
        futures_util::future::ready(Ok(self.attachment.clone())).boxed()
    }
}

/// A secret cannot be a header value (control characters or non-visible bytes).
#[derive(Debug, thiserror::Error)]
#[error("the value of header {0} is not a valid header value")]
pub struct InvalidHeaderValue(pub HeaderName);

/// A header value marked sensitive (kept out of HPACK tables and debug output).
pub fn sensitive_value(value: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(value).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// Every configured credential, by name.
#[derive(Debug, Default)]
pub struct Credentials {
    by_name: BTreeMap<String, Arc<dyn Credential>>,
}

/// A credential could not be built from config.
#[derive(Debug, thiserror::Error)]
#[error("credentials.{name}: {source}")]
pub struct BuildError {
    /// Credential name.
    pub name: String,
    /// Why.
    #[source]
    pub source: InvalidHeaderValue,
}

impl Credentials {
    /// Build every credential in `cfg`.
    pub fn build(cfg: &BTreeMap<String, CredentialConfig>) -> Result<Self, BuildError> {
        let mut by_name: BTreeMap<String, Arc<dyn Credential>> = BTreeMap::new();
        for (name, c) in cfg {
            let cred: Arc<dyn Credential> = match c {
                CredentialConfig::Static(s) => {
                    Arc::new(StaticCredential::new(s).map_err(|source| BuildError {
                        name: name.clone(),
                        source,
                    })?)
                }
            };
            by_name.insert(name.clone(), cred);
        }
        Ok(Self { by_name })
    }

    /// The credential named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Credential>> {
        self.by_name.get(name).cloned()
    }
}
