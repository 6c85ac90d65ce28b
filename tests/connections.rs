//! Connection limits that keep an unattended gateway serving: idle HTTP/2 connections are closed, unanswered HTTP/2
//! PINGs close the connection, and a listener holds at most `max_connections` while the admin listener still answers.

mod support;

use std::io::{ErrorKind, Read as _, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// Guards against a hang when a connection is never closed; the behaviour under test takes a fraction of it.
const NEVER: Duration = Duration::from_secs(30);

fn plain_listener(extra: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
{extra}

[admin]
address = "127.0.0.1:0"
"#
    )
}

/// The client half of an HTTP/2 connection: its sender (kept, since dropping it closes the connection) and the task
/// driving it, which ends when the connection closes.
type H2Client = (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
);

/// One HTTP/2 (prior knowledge) request for a path no route serves, on `io`.
async fn one_h2_request<T>(io: T) -> H2Client
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let rsp = send
        .send_request(
            Request::get("http://localhost/nowhere")
                .body(Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(rsp.status(), StatusCode::NOT_FOUND);
    rsp.into_body().collect().await.expect("body");
    (send, driver)
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let gw = support::start_gateway(&plain_listener(
        r#"idle_timeout = "100ms"
header_read_timeout = "1s""#,
    ))
    .await;
    let tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    let (_send, driver) = one_h2_request(tcp).await;
    // The client's connection task ends only when the gateway closes the connection.
    let ended = tokio::time::timeout(NEVER, driver).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open");
}

/// A connection that can be frozen: once frozen it neither reads nor writes, as a peer that stopped answering.
struct Freezable {
    inner: TcpStream,
    frozen: Arc<AtomicBool>,
}

impl tokio::io::AsyncRead for Freezable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.frozen.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Freezable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.frozen.load(Ordering::Relaxed) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn an_http2_peer_that_stops_answering_pings_is_disconnected() {
    // The idle timeout is far away: only the unanswered PING can close this connection.
    let gw = support::start_gateway(&plain_listener(
        r#"idle_timeout = "1h"
http2_keepalive_interval = "100ms"
http2_keepalive_timeout = "100ms""#,
    ))
    .await;
    let std_tcp = std::net::TcpStream::connect(gw.addr()).expect("connect");
    std_tcp.set_nonblocking(true).expect("nonblocking");
    // A second handle on the same socket, to see the gateway close it while the client reads nothing.
    let mut watch = TcpStream::from_std(std_tcp.try_clone().expect("clone")).expect("watch");
    let frozen = Arc::new(AtomicBool::new(false));
    let io = Freezable {
        inner: TcpStream::from_std(std_tcp).expect("tokio stream"),
        frozen: frozen.clone(),
    };
    let (_send, _driver) = one_h2_request(io).await;
    frozen.store(true, Ordering::Relaxed);
    let closed = tokio::time::timeout(NEVER, async {
        let mut buf = [0u8; 4096];
        loop {
            match watch.read(&mut buf).await {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) => return e.kind() == ErrorKind::ConnectionReset,
            }
        }
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "a peer that never answers PINGs kept its connection"
    );
}

/// Send one HTTP/1.1 request on a kept-alive connection and read its full response head.
fn http1_round_trip(tcp: &mut std::net::TcpStream) -> bool {
    if tcp
        .write_all(b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.starts_with(b"HTTP/1.1 404")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_listener_refuses_at_once_and_the_admin_listener_still_answers() {
    let gw = support::start_gateway(&plain_listener("max_connections = 2")).await;
    let addr = gw.addr();
    let admin = gw.admin.expect("admin");
    let metrics = gw.gw.metrics.clone();
    let gauge = metrics.clone();
    tokio::task::spawn_blocking(move || {
        let connect = || {
            let c = std::net::TcpStream::connect(addr).expect("connect");
            c.set_read_timeout(Some(NEVER)).expect("read timeout");
            c
        };
        // Two connections, each known to the gateway (it answered on them).
        let mut held: Vec<_> = (0..2).map(|_| connect()).collect();
        for c in &mut held {
            assert!(http1_round_trip(c), "the first two connections are served");
        }
        // The third is closed at once, not left to time out.
        let mut third = connect();
        assert!(
            !http1_round_trip(&mut third),
            "a connection over the limit was served"
        );
        assert_eq!(
            gauge.get(
                "credgate_connections_open",
                &[("listener", &addr.to_string())]
            ),
            2.0,
            "the two held connections are open"
        );

        let mut a = std::net::TcpStream::connect(admin).expect("admin connect");
        a.set_read_timeout(Some(NEVER)).expect("read timeout");
        a.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .expect("admin write");
        let mut answer = String::new();
        a.read_to_string(&mut answer).expect("admin read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

        // A connection given back makes room again: once the gateway has seen it close, a new one is served.
        drop(held.pop());
        let served_again = (0..10_000).any(|_| http1_round_trip(&mut connect()));
        assert!(served_again, "room was never made again");
    })
    .await
    .expect("client");
    assert!(
        metrics.get(
            "credgate_connections_refused_total",
            &[("listener", &addr.to_string())]
        ) >= 1.0
    );
}
