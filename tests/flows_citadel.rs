//! The Citadel flow over real sockets against a fake Citadel that checks the wire shapes of VENDORS.md §2.
mod support;

use http::Method;
use serde_json::json;
use support::callers::Callers;
use support::fake_citadel::{self, ACCESS_TOKEN, FakeCitadel, PUBLIC_TOKEN, SSN};
use support::fake_http::{Got, call};

const CLIENT_ID: &str = "client-id-1";
const SECRET: &str = "sandbox-secret-1";

struct Setup {
    citadel: FakeCitadel,
    gw: support::TestGateway,
    callers: Callers,
}

impl Setup {
    /// `GET path` as the caller `svc-a`.
    async fn get(&self, path: &str) -> Got {
        self.get_as("svc-a", path).await
    }

    async fn get_as(&self, sub: &str, path: &str) -> Got {
        let bearer = self.callers.bearer(sub, "");
        call(
            Method::GET,
            &format!("http://127.0.0.1:{}{path}", self.gw.addr().port()),
            &[("authorization", bearer.as_str())],
            "",
        )
        .await
    }
}

async fn setup(extra: &str) -> Setup {
    let citadel = fake_citadel::start(CLIENT_ID, SECRET).await;
    let callers = Callers::new();
    let gw = support::start_gateway(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
{issuer}

[flows.citadel]
api_url = "{url}"
client_id = "{CLIENT_ID}"
access_secret = "{SECRET}"
client_name = "Acme Payroll"
tracking_info = "user-42"
{extra}

[[routes]]
path_prefix = "/citadel"
flow = "citadel"
"#,
        url = citadel.url(),
        issuer = callers.issuer_toml(),
    ))
    .await;
    Setup {
        citadel,
        gw,
        callers,
    }
}

#[tokio::test]
async fn bridge_token_posts_product_client_and_tracking_with_the_secret_headers() {
    let s = setup("").await;
    let got = s.get("/citadel/bridge-token").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["bridge_token"], "bridge-abc");
    let r = &s.citadel.seen("/v1/bridge-tokens/")[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.header("x-access-client-id"), Some(CLIENT_ID));
    assert_eq!(r.header("x-access-secret"), Some(SECRET));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("accept"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"product_type": "employment", "client_name": "Acme Payroll", "tracking_info": "user-42"})
    );
}

#[tokio::test]
async fn employment_verification_exchanges_once_and_hides_the_access_token() {
    let s = setup("").await;
    let got = s
        .get(&format!("/citadel/verifications/{PUBLIC_TOKEN}"))
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let report = got.json();
    assert_eq!(report["employments"][0]["product"], "employment");
    assert_eq!(
        report["employments"][0]["profile"]["ssn"], SSN,
        "the report is the product"
    );
    assert!(report.get("access_token").is_none());
    assert!(!got.text().contains(ACCESS_TOKEN));

    let ex = &s.citadel.seen("/v1/link-access-tokens/")[0];
    assert_eq!(ex.json(), json!({"public_token": PUBLIC_TOKEN}));
    assert_eq!(ex.header("x-access-secret"), Some(SECRET));
    let v = &s.citadel.seen("/v1/verifications/employments/")[0];
    assert_eq!(v.json(), json!({"access_token": ACCESS_TOKEN}));
    assert_eq!(v.header("x-access-client-id"), Some(CLIENT_ID));

    // A public token is single-use upstream (reuse is 410); a retry reuses the exchange.
    let again = s
        .get(&format!("/citadel/verifications/{PUBLIC_TOKEN}"))
        .await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(s.citadel.seen("/v1/link-access-tokens/").len(), 1);
    assert_eq!(s.citadel.seen("/v1/verifications/employments/").len(), 2);
}

#[tokio::test]
async fn another_caller_with_the_same_public_token_does_not_get_the_first_callers_report() {
    let s = setup("").await;
    let first = s
        .get_as("svc-a", &format!("/citadel/verifications/{PUBLIC_TOKEN}"))
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    // The exchange is kept per caller: svc-b's request spends the public token anew, which Citadel refuses.
    let other = s
        .get_as("svc-b", &format!("/citadel/verifications/{PUBLIC_TOKEN}"))
        .await;
    assert_ne!(other.status, 200, "{}", other.text());
    assert!(!other.text().contains(SSN), "{}", other.text());
    assert_eq!(s.citadel.seen("/v1/link-access-tokens/").len(), 2);
    assert_eq!(s.citadel.seen("/v1/verifications/employments/").len(), 1);
}

#[tokio::test]
async fn income_product_reads_the_income_report() {
    let s = setup("product_type = \"income\"").await;
    let got = s
        .get(&format!("/citadel/verifications/{PUBLIC_TOKEN}"))
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["employments"][0]["product"], "income");
    assert_eq!(s.citadel.seen("/v1/verifications/incomes/").len(), 1);
    assert!(s.citadel.seen("/v1/verifications/employments/").is_empty());
    let b = s.get("/citadel/bridge-token").await;
    assert_eq!(b.status, 200);
    assert_eq!(
        s.citadel.seen("/v1/bridge-tokens/")[0].json()["product_type"],
        "income"
    );
}

#[tokio::test]
async fn other_product_types_get_a_clear_400_without_spending_the_public_token() {
    let s = setup("product_type = \"deposit_switch\"").await;
    let got = s
        .get(&format!("/citadel/verifications/{PUBLIC_TOKEN}"))
        .await;
    assert_eq!(got.status, 400);
    let p = got.json();
    assert_eq!(p["code"], "invalid_request");
    assert!(
        p["detail"]
            .as_str()
            .expect("detail")
            .contains("\"deposit_switch\" has no verification report"),
        "{p}"
    );
    assert!(s.citadel.server.seen().is_empty());
}

#[tokio::test]
async fn legacy_access_tokens_exchange_is_supported() {
    let s = setup("exchange = \"access_tokens\"").await;
    let got = s
        .get(&format!("/citadel/verifications/{PUBLIC_TOKEN}"))
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        s.citadel.seen("/v1/access-tokens/")[0].json(),
        json!({"public_tokens": [PUBLIC_TOKEN]})
    );
}

#[tokio::test]
async fn vendor_refusals_name_the_step_and_carry_no_secret_or_pii() {
    let s = setup("").await;
    let got = s.get("/citadel/verifications/unknown-token").await;
    assert_eq!(got.status, 502);
    let p = got.json();
    assert_eq!(p["code"], "vendor_error");
    assert_eq!(
        p["detail"],
        "citadel link-access-tokens/ answered 400 (citadel code validation_error)"
    );
    for leak in [SECRET, CLIENT_ID, SSN, "JOHN DOE"] {
        assert!(!got.text().contains(leak), "{leak} leaked");
    }
    let got = s.get("/citadel/verifications/bad%20token").await;
    assert_eq!(got.status, 400);
    assert_eq!(s.get("/citadel/nope").await.status, 404);
    let bearer = s.callers.bearer("svc-a", "");
    let post = call(
        Method::POST,
        &format!(
            "http://127.0.0.1:{}/citadel/bridge-token",
            s.gw.addr().port()
        ),
        &[("authorization", bearer.as_str())],
        "",
    )
    .await;
    assert_eq!(post.status, 405);
}

#[tokio::test]
async fn wrong_secret_is_a_vendor_error_without_the_secret() {
    let citadel = fake_citadel::start(CLIENT_ID, "the-real-secret").await;
    let gw = support::start_gateway(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[flows.citadel]
api_url = "{}"
client_id = "{CLIENT_ID}"
access_secret = "{SECRET}"
client_name = "Acme"
[[routes]]
path_prefix = "/citadel"
flow = "citadel"
auth = "none"
"#,
        // Without the trailing slash: the flow must add it (Django paths).
        citadel.url().trim_end_matches('/')
    ))
    .await;
    let got = call(
        Method::GET,
        &format!("http://127.0.0.1:{}/citadel/bridge-token", gw.addr().port()),
        &[],
        "",
    )
    .await;
    assert_eq!(got.status, 502);
    assert_eq!(
        got.json()["detail"],
        "citadel bridge-tokens/ answered 401 (citadel code authentication_failed)"
    );
    assert!(!got.text().contains(SECRET));
    assert_eq!(citadel.seen("/v1/bridge-tokens/").len(), 1);
    assert_eq!(
        citadel.seen("/v1/bridge-tokens/")[0].json(),
        json!({"product_type": "employment", "client_name": "Acme"})
    );
}

#[test]
fn config_errors_name_the_key() {
    let base = r#"
[flows.citadel]
client_id = "c"
access_secret = "s"
client_name = "Acme"
"#;
    for (extra, key) in [
        (
            "product_type = \"Employment!\"",
            "flows.citadel.product_type",
        ),
        ("exchange = \"magic\"", "flows.citadel.exchange"),
        ("api_url = \"ftp://x/\"", "flows.citadel.api_url"),
    ] {
        let err = credgate::gateway::Config::from_toml(&format!("{base}{extra}\n"), "<t>")
            .expect_err(extra);
        assert!(err.to_string().contains(key), "{err}");
    }
    let err =
        credgate::gateway::Config::from_toml(&base.replace("access_secret = \"s\"\n", ""), "<t>")
            .expect_err("secret");
    assert!(
        err.to_string().contains("flows.citadel.access_secret"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_vendor_is_a_502_naming_the_step() {
    let (_held, closed) = support::closed_port();
    let gw = support::start_gateway(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[flows.citadel]
api_url = "http://{closed}/v1/"
client_id = "{CLIENT_ID}"
access_secret = "{SECRET}"
client_name = "Acme"
[[routes]]
path_prefix = "/citadel"
flow = "citadel"
auth = "none"
"#
    ))
    .await;
    let got = call(
        Method::GET,
        &format!("http://127.0.0.1:{}/citadel/bridge-token", gw.addr().port()),
        &[],
        "",
    )
    .await;
    assert_eq!(got.status, 502);
    let p = got.json();
    assert_eq!(p["code"], "vendor_unreachable");
    assert_eq!(p["detail"], "citadel bridge-tokens/ could not be reached");
}
