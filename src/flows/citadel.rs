//! Citadel (now Truv) payroll verification, replacing the `citadelid/quickstart` sample servers: `GET /bridge-token`
//! creates a bridge token for the front-end widget, and `GET /verifications/{public_token}` exchanges the widget's
//! public token and returns the employment or income report. The client id and access secret never leave the
//! gateway; the permanent access token is removed from the report before it reaches the caller.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use http::{HeaderName, Method, Request, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::vendor::{self, Step, VendorFailure};
use super::{FlowDeps, FlowError, FlowRequest, Handler, json_response};
use crate::body::{self, Body};
use crate::config::{ConfigError, Ctx, secret, show};
use crate::credentials::sensitive_value;
use crate::http_client::HttpClient;

/// Name of the flow.
pub(crate) const FLOW: &str = "citadel";

const VENDOR: &str = "citadel";
/// A public token lives 6 h and is single-use; its access token is kept that long so a retry does not get 410.
const EXCHANGE_TTL: Duration = Duration::from_secs(6 * 3600);

/// `[flows.citadel]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCitadel {
    /// API base URL (default `https://prod.citadelid.com/v1/`); paths are appended after a `/`.
    pub api_url: Option<String>,
    /// Sent as `X-Access-Client-Id` (`${ENV}`, `${file:PATH}`).
    pub client_id: String,
    /// Sent as `X-Access-Secret` (`${ENV}`, `${file:PATH}`).
    pub access_secret: Option<String>,
    /// File holding the access secret, instead of `access_secret`.
    pub access_secret_file: Option<PathBuf>,
    /// `product_type` for bridge tokens: `employment` (default), `income`, or another Citadel product.
    pub product_type: Option<String>,
    /// `client_name` shown in the widget.
    pub client_name: String,
    /// `tracking_info` attached to bridge tokens (omitted when unset).
    pub tracking_info: Option<String>,
    /// Public-token exchange contract: `link_access_tokens` (default) or the legacy `access_tokens`.
    pub exchange: Option<Exchange>,
    /// Time allowed for each Citadel call (default `15s`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

/// Which public-token exchange endpoint to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exchange {
    /// `POST link-access-tokens/ {public_token}` → `{access_token, link_id}`.
    LinkAccessTokens,
    /// `POST access-tokens/ {public_tokens:[..]}` → `{access_tokens:[..]}`.
    AccessTokens,
}

/// Validated `[flows.citadel]`.
#[derive(Debug, Serialize)]
pub struct CitadelConfig {
    /// Base URL ending in `/`.
    pub api_base: String,
    /// `X-Access-Client-Id` and `X-Access-Secret`, marked sensitive.
    #[serde(serialize_with = "show::names")]
    secret_headers: Vec<(HeaderName, HeaderValue)>,
    /// Product type.
    pub product_type: String,
    /// Client name.
    pub client_name: String,
    /// Tracking info.
    pub tracking_info: Option<String>,
    /// Exchange contract.
    pub exchange: Exchange,
    /// Per-call timeout.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub timeout: Duration,
}

/// Validate `[flows.citadel]`.
pub(crate) fn validate(ctx: &Ctx, raw: RawCitadel) -> Result<CitadelConfig, ConfigError> {
    let k = |f: &str| format!("flows.citadel.{f}");
    let url = raw
        .api_url
        .unwrap_or_else(|| "https://prod.citadelid.com/v1/".to_owned());
    let (scheme, authority, _, base_path) =
        crate::config::parse_base_url(ctx, &k("api_url"), &url)?;
    let client_id =
        secret::expand(ctx, &raw.client_id).map_err(|e| ctx.invalid(k("client_id"), e))?;
    let access_secret = secret::resolve(
        ctx,
        raw.access_secret.as_deref(),
        raw.access_secret_file.as_deref(),
    )
    .map_err(|e| ctx.invalid(k("access_secret"), e))?
    .ok_or_else(|| ctx.invalid(k("access_secret"), "required (or access_secret_file)"))?;
    let mut secret_headers = Vec::with_capacity(2);
    for (key, header, v) in [
        ("client_id", "x-access-client-id", &client_id),
        ("access_secret", "x-access-secret", &access_secret),
    ] {
        let value = sensitive_value(v.expose_secret())
            .ok_or_else(|| ctx.invalid(k(key), "is not a valid header value"))?;
        secret_headers.push((HeaderName::from_static(header), value));
    }
    let product_type = raw.product_type.unwrap_or_else(|| "employment".to_owned());
    if product_type.is_empty()
        || !product_type
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        return Err(ctx.invalid(
            k("product_type"),
            format!("{product_type:?} is not a product type like \"employment\""),
        ));
    }
    Ok(CitadelConfig {
        // Citadel's paths are Django-style: the base must end in `/` and every path too.
        api_base: format!("{scheme}://{authority}{base_path}/"),
        secret_headers,
        product_type,
        client_name: raw.client_name,
        tracking_info: raw.tracking_info,
        exchange: raw.exchange.unwrap_or(Exchange::LinkAccessTokens),
        timeout: raw.timeout.unwrap_or(Duration::from_secs(15)),
    })
}

/// Build the Citadel handler.
pub(crate) fn build(cfg: &CitadelConfig, deps: &FlowDeps<'_>) -> Arc<dyn Handler> {
    Arc::new(Citadel {
        api_base: cfg.api_base.clone(),
        secret_headers: cfg.secret_headers.clone(),
        product_type: cfg.product_type.clone(),
        client_name: cfg.client_name.clone(),
        tracking_info: cfg.tracking_info.clone(),
        exchange: cfg.exchange,
        timeout: cfg.timeout,
        http: deps.http.clone(),
        exchanged: moka::future::Cache::builder()
            .time_to_live(EXCHANGE_TTL)
            .max_capacity(100_000)
            .build(),
    })
}

/// The Citadel endpoints.
pub(crate) struct Citadel {
    api_base: String,
    secret_headers: Vec<(HeaderName, HeaderValue)>,
    product_type: String,
    client_name: String,
    tracking_info: Option<String>,
    exchange: Exchange,
    timeout: Duration,
    http: HttpClient,
    /// (caller, public token) → access token: a public token is single-use, so a retried verification by the same
    /// caller reuses the exchange. Another caller presenting the same public token never gets this one's report.
    exchanged: moka::future::Cache<(Box<str>, String), SecretString>,
}

impl std::fmt::Debug for Citadel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Citadel")
            .field("api_base", &self.api_base)
            .field("product_type", &self.product_type)
            .finish_non_exhaustive()
    }
}

impl Handler for Citadel {
    fn handle(&self, req: FlowRequest) -> BoxFuture<'_, Result<Response<Body>, FlowError>> {
        async move {
            let path = req.req.uri().path();
            let public_token = path.strip_prefix("/verifications/");
            if path != "/bridge-token" && public_token.is_none() {
                return Err(FlowError::NotFound);
            }
            if req.req.method() != Method::GET {
                return Err(FlowError::MethodNotAllowed { allow: "GET" });
            }
            match public_token {
                None => self.bridge_token().await,
                Some(t) => self.verification(t, req.caller.subject()).await,
            }
        }
        .boxed()
    }
}

impl Citadel {
    async fn post(&self, path: &'static str, body: &Value) -> Result<Value, FlowError> {
        let step = Step {
            vendor: VENDOR,
            name: path,
        };
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.api_base))
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json");
        if let Some(h) = b.headers_mut() {
            for (n, v) in &self.secret_headers {
                h.insert(n.clone(), v.clone());
            }
        }
        let req = b
            .body(body::full(Bytes::from(body.to_string())))
            .map_err(|_| step.fail(VendorFailure::Missing("a valid request URL")))?;
        let f = vendor::send(&self.http, step, req, self.timeout).await?;
        vendor::json_ok(step, &f)
    }

    /// `POST bridge-tokens/`; the answer passes through (the widget reads `bridge_token`).
    async fn bridge_token(&self) -> Result<Response<Body>, FlowError> {
        let mut body = json!({"product_type": self.product_type, "client_name": self.client_name});
        if let Some(t) = &self.tracking_info {
            body["tracking_info"] = json!(t);
        }
        let v = self.post("bridge-tokens/", &body).await?;
        Ok(json_response(StatusCode::OK, &v))
    }

    /// Exchange `public_token` (once per caller), then fetch the report for the configured product type. Without a
    /// verified `subject` (a route with no JWT check) nothing is kept: each call exchanges anew.
    async fn verification(
        &self,
        public_token: &str,
        subject: Option<&str>,
    ) -> Result<Response<Body>, FlowError> {
        // Checked before the exchange: a public token is single-use and must not be spent on a call that cannot
        // succeed.
        let report_path = match self.product_type.as_str() {
            "employment" => "verifications/employments/",
            "income" => "verifications/incomes/",
            other => {
                return Err(FlowError::Invalid {
                    detail: format!(
                        "product type {other:?} has no verification report; only \"employment\" and \"income\" do"
                    ),
                });
            }
        };
        if !vendor::is_plain_id(public_token, 256, &[]) {
            return Err(FlowError::Invalid {
                detail: "public token is not a token".into(),
            });
        }
        let key = subject.map(|s| (Box::from(s), public_token.to_owned()));
        let cached = match &key {
            Some(k) => self.exchanged.get(k).await,
            None => None,
        };
        let access_token = match cached {
            Some(t) => t,
            None => {
                let t = SecretString::from(self.exchange(public_token).await?);
                if let Some(k) = key {
                    self.exchanged.insert(k, t.clone()).await;
                }
                t
            }
        };
        let mut report = self
            .post(
                report_path,
                &json!({"access_token": access_token.expose_secret()}),
            )
            .await?;
        // The access token is permanent and server-side only; the report echoes it, the caller must not get it.
        if let Some(o) = report.as_object_mut() {
            o.remove("access_token");
        }
        Ok(json_response(StatusCode::OK, &report))
    }

    async fn exchange(&self, public_token: &str) -> Result<String, FlowError> {
        match self.exchange {
            Exchange::LinkAccessTokens => {
                let path = "link-access-tokens/";
                let v = self
                    .post(path, &json!({"public_token": public_token}))
                    .await?;
                vendor::str_field(
                    Step {
                        vendor: VENDOR,
                        name: path,
                    },
                    &v,
                    "access_token",
                )
            }
            Exchange::AccessTokens => {
                let path = "access-tokens/";
                let v = self
                    .post(path, &json!({"public_tokens": [public_token]}))
                    .await?;
                v.get("access_tokens")
                    .and_then(|a| a.get(0))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        Step {
                            vendor: VENDOR,
                            name: path,
                        }
                        .fail(VendorFailure::Missing("access_tokens[0]"))
                    })
            }
        }
    }
}
