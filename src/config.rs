//! Configuration: TOML → raw structs (`deny_unknown_fields`) → [`validate`] → [`Config`]. Every error names the file
//! and the key (`routes[2].credential: "tropipay" is not defined`). Nothing here opens sockets.

pub mod credentials;
pub mod issuers;
pub mod secret;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

pub use credentials::{CredentialConfig, RawCredential};
pub use issuers::{IssuerConfig, RawIssuer};

/// A configuration that cannot be used, with the file and key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The config file.
        path: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The config file.
        path: String,
        /// The TOML parser's message (it names the key and line).
        message: String,
    },
    /// A value is well-formed but cannot be used.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The config file.
        path: String,
        /// The dotted key, e.g. `routes[2].credential`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Builds [`ConfigError::Invalid`] errors that carry the config file's name.
#[derive(Debug, Clone)]
pub struct Ctx {
    path: String,
}

impl Ctx {
    /// A context for the config file at `path`.
    pub fn new(path: impl Into<String>) -> Self {
        Self { path: path.into() }
    }

    /// An error about `key`.
    pub fn invalid(&self, key: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            key: key.into(),
            message: message.to_string(),
        }
    }
}

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
    pub flows: crate::flows::RawFlows,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// How long in-flight requests may run after SIGINT/SIGTERM (default `30s`).
    pub shutdown_grace: Option<String>,
}

/// `[[listeners]]`: one bound socket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Address to bind, e.g. `127.0.0.1:8443`.
    pub address: String,
    /// Terminate TLS (default true); plain HTTP only when set to false explicitly.
    pub tls: Option<bool>,
    /// PEM certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA bundle that client certificates must chain to (mTLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `"required"` (default) or `"optional"`.
    pub client_auth: Option<String>,
    /// Time allowed for a TLS handshake (default `10s`).
    pub tls_handshake_timeout: Option<String>,
    /// Time allowed for a request's headers to arrive: the slow-loris guard (default `10s`).
    pub header_read_timeout: Option<String>,
    /// Largest request head accepted on this listener, in bytes (default 65536; hyper answers 431 beyond).
    pub max_header_bytes: Option<usize>,
}

/// `[admin]`: the admin listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address to bind; plain HTTP, keep it on loopback.
    pub address: String,
}

/// `[upstreams.NAME]`: a service requests are forwarded to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Base URL, `http://` or `https://`; its path is prefixed to forwarded paths.
    pub url: String,
    /// Extra PEM CA trusted for this upstream, besides the webpki roots.
    pub ca: Option<PathBuf>,
    /// TCP connect timeout (default `5s`).
    pub connect_timeout: Option<String>,
    /// Longest silence (default `30s`): between request body chunks while sending (a stalled caller gets 408), and
    /// from the end of the request until the upstream's response headers arrive (504).
    pub response_timeout: Option<String>,
}

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
    pub auth: Option<String>,
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

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it came from (for messages).
    pub source: String,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
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
    pub flows: crate::flows::FlowsConfig,
}

/// A validated listener.
#[derive(Debug)]
pub struct ListenerConfig {
    /// Bound address.
    pub address: SocketAddr,
    /// TLS material, absent for plain HTTP.
    pub tls: Option<TlsConfig>,
    /// TLS handshake timeout.
    pub tls_handshake_timeout: Duration,
    /// Header read timeout.
    pub header_read_timeout: Duration,
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
}

/// Whether a client certificate must be presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Handshake fails without a valid client certificate.
    Required,
    /// A client certificate is verified when presented.
    Optional,
}

/// TLS material for a listener, read at load so that `check` catches unreadable files.
#[derive(Debug)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// Client CA roots and policy, for mTLS.
    pub client_ca: Option<(Vec<CertificateDer<'static>>, ClientAuth)>,
}

/// A validated upstream.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Its name.
    pub name: String,
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host[:port]`.
    pub authority: http::uri::Authority,
    /// Host name alone (for credential allowlists).
    pub host: String,
    /// Base path without trailing slash ("" for root).
    pub base_path: String,
    /// Extra trusted CA certificates.
    pub extra_ca: Vec<CertificateDer<'static>>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Response-header timeout.
    pub response_timeout: Duration,
}

/// What answers a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// Forward to the named upstream.
    Upstream(String),
    /// Answer with the named vendor flow.
    Flow(String),
}

/// How a route authenticates callers.
#[derive(Debug, Clone, Default)]
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
        forward_claims: Vec<(String, http::HeaderName)>,
    },
}

/// A validated route.
#[derive(Debug, Clone)]
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
    pub auth: RouteAuthConfig,
}

/// Parse a duration such as `"500ms"`, `"10s"` or `"24h"`.
pub fn duration(
    ctx: &Ctx,
    key: &str,
    raw: Option<&str>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match raw {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| ctx.invalid(key, format!("bad duration {s:?}: {e}"))),
    }
}

/// Read a PEM file of certificates.
pub fn read_certs(
    ctx: &Ctx,
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| ctx.invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ctx.invalid(key, format!("bad PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ctx.invalid(key, format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}

/// Read a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(ctx: &Ctx, key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| ctx.invalid(key, format!("cannot read {}: {e}", path.display())))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        ctx.invalid(
            key,
            format!("no usable private key in {}: {e}", path.display()),
        )
    })
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
    let flows = crate::flows::validate(&ctx, raw.flows)?;

    let mut routes = Vec::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        routes.push(validate_route(
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
        listeners,
        admin,
        upstreams,
        credentials,
        issuers,
        routes,
        flows,
    })
}

fn validate_listener(ctx: &Ctx, i: usize, l: RawListener) -> Result<ListenerConfig, ConfigError> {
    let k = |f: &str| format!("listeners[{i}].{f}");
    let address = l
        .address
        .parse()
        .map_err(|e| ctx.invalid(k("address"), format!("bad address {:?}: {e}", l.address)))?;
    let tls = if l.tls.unwrap_or(true) {
        let cert = l.cert.as_deref().ok_or_else(|| {
            ctx.invalid(
                k("cert"),
                "required when tls is on (set tls = false for plain HTTP)",
            )
        })?;
        let key = l
            .key
            .as_deref()
            .ok_or_else(|| ctx.invalid(k("key"), "required when tls is on"))?;
        let client_ca = match &l.client_ca {
            None => {
                if l.client_auth.is_some() {
                    return Err(ctx.invalid(k("client_auth"), "needs client_ca"));
                }
                None
            }
            Some(path) => {
                let policy = match l.client_auth.as_deref() {
                    None | Some("required") => ClientAuth::Required,
                    Some("optional") => ClientAuth::Optional,
                    Some(other) => {
                        return Err(ctx.invalid(
                            k("client_auth"),
                            format!("{other:?} is not \"required\" or \"optional\""),
                        ));
                    }
                };
                Some((read_certs(ctx, &k("client_ca"), path)?, policy))
            }
        };
        Some(TlsConfig {
            cert_chain: read_certs(ctx, &k("cert"), cert)?,
            key: read_key(ctx, &k("key"), key)?,
            client_ca,
        })
    } else {
        for (set, f) in [
            (l.cert.is_some(), "cert"),
            (l.key.is_some(), "key"),
            (l.client_ca.is_some(), "client_ca"),
        ] {
            if set {
                return Err(ctx.invalid(k(f), "set but tls = false"));
            }
        }
        None
    };
    let max_header_bytes = l.max_header_bytes.unwrap_or(65536);
    if max_header_bytes < 8192 {
        return Err(ctx.invalid(k("max_header_bytes"), "must be at least 8192"));
    }
    Ok(ListenerConfig {
        address,
        tls,
        tls_handshake_timeout: duration(
            ctx,
            &k("tls_handshake_timeout"),
            l.tls_handshake_timeout.as_deref(),
            Duration::from_secs(10),
        )?,
        header_read_timeout: duration(
            ctx,
            &k("header_read_timeout"),
            l.header_read_timeout.as_deref(),
            Duration::from_secs(10),
        )?,
        max_header_bytes,
    })
}

/// Split a base URL into the parts the proxy needs; `key` names it in errors.
pub fn parse_base_url(
    ctx: &Ctx,
    key: &str,
    raw: &str,
) -> Result<(http::uri::Scheme, http::uri::Authority, String, String), ConfigError> {
    let uri: Uri = raw
        .parse()
        .map_err(|e| ctx.invalid(key, format!("bad URL {raw:?}: {e}")))?;
    let scheme = match uri.scheme_str() {
        Some("http") => http::uri::Scheme::HTTP,
        Some("https") => http::uri::Scheme::HTTPS,
        _ => {
            return Err(ctx.invalid(
                key,
                format!("URL {raw:?} must start with http:// or https://"),
            ));
        }
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| ctx.invalid(key, format!("URL {raw:?} has no host")))?;
    if authority.as_str().contains('@') {
        return Err(ctx.invalid(key, "URL must not carry user info; use a credential"));
    }
    if uri.query().is_some() {
        return Err(ctx.invalid(key, "URL must not carry a query"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok((scheme, authority, host, base_path))
}

fn validate_upstream(ctx: &Ctx, name: &str, u: RawUpstream) -> Result<UpstreamConfig, ConfigError> {
    let k = |f: &str| format!("upstreams.{name}.{f}");
    let (scheme, authority, host, base_path) = parse_base_url(ctx, &k("url"), &u.url)?;
    let extra_ca = match &u.ca {
        Some(p) => read_certs(ctx, &k("ca"), p)?,
        None => Vec::new(),
    };
    if !extra_ca.is_empty() && scheme != http::uri::Scheme::HTTPS {
        return Err(ctx.invalid(k("ca"), "set on a plain http:// upstream"));
    }
    Ok(UpstreamConfig {
        name: name.to_owned(),
        scheme,
        authority,
        host,
        base_path,
        extra_ca,
        connect_timeout: duration(
            ctx,
            &k("connect_timeout"),
            u.connect_timeout.as_deref(),
            Duration::from_secs(5),
        )?,
        response_timeout: duration(
            ctx,
            &k("response_timeout"),
            u.response_timeout.as_deref(),
            Duration::from_secs(30),
        )?,
    })
}

fn validate_route(
    ctx: &Ctx,
    i: usize,
    r: RawRoute,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    credentials: &BTreeMap<String, CredentialConfig>,
    issuers: &[IssuerConfig],
    flows: &crate::flows::FlowsConfig,
) -> Result<RouteConfig, ConfigError> {
    let k = |f: &str| format!("routes[{i}].{f}");
    if !r.path_prefix.starts_with('/') {
        return Err(ctx.invalid(
            k("path_prefix"),
            format!("{:?} must start with /", r.path_prefix),
        ));
    }
    let target = match (r.upstream, r.flow) {
        (Some(u), None) => {
            if !upstreams.contains_key(&u) {
                return Err(ctx.invalid(
                    k("upstream"),
                    format!("{u:?} is not defined in [upstreams]"),
                ));
            }
            RouteTarget::Upstream(u)
        }
        (None, Some(f)) => {
            if !flows.names().any(|n| n == f) {
                return Err(ctx.invalid(
                    k("flow"),
                    format!("{f:?} is not an enabled flow in [flows]"),
                ));
            }
            RouteTarget::Flow(f)
        }
        (Some(_), Some(_)) => {
            return Err(ctx.invalid(
                k("flow"),
                "set both upstream and flow; a route has one target",
            ));
        }
        (None, None) => {
            return Err(ctx.invalid(
                k("upstream"),
                "missing: a route needs an upstream or a flow",
            ));
        }
    };
    if let Some(c) = &r.credential {
        let Some(cred) = credentials.get(c) else {
            return Err(ctx.invalid(
                k("credential"),
                format!("{c:?} is not defined in [credentials]"),
            ));
        };
        match &target {
            RouteTarget::Upstream(u) => {
                let host = &upstreams[u].host;
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
            }
            RouteTarget::Flow(_) => {
                return Err(ctx.invalid(
                    k("credential"),
                    "flows hold their own credentials; remove it",
                ));
            }
        }
    }
    let auth = match r.auth.as_deref() {
        Some("none") => {
            if r.issuers.is_some()
                || !r.scopes.is_empty()
                || !r.require_claims.is_empty()
                || !r.forward_claims.is_empty()
            {
                return Err(ctx.invalid(k("auth"), "\"none\" cannot be combined with issuers, scopes, require_claims or forward_claims"));
            }
            RouteAuthConfig::None
        }
        None | Some("jwt") => {
            if issuers.is_empty() {
                return Err(ctx.invalid(k("auth"), "caller JWTs are required by default but no [[issuers]] is configured; add one or set auth = \"none\""));
            }
            let names = r.issuers.unwrap_or_default();
            for n in &names {
                if !issuers.iter().any(|iss| &iss.name == n) {
                    return Err(
                        ctx.invalid(k("issuers"), format!("{n:?} is not defined in [[issuers]]"))
                    );
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
        Some(other) => {
            return Err(ctx.invalid(k("auth"), format!("{other:?} is not \"jwt\" or \"none\"")));
        }
    };
    Ok(RouteConfig {
        name: r.name.unwrap_or_else(|| r.path_prefix.clone()),
        path_prefix: r.path_prefix,
        host: r.host.map(|h| h.to_ascii_lowercase()),
        target,
        strip_prefix: r.strip_prefix.unwrap_or(false),
        credential: r.credential,
        max_body_bytes: r.max_body_bytes.unwrap_or(10 * 1024 * 1024),
        max_header_bytes: r.max_header_bytes.unwrap_or(16 * 1024),
        auth,
    })
}
