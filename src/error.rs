//! Request errors and the single mapping from an error to an HTTP response: `application/problem+json` (RFC 9457)
//! with a stable `code` and the request id. A body never carries a secret, a token or an internal error string.

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::body::{self, Body};
use crate::caller_auth::AuthError;
use crate::credentials::CredentialError;
use crate::flows::FlowError;

/// Something wrong with the request itself.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No route matches.
    #[error("no route for this path")]
    NoRoute,
    /// The declared or streamed body exceeds the route's limit.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The route's limit.
        limit: u64,
    },
    /// The caller stopped sending its body for longer than the upstream's response timeout.
    #[error("request body stalled for {timeout:?}")]
    BodyTimeout {
        /// The timeout that ran out.
        timeout: std::time::Duration,
    },
    /// The request headers exceed the route's limit.
    #[error("request headers exceed {limit} bytes")]
    HeadersTooLarge {
        /// The route's limit.
        limit: usize,
    },
    /// The request cannot be forwarded as sent.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// The upstream could not be reached or did not answer in time.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connecting or sending failed.
    #[error("upstream {upstream} unreachable")]
    Unreachable {
        /// Upstream name.
        upstream: String,
        /// Why.
        #[source]
        source: crate::proxy::SendError,
    },
    /// No response headers within the upstream's response timeout.
    #[error("upstream {upstream} did not answer within {timeout:?}")]
    Timeout {
        /// Upstream name.
        upstream: String,
        /// The timeout that ran out.
        timeout: std::time::Duration,
    },
}

/// Every error the request path can produce.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad request.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Caller authentication or authorization failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// No usable upstream credential.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// Upstream failure.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A vendor flow failed.
    #[error(transparent)]
    Flow(#[from] FlowError),
}

/// What a problem response says.
#[derive(Debug)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// Short human summary (fixed per code).
    pub title: &'static str,
    /// Safe detail for the caller, never a secret or internal string.
    pub detail: Option<String>,
    /// `WWW-Authenticate` value, for 401 and 403.
    pub www_authenticate: Option<String>,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem with no detail and no extra headers.
    pub fn new(status: StatusCode, code: &'static str, title: &'static str) -> Self {
        Self {
            status,
            code,
            title,
            detail: None,
            www_authenticate: None,
            retry_after: None,
        }
    }

    /// Add a caller-safe detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Render as a response.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        #[derive(Serialize)]
        struct Doc<'a> {
            #[serde(rename = "type")]
            kind: String,
            title: &'a str,
            status: u16,
            code: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            detail: Option<&'a str>,
            request_id: &'a str,
        }
        let doc = Doc {
            kind: format!("urn:credgate:problem:{}", self.code),
            title: self.title,
            status: self.status.as_u16(),
            code: self.code,
            detail: self.detail.as_deref(),
            request_id,
        };
        let bytes = serde_json::to_vec(&doc).unwrap_or_else(|_| b"{}".to_vec());
        let mut rsp = Response::new(body::full(bytes));
        *rsp.status_mut() = self.status;
        let h = rsp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(v) = self
            .www_authenticate
            .and_then(|v| HeaderValue::try_from(v).ok())
        {
            h.insert(WWW_AUTHENTICATE, v);
        }
        if let Some(s) = self.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(s));
        }
        rsp
    }
}

impl Error {
    /// The problem this error is shown to the caller as: the one place statuses are chosen.
    pub fn problem(&self) -> Problem {
        match self {
            Error::Request(e) => request(e),
            Error::Auth(e) => crate::caller_auth::problem(e),
            Error::Credential(e) => crate::credentials::problem(e),
            Error::Upstream(e) => upstream(e),
            Error::Flow(e) => crate::flows::problem(e),
        }
    }

    /// Render as a problem response carrying `request_id`.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        self.problem().into_response(request_id)
    }
}

fn request(e: &RequestError) -> Problem {
    match e {
        RequestError::NoRoute => Problem::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "No route matches this request",
        ),
        RequestError::BodyTooLarge { limit } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "Request body too large",
        )
        .detail(format!("limit is {limit} bytes")),
        RequestError::BodyTimeout { .. } => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "Request body stalled",
        ),
        RequestError::HeadersTooLarge { limit } => Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "Request headers too large",
        )
        .detail(format!("limit is {limit} bytes")),
        RequestError::Malformed(what) => {
            Problem::new(StatusCode::BAD_REQUEST, "bad_request", "Malformed request").detail(*what)
        }
    }
}

fn upstream(e: &UpstreamError) -> Problem {
    match e {
        UpstreamError::Unreachable { upstream, .. } => Problem::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            "Upstream unreachable",
        )
        .detail(format!("upstream {upstream}")),
        UpstreamError::Timeout { upstream, .. } => Problem::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            "Upstream timed out",
        )
        .detail(format!("upstream {upstream}")),
    }
}
