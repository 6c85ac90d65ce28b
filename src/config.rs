//! The shared configuration kit: the error that names the file and key (`routes[2].credential: "tropipay" is not
//! defined`), key-naming section parsing, secret references ([`secret`]), PEM reading, and the listener and upstream sections every
//! layer shares. Each domain module owns its own section on top of this; the root schema that assembles them is
//! [`crate::gateway::config`]. Nothing here opens sockets or names a domain module.

pub mod secret;
pub mod show;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::digest;
use http::Uri;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretBox};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::conn::BodyTimeouts;

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

/// Builds [`ConfigError::Invalid`] errors that carry the config file's name, and remembers every file the config
/// reads (certificates, keys, secrets): the reload watcher follows them, and [`Ctx::fingerprint`] tells whether a
/// section's inputs changed.
#[derive(Debug)]
pub struct Ctx {
    path: String,
    reads: RefCell<Vec<(PathBuf, Fingerprint)>>,
}

/// What a config section was built from (its text as written and the content of every file it read), as a SHA-256
/// digest: equal fingerprints mean an equal section, so a reload keeps the state built from it. Never shown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a file's content.
    pub fn of(bytes: &[u8]) -> Self {
        let mut out = [0; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
        Self(out)
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprint(..)")
    }
}

impl Ctx {
    /// A context for the config file at `path`.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reads: RefCell::default(),
        }
    }

    /// Read a file the config names, remembering it.
    pub fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let bytes = std::fs::read(path)?;
        let d = Fingerprint::of(&bytes);
        self.reads.borrow_mut().push((path.to_path_buf(), d));
        Ok(bytes)
    }

    /// [`Ctx::read`] as UTF-8 text.
    pub fn read_to_string(&self, path: &Path) -> std::io::Result<String> {
        String::from_utf8(self.read(path)?)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// A mark in the list of files read, for [`Ctx::fingerprint`].
    pub fn mark(&self) -> usize {
        self.reads.borrow().len()
    }

    /// The fingerprint of a section: `written` (its text as written, with a name that sets it apart) and every file
    /// read since `mark`.
    pub fn fingerprint(&self, mark: usize, written: &str) -> Fingerprint {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&(written.len() as u64).to_le_bytes());
        ctx.update(written.as_bytes());
        for (path, d) in self.reads.borrow().iter().skip(mark) {
            let p = path.as_os_str().as_encoded_bytes();
            ctx.update(&(p.len() as u64).to_le_bytes());
            ctx.update(p);
            ctx.update(&d.0);
        }
        let mut out = [0; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Fingerprint(out)
    }

    /// Every file read so far, each once in the order first read, with the fingerprint of its content when read.
    pub fn files(&self) -> Vec<(PathBuf, Fingerprint)> {
        let mut out: Vec<(PathBuf, Fingerprint)> = Vec::new();
        for (p, d) in self.reads.borrow().iter() {
            if !out.iter().any(|(q, _)| q == p) {
                out.push((p.clone(), *d));
            }
        }
        out
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
    pub client_auth: Option<ClientAuth>,
    /// Time allowed for a TLS handshake (default `10s`).
    #[serde(default, with = "humantime_serde")]
    pub tls_handshake_timeout: Option<Duration>,
    /// Time allowed for a request's headers to arrive: the slow-loris guard (default `10s`).
    #[serde(default, with = "humantime_serde")]
    pub header_read_timeout: Option<Duration>,
    /// Largest request head accepted on this listener, in bytes (default 65536; hyper answers 431 beyond).
    pub max_header_bytes: Option<usize>,
    /// Longest a connection may stay open with no request in flight (default `60s`; HTTP/1 connections are held to
    /// `header_read_timeout` between requests as well).
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Interval of the HTTP/2 keep-alive PINGs (default `30s`).
    #[serde(default, with = "humantime_serde")]
    pub http2_keepalive_interval: Option<Duration>,
    /// How long an HTTP/2 PING may go unanswered before the connection is closed (default `10s`).
    #[serde(default, with = "humantime_serde")]
    pub http2_keepalive_timeout: Option<Duration>,
    /// Most connections open at once on this listener (default 10000; capped by the open-files limit). Beyond it a
    /// new connection is closed at once and counted.
    pub max_connections: Option<usize>,
    /// Longest silence while the gateway reads a request body in full (flow routes, bodies kept to replay after a
    /// rejection); the caller then gets 408 (default `60s`). Streamed bodies are bound by the upstream's
    /// `response_timeout`.
    #[serde(default, with = "humantime_serde")]
    pub body_idle_timeout: Option<Duration>,
    /// Longest time for a request body the gateway reads in full, however it trickles in (default `5m`).
    #[serde(default, with = "humantime_serde")]
    pub body_timeout: Option<Duration>,
    /// Longest a response may wait for a caller that stopped reading it (its socket full, or its HTTP/2 window
    /// closed) before the connection is closed (default `60s`).
    #[serde(default, with = "humantime_serde")]
    pub send_timeout: Option<Duration>,
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
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Longest silence (default `30s`): between request body chunks while sending (a stalled caller gets 408), and
    /// from the end of the request until the upstream's response headers arrive (504).
    #[serde(default, with = "humantime_serde")]
    pub response_timeout: Option<Duration>,
    /// Longest silence between two pieces of the upstream's response body; the response to the caller is then cut
    /// off (default: `response_timeout`).
    #[serde(default, with = "humantime_serde")]
    pub body_idle_timeout: Option<Duration>,
}

/// A validated listener.
#[derive(Debug, Serialize)]
pub struct ListenerConfig {
    /// Bound address.
    #[serde(serialize_with = "show::display")]
    pub address: SocketAddr,
    /// TLS material, absent for plain HTTP.
    pub tls: Option<TlsConfig>,
    /// TLS handshake timeout.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub tls_handshake_timeout: Duration,
    /// Header read timeout.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub header_read_timeout: Duration,
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Longest stay open with no request in flight.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub idle_timeout: Duration,
    /// HTTP/2 keep-alive PING interval.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub http2_keepalive_interval: Duration,
    /// HTTP/2 PING answer timeout.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub http2_keepalive_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Limits on request bodies read in full.
    pub body: BodyTimeouts,
    /// Longest wait for a caller that stopped reading a response.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub send_timeout: Duration,
}

/// Whether a client certificate must be presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Handshake fails without a valid client certificate.
    Required,
    /// A client certificate is verified when presented.
    Optional,
}

/// TLS material for a listener, read at load so that `check` catches unreadable files.
#[derive(Debug, Serialize)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    #[serde(serialize_with = "show::certs")]
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    #[serde(serialize_with = "show::redacted")]
    pub key: PrivateKeyDer<'static>,
    /// Client CA roots and policy, for mTLS.
    #[serde(serialize_with = "client_ca")]
    pub client_ca: Option<(Vec<CertificateDer<'static>>, ClientAuth)>,
}

/// How `client_ca` is shown: the roots' fingerprints and the policy.
fn client_ca<S: serde::Serializer>(
    v: &Option<(Vec<CertificateDer<'static>>, ClientAuth)>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Shown<'a> {
        #[serde(serialize_with = "show::certs")]
        roots: &'a [CertificateDer<'static>],
        client_auth: ClientAuth,
    }
    v.as_ref()
        .map(|(roots, client_auth)| Shown {
            roots,
            client_auth: *client_auth,
        })
        .serialize(s)
}

/// A validated upstream.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamConfig {
    /// Its name.
    pub name: String,
    /// `http` or `https`.
    #[serde(serialize_with = "show::display")]
    pub scheme: http::uri::Scheme,
    /// `host[:port]`.
    #[serde(serialize_with = "show::display")]
    pub authority: http::uri::Authority,
    /// Host name alone (for credential allowlists).
    pub host: String,
    /// Base path without trailing slash ("" for root).
    pub base_path: String,
    /// Extra trusted CA certificates.
    #[serde(serialize_with = "show::certs")]
    pub extra_ca: Vec<CertificateDer<'static>>,
    /// Connect timeout.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub connect_timeout: Duration,
    /// Response-header timeout.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub response_timeout: Duration,
    /// Longest silence within a response body.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub body_idle_timeout: Duration,
}

/// Deserialize a section held as a TOML table; a failure names the key under `prefix`, e.g. `credentials.c.timeout`.
pub fn parse_table<T: DeserializeOwned>(
    ctx: &Ctx,
    prefix: &str,
    table: toml::Table,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table))
        .map_err(|e| section_error(ctx, prefix, &e))
}

/// A deserialization error inside a section, named by its dotted key under `prefix`.
pub fn section_error(
    ctx: &Ctx,
    prefix: &str,
    e: &serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let key = match e.path().iter().next() {
        None => prefix.to_owned(),
        Some(_) => format!("{prefix}.{}", e.path()),
    };
    ctx.invalid(key, e.inner().message())
}

/// Read a PEM file of certificates.
pub fn read_certs(
    ctx: &Ctx,
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    read_certs_pem(ctx, key, path).map(|(_, certs)| certs)
}

/// Read a PEM file of certificates, keeping its text too, for clients that take PEM (the Redis client).
pub fn read_certs_pem(
    ctx: &Ctx,
    key: &str,
    path: &Path,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), ConfigError> {
    let pem = ctx
        .read(path)
        .map_err(|e| ctx.invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ctx.invalid(key, format!("bad PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ctx.invalid(key, format!("no certificate in {}", path.display())));
    }
    Ok((pem, certs))
}

/// Read a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(ctx: &Ctx, key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read_key_pem(ctx, key, path)?;
    key_of(ctx, key, path, pem.expose_secret())
}

/// Read a PEM private key as its text, checked to hold a usable key, for clients that take PEM (the Redis client).
pub fn read_key_pem(ctx: &Ctx, key: &str, path: &Path) -> Result<SecretBox<Vec<u8>>, ConfigError> {
    let pem =
        SecretBox::new(Box::new(ctx.read(path).map_err(|e| {
            ctx.invalid(key, format!("cannot read {}: {e}", path.display()))
        })?));
    key_of(ctx, key, path, pem.expose_secret())?;
    Ok(pem)
}

fn key_of(
    ctx: &Ctx,
    key: &str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        ctx.invalid(
            key,
            format!("no usable private key in {}: {e}", path.display()),
        )
    })
}

/// Check one `[[listeners]]` entry, reading its TLS files.
pub fn validate_listener(
    ctx: &Ctx,
    i: usize,
    l: RawListener,
) -> Result<ListenerConfig, ConfigError> {
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
            Some(path) => Some((
                read_certs(ctx, &k("client_ca"), path)?,
                l.client_auth.unwrap_or(ClientAuth::Required),
            )),
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
    let max_connections = l.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        return Err(ctx.invalid(k("max_connections"), "must be at least 1"));
    }
    Ok(ListenerConfig {
        address,
        tls,
        tls_handshake_timeout: l.tls_handshake_timeout.unwrap_or(Duration::from_secs(10)),
        header_read_timeout: l.header_read_timeout.unwrap_or(Duration::from_secs(10)),
        max_header_bytes,
        idle_timeout: l.idle_timeout.unwrap_or(Duration::from_secs(60)),
        http2_keepalive_interval: l
            .http2_keepalive_interval
            .unwrap_or(Duration::from_secs(30)),
        http2_keepalive_timeout: l.http2_keepalive_timeout.unwrap_or(Duration::from_secs(10)),
        max_connections,
        body: BodyTimeouts {
            idle: positive(ctx, &k("body_idle_timeout"), l.body_idle_timeout, 60)?,
            total: positive(ctx, &k("body_timeout"), l.body_timeout, 300)?,
        },
        send_timeout: positive(ctx, &k("send_timeout"), l.send_timeout, 60)?,
    })
}

/// `value`, or `default_secs` when unset; zero is refused (it would fail every request).
fn positive(
    ctx: &Ctx,
    key: &str,
    value: Option<Duration>,
    default_secs: u64,
) -> Result<Duration, ConfigError> {
    let d = value.unwrap_or(Duration::from_secs(default_secs));
    if d.is_zero() {
        return Err(ctx.invalid(key.to_owned(), "must be above zero"));
    }
    Ok(d)
}

/// Whether `host` (as a URL spells it, IPv6 in brackets or not) names this machine: plain `http://` is allowed there
/// only, since anything else would carry secrets and tokens in clear over a network.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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

/// Check one `[upstreams.NAME]` entry, reading its CA file.
pub fn validate_upstream(
    ctx: &Ctx,
    name: &str,
    u: RawUpstream,
) -> Result<UpstreamConfig, ConfigError> {
    let k = |f: &str| format!("upstreams.{name}.{f}");
    let (scheme, authority, host, base_path) = parse_base_url(ctx, &k("url"), &u.url)?;
    let extra_ca = match &u.ca {
        Some(p) => read_certs(ctx, &k("ca"), p)?,
        None => Vec::new(),
    };
    if !extra_ca.is_empty() && scheme != http::uri::Scheme::HTTPS {
        return Err(ctx.invalid(k("ca"), "set on a plain http:// upstream"));
    }
    let response_timeout = positive(ctx, &k("response_timeout"), u.response_timeout, 30)?;
    if u.body_idle_timeout.is_some_and(|d| d.is_zero()) {
        return Err(ctx.invalid(k("body_idle_timeout"), "must be above zero"));
    }
    Ok(UpstreamConfig {
        name: name.to_owned(),
        scheme,
        authority,
        host,
        base_path,
        extra_ca,
        connect_timeout: u.connect_timeout.unwrap_or(Duration::from_secs(5)),
        response_timeout,
        body_idle_timeout: u.body_idle_timeout.unwrap_or(response_timeout),
    })
}
