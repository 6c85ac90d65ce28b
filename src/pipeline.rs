//! The request path, read top to bottom: route → caller → credential → prepare → forward. Each step is a plain async
//! function with a typed result; every error becomes a problem response in [`Error`], in one place.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use http::header::{HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt, Full, Limited};

use crate::body::{self, Body, Deadlined, RequestBody};
use crate::conn::ConnInfo;
use crate::credentials::RejectPolicy;
use crate::credentials::{self, Attachment, Credential};
use crate::flows::FlowRequest;
use crate::gateway::Gateway;
use crate::path;
use crate::proxy::RequestError;
use crate::proxy::{self, Outgoing, Upstream, X_REQUEST_ID};
use crate::routes::{Route, Target};
use crate::trace::TraceContext;
use crate::trace::export::{self, RequestSpans};
use opentelemetry::trace::{Span as _, SpanKind};

mod error;

pub use error::{DisplayChain, Error};

/// Answer one request. Never fails: errors become problem responses.
///
/// Takes its state by value so that the server can use this future as it is: every async layer around it would add
/// its own copy of the request to a future that is boxed, and so copied, once per request.
pub async fn handle(
    gw: Arc<Gateway>,
    mut req: Request<RequestBody>,
    conn: ConnInfo,
) -> Response<Body> {
    // The clock is read only for the access log and the histograms, the method only for the log.
    let log = tracing::enabled!(target: "credgate::access", tracing::Level::INFO);
    let start = (log || gw.histograms()).then(Instant::now);
    let method = log.then(|| req.method().clone());
    // A request carries a handful of headers: comparing names (an integer compare for every standard one) is cheaper
    // than hashing this custom name for a lookup.
    let sent = req
        .headers()
        .iter()
        .find_map(|(n, v)| (*n == X_REQUEST_ID).then_some(v));
    let request_id = request_id(sent);
    let mut trace = TraceContext::of(req.headers());
    // With span export on, the gateway's server span joins the caller's trace (or starts one).
    let spans = gw.export.as_deref().map(|e| {
        let s = e.request(&trace, req.method(), req.uri().path());
        trace = s.context();
        s
    });
    let (route, result) = match canonicalise(&mut req).and_then(|()| find_route(&gw, &req)) {
        Ok(route) => (
            Some(route),
            serve_route(&gw, route, req, &conn, &request_id, &trace, spans.as_ref()).await,
        ),
        Err(e) => (None, Err(e)),
    };
    let mut rsp = match result {
        Ok(rsp) => rsp,
        Err(err) => err.into_response_logged(request_id.to_str().unwrap_or("-")),
    };
    let status = rsp.status().as_u16();
    if let Some(s) = spans {
        s.finish(
            route.map(|r| r.name.as_str()),
            request_id.to_str().unwrap_or("-"),
            status,
        );
    }
    if let Some(r) = route {
        r.stats.record(status);
        if let (Some(h), Some(start)) = (&r.latency, start) {
            h.observe(status, start.elapsed().as_secs_f64());
        }
    }
    if let (Some(start), Some(method)) = (start, method) {
        tracing::info!(
            target: "credgate::access",
            method = %method,
            route = route.map_or("-", |r| r.name.as_str()),
            status,
            latency_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
            request_id = request_id.to_str().unwrap_or("-"),
            trace_id = trace.trace_id(),
            "request"
        );
    }
    rsp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    rsp
}

/// Replace the request's path by its canonical form (see [`crate::path`]): routes match it and upstreams get it, so a
/// path an upstream would read differently (a dot segment climbing out of the route's prefix, an escape, a doubled
/// slash) cannot reach what no route grants.
fn canonicalise<B>(req: &mut Request<B>) -> Result<(), Error> {
    let path = match path::canonical(req.uri().path()).map_err(RequestError::from)? {
        Cow::Borrowed(_) => return Ok(()),
        Cow::Owned(p) => p,
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    let pq = match parts.path_and_query.as_ref().and_then(|pq| pq.query()) {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    parts.path_and_query = Some(
        PathAndQuery::try_from(pq).map_err(|_| RequestError::Malformed("path cannot be parsed"))?,
    );
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|_| RequestError::Malformed("path cannot be parsed"))?;
    Ok(())
}

fn find_route<'g, B>(gw: &'g Gateway, req: &Request<B>) -> Result<&'g Route, Error> {
    let host = if gw.routes.uses_hosts() {
        request_host(req)
    } else {
        None
    };
    gw.routes.find(host, req.uri().path()).ok_or(Error::NoRoute)
}

async fn serve_route(
    gw: &Gateway,
    route: &Route,
    req: Request<RequestBody>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
    trace: &TraceContext,
    spans: Option<&RequestSpans<'_>>,
) -> Result<Response<Body>, Error> {
    if proxy::header_bytes(req.headers()) > route.max_header_bytes {
        return Err(RequestError::HeadersTooLarge {
            limit: route.max_header_bytes,
        }
        .into());
    }
    let span = spans.map(|s| s.child("caller auth", SpanKind::Internal));
    let caller = gw
        .caller_auth
        .authenticate(&route.auth, req.headers(), req.uri())
        .await;
    if let Some(span) = span {
        export::end(span, caller.as_ref().err().map(|e| e as _));
    }
    let caller = caller?;
    match &route.target {
        Target::Upstream(up) => {
            let cred = route.credential.as_deref();
            let attachment = match cred {
                Some(c) => Some(match c.ready() {
                    Some(a) => a,
                    None => {
                        let span = spans.map(|s| s.child("credential wait", SpanKind::Internal));
                        let got = c.attach().await;
                        if let Some(span) = span {
                            export::end(span, got.as_ref().err().map(|e| e as _));
                        }
                        got?
                    }
                }),
                None => None,
            };
            // The upstream's spans hang under the gateway's client span: its id is the parent id sent.
            let span = spans.map(|s| s.child("upstream", SpanKind::Client));
            let upstream_trace = span.as_ref().map(|s| export::of_span(s.span_context()));
            let trace = upstream_trace.as_ref().unwrap_or(trace);
            let out = Outgoing {
                strip_len: route.strip_len(),
                attachment: attachment.as_ref(),
                credential_headers: cred.map_or(&[], |c| c.header_names()),
                caller_headers: &caller.forward_headers,
                max_body_bytes: route.max_body_bytes,
                request_id,
                traceparent: trace.traceparent(),
            };
            let answered = match (cred, attachment.as_ref()) {
                (Some(c), Some(used)) => match c.reject_policy() {
                    Some(policy) => {
                        let renewal = Renewal {
                            gw,
                            route,
                            up,
                            cred: c,
                            policy,
                            used,
                            out,
                            conn,
                        };
                        forward_renewable(renewal, req).await
                    }
                    None => {
                        let upstream_req = proxy::prepare(req, up, &out, conn)?;
                        Ok(proxy::forward(up, upstream_req, route.max_body_bytes).await?)
                    }
                },
                _ => {
                    let upstream_req = proxy::prepare(req, up, &out, conn)?;
                    Ok(proxy::forward(up, upstream_req, route.max_body_bytes).await?)
                }
            };
            if let Some(span) = span {
                let status = match &answered {
                    Ok(rsp) => Ok(rsp.status().as_u16()),
                    Err(e) => Err(e as _),
                };
                export::end_upstream(span, &up.name, status);
            }
            answered
        }
        Target::Flow(handler) => {
            proxy::check_declared_length(req.body(), route.max_body_bytes)?;
            let (mut parts, incoming) = req.into_parts();
            let rest = route.rest(parts.uri.path());
            let pq = match parts.uri.query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest.to_owned(),
            };
            parts.uri = pq
                .parse::<Uri>()
                .map_err(|_| RequestError::Malformed("path cannot be parsed"))?;
            let limit = usize::try_from(route.max_body_bytes).unwrap_or(usize::MAX);
            // Read in full by the flow: bounded in time as well as in size.
            let incoming =
                Deadlined::read_in_full(Limited::new(incoming, limit), &gw.timer, conn.body);
            let req = Request::from_parts(parts, body::boxed(incoming));
            Ok(handler
                .handle(FlowRequest {
                    req,
                    caller,
                    conn: conn.clone(),
                })
                .await?)
        }
    }
}

/// Forward with a credential that can be renewed: when the upstream rejects the token (401 or the configured marker),
/// the token used is dropped and, if the request body was small enough to keep, the request is replayed once with a
/// fresh token. Larger or streaming bodies are forwarded as they come and the rejection is passed through.
async fn forward_renewable(
    r: Renewal<'_>,
    req: Request<RequestBody>,
) -> Result<Response<Body>, Error> {
    let Renewal {
        gw,
        route,
        up,
        policy,
        out,
        conn,
        ..
    } = r;
    let keep_limit = u64::try_from(policy.retry_body_limit)
        .unwrap_or(u64::MAX)
        .min(route.max_body_bytes);
    let mut replay = None;
    let keep = |parts: &_, forwarded_for: Option<&_>| {
        replay = Some(Replay::of(parts, forwarded_for, &out));
    };
    let upstream_req = match req.body().size_hint().exact() {
        // Nothing to read and keep (most GETs): prepared as on the fixed-credential path.
        Some(0) => proxy::prepare_with(req, up, &out, conn, keep)?,
        Some(n) if n <= keep_limit => {
            let (parts, incoming) = req.into_parts();
            let bytes = Deadlined::read_in_full(incoming, &gw.timer, conn.body)
                .collect()
                .await
                .map_err(|e| match body::find_cause::<body::BodyTimedOut>(&*e) {
                    Some(t) => RequestError::BodyTimeout { timeout: t.after },
                    None => RequestError::Malformed("request body could not be read"),
                })?
                .to_bytes();
            let first = Request::from_parts(parts, Full::new(bytes.clone()));
            let prepared = proxy::prepare_with(first, up, &out, conn, keep)?;
            if let Some(r) = &mut replay {
                r.body = bytes;
            }
            prepared
        }
        _ => proxy::prepare(req, up, &out, conn)?,
    };
    let rsp = proxy::forward(up, upstream_req, route.max_body_bytes).await?;
    if !policy.statuses.contains(&rsp.status()) {
        return Ok(rsp);
    }
    // Boxed: the rejection path (reading a marker, a second exchange) is rare and would otherwise enlarge every
    // request's future.
    Box::pin(after_rejection(r, rsp, replay)).await
}

/// A request's renewable credential and where the request goes: what the forward and a replay share.
#[derive(Clone, Copy)]
struct Renewal<'a> {
    gw: &'a Gateway,
    route: &'a Route,
    up: &'a Upstream,
    cred: &'a dyn Credential,
    policy: &'a RejectPolicy,
    /// The attachment the first attempt carries.
    used: &'a Attachment,
    out: Outgoing<'a>,
    conn: &'a ConnInfo,
}

/// The upstream answered with a rejection status: confirm it (body marker), drop the token used and, when the
/// request was kept, replay it once with a fresh one.
async fn after_rejection(
    r: Renewal<'_>,
    rsp: Response<Body>,
    replay: Option<Replay>,
) -> Result<Response<Body>, Error> {
    let Renewal {
        gw,
        route,
        up,
        cred,
        policy,
        used,
        out,
        conn,
    } = r;
    let replay = replay.map(|replay| {
        move |fresh: Attachment| async move {
            // Resolved here, not per route at build time: replays are rare (an upstream rejection each).
            gw.metrics.route_retries(&route.name).inc();
            let out = Outgoing {
                attachment: Some(&fresh),
                ..out
            };
            let rsp = proxy::forward(
                up,
                replay.into_request(up, &out, conn),
                route.max_body_bytes,
            )
            .await?;
            Ok::<_, Error>(rsp)
        }
    });
    credentials::replay_on_rejection(
        cred,
        used,
        rsp,
        |rsp| credentials::is_rejection(policy, rsp),
        replay,
    )
    .await
}

/// What a replay starts from: the caller's request once stripped, without the headers the gateway sets anyway (so
/// the fresh token's headers, and the rest, are set exactly as for a first attempt), and the kept body.
struct Replay {
    method: Method,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    forwarded_for: Option<HeaderValue>,
    body: Bytes,
}

impl Replay {
    fn of(
        head: &http::request::Parts,
        forwarded_for: Option<&HeaderValue>,
        out: &Outgoing<'_>,
    ) -> Self {
        Self {
            method: head.method.clone(),
            uri: head.uri.clone(),
            headers: head
                .headers
                .iter()
                .filter(|(n, _)| !out.sets(n))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            forwarded_for: forwarded_for.cloned(),
            body: Bytes::new(),
        }
    }

    fn into_request(self, up: &Upstream, out: &Outgoing<'_>, conn: &ConnInfo) -> Request<Body> {
        let mut req = Request::new(proxy::upstream_body(Full::new(self.body), out));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        let h = req.headers_mut();
        h.reserve(self.headers.len());
        for (n, v) in self.headers {
            h.append(n, v);
        }
        proxy::set_gateway_headers(h, self.forwarded_for, up, out, conn);
        req
    }
}

/// The host the caller addressed, without port or a trailing dot (`api.example.` names `api.example`): the URI
/// authority (HTTP/2) or the `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = match req.uri().host() {
        Some(h) => h,
        None => req.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    let host = strip_port(raw);
    Some(host.strip_suffix('.').unwrap_or(host))
}

fn strip_port(host: &str) -> &str {
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// The caller's `X-Request-Id` when it is short visible ASCII, else a fresh v4 UUID.
///
/// `uuid`'s `fast-rng` draws from a thread-local generator: `benches/request_id.rs` measured it level with the
/// per-thread chunked ids it replaced (see BENCHMARKS.md), so the simpler one stays.
pub fn request_id(sent: Option<&HeaderValue>) -> HeaderValue {
    if let Some(v) = sent
        && !v.is_empty()
        && v.len() <= 128
        && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return v.clone();
    }
    let mut buf = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_distinct_uuids() {
        let n = 300;
        let ids: Vec<HeaderValue> = (0..n).map(|_| request_id(None)).collect();
        let distinct: std::collections::HashSet<&[u8]> = ids.iter().map(|v| v.as_bytes()).collect();
        assert_eq!(distinct.len(), n);
        for id in &ids {
            let s = id.to_str().expect("ascii");
            let parsed = uuid::Uuid::parse_str(s).expect("a uuid");
            assert_eq!(parsed.get_version_num(), 4, "{s}");
            assert_eq!(s, parsed.hyphenated().to_string());
        }
    }
}
