//! `[credentials.NAME]`: raw and validated upstream credential settings, one tagged variant per kind. Secrets are
//! resolved here, once, into [`SecretString`]s; errors name the key, never a resolved value.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, Method, StatusCode, Uri};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, Ctx, parse_table, secret, section_error, show};

/// A credential as written: a table whose `kind` selects [`RawStatic`], [`RawOAuth2`] or [`RawLogin`]; the token
/// kinds take [`RawTokenSettings`] beside their own keys. [`validate`] parses it, naming the key of any error.
pub(crate) type RawCredential = toml::Table;

/// A credential's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// [`RawStatic`].
    Static,
    /// [`RawOAuth2`].
    Oauth2ClientCredentials,
    /// [`RawLogin`].
    Login,
}

/// `kind = "static"`: fixed secret headers (API keys, Citadel's `X-Access-Client-Id` / `X-Access-Secret`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStatic {
    /// Upstream hosts this credential may be sent to.
    pub allowed_hosts: Vec<String>,
    /// Header name → value; values may use `${ENV}` and `${file:PATH}`.
    pub headers: BTreeMap<String, String>,
}

/// `kind = "oauth2_client_credentials"`: an OAuth2 access token from the client-credentials grant (RFC 6749 §4.4),
/// cached and refreshed ahead.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOAuth2 {
    /// Upstream hosts this credential may be sent to.
    pub allowed_hosts: Vec<String>,
    /// The token endpoint, e.g. `https://sandbox.tropipay.me/api/v2/access/token`.
    pub token_url: String,
    /// Client id; may use `${ENV}`.
    pub client_id: String,
    /// Client secret, `${ENV}` or `${file:PATH}` (exactly one of this and `client_secret_file`).
    pub client_secret: Option<String>,
    /// File holding the client secret.
    pub client_secret_file: Option<PathBuf>,
    /// Scopes requested (sent space-separated).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Extra token request parameters, e.g. `{ audience = "https://api.example" }` or `resource`.
    #[serde(default)]
    pub extra_params: BTreeMap<String, String>,
    /// How the client authenticates: `"basic"` (HTTP Basic, the default) or `"request_body"`.
    pub client_auth: Option<ClientAuthMethod>,
    /// Token request body: `"form"` (RFC 6749, the default) or `"json"` (e.g. TropiPay).
    pub request_format: Option<RequestFormat>,
    /// How to read `expires_in`: `"seconds"` (default), `"unix_time"` or `"auto"` (≥ 10^9 is a timestamp).
    pub expires_in: Option<ExpiresInMode>,
    /// Lifetime assumed when the response gives no `expires_in` and the token is no JWT (default `5m`).
    #[serde(default, with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
    /// Renew with the `refresh_token` grant when one was returned, falling back to client credentials (default true).
    pub use_refresh_token: Option<bool>,
    /// Headers to set, `{token}` marks the token, e.g. `{ "Authorization" = "Bearer {token}" }` (the default).
    pub headers: Option<BTreeMap<String, String>>,
}

/// `kind = "login"`: a token from a login call (e.g. Incode's `POST /executive/log-in`), cached and refreshed ahead.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLogin {
    /// Upstream hosts this credential may be sent to.
    pub allowed_hosts: Vec<String>,
    /// HTTP method of the login call (default `POST`).
    pub method: Option<LoginMethod>,
    /// Login URL.
    pub url: String,
    /// Headers sent to the login call; values may use `${ENV}` and `${file:PATH}`.
    #[serde(default)]
    pub request_headers: BTreeMap<String, String>,
    /// JSON body: a table (string values may use `${...}`) or a JSON text whose `${...}` are JSON-escaped.
    pub body: Option<toml::Value>,
    /// JSON pointer of the token in the response (default `/token`).
    pub token_pointer: Option<String>,
    /// Fixed token lifetime, e.g. `24h`; a JWT's `exp` also bounds it. Without it the token must be a JWT.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Headers to set, `{token}` marks the token; several headers, static and token parts may be mixed.
    pub headers: BTreeMap<String, String>,
}

/// Cache, retry and rejection settings shared by the token kinds, written beside the kind's own keys. It has no
/// `deny_unknown_fields`: the kind's own struct, parsed from the keys left over, rejects unknown keys.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawTokenSettings {
    /// Refresh at least this long before expiry (default: at 80% of the lifetime only).
    #[serde(default, with = "humantime_serde")]
    pub refresh_before: Option<Duration>,
    /// Never inject a token closer than this to its expiry (default `30s`, at most a tenth of the lifetime).
    #[serde(default, with = "humantime_serde")]
    pub expiry_margin: Option<Duration>,
    /// Time allowed for one token request (default `10s`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// First retry delay after a failed token request (default `1s`); doubles per failure, with jitter.
    #[serde(default, with = "humantime_serde")]
    pub backoff_min: Option<Duration>,
    /// Longest retry delay (default `60s`).
    #[serde(default, with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    /// A rejection of a token younger than this keeps the token (default `5s`): a vendor rejecting fresh tokens is
    /// misconfigured, and fetching more would only hammer its token endpoint.
    #[serde(default, with = "humantime_serde")]
    pub min_token_age: Option<Duration>,
    /// Upstream statuses that mean "token rejected" (default `[401]`).
    pub reject_status: Option<Vec<u16>>,
    /// When set, a rejection status counts only if the response body contains this text.
    pub reject_body_marker: Option<String>,
    /// Request bodies up to this many bytes are kept to replay once after a rejection (default 65536).
    pub retry_body_limit: Option<usize>,
    /// Whether `/readyz` waits for this credential's token (`"required"`, the default) or not (`"ignored"`).
    pub readiness: Option<Readiness>,
}

/// Whether a token credential counts for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Not ready until it holds a usable token; its first token is fetched when serving starts.
    #[default]
    Required,
    /// Ready with or without a token (degraded); the first token is fetched on first use.
    Ignored,
}

/// A validated credential.
#[derive(Debug, Serialize)]
#[serde(tag = "kind")]
pub enum CredentialConfig {
    /// Fixed secret headers.
    #[serde(rename = "static")]
    Static(StaticConfig),
    /// OAuth2 client credentials.
    #[serde(rename = "oauth2_client_credentials")]
    OAuth2(OAuth2Config),
    /// Login token.
    #[serde(rename = "login")]
    Login(LoginConfig),
}

/// Validated `kind = "static"`.
#[derive(Debug, Serialize)]
pub struct StaticConfig {
    /// Hosts it may be sent to.
    pub allowed_hosts: Vec<String>,
    /// Headers with resolved secret values.
    #[serde(serialize_with = "show::names")]
    pub headers: Vec<(HeaderName, SecretString)>,
}

/// How the OAuth2 client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// HTTP Basic (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` in the request body (`client_secret_post`).
    RequestBody,
}

/// The token request body encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestFormat {
    /// `application/x-www-form-urlencoded`, as RFC 6749 says.
    Form,
    /// A JSON object of the same parameters.
    Json,
}

/// How `expires_in` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiresInMode {
    /// Seconds from now (RFC 6749).
    Seconds,
    /// Absolute Unix time.
    UnixTime,
    /// A number ≥ 10^9 is a Unix time, a smaller one seconds.
    Auto,
}

/// Validated `kind = "oauth2_client_credentials"`.
#[derive(Debug, Clone, Serialize)]
pub struct OAuth2Config {
    /// Hosts it may be sent to.
    pub allowed_hosts: Vec<String>,
    /// Token endpoint.
    #[serde(serialize_with = "show::display")]
    pub token_url: url::Url,
    /// Client id.
    #[serde(serialize_with = "show::redacted")]
    pub client_id: SecretString,
    /// Client secret.
    #[serde(serialize_with = "show::redacted")]
    pub client_secret: SecretString,
    /// Scopes requested.
    pub scopes: Vec<String>,
    /// Extra request parameters.
    #[serde(serialize_with = "show::names")]
    pub extra_params: Vec<(String, String)>,
    /// Client authentication.
    pub client_auth: ClientAuthMethod,
    /// Body encoding.
    pub request_format: RequestFormat,
    /// `expires_in` reading.
    pub expires_in: ExpiresInMode,
    /// Lifetime when nothing says otherwise.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub default_ttl: Duration,
    /// Try the refresh_token grant first.
    pub use_refresh_token: bool,
    /// Cache, injection and rejection settings.
    pub token: TokenSettings,
}

/// The methods a login call can use; upper or lower case.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum LoginMethod {
    /// `GET`.
    #[serde(alias = "get")]
    Get,
    /// `POST`.
    #[serde(alias = "post")]
    Post,
    /// `PUT`.
    #[serde(alias = "put")]
    Put,
    /// `PATCH`.
    #[serde(alias = "patch")]
    Patch,
}

impl From<LoginMethod> for Method {
    fn from(m: LoginMethod) -> Method {
        match m {
            LoginMethod::Get => Method::GET,
            LoginMethod::Post => Method::POST,
            LoginMethod::Put => Method::PUT,
            LoginMethod::Patch => Method::PATCH,
        }
    }
}

/// Validated `kind = "login"`.
#[derive(Debug, Clone, Serialize)]
pub struct LoginConfig {
    /// Hosts it may be sent to.
    pub allowed_hosts: Vec<String>,
    /// Login method.
    #[serde(serialize_with = "show::display")]
    pub method: Method,
    /// Login URL.
    #[serde(serialize_with = "show::display")]
    pub url: Uri,
    /// Login request headers (secret values).
    #[serde(serialize_with = "show::names")]
    pub request_headers: Vec<(HeaderName, SecretString)>,
    /// Rendered JSON body (holds secrets).
    #[serde(serialize_with = "show::redacted_opt")]
    pub body: Option<SecretString>,
    /// JSON pointer of the token.
    pub token_pointer: String,
    /// Fixed lifetime.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub ttl: Option<Duration>,
    /// Cache, injection and rejection settings.
    pub token: TokenSettings,
}

/// One piece of a header template.
#[derive(Debug, Clone)]
pub enum TemplatePart {
    /// Fixed text (may hold a resolved secret).
    Text(SecretString),
    /// The current token.
    Token,
}

/// A header value with `{token}` placeholders.
#[derive(Debug, Clone)]
pub struct HeaderTemplate {
    /// Pieces in order.
    pub parts: Vec<TemplatePart>,
}

/// Shown as the template with each fixed piece [`show::REDACTED`] (it may hold a secret): `[REDACTED]{token}`.
impl Serialize for HeaderTemplate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let shown: String = self
            .parts
            .iter()
            .map(|p| match p {
                TemplatePart::Text(_) => show::REDACTED,
                TemplatePart::Token => "{token}",
            })
            .collect();
        s.serialize_str(&shown)
    }
}

impl HeaderTemplate {
    /// Render with `token` in place of `{token}`; the result is secret.
    pub fn render(&self, token: &str) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                TemplatePart::Text(t) => out.push_str(t.expose_secret()),
                TemplatePart::Token => out.push_str(token),
            }
        }
        out
    }
}

/// When an upstream answer means "this token was rejected", and what may be replayed.
#[derive(Debug, Clone, Serialize)]
pub struct RejectPolicy {
    /// Statuses that count.
    #[serde(serialize_with = "status_codes")]
    pub statuses: Vec<StatusCode>,
    /// Optional body text that must also be present.
    pub body_marker: Option<String>,
    /// Largest request body kept for one replay.
    pub retry_body_limit: usize,
}

/// Statuses as their numbers, the way they are written.
fn status_codes<S: serde::Serializer>(v: &[StatusCode], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(StatusCode::as_u16))
}

/// Settings shared by the token kinds.
#[derive(Debug, Clone, Serialize)]
pub struct TokenSettings {
    /// Headers set on upstream requests.
    #[serde(serialize_with = "show::map")]
    pub headers: Vec<(HeaderName, HeaderTemplate)>,
    /// Refresh at least this long before expiry.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub refresh_before: Option<Duration>,
    /// Safety margin before expiry.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub expiry_margin: Duration,
    /// One token request's time limit.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub timeout: Duration,
    /// First backoff delay.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub backoff_min: Duration,
    /// Longest backoff delay.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub backoff_max: Duration,
    /// Youngest token a rejection drops; renewals driven by rejections in a row back off from here.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub min_token_age: Duration,
    /// Upstream rejection handling.
    pub reject: RejectPolicy,
    /// Whether readiness waits for a token.
    pub readiness: Readiness,
}

impl CredentialConfig {
    /// Hosts this credential may be sent to.
    pub fn allowed_hosts(&self) -> &[String] {
        match self {
            CredentialConfig::Static(s) => &s.allowed_hosts,
            CredentialConfig::OAuth2(o) => &o.allowed_hosts,
            CredentialConfig::Login(l) => &l.allowed_hosts,
        }
    }
}

/// Parse a header name, naming `key` on failure.
pub(crate) fn header_name(ctx: &Ctx, key: &str, name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::try_from(name)
        .map_err(|_| ctx.invalid(key, format!("{name:?} is not a valid header name")))
}

/// Check `allowed_hosts` is present and non-empty.
pub(crate) fn allowed_hosts(
    ctx: &Ctx,
    key: &str,
    hosts: Vec<String>,
) -> Result<Vec<String>, ConfigError> {
    if hosts.is_empty() {
        return Err(ctx.invalid(
            key,
            "must list at least one upstream host this credential may be sent to",
        ));
    }
    Ok(hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect())
}

/// Validate one credential, named `name`: its `kind` picks the schema the rest of the table is parsed with.
pub(crate) fn validate(
    ctx: &Ctx,
    name: &str,
    mut raw: RawCredential,
) -> Result<CredentialConfig, ConfigError> {
    let prefix = format!("credentials.{name}");
    let k = |f: &str| format!("{prefix}.{f}");
    let kind = raw.remove("kind").ok_or_else(|| {
        ctx.invalid(
            k("kind"),
            "missing: \"static\", \"oauth2_client_credentials\" or \"login\"",
        )
    })?;
    let kind = Kind::deserialize(kind).map_err(|e| ctx.invalid(k("kind"), e.message()))?;
    Ok(match kind {
        Kind::Static => {
            CredentialConfig::Static(static_config(ctx, &k, parse_table(ctx, &prefix, raw)?)?)
        }
        Kind::Oauth2ClientCredentials => {
            let (own, token) = split_token_settings(ctx, &prefix, raw)?;
            CredentialConfig::OAuth2(oauth2_config(ctx, &k, own, token)?)
        }
        Kind::Login => {
            let (own, token) = split_token_settings(ctx, &prefix, raw)?;
            CredentialConfig::Login(login_config(ctx, &k, own, token)?)
        }
    })
}

/// Parse the shared token settings from `raw`, then the kind's own struct `T` from the keys they leave (so `T`'s
/// `deny_unknown_fields` names any key neither knows).
fn split_token_settings<T: DeserializeOwned>(
    ctx: &Ctx,
    prefix: &str,
    mut raw: toml::Table,
) -> Result<(T, RawTokenSettings), ConfigError> {
    let mut not_token = BTreeSet::new();
    let token: RawTokenSettings =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
            toml::Value::Table(raw.clone()),
            &mut |path: serde_ignored::Path<'_>| {
                not_token.insert(path.to_string());
            },
        ))
        .map_err(|e| section_error(ctx, prefix, &e))?;
    raw.retain(|key, _| not_token.contains(key));
    Ok((parse_table(ctx, prefix, raw)?, token))
}

/// `kind = "static"`.
fn static_config(
    ctx: &Ctx,
    k: &impl Fn(&str) -> String,
    raw: RawStatic,
) -> Result<StaticConfig, ConfigError> {
    if raw.headers.is_empty() {
        return Err(ctx.invalid(
            k("headers"),
            "a static credential needs at least one header",
        ));
    }
    Ok(StaticConfig {
        headers: secret_headers(ctx, &k("headers"), raw.headers)?,
        allowed_hosts: allowed_hosts(ctx, &k("allowed_hosts"), raw.allowed_hosts)?,
    })
}

/// `kind = "oauth2_client_credentials"`.
fn oauth2_config(
    ctx: &Ctx,
    k: &impl Fn(&str) -> String,
    raw: RawOAuth2,
    token: RawTokenSettings,
) -> Result<OAuth2Config, ConfigError> {
    let token_url = url::Url::parse(&raw.token_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            ctx.invalid(
                k("token_url"),
                format!("{:?} is not an http(s) URL", raw.token_url),
            )
        })?;
    if token_url.scheme() == "http"
        && !token_url
            .host_str()
            .is_some_and(crate::config::is_loopback_host)
    {
        return Err(ctx.invalid(
            k("token_url"),
            format!(
                "{:?} must be https:// (plain http only on loopback): it carries the client secret",
                raw.token_url
            ),
        ));
    }
    let headers = raw.headers.unwrap_or_else(|| {
        BTreeMap::from([("Authorization".to_owned(), "Bearer {token}".to_owned())])
    });
    Ok(OAuth2Config {
        allowed_hosts: allowed_hosts(ctx, &k("allowed_hosts"), raw.allowed_hosts)?,
        token_url,
        client_id: secret::expand(ctx, &raw.client_id)
            .map_err(|e| ctx.invalid(k("client_id"), e))?,
        client_secret: client_secret(
            ctx,
            k,
            raw.client_secret.as_deref(),
            raw.client_secret_file.as_deref(),
        )?,
        scopes: raw.scopes,
        extra_params: extra_params(ctx, k, raw.extra_params)?,
        client_auth: raw.client_auth.unwrap_or(ClientAuthMethod::Basic),
        request_format: raw.request_format.unwrap_or(RequestFormat::Form),
        expires_in: raw.expires_in.unwrap_or(ExpiresInMode::Seconds),
        default_ttl: raw.default_ttl.unwrap_or(Duration::from_secs(300)),
        use_refresh_token: raw.use_refresh_token.unwrap_or(true),
        token: token_settings(ctx, k, headers, token)?,
    })
}

/// Exactly one of `client_secret` and `client_secret_file`, resolved.
fn client_secret(
    ctx: &Ctx,
    k: &impl Fn(&str) -> String,
    inline: Option<&str>,
    file: Option<&Path>,
) -> Result<SecretString, ConfigError> {
    if inline.is_some() && file.is_some() {
        return Err(ctx.invalid(
            k("client_secret_file"),
            "set both client_secret and client_secret_file; keep one",
        ));
    }
    secret::resolve(ctx, inline, file)
        .map_err(|e| ctx.invalid(k("client_secret"), e))?
        .ok_or_else(|| {
            ctx.invalid(
                k("client_secret"),
                "missing: set client_secret or client_secret_file",
            )
        })
}

/// Extra token request parameters: none may be one the gateway sets itself.
fn extra_params(
    ctx: &Ctx,
    k: &impl Fn(&str) -> String,
    raw: BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut params = Vec::new();
    for (p, v) in raw {
        let key = k(&format!("extra_params.{p}"));
        if matches!(
            p.as_str(),
            "grant_type" | "client_id" | "client_secret" | "scope" | "refresh_token"
        ) {
            return Err(ctx.invalid(key, "is set by the gateway itself"));
        }
        let v = secret::expand(ctx, &v).map_err(|e| ctx.invalid(&key, e))?;
        params.push((p, v.expose_secret().to_owned()));
    }
    Ok(params)
}

/// `kind = "login"`.
fn login_config(
    ctx: &Ctx,
    k: &impl Fn(&str) -> String,
    raw: RawLogin,
    token: RawTokenSettings,
) -> Result<LoginConfig, ConfigError> {
    let method = raw.method.map_or(Method::POST, Method::from);
    let url: Uri = raw
        .url
        .parse()
        .ok()
        .filter(|u: &Uri| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
        .ok_or_else(|| ctx.invalid(k("url"), format!("{:?} is not an http(s) URL", raw.url)))?;
    if url.scheme_str() == Some("http") && !url.host().is_some_and(crate::config::is_loopback_host)
    {
        return Err(ctx.invalid(
            k("url"),
            format!(
                "{:?} must be https:// (plain http only on loopback): it carries the login secret",
                raw.url
            ),
        ));
    }
    let token_pointer = raw.token_pointer.unwrap_or_else(|| "/token".to_owned());
    if !token_pointer.starts_with('/') {
        return Err(ctx.invalid(
            k("token_pointer"),
            "a JSON pointer starts with /, e.g. \"/token\"",
        ));
    }
    if raw.headers.is_empty() {
        return Err(ctx.invalid(
            k("headers"),
            "missing: the headers to set, e.g. { \"X-Incode-Hardware-Id\" = \"{token}\" }",
        ));
    }
    Ok(LoginConfig {
        allowed_hosts: allowed_hosts(ctx, &k("allowed_hosts"), raw.allowed_hosts)?,
        method,
        url,
        request_headers: secret_headers(ctx, &k("request_headers"), raw.request_headers)?,
        body: raw
            .body
            .map(|b| login_body(ctx, &k("body"), &b))
            .transpose()?,
        token_pointer,
        ttl: raw.ttl,
        token: token_settings(ctx, k, raw.headers, token)?,
    })
}

/// Header name → secret value (`${...}` resolved); `key` is the table's key.
fn secret_headers(
    ctx: &Ctx,
    key: &str,
    raw: BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, SecretString)>, ConfigError> {
    let mut out = Vec::new();
    for (h, v) in raw {
        let key = format!("{key}.{h}");
        let name = header_name(ctx, &key, &h)?;
        out.push((
            name,
            secret::expand(ctx, &v).map_err(|e| ctx.invalid(&key, e))?,
        ));
    }
    Ok(out)
}

/// The token kinds' shared settings, with the headers that carry the token.
fn token_settings(
    ctx: &Ctx,
    k: &impl Fn(&str) -> String,
    headers: BTreeMap<String, String>,
    raw: RawTokenSettings,
) -> Result<TokenSettings, ConfigError> {
    let backoff_min = raw.backoff_min.unwrap_or(Duration::from_secs(1));
    let backoff_max = raw.backoff_max.unwrap_or(Duration::from_secs(60));
    if backoff_min.is_zero() || backoff_max < backoff_min {
        return Err(ctx.invalid(
            k("backoff_max"),
            "backoff_min must be above zero and backoff_max at least backoff_min",
        ));
    }
    let timeout = raw.timeout.unwrap_or(Duration::from_secs(10));
    if timeout.is_zero() {
        return Err(ctx.invalid(k("timeout"), "must be above zero"));
    }
    Ok(TokenSettings {
        headers: token_headers(ctx, k, headers)?,
        refresh_before: raw.refresh_before,
        expiry_margin: raw.expiry_margin.unwrap_or(Duration::from_secs(30)),
        timeout,
        backoff_min,
        backoff_max,
        min_token_age: raw.min_token_age.unwrap_or(Duration::from_secs(5)),
        reject: RejectPolicy {
            statuses: reject_statuses(ctx, &k("reject_status"), raw.reject_status)?,
            body_marker: raw.reject_body_marker.filter(|m| !m.is_empty()),
            retry_body_limit: raw.retry_body_limit.unwrap_or(64 * 1024),
        },
        readiness: raw.readiness.unwrap_or_default(),
    })
}

/// Header templates, at least one of which carries `{token}`.
fn token_headers(
    ctx: &Ctx,
    k: &impl Fn(&str) -> String,
    raw: BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderTemplate)>, ConfigError> {
    let mut headers = Vec::new();
    let mut uses_token = false;
    for (h, v) in raw {
        let key = k(&format!("headers.{h}"));
        let name = header_name(ctx, &key, &h)?;
        let t = header_template(ctx, &key, &v)?;
        uses_token |= t.parts.iter().any(|p| matches!(p, TemplatePart::Token));
        headers.push((name, t));
    }
    if !uses_token {
        return Err(ctx.invalid(
            k("headers"),
            "no header uses {token}; the fetched token would never be sent",
        ));
    }
    Ok(headers)
}

/// `reject_status`: 4xx or 5xx codes, `[401]` by default.
fn reject_statuses(
    ctx: &Ctx,
    key: &str,
    raw: Option<Vec<u16>>,
) -> Result<Vec<StatusCode>, ConfigError> {
    raw.unwrap_or_else(|| vec![401])
        .into_iter()
        .map(|s| {
            StatusCode::from_u16(s)
                .ok()
                .filter(|c| c.is_client_error() || c.is_server_error())
                .ok_or_else(|| ctx.invalid(key, format!("{s} is not a 4xx or 5xx status")))
        })
        .collect()
}

/// Split a header value on `{token}`; the fixed pieces may hold `${...}` secret references.
fn header_template(ctx: &Ctx, key: &str, raw: &str) -> Result<HeaderTemplate, ConfigError> {
    let mut parts = Vec::new();
    for (i, piece) in raw.split("{token}").enumerate() {
        if i > 0 {
            parts.push(TemplatePart::Token);
        }
        if !piece.is_empty() {
            let text = secret::expand(ctx, piece).map_err(|e| ctx.invalid(key, e))?;
            if http::HeaderValue::from_str(text.expose_secret()).is_err() {
                return Err(ctx.invalid(key, "is not a valid header value"));
            }
            parts.push(TemplatePart::Text(text));
        }
    }
    Ok(HeaderTemplate { parts })
}

/// Render the login body: a TOML table becomes a JSON object (string values may reference secrets), a string is JSON
/// text whose `${...}` references are replaced JSON-escaped. Either way the result must be valid JSON.
fn login_body(ctx: &Ctx, key: &str, raw: &toml::Value) -> Result<SecretString, ConfigError> {
    let text = match raw {
        toml::Value::String(template) => json_template(ctx, key, template)?,
        toml::Value::Table(_) => {
            let v = toml_to_json(ctx, key, raw)?;
            serde_json::to_string(&v).map_err(|_| ctx.invalid(key, "cannot be encoded as JSON"))?
        }
        _ => {
            return Err(ctx.invalid(key, "must be a table or a JSON text"));
        }
    };
    if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err() {
        // The text may hold secrets: name the key only.
        return Err(ctx.invalid(key, "is not valid JSON after substitution"));
    }
    Ok(SecretString::from(text))
}

/// A JSON text with `${...}` references, each value inserted JSON-escaped (it lands inside a JSON string).
fn json_template(ctx: &Ctx, key: &str, template: &str) -> Result<String, ConfigError> {
    let text = secret::expand_with(ctx, template, |value| {
        if value.is_empty() {
            return Err(secret::SecretError::Empty);
        }
        let quoted = serde_json::Value::from(value).to_string();
        Ok(quoted[1..quoted.len() - 1].to_owned())
    })
    .map_err(|e| ctx.invalid(key, e))?;
    Ok(text.expose_secret().to_owned())
}

fn toml_to_json(ctx: &Ctx, key: &str, v: &toml::Value) -> Result<serde_json::Value, ConfigError> {
    Ok(match v {
        toml::Value::String(s) => {
            let s = secret::expand(ctx, s).map_err(|e| ctx.invalid(key, e))?;
            serde_json::Value::String(s.expose_secret().to_owned())
        }
        toml::Value::Integer(i) => serde_json::Value::from(*i),
        toml::Value::Float(f) => serde_json::Value::from(*f),
        toml::Value::Boolean(b) => serde_json::Value::Bool(*b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(
            a.iter()
                .map(|x| toml_to_json(ctx, key, x))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => serde_json::Value::Object(
            t.iter()
                .map(|(k2, x)| Ok((k2.clone(), toml_to_json(ctx, &format!("{key}.{k2}"), x)?)))
                .collect::<Result<_, ConfigError>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<CredentialConfig, ConfigError> {
        let raw: RawCredential = toml::from_str(toml_text).expect("toml");
        validate(&Ctx::new("<t>"), "c", raw)
    }

    #[test]
    fn json_template_escapes_substituted_secrets() {
        let dir = std::env::temp_dir().join(format!("credgate-cfgcred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("pw");
        std::fs::write(&f, "p\"a\\ss\n").expect("write");
        let cfg = parse(&format!(
            r#"kind = "login"
allowed_hosts = ["h"]
url = "https://h/executive/log-in"
body = '{{"email": "a@b", "password": "${{file:{}}}"}}'
headers = {{ "X-Incode-Hardware-Id" = "{{token}}" }}
"#,
            f.display()
        ))
        .expect("valid");
        let CredentialConfig::Login(l) = cfg else {
            panic!("login expected")
        };
        let body: serde_json::Value =
            serde_json::from_str(l.body.as_ref().expect("body").expose_secret()).expect("json");
        assert_eq!(body["password"], "p\"a\\ss");
        assert_eq!(l.token_pointer, "/token");
        assert_eq!(l.method, Method::POST);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn oauth2_defaults_and_errors_name_the_key() {
        let cfg = parse(
            r#"kind = "oauth2_client_credentials"
allowed_hosts = ["api.example"]
token_url = "https://idp.example/token"
client_id = "id"
client_secret = "s"
"#,
        )
        .expect("valid");
        let CredentialConfig::OAuth2(o) = cfg else {
            panic!("oauth2 expected")
        };
        assert_eq!(o.client_auth, ClientAuthMethod::Basic);
        assert_eq!(o.request_format, RequestFormat::Form);
        assert_eq!(o.expires_in, ExpiresInMode::Seconds);
        assert_eq!(o.token.headers[0].0, "authorization");
        assert_eq!(o.token.headers[0].1.render("T"), "Bearer T");
        assert_eq!(o.token.reject.statuses, vec![StatusCode::UNAUTHORIZED]);

        let err = parse(
            r#"kind = "oauth2_client_credentials"
allowed_hosts = ["api.example"]
token_url = "https://idp.example/token"
client_id = "id"
client_secret = "s"
expires_in = "days"
"#,
        )
        .expect_err("bad mode");
        assert!(
            err.to_string().contains("credentials.c.expires_in"),
            "{err}"
        );

        let err = parse(
            r#"kind = "oauth2_client_credentials"
allowed_hosts = ["api.example"]
token_url = "https://idp.example/token"
client_id = "id"
"#,
        )
        .expect_err("no secret");
        assert!(
            err.to_string().contains("credentials.c.client_secret"),
            "{err}"
        );
    }

    #[test]
    fn login_method_is_one_of_the_login_verbs_in_either_case() {
        let login = |method: &str| {
            parse(&format!(
                "kind = \"login\"\nallowed_hosts = [\"h\"]\nmethod = \"{method}\"\nurl = \"https://h/login\"\nheaders = {{ \"x-token\" = \"{{token}}\" }}\n"
            ))
        };
        for (written, method) in [("put", Method::PUT), ("GET", Method::GET)] {
            let cfg = login(written).unwrap_or_else(|e| panic!("{written}: {e}"));
            let CredentialConfig::Login(l) = cfg else {
                panic!("login expected")
            };
            assert_eq!(l.method, method);
        }
        let err = login("DELETE").expect_err("not a login verb");
        assert!(err.to_string().contains("credentials.c.method"), "{err}");
    }

    #[test]
    fn headers_without_token_are_refused() {
        let err = parse(
            r#"kind = "login"
allowed_hosts = ["h"]
url = "https://h/login"
headers = { "x-api-key" = "k" }
"#,
        )
        .expect_err("no token header");
        assert!(err.to_string().contains("credentials.c.headers"), "{err}");
    }

    #[test]
    fn shared_token_settings_apply_and_every_bad_key_is_named() {
        let base = r#"kind = "login"
allowed_hosts = ["h"]
url = "https://h/login"
headers = { "X-T" = "{token}" }
"#;
        let cfg = parse(&format!("{base}timeout = \"3s\"\nretry_body_limit = 7\n")).expect("valid");
        let CredentialConfig::Login(l) = cfg else {
            panic!("login expected")
        };
        assert_eq!(l.token.timeout, Duration::from_secs(3));
        assert_eq!(l.token.reject.retry_body_limit, 7);
        for (extra, key) in [
            ("timeout = \"soon\"", "credentials.c.timeout"),
            ("bogus = 1", "credentials.c.bogus"),
            ("token_url = \"https://x/\"", "credentials.c.token_url"),
            ("kind = \"magic\"", "credentials.c.kind"),
        ] {
            let text = format!("{base}{extra}\n").replace("kind = \"login\"\n", "");
            let text = if extra.starts_with("kind") {
                text
            } else {
                format!("kind = \"login\"\n{text}")
            };
            let err = parse(&text).expect_err(extra);
            assert!(err.to_string().contains(key), "{key} not in {err}");
        }
    }
}
