//! Idle HTTP/1.1 connections are parked (their buffers given back) and served again on the same socket: plainly, over
//! TLS, and with a request head that was half sent when the connection was parked.
mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Guards against a hang; parking takes a fraction of it.
const NEVER: Duration = Duration::from_secs(30);

/// A connection quiet for a quarter of this is parked; one quiet for all of it is closed.
const HEADER_READ_TIMEOUT: &str = "4s";

fn config(listener: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
header_read_timeout = "{HEADER_READ_TIMEOUT}"
{listener}
"#
    )
}

/// Wait until the listener has parked at least `n` connections.
async fn parked(gw: &support::TestGateway, n: f64) {
    let listener = gw.addr().to_string();
    let seen = tokio::time::timeout(NEVER, async {
        while gw.gw.metrics.get(
            "credgate_connections_parked_total",
            &[("listener", &listener)],
        ) < n
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(seen.is_ok(), "no connection was parked");
}

/// An HTTP/1.1 client on `io`, with the task that drives it.
async fn http1<T>(io: T) -> SendRequest<Empty<Bytes>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("http1 handshake");
    tokio::spawn(conn);
    send
}

/// One GET for a path no route serves.
async fn not_found(send: &mut SendRequest<Empty<Bytes>>) -> StatusCode {
    let req = Request::get("/nowhere")
        .header("host", "localhost")
        .body(Empty::new())
        .expect("request");
    let rsp = send.send_request(req).await.expect("response");
    let status = rsp.status();
    rsp.into_body().collect().await.expect("body");
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_parked_and_served_again() {
    let gw = support::start_gateway(&config("tls = false")).await;
    let mut send = http1(TcpStream::connect(gw.addr()).await.expect("connect")).await;
    assert_eq!(not_found(&mut send).await, StatusCode::NOT_FOUND);
    parked(&gw, 1.0).await;
    // hyper's client sends on the same connection, and fails if the gateway closed it.
    assert_eq!(not_found(&mut send).await, StatusCode::NOT_FOUND);
    // And it is parked again once quiet.
    parked(&gw, 2.0).await;
    assert_eq!(not_found(&mut send).await, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_half_sent_when_parked_is_answered_whole() {
    let gw = support::start_gateway(&config("tls = false")).await;
    let mut tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    tcp.write_all(b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let first = read_head(&mut tcp).await;
    assert!(first.starts_with("HTTP/1.1 404"), "{first}");
    // Half a head, then quiet until the connection is parked with those bytes read ahead.
    tcp.write_all(b"GET /nowhere HTTP/1.1\r\nHo")
        .await
        .expect("write");
    parked(&gw, 1.0).await;
    tcp.write_all(b"st: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let second = read_head(&mut tcp).await;
    assert!(second.starts_with("HTTP/1.1 404"), "{second}");
}

/// Read up to the end of one response head (and whatever came with it).
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(NEVER, async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no response head");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_is_parked_and_served_again() {
    let c = support::certs::make();
    let gw = support::start_gateway(&config(&format!(
        "cert = \"{}\"\nkey = \"{}\"",
        c.cert.display(),
        c.key.display()
    )))
    .await;
    let mut tls = support::certs::client_tls(&c.pem.ca_cert_pem, None);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    let mut send = http1(stream).await;
    assert_eq!(not_found(&mut send).await, StatusCode::NOT_FOUND);
    parked(&gw, 1.0).await;
    assert_eq!(not_found(&mut send).await, StatusCode::NOT_FOUND);
}
