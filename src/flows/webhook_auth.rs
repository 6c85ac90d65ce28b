//! Authentication for vendor webhooks, which never carry caller JWTs: a shared secret in a header or HTTP Basic
//! credentials (compared in constant time), and/or a source-address allowlist. Never logs what was presented.

use std::net::IpAddr;
use std::path::PathBuf;

use headers::authorization::Basic;
use headers::{Authorization, HeaderMapExt as _};
use http::{HeaderMap, HeaderName};
use ipnet::{IpNet, Ipv4Net};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::FlowError;
use crate::config::secret::{self, constant_time_eq};
use crate::config::{ConfigError, Ctx, show};

/// A webhook authentication table as written, e.g. `[flows.incode.webhook]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhookAuth {
    /// Header carrying the shared secret, e.g. `X-Webhook-Secret` (set together with `secret`).
    pub header: Option<String>,
    /// The shared secret expected in `header` (`${ENV}`, `${file:PATH}`).
    pub secret: Option<String>,
    /// File holding the shared secret, instead of `secret`.
    pub secret_file: Option<PathBuf>,
    /// HTTP Basic user name the vendor sends (set together with a Basic password).
    pub basic_user: Option<String>,
    /// HTTP Basic password (`${ENV}`, `${file:PATH}`).
    pub basic_password: Option<String>,
    /// File holding the HTTP Basic password, instead of `basic_password`.
    pub basic_password_file: Option<PathBuf>,
    /// Source addresses or CIDR blocks allowed to call, e.g. `["203.0.113.0/24"]`; empty allows any address.
    #[serde(default)]
    pub allow_ips: Vec<String>,
}

/// Validated webhook authentication.
#[derive(Debug, Serialize)]
pub struct WebhookAuth {
    #[serde(serialize_with = "secret_header")]
    secret: Option<(HeaderName, SecretString)>,
    #[serde(serialize_with = "show::redacted_opt")]
    basic: Option<(SecretString, SecretString)>,
    #[serde(serialize_with = "show::display_all")]
    allow: Vec<IpNet>,
}

/// How the shared-secret header is shown: its name, the secret [`show::REDACTED`].
fn secret_header<S: serde::Serializer>(
    v: &Option<(HeaderName, SecretString)>,
    s: S,
) -> Result<S::Ok, S::Error> {
    v.as_ref()
        .map(|(name, _)| serde_json::json!({ "header": name.as_str(), "secret": show::REDACTED }))
        .serialize(s)
}

/// Validate a webhook table; `key` is its dotted path, e.g. `flows.incode.webhook`.
pub(crate) fn validate(
    ctx: &Ctx,
    key: &str,
    raw: RawWebhookAuth,
) -> Result<WebhookAuth, ConfigError> {
    let k = |f: &str| format!("{key}.{f}");
    let secret = match (
        raw.header,
        secret::resolve(ctx, raw.secret.as_deref(), raw.secret_file.as_deref())
            .map_err(|e| ctx.invalid(k("secret"), e))?,
    ) {
        (Some(h), Some(s)) => {
            let name = HeaderName::try_from(h.as_str())
                .map_err(|_| ctx.invalid(k("header"), format!("{h:?} is not a header name")))?;
            Some((name, s))
        }
        (None, None) => None,
        (Some(_), None) => return Err(ctx.invalid(k("secret"), "required when header is set")),
        (None, Some(_)) => return Err(ctx.invalid(k("header"), "required when secret is set")),
    };
    let basic = match (
        raw.basic_user,
        secret::resolve(
            ctx,
            raw.basic_password.as_deref(),
            raw.basic_password_file.as_deref(),
        )
        .map_err(|e| ctx.invalid(k("basic_password"), e))?,
    ) {
        (Some(u), Some(p)) => Some((SecretString::from(u), p)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(ctx.invalid(k("basic_password"), "required when basic_user is set"));
        }
        (None, Some(_)) => {
            return Err(ctx.invalid(k("basic_user"), "required when basic_password is set"));
        }
    };
    let mut allow = Vec::new();
    for (i, a) in raw.allow_ips.iter().enumerate() {
        allow.push(parse_cidr(a).ok_or_else(|| {
            ctx.invalid(
                format!("{key}.allow_ips[{i}]"),
                format!("{a:?} is not an IP address or CIDR block"),
            )
        })?);
    }
    if secret.is_none() && basic.is_none() && allow.is_empty() {
        return Err(ctx.invalid(
            key,
            "configure a shared secret (header + secret), HTTP Basic (basic_user + basic_password) or allow_ips",
        ));
    }
    Ok(WebhookAuth {
        secret,
        basic,
        allow,
    })
}

/// An address or CIDR block; an IPv4-mapped IPv6 block is taken as the IPv4 block it maps, as peers are.
fn parse_cidr(s: &str) -> Option<IpNet> {
    let net = s
        .parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .ok()?;
    Some(match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => n.addr().to_ipv4_mapped().map_or(net, |a| {
            Ipv4Net::new(a, n.prefix_len() - 96).map_or(net, IpNet::V4)
        }),
        _ => net,
    })
}

fn in_block(ip: IpAddr, net: &IpNet) -> bool {
    net.contains(&ip.to_canonical())
}

impl WebhookAuth {
    /// Admit or refuse one webhook delivery from `peer` with `headers`.
    pub fn check(&self, headers: &HeaderMap, peer: IpAddr) -> Result<(), FlowError> {
        if !self.allow.is_empty() && !self.allow.iter().any(|b| in_block(peer, b)) {
            return Err(FlowError::SourceNotAllowed);
        }
        if self.secret.is_none() && self.basic.is_none() {
            return Ok(());
        }
        let secret_ok = self.secret.as_ref().is_some_and(|(name, want)| {
            headers
                .get(name)
                .is_some_and(|got| constant_time_eq(want, got.as_bytes()))
        });
        let basic_ok = self.basic.as_ref().is_some_and(|(user, pass)| {
            headers
                .typed_get::<Authorization<Basic>>()
                .is_some_and(|Authorization(b)| {
                    // Both halves are compared in full (`&`, not `&&`) so timing does not reveal which one failed.
                    constant_time_eq(user, b.username().as_bytes())
                        & constant_time_eq(pass, b.password().as_bytes())
                })
        });
        if secret_ok || basic_ok {
            Ok(())
        } else {
            Err(FlowError::WebhookUnauthorized {
                basic_challenge: self.basic.is_some(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_match_on_prefix() {
        let b = parse_cidr("10.1.0.0/16").expect("cidr");
        assert!(in_block("10.1.200.3".parse().expect("ip"), &b));
        assert!(!in_block("10.2.0.1".parse().expect("ip"), &b));
        let one = parse_cidr("127.0.0.1").expect("ip");
        assert!(in_block("::ffff:127.0.0.1".parse().expect("ip"), &one));
        assert!(in_block(
            "2001:db8::1".parse().expect("ip"),
            &parse_cidr("2001:db8::/32").expect("cidr")
        ));
        assert!(in_block(
            "8.8.8.8".parse().expect("ip"),
            &parse_cidr("0.0.0.0/0").expect("cidr")
        ));
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("nope").is_none());
    }

    #[test]
    fn an_ipv4_mapped_entry_allows_only_the_address_it_maps() {
        let mapped = parse_cidr("::ffff:10.0.0.1").expect("ip");
        assert!(in_block("10.0.0.1".parse().expect("ip"), &mapped));
        assert!(in_block("::ffff:10.0.0.1".parse().expect("ip"), &mapped));
        assert!(!in_block("10.0.0.2".parse().expect("ip"), &mapped));
        let block = parse_cidr("::ffff:10.0.0.0/120").expect("cidr");
        assert!(in_block("10.0.0.200".parse().expect("ip"), &block));
        assert!(!in_block("10.0.1.1".parse().expect("ip"), &block));
    }
}
