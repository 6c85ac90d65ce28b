//! Prepare the upstream request (caller credentials out, attached credential in, hop-by-hop headers gone, forwarding
//! headers added) and forward it, streaming both bodies. Never logs header values.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::Limited;
use hyper::body::Frame;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;

use crate::body::{self, Body, BoxError};
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

/// HTTP/2 callers may split `Cookie` into several fields; HTTP/1.1 allows only one, joined with `"; "`
/// (RFC 9113 §8.2.3). Joining is harmless for HTTP/2 upstreams too.
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
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

/// Refuse at once a request whose declared `Content-Length` is over `limit` (streamed bodies are cut by [`Limited`]).
pub fn check_declared_length(headers: &HeaderMap, limit: u64) -> Result<(), RequestError> {
    match headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(len) if len > limit => Err(RequestError::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Turn the caller's request into the upstream request. Generic over the body so that benches and flows can feed
/// any body; the gateway passes hyper's `Incoming`.
pub fn prepare<B>(
    req: Request<B>,
    up: &Upstream,
    out: &Outgoing<'_>,
    conn: &ConnInfo,
) -> Result<Request<Body>, Error>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    check_declared_length(req.headers(), out.max_body_bytes)?;
    let (mut parts, incoming) = req.into_parts();
    parts.uri = up.uri(out.path, parts.uri.query())?;
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    // `TE: trailers` says the caller accepts trailers; the gateway streams them through, so it may say the same to
    // the upstream (gRPC needs it). Any other TE value is this hop's business only.
    let accepts_trailers = h
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(h);
    join_cookies(h);
    if accepts_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // The caller's own credentials never reach the upstream, and a caller can never set what the gateway sets.
    h.remove(header::AUTHORIZATION);
    h.remove(header::HOST);
    for n in out.credential_headers {
        h.remove(n);
    }
    for (n, _) in out.caller_headers {
        h.remove(n);
    }
    // Append the peer to whatever chain the caller sent (every line of it, in order). The caller's part is not
    // trusted by the gateway; the last entry is the one the gateway vouches for.
    let mut xff = String::new();
    for prev in h.get_all(&X_FORWARDED_FOR) {
        if let Ok(prev) = prev.to_str() {
            xff.push_str(prev.trim());
            xff.push_str(", ");
        }
    }
    xff.push_str(&conn.peer.ip().to_string());
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
///
/// `response_timeout` is the longest silence allowed: while the request body is being sent, no body byte may stall
/// for longer (a stalled caller gets 408, an upstream that stops reading 504), and once it is sent the response head
/// must arrive within it (504). A large upload therefore never times out just for being large.
pub async fn forward(
    up: &Upstream,
    req: Request<Body>,
    max_body_bytes: u64,
) -> Result<Response<Body>, Error> {
    let timeout = up.response_timeout;
    let upstream_timeout = || -> Error {
        UpstreamError::Timeout {
            upstream: up.name.clone(),
            timeout,
        }
        .into()
    };
    let (parts, body) = req.into_parts();
    let result = if http_body::Body::is_end_stream(&body) {
        // Nothing to send (most GETs): the response clock starts now, and nothing needs watching.
        let send = up.client.request(Request::from_parts(parts, body));
        tokio::time::timeout(timeout, send)
            .await
            .map_err(|_| upstream_timeout())?
    } else {
        let progress = Arc::new(Progress::default());
        let (sent_tx, mut sent_rx) = oneshot::channel();
        let body = Watched {
            inner: body,
            progress: progress.clone(),
            sent: Some(sent_tx),
        };
        let send = up
            .client
            .request(Request::from_parts(parts, body::boxed(body)));
        let deadline = async {
            let mut last = progress.frames.load(Ordering::Relaxed);
            loop {
                tokio::select! {
                    // Resolves when the body has ended or hyper dropped it (sent, or never needed).
                    _ = &mut sent_rx => break,
                    () = tokio::time::sleep(timeout) => {
                        let now = progress.frames.load(Ordering::Relaxed);
                        if now == last {
                            return progress.caller_pending.load(Ordering::Relaxed);
                        }
                        last = now;
                    }
                }
            }
            tokio::time::sleep(timeout).await;
            false
        };
        tokio::select! {
            r = send => r,
            caller_stalled = deadline => {
                return Err(if caller_stalled {
                    RequestError::BodyTimeout { timeout }.into()
                } else {
                    upstream_timeout()
                });
            }
        }
    };
    let rsp = match result {
        Err(e) if caused_by::<http_body_util::LengthLimitError>(&e) => {
            return Err(RequestError::BodyTooLarge {
                limit: max_body_bytes,
            }
            .into());
        }
        Err(source) => {
            return Err(UpstreamError::Unreachable {
                upstream: up.name.clone(),
                source,
            }
            .into());
        }
        Ok(rsp) => rsp,
    };
    let (mut parts, incoming) = rsp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body::boxed(incoming)))
}

/// How far the request body has got, shared between [`Watched`] and the deadline in [`forward`].
#[derive(Debug, Default)]
struct Progress {
    /// Frames handed to the upstream connection so far.
    frames: AtomicU64,
    /// The last poll found the caller had nothing to send yet.
    caller_pending: AtomicBool,
}

pin_project! {
    /// The request body on its way upstream: counts frames for the stall check and signals `sent` at its end
    /// (or when dropped, which covers bodies hyper never polls).
    struct Watched<B> {
        #[pin]
        inner: B,
        progress: Arc<Progress>,
        sent: Option<oneshot::Sender<()>>,
    }
}

impl<B> http_body::Body for Watched<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Pending => this.progress.caller_pending.store(true, Ordering::Relaxed),
            Poll::Ready(Some(Ok(_))) => {
                this.progress.caller_pending.store(false, Ordering::Relaxed);
                this.progress.frames.fetch_add(1, Ordering::Relaxed);
            }
            Poll::Ready(None) => {
                if let Some(tx) = this.sent.take() {
                    let _ = tx.send(());
                }
            }
            Poll::Ready(Some(Err(_))) => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Is an `E` somewhere in `e`'s source chain (e.g. the caller's body went over the route's limit)?
fn caused_by<E: std::error::Error + 'static>(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<E>() {
            return true;
        }
        cur = err.source();
    }
    false
}
