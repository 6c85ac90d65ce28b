//! `[[issuers]]`: identity providers whose caller JWTs the gateway accepts.

use serde::Deserialize;

use super::{ConfigError, Ctx};

/// An issuer as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    /// Name routes refer to.
    pub name: String,
    /// Exact `iss` claim value.
    pub issuer: String,
}

/// A validated issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Name routes refer to.
    pub name: String,
    /// Exact `iss`.
    pub issuer: String,
}

/// Validate the issuer list.
pub fn validate(ctx: &Ctx, raw: Vec<RawIssuer>) -> Result<Vec<IssuerConfig>, ConfigError> {
    let mut out: Vec<IssuerConfig> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        if out.iter().any(|o| o.name == r.name) {
            return Err(ctx.invalid(
                format!("issuers[{i}].name"),
                format!("{:?} is defined twice", r.name),
            ));
        }
        out.push(IssuerConfig {
            name: r.name,
            issuer: r.issuer,
        });
    }
    Ok(out)
}
