//! Every error the request path can produce, and the one place it is answered: each module's own error is mapped
//! to its [`Problem`] by that module; this aggregate picks the mapping, logs once and renders.

use http::{Response, StatusCode};

use crate::body::Body;
use crate::caller_auth::AuthError;
use crate::credentials::CredentialError;
use crate::flows::FlowError;
use crate::problem::Problem;
use crate::proxy::{ProxyError, RequestError, UpstreamError};

/// Every error the request path can produce.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No route matches.
    #[error("no route for this path")]
    NoRoute,
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

impl From<ProxyError> for Error {
    fn from(e: ProxyError) -> Self {
        match e {
            ProxyError::Request(e) => Self::Request(e),
            ProxyError::Upstream(e) => Self::Upstream(e),
        }
    }
}

impl Error {
    /// The problem this error is shown to the caller as: the one place statuses are chosen.
    pub fn problem(&self) -> Problem {
        match self {
            Error::NoRoute => Problem::new(
                StatusCode::NOT_FOUND,
                "route_not_found",
                "No route matches this request",
            ),
            Error::Request(e) => crate::proxy::request_problem(e),
            Error::Auth(e) => crate::caller_auth::problem(e),
            Error::Credential(e) => crate::credentials::problem(e),
            Error::Upstream(e) => crate::proxy::upstream_problem(e),
            Error::Flow(e) => crate::flows::problem(e),
        }
    }

    /// Log this error once (server-side errors at warn, caller errors at debug) and render it.
    pub fn into_response_logged(self, request_id: &str) -> Response<Body> {
        let problem = self.problem();
        if problem.status.is_server_error() {
            tracing::warn!(request_id, code = problem.code, error = %DisplayChain(&self), "request failed");
        } else {
            tracing::debug!(request_id, code = problem.code, error = %DisplayChain(&self), "request refused");
        }
        problem.into_response(request_id)
    }
}

/// Displays an error with its sources, `a: b: c`.
pub struct DisplayChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        let mut cur = self.0.source();
        while let Some(e) = cur {
            // Many messages already embed their source; print each cause once.
            let s = e.to_string();
            if !shown.contains(&s) {
                shown.push_str(": ");
                shown.push_str(&s);
            }
            cur = e.source();
        }
        f.write_str(&shown)
    }
}
