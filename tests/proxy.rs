//! The proxy path over real loopback sockets: credential injection and override attempts, hop-by-hop and forwarding
//! headers, request ids, route matching, problem responses, the slow-loris guard and graceful shutdown.
mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::upstream::{self, Behaviour, Upstream};

const SECRET: &str = "sekret-value-1234";

type PlainClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> PlainClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A plain-HTTP gateway config with upstream `u` at `url`, static credential `k`, and `routes` (TOML).
fn config(url: &str, upstream_extra: &str, routes: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
header_read_timeout = "300ms"
[upstreams.u]
url = "{url}"
{upstream_extra}
[credentials.k]
kind = "static"
allowed_hosts = ["127.0.0.1"]
headers = {{ "X-Api-Key" = "{SECRET}", "X-Second" = "two-{SECRET}" }}
{routes}
"#
    )
}

const API_ROUTE: &str = r#"
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "u"
credential = "k"
auth = "none"
"#;

async fn send(req: Request<Full<Bytes>>) -> (http::response::Parts, Bytes) {
    let rsp = client().request(req).await.expect("response");
    upstream::body_bytes(rsp).await
}

fn get(gw: &support::TestGateway, path: &str) -> http::request::Builder {
    Request::get(format!("http://{}{path}", gw.addr()))
}

fn problem(parts: &http::response::Parts, body: &Bytes) -> serde_json::Value {
    assert_eq!(
        parts.headers["content-type"], "application/problem+json",
        "problem content type"
    );
    let doc: serde_json::Value = serde_json::from_slice(body).expect("problem is JSON");
    assert_eq!(doc["status"], parts.status.as_u16());
    assert_eq!(
        doc["request_id"].as_str(),
        parts.headers["x-request-id"].to_str().ok(),
        "problem carries the response's request id"
    );
    let text = String::from_utf8_lossy(body);
    assert!(
        !text.contains(SECRET),
        "problem body leaks the secret: {text}"
    );
    doc
}

async fn api_gateway(up: &Upstream) -> support::TestGateway {
    support::start_gateway(&config(&up.url(), "", API_ROUTE)).await
}

#[tokio::test]
async fn static_credential_replaces_every_caller_attempt() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = api_gateway(&up).await;
    let req = get(&gw, "/api/x")
        .header("authorization", "Bearer caller-token")
        .header("X-API-KEY", "evil")
        .header("x-api-key", "evil-2")
        .header("X-Second", "evil-3")
        .header("proxy-authorization", "Basic ZXZpbDpldmls")
        .body(upstream::full(""))
        .expect("request");
    let (parts, body) = send(req).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "ok");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    let keys: Vec<_> = h.get_all("x-api-key").iter().collect();
    assert_eq!(keys, [SECRET], "only the gateway's value arrives");
    let second: Vec<_> = h.get_all("x-second").iter().collect();
    assert_eq!(second, [format!("two-{SECRET}").as_str()]);
    assert!(
        h.get("authorization").is_none(),
        "caller Authorization stripped"
    );
    assert!(h.get("proxy-authorization").is_none());
    assert!(
        !parts.headers.contains_key("x-api-key"),
        "the secret is not echoed back"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_in_both_directions() {
    let up = upstream::start(Behaviour::HopHeaders).await;
    let gw = api_gateway(&up).await;
    let req = get(&gw, "/api/hop")
        .header("connection", "x-custom, keep-alive")
        .header("connection", "x-other")
        .header("x-custom", "1")
        .header("x-other", "2")
        .header("keep-alive", "timeout=5")
        .header("te", "gzip")
        .header("proxy-connection", "keep-alive")
        .header("x-end-to-end", "kept")
        .body(upstream::full(""))
        .expect("request");
    let (parts, _) = send(req).await;
    assert_eq!(parts.status, StatusCode::OK);
    let seen = up.seen();
    let h = &seen[0].headers;
    for gone in [
        "x-custom",
        "x-other",
        "keep-alive",
        "te",
        "proxy-connection",
        "connection",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream");
    }
    assert_eq!(h["x-end-to-end"], "kept");
    for gone in ["x-up", "keep-alive", "proxy-authenticate"] {
        assert!(
            parts.headers.get(gone).is_none(),
            "{gone} reached the caller"
        );
    }
    assert_eq!(parts.headers["x-kept"], "yes");

    // `TE: trailers` is the one TE the gateway repeats (it streams trailers through; gRPC needs it).
    let req = get(&gw, "/api/hop")
        .header("te", "gzip, Trailers")
        .body(upstream::full(""))
        .expect("request");
    send(req).await;
    let seen = up.seen();
    let te: Vec<_> = seen[1].headers.get_all("te").iter().collect();
    assert_eq!(te, ["trailers"]);
}

#[tokio::test]
async fn forwarding_headers_the_gateway_does_not_vouch_for_are_removed() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = api_gateway(&up).await;
    let untrusted = [
        ("x-real-ip", "203.0.113.9"),
        ("forwarded", "for=203.0.113.9;host=evil.example;proto=https"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-prefix", "/admin"),
    ];
    let mut req = get(&gw, "/api/fwd");
    for (n, v) in untrusted {
        req = req.header(n, v);
    }
    let (parts, _) = send(
        req.header("x-other", "kept")
            .body(upstream::full(""))
            .expect("request"),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    let seen = up.seen();
    for (n, _) in untrusted {
        assert!(!seen[0].headers.contains_key(n), "{n} reached the upstream");
    }
    assert_eq!(seen[0].headers["x-other"], "kept");
}

#[tokio::test]
async fn host_and_forwarding_headers_are_set_by_the_gateway() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = api_gateway(&up).await;
    let req = get(&gw, "/api/fwd")
        .header("host", "evil.example")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-for", "198.51.100.7")
        .header("x-forwarded-proto", "https")
        .body(upstream::full(""))
        .expect("request");
    let (parts, _) = send(req).await;
    assert_eq!(parts.status, StatusCode::OK);
    let req = get(&gw, "/api/fwd")
        .body(upstream::full(""))
        .expect("request");
    send(req).await;
    let seen = up.seen();
    assert_eq!(
        seen[0].authority.as_deref(),
        Some(up.addr.to_string().as_str())
    );
    assert_eq!(seen[0].headers.get_all("host").iter().count(), 1);
    assert_eq!(
        seen[0].headers["x-forwarded-for"],
        "203.0.113.9, 198.51.100.7, 127.0.0.1"
    );
    assert_eq!(seen[0].headers["x-forwarded-proto"], "http");
    assert_eq!(seen[1].headers["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn request_id_is_kept_replaced_or_generated_and_returned() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = api_gateway(&up).await;
    let long = "a".repeat(200);
    let cases: [Option<&str>; 4] = [Some("abc-123"), Some("has space"), Some(&long), None];
    for (i, sent) in cases.iter().enumerate() {
        let mut b = get(&gw, "/api/id");
        if let Some(v) = sent {
            b = b.header("x-request-id", *v);
        }
        let (parts, _) = send(b.body(upstream::full("")).expect("request")).await;
        let returned = parts.headers["x-request-id"].to_str().expect("ascii");
        let upstream_saw = up.seen()[i].headers["x-request-id"].clone();
        assert_eq!(upstream_saw, returned, "upstream and caller see one id");
        match sent {
            Some("abc-123") => assert_eq!(returned, "abc-123"),
            _ => {
                assert!(
                    uuid::Uuid::parse_str(returned).is_ok(),
                    "generated id {returned}"
                );
            }
        }
    }
}

#[tokio::test]
async fn routes_match_longest_prefix_on_segments_and_hosts() {
    let up = upstream::start(Behaviour::Ok).await;
    let base = up.url();
    let toml = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[upstreams.a]
url = "{base}/a"
[upstreams.b]
url = "{base}/b/"
[upstreams.c]
url = "{base}/c"
[[routes]]
path_prefix = "/api"
upstream = "a"
auth = "none"
[[routes]]
path_prefix = "/api/v2/"
upstream = "b"
strip_prefix = true
auth = "none"
[[routes]]
path_prefix = "/h"
host = "Special.Example"
upstream = "c"
auth = "none"
"#
    );
    let gw = support::start_gateway(&toml).await;
    let cases = [
        ("/api/x?q=1&r=%20z", None, Some("/a/api/x?q=1&r=%20z")),
        ("/api", None, Some("/a/api")),
        ("/api/v2/y?z=2", None, Some("/b/y?z=2")),
        ("/api/v2", None, Some("/b/")),
        ("/api/v22", None, Some("/a/api/v22")),
        ("/apix", None, None),
        ("/", None, None),
        ("/h/z", Some("special.example:8080"), Some("/c/h/z")),
        ("/h/z", Some("other.example"), None),
    ];
    for (path, host, want) in cases {
        let before = up.seen().len();
        let mut b = get(&gw, path);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        let (parts, body) = send(b.body(upstream::full("")).expect("request")).await;
        match want {
            Some(uri) => {
                assert_eq!(parts.status, StatusCode::OK, "{path}");
                assert_eq!(up.seen()[before].uri, uri, "{path} forwarded as");
            }
            None => {
                assert_eq!(parts.status, StatusCode::NOT_FOUND, "{path}");
                assert_eq!(problem(&parts, &body)["code"], "route_not_found");
                assert_eq!(up.seen().len(), before, "{path} was not forwarded");
            }
        }
    }
}

#[tokio::test]
async fn a_host_with_a_trailing_dot_matches_its_host_route() {
    let up = upstream::start(Behaviour::Ok).await;
    let routes = r#"
[[routes]]
path_prefix = "/h"
host = "special.example"
upstream = "u"
auth = "none"
"#;
    let gw = support::start_gateway(&config(&up.url(), "", routes)).await;
    for host in ["special.example.", "Special.Example.:8080"] {
        let req = get(&gw, "/h/z")
            .header("host", host)
            .body(upstream::full(""))
            .expect("request");
        let (parts, _) = send(req).await;
        assert_eq!(parts.status, StatusCode::OK, "{host}");
    }
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn an_upstream_that_never_accepts_is_a_502_after_connect_timeout() {
    // A listener that never accepts, its backlog filled: the gateway's connection attempt gets no answer at all.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let listener = socket.listen(1).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        // Connections past the backlog never complete: start them without waiting.
        fillers.push(tokio::spawn(s.connect(addr)));
    }
    let gw = support::start_gateway(&config(
        &format!("http://{addr}"),
        r#"connect_timeout = "300ms""#,
        API_ROUTE,
    ))
    .await;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        send(get(&gw, "/api/x").body(upstream::full("")).expect("req")),
    )
    .await
    .expect("connect_timeout ended the attempt");
    let (parts, body) = answer;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_eq!(problem(&parts, &body)["code"], "upstream_unreachable");
    drop(listener);
}

#[tokio::test]
async fn unreachable_upstream_is_502_problem() {
    let (_held, addr) = support::closed_port();
    let gw = support::start_gateway(&config(&format!("http://{addr}"), "", API_ROUTE)).await;
    let (parts, body) = send(get(&gw, "/api/x").body(upstream::full("")).expect("req")).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_eq!(problem(&parts, &body)["code"], "upstream_unreachable");
}

#[tokio::test]
async fn slow_upstream_is_504_problem() {
    let up = upstream::start(Behaviour::Hold).await;
    let gw = support::start_gateway(&config(
        &up.url(),
        r#"response_timeout = "200ms""#,
        API_ROUTE,
    ))
    .await;
    let (parts, body) = send(get(&gw, "/api/x").body(upstream::full("")).expect("req")).await;
    up.release(1);
    assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(problem(&parts, &body)["code"], "upstream_timeout");
}

const LIMITED_ROUTE: &str = r#"
[[routes]]
path_prefix = "/api"
upstream = "u"
credential = "k"
auth = "none"
max_body_bytes = 100000
max_header_bytes = 2000
"#;

#[tokio::test]
async fn declared_body_over_limit_is_413_before_forwarding() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = support::start_gateway(&config(&up.url(), "", LIMITED_ROUTE)).await;
    let req = Request::post(format!("http://{}/api/up", gw.addr()))
        .body(upstream::full(vec![b'x'; 100_001]))
        .expect("request");
    let (parts, body) = send(req).await;
    assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem(&parts, &body)["code"], "body_too_large");
    let req = Request::post(format!("http://{}/api/up", gw.addr()))
        .body(upstream::full(vec![b'x'; 100_000]))
        .expect("request");
    let (parts, _) = send(req).await;
    assert_eq!(parts.status, StatusCode::OK, "a body at the limit passes");
    let seen = up.seen();
    assert_eq!(
        seen.len(),
        1,
        "the oversized request never reached the upstream"
    );
    assert_eq!(seen[0].body_len, 100_000);
}

#[tokio::test]
async fn streamed_body_over_limit_is_cut_off() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = support::start_gateway(&config(&up.url(), "", LIMITED_ROUTE)).await;
    const CHUNKS: u64 = 40;
    const CHUNK: usize = 16 * 1024;
    let chunks = futures_util::stream::iter((0..CHUNKS).map(|_| {
        Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(vec![b'y'; CHUNK])))
    }));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(
        TcpStream::connect(gw.addr()).await.expect("connect"),
    ))
    .await
    .expect("handshake");
    tokio::spawn(conn);
    let req = Request::post("/api/stream")
        .header("host", "localhost")
        .body(StreamBody::new(chunks))
        .expect("request");
    // Either a 413 problem arrives or the gateway aborts the connection: both are fine, forwarding it all is not.
    match sender.send_request(req).await {
        Err(e) => eprintln!("streamed over-limit body: connection aborted ({e})"),
        Ok(rsp) => {
            let status = rsp.status();
            let body = rsp.into_body().collect().await.map(|c| c.to_bytes());
            assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
            if let Ok(body) = body {
                assert!(!String::from_utf8_lossy(&body).contains(SECRET));
            }
        }
    }
    // The body streams: the upstream got the request, and saw its body break off short of the whole.
    up.wait_seen(1).await;
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        !seen[0].body_complete,
        "the upstream must see the body break off"
    );
    assert!(
        seen[0].body_len <= 100_000,
        "forwarded {} bytes",
        seen[0].body_len
    );
}

#[tokio::test]
async fn headers_over_route_limit_are_431() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = support::start_gateway(&config(&up.url(), "", LIMITED_ROUTE)).await;
    let req = get(&gw, "/api/x")
        .header("x-big", "b".repeat(3000))
        .body(upstream::full(""))
        .expect("request");
    let (parts, body) = send(req).await;
    assert_eq!(parts.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(problem(&parts, &body)["code"], "headers_too_large");
    assert!(up.seen().is_empty());
}

/// Read from `tcp` until EOF; panics if the gateway keeps it open past `deadline`. Returns what was read.
async fn read_to_eof(tcp: &mut TcpStream, deadline: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(deadline, read)
        .await
        .expect("the gateway kept a stalled connection open");
    got
}

#[tokio::test]
async fn plain_listeners_serve_http2_with_prior_knowledge_and_http1_alike() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = api_gateway(&up).await;
    let mut h2 = Client::builder(TokioExecutor::new());
    h2.http2_only(true);
    let h2: PlainClient = h2.build_http();
    for (client, version) in [
        (h2, http::Version::HTTP_2),
        (client(), http::Version::HTTP_11),
    ] {
        let req = get(&gw, "/api/sniffed")
            .body(Full::default())
            .expect("request");
        let rsp = client.request(req).await.expect("response");
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.version(), version);
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.headers["x-api-key"] == SECRET));
}

#[tokio::test]
async fn stalled_request_heads_are_disconnected() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = api_gateway(&up).await;
    // A partial HTTP/1.1 head, a partial HTTP/2 preface (stalls the protocol sniff), and nothing at all.
    for partial in [
        &b"GET /api/x HTTP/1.1\r\nHost: x\r\nX-Slow: "[..],
        b"PRI * HT",
        b"",
    ] {
        let mut tcp = TcpStream::connect(gw.addr()).await.expect("connect");
        tcp.write_all(partial).await.expect("write");
        read_to_eof(&mut tcp, Duration::from_secs(10)).await;
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_malformed_chunked_body_from_the_caller_is_a_400_not_an_upstream_failure() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = api_gateway(&up).await;
    let mut tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    // A first chunk that reaches the upstream, then a chunk size that is not hex.
    tcp.write_all(
        b"POST /api/up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await
    .expect("write");
    let got = read_to_eof(&mut tcp, Duration::from_secs(10)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains(r#""code":"bad_request""#), "{got}");
}

#[tokio::test]
async fn a_kept_alive_connection_stalling_its_next_head_is_disconnected() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = api_gateway(&up).await;
    let mut tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    // A first request served in full, then the start of a second head that never ends.
    tcp.write_all(
        b"GET /api/first HTTP/1.1\r\nHost: x\r\n\r\nGET /api/second HTTP/1.1\r\nX-Slow: ",
    )
    .await
    .expect("write");
    let got = read_to_eof(&mut tcp, Duration::from_secs(10)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "first request answered: {got}"
    );
    assert_eq!(
        got.matches("HTTP/1.1 ").count(),
        1,
        "one response only: {got}"
    );
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn the_head_deadline_spares_a_slow_answer_and_closes_the_idle_connection_after_it() {
    // The listener's header read timeout is 300 ms; the upstream takes over three times that to answer.
    let up = upstream::start(Behaviour::Delay(Duration::from_millis(1000))).await;
    let gw = api_gateway(&up).await;
    let mut tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    tcp.write_all(b"GET /api/slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let got = read_to_eof(&mut tcp, Duration::from_secs(10)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "answered in full: {got}");
    // Kept alive after the answer, then closed for idling: within two periods of it, not at once.
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(1300),
        "closed {lived:?} after the request"
    );
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let up = upstream::start(Behaviour::Hold).await;
    let gw = api_gateway(&up).await;
    let addr = gw.addr();
    let in_flight = tokio::spawn(send(
        Request::get(format!("http://{addr}/api/slow"))
            .body(upstream::full(""))
            .expect("request"),
    ));
    up.wait_seen(1).await;
    let shutdown = tokio::spawn(gw.shutdown(Duration::from_secs(30)));
    // New connections are refused once the listener is closed; poll for it with a deadline.
    tokio::time::timeout(Duration::from_secs(10), async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("listener still accepting after shutdown began");
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the in-flight request"
    );
    up.release(1);
    let (parts, body) = in_flight.await.expect("task");
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "released");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown finished")
        .expect("task");
}

#[tokio::test]
async fn shutdown_grace_period_closes_stuck_connections() {
    let up = upstream::start(Behaviour::Hold).await;
    let gw = api_gateway(&up).await;
    let addr = gw.addr();
    let in_flight = tokio::spawn(async move {
        client()
            .request(
                Request::get(format!("http://{addr}/api/stuck"))
                    .body(upstream::full(""))
                    .expect("request"),
            )
            .await
    });
    up.wait_seen(1).await;
    tokio::time::timeout(
        Duration::from_secs(10),
        gw.shutdown(Duration::from_millis(200)),
    )
    .await
    .expect("shutdown returns after the grace period");
    let result = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the stuck connection is closed, not left running")
        .expect("task");
    assert!(result.is_err(), "the stuck request was cut off");
    up.release(1);
}

/// A request body of `chunks` frames, one every `gap` (a slow but steady caller), then, if `stall`, no end at all.
fn paced_body(
    chunks: usize,
    gap: Duration,
    stall: bool,
) -> StreamBody<
    futures_util::stream::BoxStream<'static, Result<hyper::body::Frame<Bytes>, std::io::Error>>,
> {
    use futures_util::StreamExt;
    let paced = futures_util::stream::iter(0..chunks).then(move |_| async move {
        tokio::time::sleep(gap).await;
        Ok(hyper::body::Frame::data(Bytes::from_static(b"0123456789")))
    });
    let tail = if stall {
        futures_util::stream::pending().boxed()
    } else {
        futures_util::stream::empty().boxed()
    };
    StreamBody::new(paced.chain(tail).boxed())
}

async fn post_stream(
    gw: &support::TestGateway,
    body: StreamBody<
        futures_util::stream::BoxStream<'static, Result<hyper::body::Frame<Bytes>, std::io::Error>>,
    >,
) -> (StatusCode, Bytes) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(
        TcpStream::connect(gw.addr()).await.expect("connect"),
    ))
    .await
    .expect("handshake");
    tokio::spawn(conn);
    let req = Request::post("/api/paced")
        .header("host", "localhost")
        .body(body)
        .expect("request");
    let rsp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("an answer in time")
        .expect("response");
    let status = rsp.status();
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    (status, body)
}

#[tokio::test]
async fn response_timeout_does_not_cut_a_slow_steady_upload() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = support::start_gateway(&config(
        &up.url(),
        r#"response_timeout = "600ms""#,
        API_ROUTE,
    ))
    .await;
    // 12 chunks 100 ms apart: the upload takes about 1.2 s in total, twice the response timeout, but it never goes
    // quiet for longer than a sixth of it.
    let (status, body) = post_stream(&gw, paced_body(12, Duration::from_millis(100), false)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let seen = up.seen();
    assert_eq!(seen[0].body_len, 120);
    assert!(seen[0].body_complete);
}

#[tokio::test]
async fn a_caller_stalling_mid_body_gets_408() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = support::start_gateway(&config(
        &up.url(),
        r#"response_timeout = "300ms""#,
        API_ROUTE,
    ))
    .await;
    let (status, body) = post_stream(&gw, paced_body(2, Duration::from_millis(10), true)).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    let doc: serde_json::Value = serde_json::from_slice(&body).expect("problem");
    assert_eq!(doc["code"], "body_timeout");
    up.wait_seen(1).await;
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "the request was forwarded as it streamed");
    assert!(
        !seen[0].body_complete,
        "the upstream saw the body break off"
    );
}

#[tokio::test]
async fn dot_segments_cannot_climb_out_of_a_route() {
    let up = upstream::start(Behaviour::Ok).await;
    let gw = api_gateway(&up).await;
    for path in ["/api/../admin", "/api/%2e%2E/admin", "/api/./x"] {
        let (parts, body) = send(get(&gw, path).body(upstream::full("")).expect("req")).await;
        assert_eq!(parts.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(problem(&parts, &body)["code"], "bad_request");
    }
    assert!(up.seen().is_empty(), "no dot-segment path was forwarded");
}

#[tokio::test]
async fn every_spelling_of_a_path_is_held_to_the_route_of_its_canonical_form() {
    // `/pub` is open and carries no credential; `/pub/admin` attaches one: which route answered shows in what the
    // upstream saw.
    let up = upstream::start(Behaviour::Ok).await;
    let routes = r#"
[[routes]]
name = "pub"
path_prefix = "/pub"
upstream = "u"
auth = "none"

[[routes]]
name = "admin"
path_prefix = "/pub/admin"
upstream = "u"
credential = "k"
auth = "none"
"#;
    let gw = support::start_gateway(&config(&up.url(), "", routes)).await;
    // (path sent, what the upstream must see: the admin route's credential and the canonical path, or refused)
    let cases: &[(&str, Option<(bool, &str)>)] = &[
        ("/pub/admin", Some((true, "/pub/admin"))),
        ("/pub/%61dmin", Some((true, "/pub/admin"))),
        ("/pub//admin", Some((true, "/pub/admin"))),
        ("//pub/admin/x", Some((true, "/pub/admin/x"))),
        ("/pub/ADMIN", Some((true, "/pub/ADMIN"))),
        ("/PUB/Admin?q=1", Some((true, "/PUB/Admin?q=1"))),
        ("/pub/%7Ename", Some((false, "/pub/~name"))),
        ("/pub/other", Some((false, "/pub/other"))),
        ("/pub/admin;x", None),
        ("/pub/admin%3Bx", None),
        ("/pub/..;/admin", None),
        ("/pub/%2e%2e/pub/admin", None),
        ("/pub/a%2Fb", None),
        ("/pub/%zz", None),
    ];
    for (sent, want) in cases {
        let before = up.seen().len();
        let (parts, body) = send(get(&gw, sent).body(upstream::full("")).expect("req")).await;
        let seen = up.seen();
        match want {
            Some((credential, path)) => {
                assert_eq!(parts.status, StatusCode::OK, "{sent}");
                let got = seen
                    .get(before)
                    .unwrap_or_else(|| panic!("{sent}: not forwarded"));
                assert_eq!(got.uri, *path, "{sent}");
                assert_eq!(
                    got.headers.contains_key("x-api-key"),
                    *credential,
                    "{sent}: route"
                );
            }
            None => {
                assert_eq!(parts.status, StatusCode::BAD_REQUEST, "{sent}");
                assert_eq!(problem(&parts, &body)["code"], "bad_request", "{sent}");
                assert_eq!(seen.len(), before, "{sent}: a refused path was forwarded");
            }
        }
    }
}

#[tokio::test]
async fn a_callers_trace_is_forwarded_and_a_request_without_one_starts_one_named_in_the_access_log()
{
    let up = upstream::start(Behaviour::Ok).await;
    let dir = support::temp_dir("trace");
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:0\"\ntls = false\n[upstreams.u]\nurl = \"{}\"\n\
             [[routes]]\npath_prefix = \"/t\"\nupstream = \"u\"\nauth = \"none\"\n",
            up.url()
        ),
    )
    .expect("config");
    let mut gw = support::binary::Binary::run(&path, "info", 1, false);
    let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let url = |p: &str| format!("http://{}{p}", gw.addrs[0]);
    let call = |p: String, tp: Option<&'static str>| async move {
        let mut h = vec![("tracestate", "vendor=opaque")];
        if let Some(tp) = tp {
            h.push(("traceparent", tp));
        }
        support::fake_http::call(http::Method::GET, &p, &h, "")
            .await
            .status
    };
    assert_eq!(call(url("/t/kept"), Some(sent)).await, StatusCode::OK);
    assert_eq!(call(url("/t/started"), None).await, StatusCode::OK);
    assert_eq!(
        call(url("/t/malformed"), Some("00-not-a-trace-01")).await,
        StatusCode::OK
    );
    let seen = |p: &str| {
        up.seen()
            .into_iter()
            .find(|s| s.uri == p)
            .unwrap_or_else(|| panic!("{p} not forwarded"))
    };
    let tp = |p: &str| {
        let s = seen(p);
        let all: Vec<_> = s.headers.get_all("traceparent").iter().cloned().collect();
        assert_eq!(all.len(), 1, "one traceparent upstream: {all:?}");
        assert_eq!(
            s.headers["tracestate"], "vendor=opaque",
            "tracestate passes through"
        );
        all[0].to_str().expect("ascii").to_owned()
    };
    assert_eq!(tp("/t/kept"), sent, "the caller's trace, as sent");
    // The access log names each request's trace, in the order they came.
    let line = gw.wait_for(&format!("trace_id=\"{}\"", &sent[3..35]));
    assert!(line.contains("credgate::access"), "{line}");
    for p in ["/t/started", "/t/malformed"] {
        let started = tp(p);
        assert_eq!(started.len(), 55, "{started}");
        assert!(
            started.starts_with("00-") && started.ends_with("-01"),
            "{started}"
        );
        let trace_id = &started[3..35];
        assert_ne!(trace_id, &sent[3..35]);
        let line = gw.wait_for(&format!("trace_id=\"{trace_id}\""));
        assert!(
            line.contains("credgate::access"),
            "the started trace: {line}"
        );
    }
}
