//! `[cluster]`: fleet mode. Optional; without it every replica is on its own, exactly as a single node. With it,
//! replicas share upstream tokens through Redis (see [`crate::cluster`]). Secrets (the Redis URL, which may carry a
//! password, and the token encryption key) are secret references, resolved once here.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Ctx, secret, show};

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
    /// Connect timeout.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub connect_timeout: Duration,
    /// Per-command timeout.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub command_timeout: Duration,
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
    if matches!(url.scheme(), "rediss" | "valkeys") {
        return Err(ctx.invalid(
            "cluster.redis_url",
            "TLS to Redis (rediss://) is not supported yet: reach Redis over a private network or a local TLS tunnel",
        ));
    }
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
        let raw: RawCluster = toml::from_str(&format!(
            "redis_url = \"redis://127.0.0.1:6379\"\nnode_id = \"a\"\n{extra}"
        ))
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
        for url in [
            "http://user:hunter2@h",
            "rediss://user:hunter2@h",
            "not a url hunter2",
        ] {
            let raw: RawCluster = toml::from_str(&format!(
                "redis_url = \"{url}\"\nencryption_key = \"{KEY}\""
            ))
            .expect("toml");
            let e = validate(&Ctx::new("<t>"), raw).expect_err("scheme");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }
}
