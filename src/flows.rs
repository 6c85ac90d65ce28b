//! Vendor flows: token-server endpoints answered by the gateway itself. Each flow is a [`Handler`] mounted on a
//! route; flows use the core (credentials, the outbound client) and the core never names a vendor.
//!
//! This module owns what all flows share: the `[flows]` config table, the one error type with its single mapping to
//! problem responses, and [`build`]. Each vendor lives in its own submodule.

pub mod citadel;
pub mod incode;
pub mod store;
pub mod telesign;
pub mod vendor;
pub mod webhook_auth;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;

use crate::body::{self, Body};
use crate::caller_auth::Caller;
use crate::config::{ConfigError, Ctx};
use crate::conn::ConnInfo;
use crate::credentials::CredentialError;
use crate::problem::Problem;

pub use store::{Store, StoreError};
pub use vendor::VendorFailure;

/// `[flows]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlows {
    /// SQLite file for webhook records, approval decisions and the TeleSign token ledger; created and migrated at
    /// start. Required when `incode` or `telesign` is enabled.
    pub database: Option<PathBuf>,
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
pub fn validate(ctx: &Ctx, raw: RawFlows) -> Result<FlowsConfig, ConfigError> {
    let needs_db = raw.incode.is_some() || raw.telesign.is_some();
    if needs_db && raw.database.is_none() {
        return Err(ctx.invalid(
            "flows.database",
            "required when flows.incode or flows.telesign is enabled (the SQLite file they record into)",
        ));
    }
    Ok(FlowsConfig {
        database: raw.database,
        incode: raw.incode.map(|r| incode::validate(ctx, r)).transpose()?,
        citadel: raw.citadel.map(|r| citadel::validate(ctx, r)).transpose()?,
        telesign: raw
            .telesign
            .map(|r| telesign::validate(ctx, r))
            .transpose()?,
    })
}

/// A flow request or a flow's construction failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The flow has no such endpoint.
    #[error("no such flow endpoint")]
    NotFound,
    /// The endpoint exists but not for this method.
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed {
        /// The methods the endpoint accepts.
        allow: &'static str,
    },
    /// The request is not what the endpoint accepts; `detail` is composed by the flow and safe to show.
    #[error("invalid request: {detail}")]
    Invalid {
        /// What is wrong, for the caller.
        detail: String,
    },
    /// The request body could not be read.
    #[error("request body unreadable")]
    Body,
    /// The request body is over the route's limit.
    #[error("request body too large")]
    BodyTooLarge,
    /// A webhook request failed the shared-secret or Basic check.
    #[error("webhook authentication failed")]
    WebhookUnauthorized {
        /// Whether to challenge for HTTP Basic.
        basic_challenge: bool,
    },
    /// A webhook request came from an address outside the allowlist.
    #[error("webhook source address not allowed")]
    SourceNotAllowed,
    /// The ledger holds nothing for this key.
    #[error("no record")]
    NoRecord,
    /// A session endpoint was called without the caller's session token.
    #[error("missing session token")]
    MissingSessionToken,
    /// Too many requests for this caller or phone number.
    #[error("rate limit for {scope} exceeded")]
    RateLimited {
        /// `caller` or `phone`.
        scope: &'static str,
        /// Seconds until a request may succeed.
        retry_after: u64,
    },
    /// A vendor call failed; carries no request or response content.
    #[error("{vendor} {step}: {failure}")]
    Vendor {
        /// Vendor name.
        vendor: &'static str,
        /// The vendor call, e.g. `omni/start`.
        step: String,
        /// What went wrong.
        #[source]
        failure: VendorFailure,
    },
    /// A session API call was refused by the vendor (4xx); relayed with the vendor's status, body withheld.
    #[error("{vendor} {step} refused the request with {status}")]
    VendorRefused {
        /// Vendor name.
        vendor: &'static str,
        /// The vendor call.
        step: String,
        /// The vendor's 4xx status.
        status: StatusCode,
        /// The vendor's own short error code, when it gave one.
        vendor_code: Option<String>,
    },
    /// The admin credential could not be attached.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The embedded database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A token could not be signed.
    #[error("signing failed: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// Startup: a flow names a credential that is not configured.
    #[error("flows.{flow}.{key}: credential {name:?} is not defined in [credentials]")]
    UnknownCredential {
        /// The flow.
        flow: &'static str,
        /// Its key naming the credential.
        key: &'static str,
        /// The name given.
        name: String,
    },
}

/// Map a flow error to the caller's problem: the only place flow statuses are chosen.
pub fn problem(e: &FlowError) -> Problem {
    match e {
        FlowError::NotFound => Problem::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "No route matches this request",
        ),
        FlowError::MethodNotAllowed { allow } => Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
        )
        .detail(format!("allowed: {allow}")),
        FlowError::Invalid { detail } => Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Invalid request",
        )
        .detail(detail.clone()),
        FlowError::Body => Problem::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Request body unreadable",
        ),
        FlowError::BodyTooLarge => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "Request body too large",
        ),
        FlowError::WebhookUnauthorized { basic_challenge } => Problem {
            www_authenticate: basic_challenge.then(|| "Basic realm=\"credgate\"".to_owned()),
            ..Problem::new(
                StatusCode::UNAUTHORIZED,
                "webhook_unauthorized",
                "Webhook authentication failed",
            )
        },
        FlowError::SourceNotAllowed => Problem::new(
            StatusCode::FORBIDDEN,
            "source_not_allowed",
            "Source address not allowed",
        ),
        FlowError::NoRecord => Problem::new(StatusCode::NOT_FOUND, "not_found", "No record"),
        FlowError::MissingSessionToken => Problem::new(
            StatusCode::UNAUTHORIZED,
            "missing_session_token",
            "Session token required",
        )
        .detail("send the session token in X-Incode-Hardware-Id"),
        FlowError::RateLimited { scope, retry_after } => Problem {
            retry_after: Some(*retry_after),
            ..Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many requests",
            )
            .detail(format!("rate limit per {scope} exceeded"))
        },
        FlowError::Vendor {
            vendor,
            step,
            failure,
        } => vendor::problem(vendor, step, failure),
        FlowError::VendorRefused {
            vendor,
            step,
            status,
            vendor_code,
        } => {
            let mut detail = format!("{vendor} {step} answered {}", status.as_u16());
            if let Some(c) = vendor_code {
                detail.push_str(&format!(" ({vendor} code {c})"));
            }
            Problem::new(*status, "vendor_refused", "Vendor refused the request").detail(detail)
        }
        FlowError::Credential(e) => crate::credentials::problem(e),
        FlowError::Store(_) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "flow_storage_error",
            "Flow storage failed",
        ),
        FlowError::Sign(_) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "signing_failed",
            "Token signing failed",
        ),
        FlowError::UnknownCredential { .. } => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "flow_misconfigured",
            "Flow misconfigured",
        ),
    }
}

/// One request to a flow.
#[derive(Debug)]
pub struct FlowRequest {
    /// The request, body limited to the route's maximum; its path is relative to the route prefix.
    pub req: Request<Body>,
    /// The authenticated caller.
    pub caller: Caller,
    /// The caller's connection.
    pub conn: ConnInfo,
}

/// A locally answered endpoint group.
pub trait Handler: Send + Sync + fmt::Debug {
    /// Answer one request.
    fn handle(&self, req: FlowRequest) -> BoxFuture<'_, Result<Response<Body>, FlowError>>;
}

/// What flows may use from the core.
#[derive(Debug)]
pub struct FlowDeps<'a> {
    /// The outbound client.
    pub http: &'a crate::http_client::HttpClient,
    /// The configured upstream credentials (flows name theirs, e.g. Incode's admin token).
    pub credentials: &'a crate::credentials::Credentials,
}

/// Build the enabled flows' handlers, by name. Opens and migrates the embedded database when a flow needs it.
pub fn build(
    cfg: &FlowsConfig,
    deps: &FlowDeps<'_>,
) -> Result<BTreeMap<String, Arc<dyn Handler>>, FlowError> {
    let store = match &cfg.database {
        Some(path) if cfg.incode.is_some() || cfg.telesign.is_some() => Some(Store::open(path)?),
        _ => None,
    };
    let mut out: BTreeMap<String, Arc<dyn Handler>> = BTreeMap::new();
    if let (Some(c), Some(store)) = (&cfg.incode, &store) {
        let h = incode::build(c, deps, store.clone())?;
        out.insert(incode::FLOW.to_owned(), h.caller_facing);
        if let Some(w) = h.webhooks {
            out.insert(incode::WEBHOOKS_FLOW.to_owned(), w);
        }
    }
    if let Some(c) = &cfg.citadel {
        out.insert(citadel::FLOW.to_owned(), citadel::build(c, deps));
    }
    if let (Some(c), Some(store)) = (&cfg.telesign, &store) {
        out.insert(telesign::FLOW.to_owned(), telesign::build(c, store.clone()));
    }
    Ok(out)
}

/// Read a flow request's whole body (already limited to the route's maximum).
pub async fn read_body(body: Body) -> Result<Bytes, FlowError> {
    body.collect().await.map(|b| b.to_bytes()).map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            FlowError::BodyTooLarge
        } else {
            FlowError::Body
        }
    })
}

/// A JSON response with `status`.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    bytes_response(status, "application/json", value.to_string().into())
}

/// A response with `status`, a content type and a whole body.
pub fn bytes_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Body> {
    let mut rsp = Response::new(body::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    rsp
}

/// The value of query parameter `name` in `query`, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `Retry-After` in whole seconds, at least one.
pub fn retry_after_secs(wait: std::time::Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}
