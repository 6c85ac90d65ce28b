//! Incode approval with the admin token from a `login` credential: fetched once and reused across approvals, and
//! fetched again when Incode rejects it.
mod support;

use http::Method;
use serde_json::json;
use support::fake_http::call;
use support::fake_incode::{self, ADMIN_EMAIL, ADMIN_PASSWORD};

const API_KEY: &str = "api-key-1";
const ADMIN_TOKEN: &str = "admin-token-1";
const HOOK_SECRET: &str = "hook-secret-1";

#[tokio::test]
async fn admin_token_is_fetched_once_reused_and_refetched_after_a_401() {
    let incode = fake_incode::start(API_KEY, ADMIN_TOKEN).await;
    let db = support::temp_dir("incode-login").join("flows.db");
    let gw = support::start_gateway(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false

[credentials.incode_admin]
kind = "login"
allowed_hosts = ["127.0.0.1"]
url = "{url}/executive/log-in"
request_headers = {{ "x-api-key" = "{API_KEY}", "api-version" = "1.0" }}
body = {{ email = "{ADMIN_EMAIL}", password = "{ADMIN_PASSWORD}" }}
token_pointer = "/token"
ttl = "24h"
# The test rejects a token moments after the login: no minimum age before a rejection drops it.
min_token_age = "0s"
headers = {{ "X-Incode-Hardware-Id" = "{{token}}", "x-api-key" = "{API_KEY}", "api-version" = "1.0" }}

[flows]
database = "{db}"

[flows.incode]
api_url = "{url}"
api_key = "{API_KEY}"
flow_id = "flow-123"
admin_credential = "incode_admin"

[flows.incode.webhook]
header = "X-Webhook-Secret"
secret = "{HOOK_SECRET}"

[[routes]]
path_prefix = "/incode/hooks"
flow = "incode_webhooks"
auth = "none"
"#,
        url = incode.url(),
        db = db.display()
    ))
    .await;
    let approve = |id: &str| {
        let url = format!("http://127.0.0.1:{}/incode/hooks/approve", gw.addr().port());
        let body =
            json!({"interviewId": id, "onboardingStatus": "ONBOARDING_FINISHED"}).to_string();
        async move {
            call(
                Method::POST,
                &url,
                &[("x-webhook-secret", HOOK_SECRET)],
                &body,
            )
            .await
        }
    };
    for id in ["iv-a", "iv-b", "iv-c"] {
        let got = approve(id).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.json()["decision"], "approved");
    }
    assert_eq!(incode.logins(), 1, "one login serves every approval");
    let score = &incode.seen("/omni/get/score")[0];
    assert_eq!(score.header("x-incode-hardware-id"), Some(ADMIN_TOKEN));

    // The admin token is rejected once: the flow reports it, the credential logs in again, the call is retried.
    incode.reject_admin(1);
    let got = approve("iv-d").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["decision"], "approved");
    assert_eq!(incode.logins(), 2);
    assert_eq!(incode.seen("/omni/process/approve").len(), 4);
}
