//! `[[routes]]`: which requests go where, with what credential and caller policy. Validated against the sections
//! it names (upstreams, credentials, issuers, flows); the caller policy itself is `caller_auth`'s to check.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::caller_auth::config::{AuthMode, IssuerConfig, RawRouteAuth, RouteAuthConfig};
use crate::config::{ConfigError, Ctx, UpstreamConfig};
use crate::credentials::config::CredentialConfig;
use crate::flows::FlowsConfig;

/// `[[routes]]`: which requests go where, with what credential.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Name used in logs and metrics (default: the path prefix).
    pub name: Option<String>,
    /// Path prefix matched on segment boundaries; the longest match wins.
    pub path_prefix: String,
    /// Exact `Host` (without port) this route is limited to.
    pub host: Option<String>,
    /// Upstream to forward to (exactly one of `upstream` and `flow`).
    pub upstream: Option<String>,
    /// Vendor flow that answers this route locally.
    pub flow: Option<String>,
    /// Remove `path_prefix` before forwarding (default false).
    pub strip_prefix: Option<bool>,
    /// Credential attached to forwarded requests.
    pub credential: Option<String>,
    /// Largest request body in bytes (default 10 MiB); `Content-Length` beyond it gets 413 at once.
    pub max_body_bytes: Option<u64>,
    /// Largest total size of request header names and values in bytes (default 16384); beyond it 431.
    pub max_header_bytes: Option<usize>,
    /// `"jwt"` (default) or `"none"` for public routes.
    pub auth: Option<AuthMode>,
    /// Issuer names accepted here (default: all).
    pub issuers: Option<Vec<String>>,
    /// Scopes the caller's token must all carry (`scope` or `scp`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Claims that must equal one of the listed values, e.g. `{ azp = ["svc-a"] }`.
    #[serde(default)]
    pub require_claims: BTreeMap<String, Vec<String>>,
    /// Claims forwarded upstream as headers, e.g. `{ sub = "X-Credgate-Subject" }`.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
}

/// What answers a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteTarget {
    /// Forward to the named upstream.
    Upstream(String),
    /// Answer with the named vendor flow.
    Flow(String),
}

/// A validated route.
#[derive(Debug, Clone, Serialize)]
pub struct RouteConfig {
    /// Name for logs and metrics.
    pub name: String,
    /// Path prefix.
    pub path_prefix: String,
    /// Optional exact host.
    pub host: Option<String>,
    /// What answers it.
    pub target: RouteTarget,
    /// Strip the prefix before forwarding.
    pub strip_prefix: bool,
    /// Credential name.
    pub credential: Option<String>,
    /// Body limit in bytes.
    pub max_body_bytes: u64,
    /// Header limit in bytes.
    pub max_header_bytes: usize,
    /// Caller authentication.
    #[serde(flatten)]
    pub auth: RouteAuthConfig,
}

/// Check one `[[routes]]` entry against the upstreams, credentials, issuers and flows it names.
pub(crate) fn validate(
    ctx: &Ctx,
    i: usize,
    r: RawRoute,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    credentials: &BTreeMap<String, CredentialConfig>,
    issuers: &[IssuerConfig],
    flows: &FlowsConfig,
) -> Result<RouteConfig, ConfigError> {
    let k = |f: &str| format!("routes[{i}].{f}");
    if !r.path_prefix.starts_with('/') {
        return Err(ctx.invalid(
            k("path_prefix"),
            format!("{:?} must start with /", r.path_prefix),
        ));
    }
    let target = target(ctx, &k, r.upstream, r.flow, upstreams, flows)?;
    if let Some(c) = &r.credential {
        credential_fits(ctx, &k, c, &target, upstreams, credentials)?;
    }
    let auth = RouteAuthConfig::validate(
        ctx,
        &k,
        RawRouteAuth {
            auth: r.auth,
            issuers: r.issuers,
            scopes: r.scopes,
            require_claims: r.require_claims,
            forward_claims: r.forward_claims,
        },
        issuers,
    )?;
    Ok(RouteConfig {
        name: r.name.unwrap_or_else(|| r.path_prefix.clone()),
        path_prefix: r.path_prefix,
        host: r.host.map(|h| h.trim_end_matches('.').to_ascii_lowercase()),
        target,
        strip_prefix: r.strip_prefix.unwrap_or(false),
        credential: r.credential,
        max_body_bytes: r.max_body_bytes.unwrap_or(10 * 1024 * 1024),
        max_header_bytes: r.max_header_bytes.unwrap_or(16 * 1024),
        auth,
    })
}

/// Exactly one of `upstream` and `flow`, naming a defined upstream or an enabled flow.
fn target(
    ctx: &Ctx,
    k: &impl Fn(&str) -> String,
    upstream: Option<String>,
    flow: Option<String>,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    flows: &FlowsConfig,
) -> Result<RouteTarget, ConfigError> {
    match (upstream, flow) {
        (Some(u), None) if upstreams.contains_key(&u) => Ok(RouteTarget::Upstream(u)),
        (Some(u), None) => Err(ctx.invalid(
            k("upstream"),
            format!("{u:?} is not defined in [upstreams]"),
        )),
        (None, Some(f)) if flows.names().any(|n| n == f) => Ok(RouteTarget::Flow(f)),
        (None, Some(f)) => Err(ctx.invalid(
            k("flow"),
            format!("{f:?} is not an enabled flow in [flows]"),
        )),
        (Some(_), Some(_)) => Err(ctx.invalid(
            k("flow"),
            "set both upstream and flow; a route has one target",
        )),
        (None, None) => Err(ctx.invalid(
            k("upstream"),
            "missing: a route needs an upstream or a flow",
        )),
    }
}

/// The route's credential `c` is defined and may be sent to the target's host (flows hold their own).
fn credential_fits(
    ctx: &Ctx,
    k: &impl Fn(&str) -> String,
    c: &str,
    target: &RouteTarget,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    credentials: &BTreeMap<String, CredentialConfig>,
) -> Result<(), ConfigError> {
    let Some(cred) = credentials.get(c) else {
        return Err(ctx.invalid(
            k("credential"),
            format!("{c:?} is not defined in [credentials]"),
        ));
    };
    let RouteTarget::Upstream(u) = target else {
        return Err(ctx.invalid(
            k("credential"),
            "flows hold their own credentials; remove it",
        ));
    };
    let host = upstreams.get(u).map_or("", |up| up.host.as_str());
    if !cred
        .allowed_hosts()
        .iter()
        .any(|h| h.eq_ignore_ascii_case(host))
    {
        return Err(ctx.invalid(
            k("credential"),
            format!("credential {c:?} may not be sent to host {host:?} of upstream {u:?} (credentials.{c}.allowed_hosts)"),
        ));
    }
    Ok(())
}
