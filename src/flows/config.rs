//! `[flows]`: the raw and validated settings of every flow, each vendor's own section validated by its module.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use secrecy::ExposeSecret;

use super::store::PostgresConfig;
use super::{citadel, incode, telesign};
use crate::config::{ConfigError, Ctx, secret};

/// `[flows]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlows {
    /// SQLite file for webhook records, approval decisions and the TeleSign token ledger; created and migrated at
    /// start. Required when `incode` or `telesign` is enabled.
    pub database: Option<PathBuf>,
    /// PostgreSQL instead of the SQLite file, for a fleet whose replicas share the records:
    /// `postgres://user:password@host:5432/db`, a secret reference.
    pub postgres_url: Option<String>,
    /// A file holding the PostgreSQL URL, instead of `postgres_url`.
    pub postgres_url_file: Option<PathBuf>,
    /// With `sslmode=require` in `postgres_url` (TLS, the server's certificate verified against the webpki roots):
    /// a PEM CA trusted besides them, for a private CA.
    pub postgres_ca: Option<PathBuf>,
    /// Most PostgreSQL connections per replica (default 8).
    pub postgres_pool_size: Option<usize>,
    /// Longest wait to connect to PostgreSQL or for a pooled connection (default `5s`).
    #[serde(default, with = "humantime_serde")]
    pub postgres_connect_timeout: Option<Duration>,
    /// How long the database keeps webhook records, decided approvals and expired TeleSign ledger entries (default
    /// `30d`); older rows are purged at start and hourly.
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Incode token server, webhooks and session API (`[flows.incode]`).
    pub incode: Option<incode::RawIncode>,
    /// Citadel (Truv) bridge token and token exchange (`[flows.citadel]`).
    pub citadel: Option<citadel::RawCitadel>,
    /// TeleSign App Verify JWT service (`[flows.telesign]`).
    pub telesign: Option<telesign::RawTelesign>,
}

/// Validated flow settings.
#[derive(Debug, Default, Serialize)]
pub struct FlowsConfig {
    /// The embedded database file, when a flow needs one.
    pub database: Option<PathBuf>,
    /// PostgreSQL, when configured instead of the file.
    pub postgres: Option<PostgresConfig>,
    /// How long database rows are kept.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub retention: Duration,
    /// Incode, when enabled.
    pub incode: Option<incode::IncodeConfig>,
    /// Citadel, when enabled.
    pub citadel: Option<citadel::CitadelConfig>,
    /// TeleSign, when enabled.
    pub telesign: Option<telesign::TelesignConfig>,
}

impl FlowsConfig {
    /// Names of the enabled flows.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        let incode: &[&str] = match &self.incode {
            Some(c) if c.webhook.is_some() => &[incode::FLOW, incode::WEBHOOKS_FLOW],
            Some(_) => &[incode::FLOW],
            None => &[],
        };
        incode
            .iter()
            .copied()
            .chain(self.citadel.as_ref().map(|_| citadel::FLOW))
            .chain(self.telesign.as_ref().map(|_| telesign::FLOW))
    }
}

/// The PostgreSQL settings, when `postgres_url` (or its file) is set.
fn postgres(ctx: &Ctx, raw: &RawFlows) -> Result<Option<PostgresConfig>, ConfigError> {
    let key = "flows.postgres_url";
    if raw.postgres_url.is_some() && raw.postgres_url_file.is_some() {
        return Err(ctx.invalid(key, "set both postgres_url and postgres_url_file; keep one"));
    }
    let Some(url) = secret::resolve(
        ctx,
        raw.postgres_url.as_deref(),
        raw.postgres_url_file.as_deref(),
    )
    .map_err(|e| ctx.invalid(key, e))?
    else {
        return Ok(None);
    };
    // Parsed here so that `credgate check` finds a typo; the error never quotes the URL (it may carry a password).
    let Ok(parsed) = url.expose_secret().parse::<tokio_postgres::Config>() else {
        return Err(ctx.invalid(
            key,
            "not a PostgreSQL URL (postgres://user:password@host:5432/db)",
        ));
    };
    // Only `require` turns TLS on: the default (`prefer`) stays the plain connection it always was.
    let tls = parsed.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
    if raw.postgres_ca.is_some() && !tls {
        return Err(ctx.invalid(
            "flows.postgres_ca",
            "needs sslmode=require in postgres_url (TLS)",
        ));
    }
    let ca = raw
        .postgres_ca
        .as_deref()
        .map(|p| crate::config::read_certs(ctx, "flows.postgres_ca", p))
        .transpose()?
        .unwrap_or_default();
    let pool_size = raw.postgres_pool_size.unwrap_or(8);
    if pool_size == 0 {
        return Err(ctx.invalid("flows.postgres_pool_size", "must be at least 1"));
    }
    let connect_timeout = raw
        .postgres_connect_timeout
        .unwrap_or(Duration::from_secs(5));
    if connect_timeout.is_zero() {
        return Err(ctx.invalid("flows.postgres_connect_timeout", "must be above zero"));
    }
    Ok(Some(PostgresConfig {
        url,
        tls,
        ca,
        pool_size,
        connect_timeout,
    }))
}

/// Validate `[flows]`.
pub(crate) fn validate(ctx: &Ctx, raw: RawFlows) -> Result<FlowsConfig, ConfigError> {
    let needs_db = raw.incode.is_some() || raw.telesign.is_some();
    let postgres = postgres(ctx, &raw)?;
    if raw.database.is_some() && postgres.is_some() {
        return Err(ctx.invalid(
            "flows.postgres_url",
            "set both flows.database and flows.postgres_url; keep one (SQLite for a single node, PostgreSQL for a fleet)",
        ));
    }
    if needs_db && raw.database.is_none() && postgres.is_none() {
        return Err(ctx.invalid(
            "flows.database",
            "required when flows.incode or flows.telesign is enabled (the SQLite file they record into; or \
             flows.postgres_url)",
        ));
    }
    let retention = raw.retention.unwrap_or(Duration::from_secs(30 * 24 * 3600));
    if retention.is_zero() {
        return Err(ctx.invalid("flows.retention", "must be above zero"));
    }
    Ok(FlowsConfig {
        database: raw.database,
        postgres,
        retention,
        incode: raw.incode.map(|r| incode::validate(ctx, r)).transpose()?,
        citadel: raw.citadel.map(|r| citadel::validate(ctx, r)).transpose()?,
        telesign: raw
            .telesign
            .map(|r| telesign::validate(ctx, r))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate_toml(text: &str) -> Result<FlowsConfig, ConfigError> {
        let raw: RawFlows = toml::from_str(text).map_err(|e| Ctx::new("<t>").invalid("toml", e))?;
        validate(&Ctx::new("<t>"), raw)
    }

    #[test]
    fn postgres_replaces_the_file_and_its_errors_never_show_the_url() {
        let c = validate_toml("postgres_url = \"postgres://u:hunter2@db:5432/credgate\"")
            .expect("valid");
        let pg = c.postgres.expect("postgres");
        assert_eq!(
            (pg.pool_size, pg.connect_timeout, pg.tls),
            (8, Duration::from_secs(5), false),
            "the default sslmode (prefer) stays a plain connection"
        );
        let tls = validate_toml("postgres_url = \"postgres://u:hunter2@db/x?sslmode=require\"")
            .expect("valid");
        assert!(tls.postgres.is_some_and(|pg| pg.tls));
        for (text, key) in [
            (
                "database = \"f.db\"\npostgres_url = \"postgres://u:hunter2@db/x\"",
                "flows.postgres_url",
            ),
            (
                "postgres_url = \"postgres://u:hunter2@db:notaport/x\"",
                "flows.postgres_url",
            ),
            (
                "postgres_url = \"postgres://u:hunter2@db/x\"\npostgres_pool_size = 0",
                "flows.postgres_pool_size",
            ),
            (
                "postgres_url = \"postgres://u:hunter2@db/x\"\npostgres_ca = \"ca.pem\"",
                "flows.postgres_ca",
            ),
            (
                "postgres_url = \"postgres://u:hunter2@db/x?sslmode=require\"\npostgres_ca = \"/nonexistent\"",
                "flows.postgres_ca",
            ),
        ] {
            match validate_toml(text) {
                Err(e @ ConfigError::Invalid { .. }) => {
                    assert!(e.to_string().contains(key), "{e}");
                    assert!(!e.to_string().contains("hunter2"), "{e}");
                }
                other => panic!("{text}: expected an invalid key, got {other:?}"),
            }
        }
    }
}
