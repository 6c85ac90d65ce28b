//! `[cluster]`: fleet mode. Optional; without it every replica is on its own, exactly as a single node. With it,
//! replicas share upstream tokens through Redis (see [`crate::cluster`]). Secrets (the Redis URL, which may carry a
//! password, and the token encryption key) are secret references, resolved once here; TLS files (`rediss://`) are
//! read and checked here too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Ctx, read_certs_pem, read_key_pem, secret, show};

/// `[cluster]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// `redis://[user:password@]host:port[/db]` or `rediss://` (TLS); a secret reference such as `${REDIS_URL}`.
    pub redis_url: Option<String>,
    /// A file holding the Redis URL, instead of `redis_url`.
    pub redis_url_file: Option<PathBuf>,
    /// Prefix of every key and channel credgate uses (default `credgate:`), so that fleets can share one Redis.
    pub key_prefix: Option<String>,
    /// This replica's name in leases and logs (default: `$HOSTNAME`, else a random one).
    pub node_id: Option<String>,
    /// The AES-256-GCM key tokens are encrypted with in Redis: 32 bytes, base64; a secret reference.
    pub encryption_key: Option<String>,
    /// A file holding the encryption key (base64), instead of `encryption_key`.
    pub encryption_key_file: Option<PathBuf>,
    /// More keys (base64, each a secret reference) that stored tokens may be encrypted with, for a rotation in
    /// progress: tokens are opened with any of them but encrypted only with `encryption_key`.
    #[serde(default)]
    pub decryption_keys: Vec<String>,
    /// With `rediss://`: a PEM CA bundle Redis's certificate must chain to, instead of the webpki roots (a private
    /// CA, as Redis's own `tls-ca-cert-file`).
    pub tls_ca: Option<PathBuf>,
    /// With `rediss://`: a PEM client certificate chain, for a Redis that verifies clients (`tls-auth-clients`).
    pub tls_client_cert: Option<PathBuf>,
    /// The private key of `tls_client_cert`.
    pub tls_client_key: Option<PathBuf>,
    /// Longest wait to connect to Redis (default `1s`).
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Longest wait for one Redis command (default `500ms`); slower counts as Redis being down.
    #[serde(default, with = "humantime_serde")]
    pub command_timeout: Option<Duration>,
}

/// The validated `[cluster]` section.
#[derive(Debug, Serialize)]
pub struct ClusterConfig {
    /// Where Redis is (may carry a password).
    #[serde(serialize_with = "show::redacted")]
    pub redis_url: SecretString,
    /// Prefix of keys and channels.
    pub key_prefix: String,
    /// This replica's name.
    pub node_id: String,
    /// The token encryption key.
    #[serde(serialize_with = "show::redacted")]
    pub encryption_key: SecretBox<[u8; 32]>,
    /// Keys that open stored tokens besides `encryption_key` (a rotation in progress).
    #[serde(serialize_with = "show::redacted_each")]
    pub decryption_keys: Vec<SecretBox<[u8; 32]>>,
    /// TLS settings, with `rediss://`.
    pub tls: Option<RedisTls>,
    /// Connect timeout.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub connect_timeout: Duration,
    /// Per-command timeout.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub command_timeout: Duration,
}

/// What a `rediss://` connection trusts and presents, when not the defaults (the webpki roots, no client certificate).
#[derive(Debug, Serialize)]
pub struct RedisTls {
    /// `tls_ca`'s path, for `/admin/config`.
    pub ca: Option<PathBuf>,
    /// `tls_ca`'s PEM text: the only roots Redis's certificate may chain to, when set.
    #[serde(skip)]
    pub ca_pem: Option<Vec<u8>>,
    /// `tls_client_cert`'s path, for `/admin/config`.
    pub client_cert: Option<PathBuf>,
    /// The client certificate chain and its key, as PEM text.
    #[serde(skip)]
    pub client_pem: Option<(Vec<u8>, SecretBox<Vec<u8>>)>,
}

/// The longest `key_prefix` and `node_id`: they are repeated in every key and lease.
const MAX_NAME: usize = 64;

/// Check `[cluster]` and resolve its secrets.
pub fn validate(ctx: &Ctx, raw: RawCluster) -> Result<ClusterConfig, ConfigError> {
    let redis_url = one_secret(
        ctx,
        "cluster.redis_url",
        raw.redis_url.as_deref(),
        raw.redis_url_file.as_deref(),
    )?;
    // Parsed here so that a typo fails `credgate check`, not the first token request; the error never shows the URL.
    let url = url::Url::parse(redis_url.expose_secret())
        .map_err(|e| ctx.invalid("cluster.redis_url", format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "redis" | "rediss" | "valkey" | "valkeys") {
        return Err(ctx.invalid(
            "cluster.redis_url",
            format!("scheme {:?}: use redis:// or rediss://", url.scheme()),
        ));
    }
    let tls = redis_tls(
        ctx,
        matches!(url.scheme(), "rediss" | "valkeys"),
        raw.tls_ca.as_deref(),
        raw.tls_client_cert.as_deref(),
        raw.tls_client_key.as_deref(),
    )?;
    let key_prefix = raw.key_prefix.unwrap_or_else(|| "credgate:".to_owned());
    check_name(ctx, "cluster.key_prefix", &key_prefix)?;
    let node_id = match raw.node_id {
        Some(n) => n,
        None => std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("node-{}", uuid::Uuid::new_v4().simple())),
    };
    check_name(ctx, "cluster.node_id", &node_id)?;
    let key = one_secret(
        ctx,
        "cluster.encryption_key",
        raw.encryption_key.as_deref(),
        raw.encryption_key_file.as_deref(),
    )?;
    let encryption_key = decode_key(key.expose_secret().trim()).ok_or_else(|| {
        ctx.invalid(
            "cluster.encryption_key",
            "must be 32 bytes in base64 (e.g. `openssl rand -base64 32`)",
        )
    })?;
    let mut decryption_keys = Vec::new();
    for (i, raw_key) in raw.decryption_keys.iter().enumerate() {
        let k = format!("cluster.decryption_keys[{i}]");
        let text = secret::expand(ctx, raw_key).map_err(|e| ctx.invalid(&k, e))?;
        decryption_keys.push(
            decode_key(text.expose_secret().trim())
                .ok_or_else(|| ctx.invalid(&k, "must be 32 bytes in base64, as encryption_key"))?,
        );
    }
    let positive = |key: &str, d: Option<Duration>, default: Duration| match d {
        Some(d) if d.is_zero() => Err(ctx.invalid(key, "must be above zero")),
        Some(d) => Ok(d),
        None => Ok(default),
    };
    Ok(ClusterConfig {
        redis_url,
        key_prefix,
        node_id,
        encryption_key,
        decryption_keys,
        tls,
        connect_timeout: positive(
            "cluster.connect_timeout",
            raw.connect_timeout,
            Duration::from_secs(1),
        )?,
        command_timeout: positive(
            "cluster.command_timeout",
            raw.command_timeout,
            Duration::from_millis(500),
        )?,
    })
}

/// Read the TLS files of a `rediss://` Redis; refused with `redis://`, where they would silently do nothing.
fn redis_tls(
    ctx: &Ctx,
    tls: bool,
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<RedisTls>, ConfigError> {
    if !tls {
        if let Some(k) = [
            ca.map(|_| "cluster.tls_ca"),
            cert.map(|_| "cluster.tls_client_cert"),
            key.map(|_| "cluster.tls_client_key"),
        ]
        .into_iter()
        .flatten()
        .next()
        {
            return Err(ctx.invalid(k, "needs a rediss:// redis_url (TLS)"));
        }
        return Ok(None);
    }
    let ca_pem = ca
        .map(|p| read_certs_pem(ctx, "cluster.tls_ca", p).map(|(pem, _)| pem))
        .transpose()?;
    let client_pem = match (cert, key) {
        (Some(c), Some(k)) => Some((
            read_certs_pem(ctx, "cluster.tls_client_cert", c)?.0,
            read_key_pem(ctx, "cluster.tls_client_key", k)?,
        )),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ctx.invalid("cluster.tls_client_key", "required with tls_client_cert"));
        }
        (None, Some(_)) => {
            return Err(ctx.invalid("cluster.tls_client_cert", "required with tls_client_key"));
        }
    };
    Ok(Some(RedisTls {
        ca: ca.map(Path::to_path_buf),
        ca_pem,
        client_cert: cert.map(Path::to_path_buf),
        client_pem,
    }))
}

/// A secret given inline or as a file, exactly one of them.
fn one_secret(
    ctx: &Ctx,
    key: &str,
    inline: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<SecretString, ConfigError> {
    if inline.is_some() && file.is_some() {
        return Err(ctx.invalid(key, format!("set both {key} and {key}_file; keep one")));
    }
    secret::resolve(ctx, inline, file)
        .map_err(|e| ctx.invalid(key, e))?
        .ok_or_else(|| ctx.invalid(key, format!("missing: set {key} or {key}_file")))
}

/// Printable ASCII without spaces, at most [`MAX_NAME`] bytes: it goes into keys, leases and logs.
fn check_name(ctx: &Ctx, key: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > MAX_NAME || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ctx.invalid(
            key,
            format!("must be 1 to {MAX_NAME} printable ASCII characters without spaces"),
        ));
    }
    Ok(())
}

/// 32 bytes from standard base64 (padded or not).
fn decode_key(b64: &str) -> Option<SecretBox<[u8; 32]>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
        .ok()?;
    let key: [u8; 32] = bytes.as_slice().try_into().ok()?;
    Some(SecretBox::new(Box::new(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn parse(extra: &str) -> Result<ClusterConfig, ConfigError> {
        parse_url("redis://127.0.0.1:6379", extra)
    }

    fn parse_url(url: &str, extra: &str) -> Result<ClusterConfig, ConfigError> {
        let raw: RawCluster =
            toml::from_str(&format!("redis_url = \"{url}\"\nnode_id = \"a\"\n{extra}"))
                .map_err(|e| Ctx::new("<t>").invalid("toml", e))?;
        validate(&Ctx::new("<t>"), raw)
    }

    fn key_of(r: Result<ClusterConfig, ConfigError>) -> String {
        match r {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_the_key_are_read() {
        let c = parse(&format!("encryption_key = \"{KEY}\"")).expect("valid");
        assert_eq!(c.key_prefix, "credgate:");
        assert_eq!(c.node_id, "a");
        assert_eq!(c.command_timeout, Duration::from_millis(500));
        assert_eq!(c.encryption_key.expose_secret()[31], 31);
    }

    #[test]
    fn bad_values_name_their_key_and_never_show_the_secret() {
        assert_eq!(key_of(parse("")), "cluster.encryption_key");
        assert_eq!(
            key_of(parse("encryption_key = \"c2hvcnQ=\"")),
            "cluster.encryption_key"
        );
        assert_eq!(
            key_of(parse(&format!(
                "encryption_key = \"{KEY}\"\nkey_prefix = \"a b\""
            ))),
            "cluster.key_prefix"
        );
        assert_eq!(
            key_of(parse(&format!(
                "encryption_key = \"{KEY}\"\ncommand_timeout = \"0s\""
            ))),
            "cluster.command_timeout"
        );
        for url in ["http://user:hunter2@h", "not a url hunter2"] {
            let raw: RawCluster = toml::from_str(&format!(
                "redis_url = \"{url}\"\nencryption_key = \"{KEY}\""
            ))
            .expect("toml");
            let e = validate(&Ctx::new("<t>"), raw).expect_err("scheme");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn tls_files_need_rediss_come_in_pairs_and_are_read_at_load() {
        let with = |extra: &str| format!("encryption_key = \"{KEY}\"\n{extra}");
        let tls = parse_url("rediss://127.0.0.1:6380", &with(""))
            .expect("rediss alone: the webpki roots, no client certificate");
        assert!(
            tls.tls
                .is_some_and(|t| t.ca_pem.is_none() && t.client_pem.is_none())
        );
        assert!(parse(&with("")).expect("redis://").tls.is_none());
        assert_eq!(
            key_of(parse(&with("tls_ca = \"ca.pem\""))),
            "cluster.tls_ca",
            "TLS files with redis:// would do nothing"
        );
        assert_eq!(
            key_of(parse_url(
                "rediss://h",
                &with("tls_client_cert = \"c.pem\"")
            )),
            "cluster.tls_client_key"
        );
        assert_eq!(
            key_of(parse_url(
                "rediss://h",
                &with("tls_ca = \"/nonexistent/ca.pem\"")
            )),
            "cluster.tls_ca",
            "an unreadable CA fails at load, not at the first token"
        );
    }
}
