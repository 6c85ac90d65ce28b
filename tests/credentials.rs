//! Token credentials over real sockets: the gateway against fake token endpoints and a fake vendor API that accepts
//! only live tokens it issued. Herds, refresh ahead, TropiPay and Incode shapes, outages, garbage and 401 retries.
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::fake_vendor::{self, Expires, FakeVendor, Mode};

type Http = Client<HttpConnector, Full<Bytes>>;

/// Longer than any wait the gateway may impose here: reaching it means a request hung.
const HANG: Duration = Duration::from_secs(10);

fn http() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A plain-HTTP gateway with route `/api` to the vendor's API under credential `v`, defined by `cred`.
fn gateway_toml(v: &FakeVendor, cred: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[upstreams.v]
url = "{}"
[credentials.v]
allowed_hosts = ["127.0.0.1"]
{cred}
[[routes]]
path_prefix = "/api"
upstream = "v"
credential = "v"
auth = "none"
"#,
        v.url()
    )
}

/// An OAuth2 credential fetched on first use (its tests watch each token request they cause), unless `extra` says
/// otherwise about `readiness`.
fn oauth2(v: &FakeVendor, extra: &str) -> String {
    let readiness = if extra.contains("readiness") {
        ""
    } else {
        "readiness = \"ignored\"\n"
    };
    format!(
        r#"kind = "oauth2_client_credentials"
token_url = "{}"
client_id = "id"
client_secret = "secret"
backoff_min = "50ms"
backoff_max = "200ms"
{readiness}{extra}"#,
        v.token_url()
    )
}

/// An OAuth2 credential for tests that reject a token moments after fetching it: no minimum age, and a backoff too
/// short to hold back a renewal.
fn oauth2_renewing_at_once(v: &FakeVendor, extra: &str) -> String {
    oauth2(v, &format!("min_token_age = \"0s\"\n{extra}"))
        .replace(r#"backoff_min = "50ms""#, r#"backoff_min = "1ns""#)
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

async fn send(
    client: &Http,
    gw: &support::TestGateway,
    method: &str,
    path: &str,
    body: &str,
) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", gw.addr()))
        .header("authorization", "Bearer caller-token")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let rsp = client.request(req).await.expect("response");
    let (parts, b) = rsp.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: b.collect().await.expect("body").to_bytes(),
    }
}

async fn get(client: &Http, gw: &support::TestGateway, path: &str) -> Answer {
    send(client, gw, "GET", path, "").await
}

/// Poll `cond` every 10 ms until it holds; fail after `limit`.
async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn waits(gw: &support::TestGateway) -> f64 {
    gw.gw
        .metrics
        .get("credgate_credential_waits_total", &[("credential", "v")])
}

#[tokio::test]
async fn two_second_tokens_are_renewed_ahead_and_no_request_waits() {
    let v = fake_vendor::new().ttl(Duration::from_secs(2)).run().await;
    let gw = support::start_gateway(&gateway_toml(
        &v,
        &oauth2(&v, r#"refresh_before = "1800ms""#),
    ))
    .await;
    let client = http();
    assert_eq!(get(&client, &gw, "/api/first").await.status, 200);
    assert_eq!(waits(&gw), 1.0, "the cold start waits once");
    // From now on every token request takes 800 ms: a request that waited for one would show it. Renewal starts
    // about 0.2 s into each token's 2 s, so it ends (about 1 s in) well before the token's usable end (1.8 s), with
    // room for a loaded machine.
    v.set_mode(Mode::Slow(Duration::from_millis(800)));
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while v.grants() < 4 {
        assert!(Instant::now() < deadline, "tokens were not renewed");
        let a = get(&client, &gw, "/api/x").await;
        assert_eq!(a.status, 200, "request {n} failed");
        n += 1;
    }
    // The counter, not a clock, says that no request waited on the slow token endpoint.
    assert_eq!(waits(&gw), 1.0, "no request waited after the first");
    assert_eq!(v.expired_tokens_seen(), 0, "an expired token was injected");
    let used: std::collections::BTreeSet<String> = v
        .api_log()
        .iter()
        .map(|s| {
            s.headers["authorization"]
                .to_str()
                .expect("ascii")
                .to_owned()
        })
        .collect();
    assert!(
        used.len() >= 3,
        "requests used renewed tokens: {}",
        used.len()
    );
}

#[tokio::test]
async fn tropipay_json_body_absolute_expires_in_and_refresh_token_renewal() {
    let v = fake_vendor::new()
        .json_only()
        .expires(Expires::UnixTime)
        .refresh_tokens()
        .ttl(Duration::from_secs(3))
        .client("tp-client", "tp-secret")
        .run()
        .await;
    let cred = format!(
        r#"kind = "oauth2_client_credentials"
token_url = "{}"
client_id = "tp-client"
client_secret = "tp-secret"
client_auth = "request_body"
request_format = "json"
expires_in = "auto"
scopes = ["ALLOW_GET_BALANCE", "ALLOW_PAYMENT_IN"]
refresh_before = "2s"
"#,
        v.token_url()
    );
    let gw = support::start_gateway(&gateway_toml(&v, &cred)).await;
    let client = http();
    assert_eq!(get(&client, &gw, "/api/users/balance").await.status, 200);
    let first = &v.grant_log()[0];
    assert_eq!(first.headers["content-type"], "application/json");
    assert!(
        first.headers.get("authorization").is_none(),
        "no HTTP Basic"
    );
    assert_eq!(first.grant_type(), "client_credentials");
    assert_eq!(first.params["client_id"], "tp-client");
    assert_eq!(first.params["client_secret"], "tp-secret");
    assert_eq!(first.params["scope"], "ALLOW_GET_BALANCE ALLOW_PAYMENT_IN");
    // expires_in is a Unix time about 3 s ahead; read as seconds it would be ~56 years and nothing would renew.
    wait_until("refresh_token grant", Duration::from_secs(10), || {
        v.grant_log().len() >= 2
    })
    .await;
    let second = &v.grant_log()[1];
    assert_eq!(second.grant_type(), "refresh_token");
    assert_eq!(second.params["refresh_token"], v.refresh_tokens_issued()[0]);
    assert_eq!(second.params["client_id"], "tp-client");
    assert_eq!(second.params["client_secret"], "tp-secret");
    wait_until("second token in use", Duration::from_secs(5), || {
        v.issued().len() >= 2
    })
    .await;
    assert_eq!(get(&client, &gw, "/api/users/balance").await.status, 200);
    let last = v.api_log().last().cloned().expect("api call");
    // Renewals continue every second or so; the call carries one of the renewed tokens, not the first.
    let renewed: Vec<String> = v.issued()[1..]
        .iter()
        .map(|t| format!("Bearer {t}"))
        .collect();
    let sent = last.headers["authorization"].to_str().expect("ascii");
    assert!(
        renewed.iter().any(|r| r == sent),
        "first token still in use"
    );
}

#[tokio::test]
async fn refused_refresh_token_falls_back_to_client_credentials() {
    let v = fake_vendor::new()
        .refresh_tokens()
        .refuse_refresh()
        .ttl(Duration::from_secs(3))
        .run()
        .await;
    let gw =
        support::start_gateway(&gateway_toml(&v, &oauth2(&v, r#"refresh_before = "2s""#))).await;
    let client = http();
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    wait_until("fallback grant", Duration::from_secs(10), || {
        v.grant_log().len() >= 3
    })
    .await;
    let kinds: Vec<String> = v
        .grant_log()
        .iter()
        .take(3)
        .map(|g| g.grant_type().to_owned())
        .collect();
    assert_eq!(
        kinds,
        ["client_credentials", "refresh_token", "client_credentials"]
    );
    // The standard server got HTTP Basic and a form body, with no quirk settings.
    let g = &v.grant_log()[0];
    assert!(
        g.headers["authorization"]
            .to_str()
            .expect("ascii")
            .starts_with("Basic ")
    );
    assert_eq!(
        g.headers["content-type"],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
}

#[tokio::test]
async fn jwt_exp_bounds_a_longer_expires_in() {
    let v = fake_vendor::new()
        .jwt()
        .expires(Expires::FarDuration)
        .ttl(Duration::from_secs(2))
        .run()
        .await;
    let gw = support::start_gateway(&gateway_toml(&v, &oauth2(&v, r#"expires_in = "auto""#))).await;
    let client = http();
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    // expires_in says "1d"; the JWT's exp says 2 s, and that wins.
    wait_until("renewal before JWT exp", Duration::from_secs(10), || {
        v.grants() >= 2
    })
    .await;
    assert_eq!(v.expired_tokens_seen(), 0);
}

#[tokio::test]
async fn incode_login_sends_the_documented_request_and_injects_three_headers() {
    let dir = support::temp_dir("incode");
    let key_file = dir.join("api-key");
    std::fs::write(&key_file, "incode-api-key\n").expect("write");
    let password = r#"pa"ss\word"#;
    let v = fake_vendor::new()
        .login("incode-api-key", "admin@example.com", password)
        .ttl(Duration::from_secs(86400))
        .run()
        .await;
    let cred = format!(
        r#"kind = "login"
readiness = "ignored"
url = "{}"
request_headers = {{ "x-api-key" = "${{file:{key}}}", "api-version" = "1.0" }}
body = {{ email = "admin@example.com", password = '{password}' }}
ttl = "24h"
headers = {{ "X-Incode-Hardware-Id" = "{{token}}", "x-api-key" = "${{file:{key}}}", "api-version" = "1.0" }}
"#,
        v.login_url(),
        key = key_file.display()
    );
    let gw = support::start_gateway(&gateway_toml(&v, &cred)).await;
    let client = http();
    let a = get(&client, &gw, "/api/omni/get/score?id=abc").await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    let login = &v.grant_log()[0];
    assert_eq!(login.method, http::Method::POST);
    assert_eq!(login.path, "/executive/log-in");
    assert_eq!(login.headers["x-api-key"], "incode-api-key");
    assert_eq!(login.headers["api-version"], "1.0");
    assert_eq!(login.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&login.body).expect("json body");
    assert_eq!(
        body,
        serde_json::json!({"email": "admin@example.com", "password": password})
    );
    let seen = &v.api_log()[0];
    assert_eq!(seen.uri, "/api/omni/get/score?id=abc");
    assert_eq!(seen.headers["x-incode-hardware-id"], v.issued()[0].as_str());
    assert_eq!(seen.headers["x-api-key"], "incode-api-key");
    assert_eq!(seen.headers["api-version"], "1.0");
    assert!(seen.headers.get("authorization").is_none());
    // A second call reuses the 24 h token.
    assert_eq!(
        get(&client, &gw, "/api/omni/get/score?id=abd").await.status,
        200
    );
    assert_eq!(v.grants(), 1);
}

#[tokio::test]
async fn login_token_lifetime_comes_from_its_jwt_exp() {
    let v = fake_vendor::new()
        .login("k", "e@x", "p")
        .jwt()
        .ttl(Duration::from_secs(2))
        .run()
        .await;
    let cred = format!(
        r#"kind = "login"
readiness = "ignored"
url = "{}"
request_headers = {{ "x-api-key" = "k", "api-version" = "1.0" }}
body = '{{"email": "e@x", "password": "p"}}'
headers = {{ "X-Incode-Hardware-Id" = "{{token}}" }}
refresh_before = "1s"
"#,
        v.login_url()
    );
    let gw = support::start_gateway(&gateway_toml(&v, &cred)).await;
    let client = http();
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    wait_until("login renewed ahead", Duration::from_secs(10), || {
        v.grants() >= 2
    })
    .await;
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    assert_eq!(v.expired_tokens_seen(), 0);
}

#[tokio::test]
async fn endpoint_down_while_the_token_is_valid_fails_no_request() {
    let v = fake_vendor::new().ttl(Duration::from_secs(5)).run().await;
    let gw =
        support::start_gateway(&gateway_toml(&v, &oauth2(&v, r#"refresh_before = "4s""#))).await;
    let client = http();
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    v.set_mode(Mode::Fail500);
    // Renewal starts about 1 s in and fails, then retries with backoff.
    wait_until("failed renewals", Duration::from_secs(10), || {
        v.grants() >= 3
    })
    .await;
    for i in 0..20 {
        assert_eq!(get(&client, &gw, "/api/x").await.status, 200, "request {i}");
    }
    v.set_mode(Mode::Ok);
    wait_until("renewal after recovery", Duration::from_secs(10), || {
        v.issued().len() >= 2
    })
    .await;
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
}

#[tokio::test]
async fn endpoint_down_and_token_expired_fails_fast_with_503_then_recovers() {
    let v = fake_vendor::new().ttl(Duration::from_secs(1)).run().await;
    let gw = support::start_gateway(&gateway_toml(&v, &oauth2(&v, r#"timeout = "500ms""#))).await;
    let client = http();
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    v.set_mode(Mode::Fail500);
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        assert!(Instant::now() < deadline, "never refused");
        let a = get(&client, &gw, "/api/x").await;
        if a.status != 200 {
            break a;
        }
    };
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers["content-type"], "application/problem+json");
    assert!(refused.headers.get("retry-after").is_some());
    let doc: serde_json::Value = serde_json::from_slice(&refused.body).expect("problem");
    assert_eq!(doc["code"], "upstream_credentials_unavailable");
    // How fast a refusal is belongs to a benchmark; here: refused, and not left hanging.
    for _ in 0..20 {
        let a = tokio::time::timeout(HANG, get(&client, &gw, "/api/x"))
            .await
            .expect("a refusal, not a hang");
        assert_eq!(a.status, 503);
    }
    // A stalled endpoint does not hang requests either: each waits the token timeout (500 ms) at most, far below the
    // 30 s stall.
    v.set_mode(Mode::Slow(Duration::from_secs(30)));
    for _ in 0..5 {
        let a = tokio::time::timeout(HANG, get(&client, &gw, "/api/x"))
            .await
            .expect("the token timeout ends the wait, not the 30 s stall");
        assert_eq!(a.status, 503);
    }
    assert_eq!(v.expired_tokens_seen(), 0, "an expired token was injected");
    v.set_mode(Mode::Ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&client, &gw, "/api/x").await.status != 200 {
        assert!(Instant::now() < deadline, "did not recover");
    }
}

#[tokio::test]
async fn garbage_from_the_token_endpoint_is_an_error_never_a_token() {
    for mode in [
        Mode::Html,
        Mode::NotJson,
        Mode::MissingFields,
        Mode::EmptyToken,
        Mode::Fail500,
    ] {
        let v = fake_vendor::new().run().await;
        let gw = support::start_gateway(&gateway_toml(&v, &oauth2(&v, ""))).await;
        v.set_mode(mode);
        let client = http();
        let a = get(&client, &gw, "/api/x").await;
        assert_eq!(a.status, 503, "{mode:?}");
        let doc: serde_json::Value = serde_json::from_slice(&a.body).expect("problem");
        assert_eq!(doc["code"], "upstream_credentials_unavailable", "{mode:?}");
        assert!(v.api_log().is_empty(), "{mode:?}: nothing reached the API");
        v.set_mode(Mode::Ok);
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(&client, &gw, "/api/x").await.status != 200 {
            assert!(Instant::now() < deadline, "{mode:?}: did not recover");
        }
        assert!(v.api_log().iter().all(|s| s.status == 200), "{mode:?}");
    }
}

#[tokio::test]
async fn upstream_401_renews_the_token_once_and_replays_the_request() {
    let v = fake_vendor::new().run().await;
    let gw = support::start_gateway(&gateway_toml(
        &v,
        &oauth2_renewing_at_once(&v, "retry_body_limit = 64"),
    ))
    .await;
    let client = http();
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    v.revoke_all();
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{}/api/pay?q=1", gw.addr()))
        .header("authorization", "Bearer caller-token")
        .header("x-caller-note", "kept")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-request-id", "caller-id-1")
        .header("connection", "x-hop")
        .header("x-hop", "dropped")
        .body(Full::new(Bytes::from_static(b"hello world")))
        .expect("request");
    let rsp = client.request(req).await.expect("response");
    assert_eq!(rsp.status(), 200);
    assert_eq!(v.grants(), 2, "exactly one renewal");
    let api = v.api_log();
    assert_eq!(api.len(), 3);
    assert_eq!(api[1].status, 401);
    assert_eq!(api[2].status, 200);
    assert_eq!(api[2].body, "hello world");
    assert_eq!(
        api[2].headers["authorization"],
        format!("Bearer {}", v.issued()[1]).as_str()
    );
    // The replay is the first attempt with the fresh token: same target, the caller's headers, the gateway's own.
    assert_eq!(api[2].uri, api[1].uri);
    let without_token = |h: &http::HeaderMap| {
        let mut h = h.clone();
        h.remove("authorization");
        h
    };
    assert_eq!(
        without_token(&api[2].headers),
        without_token(&api[1].headers)
    );
    let replayed = &api[2].headers;
    assert_eq!(replayed["x-caller-note"], "kept");
    assert_eq!(replayed["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(replayed["x-request-id"], "caller-id-1");
    assert!(replayed.get("x-hop").is_none());
    assert_eq!(
        gw.gw
            .metrics
            .get("credgate_credential_retries_total", &[("route", "/api")]),
        1.0
    );

    // A body over retry_body_limit is not kept: the 401 is passed through, and the next request gets a new token.
    v.revoke_all();
    let big = "x".repeat(100);
    let a = send(&client, &gw, "POST", "/api/upload", &big).await;
    assert_eq!(a.status, 401);
    assert_eq!(v.api_log().len(), 4, "not replayed");
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    assert_eq!(v.grants(), 3);
}

#[tokio::test]
async fn a_replayed_request_is_retried_only_once() {
    let v = fake_vendor::new().run().await;
    let gw = support::start_gateway(&gateway_toml(&v, &oauth2_renewing_at_once(&v, ""))).await;
    let client = http();
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    v.reject_next(2);
    let a = send(&client, &gw, "PUT", "/api/y", "body").await;
    assert_eq!(a.status, 401, "the second 401 is passed through");
    assert_eq!(v.api_log().len(), 3, "first try and one replay");
    assert_eq!(v.grants(), 2, "one renewal");
}

#[tokio::test]
async fn the_same_token_handed_back_is_not_taken_as_fresh() {
    let v = fake_vendor::new().ttl(Duration::from_secs(2)).run().await;
    let gw =
        support::start_gateway(&gateway_toml(&v, &oauth2(&v, r#"refresh_before = "1s""#))).await;
    let client = http();
    let t0 = Instant::now();
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    // The endpoint now returns the first token again, claiming another 2 s each time.
    v.set_mode(Mode::SameToken);
    let mut refused = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        let a = get(&client, &gw, "/api/x").await;
        assert!(a.status == 200 || a.status == 503, "{}", a.status);
        refused += usize::from(a.status == 503);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        v.expired_tokens_seen(),
        0,
        "the stale token was injected after its expiry"
    );
    assert!(refused > 0, "the stale token was served as fresh");
    let grants = v.grants();
    // Renewals back off from 50 ms (jitter takes at most half): after the first two, at least 50 ms apart. The
    // bound comes from the time that actually passed, so a slow machine cannot trip it; a loop would be thousands.
    let bound = 2 + usize::try_from(t0.elapsed().as_millis() / 50).unwrap_or(usize::MAX);
    assert!(
        (3..=bound).contains(&grants),
        "renewal retried with backoff, not in a loop: {grants}"
    );
    v.set_mode(Mode::Ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&client, &gw, "/api/x").await.status != 200 {
        assert!(Instant::now() < deadline, "did not recover");
    }
}

/// A log sink for one test: `tracing`'s thread-local default, which a current-thread runtime's tasks all run under.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }
}

#[tokio::test]
async fn an_upstream_rejecting_fresh_tokens_does_not_make_the_gateway_hammer_the_token_endpoint() {
    let logs = Captured::default();
    let sink = logs.clone();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish(),
    );
    let v = fake_vendor::new().run().await;
    // Default rejection settings: a token younger than 5 s is not dropped.
    let gw = support::start_gateway(&gateway_toml(&v, &oauth2(&v, ""))).await;
    let client = http();
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    v.revoke_all();
    for _ in 0..20 {
        assert_eq!(get(&client, &gw, "/api/x").await.status, 401);
    }
    assert_eq!(v.grants(), 1, "no token request per rejection");
    assert_eq!(v.api_log().len(), 21, "no replays with the same token");
    let m = &gw.gw.metrics;
    let rejections = |result| {
        m.get(
            "credgate_token_rejections_total",
            &[("credential", "v"), ("result", result)],
        )
    };
    assert_eq!(rejections("kept"), 20.0);
    assert_eq!(rejections("renewed"), 0.0);
    let text = logs.text();
    assert_eq!(
        text.matches("upstream rejected a token this young").count(),
        1,
        "one warning per token, not per request:\n{text}"
    );
    assert!(text.contains("WARN"), "{text}");
}

#[tokio::test]
async fn renewals_driven_by_rejections_back_off() {
    let v = fake_vendor::new().run().await;
    // No minimum age, but renewals in a row wait out the backoff: the first rejection renews, later ones inside
    // the backoff keep the new token.
    let gw = support::start_gateway(&gateway_toml(
        &v,
        &oauth2(&v, r#"min_token_age = "0s""#)
            .replace(r#"backoff_min = "50ms""#, r#"backoff_min = "1h""#)
            .replace(r#"backoff_max = "200ms""#, r#"backoff_max = "2h""#),
    ))
    .await;
    let client = http();
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    v.revoke_all();
    assert_eq!(
        get(&client, &gw, "/api/x").await.status,
        200,
        "renewed and replayed"
    );
    assert_eq!(v.grants(), 2);
    v.revoke_all();
    for _ in 0..10 {
        assert_eq!(get(&client, &gw, "/api/x").await.status, 401);
    }
    assert_eq!(v.grants(), 2, "one rejection-driven renewal per backoff");
    let m = &gw.gw.metrics;
    let rejections = |result| {
        m.get(
            "credgate_token_rejections_total",
            &[("credential", "v"), ("result", result)],
        )
    };
    assert_eq!((rejections("renewed"), rejections("kept")), (1.0, 10.0));
}

#[tokio::test]
async fn a_late_rejection_of_an_old_token_keeps_the_newer_one() {
    let v = fake_vendor::new().run().await;
    let gw = support::start_gateway(&gateway_toml(&v, &oauth2_renewing_at_once(&v, ""))).await;
    let cred = gw.gw.credentials.get("v").expect("credential");
    let first = cred.attach().await.expect("token");
    cred.drop_rejected(&first);
    let second = cred.attach().await.expect("renewed");
    assert_ne!(first.generation, second.generation);
    assert_eq!(v.grants(), 2);
    // Another request that used the first token is rejected late: the second token stays.
    cred.drop_rejected(&first);
    let third = cred.attach().await.expect("kept");
    assert_eq!(third.generation, second.generation);
    assert_eq!(v.grants(), 2);
}

#[tokio::test]
async fn body_marker_limits_which_rejections_count() {
    let v = fake_vendor::new().run().await;
    let cred = oauth2_renewing_at_once(
        &v,
        r#"reject_status = [401]
reject_body_marker = "Failed to authenticate token""#,
    );
    let gw = support::start_gateway(&gateway_toml(&v, &cred)).await;
    let client = http();
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    v.revoke_all();
    let a = get(&client, &gw, "/api/x").await;
    assert_eq!(a.status, 200, "marker present: renewed and replayed");
    assert_eq!(v.grants(), 2);

    // A 401 without the marker is the upstream's own answer: passed through, token kept.
    let v = fake_vendor::new().run().await;
    let cred = oauth2(&v, r#"reject_body_marker = "token expired""#);
    let gw = support::start_gateway(&gateway_toml(&v, &cred)).await;
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    v.revoke_all();
    assert_eq!(get(&client, &gw, "/api/x").await.status, 401);
    assert_eq!(get(&client, &gw, "/api/x").await.status, 401);
    assert_eq!(v.grants(), 1, "no renewal without the marker");
}

#[tokio::test]
async fn a_credential_is_refused_for_an_upstream_it_may_not_reach() {
    let v = fake_vendor::new().run().await;
    let toml = gateway_toml(&v, &oauth2(&v, "")).replace(
        r#"allowed_hosts = ["127.0.0.1"]"#,
        r#"allowed_hosts = ["sandbox.tropipay.me"]"#,
    );
    let err = credgate::gateway::Config::from_toml(&toml, "<t>").expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains("routes[0].credential"), "{msg}");
    assert!(msg.contains("allowed_hosts"), "{msg}");
}

#[tokio::test]
async fn demo_injects_sandbox_tropipay_and_incode_tokens_over_tls() {
    let demo = credgate::demo::prepare(0, 0).await.expect("demo");
    let gw = support::start_gateway(&demo.config_toml).await;
    let ca = std::fs::read_to_string(&demo.ca_path).expect("ca");
    let client = support::certs::client(&ca, support::certs::Alpn::H2);
    let echo = |path: &'static str| {
        let client = client.clone();
        let url = format!("https://localhost:{}{path}", gw.addr().port());
        async move {
            let req = Request::get(url)
                .header("authorization", "Bearer my-own-token")
                .body(support::upstream::full(""))
                .expect("request");
            let rsp = client.request(req).await.expect("response");
            assert_eq!(rsp.status(), 200);
            let body = rsp.into_body().collect().await.expect("body").to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).expect("echo json")
        }
    };
    let tp = echo("/tropipay/users/balance").await;
    let auth = tp["headers"]["authorization"].as_str().expect("bearer");
    assert!(auth.starts_with("Bearer ey"), "{auth}");
    assert_ne!(auth, "Bearer my-own-token");
    assert_eq!(tp["path"], "/users/balance");
    let inc = echo("/incode-admin/omni/get/score?id=demo").await;
    assert!(
        inc["headers"]["x-incode-hardware-id"]
            .as_str()
            .is_some_and(|t| t.starts_with("ey"))
    );
    assert_eq!(
        inc["headers"]["x-api-key"],
        credgate::demo::credentials::INCODE_API_KEY
    );
    assert_eq!(inc["headers"]["api-version"], "1.0");
    assert!(inc["headers"].get("authorization").is_none());
    demo.remove_files().expect("demo files removed");
}

/// A body sent as `first`, then (once `go` fires) `second`, chunked: its size is not known up front.
fn two_part_body(
    first: &'static [u8],
    second: &'static [u8],
    go: tokio::sync::oneshot::Receiver<()>,
) -> http_body_util::StreamBody<
    futures_util::stream::BoxStream<'static, Result<hyper::body::Frame<Bytes>, std::io::Error>>,
> {
    use futures_util::StreamExt;
    let first = futures_util::stream::once(async move {
        Ok(hyper::body::Frame::data(Bytes::from_static(first)))
    });
    let second = futures_util::stream::once(async move {
        let _ = go.await;
        Ok(hyper::body::Frame::data(Bytes::from_static(second)))
    });
    http_body_util::StreamBody::new(first.chain(second).boxed())
}

#[tokio::test]
async fn a_chunked_body_under_the_limit_streams_through_and_is_not_replayed() {
    let v = fake_vendor::new().run().await;
    let gw = support::start_gateway(&gateway_toml(
        &v,
        &oauth2_renewing_at_once(&v, "retry_body_limit = 65536"),
    ))
    .await;
    let client = http();
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    v.revoke_all();
    let (tcp, go) = (
        tokio::net::TcpStream::connect(gw.addr())
            .await
            .expect("connect"),
        tokio::sync::oneshot::channel(),
    );
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = Request::post("/api/pay")
        .header("host", "gw")
        .body(two_part_body(b"{\"amount\":", b"1}", go.1))
        .expect("request");
    let _ = go.0.send(());
    let rsp = sender.send_request(req).await.expect("response");
    assert_eq!(
        rsp.status(),
        401,
        "a body of unknown size is forwarded as it comes and the rejection passed through"
    );
    let api = v.api_log();
    assert_eq!(api.len(), 2, "not replayed");
    assert_eq!(api[1].body, "{\"amount\":1}");
    assert_eq!(api[1].headers.get("content-length"), None);
    // The token was still dropped: the next request gets a new one.
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    assert_eq!(v.grants(), 2);
}

#[tokio::test]
async fn an_http2_request_that_ended_with_its_headers_is_replayed() {
    let v = fake_vendor::new().run().await;
    let gw = support::start_gateway(&gateway_toml(&v, &oauth2_renewing_at_once(&v, ""))).await;
    let client = http();
    assert_eq!(get(&client, &gw, "/api/x").await.status, 200);
    v.revoke_all();
    let tcp = tokio::net::TcpStream::connect(gw.addr())
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let rsp = sender
        .send_request(
            Request::get(format!("http://{}/api/h2", gw.addr()))
                .header("authorization", "Bearer caller-token")
                .body(http_body_util::Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(rsp.status(), 200, "renewed and replayed");
    let api = v.api_log();
    assert_eq!(api.len(), 3);
    assert_eq!((api[1].status, api[2].status), (401, 200));
    assert_eq!(api[2].uri, "/api/h2");
}

#[tokio::test]
async fn a_static_credentials_request_body_is_never_buffered() {
    // An upstream that says when the first piece of a body arrived, while the caller holds back the rest.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up = listener.local_addr().expect("addr");
    let (first_tx, first_rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let first_tx = first_tx.clone();
            async move {
                let mut body = req.into_body();
                let mut all = Vec::new();
                while let Some(frame) = body.frame().await {
                    if let Some(d) = frame.expect("frame").data_ref() {
                        let _ = first_tx.send(d.clone());
                        all.extend_from_slice(d);
                    }
                }
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(all))))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
            .await;
    });
    let gw = support::start_gateway(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[upstreams.u]
url = "http://{up}"
[credentials.k]
kind = "static"
allowed_hosts = ["127.0.0.1"]
headers = {{ "X-Api-Key" = "static-secret" }}
[[routes]]
path_prefix = "/"
upstream = "u"
credential = "k"
auth = "none"
"#
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(gw.addr())
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let (go_tx, go_rx) = tokio::sync::oneshot::channel();
    let req = Request::post("/upload")
        .header("host", "gw")
        .header("content-length", "10")
        .body(two_part_body(b"first", b"-rest", go_rx))
        .expect("request");
    let answer = tokio::spawn(async move { sender.send_request(req).await });
    // Only once the upstream has the first piece does the caller send the rest: a buffering gateway would wait for
    // all of it first, and this would never end.
    let mut first_rx = first_rx;
    let first = tokio::time::timeout(HANG, first_rx.recv())
        .await
        .expect("the first piece reached the upstream before the body was complete")
        .expect("a piece");
    assert_eq!(&first[..], b"first");
    let _ = go_tx.send(());
    let rsp = tokio::time::timeout(HANG, answer)
        .await
        .expect("in time")
        .expect("join")
        .expect("response");
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"first-rest");
}

#[tokio::test]
async fn a_caller_that_goes_away_does_not_cancel_the_shared_token_request() {
    let v = fake_vendor::new().run().await;
    let gw = support::start_gateway(&gateway_toml(&v, &oauth2(&v, ""))).await;
    v.set_mode(Mode::Hold);
    // The first caller starts the token request, then hangs up while it is held.
    let first = tokio::spawn({
        let client = http();
        let addr = gw.addr();
        async move {
            let req = Request::get(format!("http://{addr}/api/first"))
                .body(Full::new(Bytes::new()))
                .expect("request");
            client.request(req).await
        }
    });
    let deadline = Instant::now() + HANG;
    while v.grants() == 0 {
        assert!(Instant::now() < deadline, "no token request started");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.abort();
    let _ = first.await;
    v.release();
    // The next caller is served by that same token request, not a new one.
    assert_eq!(get(&http(), &gw, "/api/second").await.status, 200);
    assert_eq!(
        v.grants(),
        1,
        "the token request ran on without its first caller"
    );
}

/// `method path` on the admin listener; the status and the body as JSON.
async fn admin(
    gw: &support::TestGateway,
    method: &str,
    path: &str,
) -> (StatusCode, serde_json::Value, String) {
    let req = Request::builder()
        .method(method)
        .uri(format!(
            "http://{}{path}",
            gw.admin.expect("admin listener")
        ))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let rsp = http().request(req).await.expect("response");
    let status = rsp.status();
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    (
        status,
        serde_json::from_slice(&body).unwrap_or_default(),
        text,
    )
}

#[tokio::test]
async fn the_admin_api_shows_token_state_and_renews_on_request_never_showing_a_token() {
    let v = fake_vendor::new().run().await;
    let toml = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n{}\n[credentials.fixed]\nkind = \"static\"\nallowed_hosts = [\"127.0.0.1\"]\n\
         headers = {{ \"X-Api-Key\" = \"fixed-secret-value\" }}\n",
        gateway_toml(&v, &oauth2(&v, ""))
    );
    let gw = support::start_gateway(&toml).await;
    let find = |doc: &serde_json::Value, name: &str| {
        doc["credentials"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name).cloned())
            .unwrap_or_else(|| panic!("{name} not listed: {doc}"))
    };
    let (status, doc, _) = admin(&gw, "GET", "/admin/credentials").await;
    assert_eq!(status, 200);
    let cold = find(&doc, "v");
    assert_eq!(cold["kind"], "oauth2_client_credentials");
    assert_eq!(cold["state"], "no_token");
    assert_eq!(find(&doc, "fixed")["kind"], "static");

    assert_eq!(get(&http(), &gw, "/api/x").await.status, 200);
    let (_, doc, text) = admin(&gw, "GET", "/admin/credentials").await;
    let warm = find(&doc, "v");
    assert_eq!(warm["state"], "fresh", "{warm}");
    assert!(
        warm["expires_in_secs"].as_u64().is_some_and(|s| s > 3000),
        "{warm}"
    );
    assert_eq!(warm["last_fetch_ok"], true);
    assert_eq!(warm["fetches"], 1);
    let (_, _, metrics) = admin(&gw, "GET", "/metrics").await;
    let gauge = metrics
        .lines()
        .find_map(|l| l.strip_prefix("credgate_token_expires_in_seconds{credential=\"v\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no expiry gauge:\n{metrics}"));
    assert!(gauge > 3000, "{gauge}");
    assert!(
        !metrics.contains("credential=\"fixed\"} "),
        "a static credential has no expiry"
    );
    assert!(
        metrics.contains("credgate_token_request_duration_seconds_count{credential=\"v\"} 1"),
        "one token request timed:\n{metrics}"
    );

    // Renew on request: a second token request, and the answer says so at once.
    let (status, doc, _) = admin(&gw, "POST", "/admin/credentials/v/refresh").await;
    assert_eq!(
        (status, doc["refreshing"].clone()),
        (StatusCode::ACCEPTED, serde_json::json!(true))
    );
    let deadline = Instant::now() + HANG;
    while admin(&gw, "GET", "/admin/credentials").await.1["credentials"][1]["fetches"] != 2 {
        assert!(Instant::now() < deadline, "the renewal did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(v.grants(), 2);
    let (status, doc, _) = admin(&gw, "POST", "/admin/credentials/fixed/refresh").await;
    assert_eq!(
        (status, doc["code"].clone()),
        (
            StatusCode::CONFLICT,
            serde_json::json!("nothing_to_refresh")
        )
    );
    let (status, _, _) = admin(&gw, "POST", "/admin/credentials/nope/refresh").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = admin(&gw, "GET", "/admin/credentials/v/refresh").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    let (_, _, text_after) = admin(&gw, "GET", "/admin/credentials").await;
    for t in v.issued() {
        assert!(
            !text.contains(&t) && !text_after.contains(&t),
            "a token in the admin answer"
        );
    }
    assert!(!text_after.contains("fixed-secret-value") && !text_after.contains("secret"));
}

#[tokio::test]
async fn readiness_waits_for_a_token_fetched_as_serving_starts_unless_the_credential_is_ignored() {
    let v = fake_vendor::new().run().await;
    v.set_mode(Mode::Fail500);
    let lazy = fake_vendor::new().run().await;
    let toml = format!(
        "[admin]\naddress = \"127.0.0.1:0\"\n{}\n[credentials.lazy]\nallowed_hosts = [\"127.0.0.1\"]\n{}\n",
        gateway_toml(&v, &oauth2(&v, "readiness = \"required\"")),
        oauth2(&lazy, "readiness = \"ignored\"")
    );
    let gw = support::start_gateway(&toml).await;
    let check = |doc: &serde_json::Value, name: &str| {
        doc["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name).cloned())
    };
    // Not ready while the vendor fails: the first token was asked for as serving started, without a caller.
    let deadline = Instant::now() + Duration::from_secs(20);
    let doc = loop {
        let (status, doc, _) = admin(&gw, "GET", "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{doc}");
        if v.grants() >= 1
            && check(&doc, "credential v").is_some_and(|c| c["detail"] != "no token yet")
        {
            break doc;
        }
        assert!(
            Instant::now() < deadline,
            "no failed token request shown: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let v_check = check(&doc, "credential v").expect("credential v counts");
    assert_eq!(v_check["ready"], false);
    assert!(
        v_check["detail"]
            .as_str()
            .is_some_and(|d| d.contains("failed in a row")),
        "{v_check}"
    );
    assert!(
        check(&doc, "credential lazy").is_none(),
        "an ignored credential does not count: {doc}"
    );
    assert_eq!(lazy.grants(), 0, "and is fetched on first use only");
    // The vendor recovers: the background retry gets a token and the gateway becomes ready.
    v.set_mode(Mode::Ok);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, doc, _) = admin(&gw, "GET", "/readyz").await;
        if status == StatusCode::OK {
            assert_eq!(check(&doc, "credential v").expect("listed")["ready"], true);
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {doc}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
