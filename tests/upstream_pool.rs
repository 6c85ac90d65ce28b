//! The gateway's keep-alive connections to an upstream, seen from the upstream: reused while they last, and never
//! used once the upstream has closed them or said it would. Every test here holds for both pools and both timers
//! (`server.upstream_pool`, `server.timer`); CI runs this suite once more with the fallbacks as defaults.
mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use credgate::gateway::Config;
use credgate::testing::TimerKind;
use credgate::testing::UpstreamPool;
use support::raw_upstream::{self, AfterAnswer, RawUpstream};

type PlainClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

/// An upstream that behaves as `after` says, a gateway routing everything to it, and a client.
async fn start(after: AfterAnswer) -> (RawUpstream, support::TestGateway, PlainClient) {
    let up = raw_upstream::start(after).await;
    let gw = gateway(&up).await;
    (up, gw, Client::builder(TokioExecutor::new()).build_http())
}

async fn gateway(up: &RawUpstream) -> support::TestGateway {
    gateway_with(up, "").await
}

/// A gateway routing everything to `up`, with `server` as its `[server]` section.
async fn gateway_with(up: &RawUpstream, server: &str) -> support::TestGateway {
    support::start_gateway(&format!(
        r#"
[server]
{server}
[[listeners]]
address = "127.0.0.1:0"
tls = false
[upstreams.u]
url = "http://{}"
[[routes]]
name = "all"
path_prefix = "/"
upstream = "u"
auth = "none"
"#,
        up.addr
    ))
    .await
}

async fn get_ok(client: &PlainClient, gw: &support::TestGateway, i: usize) {
    let req = Request::get(format!("http://{}/r{i}", gw.addr()))
        .body(Empty::new())
        .expect("request");
    let rsp = client.request(req).await.expect("response");
    let status = rsp.status();
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(status, StatusCode::OK, "request {i}: {body:?}");
    assert_eq!(&body[..], b"ok", "request {i}");
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let (up, gw, client) = start(AfterAnswer::KeepOpen).await;
    for i in 0..20 {
        get_ok(&client, &gw, i).await;
    }
    assert_eq!(up.requests(), 20);
    assert_eq!(
        up.connections(),
        1,
        "every request after the first reuses the connection"
    );
}

#[tokio::test]
async fn concurrent_requests_reuse_the_connections_they_opened() {
    let (up, gw, client) = start(AfterAnswer::KeepOpen).await;
    for round in 0..3 {
        let batch = (0..8).map(|i| get_ok(&client, &gw, round * 8 + i));
        futures_util::future::join_all(batch).await;
    }
    assert_eq!(up.requests(), 24);
    assert!(
        up.connections() <= 8,
        "later rounds reuse the first round's connections: {} opened",
        up.connections()
    );
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used() {
    let (up, gw, client) = start(AfterAnswer::CloseSilently).await;
    for i in 0..5 {
        get_ok(&client, &gw, i).await;
        // The gateway now holds an idle connection whose other end is gone.
        up.wait_closed(i + 1).await;
    }
    assert_eq!(up.connections(), 5);
}

#[tokio::test]
async fn a_connection_the_upstream_said_it_would_close_is_not_pooled() {
    let (up, gw, client) = start(AfterAnswer::SayCloseAndClose).await;
    for i in 0..5 {
        get_ok(&client, &gw, i).await;
    }
    assert_eq!(up.connections(), 5);
}

#[tokio::test]
async fn each_pool_and_timer_setting_forwards_and_reuses_connections() {
    let client = Client::builder(TokioExecutor::new()).build_http();
    for pool in ["credgate", "hyper_util"] {
        for timer in ["credgate", "tokio"] {
            let up = raw_upstream::start(AfterAnswer::KeepOpen).await;
            let server = format!("upstream_pool = \"{pool}\"\ntimer = \"{timer}\"");
            let gw = gateway_with(&up, &server).await;
            let kind = if timer == "tokio" {
                TimerKind::Tokio
            } else {
                TimerKind::Credgate
            };
            assert_eq!(gw.gw.timer.kind(), kind, "{server}");
            for i in 0..5 {
                get_ok(&client, &gw, i).await;
            }
            assert_eq!(up.requests(), 5, "{server}");
            assert_eq!(up.connections(), 1, "{server}: the connection was reused");
        }
    }
}

#[test]
fn the_pool_and_timer_keys_take_only_their_names_and_default_to_the_build() {
    let cfg = |server: &str| Config::from_toml(&format!("[server]\n{server}"), "<test>");
    let set = cfg("upstream_pool = \"hyper_util\"\ntimer = \"tokio\"").expect("valid");
    assert_eq!(set.upstream_pool, UpstreamPool::HyperUtil);
    assert_eq!(set.timer, TimerKind::Tokio);
    let unset = cfg("").expect("valid");
    assert_eq!(unset.upstream_pool, UpstreamPool::default());
    assert_eq!(unset.timer, TimerKind::default());
    for bad in ["upstream_pool = \"hyper\"", "timer = \"std\""] {
        let e = cfg(bad).expect_err(bad).to_string();
        let key = bad.split(' ').next().unwrap_or_default();
        assert!(e.contains(key), "{bad}: {e}");
    }
}
