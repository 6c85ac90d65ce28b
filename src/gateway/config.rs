//! The root of the config file: the TOML schema that assembles every module's own section (server, listeners,
//! admin, upstreams, credentials, issuers, routes, flows, cluster, tracing), and [`validate`], which hands each section to its owner.
//! TOML → raw structs (`deny_unknown_fields`) → [`validate`] → [`Config`]. Nothing here opens sockets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::caller_auth::config::{self as issuers, IssuerConfig, RawIssuer};
use crate::cluster::{self, ClusterConfig, RawCluster};
use crate::config::{
    ConfigError, Ctx, Fingerprint, ListenerConfig, RawListener, RawUpstream, UpstreamConfig,
    secret, show, validate_listener, validate_upstream,
};
use crate::credentials::config::{self as credentials, CredentialConfig};
use crate::flows::{self, FlowsConfig, RawFlows};
use crate::proxy::UpstreamPool;
use crate::routes::config::{self as routes, RawRoute, RouteConfig};
use crate::timer::TimerKind;
use crate::trace::config::{self as tracing_config, RawTracing, TracingConfig};

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
    /// Named upstream credentials, each a table whose `kind` picks its schema (see [`credentials::validate`]).
    #[serde(default)]
    pub credentials: BTreeMap<String, toml::Table>,
    /// Issuers whose JWTs callers may present.
    #[serde(default)]
    pub issuers: Vec<RawIssuer>,
    /// Routes, matched by longest path prefix.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Vendor flows (token servers) and their settings.
    #[serde(default)]
    pub flows: RawFlows,
    /// Fleet mode: replicas sharing tokens through Redis; off when absent.
    pub cluster: Option<RawCluster>,
    /// OTLP span export; off when absent.
    pub tracing: Option<RawTracing>,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// How long in-flight requests may run after SIGINT/SIGTERM (default `30s`).
    #[serde(default, with = "humantime_serde")]
    pub shutdown_grace: Option<Duration>,
    /// The pool for `http://` upstreams: `"credgate"` (default) or `"hyper_util"`, the fallback.
    pub upstream_pool: Option<UpstreamPool>,
    /// The timer for per-request deadlines: `"credgate"` (default) or `"tokio"`, the fallback.
    pub timer: Option<TimerKind>,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address to bind; plain HTTP with no authentication, so loopback only unless `allow_non_loopback` is set.
    pub address: String,
    /// Allow a non-loopback `address` (e.g. inside a pod, behind a network policy). Default false.
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// A bearer token `/metrics` and `/admin/*` require (`${ENV}` or `${file:…}`); `/healthz` and `/readyz` stay
    /// open for probes.
    pub token: Option<String>,
    /// The token, from a file.
    pub token_file: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Serialize)]
pub struct Config {
    /// The file it came from (for messages).
    pub source: String,
    /// Grace period for in-flight requests at shutdown.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub shutdown_grace: Duration,
    /// The pool for `http://` upstreams.
    pub upstream_pool: UpstreamPool,
    /// The timer for per-request deadlines.
    pub timer: TimerKind,
    /// Listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Admin listener address.
    #[serde(serialize_with = "show::display_opt")]
    pub admin: Option<SocketAddr>,
    /// The bearer token the admin API and metrics require, when set.
    #[serde(serialize_with = "show::redacted_opt")]
    pub admin_token: Option<SecretString>,
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
    /// Every file the config was read from, with the fingerprint of its content then: the config itself (when
    /// loaded from a file), certificates, keys and secret files. A reload watches them.
    #[serde(serialize_with = "watched")]
    pub files: Vec<(PathBuf, Fingerprint)>,
    /// What each stateful section was built from, by its dotted name (`credentials.NAME`, `issuers.NAME`,
    /// `upstreams.NAME`, `flows`): a reload keeps the state of a section whose fingerprint did not change.
    #[serde(skip)]
    pub fingerprints: BTreeMap<String, Fingerprint>,
    /// Fleet mode, when configured.
    pub cluster: Option<ClusterConfig>,
    /// OTLP span export, when configured.
    pub tracing: Option<TracingConfig>,
}

/// The watched files, by path alone: a fingerprint of a secret file would let a reader test guesses of it.
fn watched<S: serde::Serializer>(v: &[(PathBuf, Fingerprint)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|(p, _)| p))
}

/// Check `[admin]`: without a token it answers anyone who reaches it, so it binds to loopback unless told otherwise.
fn validate_admin(
    ctx: &Ctx,
    a: RawAdmin,
) -> Result<(SocketAddr, Option<SecretString>), ConfigError> {
    if a.token.is_some() && a.token_file.is_some() {
        return Err(ctx.invalid(
            "admin.token_file",
            "set both token and token_file; keep one",
        ));
    }
    let token = secret::resolve(ctx, a.token.as_deref(), a.token_file.as_deref())
        .map_err(|e| ctx.invalid("admin.token", e))?;
    let addr: SocketAddr = a
        .address
        .parse()
        .map_err(|e| ctx.invalid("admin.address", format!("bad address {:?}: {e}", a.address)))?;
    if !addr.ip().is_loopback() && !a.allow_non_loopback && token.is_none() {
        return Err(ctx.invalid(
            "admin.address",
            format!(
                "{addr} is not a loopback address and the admin listener has no token (set admin.token, or \
                 admin.allow_non_loopback = true to expose it without one)"
            ),
        ));
    }
    Ok((addr, token))
}

impl Config {
    /// Read and validate the config file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut cfg = Self::from_toml(&text, &shown)?;
        cfg.files
            .insert(0, (path.to_path_buf(), Fingerprint::of(text.as_bytes())));
        Ok(cfg)
    }

    /// Parse and validate TOML text; `source` names it in errors, which lead with the dotted key.
    pub fn from_toml(text: &str, source: &str) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: source.to_owned(),
            message: message.trim_end().to_owned(),
        };
        let de = toml::Deserializer::parse(text).map_err(|e| parse_error(e.to_string()))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de)
            .map_err(|e| parse_error(format!("{}: {}", e.path(), e.inner())))?;
        validate(raw, source)
    }
}

/// Check a raw config and resolve it: secrets, files, names and URLs.
pub fn validate(raw: RawConfig, source: &str) -> Result<Config, ConfigError> {
    let ctx = Ctx::new(source);
    let shutdown_grace = raw.server.shutdown_grace.unwrap_or(Duration::from_secs(30));

    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.into_iter().enumerate() {
        listeners.push(validate_listener(&ctx, i, l)?);
    }
    let (admin, admin_token) = match raw.admin {
        Some(a) => {
            let (addr, token) = validate_admin(&ctx, a)?;
            (Some(addr), token)
        }
        None => (None, None),
    };

    let mut fingerprints = BTreeMap::new();
    let mut upstreams = BTreeMap::new();
    for (name, u) in raw.upstreams {
        let (mark, written) = (ctx.mark(), format!("{u:?}"));
        let up = validate_upstream(&ctx, &name, u)?;
        let section = format!("upstreams.{name}");
        fingerprints.insert(section, ctx.fingerprint(mark, &written));
        upstreams.insert(name, up);
    }
    let mut credentials = BTreeMap::new();
    for (name, c) in raw.credentials {
        let (mark, written) = (ctx.mark(), c.to_string());
        let cred = credentials::validate(&ctx, &name, c)?;
        let section = format!("credentials.{name}");
        fingerprints.insert(section, ctx.fingerprint(mark, &written));
        credentials.insert(name, cred);
    }
    let mut issuers: Vec<IssuerConfig> = Vec::new();
    for (i, r) in raw.issuers.into_iter().enumerate() {
        let (mark, written) = (ctx.mark(), format!("{r:?}"));
        let iss = issuers::validate(&ctx, i, r, &issuers)?;
        let section = format!("issuers.{}", iss.name);
        fingerprints.insert(section, ctx.fingerprint(mark, &written));
        issuers.push(iss);
    }
    let (mark, written) = (ctx.mark(), format!("{:?}", raw.flows));
    let flows = flows::validate(&ctx, raw.flows)?;
    fingerprints.insert("flows".to_owned(), ctx.fingerprint(mark, &written));
    let cluster = match raw.cluster {
        Some(c) => {
            let (mark, written) = (ctx.mark(), format!("{c:?}"));
            let cluster = cluster::config::validate(&ctx, c)?;
            fingerprints.insert("cluster".to_owned(), ctx.fingerprint(mark, &written));
            Some(cluster)
        }
        None => None,
    };
    let tracing = match raw.tracing {
        Some(t) => {
            let (mark, written) = (ctx.mark(), format!("{t:?}"));
            let tracing = tracing_config::validate(&ctx, t)?;
            fingerprints.insert("tracing".to_owned(), ctx.fingerprint(mark, &written));
            Some(tracing)
        }
        None => None,
    };

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
        admin_token,
        upstreams,
        credentials,
        issuers,
        routes,
        flows,
        files: ctx.files(),
        fingerprints,
        cluster,
        tracing,
    })
}
