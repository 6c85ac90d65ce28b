//! The built binary, logging at TRACE, runs full token flows (client credentials, refresh, 401 replay, login,
//! garbage answers) against a fake vendor; its whole log output must not contain one secret or token.
mod support;

use std::process::Command;

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::fake_vendor::{self, Mode};

const CLIENT_SECRET: &str = "cs-SECRET-client-7f3a";
const PASSWORD: &str = "pw-SECRET-pass-55";
const API_KEY: &str = "ak-SECRET-api-91";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_reaches_the_logs_at_trace() {
    let v = fake_vendor::new()
        .client("log-client", CLIENT_SECRET)
        .login(API_KEY, "admin@example.com", PASSWORD)
        .refresh_tokens()
        .token_prefix("tok-SECRET")
        .run()
        .await;
    let dir = support::temp_dir("logs");
    let secret_file = |name: &str, value: &str| {
        let p = dir.join(name);
        std::fs::write(&p, value).expect("write secret");
        p.display().to_string()
    };
    let cs = secret_file("client_secret", CLIENT_SECRET);
    let pw = secret_file("password", PASSWORD);
    let key = secret_file("api_key", API_KEY);
    let config_for = |port: u16| {
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:{port}"
tls = false
[upstreams.v]
url = "{url}"
[credentials.v]
kind = "oauth2_client_credentials"
allowed_hosts = ["127.0.0.1"]
token_url = "{token_url}"
client_id = "log-client"
client_secret_file = "{cs}"
min_token_age = "0s"
backoff_min = "1ns"
backoff_max = "100ms"
[credentials.admin]
kind = "login"
allowed_hosts = ["127.0.0.1"]
url = "{login_url}"
request_headers = {{ "x-api-key" = "${{file:{key}}}", "api-version" = "1.0" }}
body = {{ email = "admin@example.com", password = "${{file:{pw}}}" }}
ttl = "24h"
headers = {{ "X-Incode-Hardware-Id" = "{{token}}", "x-api-key" = "${{file:{key}}}", "api-version" = "1.0" }}
[[routes]]
path_prefix = "/api"
upstream = "v"
credential = "v"
auth = "none"
[[routes]]
path_prefix = "/incode"
upstream = "v"
credential = "admin"
auth = "none"
"#,
            url = v.url(),
            token_url = v.token_url(),
            login_url = v.login_url(),
        )
    };
    let config = dir.join("config.toml");
    let log_path = dir.join("stderr.log");
    // The port is picked here and bound by the child: should another process take it in between, the child exits
    // and the next attempt picks another.
    let (child, port) =
        support::run_binary_on_a_free_port(&[], &config, &log_path, config_for).await;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let call = |method: &'static str, path: &'static str, body: &'static str| {
        let client = client.clone();
        async move {
            let req = Request::builder()
                .method(method)
                .uri(format!("http://127.0.0.1:{port}{path}"))
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .expect("request");
            client.request(req).await.expect("response").status()
        }
    };
    assert_eq!(call("GET", "/api/a", "").await, 200);
    assert_eq!(call("GET", "/incode/omni/get/score?id=1", "").await, 200);
    v.revoke_all();
    assert_eq!(
        call("POST", "/api/b", "{\"amount\":1}").await,
        200,
        "401 replay"
    );
    v.set_mode(Mode::Html);
    v.revoke_all();
    assert_eq!(
        call("GET", "/api/c", "").await,
        401,
        "renewal failed: 401 passed through"
    );
    assert_eq!(call("GET", "/api/d", "").await, 503);
    drop(child);

    let log = std::fs::read_to_string(&log_path).expect("read log");
    assert!(log.contains("TRACE"), "trace logging was not on");
    assert!(
        log.contains("token endpoint answered garbage"),
        "garbage has a clear log line"
    );
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("log-client:{CLIENT_SECRET}"));
    let mut secrets = vec![
        CLIENT_SECRET.to_owned(),
        PASSWORD.to_owned(),
        API_KEY.to_owned(),
        basic,
        "SECRET".to_owned(),
    ];
    secrets.extend(v.issued());
    secrets.extend(v.refresh_tokens_issued());
    assert!(
        v.issued().len() >= 3,
        "tokens were issued: {:?}",
        v.issued().len()
    );
    for s in &secrets {
        assert!(
            !log.contains(s.as_str()),
            "a secret appears in the log ({} bytes of log)",
            log.len()
        );
    }
}

#[tokio::test]
async fn check_validates_token_credentials_without_fetching_a_token() {
    let v = fake_vendor::new().login("k", "e@x", "p").run().await;
    let dir = support::temp_dir("check");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[upstreams.v]
url = "{url}"
[credentials.o]
kind = "oauth2_client_credentials"
allowed_hosts = ["127.0.0.1"]
token_url = "{token_url}"
client_id = "id"
client_secret = "secret"
[credentials.l]
kind = "login"
allowed_hosts = ["127.0.0.1"]
url = "{login_url}"
body = {{ email = "e@x", password = "p" }}
ttl = "1h"
headers = {{ "X-Incode-Hardware-Id" = "{{token}}" }}
[[routes]]
path_prefix = "/o"
upstream = "v"
credential = "o"
auth = "none"
[[routes]]
path_prefix = "/l"
upstream = "v"
credential = "l"
auth = "none"
"#,
            url = v.url(),
            token_url = v.token_url(),
            login_url = v.login_url(),
        ),
    )
    .expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_credgate"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v.grants(), 0, "check fetched a token");

    // A missing secret is a config error naming the key, exit code 2.
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(&config, text.replace(r#"client_secret = "secret""#, "")).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_credgate"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("credentials.o.client_secret"));
}
