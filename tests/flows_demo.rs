//! `credgate demo`'s flows: the generated config validates, and each flow answers against the loopback sandboxes.
mod support;

use http_body_util::BodyExt;
use support::certs::{self, Alpn};

async fn get(client: &certs::TestClient, url: String, hook: Option<&str>) -> (u16, String) {
    let req = match hook {
        None => http::Request::get(url).body(support::upstream::full("")),
        Some(body) => http::Request::post(url)
            .header("x-webhook-secret", credgate::demo::flows::WEBHOOK_SECRET)
            .body(support::upstream::full(body.to_owned())),
    }
    .expect("req");
    let rsp = client.request(req).await.expect("answer");
    let status = rsp.status().as_u16();
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn demo_serves_every_flow_against_its_sandboxes() {
    let demo = credgate::demo::prepare(0, 0).await.expect("demo");
    let gw = support::start_gateway(&demo.config_toml).await;
    let ca = std::fs::read_to_string(&demo.ca_path).expect("ca");
    let client = certs::client(&ca, Alpn::H1);
    let base = format!("https://localhost:{}", gw.addr().port());

    let (s, b) = get(&client, format!("{base}/incode/start"), None).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("\"interviewId\""), "{b}");
    let (s, b) = get(
        &client,
        format!("{base}/incode/onboarding-url?redirectUrl=https://app.example.com/done"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("\"url\""), "{b}");
    let (s, b) = get(
        &client,
        format!("{base}/incode/hooks/approve"),
        Some(r#"{"interviewId":"iv-2","onboardingStatus":"ONBOARDING_FINISHED"}"#),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("\"decision\":\"approved\""), "{b}");
    let (s, b) = get(&client, format!("{base}/citadel/bridge-token"), None).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("bridge_token"), "{b}");
    let (s, b) = get(
        &client,
        format!("{base}/citadel/verifications/demo-public-token"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(
        b.contains("employments") && !b.contains("access_token"),
        "{b}"
    );
    let (s, b) = get(
        &client,
        format!("{base}/telesign/token/+15551234567/order-1"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b.split('.').count(), 3, "{b}");
    let (s, b) = get(
        &client,
        format!("{base}/telesign/token-status/order-1"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(b.contains("\"phone\":\"15551234567\""), "{b}");
    demo.remove_files().expect("demo files removed");
}
