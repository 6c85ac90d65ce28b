//! The thundering herd: 1,000 concurrent requests on a cold cache cause exactly one token request. In its own file
//! (its own process) so that its 4,000 sockets do not disturb the timing-sensitive tests in `credentials.rs`.
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::fake_vendor::{self, Mode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herd_of_1000_on_a_cold_cache_makes_exactly_one_token_request() {
    let v = fake_vendor::new().run().await;
    let gw = support::start_gateway(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[upstreams.v]
url = "{}"
[credentials.v]
kind = "oauth2_client_credentials"
allowed_hosts = ["127.0.0.1"]
token_url = "{}"
client_id = "id"
client_secret = "secret"
# Fetched on first use: the herd below is the first use.
readiness = "ignored"
[[routes]]
path_prefix = "/api"
upstream = "v"
credential = "v"
auth = "none"
"#,
        v.url(),
        v.token_url()
    ))
    .await;
    v.set_mode(Mode::Hold);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let client = client.clone();
        let url = format!("http://{}/api/item/{i}", gw.addr());
        tasks.push(tokio::spawn(async move {
            let req = Request::get(url)
                .body(Full::new(Bytes::new()))
                .expect("request");
            client.request(req).await.expect("response").status()
        }));
    }
    // Every request is inside the gateway waiting for the one token request, which the endpoint holds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while gw
        .gw
        .metrics
        .get("credgate_credential_waits_total", &[("credential", "v")])
        < 1000.0
    {
        assert!(Instant::now() < deadline, "the herd did not gather");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(v.grants(), 1, "one token request for the whole herd");
    v.release();
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    assert_eq!(v.grants(), 1);
    assert_eq!(v.api_log().len(), 1000);
    let token = &v.issued()[0];
    assert!(
        v.api_log()
            .iter()
            .all(|s| s.headers["authorization"] == format!("Bearer {token}").as_str())
    );
}
