//! Prepare the upstream request (caller credentials out, attached credential in, hop-by-hop headers gone, forwarding
//! headers added) and forward it, streaming both bodies. Never logs header values.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::Limited;

use crate::body::{self, Body};
use crate::config::UpstreamConfig;
use crate::credentials::Attachment;
use crate::error::{Error, RequestError, UpstreamError};
use crate::http_client::HttpClient;

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// A named upstream with its own pooled client.
#[derive(Debug)]
pub struct Upstream {
    /// Name for logs and errors.
    pub name: String,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    /// Response-header timeout.
    pub response_timeout: Duration,
    client: HttpClient,
}

impl Upstream {
    /// An upstream from config and the client to reach it with.
    pub fn new(cfg: &UpstreamConfig, client: HttpClient) -> Self {
        Self {
            name: cfg.name.clone(),
            scheme: cfg.scheme.clone(),
            authority: cfg.authority.clone(),
            base_path: cfg.base_path.clone(),
            response_timeout: cfg.response_timeout,
            client,
        }
    }

    /// The absolute URI for `path` (starting with `/`) and `query`.
    fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, RequestError> {
        let mut pq = String::with_capacity(
            self.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq = PathAndQuery::try_from(pq)
            .map_err(|_| RequestError::Malformed("path cannot be forwarded"))?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| RequestError::Malformed("path cannot be forwarded"))
    }
}

/// What the proxy needs to know about the caller's connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The caller's address.
    pub peer: SocketAddr,
    /// Whether the caller came over TLS.
    pub tls: bool,
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1), including every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(n);
    }
}

/// Total bytes of header names and values.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum()
}

/// Everything the prepared request carries besides the caller's request.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// Path to forward (prefix already stripped if asked).
    pub path: &'a str,
    /// The credential's headers; their names were already removed from the caller's request.
    pub attachment: Option<&'a Attachment>,
    /// Header names the credential sets (removed from the caller's request).
    pub credential_headers: &'a [HeaderName],
    /// Headers set from the verified caller (forwarded claims).
    pub caller_headers: &'a [(HeaderName, HeaderValue)],
    /// Body limit.
    pub max_body_bytes: u64,
    /// Request id.
    pub request_id: &'a HeaderValue,
}

/// Turn the caller's request into the upstream request. The body is the caller's stream, or a kept copy of it when
/// the request may be replayed once after a credential rejection.
pub fn prepare<B>(
    req: Request<B>,
    up: &Upstream,
    out: &Outgoing<'_>,
    conn: &ConnInfo,
) -> Result<Request<Body>, Error>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > out.max_body_bytes
    {
        return Err(RequestError::BodyTooLarge {
            limit: out.max_body_bytes,
        }
        .into());
    }
    let (mut parts, incoming) = req.into_parts();
    parts.uri = up.uri(out.path, parts.uri.query())?;
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    strip_hop_by_hop(h);
    // The caller's own credentials never reach the upstream, and a caller can never set what the gateway sets.
    h.remove(header::AUTHORIZATION);
    h.remove(header::HOST);
    for n in out.credential_headers {
        h.remove(n);
    }
    for (n, _) in out.caller_headers {
        h.remove(n);
    }
    let ip = conn.peer.ip().to_string();
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::try_from(xff) {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    h.insert(X_REQUEST_ID.clone(), out.request_id.clone());
    for (n, v) in out.caller_headers {
        h.insert(n.clone(), v.clone());
    }
    if let Some(att) = out.attachment {
        for (n, v) in att.headers.iter() {
            h.insert(n.clone(), v.clone());
        }
    }
    let limit = usize::try_from(out.max_body_bytes).unwrap_or(usize::MAX);
    Ok(Request::from_parts(
        parts,
        body::boxed(Limited::new(incoming, limit)),
    ))
}

/// Send the prepared request; the response streams back with hop-by-hop headers removed.
pub async fn forward(
    up: &Upstream,
    req: Request<Body>,
    max_body_bytes: u64,
) -> Result<Response<Body>, Error> {
    let rsp = match tokio::time::timeout(up.response_timeout, up.client.request(req)).await {
        Err(_) => {
            return Err(UpstreamError::Timeout {
                upstream: up.name.clone(),
                timeout: up.response_timeout,
            }
            .into());
        }
        Ok(Err(e)) if body_limit_tripped(&e) => {
            return Err(RequestError::BodyTooLarge {
                limit: max_body_bytes,
            }
            .into());
        }
        Ok(Err(source)) => {
            return Err(UpstreamError::Unreachable {
                upstream: up.name.clone(),
                source,
            }
            .into());
        }
        Ok(Ok(rsp)) => rsp,
    };
    let (mut parts, incoming) = rsp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body::boxed(incoming)))
}

/// Did the request fail because the caller's body went over the route's limit?
fn body_limit_tripped(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}
