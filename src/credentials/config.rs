//! `[credentials.NAME]`: raw and validated upstream credential settings, one tagged variant per kind. Secrets are
//! resolved here, once, into [`SecretString`]s; errors name the key, never a resolved value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode, Uri};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::{ConfigError, Ctx, duration, secret};

/// A credential as written; `kind` selects the variant.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawCredential {
    /// Fixed secret headers (API keys, Citadel's `X-Access-Client-Id` / `X-Access-Secret`).
    Static {
        /// Upstream hosts this credential may be sent to.
        allowed_hosts: Vec<String>,
        /// Header name → value; values may use `${ENV}` and `${file:PATH}`.
        headers: BTreeMap<String, String>,
    },
    /// An OAuth2 access token from the client-credentials grant (RFC 6749 §4.4), cached and refreshed ahead.
    Oauth2ClientCredentials {
        /// Upstream hosts this credential may be sent to.
        allowed_hosts: Vec<String>,
        /// The token endpoint, e.g. `https://sandbox.tropipay.me/api/v2/access/token`.
        token_url: String,
        /// Client id; may use `${ENV}`.
        client_id: String,
        /// Client secret, `${ENV}` or `${file:PATH}` (exactly one of this and `client_secret_file`).
        client_secret: Option<String>,
        /// File holding the client secret.
        client_secret_file: Option<PathBuf>,
        /// Scopes requested (sent space-separated).
        #[serde(default)]
        scopes: Vec<String>,
        /// Extra token request parameters, e.g. `{ audience = "https://api.example" }` or `resource`.
        #[serde(default)]
        extra_params: BTreeMap<String, String>,
        /// How the client authenticates: `"basic"` (HTTP Basic, the default) or `"request_body"`.
        client_auth: Option<String>,
        /// Token request body: `"form"` (RFC 6749, the default) or `"json"` (e.g. TropiPay).
        request_format: Option<String>,
        /// How to read `expires_in`: `"seconds"` (default), `"unix_time"` or `"auto"` (≥ 10^9 is a timestamp).
        expires_in: Option<String>,
        /// Lifetime assumed when the response gives no `expires_in` and the token is no JWT (default `5m`).
        default_ttl: Option<String>,
        /// Renew with the `refresh_token` grant when one was returned, falling back to client credentials (default true).
        use_refresh_token: Option<bool>,
        /// Headers to set, `{token}` marks the token, e.g. `{ "Authorization" = "Bearer {token}" }` (the default).
        headers: Option<BTreeMap<String, String>>,
        /// Refresh at least this long before expiry (default: at 80% of the lifetime only).
        refresh_before: Option<String>,
        /// Never inject a token closer than this to its expiry (default `30s`, at most a tenth of the lifetime).
        expiry_margin: Option<String>,
        /// Time allowed for one token request (default `10s`).
        timeout: Option<String>,
        /// First retry delay after a failed token request (default `1s`); doubles per failure, with jitter.
        backoff_min: Option<String>,
        /// Longest retry delay (default `60s`).
        backoff_max: Option<String>,
        /// Upstream statuses that mean "token rejected" (default `[401]`).
        reject_status: Option<Vec<u16>>,
        /// When set, a rejection status counts only if the response body contains this text.
        reject_body_marker: Option<String>,
        /// Request bodies up to this many bytes are kept to replay once after a rejection (default 65536).
        retry_body_limit: Option<usize>,
    },
    /// A token from a login call (e.g. Incode's `POST /executive/log-in`), cached and refreshed ahead.
    Login {
        /// Upstream hosts this credential may be sent to.
        allowed_hosts: Vec<String>,
        /// HTTP method of the login call (default `POST`).
        method: Option<String>,
        /// Login URL.
        url: String,
        /// Headers sent to the login call; values may use `${ENV}` and `${file:PATH}`.
        #[serde(default)]
        request_headers: BTreeMap<String, String>,
        /// JSON body: a table (string values may use `${...}`) or a JSON text whose `${...}` are JSON-escaped.
        body: Option<toml::Value>,
        /// JSON pointer of the token in the response (default `/token`).
        token_pointer: Option<String>,
        /// Fixed token lifetime, e.g. `24h`; a JWT's `exp` also bounds it. Without it the token must be a JWT.
        ttl: Option<String>,
        /// Headers to set, `{token}` marks the token; several headers, static and token parts may be mixed.
        headers: BTreeMap<String, String>,
        /// Refresh at least this long before expiry (default: at 80% of the lifetime only).
        refresh_before: Option<String>,
        /// Never inject a token closer than this to its expiry (default `30s`, at most a tenth of the lifetime).
        expiry_margin: Option<String>,
        /// Time allowed for one login call (default `10s`).
        timeout: Option<String>,
        /// First retry delay after a failed login (default `1s`); doubles per failure, with jitter.
        backoff_min: Option<String>,
        /// Longest retry delay (default `60s`).
        backoff_max: Option<String>,
        /// Upstream statuses that mean "token rejected" (default `[401]`).
        reject_status: Option<Vec<u16>>,
        /// When set, a rejection status counts only if the response body contains this text.
        reject_body_marker: Option<String>,
        /// Request bodies up to this many bytes are kept to replay once after a rejection (default 65536).
        retry_body_limit: Option<usize>,
    },
}

/// A validated credential.
#[derive(Debug)]
pub enum CredentialConfig {
    /// Fixed secret headers.
    Static(StaticConfig),
    /// OAuth2 client credentials.
    OAuth2(OAuth2Config),
    /// Login token.
    Login(LoginConfig),
}

/// Validated `kind = "static"`.
#[derive(Debug)]
pub struct StaticConfig {
    /// Hosts it may be sent to.
    pub allowed_hosts: Vec<String>,
    /// Headers with resolved secret values.
    pub headers: Vec<(HeaderName, SecretString)>,
}

/// How the OAuth2 client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// HTTP Basic (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` in the request body (`client_secret_post`).
    RequestBody,
}

/// The token request body encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFormat {
    /// `application/x-www-form-urlencoded`, as RFC 6749 says.
    Form,
    /// A JSON object of the same parameters.
    Json,
}

/// How `expires_in` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiresInMode {
    /// Seconds from now (RFC 6749).
    Seconds,
    /// Absolute Unix time.
    UnixTime,
    /// A number ≥ 10^9 is a Unix time, a smaller one seconds.
    Auto,
}

/// Validated `kind = "oauth2_client_credentials"`.
#[derive(Debug, Clone)]
pub struct OAuth2Config {
    /// Hosts it may be sent to.
    pub allowed_hosts: Vec<String>,
    /// Token endpoint.
    pub token_url: url::Url,
    /// Client id.
    pub client_id: SecretString,
    /// Client secret.
    pub client_secret: SecretString,
    /// Scopes requested.
    pub scopes: Vec<String>,
    /// Extra request parameters.
    pub extra_params: Vec<(String, String)>,
    /// Client authentication.
    pub client_auth: ClientAuthMethod,
    /// Body encoding.
    pub request_format: RequestFormat,
    /// `expires_in` reading.
    pub expires_in: ExpiresInMode,
    /// Lifetime when nothing says otherwise.
    pub default_ttl: Duration,
    /// Try the refresh_token grant first.
    pub use_refresh_token: bool,
    /// Cache, injection and rejection settings.
    pub token: TokenSettings,
}

/// Validated `kind = "login"`.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// Hosts it may be sent to.
    pub allowed_hosts: Vec<String>,
    /// Login method.
    pub method: Method,
    /// Login URL.
    pub url: Uri,
    /// Login request headers (secret values).
    pub request_headers: Vec<(HeaderName, SecretString)>,
    /// Rendered JSON body (holds secrets).
    pub body: Option<SecretString>,
    /// JSON pointer of the token.
    pub token_pointer: String,
    /// Fixed lifetime.
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
#[derive(Debug, Clone)]
pub struct RejectPolicy {
    /// Statuses that count.
    pub statuses: Vec<StatusCode>,
    /// Optional body text that must also be present.
    pub body_marker: Option<String>,
    /// Largest request body kept for one replay.
    pub retry_body_limit: usize,
}

/// Settings shared by the token kinds.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Headers set on upstream requests.
    pub headers: Vec<(HeaderName, HeaderTemplate)>,
    /// Refresh at least this long before expiry.
    pub refresh_before: Option<Duration>,
    /// Safety margin before expiry.
    pub expiry_margin: Duration,
    /// One token request's time limit.
    pub timeout: Duration,
    /// First backoff delay.
    pub backoff_min: Duration,
    /// Longest backoff delay.
    pub backoff_max: Duration,
    /// Upstream rejection handling.
    pub reject: RejectPolicy,
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
pub fn header_name(ctx: &Ctx, key: &str, name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::try_from(name)
        .map_err(|_| ctx.invalid(key, format!("{name:?} is not a valid header name")))
}

/// Check `allowed_hosts` is present and non-empty.
pub fn allowed_hosts(ctx: &Ctx, key: &str, hosts: Vec<String>) -> Result<Vec<String>, ConfigError> {
    if hosts.is_empty() {
        return Err(ctx.invalid(
            key,
            "must list at least one upstream host this credential may be sent to",
        ));
    }
    Ok(hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect())
}

/// Settings common to the token kinds, as written.
struct RawTokenSettings {
    headers: BTreeMap<String, String>,
    refresh_before: Option<String>,
    expiry_margin: Option<String>,
    timeout: Option<String>,
    backoff_min: Option<String>,
    backoff_max: Option<String>,
    reject_status: Option<Vec<u16>>,
    reject_body_marker: Option<String>,
    retry_body_limit: Option<usize>,
}

/// Validate one credential.
pub fn validate(
    ctx: &Ctx,
    name: &str,
    raw: RawCredential,
) -> Result<CredentialConfig, ConfigError> {
    let k = |f: &str| format!("credentials.{name}.{f}");
    match raw {
        RawCredential::Static {
            allowed_hosts: hosts,
            headers,
        } => {
            if headers.is_empty() {
                return Err(ctx.invalid(
                    k("headers"),
                    "a static credential needs at least one header",
                ));
            }
            let mut out = Vec::new();
            for (h, v) in headers {
                let key = k(&format!("headers.{h}"));
                let hn = header_name(ctx, &key, &h)?;
                let value = secret::expand(&v).map_err(|e| ctx.invalid(&key, e))?;
                out.push((hn, value));
            }
            Ok(CredentialConfig::Static(StaticConfig {
                allowed_hosts: allowed_hosts(ctx, &k("allowed_hosts"), hosts)?,
                headers: out,
            }))
        }
        RawCredential::Oauth2ClientCredentials {
            allowed_hosts: hosts,
            token_url,
            client_id,
            client_secret,
            client_secret_file,
            scopes,
            extra_params,
            client_auth,
            request_format,
            expires_in,
            default_ttl,
            use_refresh_token,
            headers,
            refresh_before,
            expiry_margin,
            timeout,
            backoff_min,
            backoff_max,
            reject_status,
            reject_body_marker,
            retry_body_limit,
        } => {
            let token_url = url::Url::parse(&token_url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| {
                    ctx.invalid(
                        k("token_url"),
                        format!("{token_url:?} is not an http(s) URL"),
                    )
                })?;
            let client_id =
                secret::expand(&client_id).map_err(|e| ctx.invalid(k("client_id"), e))?;
            if client_secret.is_some() && client_secret_file.is_some() {
                return Err(ctx.invalid(
                    k("client_secret_file"),
                    "set both client_secret and client_secret_file; keep one",
                ));
            }
            let client_secret =
                secret::resolve(client_secret.as_deref(), client_secret_file.as_deref())
                    .map_err(|e| ctx.invalid(k("client_secret"), e))?
                    .ok_or_else(|| {
                        ctx.invalid(
                            k("client_secret"),
                            "missing: set client_secret or client_secret_file",
                        )
                    })?;
            let client_auth = match client_auth.as_deref() {
                None | Some("basic") => ClientAuthMethod::Basic,
                Some("request_body") => ClientAuthMethod::RequestBody,
                Some(o) => {
                    return Err(ctx.invalid(
                        k("client_auth"),
                        format!("{o:?} is not \"basic\" or \"request_body\""),
                    ));
                }
            };
            let request_format = match request_format.as_deref() {
                None | Some("form") => RequestFormat::Form,
                Some("json") => RequestFormat::Json,
                Some(o) => {
                    return Err(ctx.invalid(
                        k("request_format"),
                        format!("{o:?} is not \"form\" or \"json\""),
                    ));
                }
            };
            let expires_in = match expires_in.as_deref() {
                None | Some("seconds") => ExpiresInMode::Seconds,
                Some("unix_time") => ExpiresInMode::UnixTime,
                Some("auto") => ExpiresInMode::Auto,
                Some(o) => {
                    return Err(ctx.invalid(
                        k("expires_in"),
                        format!("{o:?} is not \"seconds\", \"unix_time\" or \"auto\""),
                    ));
                }
            };
            let mut params = Vec::new();
            for (p, v) in extra_params {
                let key = k(&format!("extra_params.{p}"));
                if matches!(
                    p.as_str(),
                    "grant_type" | "client_id" | "client_secret" | "scope" | "refresh_token"
                ) {
                    return Err(ctx.invalid(key, "is set by the gateway itself"));
                }
                let v = secret::expand(&v).map_err(|e| ctx.invalid(&key, e))?;
                params.push((p, v.expose_secret().to_owned()));
            }
            let headers = headers.unwrap_or_else(|| {
                BTreeMap::from([("Authorization".to_owned(), "Bearer {token}".to_owned())])
            });
            let token = token_settings(
                ctx,
                name,
                RawTokenSettings {
                    headers,
                    refresh_before,
                    expiry_margin,
                    timeout,
                    backoff_min,
                    backoff_max,
                    reject_status,
                    reject_body_marker,
                    retry_body_limit,
                },
            )?;
            Ok(CredentialConfig::OAuth2(OAuth2Config {
                allowed_hosts: allowed_hosts(ctx, &k("allowed_hosts"), hosts)?,
                token_url,
                client_id,
                client_secret,
                scopes,
                extra_params: params,
                client_auth,
                request_format,
                expires_in,
                default_ttl: duration(
                    ctx,
                    &k("default_ttl"),
                    default_ttl.as_deref(),
                    Duration::from_secs(300),
                )?,
                use_refresh_token: use_refresh_token.unwrap_or(true),
                token,
            }))
        }
        RawCredential::Login {
            allowed_hosts: hosts,
            method,
            url,
            request_headers,
            body,
            token_pointer,
            ttl,
            headers,
            refresh_before,
            expiry_margin,
            timeout,
            backoff_min,
            backoff_max,
            reject_status,
            reject_body_marker,
            retry_body_limit,
        } => {
            let method = match method.as_deref() {
                None => Method::POST,
                Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| ctx.invalid(k("method"), format!("{m:?} is not a method")))?,
            };
            let url_parsed: Uri = url
                .parse()
                .ok()
                .filter(|u: &Uri| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
                })
                .ok_or_else(|| ctx.invalid(k("url"), format!("{url:?} is not an http(s) URL")))?;
            let mut req_headers = Vec::new();
            for (h, v) in request_headers {
                let key = k(&format!("request_headers.{h}"));
                let hn = header_name(ctx, &key, &h)?;
                let value = secret::expand(&v).map_err(|e| ctx.invalid(&key, e))?;
                req_headers.push((hn, value));
            }
            let body = body.map(|b| login_body(ctx, &k("body"), &b)).transpose()?;
            let token_pointer = token_pointer.unwrap_or_else(|| "/token".to_owned());
            if !token_pointer.starts_with('/') {
                return Err(ctx.invalid(
                    k("token_pointer"),
                    "a JSON pointer starts with /, e.g. \"/token\"",
                ));
            }
            let ttl = ttl
                .map(|t| duration(ctx, &k("ttl"), Some(&t), Duration::ZERO))
                .transpose()?;
            if headers.is_empty() {
                return Err(ctx.invalid(
                    k("headers"),
                    "missing: the headers to set, e.g. { \"X-Incode-Hardware-Id\" = \"{token}\" }",
                ));
            }
            let token = token_settings(
                ctx,
                name,
                RawTokenSettings {
                    headers,
                    refresh_before,
                    expiry_margin,
                    timeout,
                    backoff_min,
                    backoff_max,
                    reject_status,
                    reject_body_marker,
                    retry_body_limit,
                },
            )?;
            Ok(CredentialConfig::Login(LoginConfig {
                allowed_hosts: allowed_hosts(ctx, &k("allowed_hosts"), hosts)?,
                method,
                url: url_parsed,
                request_headers: req_headers,
                body,
                token_pointer,
                ttl,
                token,
            }))
        }
    }
}

fn token_settings(
    ctx: &Ctx,
    name: &str,
    raw: RawTokenSettings,
) -> Result<TokenSettings, ConfigError> {
    let k = |f: &str| format!("credentials.{name}.{f}");
    let mut headers = Vec::new();
    let mut uses_token = false;
    for (h, v) in raw.headers {
        let key = k(&format!("headers.{h}"));
        let hn = header_name(ctx, &key, &h)?;
        let t = header_template(ctx, &key, &v)?;
        uses_token |= t.parts.iter().any(|p| matches!(p, TemplatePart::Token));
        headers.push((hn, t));
    }
    if !uses_token {
        return Err(ctx.invalid(
            k("headers"),
            "no header uses {token}; the fetched token would never be sent",
        ));
    }
    let d =
        |f: &str, v: Option<String>, default: Duration| duration(ctx, &k(f), v.as_deref(), default);
    let backoff_min = d("backoff_min", raw.backoff_min, Duration::from_secs(1))?;
    let backoff_max = d("backoff_max", raw.backoff_max, Duration::from_secs(60))?;
    if backoff_min.is_zero() || backoff_max < backoff_min {
        return Err(ctx.invalid(
            k("backoff_max"),
            "backoff_min must be above zero and backoff_max at least backoff_min",
        ));
    }
    let timeout = d("timeout", raw.timeout, Duration::from_secs(10))?;
    if timeout.is_zero() {
        return Err(ctx.invalid(k("timeout"), "must be above zero"));
    }
    let mut statuses = Vec::new();
    for s in raw.reject_status.unwrap_or_else(|| vec![401]) {
        let code = StatusCode::from_u16(s)
            .ok()
            .filter(|c| c.is_client_error() || c.is_server_error())
            .ok_or_else(|| {
                ctx.invalid(
                    k("reject_status"),
                    format!("{s} is not a 4xx or 5xx status"),
                )
            })?;
        statuses.push(code);
    }
    Ok(TokenSettings {
        headers,
        refresh_before: raw
            .refresh_before
            .map(|r| duration(ctx, &k("refresh_before"), Some(&r), Duration::ZERO))
            .transpose()?,
        expiry_margin: d("expiry_margin", raw.expiry_margin, Duration::from_secs(30))?,
        timeout,
        backoff_min,
        backoff_max,
        reject: RejectPolicy {
            statuses,
            body_marker: raw.reject_body_marker.filter(|m| !m.is_empty()),
            retry_body_limit: raw.retry_body_limit.unwrap_or(64 * 1024),
        },
    })
}

/// Split a header value on `{token}`; the fixed pieces may hold `${...}` secret references.
fn header_template(ctx: &Ctx, key: &str, raw: &str) -> Result<HeaderTemplate, ConfigError> {
    let mut parts = Vec::new();
    for (i, piece) in raw.split("{token}").enumerate() {
        if i > 0 {
            parts.push(TemplatePart::Token);
        }
        if !piece.is_empty() {
            let text = secret::expand(piece).map_err(|e| ctx.invalid(key, e))?;
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

fn json_template(ctx: &Ctx, key: &str, template: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let end = after
            .find('}')
            .ok_or_else(|| ctx.invalid(key, "unterminated ${...} reference"))?;
        let value = secret::expand(&after[..=end]).map_err(|e| ctx.invalid(key, e))?;
        let quoted = serde_json::to_string(value.expose_secret())
            .map_err(|_| ctx.invalid(key, "cannot be encoded as JSON"))?;
        // Inside a JSON string the value goes in without its surrounding quotes.
        out.push_str(&quoted[1..quoted.len() - 1]);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn toml_to_json(ctx: &Ctx, key: &str, v: &toml::Value) -> Result<serde_json::Value, ConfigError> {
    Ok(match v {
        toml::Value::String(s) => {
            let s = secret::expand(s).map_err(|e| ctx.invalid(key, e))?;
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
}
