//! Slow bodies are bounded in time in both directions: a caller trickling or stalling a body the gateway reads in
//! full (flow routes, bodies kept to replay) gets 408, an upstream stalling mid-body has its response cut off, and a
//! caller that stops reading a response (full socket, closed HTTP/2 window) has its connection closed.
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::fake_vendor;

/// Longest any step here may take before the test fails; the limits under test are a fraction of it.
const PATIENCE: Duration = Duration::from_secs(10);

/// Send `head` and then `body` on a fresh connection, then stall without ending the body; the gateway's answer as
/// status and raw bytes.
async fn stall_after(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("head");
    tcp.write_all(body).await.expect("body");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("an answer before the caller gave up");
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn flow_gateway(listener_extra: &str, db: &std::path::Path) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
{listener_extra}

[flows]
database = "{db}"

[flows.incode]
api_url = "http://127.0.0.1:9"
api_key = "k"
flow_id = "f"

[flows.incode.webhook]
header = "X-Webhook-Secret"
secret = "hook-secret"

[[routes]]
path_prefix = "/incode/hooks"
flow = "incode_webhooks"
auth = "none"
"#,
        db = db.display()
    )
}

const HOOK_HEAD: &str = "POST /incode/hooks/webhook HTTP/1.1\r\nHost: gw\r\nX-Webhook-Secret: hook-secret\r\n\
Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n";

#[tokio::test]
async fn a_flow_route_body_that_stalls_gets_408() {
    let db = support::temp_dir("deadlines").join("flows.db");
    let gw = support::start_gateway(&flow_gateway(r#"body_idle_timeout = "300ms""#, &db)).await;
    let (status, text) = stall_after(gw.addr(), HOOK_HEAD, b"{\"interviewId\"").await;
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("body_timeout"), "{text}");
}

#[tokio::test]
async fn a_flow_route_body_that_trickles_past_the_whole_body_limit_gets_408() {
    let db = support::temp_dir("deadlines").join("flows.db");
    let gw = support::start_gateway(&flow_gateway(
        "body_idle_timeout = \"5s\"\nbody_timeout = \"500ms\"",
        &db,
    ))
    .await;
    let mut tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    tcp.write_all(HOOK_HEAD.as_bytes()).await.expect("head");
    // One byte every 50 ms: never silent for long, but never done either.
    let trickle = async {
        let mut ticks = tokio::time::interval(Duration::from_millis(50));
        for _ in 0..999 {
            ticks.tick().await;
            if tcp.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[tokio::test]
async fn a_body_kept_for_a_replay_that_stalls_gets_408() {
    let v = fake_vendor::new().run().await;
    let toml = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
body_idle_timeout = "300ms"
[upstreams.v]
url = "{url}"
response_timeout = "30s"
[credentials.v]
kind = "oauth2_client_credentials"
allowed_hosts = ["127.0.0.1"]
token_url = "{token_url}"
client_id = "id"
client_secret = "secret"
[[routes]]
path_prefix = "/api"
upstream = "v"
credential = "v"
auth = "none"
"#,
        url = v.url(),
        token_url = v.token_url()
    );
    let gw = support::start_gateway(&toml).await;
    let head = "POST /api/pay HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n";
    let (status, text) = stall_after(gw.addr(), head, b"{\"amount\":").await;
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(v.api_log().is_empty(), "nothing was forwarded");
}

/// An upstream that answers every request with a body that never ends: one 64 KiB chunk after another as fast as
/// they are taken, or (with `stall`) 10 bytes and then silence. `dropped` fires when the gateway lets go of a body.
async fn endless_upstream(stall: bool) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (dropped_tx, dropped) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let dropped_tx = dropped_tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let guard = OnDrop(Some(dropped_tx.clone()));
                    async move {
                        let chunk = Bytes::from(vec![b'x'; if stall { 10 } else { 64 * 1024 }]);
                        let stream =
                            futures_util::stream::unfold((guard, 0u64), move |(guard, sent)| {
                                let chunk = chunk.clone();
                                async move {
                                    if stall && sent > 0 {
                                        std::future::pending::<()>().await;
                                    }
                                    let frame = hyper::body::Frame::data(chunk);
                                    Some((Ok::<_, Infallible>(frame), (guard, sent + 1)))
                                }
                            });
                        Ok::<_, Infallible>(hyper::Response::new(http_body_util::StreamBody::new(
                            stream,
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, dropped)
}

/// Sends on its channel when dropped.
struct OnDrop(Option<tokio::sync::mpsc::UnboundedSender<()>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

fn proxy_gateway(upstream: SocketAddr, listener_extra: &str, upstream_extra: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
{listener_extra}
[upstreams.u]
url = "http://{upstream}"
{upstream_extra}
[[routes]]
path_prefix = "/"
upstream = "u"
auth = "none"
"#
    )
}

#[tokio::test]
async fn an_upstream_stalling_mid_body_has_the_response_cut_off() {
    let (up, mut dropped) = endless_upstream(true).await;
    let gw = support::start_gateway(&proxy_gateway(up, "", r#"body_idle_timeout = "300ms""#)).await;
    let tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let rsp = sender
        .send_request(
            Request::get("/x")
                .header("host", "gw")
                .body(Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("response head");
    assert_eq!(rsp.status(), StatusCode::OK);
    let body = tokio::time::timeout(PATIENCE, rsp.into_body().collect())
        .await
        .expect("the body ended before the caller gave up");
    assert!(body.is_err(), "a cut-off body is an error, not a short one");
    tokio::time::timeout(PATIENCE, dropped.recv())
        .await
        .expect("the upstream's body was let go");
}

#[tokio::test]
async fn a_caller_that_stops_reading_over_http1_is_disconnected() {
    let (up, mut dropped) = endless_upstream(false).await;
    let gw = support::start_gateway(&proxy_gateway(
        up,
        "header_read_timeout = \"200ms\"\nsend_timeout = \"500ms\"",
        "",
    ))
    .await;
    let mut tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    tcp.write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("request");
    // The caller reads nothing: once the sockets' buffers are full the gateway must give up on it.
    tokio::time::timeout(PATIENCE, dropped.recv())
        .await
        .expect("the gateway let go of the response");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut rest))
        .await
        .expect("the connection was closed")
        .unwrap_or(0);
    assert!(n < 1 << 30, "the response did not go on: {n} bytes");
}

#[tokio::test]
async fn a_caller_that_stops_reading_over_http2_is_disconnected() {
    let (up, mut dropped) = endless_upstream(false).await;
    let gw = support::start_gateway(&proxy_gateway(
        up,
        "header_read_timeout = \"200ms\"\nidle_timeout = \"200ms\"\nsend_timeout = \"500ms\"",
        "",
    ))
    .await;
    let tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let rsp = sender
        .send_request(
            Request::get(format!("http://{}/x", gw.addr()))
                .body(Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("response head");
    assert_eq!(rsp.status(), StatusCode::OK);
    // The body is held and never read: the stream's window closes after 64 KiB.
    let _unread = rsp.into_body();
    tokio::time::timeout(PATIENCE, dropped.recv())
        .await
        .expect("the gateway let go of the response");
}
