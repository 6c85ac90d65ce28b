//! `[credentials.NAME]`: raw and validated upstream credential settings, one tagged variant per kind.

use std::collections::BTreeMap;

use http::HeaderName;
use secrecy::SecretString;
use serde::Deserialize;

use super::{ConfigError, Ctx, secret};

/// A credential as written; `kind` selects the variant.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawCredential {
    /// Fixed secret headers (API keys, Citadel's `X-Access-Client-Id` / `X-Access-Secret`).
    Static {
        /// Upstream hosts this credential may be sent to.
        allowed_hosts: Vec<String>,
        /// Header name → value; values may use `${ENV}` and `${file:PATH}`.
        headers: BTreeMap<String, String>,
    },
}

/// A validated credential.
#[derive(Debug)]
pub enum CredentialConfig {
    /// Fixed secret headers.
    Static(StaticConfig),
}

/// Validated `kind = "static"`.
#[derive(Debug)]
pub struct StaticConfig {
    /// Hosts it may be sent to.
    pub allowed_hosts: Vec<String>,
    /// Headers with resolved secret values.
    pub headers: Vec<(HeaderName, SecretString)>,
}

impl CredentialConfig {
    /// Hosts this credential may be sent to.
    pub fn allowed_hosts(&self) -> &[String] {
        match self {
            CredentialConfig::Static(s) => &s.allowed_hosts,
        }
    }
}

/// Parse a header name, naming `key` on failure.
pub fn header_name(ctx: &Ctx, key: &str, name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::try_from(name)
        .map_err(|_| ctx.invalid(key, format!("{name:?} is not a valid header name")))
}

/// Check `allowed_hosts` is present and non-empty.
pub fn allowed_hosts(ctx: &Ctx, key: &str, hosts: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if hosts.is_empty() {
        return Err(ctx.invalid(
            key,
            "must list at least one upstream host this credential may be sent to",
        ));
    }
    Ok(hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect())
}

/// Validate one credential.
pub fn validate(
    ctx: &Ctx,
    name: &str,
    raw: RawCredential,
) -> Result<CredentialConfig, ConfigError> {
    let k = |f: &str| format!("credentials.{name}.{f}");
    match raw {
        RawCredential::Static {
            allowed_hosts: hosts,
            headers,
        } => {
            if headers.is_empty() {
                return Err(ctx.invalid(
                    k("headers"),
                    "a static credential needs at least one header",
                ));
            }
            let mut out = Vec::new();
            for (h, v) in headers {
                let key = k(&format!("headers.{h}"));
                let hn = header_name(ctx, &key, &h)?;
                let value = secret::expand(&v).map_err(|e| ctx.invalid(&key, e))?;
                out.push((hn, value));
            }
            Ok(CredentialConfig::Static(StaticConfig {
                allowed_hosts: allowed_hosts(ctx, &k("allowed_hosts"), hosts)?,
                headers: out,
            }))
        }
    }
}
