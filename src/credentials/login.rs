//! The `login` token source: one configured HTTP call (e.g. Incode's `POST /executive/log-in` with `x-api-key`,
//! `api-version` and a JSON `{email, password}`) whose JSON answer holds a token at a JSON pointer. The lifetime is
//! the configured `ttl`, bounded by the token's own `exp` when it is a JWT.

use std::time::{Instant, SystemTime};

use futures_util::future::{BoxFuture, FutureExt};
use http::Request;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use super::config::LoginConfig;
use super::sensitive_value;
use super::token_cache::{FetchedToken, TokenError, TokenSource, earliest, jwt_remaining};
use crate::body;
use crate::http_client::{self, HttpClient};

/// Largest login response read.
const MAX_LOGIN_RESPONSE: usize = 64 * 1024;

/// The login token source.
#[derive(Debug)]
pub(crate) struct LoginSource {
    cfg: LoginConfig,
    http: HttpClient,
}

impl LoginSource {
    /// A source for `cfg`, calling out through `http`.
    pub(crate) fn new(cfg: LoginConfig, http: HttpClient) -> Self {
        Self { cfg, http }
    }

    async fn login(&self) -> Result<FetchedToken, TokenError> {
        let mut req = Request::builder()
            .method(self.cfg.method.clone())
            .uri(self.cfg.url.clone());
        if let Some(h) = req.headers_mut() {
            for (name, value) in &self.cfg.request_headers {
                if let Some(v) = sensitive_value(value.expose_secret()) {
                    h.insert(name.clone(), v);
                }
            }
            h.insert(ACCEPT, HeaderValue::from_static("application/json"));
            if self.cfg.body.is_some() {
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
        }
        let body = match &self.cfg.body {
            Some(b) => body::full(b.expose_secret().as_bytes().to_vec()),
            None => body::empty(),
        };
        let req = req.body(body).map_err(|_| TokenError::BadHeaderValue)?;
        let rsp =
            http_client::fetch(&self.http, req, self.cfg.token.timeout, MAX_LOGIN_RESPONSE).await?;
        if !rsp.status.is_success() {
            return Err(TokenError::Status(rsp.status));
        }
        self.answer(rsp.status.as_u16(), &rsp.body)
    }

    /// The token in a successful login answer, and its lifetime (the fuzz targets read answers through here too).
    pub(crate) fn answer(&self, status: u16, body: &[u8]) -> Result<FetchedToken, TokenError> {
        let doc: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| TokenError::not_a_token_answer(status, body, None))?;
        let token = doc
            .pointer(&self.cfg.token_pointer)
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| TokenError::Garbage {
                status,
                what: format!("no token string at {}", self.cfg.token_pointer),
            })?;
        let now = Instant::now();
        let expires_at = earliest(
            now,
            &[self.cfg.ttl, jwt_remaining(token, SystemTime::now())],
        )
        .ok_or(TokenError::NoLifetime)?;
        Ok(FetchedToken {
            token: SecretString::from(token.to_owned()),
            expires_at,
            refresh_token: None,
        })
    }
}

impl TokenSource for LoginSource {
    fn fetch<'a>(
        &'a self,
        _refresh: Option<&'a SecretString>,
    ) -> BoxFuture<'a, Result<FetchedToken, TokenError>> {
        self.login().boxed()
    }
}
