//! The Incode flow over real sockets against a fake Incode that checks the wire shapes of VENDORS.md §1.
mod support;

use std::path::Path;

use http::Method;
use serde_json::json;
use support::fake_http::{Got, call};
use support::fake_incode::{self, FakeIncode, StartFailure};

/// interview_id, onboarding_status, client_id, flow_id, external_id.
type EventRow = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

const API_KEY: &str = "api-key-1";
const ADMIN_TOKEN: &str = "admin-token-1";
const HOOK_SECRET: &str = "hook-secret-1";

struct Setup {
    incode: FakeIncode,
    gw: support::TestGateway,
    db: support::Scratch,
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.gw.addr().port())
    }

    async fn get(&self, path: &str) -> Got {
        call(Method::GET, &self.url(path), &[], "").await
    }

    async fn hook(&self, path: &str, body: &serde_json::Value) -> Got {
        call(
            Method::POST,
            &self.url(path),
            &[
                ("x-webhook-secret", HOOK_SECRET),
                ("content-type", "application/json"),
            ],
            &body.to_string(),
        )
        .await
    }
}

fn config(incode_url: &str, db: &Path, incode_extra: &str, webhook_extra: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false

[credentials.incode_admin]
kind = "static"
allowed_hosts = ["127.0.0.1"]
headers = {{ "X-Incode-Hardware-Id" = "{ADMIN_TOKEN}", "x-api-key" = "{API_KEY}", "api-version" = "1.0" }}

[flows]
database = "{db}"

[flows.incode]
api_url = "{incode_url}"
api_key = "{API_KEY}"
flow_id = "flow-123"
client_id = "acme"
admin_credential = "incode_admin"
redirect_origins = ["https://app.example.com"]
timeout = "2s"
{incode_extra}

[flows.incode.webhook]
header = "X-Webhook-Secret"
secret = "{HOOK_SECRET}"
basic_user = "incode"
basic_password = "basic-pass"
{webhook_extra}

[[routes]]
path_prefix = "/incode"
flow = "incode"
auth = "none"

[[routes]]
path_prefix = "/incode/hooks"
flow = "incode_webhooks"
auth = "none"
"#,
        db = db.display()
    )
}

async fn setup_with(incode_extra: &str, webhook_extra: &str) -> Setup {
    let incode = fake_incode::start(API_KEY, ADMIN_TOKEN).await;
    let db = support::temp_dir("incode").join("flows.db");
    // A trailing slash on the base must not produce `//omni/start`.
    let gw = support::start_gateway(&config(
        &format!("{}/", incode.url()),
        &db,
        incode_extra,
        webhook_extra,
    ))
    .await;
    Setup { incode, gw, db }
}

async fn setup() -> Setup {
    setup_with("", "").await
}

#[tokio::test]
async fn start_calls_omni_start_with_the_api_key_and_answers_token_and_interview() {
    let s = setup().await;
    let got = s.get("/incode/start").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.json(),
        json!({"token": "sess-1", "interviewId": "iv-1"})
    );
    let seen = s.incode.all();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/omni/start")
    );
    assert_eq!(r.header("x-api-key"), Some(API_KEY));
    assert_eq!(r.header("api-version"), Some("1.0"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("x-incode-hardware-id").is_none());
    assert_eq!(
        r.json(),
        json!({"countryCode": "ALL", "configurationId": "flow-123"})
    );
}

#[tokio::test]
async fn start_sends_configured_country_and_language() {
    let s = setup_with("country_code = \"MX\"\nlanguage = \"es-MX\"", "").await;
    assert_eq!(s.get("/incode/start").await.status, 200);
    assert_eq!(
        s.incode.seen("/omni/start")[0].json(),
        json!({"countryCode": "MX", "configurationId": "flow-123", "language": "es-MX"})
    );
}

#[tokio::test]
async fn onboarding_url_starts_then_asks_with_the_session_token_only() {
    let s = setup().await;
    for (param, n) in [("redirectUrl", 1), ("redirectionUrl", 2)] {
        let got = s
            .get(&format!(
                "/incode/onboarding-url?{param}=https%3A%2F%2Fapp.example.com%2Fdone%3Fx%3D1"
            ))
            .await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(
            got.json(),
            json!({"url": "https://demo.incode.id/0/flow?token=onboarding",
                   "token": format!("sess-{n}"), "interviewId": format!("iv-{n}")})
        );
        let start = &s.incode.seen("/omni/start")[n - 1];
        assert_eq!(
            start.json(),
            json!({"countryCode": "ALL", "configurationId": "flow-123",
                   "redirectionUrl": "https://app.example.com/done?x=1"})
        );
        let url = &s.incode.seen("/0/omni/onboarding-url")[n - 1];
        assert_eq!(url.method, Method::GET);
        assert_eq!(url.query.as_deref(), Some("clientId=acme"));
        let session = format!("sess-{n}");
        assert_eq!(url.header("x-incode-hardware-id"), Some(session.as_str()));
        assert_eq!(url.header("api-version"), Some("1.0"));
        assert!(url.header("x-api-key").is_none(), "the 0 rule: no API key");
    }
}

#[tokio::test]
async fn the_redirect_sent_to_incode_is_the_url_as_checked_not_the_raw_string() {
    let s = setup().await;
    // `\` reads as `/` to a WHATWG parser but as part of a user name to others, which then go to evil.com.
    let got = s
        .get("/incode/onboarding-url?redirectUrl=https%3A%2F%2Fapp.example.com%5C%40evil.com")
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        s.incode.seen("/omni/start")[0].json()["redirectionUrl"],
        "https://app.example.com/@evil.com"
    );
}

#[tokio::test]
async fn onboarding_url_refuses_a_redirect_outside_the_allowlist_before_calling_incode() {
    let s = setup().await;
    for bad in [
        "https%3A%2F%2Fevil.example.com%2F",
        "https%3A%2F%2Fapp.example.com.evil.com%2F",
        "javascript%3Aalert(1)",
        "http%3A%2F%2Fapp.example.com%2F",
        "https%3A%2F%2Fuser%40app.example.com%2F",
        "https%3A%2F%2Fapp.example.com%3Ax%40evil.com%2F",
    ] {
        let got = s
            .get(&format!("/incode/onboarding-url?redirectUrl={bad}"))
            .await;
        assert_eq!(got.status, 400, "{bad}");
        assert_eq!(got.json()["code"], "invalid_request");
    }
    assert!(s.incode.all().is_empty());
}

#[tokio::test]
async fn session_api_passes_through_with_the_callers_session_token_and_never_the_api_key() {
    let s = setup().await;
    let body = r#"{"base64Image":"aGVsbG8="}"#;
    let got = call(
        Method::POST,
        &s.url("/incode/0/omni/add/front-id/v2?onlyFront=false"),
        &[
            ("x-incode-hardware-id", "sess-9"),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["classification"], true);
    let r = &s.incode.seen("/0/omni/add/front-id/v2")[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.query.as_deref(), Some("onlyFront=false"));
    assert_eq!(r.header("x-incode-hardware-id"), Some("sess-9"));
    assert_eq!(r.header("api-version"), Some("1.0"));
    assert!(r.header("x-api-key").is_none());
    assert_eq!(r.body.as_ref(), body.as_bytes());

    let got = call(
        Method::GET,
        &s.url("/incode/0/omni/finish-status"),
        &[("x-incode-hardware-id", "sess-9")],
        "",
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["action"], "approved");
    assert!(s.incode.seen("/0/omni/finish-status")[0].body.is_empty());

    let got = call(
        Method::POST,
        &s.url("/incode/0/omni/process/id"),
        &[("x-incode-hardware-id", "sess-9")],
        "",
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let r = &s.incode.seen("/0/omni/process/id")[0];
    assert_eq!(r.body.as_ref(), b"{}");
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn session_api_needs_a_session_token_and_relays_refusals_without_the_vendor_body() {
    let s = setup().await;
    let got = call(
        Method::POST,
        &s.url("/incode/0/omni/add/front-id/v2"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(got.status, 401);
    assert_eq!(got.json()["code"], "missing_session_token");
    assert!(s.incode.all().is_empty());

    let got = call(
        Method::POST,
        &s.url("/incode/0/omni/add/face/third-party?imageType=selfie"),
        &[("x-incode-hardware-id", "sess-9")],
        r#"{"base64Image":"aGVsbG8="}"#,
    )
    .await;
    assert_eq!(got.status, 400);
    let p = got.json();
    assert_eq!(p["code"], "vendor_refused");
    assert_eq!(
        p["detail"],
        "incode 0/omni/add/face/third-party answered 400 (incode code 4005)"
    );
    assert!(
        !got.text().contains("JOHN DOE"),
        "vendor PII leaked: {}",
        got.text()
    );

    let got = call(
        Method::GET,
        &s.url("/incode/0/omni/../omni/get/score"),
        &[("x-incode-hardware-id", "sess-9")],
        "",
    )
    .await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert_eq!(got.json()["code"], "bad_request");
}

#[tokio::test]
async fn vendor_failures_name_the_step_and_never_carry_secrets() {
    let s = setup().await;
    s.incode.fail_start(StartFailure::Status(500));
    let got = s.get("/incode/start").await;
    assert_eq!(got.status, 502);
    let p = got.json();
    assert_eq!(p["code"], "vendor_error");
    assert_eq!(
        p["detail"],
        "incode omni/start answered 500 (incode code 500)"
    );
    assert_eq!(got.headers["content-type"], "application/problem+json");
    for secret in [API_KEY, ADMIN_TOKEN, "JOHN DOE"] {
        assert!(!got.text().contains(secret));
    }

    s.incode.fail_start(StartFailure::NotJson);
    let got = s.get("/incode/onboarding-url").await;
    assert_eq!(got.status, 502);
    assert_eq!(
        got.json()["detail"],
        "incode omni/start answered with a body that is not JSON"
    );
}

#[tokio::test]
async fn a_vendor_that_never_answers_is_a_504_naming_the_step() {
    let s = setup_with("", "").await;
    s.incode.fail_start(StartFailure::Hang);
    // The flow's timeout is 2s (config); the fake never answers.
    let got = s.get("/incode/start").await;
    assert_eq!(got.status, 504);
    let p = got.json();
    assert_eq!(p["code"], "vendor_timeout");
    assert_eq!(p["detail"], "incode omni/start did not answer within 2s");
}

#[tokio::test]
async fn webhook_is_authenticated_validated_and_recorded() {
    let s = setup().await;
    let event = json!({"interviewId": "iv-7", "onboardingStatus": "ID_VALIDATION_FINISHED",
                       "clientId": "acme", "flowId": "flow-123"});
    let got = s.hook("/incode/hooks/webhook", &event).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json(), json!({"success": true}));

    // HTTP Basic is the other accepted scheme.
    let got = call(
        Method::POST,
        &s.url("/incode/hooks/webhook"),
        &[("authorization", "Basic aW5jb2RlOmJhc2ljLXBhc3M=")],
        &json!({"interviewId": "iv-8", "onboardingStatus": "ONBOARDING_FINISHED", "externalId": "ext-1"})
            .to_string(),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());

    for headers in [
        vec![("x-webhook-secret", "wrong")],
        vec![("x-webhook-secret", "hook-secret-")],
        vec![("authorization", "Basic aW5jb2RlOndyb25n")],
        vec![],
    ] {
        let got = call(
            Method::POST,
            &s.url("/incode/hooks/webhook"),
            &headers,
            &event.to_string(),
        )
        .await;
        assert_eq!(got.status, 401, "{headers:?}");
        assert_eq!(got.json()["code"], "webhook_unauthorized");
        assert_eq!(got.headers["www-authenticate"], "Basic realm=\"credgate\"");
    }

    for bad in [
        json!({"onboardingStatus": "ONBOARDING_FINISHED"}),
        json!({"interviewId": "iv-1"}),
        json!({"interviewId": "iv 1; drop", "onboardingStatus": "ONBOARDING_FINISHED"}),
        json!({"interviewId": "iv-1", "onboardingStatus": "finished!"}),
        json!(["not", "an", "object"]),
    ] {
        let got = s.hook("/incode/hooks/webhook", &bad).await;
        assert_eq!(got.status, 400, "{bad}");
        assert_eq!(got.json()["code"], "invalid_request");
    }
    let got = call(
        Method::POST,
        &s.url("/incode/hooks/webhook"),
        &[("x-webhook-secret", HOOK_SECRET)],
        "{not json",
    )
    .await;
    assert_eq!(got.status, 400);

    let got = call(
        Method::GET,
        &s.url("/incode/hooks/webhook"),
        &[("x-webhook-secret", HOOK_SECRET)],
        "",
    )
    .await;
    assert_eq!(got.status, 405);

    let conn = rusqlite::Connection::open(&s.db).expect("open db");
    let rows: Vec<EventRow> = conn
        .prepare("SELECT interview_id, onboarding_status, client_id, flow_id, external_id FROM incode_events ORDER BY id")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        rows,
        vec![
            (
                "iv-7".into(),
                "ID_VALIDATION_FINISHED".into(),
                Some("acme".into()),
                Some("flow-123".into()),
                None
            ),
            (
                "iv-8".into(),
                "ONBOARDING_FINISHED".into(),
                None,
                None,
                Some("ext-1".into())
            ),
        ]
    );
    // Webhook endpoints are not reachable through the caller-facing flow, and vice versa.
    assert_eq!(s.hook("/incode/webhook", &event).await.status, 404);
    assert_eq!(s.get("/incode/hooks/start").await.status, 404);
}

#[tokio::test]
async fn webhook_source_allowlist_refuses_other_addresses_even_with_the_secret() {
    let s = setup_with("", "allow_ips = [\"10.0.0.0/8\"]").await;
    let event = json!({"interviewId": "iv-1", "onboardingStatus": "ONBOARDING_FINISHED"});
    let got = s.hook("/incode/hooks/webhook", &event).await;
    assert_eq!(got.status, 403);
    assert_eq!(got.json()["code"], "source_not_allowed");

    let s = setup_with("", "allow_ips = [\"127.0.0.0/8\", \"::1\"]").await;
    assert_eq!(s.hook("/incode/hooks/webhook", &event).await.status, 200);
}

#[tokio::test]
async fn approve_with_an_ok_score_fetches_scores_with_the_admin_token_and_approves() {
    let s = setup().await;
    let event = json!({"interviewId": "iv-ok", "onboardingStatus": "ONBOARDING_FINISHED",
                       "clientId": "acme", "flowId": "flow-123"});
    let got = s.hook("/incode/hooks/approve", &event).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let d = got.json();
    assert_eq!(d["success"], true);
    assert_eq!(d["approved"], true);
    assert_eq!(d["decision"], "approved");
    assert_eq!(d["interviewId"], "iv-ok");
    assert_eq!(d["repeated"], false);
    assert!(d["reason"].as_str().expect("reason").contains("OK"));
    assert!(!got.text().contains("identity-token-secret"));

    let score = &s.incode.seen("/omni/get/score")[0];
    assert_eq!(score.method, Method::GET);
    assert_eq!(score.query.as_deref(), Some("id=iv-ok"));
    assert_eq!(score.header("x-incode-hardware-id"), Some(ADMIN_TOKEN));
    assert_eq!(score.header("x-api-key"), Some(API_KEY));
    assert_eq!(score.header("api-version"), Some("1.0"));
    let approve = &s.incode.seen("/omni/process/approve")[0];
    assert_eq!(approve.method, Method::POST);
    assert_eq!(approve.query.as_deref(), Some("interviewId=iv-ok"));
    assert_eq!(approve.header("x-incode-hardware-id"), Some(ADMIN_TOKEN));
    assert_eq!(approve.header("content-type"), Some("application/json"));
    assert_eq!(approve.json(), json!({}));
}

#[tokio::test]
async fn approve_with_a_fail_score_is_acknowledged_and_not_approved() {
    let s = setup().await;
    s.incode.set_score("iv-fail", "FAIL");
    let got = s
        .hook(
            "/incode/hooks/approve",
            &json!({"interviewId": "iv-fail", "onboardingStatus": "ONBOARDING_FINISHED"}),
        )
        .await;
    assert_eq!(got.status, 200);
    let d = got.json();
    assert_eq!(d["approved"], false);
    assert_eq!(d["decision"], "not_approved");
    assert_eq!(d["reason"], "overall score status is FAIL, not OK");
    assert_eq!(s.incode.seen("/omni/get/score").len(), 1);
    assert!(s.incode.seen("/omni/process/approve").is_empty());
}

#[tokio::test]
async fn approve_ignores_events_other_than_onboarding_finished() {
    let s = setup().await;
    let got = s
        .hook(
            "/incode/hooks/approve",
            &json!({"interviewId": "iv-2", "onboardingStatus": "FACE_VALIDATION_FINISHED"}),
        )
        .await;
    assert_eq!(got.status, 200);
    let d = got.json();
    assert_eq!(d["decision"], "ignored");
    assert_eq!(d["approved"], false);
    assert!(
        s.incode.all().is_empty(),
        "no vendor call for other statuses"
    );
}

#[tokio::test]
async fn repeated_and_concurrent_deliveries_approve_once() {
    let s = setup().await;
    let event = json!({"interviewId": "iv-dup", "onboardingStatus": "ONBOARDING_FINISHED"});
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = s.url("/incode/hooks/approve");
        let body = event.to_string();
        tasks.push(tokio::spawn(async move {
            call(
                Method::POST,
                &url,
                &[("x-webhook-secret", HOOK_SECRET)],
                &body,
            )
            .await
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        let got = t.await.expect("task");
        assert_eq!(got.status, 200, "{}", got.text());
        if got.json()["repeated"] == false {
            fresh += 1;
            assert_eq!(got.json()["decision"], "approved");
        }
    }
    assert_eq!(fresh, 1, "exactly one delivery decides");
    // A later redelivery reports the recorded decision.
    let got = s.hook("/incode/hooks/approve", &event).await;
    assert_eq!(got.json()["decision"], "approved");
    assert_eq!(got.json()["repeated"], true);
    assert_eq!(s.incode.seen("/omni/process/approve").len(), 1);
    assert_eq!(s.incode.seen("/omni/get/score").len(), 1);
}

#[tokio::test]
async fn a_failed_decision_leaves_no_claim_so_the_redelivery_decides() {
    let s = setup().await;
    s.incode.reject_admin(1);
    let event = json!({"interviewId": "iv-retry", "onboardingStatus": "ONBOARDING_FINISHED"});
    let got = s.hook("/incode/hooks/approve", &event).await;
    assert_eq!(got.status, 502);
    assert_eq!(
        got.json()["detail"],
        "incode omni/get/score answered 401 (incode code 401)"
    );
    assert!(!got.text().contains(ADMIN_TOKEN));
    let got = s.hook("/incode/hooks/approve", &event).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["decision"], "approved");
    assert_eq!(got.json()["repeated"], false);
    assert_eq!(s.incode.seen("/omni/process/approve").len(), 1);
}

#[tokio::test]
async fn decisions_survive_a_restart() {
    let s = setup().await;
    let event = json!({"interviewId": "iv-keep", "onboardingStatus": "ONBOARDING_FINISHED"});
    assert_eq!(
        s.hook("/incode/hooks/approve", &event).await.json()["decision"],
        "approved"
    );
    let Setup { incode, gw, db } = s;
    gw.shutdown(std::time::Duration::from_secs(1)).await;
    let gw = support::start_gateway(&config(&incode.url(), &db, "", "")).await;
    let s = Setup { incode, gw, db };
    let got = s.hook("/incode/hooks/approve", &event).await;
    assert_eq!(got.json()["repeated"], true);
    assert_eq!(s.incode.seen("/omni/process/approve").len(), 1);
}

#[test]
fn config_errors_name_the_key() {
    let db = support::temp_dir("incode-cfg").join("flows.db");
    let base = config("http://127.0.0.1:1", &db, "", "");

    let no_cred = base.replace(
        "admin_credential = \"incode_admin\"",
        "admin_credential = \"nope\"",
    );
    let cfg = credgate::gateway::Config::from_toml(&no_cred, "<t>").expect("config is valid");
    let err = credgate::gateway::Gateway::build(&cfg).expect_err("unknown credential");
    assert!(
        err.to_string().contains("flows.incode.admin_credential"),
        "{err}"
    );

    let no_hooks = base.replace("[flows.incode.webhook]", "[unused]");
    let no_hooks = no_hooks.split("[unused]").next().expect("head").to_owned()
        + "[[routes]]\npath_prefix = \"/h\"\nflow = \"incode_webhooks\"\nauth = \"none\"\n";
    let err = credgate::gateway::Config::from_toml(&no_hooks, "<t>").expect_err("no webhooks");
    assert!(err.to_string().contains("routes[0].flow"), "{err}");

    let bad_origin = base.replace(
        "\"https://app.example.com\"",
        "\"https://app.example.com/path\"",
    );
    let err = credgate::gateway::Config::from_toml(&bad_origin, "<t>").expect_err("origin");
    assert!(
        err.to_string().contains("flows.incode.redirect_origins[0]"),
        "{err}"
    );

    let no_auth = base.replace("header = \"X-Webhook-Secret\"\nsecret = \"hook-secret-1\"\nbasic_user = \"incode\"\nbasic_password = \"basic-pass\"\n", "");
    let err = credgate::gateway::Config::from_toml(&no_auth, "<t>").expect_err("webhook auth");
    assert!(err.to_string().contains("flows.incode.webhook"), "{err}");

    let no_db = base.replace(&format!("database = \"{}\"", db.display()), "");
    let err = credgate::gateway::Config::from_toml(&no_db, "<t>").expect_err("db");
    assert!(err.to_string().contains("flows.database"), "{err}");
}

#[tokio::test]
async fn flows_work_over_tls_and_http2() {
    use http_body_util::BodyExt;
    use support::certs::{self, Alpn};

    let incode = fake_incode::start(API_KEY, ADMIN_TOKEN).await;
    let db = support::temp_dir("incode-tls").join("flows.db");
    let c = certs::make();
    let toml = config(&incode.url(), &db, "", "").replacen(
        "tls = false",
        &format!(
            "cert = \"{}\"\nkey = \"{}\"",
            c.cert.display(),
            c.key.display()
        ),
        1,
    );
    let gw = support::start_gateway(&toml).await;
    let client = certs::client(&c.pem.ca_cert_pem, Alpn::H2);
    let base = format!("https://localhost:{}", gw.addr().port());

    let req = http::Request::get(format!("{base}/incode/start"))
        .body(support::upstream::full(""))
        .expect("req");
    let rsp = client.request(req).await.expect("start");
    assert_eq!(rsp.version(), http::Version::HTTP_2);
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["interviewId"], "iv-1");

    let req = http::Request::post(format!("{base}/incode/hooks/approve"))
        .header("x-webhook-secret", HOOK_SECRET)
        .body(support::upstream::full(
            json!({"interviewId": "iv-h2", "onboardingStatus": "ONBOARDING_FINISHED"}).to_string(),
        ))
        .expect("req");
    let rsp = client.request(req).await.expect("approve");
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["decision"], "approved");
    assert_eq!(incode.seen("/omni/process/approve").len(), 1);
}

#[tokio::test]
async fn webhook_bodies_over_the_route_limit_are_413() {
    let incode = fake_incode::start(API_KEY, ADMIN_TOKEN).await;
    let db = support::temp_dir("incode-limit").join("flows.db");
    let toml = config(&incode.url(), &db, "", "").replace(
        "flow = \"incode_webhooks\"\nauth = \"none\"",
        "flow = \"incode_webhooks\"\nauth = \"none\"\nmax_body_bytes = 64",
    );
    let gw = support::start_gateway(&toml).await;
    let s = Setup { incode, gw, db };
    let big = json!({"interviewId": "iv-1", "onboardingStatus": "ONBOARDING_FINISHED",
                     "padding": "x".repeat(200)});
    let got = s.hook("/incode/hooks/webhook", &big).await;
    assert_eq!(got.status, 413);
    assert_eq!(got.json()["code"], "body_too_large");
    let small = json!({"interviewId": "iv-1", "onboardingStatus": "ONBOARDING_FINISHED"});
    assert_eq!(s.hook("/incode/hooks/webhook", &small).await.status, 200);
}
