//! The root of the config file: the TOML schema that assembles every module's own section (server, listeners,
//! admin, upstreams, credentials, issuers, routes, flows), and [`validate`], which hands each section to its owner.
//! TOML → raw structs (`deny_unknown_fields`) → [`validate`] → [`Config`]. Nothing here opens sockets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::caller_auth::config::{self as issuers, IssuerConfig, RawIssuer};
use crate::config::{
    ConfigError, Ctx, ListenerConfig, RawListener, RawUpstream, UpstreamConfig, duration,
    validate_listener, validate_upstream,
};
use crate::credentials::config::{self as credentials, CredentialConfig, RawCredential};
use crate::flows::{self, FlowsConfig, RawFlows};
use crate::proxy::UpstreamPool;
use crate::routes::config::{self as routes, RawRoute, RouteConfig};
use crate::timer::TimerKind;

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Process-wide settings.
    #[serde(default)]
    pub server: RawServer,
    /// Where the gateway accepts callers.
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    /// The admin listener (health, readiness, metrics); off when absent.
    pub admin: Option<RawAdmin>,
    /// Named upstream services.
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Named upstream credentials.
    #[serde(default)]
    pub credentials: BTreeMap<String, RawCredential>,
    /// Issuers whose JWTs callers may present.
    #[serde(default)]
    pub issuers: Vec<RawIssuer>,
    /// Routes, matched by longest path prefix.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Vendor flows (token servers) and their settings.
    #[serde(default)]
    pub flows: RawFlows,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// How long in-flight requests may run after SIGINT/SIGTERM (default `30s`).
    pub shutdown_grace: Option<String>,
    /// The pool for `http://` upstreams: `"credgate"` (default) or `"hyper_util"`, the fallback.
    pub upstream_pool: Option<UpstreamPool>,
    /// The timer for per-request deadlines: `"credgate"` (default) or `"tokio"`, the fallback.
    pub timer: Option<TimerKind>,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address to bind; plain HTTP, keep it on loopback.
    pub address: String,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it came from (for messages).
    pub source: String,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// The pool for `http://` upstreams.
    pub upstream_pool: UpstreamPool,
    /// The timer for per-request deadlines.
    pub timer: TimerKind,
    /// Listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Admin listener address.
    pub admin: Option<SocketAddr>,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Credentials by name.
    pub credentials: BTreeMap<String, CredentialConfig>,
    /// Caller token issuers.
    pub issuers: Vec<IssuerConfig>,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
    /// Vendor flows.
    pub flows: FlowsConfig,
}

impl Config {
    /// Read and validate the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_toml(&text, &shown)
    }

    /// Parse and validate TOML text; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: source.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        validate(raw, source)
    }
}

/// Check a raw config and resolve it: secrets, files, names and URLs.
pub fn validate(raw: RawConfig, source: &str) -> Result<Config, ConfigError> {
    let ctx = Ctx::new(source);
    let shutdown_grace = duration(
        &ctx,
        "server.shutdown_grace",
        raw.server.shutdown_grace.as_deref(),
        Duration::from_secs(30),
    )?;

    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.into_iter().enumerate() {
        listeners.push(validate_listener(&ctx, i, l)?);
    }
    let admin = raw
        .admin
        .map(|a| {
            a.address.parse().map_err(|e| {
                ctx.invalid("admin.address", format!("bad address {:?}: {e}", a.address))
            })
        })
        .transpose()?;

    let mut upstreams = BTreeMap::new();
    for (name, u) in raw.upstreams {
        let up = validate_upstream(&ctx, &name, u)?;
        upstreams.insert(name, up);
    }
    let mut credentials = BTreeMap::new();
    for (name, c) in raw.credentials {
        let cred = credentials::validate(&ctx, &name, c)?;
        credentials.insert(name, cred);
    }
    let issuers = issuers::validate(&ctx, raw.issuers)?;
    let flows = flows::validate(&ctx, raw.flows)?;

    let mut routes = Vec::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        routes.push(routes::validate(
            &ctx,
            i,
            r,
            &upstreams,
            &credentials,
            &issuers,
            &flows,
        )?);
    }
    Ok(Config {
        source: source.to_owned(),
        shutdown_grace,
        // Unset, the build's defaults: credgate's own, or the standard ones under the `std-*` features.
        upstream_pool: raw.server.upstream_pool.unwrap_or_default(),
        timer: raw.server.timer.unwrap_or_default(),
        listeners,
        admin,
        upstreams,
        credentials,
        issuers,
        routes,
        flows,
    })
}
