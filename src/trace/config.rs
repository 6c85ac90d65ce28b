//! `[tracing]`: OTLP span export, off when the section is absent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rustls::pki_types::CertificateDer;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{self, ConfigError, Ctx, secret, show};

/// `[tracing]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// Where spans go: an OTLP/HTTP collector's traces URL (`http://127.0.0.1:4318/v1/traces`); a bare
    /// `scheme://host:port` gets `/v1/traces`.
    pub otlp_endpoint: String,
    /// `service.name` of the spans (default `credgate`).
    pub service_name: Option<String>,
    /// The share of traces started here that are recorded, 0 to 1 (default 1). A caller's trace follows its
    /// `sampled` flag.
    pub sample_ratio: Option<f64>,
    /// Headers sent with each export (a collector's API key), values as secret references (`${ENV}`, `${file:…}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra CA certificates (PEM) trusted for an `https://` collector, besides the webpki roots.
    pub ca: Option<PathBuf>,
    /// How long one export may take (default `10s`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// How long ended spans wait to be sent in a batch (default `5s`).
    #[serde(default, with = "humantime_serde")]
    pub batch_delay: Option<Duration>,
    /// Ended spans kept waiting for export at most; beyond it new spans are dropped (default 2048).
    pub max_queue: Option<usize>,
}

/// The validated `[tracing]` section.
#[derive(Debug, Serialize)]
pub struct TracingConfig {
    /// The collector's traces URL.
    pub endpoint: String,
    /// `service.name`.
    pub service_name: String,
    /// Share of traces started here that are recorded.
    pub sample_ratio: f64,
    /// Headers sent with each export.
    #[serde(serialize_with = "show::names")]
    pub headers: Vec<(HeaderName, SecretString)>,
    /// Extra trusted CAs for the collector.
    #[serde(serialize_with = "show::certs")]
    pub extra_ca: Vec<CertificateDer<'static>>,
    /// Export timeout.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub timeout: Duration,
    /// Batch delay.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub batch_delay: Duration,
    /// Export queue bound.
    pub max_queue: usize,
}

/// Check `[tracing]`, reading its secrets and CA file.
pub fn validate(ctx: &Ctx, raw: RawTracing) -> Result<TracingConfig, ConfigError> {
    let (scheme, authority, host, path) =
        config::parse_base_url(ctx, "tracing.otlp_endpoint", &raw.otlp_endpoint)?;
    let path = if path.is_empty() {
        "/v1/traces".to_owned()
    } else {
        path
    };
    let mut headers = Vec::new();
    for (name, value) in raw.headers {
        let key = format!("tracing.headers.{name}");
        let header = HeaderName::try_from(name.as_str())
            .map_err(|_| ctx.invalid(&key, format!("{name:?} is not a valid header name")))?;
        let value = secret::expand(ctx, &value).map_err(|e| ctx.invalid(&key, e))?;
        if HeaderValue::from_str(value.expose_secret()).is_err() {
            return Err(ctx.invalid(&key, "the value is not a valid header value"));
        }
        headers.push((header, value));
    }
    // The headers are the collector's credentials: they travel in clear only to this machine.
    if !headers.is_empty() && scheme == http::uri::Scheme::HTTP && !config::is_loopback_host(&host)
    {
        return Err(ctx.invalid(
            "tracing.otlp_endpoint",
            "plain http:// to another machine would send tracing.headers in clear; use https://",
        ));
    }
    let extra_ca = match &raw.ca {
        Some(p) if scheme == http::uri::Scheme::HTTPS => config::read_certs(ctx, "tracing.ca", p)?,
        Some(_) => return Err(ctx.invalid("tracing.ca", "set on a plain http:// endpoint")),
        None => Vec::new(),
    };
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(ctx.invalid("tracing.sample_ratio", "must be between 0 and 1"));
    }
    let service_name = raw.service_name.unwrap_or_else(|| "credgate".to_owned());
    if service_name.is_empty() {
        return Err(ctx.invalid("tracing.service_name", "must not be empty"));
    }
    let positive = |key: &str, d: Option<Duration>, default: Duration| match d {
        Some(d) if d.is_zero() => Err(ctx.invalid(key, "must be above zero")),
        d => Ok(d.unwrap_or(default)),
    };
    let max_queue = raw.max_queue.unwrap_or(2048);
    if max_queue == 0 {
        return Err(ctx.invalid("tracing.max_queue", "must be above zero"));
    }
    Ok(TracingConfig {
        endpoint: format!("{scheme}://{authority}{path}"),
        service_name,
        sample_ratio,
        headers,
        extra_ca,
        timeout: positive("tracing.timeout", raw.timeout, Duration::from_secs(10))?,
        batch_delay: positive(
            "tracing.batch_delay",
            raw.batch_delay,
            Duration::from_secs(5),
        )?,
        max_queue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TracingConfig, ConfigError> {
        let raw: RawTracing =
            toml::from_str(text).map_err(|e| Ctx::new("<t>").invalid("toml", e))?;
        validate(&Ctx::new("<t>"), raw)
    }

    fn key_of(r: Result<TracingConfig, ConfigError>) -> String {
        match r {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_a_bare_endpoint_get_the_traces_path() {
        let c = parse("otlp_endpoint = \"http://127.0.0.1:4318\"").expect("valid");
        assert_eq!(c.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(c.service_name, "credgate");
        assert!((c.sample_ratio - 1.0).abs() < f64::EPSILON);
        assert_eq!(
            (c.timeout, c.batch_delay, c.max_queue),
            (Duration::from_secs(10), Duration::from_secs(5), 2048)
        );
        let c = parse("otlp_endpoint = \"https://otel.example/custom/traces/\"").expect("valid");
        assert_eq!(c.endpoint, "https://otel.example/custom/traces");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("otlp_endpoint = \"otel:4318\"", "tracing.otlp_endpoint"),
            (
                "otlp_endpoint = \"http://otel.example:4318\"\nheaders = { k = \"v\" }",
                "tracing.otlp_endpoint",
            ),
            (
                "otlp_endpoint = \"http://127.0.0.1:4318\"\nheaders = { \"bad name\" = \"v\" }",
                "tracing.headers.bad name",
            ),
            (
                "otlp_endpoint = \"http://127.0.0.1:4318\"\nheaders = { k = \"line\\nbreak\" }",
                "tracing.headers.k",
            ),
            (
                "otlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 1.5",
                "tracing.sample_ratio",
            ),
            (
                "otlp_endpoint = \"http://127.0.0.1:4318\"\nbatch_delay = \"0s\"",
                "tracing.batch_delay",
            ),
            (
                "otlp_endpoint = \"http://127.0.0.1:4318\"\nca = \"/nonexistent\"",
                "tracing.ca",
            ),
            (
                "otlp_endpoint = \"http://127.0.0.1:4318\"\nmax_queue = 0",
                "tracing.max_queue",
            ),
        ] {
            assert_eq!(key_of(parse(text)), key, "{text}");
        }
        // Without headers a plain collector elsewhere is allowed: spans carry no secrets.
        parse("otlp_endpoint = \"http://otel.example:4318\"").expect("no headers");
    }
}
