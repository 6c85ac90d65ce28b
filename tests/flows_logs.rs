//! The built binary, logging at TRACE in both formats, runs every vendor flow against the fake vendors with a caller
//! JWT: its whole log output must not contain the Incode API key, the webhook secret or Basic password, the Citadel
//! access secret or access token, the TeleSign key, or the caller's token.
mod support;

use base64::Engine as _;
use http::Method;
use serde_json::json;
use support::callers::Callers;
use support::fake_citadel::{self, ACCESS_TOKEN, PUBLIC_TOKEN};
use support::fake_http::call;
use support::fake_incode;

const INCODE_KEY: &str = "incode-SECRET-key-31";
const HOOK_SECRET: &str = "hook-SECRET-shared-47";
const HOOK_PASSWORD: &str = "hook-SECRET-basic-58";
const CITADEL_ID: &str = "citadel-client-9";
const CITADEL_SECRET: &str = "citadel-SECRET-access-62";
/// TeleSign hands out base64 keys; both the text and the decoded bytes are secret.
const TELESIGN_KEY_BYTES: &[u8] = b"telesign-SECRET-key-bytes-00000";

/// Run the flows once through the binary with `log_format`; returns its log output.
async fn run_flows(log_format: &str) -> (String, Vec<String>) {
    let incode = fake_incode::start(INCODE_KEY, "admin-token-unused").await;
    let citadel = fake_citadel::start(CITADEL_ID, CITADEL_SECRET).await;
    let callers = Callers::new();
    let dir = support::temp_dir("flows-logs");
    let telesign_key = base64::engine::general_purpose::STANDARD.encode(TELESIGN_KEY_BYTES);
    let config_for = |port: u16| {
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:{port}"
tls = false
{issuer}
[flows]
database = "{db}"
[flows.incode]
api_url = "{incode}"
api_key = "{INCODE_KEY}"
flow_id = "flow-1"
[flows.incode.webhook]
header = "X-Webhook-Secret"
secret = "{HOOK_SECRET}"
basic_user = "incode"
basic_password = "{HOOK_PASSWORD}"
[flows.citadel]
api_url = "{citadel}"
client_id = "{CITADEL_ID}"
access_secret = "{CITADEL_SECRET}"
client_name = "Acme"
[flows.telesign]
customer_id = "CUSTOMER-1"
api_key = "{telesign_key}"
[[routes]]
path_prefix = "/incode/hooks"
flow = "incode_webhooks"
auth = "none"
[[routes]]
path_prefix = "/incode"
flow = "incode"
[[routes]]
path_prefix = "/citadel"
flow = "citadel"
[[routes]]
path_prefix = "/telesign"
flow = "telesign"
"#,
            issuer = callers.issuer_toml(),
            db = dir.join("flows.db").display(),
            incode = incode.url(),
            citadel = citadel.url(),
        )
    };
    let config = dir.join("config.toml");
    let log_path = dir.join("stderr.log");
    let (child, port) = support::run_binary_on_a_free_port(
        &["--log-format", log_format],
        &config,
        &log_path,
        config_for,
    )
    .await;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let bearer = callers.bearer("svc-logs", "");
    let auth = [("authorization", bearer.as_str())];

    let got = call(Method::GET, &url("/incode/start"), &auth, "").await;
    assert_eq!(got.status, 200, "incode start: {}", got.text());
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("incode:{HOOK_PASSWORD}"))
    );
    let hook =
        json!({"interviewId": "iv-1", "onboardingStatus": "ONBOARDING_FINISHED"}).to_string();
    let got = call(
        Method::POST,
        &url("/incode/hooks/webhook"),
        &[
            ("x-webhook-secret", HOOK_SECRET),
            ("authorization", basic.as_str()),
            ("content-type", "application/json"),
        ],
        &hook,
    )
    .await;
    assert_eq!(got.status, 200, "incode webhook: {}", got.text());
    // A wrong secret and no Basic: refused and logged as such, without the secret either way.
    let got = call(
        Method::POST,
        &url("/incode/hooks/webhook"),
        &[("x-webhook-secret", "wrong")],
        &hook,
    )
    .await;
    assert_eq!(got.status, 401);
    let got = call(Method::GET, &url("/citadel/bridge-token"), &auth, "").await;
    assert_eq!(got.status, 200, "citadel bridge token: {}", got.text());
    let got = call(
        Method::GET,
        &url(&format!("/citadel/verifications/{PUBLIC_TOKEN}")),
        &auth,
        "",
    )
    .await;
    assert_eq!(got.status, 200, "citadel verification: {}", got.text());
    let got = call(
        Method::GET,
        &url("/telesign/token/15551234567/x-1"),
        &auth,
        "",
    )
    .await;
    assert_eq!(got.status, 200, "telesign: {}", got.text());
    let telesign_token = got.text();
    drop(child);

    let log = std::fs::read_to_string(&log_path).expect("read log");
    assert!(log.contains("TRACE"), "trace logging was not on");
    assert!(
        log.contains("telesign token minted"),
        "the flows ran under this log"
    );
    let token = bearer.trim_start_matches("Bearer ").to_owned();
    let secrets = vec![
        INCODE_KEY.to_owned(),
        HOOK_SECRET.to_owned(),
        HOOK_PASSWORD.to_owned(),
        basic.trim_start_matches("Basic ").to_owned(),
        CITADEL_SECRET.to_owned(),
        ACCESS_TOKEN.to_owned(),
        telesign_key,
        String::from_utf8_lossy(TELESIGN_KEY_BYTES).into_owned(),
        telesign_token,
        // The signature part alone: a log line that cut the token would still show it.
        token.rsplit('.').next().unwrap_or_default().to_owned(),
        token,
        "SECRET".to_owned(),
    ];
    (log, secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_vendor_flow_secret_or_caller_token_reaches_the_logs_in_either_format() {
    for format in ["human", "json"] {
        let (log, secrets) = run_flows(format).await;
        for s in &secrets {
            assert!(
                !log.contains(s.as_str()),
                "{format} log: a secret appears ({} bytes of log)",
                log.len()
            );
        }
    }
}
