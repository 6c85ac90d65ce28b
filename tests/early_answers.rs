//! An answer sent before the request body was read (401, 404) over HTTP/2: the gateway reads and drops a small
//! remaining body instead of resetting the stream, so that clients still uploading (curl 7.88) keep the answer.
mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use tokio::net::TcpStream;

/// Longest any step may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[upstreams.u]
url = "http://127.0.0.1:9"
[[issuers]]
name = "idp"
issuer = "https://idp.test/"
audiences = ["credgate"]
jwks_url = "http://127.0.0.1:9/jwks"
[[routes]]
path_prefix = "/api"
upstream = "u"
"#;

type Client = h2::client::SendRequest<Bytes>;

async fn connect(gw: &support::TestGateway) -> Client {
    let tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    client
}

/// A request on `client` that ends with its headers, answered in full: every frame the gateway sent before that
/// answer has been read by then.
async fn round_trip(client: &mut Client, path: &str) -> StatusCode {
    let req = Request::get(format!("http://gw{path}"))
        .body(())
        .expect("request");
    let (rsp, _) = client.send_request(req, true).expect("send");
    let rsp = tokio::time::timeout(PATIENCE, rsp)
        .await
        .expect("in time")
        .expect("response");
    let status = rsp.status();
    let mut body = rsp.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk.expect("body");
    }
    status
}

#[tokio::test]
async fn an_early_answer_over_http2_leaves_the_callers_upload_to_finish() {
    let gw = support::start_gateway(CONFIG).await;
    for (path, status) in [
        ("/api/pay", StatusCode::UNAUTHORIZED),
        ("/nowhere", StatusCode::NOT_FOUND),
    ] {
        let client = connect(&gw).await;
        let client_ready = client.clone().ready();
        let mut client = tokio::time::timeout(PATIENCE, client_ready)
            .await
            .expect("in time")
            .expect("ready");
        let req = Request::post(format!("http://gw{path}"))
            .header("content-length", "32768")
            .body(())
            .expect("request");
        let (rsp, mut upload) = client.send_request(req, false).expect("send");
        upload
            .send_data(Bytes::from(vec![b'a'; 16384]), false)
            .expect("first half");
        let rsp = tokio::time::timeout(PATIENCE, rsp)
            .await
            .expect("an answer in time")
            .expect("the answer arrives");
        assert_eq!(rsp.status(), status, "{path}");
        let mut body = rsp.into_body();
        while let Some(chunk) = body.data().await {
            let _ = chunk.expect("the answer's body arrives whole");
        }
        // Every frame sent with the answer is in: had the gateway reset the stream, it would be known now.
        assert_eq!(
            round_trip(&mut client, "/nowhere").await,
            StatusCode::NOT_FOUND
        );
        upload
            .send_data(Bytes::from(vec![b'b'; 16384]), true)
            .unwrap_or_else(|e| {
                panic!("{path}: the gateway reset the stream after its answer: {e}")
            });
        // The rest of the upload was taken: the connection is still in order.
        assert_eq!(
            round_trip(&mut client, "/nowhere").await,
            StatusCode::NOT_FOUND
        );
        let reset = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match upload.poll_reset(cx) {
                std::task::Poll::Ready(Ok(reason)) => Some(reason),
                _ => None,
            })
        })
        .await;
        assert_eq!(reset, None, "{path}: stream reset ({reset:?})");
    }
}
