//! Request and response plumbing the flows share: reading a limited body, JSON and byte responses, query
//! parameters, `Retry-After`.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;

use super::FlowError;
use crate::body::{self, Body};

/// Read a flow request's whole body (already limited to the route's maximum and its deadlines).
pub(crate) async fn read_body(body: Body) -> Result<Bytes, FlowError> {
    body.collect().await.map(|b| b.to_bytes()).map_err(|e| {
        if let Some(t) = body::find_cause::<body::BodyTimedOut>(&*e) {
            FlowError::BodyTimeout(*t)
        } else if body::find_cause::<http_body_util::LengthLimitError>(&*e).is_some() {
            FlowError::BodyTooLarge
        } else {
            FlowError::Body
        }
    })
}

/// A JSON response with `status`.
pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    bytes_response(status, "application/json", value.to_string().into())
}

/// A response with `status`, a content type and a whole body.
pub(crate) fn bytes_response(
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
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `Retry-After` in whole seconds, at least one.
pub(crate) fn retry_after_secs(wait: std::time::Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}
