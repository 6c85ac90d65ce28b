//! The one flow error type and its single mapping to problem responses.

use http::StatusCode;

use super::{StoreError, VendorFailure, vendor};
use crate::credentials::CredentialError;
use crate::problem::Problem;

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
    /// The request body stalled, or took too long in all.
    #[error("request body too slow: {0}")]
    BodyTimeout(crate::body::BodyTimedOut),
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
        /// `caller`, `phone`, or `caller and phone`.
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
pub(crate) fn problem(e: &FlowError) -> Problem {
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
        FlowError::BodyTimeout(_) => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "Request body stalled",
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
        // A database server that cannot be reached is a passing outage: say so, and when to come back.
        FlowError::Store(StoreError::Postgres(_)) => Problem {
            retry_after: Some(5),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "flow_storage_unavailable",
                "Flow storage unavailable",
            )
        },
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
