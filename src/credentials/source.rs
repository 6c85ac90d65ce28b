//! Where tokens come from: a [`TokenSource`] (a token endpoint, a login call) answers a [`FetchedToken`] or a
//! [`TokenError`]. Shared by the token cache and the fleet interface that stands in for a source in fleet mode.

use std::fmt;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use secrecy::SecretString;

use crate::http_client::FetchError;

/// A token as a token endpoint or login call handed it out.
pub(crate) struct FetchedToken {
    /// The token itself.
    pub token: SecretString,
    /// When it stops being valid.
    pub expires_at: Instant,
    /// The refresh token to use next time, if any.
    pub refresh_token: Option<SecretString>,
}

/// Why a token could not be obtained. Never carries a response body, a token or a secret, so it is safe to log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// Connecting, sending or reading failed.
    #[error("token endpoint unreachable: {0}")]
    Http(#[from] FetchError),
    /// No answer within the configured timeout.
    #[error("token endpoint did not answer within {0:?}")]
    Timeout(Duration),
    /// A non-success status.
    #[error("token endpoint answered status {0}")]
    Status(http::StatusCode),
    /// An OAuth2 error response (`error` code only).
    #[error("token endpoint refused: {code} (status {status})")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The `error` code, e.g. `invalid_client`.
        code: String,
    },
    /// The answer is not a usable token response: HTML, non-JSON, missing or mistyped fields.
    #[error("token endpoint answered garbage (status {status}): {what}")]
    Garbage {
        /// HTTP status.
        status: u16,
        /// What is wrong, without any of its content.
        what: String,
    },
    /// The token expires before it could be used.
    #[error("token endpoint handed out a token that is already expired")]
    AlreadyExpired,
    /// Nothing says how long the token lives (no `ttl`, not a JWT).
    #[error("the token's lifetime is unknown: set ttl, or the token must be a JWT with exp")]
    NoLifetime,
    /// The token cannot be a header value.
    #[error("the token cannot be sent as a header value")]
    BadHeaderValue,
    /// Another replica's token request failed just now, and the fleet waits before the next.
    #[error("another replica's token request failed; the fleet retries in {0:?}")]
    FleetBackingOff(Duration),
}

impl TokenError {
    /// A `status` answer whose `body` is not the JSON token answer wanted, described by its shape and never its
    /// content. `object_error` says where a JSON object failed to be a token answer, when the parser knows.
    pub(crate) fn not_a_token_answer(status: u16, body: &[u8], object_error: Option<&str>) -> Self {
        let what = match (body.iter().find(|b| !b.is_ascii_whitespace()), object_error) {
            (Some(b'<'), _) => "an HTML or XML page, not JSON".to_owned(),
            (Some(b'{'), Some(at)) => format!("a JSON object without a usable token (at `{at}`)"),
            (Some(_), _) => "not JSON".to_owned(),
            (None, _) => "an empty body".to_owned(),
        };
        Self::Garbage { status, what }
    }
}

/// Where tokens come from: one call to a token endpoint or login URL.
pub(crate) trait TokenSource: Send + Sync + fmt::Debug {
    /// Obtain a token; `refresh` is the refresh token from the previous answer, when there was one.
    fn fetch<'a>(
        &'a self,
        refresh: Option<&'a SecretString>,
    ) -> BoxFuture<'a, Result<FetchedToken, TokenError>>;
}
