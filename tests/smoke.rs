//! Smoke test of the support harness: a static credential is injected over real TLS.
mod support;

use support::certs::{self, Alpn};

#[tokio::test]
async fn static_credential_reaches_upstream_over_tls() {
    let up = support::upstream::start(support::upstream::Behaviour::Ok).await;
    let c = certs::make();
    let gw = support::start_gateway(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
cert = "{}"
key = "{}"
[upstreams.u]
url = "{}"
[credentials.k]
kind = "static"
allowed_hosts = ["127.0.0.1"]
headers = {{ "X-Api-Key" = "sekret" }}
[[routes]]
path_prefix = "/api"
upstream = "u"
credential = "k"
auth = "none"
"#,
        c.cert.display(),
        c.key.display(),
        up.url()
    ))
    .await;
    let client = certs::client(&c.pem.ca_cert_pem, Alpn::H2);
    let req = http::Request::get(format!("https://localhost:{}/api/x", gw.addr().port()))
        .header("authorization", "Bearer caller")
        .body(support::upstream::full(""))
        .expect("req");
    let rsp = client.request(req).await.expect("response");
    assert_eq!(rsp.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-api-key"], "sekret");
    assert!(seen[0].headers.get("authorization").is_none());
}
