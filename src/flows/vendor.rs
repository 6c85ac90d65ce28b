//! Outbound vendor calls shared by the flows: send through the core's client, read a bounded body, and turn every
//! failure into a [`FlowError`] that names the vendor step. Never copies a vendor body or a header into an error:
//! bodies carry PII (scores, OCR, payroll reports) and requests carry secrets.

use std::time::Duration;

use http::{Request, StatusCode};
use serde_json::Value;

use super::FlowError;
use crate::body::Body;
use crate::http_client::{self, FetchError, Fetched, HttpClient};
use crate::problem::Problem;

/// Largest vendor response read into memory (Incode OCR and Citadel reports are the big ones).
pub(crate) const MAX_VENDOR_BODY: usize = 16 * 1024 * 1024;

/// Why a vendor call failed, without any of its content.
#[derive(Debug, thiserror::Error)]
pub enum VendorFailure {
    /// The vendor answered with an error status.
    #[error("answered {status}")]
    Status {
        /// The vendor's status.
        status: StatusCode,
        /// The vendor's own short error code, when it gave one.
        vendor_code: Option<String>,
    },
    /// The call could not be made or its body not read.
    #[error("unreachable")]
    Unreachable(#[source] FetchError),
    /// No answer within the flow's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// A success status with a body that is not the JSON expected.
    #[error("answered with a body that is not the expected JSON")]
    NotJson,
    /// A success status whose JSON lacks a field the flow needs.
    #[error("answer lacks {0}")]
    Missing(&'static str),
}

/// The problem for a failed vendor step: 502 (504 on timeout), detail naming the vendor, step and status.
pub(crate) fn problem(vendor: &str, step: &str, failure: &VendorFailure) -> Problem {
    let (status, code, title, detail) = match failure {
        VendorFailure::Status {
            status,
            vendor_code,
        } => {
            let mut d = format!("{vendor} {step} answered {}", status.as_u16());
            if let Some(c) = vendor_code {
                d.push_str(&format!(" ({vendor} code {c})"));
            }
            (
                StatusCode::BAD_GATEWAY,
                "vendor_error",
                "Vendor call failed",
                d,
            )
        }
        VendorFailure::Unreachable(_) => (
            StatusCode::BAD_GATEWAY,
            "vendor_unreachable",
            "Vendor unreachable",
            format!("{vendor} {step} could not be reached"),
        ),
        VendorFailure::Timeout(t) => (
            StatusCode::GATEWAY_TIMEOUT,
            "vendor_timeout",
            "Vendor timed out",
            format!("{vendor} {step} did not answer within {}s", t.as_secs_f32()),
        ),
        VendorFailure::NotJson => (
            StatusCode::BAD_GATEWAY,
            "vendor_error",
            "Vendor call failed",
            format!("{vendor} {step} answered with a body that is not JSON"),
        ),
        VendorFailure::Missing(field) => (
            StatusCode::BAD_GATEWAY,
            "vendor_error",
            "Vendor call failed",
            format!("{vendor} {step} answered without {field}"),
        ),
    };
    Problem::new(status, code, title).detail(detail)
}

/// One vendor step: which vendor, which call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step<'a> {
    /// Vendor name.
    pub vendor: &'static str,
    /// The call, e.g. `omni/start`.
    pub name: &'a str,
}

impl Step<'_> {
    /// A [`FlowError::Vendor`] for this step.
    pub(crate) fn fail(&self, failure: VendorFailure) -> FlowError {
        FlowError::Vendor {
            vendor: self.vendor,
            step: self.name.to_owned(),
            failure,
        }
    }

    /// A [`VendorFailure::Status`] for `fetched`, with the vendor's short error code when safe to show.
    pub(crate) fn status_failure(&self, fetched: &Fetched) -> FlowError {
        self.fail(VendorFailure::Status {
            status: fetched.status,
            vendor_code: vendor_code(&fetched.body),
        })
    }
}

/// Send `req` and read the whole answer within `timeout`.
pub(crate) async fn send(
    http: &HttpClient,
    step: Step<'_>,
    req: Request<Body>,
    timeout: Duration,
) -> Result<Fetched, FlowError> {
    match http_client::fetch(http, req, timeout, MAX_VENDOR_BODY).await {
        Ok(f) => Ok(f),
        Err(FetchError::Timeout(t)) => Err(step.fail(VendorFailure::Timeout(t))),
        Err(e) => Err(step.fail(VendorFailure::Unreachable(e))),
    }
}

/// Whether `s` is a plain identifier or token of at most `max` bytes: letters, digits, `-`, `_`, `.` and any of
/// `extra`. Ids from callers and vendors are checked with it before they reach a log line, the database or a URL.
pub(crate) fn is_plain_id(s: &str, max: usize, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') || extra.contains(&b)
        })
}

/// A 2xx answer's body as JSON; any other status or a non-JSON body is a vendor failure.
pub(crate) fn json_ok(step: Step<'_>, fetched: &Fetched) -> Result<Value, FlowError> {
    if !fetched.status.is_success() {
        return Err(step.status_failure(fetched));
    }
    serde_json::from_slice(&fetched.body).map_err(|_| step.fail(VendorFailure::NotJson))
}

/// A string field of a vendor answer.
pub(crate) fn str_field(
    step: Step<'_>,
    v: &Value,
    field: &'static str,
) -> Result<String, FlowError> {
    v.get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| step.fail(VendorFailure::Missing(field)))
}

/// The vendor's own error code from an error body, when it is short and plain: Incode's numeric `status`
/// (`{"status":4005,...}`), Citadel's `error.code` (`{"error":{"code":"validation_error"}}`). Messages are never
/// taken: they may quote the request.
pub(crate) fn vendor_code(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if let Some(n) = v.get("status").and_then(Value::as_i64) {
        return Some(n.to_string());
    }
    let code = v.get("error")?.get("code")?.as_str()?;
    (!code.is_empty()
        && code.len() <= 40
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    .then(|| code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `flows` fuzz target: an empty Citadel `error.code` was taken as a code, and the problem read
    /// "... answered 400 (Citadel code )".
    #[test]
    fn fuzz_flows_an_empty_vendor_code_is_no_code() {
        assert_eq!(vendor_code(br#"{"error":{"code":""}}"#), None);
        assert_eq!(vendor_code(br#"{"error":{"code":"","mee":"x"}}"#), None);
        assert_eq!(
            vendor_code(br#"{"error":{"code":"validation_error"}}"#).as_deref(),
            Some("validation_error")
        );
        assert_eq!(vendor_code(br#"{"status":4005}"#).as_deref(), Some("4005"));
    }
}
