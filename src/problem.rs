//! The leaf every failure is shown as: an RFC 9457 `application/problem+json` body with a stable `code`, its status
//! and its extra headers. Each module maps its own errors into a [`Problem`] with one exhaustive `match`; this module
//! imports nothing of the gateway's but the body type, and never carries a secret or an internal error string.

use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde::Serialize;

use crate::body::{self, Body};

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
