//! Prepare the upstream request (caller credentials out, attached credential in, hop-by-hop headers gone, forwarding
//! headers added) and forward it, streaming both bodies. Never logs header values.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body_util::Limited;
use hyper::body::Frame;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;

use crate::body::{self, Body, BoxError, Deadlined};
use crate::config::UpstreamConfig;
use crate::conn::ConnInfo;
use crate::credentials::Attachment;
use crate::http_client::{self, ClientBuildError, HttpClient};
use crate::timer::Timer;
use crate::trace::TRACEPARENT;
use prometheus_client::metrics::histogram::Histogram;

mod conn_pool;
mod error;

pub(crate) use error::{
    ProxyError, RequestError, UpstreamError, request_problem, upstream_problem,
};

use conn_pool::ConnPool;

/// Why a request could not be sent or got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// TCP connect failed.
    #[error("connect failed: {0}")]
    Connect(#[source] BoxError),
    /// The connection failed while sending or before the response head.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// hyper-util's pooled client (`https://` upstreams, and `http://` ones on [`UpstreamPool::HyperUtil`]) failed.
    #[error(transparent)]
    Client(#[from] hyper_util::client::legacy::Error),
    /// The request's path could not be made into an absolute URI.
    #[error("request URI cannot be made absolute")]
    Target,
}

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Forwarding headers a caller may not set and the gateway does not vouch for: removed, so that an upstream trusting
/// them (for the client address, the host or port it was addressed as) is not misled.
fn is_untrusted_forwarding(name: &HeaderName) -> bool {
    name == header::FORWARDED
        || matches!(
            name.as_str(),
            "x-real-ip" | "x-forwarded-host" | "x-forwarded-port" | "x-forwarded-prefix"
        )
}

/// A named upstream and the connections to it.
#[derive(Debug)]
pub struct Upstream {
    /// Name for logs and errors.
    pub name: String,
    /// The `Host` every request to it carries.
    host: HeaderValue,
    base_path: String,
    /// Response-header timeout.
    pub response_timeout: Duration,
    /// Longest silence within a response body.
    body_idle_timeout: Duration,
    timer: Timer,
    transport: Transport,
    /// Response-time histogram, when the gateway keeps them.
    latency: Option<Histogram>,
}

/// Which pool carries requests to `http://` upstreams (`server.upstream_pool`); `https://` ones always use
/// hyper-util's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamPool {
    /// credgate's own (`proxy/conn_pool.rs`): the default unless built with the `std-pool` feature.
    #[cfg_attr(not(feature = "std-pool"), default)]
    Credgate,
    /// hyper-util's pooled client, the fallback.
    #[cfg_attr(feature = "std-pool", default)]
    HyperUtil,
}

/// How requests reach an upstream.
#[derive(Debug)]
enum Transport {
    /// `http://` on credgate's pool: HTTP/1.1 keep-alive connections driven in the request's own task (the fast path).
    Plain(Arc<ConnPool>),
    /// hyper-util's pooled client: `https://` (ALPN chooses HTTP/2 or HTTP/1.1), and `http://` on
    /// [`UpstreamPool::HyperUtil`].
    Client {
        client: Box<HttpClient>,
        scheme: Scheme,
        authority: Authority,
    },
}

/// Idle keep-alive connections kept per plain upstream, and for how long.
const MAX_IDLE: usize = 256;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Upstream {
    /// An upstream from config; its response deadlines are armed on `timer`, and `pool` carries its requests if it
    /// is an `http://` one.
    pub fn new(
        cfg: &UpstreamConfig,
        timer: &Timer,
        pool: UpstreamPool,
    ) -> Result<Self, ClientBuildError> {
        let host =
            HeaderValue::from_str(cfg.authority.as_str()).map_err(|_| ClientBuildError::Target)?;
        let transport = if cfg.scheme == Scheme::HTTPS || pool == UpstreamPool::HyperUtil {
            Transport::Client {
                client: Box::new(http_client::build(&cfg.extra_ca, cfg.connect_timeout)?),
                scheme: cfg.scheme.clone(),
                authority: cfg.authority.clone(),
            }
        } else {
            let target = Uri::builder()
                .scheme(cfg.scheme.clone())
                .authority(cfg.authority.clone())
                .path_and_query("/")
                .build()
                .map_err(|_| ClientBuildError::Target)?;
            Transport::Plain(Arc::new(ConnPool::new(
                target,
                cfg.connect_timeout,
                MAX_IDLE,
                IDLE_TIMEOUT,
            )))
        };
        Ok(Self {
            name: cfg.name.clone(),
            host,
            base_path: cfg.base_path.clone(),
            response_timeout: cfg.response_timeout,
            body_idle_timeout: cfg.body_idle_timeout,
            timer: timer.clone(),
            transport,
            latency: None,
        })
    }

    /// This upstream, observing each response's time in `latency`.
    pub fn with_latency(mut self, latency: Option<Histogram>) -> Self {
        self.latency = latency;
        self
    }

    /// Send a prepared request (origin-form URI, `Host` set) at `now`; the response head is back, its body streams.
    async fn send(&self, req: Request<Body>, now: Instant) -> Result<Response<Body>, SendError> {
        match &self.transport {
            Transport::Plain(pool) => pool.send(req, now).await,
            Transport::Client {
                client,
                scheme,
                authority,
            } => {
                // The pooled client picks its connection by the absolute URI.
                let (mut parts, body) = req.into_parts();
                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                uri.scheme = Some(scheme.clone());
                uri.authority = Some(authority.clone());
                parts.uri = Uri::from_parts(uri).map_err(|_| SendError::Target)?;
                let rsp = client.request(Request::from_parts(parts, body)).await?;
                Ok(rsp.map(body::boxed))
            }
        }
    }

    /// The origin-form URI for `path` (starting with `/`) and `query`.
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
        PathAndQuery::try_from(pq)
            .map(Uri::from)
            .map_err(|_| RequestError::Malformed("path cannot be forwarded"))
    }

    /// Whether the caller's `uri`, forwarding `path`, already is the URI to send: origin-form, nothing stripped and
    /// no base path to add (the common case, which then needs no new URI).
    fn forwards_as_is(&self, uri: &Uri, path: &str) -> bool {
        self.base_path.is_empty()
            && uri.scheme().is_none()
            && uri.authority().is_none()
            && path.len() == uri.path().len()
    }
}

/// Whether a header is hop-by-hop: named in RFC 9110 §7.6.1, or one of the de-facto ones (`Keep-Alive`,
/// `Proxy-Connection`). Runs on every header of every message, so the standard names are compared as `HeaderName`s
/// (an integer compare each) and only the rest as strings.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TRAILER
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// The hop-by-hop header names as `Connection` tokens may spell them: the ones [`is_hop_by_hop`] knows, most
/// common first (`keep-alive` is in nearly every HTTP/1.1 answer).
const HOP_BY_HOP: [&str; 9] = [
    "keep-alive",
    "connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Whether a `Connection` token is named in [`HOP_BY_HOP`] or is `close`: it names no header but those and `close`.
fn names_no_other_header(token: &str) -> bool {
    token.eq_ignore_ascii_case("close") || is_hop_by_hop_token(token)
}

/// Whether a `Connection` token is named in [`HOP_BY_HOP`]: a header removed as hop-by-hop anyway.
fn is_hop_by_hop_token(token: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| token.eq_ignore_ascii_case(h))
}

/// `close` is a connection option like any other (RFC 9110 §7.6.1): a header field of that name is removed with
/// it. Only messages with `Connection: close` pay the lookup.
static CLOSE: HeaderName = HeaderName::from_static("close");

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1), including every header named in `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut only_connection = true;
    let mut any = false;
    for n in headers.keys().filter(|n| is_hop_by_hop(n)) {
        any = true;
        only_connection &= n == header::CONNECTION;
    }
    // Most messages carry no hop-by-hop header, or only `Connection: keep-alive` (every HTTP/1.1 upstream's
    // answer): nothing here allocates or scans twice for them.
    if !any {
        return;
    }
    let plain = |v: &HeaderValue| {
        let v = v.as_bytes();
        v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
    };
    if only_connection
        && let http::header::Entry::Occupied(e) = headers.entry(header::CONNECTION)
        && e.iter().all(plain)
    {
        let close = e
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        // One lookup both reads and removes it.
        e.remove_entry_mult();
        if close {
            headers.remove(&CLOSE);
        }
        return;
    }
    if only_connection && connection_tokens(headers).all(names_no_other_header) {
        let close = connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("close"));
        headers.remove(header::CONNECTION);
        if close {
            headers.remove(&CLOSE);
        }
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| !is_hop_by_hop_token(t))
        .filter_map(|t| HeaderName::try_from(t).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    while let Some(n) = headers.keys().find(|n| is_hop_by_hop(n)).cloned() {
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
pub(crate) fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len())
        .sum()
}

/// Everything the prepared request carries besides the caller's request.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Bytes of the caller's path the upstream does not see: the matched route prefix when the route strips it, else
    /// 0. The forwarded path is what follows (`/` when nothing does); an offset, so forwarding allocates nothing.
    pub strip_len: usize,
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
    /// The `traceparent` sent upstream: the caller's when well-formed, else one the gateway started.
    pub traceparent: &'a HeaderValue,
}

impl Outgoing<'_> {
    /// Whether [`set_gateway_headers`] sets this header, replacing whatever the caller sent.
    pub fn sets(&self, name: &HeaderName) -> bool {
        name == header::HOST
            || name == X_FORWARDED_FOR
            || name == X_FORWARDED_PROTO
            || name == X_REQUEST_ID
            || name == TRACEPARENT
            || self.caller_headers.iter().any(|(c, _)| c == name)
            || self
                .attachment
                .is_some_and(|a| a.headers.iter().any(|(set, _)| set == name))
    }
}

/// The path forwarded for the caller's `path` when its first `strip_len` bytes are not sent on: `/` when nothing
/// follows them.
pub(crate) fn forwarded_path(path: &str, strip_len: usize) -> &str {
    if strip_len == 0 {
        return path;
    }
    match path.get(strip_len..) {
        Some(rest) if !rest.is_empty() => rest,
        _ => "/",
    }
}

/// Refuse at once a request whose declared `Content-Length` is over `limit` (streamed bodies are cut by [`Limited`]).
/// hyper's body reports the declared length as its size hint, so no header lookup is needed.
pub(crate) fn check_declared_length(
    body: &impl http_body::Body,
    limit: u64,
) -> Result<(), RequestError> {
    if body.size_hint().lower() > limit {
        Err(RequestError::BodyTooLarge { limit })
    } else {
        Ok(())
    }
}

/// Turn the caller's request into the upstream request. Generic over the body so that benches and flows can feed
/// any body; the gateway passes hyper's `Incoming`.
pub fn prepare<B>(
    req: Request<B>,
    up: &Upstream,
    out: &Outgoing<'_>,
    conn: &ConnInfo,
) -> Result<Request<Body>, RequestError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    prepare_with(req, up, out, conn, |_, _| {})
}

/// [`prepare`], letting `keep` see the head between its two halves: once what the caller may not send on is gone
/// and before the gateway sets its own headers (with the `X-Forwarded-For` it is going to set).
pub(crate) fn prepare_with<B>(
    req: Request<B>,
    up: &Upstream,
    out: &Outgoing<'_>,
    conn: &ConnInfo,
    keep: impl FnOnce(&http::request::Parts, Option<&HeaderValue>),
) -> Result<Request<Body>, RequestError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    check_declared_length(req.body(), out.max_body_bytes)?;
    let (mut parts, incoming) = req.into_parts();
    let forwarded_for = strip(&mut parts, up, out, conn)?;
    keep(&parts, forwarded_for.as_ref());
    set_gateway_headers(&mut parts.headers, forwarded_for, up, out, conn);
    Ok(Request::from_parts(parts, upstream_body(incoming, out)))
}

/// The first half of [`prepare`]: the target mapped to the upstream and what the caller may not send on removed
/// (hop-by-hop headers, its credentials, anything the credential sets). Returns the `X-Forwarded-For` to send.
// Both halves are inlined so that the split costs the fixed-credential path nothing (callgrind: about 170
// instructions per request as calls).
#[inline(always)]
fn strip(
    parts: &mut http::request::Parts,
    up: &Upstream,
    out: &Outgoing<'_>,
    conn: &ConnInfo,
) -> Result<Option<HeaderValue>, RequestError> {
    let path = forwarded_path(parts.uri.path(), out.strip_len);
    if !up.forwards_as_is(&parts.uri, path) {
        parts.uri = up.uri(path, parts.uri.query())?;
    }
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    // One pass over the caller's headers (a handful) tells which of the steps below have anything to do.
    let (mut hop_by_hop, mut cookie, mut xff, mut gateway_set) = (false, false, false, false);
    let mut untrusted = false;
    for n in h.keys() {
        hop_by_hop |= is_hop_by_hop(n);
        untrusted |= is_untrusted_forwarding(n);
        cookie |= n == header::COOKIE;
        xff |= n == X_FORWARDED_FOR;
        gateway_set |= n == header::AUTHORIZATION
            || out.credential_headers.contains(n)
            || out.caller_headers.iter().any(|(c, _)| c == n);
    }
    if hop_by_hop {
        // `TE: trailers` says the caller accepts trailers; the gateway streams them through, so it may say the
        // same to the upstream (gRPC needs it). Any other TE value is this hop's business only.
        let accepts_trailers = h
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
        strip_hop_by_hop(h);
        if accepts_trailers {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if cookie {
        join_cookies(h);
    }
    if untrusted {
        let names: Vec<HeaderName> = h
            .keys()
            .filter(|n| is_untrusted_forwarding(n))
            .cloned()
            .collect();
        for n in names {
            h.remove(n);
        }
    }
    // The caller's own credentials never reach the upstream, and a caller can never set what the gateway sets.
    // Inserting below replaces every value the caller sent, so only the names the gateway does not set again (the
    // caller's `Authorization` when the credential uses another header) are removed here.
    if gateway_set {
        let attached = |n: &HeaderName| {
            out.attachment
                .is_some_and(|a| a.headers.iter().any(|(set, _)| set == n))
        };
        if !attached(&header::AUTHORIZATION) {
            h.remove(header::AUTHORIZATION);
        }
        for n in out.credential_headers.iter().filter(|n| !attached(n)) {
            h.remove(n);
        }
    }
    // Append the peer to whatever chain the caller sent (every line of it, in order). The caller's part is not
    // trusted by the gateway; the last entry is the one the gateway vouches for.
    let forwarded_for = if xff {
        let mut chain = Vec::new();
        for prev in h.get_all(&X_FORWARDED_FOR) {
            if let Ok(prev) = prev.to_str() {
                chain.extend_from_slice(prev.trim().as_bytes());
                chain.extend_from_slice(b", ");
            }
        }
        chain.extend_from_slice(conn.peer_ip.as_bytes());
        HeaderValue::from_bytes(&chain).ok()
    } else {
        Some(conn.peer_ip.clone())
    };
    Ok(forwarded_for)
}

/// The second half of [`prepare`]: the gateway's own headers (`Host`, `X-Forwarded-*`, the request id, forwarded
/// claims, the credential's), each replacing whatever the caller sent under that name.
#[inline(always)]
pub(crate) fn set_gateway_headers(
    h: &mut HeaderMap,
    forwarded_for: Option<HeaderValue>,
    up: &Upstream,
    out: &Outgoing<'_>,
    conn: &ConnInfo,
) {
    // The parsed head was sized for the caller's headers; make room for the gateway's once, not by doubling.
    h.reserve(4 + out.caller_headers.len() + out.attachment.map_or(0, |a| a.headers.len()));
    h.insert(header::HOST, up.host.clone());
    if let Some(v) = forwarded_for {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    h.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    h.insert(X_REQUEST_ID.clone(), out.request_id.clone());
    h.insert(TRACEPARENT.clone(), out.traceparent.clone());
    for (n, v) in out.caller_headers {
        h.insert(n.clone(), v.clone());
    }
    if let Some(att) = out.attachment {
        for (n, v) in att.headers.iter() {
            h.insert(n.clone(), v.clone());
        }
    }
}

/// The upstream request's body: the caller's, limited to the route's size.
#[inline(always)]
pub(crate) fn upstream_body<B>(body: B, out: &Outgoing<'_>) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // No body (most GETs): nothing to limit, and an empty body is boxed without an allocation.
    if body.is_end_stream() {
        body::empty()
    } else {
        let limit = usize::try_from(out.max_body_bytes).unwrap_or(usize::MAX);
        body::boxed(Limited::new(body, limit))
    }
}

/// Send the prepared request; the response streams back with hop-by-hop headers removed.
///
/// `response_timeout` is the longest silence allowed: while the request body is being sent, no body byte may stall
/// for longer (a stalled caller gets 408, an upstream that stops reading 504), and once it is sent the response head
/// must arrive within it (504). A large upload therefore never times out just for being large.
pub(crate) async fn forward(
    up: &Upstream,
    req: Request<Body>,
    max_body_bytes: u64,
) -> Result<Response<Body>, ProxyError> {
    let timeout = up.response_timeout;
    let upstream_timeout = || -> ProxyError {
        UpstreamError::Timeout {
            upstream: up.name.clone(),
            timeout,
        }
        .into()
    };
    let (parts, body) = req.into_parts();
    let sent_at = up.latency.as_ref().map(|_| Instant::now());
    let result = if http_body::Body::is_end_stream(&body) {
        // Nothing to send (most GETs): the response clock starts now, and nothing needs watching.
        // One clock read serves the deadline and the pool's idle bookkeeping.
        let now = Instant::now();
        up.timer
            .timeout_at(
                now + timeout,
                up.send(Request::from_parts(parts, body), now),
            )
            .await
            .map_err(|_| upstream_timeout())?
    } else {
        // Boxed: watching a body takes large futures that most requests (no body) should not carry.
        Box::pin(send_watched(up, parts, body, upstream_timeout)).await?
    };
    let rsp = match result {
        Err(e) if caller_body_failed(&e) => {
            return Err(RequestError::Malformed("request body could not be read").into());
        }
        Err(e) if body::find_cause::<http_body_util::LengthLimitError>(&e).is_some() => {
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
    if let (Some(h), Some(at)) = (&up.latency, sent_at) {
        h.observe(at.elapsed().as_secs_f64());
    }
    let (mut parts, body) = rsp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // An upstream that stalls mid-body cuts the response off instead of holding the caller.
    let body = if http_body::Body::is_end_stream(&body) {
        body
    } else {
        body::boxed(Deadlined::new(body, &up.timer, up.body_idle_timeout, None))
    };
    Ok(Response::from_parts(parts, body))
}

/// Send a request with a body, watching the body for stalls (see [`forward`]). The outer error is the
/// gateway's verdict (caller stalled, upstream silent); the inner one is the upstream's.
async fn send_watched(
    up: &Upstream,
    parts: http::request::Parts,
    body: Body,
    upstream_timeout: impl Fn() -> ProxyError,
) -> Result<Result<Response<Body>, SendError>, ProxyError> {
    let timeout = up.response_timeout;
    let progress = Arc::new(Progress::default());
    let (sent_tx, mut sent_rx) = oneshot::channel();
    let body = Watched {
        inner: body,
        progress: progress.clone(),
        sent: Some(sent_tx),
    };
    let send = up.send(
        Request::from_parts(parts, body::boxed(body)),
        Instant::now(),
    );
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
        r = send => Ok(r),
        caller_stalled = deadline => Err(if caller_stalled {
            RequestError::BodyTimeout { timeout }.into()
        } else {
            upstream_timeout()
        }),
    }
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

/// Did sending fail because the caller's own body did (malformed chunked encoding, a caller gone mid-body)? hyper
/// reports a failing request body as a user error whose cause is the error the body gave: here that of the caller's
/// connection, a `hyper::Error` too. The upstream's own failures carry no such pair.
fn caller_body_failed(e: &SendError) -> bool {
    // `SendError` is transparent over these, so its own source chain would skip the outer hyper error.
    let start: &(dyn std::error::Error + 'static) = match e {
        SendError::Http(h) => h,
        SendError::Client(c) => c,
        SendError::Connect(_) | SendError::Target => return false,
    };
    let mut user_body = false;
    let mut cur = Some(start);
    while let Some(err) = cur {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if user_body {
                return true;
            }
            user_body = h.is_user();
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Ctx, RawUpstream, validate_upstream};

    #[test]
    fn a_plain_upstream_goes_over_the_chosen_pool_and_a_tls_one_over_hyper_util() {
        let upstream = |url: &str, pool| {
            let raw: RawUpstream = toml::from_str(&format!("url = \"{url}\"")).expect("toml");
            let cfg = validate_upstream(&Ctx::new("<test>"), "u", raw).expect("valid");
            Upstream::new(&cfg, &Timer::new(), pool).expect("upstream")
        };
        let plain = upstream("http://127.0.0.1:9", UpstreamPool::Credgate);
        assert!(matches!(plain.transport, Transport::Plain(_)));
        let fallback = upstream("http://127.0.0.1:9", UpstreamPool::HyperUtil);
        assert!(
            matches!(&fallback.transport, Transport::Client { scheme, .. } if *scheme == Scheme::HTTP)
        );
        for pool in [UpstreamPool::Credgate, UpstreamPool::HyperUtil] {
            let tls = upstream("https://127.0.0.1:9", pool);
            assert!(
                matches!(&tls.transport, Transport::Client { scheme, .. } if *scheme == Scheme::HTTPS)
            );
        }
    }

    /// Found by the `request_head` fuzz target: a header named `close` passed although `Connection: close` named it
    /// hop-by-hop, on each of the three ways the headers are stripped.
    #[test]
    fn fuzz_request_head_a_header_named_close_goes_when_connection_names_it() {
        for connection in ["close", "close, keep-alive", "Close, x-other"] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(connection));
            h.insert(CLOSE.clone(), HeaderValue::from_static("Xb"));
            h.insert("x-other", HeaderValue::from_static("1"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            assert!(h.get("close").is_none(), "Connection: {connection}");
            assert!(
                h.get(header::CONNECTION).is_none(),
                "Connection: {connection}"
            );
            assert!(h.get("x-kept").is_some(), "Connection: {connection}");
        }
    }

    #[test]
    fn the_header_check_and_the_token_list_agree() {
        for n in HOP_BY_HOP {
            assert!(is_hop_by_hop(&HeaderName::from_static(n)), "{n}");
            assert!(names_no_other_header(&n.to_ascii_uppercase()), "{n}");
        }
        for n in [
            "host",
            "authorization",
            "x-keep-alive",
            "proxy-connections",
            "tee",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(n)), "{n}");
            assert!(!names_no_other_header(n), "{n}");
        }
    }
}
