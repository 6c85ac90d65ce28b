//! The `oauth2_client_credentials` token source: the `oauth2` crate builds and parses the token requests, and its
//! async HTTP client is our hyper client (no second HTTP stack). Vendor quirks are settings: a JSON request body, an
//! `expires_in` that is a Unix time or a duration string, and renewal through the `refresh_token` grant.

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{BoxFuture, FutureExt};
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use oauth2::basic::BasicErrorResponse;
use oauth2::{
    AccessToken, AsyncHttpClient, AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    HttpRequest, HttpResponse, RefreshToken, RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::config::{ClientAuthMethod, ExpiresInMode, OAuth2Config, RequestFormat};
use super::token_cache::{FetchedToken, TokenError, TokenSource, earliest, jwt_remaining, later};
use crate::body;
use crate::http_client::{self, FetchError, HttpClient};
use crate::unix_time;

/// Largest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// A token endpoint answer: RFC 6749 §5.1, lenient where vendors differ (`token_type` may be missing, `expires_in`
/// may be a number, a numeric string or a duration string).
#[derive(Debug, Deserialize, Serialize)]
#[serde(try_from = "serde_json::Map<String, serde_json::Value>")]
pub(crate) struct VendorTokenResponse {
    access_token: AccessToken,
    token_type: AnyTokenType,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<RefreshToken>,
}

/// The answer's fields as serde reads them. Read from a JSON object only: serde's derive alone also takes an array
/// (`["token"]` as a token), which no token endpoint means.
#[derive(Deserialize)]
struct AnswerFields {
    access_token: AccessToken,
    #[serde(default)]
    token_type: AnyTokenType,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<RefreshToken>,
}

impl TryFrom<serde_json::Map<String, serde_json::Value>> for VendorTokenResponse {
    type Error = serde_json::Error;

    fn try_from(object: serde_json::Map<String, serde_json::Value>) -> Result<Self, Self::Error> {
        let f: AnswerFields = serde_json::from_value(serde_json::Value::Object(object))?;
        Ok(Self {
            access_token: f.access_token,
            token_type: f.token_type,
            expires_in: f.expires_in,
            refresh_token: f.refresh_token,
        })
    }
}

/// Whatever `token_type` the server names (we inject by template, so it is informational).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub(crate) struct AnyTokenType(Option<String>);

impl oauth2::TokenType for AnyTokenType {}

impl TokenResponse for VendorTokenResponse {
    type TokenType = AnyTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    fn token_type(&self) -> &AnyTokenType {
        &self.token_type
    }

    fn expires_in(&self) -> Option<Duration> {
        // Read by `lifetime` with the configured mode; the crate's seconds-only reading is not used.
        None
    }

    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }

    fn scopes(&self) -> Option<&Vec<Scope>> {
        None
    }
}

type Client = oauth2::Client<
    BasicErrorResponse,
    VendorTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The client-credentials token source.
#[derive(Debug)]
pub(crate) struct OAuth2Source {
    name: String,
    cfg: OAuth2Config,
    http: HttpClient,
}

impl OAuth2Source {
    /// A source for credential `name` with `cfg`, calling out through `http`.
    pub(crate) fn new(name: &str, cfg: OAuth2Config, http: HttpClient) -> Self {
        Self {
            name: name.to_owned(),
            cfg,
            http,
        }
    }

    fn client(&self) -> Client {
        oauth2::Client::new(ClientId::new(self.cfg.client_id.expose_secret().to_owned()))
            .set_client_secret(ClientSecret::new(
                self.cfg.client_secret.expose_secret().to_owned(),
            ))
            .set_auth_type(match self.cfg.client_auth {
                ClientAuthMethod::Basic => AuthType::BasicAuth,
                ClientAuthMethod::RequestBody => AuthType::RequestBody,
            })
            .set_token_uri(TokenUrl::from_url(self.cfg.token_url.clone()))
    }

    async fn client_credentials(&self, http: &Adapter) -> Result<FetchedToken, TokenError> {
        let client = self.client();
        let mut req = client.exchange_client_credentials();
        for s in &self.cfg.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        for (k, v) in &self.cfg.extra_params {
            req = req.add_extra_param(k.as_str(), v.as_str());
        }
        let rsp = req
            .request_async(http)
            .await
            .map_err(|e| token_error(e, http.status()))?;
        self.fetched(rsp, http.status(), None)
    }

    async fn refresh(
        &self,
        http: &Adapter,
        refresh: &SecretString,
    ) -> Result<FetchedToken, TokenError> {
        let client = self.client();
        let rt = RefreshToken::new(refresh.expose_secret().to_owned());
        let mut req = client.exchange_refresh_token(&rt);
        for (k, v) in &self.cfg.extra_params {
            req = req.add_extra_param(k.as_str(), v.as_str());
        }
        let rsp = req
            .request_async(http)
            .await
            .map_err(|e| token_error(e, http.status()))?;
        // A server that does not rotate refresh tokens keeps the old one valid.
        self.fetched(rsp, http.status(), Some(refresh.clone()))
    }

    pub(crate) fn fetched(
        &self,
        rsp: VendorTokenResponse,
        status: u16,
        previous_refresh: Option<SecretString>,
    ) -> Result<FetchedToken, TokenError> {
        let token = rsp.access_token.secret();
        if token.is_empty() {
            return Err(TokenError::Garbage {
                status,
                what: "access_token is empty".into(),
            });
        }
        let now_sys = SystemTime::now();
        let now = Instant::now();
        let derived = match &rsp.expires_in {
            Some(v) => Some(expires_in(self.cfg.expires_in, v, now_sys).ok_or_else(|| {
                TokenError::Garbage {
                    status,
                    what: "expires_in is neither a number nor a duration".into(),
                }
            })?),
            None => None,
        };
        let jwt = jwt_remaining(token, now_sys);
        let expires_at =
            earliest(now, &[derived, jwt]).unwrap_or_else(|| later(now, self.cfg.default_ttl));
        Ok(FetchedToken {
            token: SecretString::from(token.clone()),
            expires_at,
            refresh_token: rsp
                .refresh_token
                .map(|r| SecretString::from(r.secret().clone()))
                .or(previous_refresh),
        })
    }
}

impl TokenSource for OAuth2Source {
    fn fetch<'a>(
        &'a self,
        refresh: Option<&'a SecretString>,
    ) -> BoxFuture<'a, Result<FetchedToken, TokenError>> {
        async move {
            let http = Adapter {
                http: self.http.clone(),
                format: self.cfg.request_format,
                timeout: self.cfg.token.timeout,
                status: AtomicU16::new(0),
            };
            if let Some(rt) = refresh.filter(|_| self.cfg.use_refresh_token) {
                match self.refresh(&http, rt).await {
                    Ok(t) => return Ok(t),
                    Err(e) => {
                        tracing::info!(credential = %self.name, error = %e, "refresh_token grant failed; falling back to client credentials");
                    }
                }
            }
            self.client_credentials(&http).await
        }
        .boxed()
    }
}

/// Remaining lifetime from an `expires_in` value: a duration string (`"1d"`, `"3600s"`) is a duration; a number is
/// seconds, a Unix time, or (auto) a Unix time when it is at least 10^9. `None` when the value is neither.
pub(crate) fn expires_in(
    mode: ExpiresInMode,
    v: &serde_json::Value,
    now: SystemTime,
) -> Option<Duration> {
    let number = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => match s.trim().parse::<f64>() {
            Ok(n) => n,
            Err(_) => return humantime::parse_duration(s.trim()).ok(),
        },
        _ => return None,
    };
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    let absolute = match mode {
        ExpiresInMode::Seconds => false,
        ExpiresInMode::UnixTime => true,
        ExpiresInMode::Auto => number >= 1e9,
    };
    if absolute {
        unix_time::until(number, now)
    } else {
        Duration::try_from_secs_f64(number).ok()
    }
}

/// The oauth2 crate's error, as ours: without the response body it carries.
fn token_error(e: RequestTokenError<FetchError, BasicErrorResponse>, status: u16) -> TokenError {
    match e {
        RequestTokenError::Request(f) => TokenError::Http(f),
        RequestTokenError::ServerResponse(r) => {
            // The code is the vendor's text: log it only when it looks like an RFC 6749 error code.
            let code = r.error().to_string();
            let code =
                if code.len() <= 64 && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                    code
                } else {
                    "(non-standard error code)".to_owned()
                };
            TokenError::Refused { status, code }
        }
        RequestTokenError::Parse(_, _) if status != 200 => TokenError::Status(
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY),
        ),
        RequestTokenError::Parse(err, body) => {
            TokenError::not_a_token_answer(status, &body, Some(&err.path().to_string()))
        }
        RequestTokenError::Other(msg) => TokenError::Garbage { status, what: msg },
    }
}

/// `oauth2`'s async HTTP client over our hyper client, sending JSON bodies when the vendor wants them.
struct Adapter {
    http: HttpClient,
    format: RequestFormat,
    timeout: Duration,
    /// The last response status, so errors can name it.
    status: AtomicU16,
}

impl Adapter {
    fn status(&self) -> u16 {
        self.status.load(Ordering::Relaxed)
    }
}

impl<'c> AsyncHttpClient<'c> for Adapter {
    type Error = FetchError;
    type Future = BoxFuture<'c, Result<HttpResponse, FetchError>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        async move {
            let (mut parts, form) = request.into_parts();
            let bytes = match self.format {
                RequestFormat::Form => form,
                RequestFormat::Json => {
                    let obj: serde_json::Map<String, serde_json::Value> =
                        url::form_urlencoded::parse(&form)
                            .map(|(k, v)| {
                                (k.into_owned(), serde_json::Value::String(v.into_owned()))
                            })
                            .collect();
                    parts
                        .headers
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    serde_json::to_vec(&obj).unwrap_or_default()
                }
            };
            parts.headers.remove(CONTENT_LENGTH);
            parts
                .headers
                .insert(ACCEPT, HeaderValue::from_static("application/json"));
            let req = http::Request::from_parts(parts, body::full(bytes));
            let rsp = http_client::fetch(&self.http, req, self.timeout, MAX_TOKEN_RESPONSE).await?;
            self.status.store(rsp.status.as_u16(), Ordering::Relaxed);
            let mut out = http::Response::new(rsp.body.to_vec());
            *out.status_mut() = rsp.status;
            *out.headers_mut() = rsp.headers;
            Ok(out)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use serde_json::json;

    #[test]
    fn expires_in_follows_the_vendor_rule() {
        let now = SystemTime::now();
        let unix = now.duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs());
        assert_eq!(
            secs(expires_in(ExpiresInMode::Seconds, &json!(3600), now)),
            Some(3600)
        );
        assert_eq!(
            secs(expires_in(ExpiresInMode::Auto, &json!(3600), now)),
            Some(3600)
        );
        let abs = expires_in(ExpiresInMode::Auto, &json!(unix + 120), now).expect("abs");
        assert!((118..=120).contains(&abs.as_secs()), "{abs:?}");
        let abs = expires_in(ExpiresInMode::UnixTime, &json!(unix + 60), now).expect("abs");
        assert!((58..=60).contains(&abs.as_secs()), "{abs:?}");
        assert_eq!(
            secs(expires_in(ExpiresInMode::Auto, &json!("1d"), now)),
            Some(86400)
        );
        assert_eq!(
            secs(expires_in(ExpiresInMode::Auto, &json!("3600s"), now)),
            Some(3600)
        );
        assert_eq!(
            secs(expires_in(ExpiresInMode::Auto, &json!("90"), now)),
            Some(90)
        );
        assert_eq!(expires_in(ExpiresInMode::Auto, &json!("soon"), now), None);
        assert_eq!(expires_in(ExpiresInMode::Auto, &json!(-1), now), None);
        assert_eq!(expires_in(ExpiresInMode::Auto, &json!(null), now), None);
        assert_eq!(expires_in(ExpiresInMode::Seconds, &json!(1e300), now), None);
    }

    /// Found by the `token_answer` fuzz target: `["kccen"]` was read as an answer with the token `kccen`.
    #[test]
    fn fuzz_token_answer_only_a_json_object_is_a_token_answer() {
        for body in [r#"["kccen"]"#, r#"["t", "Bearer", 3600]"#, r#""t""#] {
            assert!(
                serde_json::from_str::<VendorTokenResponse>(body).is_err(),
                "{body}"
            );
        }
        let rsp: VendorTokenResponse =
            serde_json::from_str(r#"{"access_token":"t","expires_in":60,"other":[1]}"#)
                .expect("an object");
        assert_eq!(rsp.access_token.secret(), "t");
        assert_eq!(rsp.expires_in, Some(json!(60)));
    }

    mod properties {
        use proptest::prelude::*;
        use serde_json::json;

        use super::super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            /// Any number or text a vendor puts in `expires_in` is read without a panic; a plain number of seconds
            /// below the Unix-time threshold is that many seconds.
            #[test]
            fn any_expires_in_is_read_without_a_panic(n in any::<f64>(), text in ".{0,40}") {
                let now = SystemTime::now();
                for mode in [ExpiresInMode::Auto, ExpiresInMode::Seconds, ExpiresInMode::UnixTime] {
                    let _ = expires_in(mode, &json!(text), now);
                    let _ = expires_in(mode, &json!(n.to_string()), now);
                    if let Some(v) = serde_json::Number::from_f64(n) {
                        let _ = expires_in(mode, &serde_json::Value::Number(v), now);
                    }
                }
                if (0.0..1e9).contains(&n) {
                    let d = expires_in(ExpiresInMode::Auto, &json!(n), now).expect("seconds");
                    prop_assert!((d.as_secs_f64() - n).abs() < 1e-6 * n.max(1.0), "{} -> {:?}", n, d);
                }
            }
        }
    }
}
