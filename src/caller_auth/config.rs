//! `[[issuers]]`: identity providers whose caller JWTs the gateway accepts, with their audiences, algorithms and keys
//! (a JWKS URL and/or static PEM, JWK or JWKS files). Static key files are read and parsed here, so `credgate check`
//! catches a bad key; nothing here fetches.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::caller_auth::keys::{self, Alg, Key};
use crate::config::{ConfigError, Ctx, show};

/// An issuer as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    /// Name routes refer to.
    pub name: String,
    /// Exact `iss` claim value.
    pub issuer: String,
    /// Accepted audiences: the token's `aud` (string or array) must contain one.
    pub audiences: Vec<String>,
    /// Accepted `alg` values (default: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA). Each key only
    /// ever verifies the algorithms of its own type; `none` and HS* are never accepted.
    pub algorithms: Option<Vec<Alg>>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (default `60s`).
    #[serde(default, with = "humantime_serde")]
    pub leeway: Option<Duration>,
    /// JWKS URL (https, or http on loopback only), fetched at startup and refreshed in the background.
    pub jwks_url: Option<String>,
    /// Static keys: PEM `PUBLIC KEY` files (give `kid`), or JWK / JWKS JSON files (kids from the file).
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// JWKS refresh interval when the response has no `Cache-Control: max-age` (default `5m`).
    #[serde(default, with = "humantime_serde")]
    pub refresh_interval: Option<Duration>,
    /// Lower bound on a JWKS `max-age` (default `30s`).
    #[serde(default, with = "humantime_serde")]
    pub min_refresh_interval: Option<Duration>,
    /// Upper bound on a JWKS `max-age` (default `24h`).
    #[serde(default, with = "humantime_serde")]
    pub max_refresh_interval: Option<Duration>,
    /// An unknown `kid` triggers at most one JWKS refetch per this interval; unknown kids are remembered this long
    /// (default `30s`).
    #[serde(default, with = "humantime_serde")]
    pub unknown_kid_refetch_interval: Option<Duration>,
    /// How long the last good JWKS stays in force while fetches fail (default `24h`).
    #[serde(default, with = "humantime_serde")]
    pub max_staleness: Option<Duration>,
    /// Timeout of one JWKS fetch (default `5s`).
    #[serde(default, with = "humantime_serde")]
    pub fetch_timeout: Option<Duration>,
    /// When the JWKS cannot be fetched at startup: `"retry"` (default: start not ready, retry with backoff) or
    /// `"fail_fast"` (refuse to start).
    pub startup: Option<Startup>,
}

/// What an issuer does when its JWKS cannot be fetched at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Startup {
    /// Start not ready and retry with backoff.
    Retry,
    /// Refuse to start.
    FailFast,
}

/// A static key file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// PEM (`-----BEGIN PUBLIC KEY-----`), JWK or JWKS (JSON) file.
    pub file: PathBuf,
    /// Key id tokens name in their `kid` header; for PEM files, and to override a single JWK's own.
    pub kid: Option<String>,
}

/// JWKS fetching settings of one issuer.
#[derive(Debug, Clone, Serialize)]
pub struct JwksConfig {
    /// The JWKS URL.
    #[serde(serialize_with = "show::display")]
    pub url: http::Uri,
    /// Interval without `max-age`.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub refresh_interval: Duration,
    /// Lower bound on `max-age`.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub min_refresh_interval: Duration,
    /// Upper bound on `max-age`.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub max_refresh_interval: Duration,
    /// Minimum time between unknown-kid refetches; also how long unknown kids are remembered.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub unknown_kid_refetch_interval: Duration,
    /// Longest a stale JWKS stays in force.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub max_staleness: Duration,
    /// One fetch's timeout.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub fetch_timeout: Duration,
    /// Refuse to start when the first fetch fails.
    pub fail_fast: bool,
}

/// A validated issuer.
#[derive(Debug, Clone, Serialize)]
pub struct IssuerConfig {
    /// Name routes refer to.
    pub name: String,
    /// Exact `iss`.
    pub issuer: String,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// Accepted algorithms.
    pub algorithms: Vec<Alg>,
    /// Clock skew tolerance.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub leeway: Duration,
    /// JWKS source, if any.
    pub jwks: Option<JwksConfig>,
    /// Keys from files, parsed.
    pub static_keys: Vec<Arc<Key>>,
}

/// Validate `issuers[i]`, given the issuers listed before it (a name or `iss` may appear once).
pub(crate) fn validate(
    ctx: &Ctx,
    i: usize,
    r: RawIssuer,
    out: &[IssuerConfig],
) -> Result<IssuerConfig, ConfigError> {
    let k = |f: &str| format!("issuers[{i}].{f}");
    if out.iter().any(|o| o.name == r.name) {
        return Err(ctx.invalid(k("name"), format!("{:?} is defined twice", r.name)));
    }
    if r.issuer.is_empty() {
        return Err(ctx.invalid(k("issuer"), "must not be empty"));
    }
    if let Some(o) = out.iter().find(|o| o.issuer == r.issuer) {
        return Err(ctx.invalid(
            k("issuer"),
            format!(
                "{:?} is already issuer {:?}; iss must pick one issuer",
                r.issuer, o.name
            ),
        ));
    }
    if r.audiences.is_empty() || r.audiences.iter().any(String::is_empty) {
        return Err(ctx.invalid(k("audiences"), "list at least one non-empty audience"));
    }
    let algorithms = match &r.algorithms {
        None => Alg::ALL.to_vec(),
        Some(listed) => {
            let mut algs = Vec::new();
            for &a in listed {
                if !algs.contains(&a) {
                    algs.push(a);
                }
            }
            if algs.is_empty() {
                return Err(ctx.invalid(k("algorithms"), "must not be empty"));
            }
            algs
        }
    };
    let leeway = r.leeway.unwrap_or(Duration::from_secs(60));
    let static_keys = read_keys(ctx, i, &r.keys, &algorithms)?;
    let jwks = match &r.jwks_url {
        None => {
            if static_keys.is_empty() {
                return Err(ctx.invalid(k("jwks_url"), "an issuer needs jwks_url or keys"));
            }
            None
        }
        Some(url) => Some(jwks_config(ctx, i, url, &r)?),
    };
    Ok(IssuerConfig {
        name: r.name,
        issuer: r.issuer,
        audiences: r.audiences,
        algorithms,
        leeway,
        jwks,
        static_keys,
    })
}

fn jwks_config(ctx: &Ctx, i: usize, url: &str, r: &RawIssuer) -> Result<JwksConfig, ConfigError> {
    let k = |f: &str| format!("issuers[{i}].{f}");
    let uri: http::Uri = url
        .parse()
        .map_err(|e| ctx.invalid(k("jwks_url"), format!("bad URL {url:?}: {e}")))?;
    let host = uri.host().unwrap_or("");
    let loopback = crate::config::is_loopback_host(host);
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if loopback => {}
        _ => {
            return Err(ctx.invalid(
                k("jwks_url"),
                format!("{url:?} must be https:// (plain http only on loopback)"),
            ));
        }
    }
    if host.is_empty() {
        return Err(ctx.invalid(k("jwks_url"), format!("{url:?} has no host")));
    }
    let d =
        |raw: Option<Duration>, default_secs: u64| raw.unwrap_or(Duration::from_secs(default_secs));
    let cfg = JwksConfig {
        url: uri,
        refresh_interval: d(r.refresh_interval, 300),
        min_refresh_interval: d(r.min_refresh_interval, 30),
        max_refresh_interval: d(r.max_refresh_interval, 86_400),
        unknown_kid_refetch_interval: d(r.unknown_kid_refetch_interval, 30),
        max_staleness: d(r.max_staleness, 86_400),
        fetch_timeout: d(r.fetch_timeout, 5),
        fail_fast: r.startup == Some(Startup::FailFast),
    };
    if cfg.min_refresh_interval > cfg.max_refresh_interval {
        return Err(ctx.invalid(
            k("min_refresh_interval"),
            "is larger than max_refresh_interval",
        ));
    }
    if cfg.refresh_interval.is_zero() || cfg.fetch_timeout.is_zero() {
        return Err(ctx.invalid(
            k("refresh_interval"),
            "refresh_interval and fetch_timeout must be above zero",
        ));
    }
    Ok(cfg)
}

fn read_keys(
    ctx: &Ctx,
    i: usize,
    raw: &[RawKey],
    algs: &[Alg],
) -> Result<Vec<Arc<Key>>, ConfigError> {
    let mut out: Vec<Arc<Key>> = Vec::new();
    for (j, rk) in raw.iter().enumerate() {
        let key = format!("issuers[{i}].keys[{j}].file");
        let path = rk.file.display();
        let text = ctx
            .read_to_string(&rk.file)
            .map_err(|e| ctx.invalid(&key, format!("cannot read {path}: {e}")))?;
        let bad = |e: &dyn std::fmt::Display| ctx.invalid(&key, format!("{path}: {e}"));
        let trimmed = text.trim_start();
        let mut found: Vec<Arc<Key>> = if trimmed.starts_with("-----BEGIN") {
            use rustls::pki_types::SubjectPublicKeyInfoDer;
            use rustls::pki_types::pem::PemObject;
            let der = SubjectPublicKeyInfoDer::from_pem_slice(text.as_bytes())
                .map_err(|e| bad(&format!("no PEM PUBLIC KEY ({e}); convert with `openssl pkey -pubin -in FILE` if it is PKCS#1")))?;
            vec![Arc::new(
                Key::from_spki_der(rk.kid.clone(), der.as_ref(), algs).map_err(|e| bad(&e))?,
            )]
        } else {
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(&format!("not PEM or JSON: {e}")))?;
            if v.get("keys").is_some() {
                let set: jsonwebtoken::jwk::JwkSet =
                    serde_json::from_value(v).map_err(|e| bad(&format!("bad JWKS: {e}")))?;
                if rk.kid.is_some() {
                    return Err(ctx.invalid(
                        format!("issuers[{i}].keys[{j}].kid"),
                        "a JWKS file names its own kids",
                    ));
                }
                let (keys, skipped) = keys::from_jwks(&set, algs);
                for (kid, e) in skipped {
                    tracing::warn!(file = %path, ?kid, error = %e, "key skipped");
                }
                if keys.is_empty() {
                    return Err(bad(&"JWKS has no usable key"));
                }
                keys
            } else {
                let mut jwk: jsonwebtoken::jwk::Jwk =
                    serde_json::from_value(v).map_err(|e| bad(&format!("bad JWK: {e}")))?;
                if rk.kid.is_some() {
                    jwk.common.key_id.clone_from(&rk.kid);
                }
                vec![Arc::new(Key::from_jwk(&jwk, algs).map_err(|e| bad(&e))?)]
            }
        };
        for k in &found {
            if k.kid().is_some() && out.iter().any(|o| o.kid() == k.kid()) {
                return Err(ctx.invalid(
                    key,
                    format!("kid {:?} appears twice in this issuer's keys", k.kid()),
                ));
            }
        }
        out.append(&mut found);
    }
    Ok(out)
}

/// A route's caller policy as written (fields of `[[routes]]`).
#[derive(Debug, Default)]
pub struct RawRouteAuth {
    /// `"jwt"` (default) or `"none"`.
    pub auth: Option<AuthMode>,
    /// Issuer names accepted (default: all).
    pub issuers: Option<Vec<String>>,
    /// Scopes required.
    pub scopes: Vec<String>,
    /// Claim → accepted values.
    pub require_claims: BTreeMap<String, Vec<String>>,
    /// Claim → header name to forward it in.
    pub forward_claims: BTreeMap<String, String>,
}

/// A route's `auth` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Caller JWT required.
    #[default]
    Jwt,
    /// Public route.
    None,
}

/// How a route authenticates callers.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(tag = "auth", rename_all = "snake_case")]
pub enum RouteAuthConfig {
    /// Public route: no caller token is read (the caller's Authorization is still stripped).
    #[default]
    None,
    /// Caller JWT required.
    Jwt {
        /// Accepted issuer names (empty: all).
        issuers: Vec<String>,
        /// Scopes required.
        scopes: Vec<String>,
        /// Claim → accepted values.
        require_claims: BTreeMap<String, Vec<String>>,
        /// Claim → header name to forward it in.
        #[serde(serialize_with = "show::map_display")]
        forward_claims: Vec<(String, http::HeaderName)>,
    },
}

impl RouteAuthConfig {
    /// The claims this policy forwards upstream.
    pub fn forwarded_claims(&self) -> impl Iterator<Item = &str> {
        let claims = match self {
            RouteAuthConfig::None => &[][..],
            RouteAuthConfig::Jwt { forward_claims, .. } => forward_claims.as_slice(),
        };
        claims.iter().map(|(c, _)| c.as_str())
    }

    /// Check a route's caller policy; `k` names a field of the route in errors.
    pub fn validate(
        ctx: &Ctx,
        k: &impl Fn(&str) -> String,
        raw: RawRouteAuth,
        issuers: &[IssuerConfig],
    ) -> Result<Self, ConfigError> {
        let r = raw;
        Ok(match r.auth.unwrap_or_default() {
            AuthMode::None => {
                if r.issuers.is_some()
                    || !r.scopes.is_empty()
                    || !r.require_claims.is_empty()
                    || !r.forward_claims.is_empty()
                {
                    return Err(ctx.invalid(k("auth"), "\"none\" cannot be combined with issuers, scopes, require_claims or forward_claims"));
                }
                RouteAuthConfig::None
            }
            AuthMode::Jwt => {
                if issuers.is_empty() {
                    return Err(ctx.invalid(k("auth"), "caller JWTs are required by default but no [[issuers]] is configured; add one or set auth = \"none\""));
                }
                let names = r.issuers.unwrap_or_default();
                for n in &names {
                    if !issuers.iter().any(|iss| &iss.name == n) {
                        return Err(ctx.invalid(
                            k("issuers"),
                            format!("{n:?} is not defined in [[issuers]]"),
                        ));
                    }
                }
                let mut forward_claims = Vec::new();
                for (claim, header) in r.forward_claims {
                    let h = http::HeaderName::try_from(header.as_str()).map_err(|_| {
                        ctx.invalid(
                            k(&format!("forward_claims.{claim}")),
                            format!("{header:?} is not a header name"),
                        )
                    })?;
                    forward_claims.push((claim, h));
                }
                RouteAuthConfig::Jwt {
                    issuers: names,
                    scopes: r.scopes,
                    require_claims: r.require_claims,
                    forward_claims,
                }
            }
        })
    }
}
