//! `[flows]`: the raw and validated settings of every flow, each vendor's own section validated by its module.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{citadel, incode, telesign};
use crate::config::{ConfigError, Ctx};

/// `[flows]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlows {
    /// SQLite file for webhook records, approval decisions and the TeleSign token ledger; created and migrated at
    /// start. Required when `incode` or `telesign` is enabled.
    pub database: Option<PathBuf>,
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
#[derive(Debug, Default)]
pub struct FlowsConfig {
    /// The embedded database file, when a flow needs one.
    pub database: Option<PathBuf>,
    /// How long database rows are kept.
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

/// Validate `[flows]`.
pub(crate) fn validate(ctx: &Ctx, raw: RawFlows) -> Result<FlowsConfig, ConfigError> {
    let needs_db = raw.incode.is_some() || raw.telesign.is_some();
    if needs_db && raw.database.is_none() {
        return Err(ctx.invalid(
            "flows.database",
            "required when flows.incode or flows.telesign is enabled (the SQLite file they record into)",
        ));
    }
    let retention = raw.retention.unwrap_or(Duration::from_secs(30 * 24 * 3600));
    if retention.is_zero() {
        return Err(ctx.invalid("flows.retention", "must be above zero"));
    }
    Ok(FlowsConfig {
        database: raw.database,
        retention,
        incode: raw.incode.map(|r| incode::validate(ctx, r)).transpose()?,
        citadel: raw.citadel.map(|r| citadel::validate(ctx, r)).transpose()?,
        telesign: raw
            .telesign
            .map(|r| telesign::validate(ctx, r))
            .transpose()?,
    })
}
