//! The proxy's errors: a request that cannot be forwarded as sent, an upstream that cannot be reached or does not
//! answer, and how each is shown to the caller.

use http::StatusCode;

use crate::problem::Problem;

/// Something wrong with the request itself.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The declared or streamed body exceeds the route's limit.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The route's limit.
        limit: u64,
    },
    /// The caller's body stalled for longer than allowed, or took longer in all.
    #[error("request body too slow: {timeout:?}")]
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
    /// The path has no canonical form.
    #[error(transparent)]
    Path(#[from] crate::path::PathError),
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
        source: super::SendError,
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

/// A forward that failed: on the caller's side or the upstream's.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request cannot be forwarded as sent.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The upstream failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// The problem a refused request is shown as.
pub(crate) fn request_problem(e: &RequestError) -> Problem {
    match e {
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
        RequestError::Path(e) => {
            Problem::new(StatusCode::BAD_REQUEST, "bad_request", "Malformed request")
                .detail(e.to_string())
        }
    }
}

/// The problem an upstream failure is shown as.
pub(crate) fn upstream_problem(e: &UpstreamError) -> Problem {
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
