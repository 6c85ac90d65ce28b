//! Fleet mode on a real Redis: three gateways, each with its own config naming the same `redis-server`, share one
//! upstream token. In its own file (its own process): the herd opens about a thousand sockets.
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::fake_vendor::{self, FakeVendor, Mode};
use support::redis::Redis;
use support::{TestGateway, certs, start_gateway};

/// A test key (32 bytes, base64); real deployments give a secret reference.
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn http() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The OAuth2 credential most tests use, with `extra` keys.
fn oauth2(v: &FakeVendor, extra: &str) -> String {
    format!(
        r#"kind = "oauth2_client_credentials"
allowed_hosts = ["127.0.0.1"]
token_url = "{}"
client_id = "id"
client_secret = "secret"
min_token_age = "0s"
# Long enough that a held token request never outlasts the lease (the timeout and a second).
timeout = "30s"
# Fetched on first use: the tests start each herd themselves.
readiness = "ignored"
{extra}
"#,
        v.token_url()
    )
}

/// One replica named `node`, in fleet mode on `redis`, with vendor `v` behind `/api`.
async fn replica(node: &str, redis: &Redis, v: &FakeVendor) -> TestGateway {
    // Rejection-driven renewals in a row wait from backoff_min; the 401 test renews twice within milliseconds.
    replica_with(node, redis, v, &oauth2(v, r#"backoff_min = "1ms""#)).await
}

/// One replica named `node`, in fleet mode on `redis`, its credential `v` configured by `credential`.
async fn replica_with(node: &str, redis: &Redis, v: &FakeVendor, credential: &str) -> TestGateway {
    let key = format!("encryption_key = \"{KEY}\"");
    replica_on(node, redis, &key, v, credential).await
}

/// [`replica_with`], with `cluster` (its key, and any more settings) appended to its `[cluster]` section.
async fn replica_on(
    node: &str,
    redis: &Redis,
    cluster: &str,
    v: &FakeVendor,
    credential: &str,
) -> TestGateway {
    start_gateway(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[admin]
address = "127.0.0.1:0"
[upstreams.v]
url = "{}"
[credentials.v]
{credential}
[[routes]]
path_prefix = "/api"
upstream = "v"
credential = "v"
auth = "none"
[cluster]
redis_url = "{}"
node_id = "{node}"
key_prefix = "test:"
{cluster}
"#,
        v.url(),
        redis.url()
    ))
    .await
}

async fn fleet(redis: &Redis, v: &FakeVendor) -> Vec<TestGateway> {
    let mut gws = Vec::new();
    for node in ["a", "b", "c"] {
        gws.push(replica(node, redis, v).await);
    }
    gws
}

async fn fleet_with(redis: &Redis, v: &FakeVendor, credential: &str) -> Vec<TestGateway> {
    let mut gws = Vec::new();
    for node in ["a", "b", "c"] {
        gws.push(replica_with(node, redis, v, credential).await);
    }
    gws
}

/// `n` concurrent GETs of `/api/{tag}/{i}` on each replica; their statuses once all are answered.
async fn burst(gws: &[TestGateway], tag: &str, n: usize) -> Vec<StatusCode> {
    let client = http();
    let mut tasks = Vec::new();
    for (g, gw) in gws.iter().enumerate() {
        for i in 0..n {
            let client = client.clone();
            let url = format!("http://{}/api/{tag}/{g}/{i}", gw.addr());
            tasks.push(tokio::spawn(async move {
                let req = Request::get(url)
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                client.request(req).await.expect("response").status()
            }));
        }
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// [`burst`], every request answered 200.
async fn all_ok(gws: &[TestGateway], tag: &str, n: usize) {
    for st in burst(gws, tag, n).await {
        assert_eq!(st, StatusCode::OK, "{tag}");
    }
}

async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    gw: &TestGateway,
    i: usize,
) -> StatusCode {
    let req = Request::get(format!("http://{}/api/item/{i}", gw.addr()))
        .body(Full::new(Bytes::new()))
        .expect("request");
    client.request(req).await.expect("response").status()
}

async fn admin_post(gw: &TestGateway, path: &str) -> StatusCode {
    let req = Request::post(format!("http://{}{path}", gw.admin.expect("admin")))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let rsp = http().request(req).await.expect("response");
    let status = rsp.status();
    let _ = rsp.into_body().collect().await;
    status
}

fn metric(gw: &TestGateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    gw.gw.metrics.get(name, labels)
}

fn tokens(gw: &TestGateway, source: &str) -> f64 {
    metric(
        gw,
        "credgate_cluster_tokens_total",
        &[("credential", "v"), ("source", source)],
    )
}

fn adoptions(gw: &TestGateway) -> f64 {
    metric(gw, "credgate_token_adoptions_total", &[("credential", "v")])
}

/// Wait until `cond` holds, checking every 10 ms; the message names what never happened.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The token the vendor saw on its last API request.
fn last_token(v: &FakeVendor) -> String {
    let log = v.api_log();
    let seen = log.last().expect("an API request");
    seen.headers["authorization"]
        .to_str()
        .expect("ascii")
        .trim_start_matches("Bearer ")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_herd_of_3_replicas_x_300_makes_exactly_one_token_request_and_redis_holds_ciphertext()
 {
    let redis = Redis::start().await;
    let v = fake_vendor::new().run().await;
    let gws = fleet(&redis, &v).await;
    v.set_mode(Mode::Hold);
    let client = http();
    let mut tasks = Vec::new();
    for (g, gw) in gws.iter().enumerate() {
        for i in 0..300 {
            let client = client.clone();
            let url = format!("http://{}/api/item/{g}-{i}", gw.addr());
            tasks.push(tokio::spawn(async move {
                let req = Request::get(url)
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                client.request(req).await.expect("response").status()
            }));
        }
    }
    // All 900 wait inside their gateways: one replica's token request is held by the vendor, the others wait for
    // the fleet's token.
    until("the herd gathers on every replica", || {
        v.grants() >= 1
            && gws.iter().all(|gw| {
                metric(
                    gw,
                    "credgate_credential_waits_total",
                    &[("credential", "v")],
                ) >= 300.0
            })
    })
    .await;
    assert_eq!(v.grants(), 1, "one token request for the whole fleet");
    v.release();
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    assert_eq!(v.grants(), 1);
    assert_eq!(v.api_log().len(), 900);
    let token = v.issued()[0].clone();
    assert!(
        v.api_log()
            .iter()
            .all(|s| s.headers["authorization"] == format!("Bearer {token}").as_str()),
        "every replica sent the one token"
    );
    let fetched: f64 = gws.iter().map(|gw| tokens(gw, "fetched")).sum();
    let shared: f64 = gws.iter().map(|gw| tokens(gw, "fleet")).sum();
    assert_eq!(
        (fetched, shared),
        (1.0, 2.0),
        "one fetched, two read from the fleet"
    );

    // Redis holds the token sealed: no key or value shows the token or a secret.
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(keys.contains("test:{v}:token"), "{keys}");
    for key in keys.lines().filter(|k| !k.is_empty()) {
        let value = redis.cli(&["GET", key]);
        for secret in [token.as_str(), "secret", "Bearer"] {
            assert!(!value.contains(secret), "{key} shows {secret:?}");
        }
    }
    let value = redis.cli(&["GET", "test:{v}:token"]);
    let (generation, sealed) = value.trim().split_once('.').expect("generation.sealed");
    assert!(generation.parse::<u64>().is_ok(), "{value}");
    assert!(sealed.len() > token.len(), "the sealed token and its times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_renews_the_token_once_fleet_wide_and_every_replica_switches() {
    let redis = Redis::start().await;
    let v = fake_vendor::new().run().await;
    let gws = fleet(&redis, &v).await;
    let client = http();
    for gw in &gws {
        assert_eq!(get(&client, gw, 0).await, StatusCode::OK);
    }
    assert_eq!(v.grants(), 1);

    // The vendor revokes the token; replica a sees the 401 first, renews once and replays.
    v.revoke_all();
    assert_eq!(get(&client, &gws[0], 1).await, StatusCode::OK);
    assert_eq!(v.grants(), 2);
    let renewed = v.issued()[1].clone();
    assert_eq!(last_token(&v), renewed);
    // b and c adopt it from the announcement, and never send the revoked token.
    until("b and c adopt the renewed token", || {
        gws[1..].iter().all(|gw| adoptions(gw) >= 1.0)
    })
    .await;
    let rejected_before = v.api_log().iter().filter(|s| s.status == 401).count();
    for gw in &gws[1..] {
        assert_eq!(get(&client, gw, 2).await, StatusCode::OK);
        assert_eq!(last_token(&v), renewed);
    }
    assert_eq!(
        v.api_log().iter().filter(|s| s.status == 401).count(),
        rejected_before,
        "b and c switched before using the revoked token"
    );

    // Revoked again, and all three see the 401 at once: still one new token, and none is lost to the race (the
    // generation is compared before it is deleted, so the newer token survives).
    v.revoke_all();
    let mut tasks = Vec::new();
    for gw in &gws {
        for i in 0..20 {
            let client = client.clone();
            let url = format!("http://{}/api/again/{i}", gw.addr());
            tasks.push(tokio::spawn(async move {
                let req = Request::get(url)
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                client.request(req).await.expect("response").status()
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    assert_eq!(v.grants(), 3, "one new token for the fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_and_restarted_fails_no_request_and_sharing_resumes() {
    let mut redis = Redis::start().await;
    let v = fake_vendor::new().run().await;
    let gws = Arc::new(fleet(&redis, &v).await);
    let client = http();
    for gw in gws.iter() {
        assert_eq!(get(&client, gw, 0).await, StatusCode::OK);
    }
    assert_eq!(v.grants(), 1);

    // Load on every replica for the whole run, counting what fails.
    let stop = Arc::new(tokio::sync::Notify::new());
    let failed = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for g in 0..gws.len() {
        let (gws, client, stop, failed, sent) = (
            gws.clone(),
            client.clone(),
            stop.clone(),
            failed.clone(),
            sent.clone(),
        );
        load.push(tokio::spawn(async move {
            let stopped = stop.notified();
            tokio::pin!(stopped);
            let mut i = 0;
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    status = get(&client, &gws[g], i) => {
                        sent.fetch_add(1, Ordering::Relaxed);
                        if status != StatusCode::OK {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                i += 1;
            }
        }));
    }

    redis.kill();
    until("every replica notices redis is gone", || {
        gws.iter()
            .all(|gw| metric(gw, "credgate_cluster_redis_up", &[]) == 0.0)
    })
    .await;
    let outages: f64 = gws
        .iter()
        .map(|gw| metric(gw, "credgate_cluster_redis_outages_total", &[]))
        .sum();
    assert_eq!(outages, 3.0, "one outage each, counted once");
    // A renewal while Redis is down is made by the replica alone.
    assert_eq!(
        admin_post(&gws[0], "/admin/credentials/v/refresh").await,
        StatusCode::ACCEPTED
    );
    until("a renews on its own", || tokens(&gws[0], "local") >= 1.0).await;
    assert_eq!(v.grants(), 2);

    // Back, empty (as after a flush): sharing resumes. b's next renewal is the fleet's, and a and c adopt it.
    redis.restart().await;
    until("every replica sees redis again", || {
        gws.iter()
            .all(|gw| metric(gw, "credgate_cluster_redis_up", &[]) == 1.0)
    })
    .await;
    let adopted = adoptions;
    let (a_before, c_before) = (adopted(&gws[0]), adopted(&gws[2]));
    assert_eq!(
        admin_post(&gws[1], "/admin/credentials/v/refresh").await,
        StatusCode::ACCEPTED
    );
    until("b fetches for the fleet", || {
        tokens(&gws[1], "fetched") >= 1.0
    })
    .await;
    until("a and c adopt b's token", || {
        adopted(&gws[0]) > a_before && adopted(&gws[2]) > c_before
    })
    .await;
    assert_eq!(v.grants(), 3);
    let shared = v.issued()[2].clone();
    stop.notify_waiters();
    for t in load {
        t.await.expect("load task");
    }
    for gw in gws.iter() {
        assert_eq!(get(&client, gw, 1).await, StatusCode::OK);
        assert_eq!(
            last_token(&v),
            shared,
            "every replica uses the fleet's token again"
        );
    }
    assert!(sent.load(Ordering::Relaxed) > 0);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_redis_is_down_from_the_start_serves_and_is_ready_but_degraded() {
    let (_held, addr) = support::closed_port();
    let v = fake_vendor::new().run().await;
    let nowhere = Redis::nowhere(addr.port());
    let gw = replica("a", &nowhere, &v).await;
    let client = http();
    for i in 0..3 {
        assert_eq!(get(&client, &gw, i).await, StatusCode::OK);
    }
    assert_eq!(v.grants(), 1, "fetched on its own, once");
    assert_eq!(tokens(&gw, "local"), 1.0);
    let req = Request::get(format!("http://{}/readyz", gw.admin.expect("admin")))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let rsp = client.request(req).await.expect("response");
    assert_eq!(rsp.status(), StatusCode::OK, "ready without Redis");
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    let doc: serde_json::Value = serde_json::from_slice(&body).expect("json");
    let cluster = doc["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "cluster")
        .expect("a cluster check")
        .clone();
    assert_eq!(cluster["ready"], true);
    assert!(
        cluster["detail"]
            .as_str()
            .expect("detail")
            .contains("degraded"),
        "{cluster}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_token_request_backs_the_whole_fleet_off() {
    let redis = Redis::start().await;
    let v = fake_vendor::new().run().await;
    // A backoff long enough that no replica's request can come after it ends.
    let gws = fleet_with(&redis, &v, &oauth2(&v, r#"backoff_min = "30s""#)).await;
    v.set_mode(Mode::Fail500);
    let statuses = burst(&gws, "down", 20).await;
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert_eq!(
        v.grants(),
        1,
        "one failed token request for the fleet, then every replica backs off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_credential_is_shared_too() {
    let redis = Redis::start().await;
    let v = fake_vendor::new().login("k", "e@x", "p").run().await;
    let login = format!(
        r#"kind = "login"
allowed_hosts = ["127.0.0.1"]
url = "{}"
request_headers = {{ "x-api-key" = "k", "api-version" = "1.0" }}
body = '{{"email": "e@x", "password": "p"}}'
ttl = "1h"
timeout = "30s"
readiness = "ignored"
headers = {{ "X-Incode-Hardware-Id" = "{{token}}" }}
"#,
        v.login_url()
    );
    let gws = fleet_with(&redis, &v, &login).await;
    v.set_mode(Mode::Hold);
    let herd = {
        let gws = &gws;
        async move { burst(gws, "login", 100).await }
    };
    let release = async {
        until("the login herd gathers", || {
            v.grants() >= 1
                && gws.iter().all(|gw| {
                    metric(
                        gw,
                        "credgate_credential_waits_total",
                        &[("credential", "v")],
                    ) >= 100.0
                })
        })
        .await;
        v.release();
    };
    let (statuses, ()) = tokio::join!(herd, release);
    assert!(statuses.iter().all(|s| *s == StatusCode::OK));
    assert_eq!(v.grants(), 1, "one login for the fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_ahead_of_expiry_are_made_once_for_the_fleet_and_used_by_every_replica() {
    let redis = Redis::start().await;
    // Two-second tokens: renewed ahead about every 1.5 s.
    let v = fake_vendor::new().ttl(Duration::from_secs(2)).run().await;
    let gws = Arc::new(fleet(&redis, &v).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for g in 0..gws.len() {
        let (gws, stop, failed) = (gws.clone(), stop.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let client = http();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(format!("http://{}/api/r{g}/{i}", gws[g].addr()))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                if client.request(req).await.expect("response").status() != StatusCode::OK {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    // Three renewals.
    until("three renewals", || v.grants() >= 4).await;
    let issued = v.issued();
    // The third token is in use by every replica before the run ends.
    until("every replica uses the third token", || {
        let log = v.api_log();
        (0..3).all(|g| {
            log.iter().any(|s| {
                s.uri.starts_with(&format!("/api/r{g}/"))
                    && s.headers["authorization"] == format!("Bearer {}", issued[2]).as_str()
            })
        })
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    until("every token request is the fleet's", || {
        let fetched: f64 = gws.iter().map(|gw| tokens(gw, "fetched")).sum();
        fetched == v.grants() as f64
    })
    .await;
    let local: f64 = gws.iter().map(|gw| tokens(gw, "local")).sum();
    assert_eq!(local, 0.0);
    // Each of the first three tokens served all three replicas: none was one replica's own.
    assert_every_replica_used(&v, 3);
}

/// A replica serving TeleSign tokens at `/telesign`, 3 per phone a minute, in fleet mode on `redis`.
async fn telesign_replica(node: &str, redis: &Redis) -> TestGateway {
    let db = support::temp_dir("fleet-telesign").join("flows.db");
    start_gateway(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[flows]
database = "{}"
[flows.telesign]
customer_id = "CUSTOMER-0001"
api_key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlBQkNERUY="
caller_limit = {{ requests = 100, per = "1h" }}
phone_limit = {{ requests = 3, per = "1m" }}
[[routes]]
path_prefix = "/telesign"
flow = "telesign"
auth = "none"
[cluster]
redis_url = "{}"
node_id = "{node}"
key_prefix = "test:"
encryption_key = "{KEY}"
"#,
        db.display(),
        redis.url()
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telesign_phone_limit_of_3_a_minute_holds_across_3_replicas() {
    let mut redis = Redis::start().await;
    let mut gws = Vec::new();
    for node in ["a", "b", "c"] {
        gws.push(telesign_replica(node, &redis).await);
    }
    let client = http();
    let mint = |gw: &TestGateway| {
        let req = Request::get(format!("http://{}/telesign/token/15551234567", gw.addr()))
            .body(Full::new(Bytes::new()))
            .expect("request");
        client.request(req)
    };
    let mut statuses = Vec::new();
    for _ in 0..3 {
        for gw in &gws {
            statuses.push(mint(gw).await.expect("response").status());
        }
    }
    let minted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(
        (minted, limited),
        (3, 6),
        "3 tokens for the fleet, not 9: {statuses:?}"
    );
    // The budget comes back one token per 20 s, and the answer says so.
    let limited = mint(&gws[0]).await.expect("response");
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=20).contains(&retry), "retry-after {retry}");
    // Redis never sees the phone number: the limit's key carries a keyed hash of it.
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(keys.contains("test:limit:telesign:phone:"), "{keys}");
    assert!(!keys.contains("15551234567"), "{keys}");

    // Without Redis each replica falls back to its own limiter: the limit then holds per replica.
    redis.kill();
    let other = |gw: &TestGateway| {
        let req = Request::get(format!("http://{}/telesign/token/15550000002", gw.addr()))
            .body(Full::new(Bytes::new()))
            .expect("request");
        client.request(req)
    };
    let mut minted = 0;
    for _ in 0..4 {
        for gw in &gws {
            if other(gw).await.expect("response").status() == StatusCode::OK {
                minted += 1;
            }
        }
    }
    assert_eq!(minted, 9, "3 per replica while Redis is down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_keeping_one_live_token_sees_no_thrash_and_no_request_fails() {
    let redis = Redis::start().await;
    // Each grant revokes the previous token; two-second tokens, renewed ahead about every 1.5 s.
    let v = fake_vendor::new()
        .one_live_token()
        .ttl(Duration::from_secs(2))
        .run()
        .await;
    let gws = Arc::new(fleet(&redis, &v).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for g in 0..gws.len() {
        let (gws, stop, failed) = (gws.clone(), stop.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let client = http();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(format!("http://{}/api/r{g}/{i}", gws[g].addr()))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                if client.request(req).await.expect("response").status() != StatusCode::OK {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    until("three renewals", || v.grants() >= 4).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    // One token request per renewal for the whole fleet: a replica that still sent the revoked token was answered
    // 401, found the fleet's newer token and replayed with it, without a token request of its own; and each token
    // lived long enough to serve every replica.
    until("every token request is the fleet's", || {
        let fetched: f64 = gws.iter().map(|gw| tokens(gw, "fetched")).sum();
        fetched == v.grants() as f64
    })
    .await;
    assert_every_replica_used(&v, 3);
}

/// Each of the first `n` tokens issued carried requests from all three replicas (the load's paths are
/// `/api/r{replica}/...`).
fn assert_every_replica_used(v: &FakeVendor, n: usize) {
    let issued = v.issued();
    let log = v.api_log();
    for token in &issued[..n] {
        let users: std::collections::BTreeSet<_> = log
            .iter()
            .filter(|s| s.headers["authorization"] == format!("Bearer {token}").as_str())
            .filter_map(|s| s.uri.split('/').nth(2).map(str::to_owned))
            .collect();
        assert_eq!(users.len(), 3, "token {token} used by {users:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_waiting_for_another_s_token_fetches_itself_when_redis_dies() {
    let mut redis = Redis::start().await;
    let v = fake_vendor::new().run().await;
    let gws = fleet(&redis, &v).await;
    v.set_mode(Mode::Hold);
    let client = http();
    // a takes the lease and its token request is held; b waits for a's token (the lease holds for 31 s).
    let a = tokio::spawn({
        let (client, url) = (client.clone(), format!("http://{}/api/a", gws[0].addr()));
        async move {
            let req = Request::get(url)
                .body(Full::new(Bytes::new()))
                .expect("request");
            client.request(req).await.expect("response").status()
        }
    });
    until("a's token request arrives", || v.grants() == 1).await;
    let b = tokio::spawn({
        let (client, url) = (client.clone(), format!("http://{}/api/b", gws[1].addr()));
        async move {
            let req = Request::get(url)
                .body(Full::new(Bytes::new()))
                .expect("request");
            client.request(req).await.expect("response").status()
        }
    });
    until("b waits", || {
        metric(
            &gws[1],
            "credgate_credential_waits_total",
            &[("credential", "v")],
        ) >= 1.0
    })
    .await;
    // Redis goes: b stops waiting for a's lease and asks the vendor itself, long before the lease would end.
    redis.kill();
    until("b fetches on its own", || v.grants() == 2).await;
    assert_eq!(
        metric(
            &gws[0],
            "credgate_token_requests_total",
            &[("credential", "v"), ("result", "error")]
        ),
        0.0,
        "the second token request is b's, not a retry of a's"
    );
    v.release();
    assert_eq!(a.await.expect("a"), StatusCode::OK);
    assert_eq!(b.await.expect("b"), StatusCode::OK);
    assert_eq!(tokens(&gws[1], "local"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_warm_up_with_one_token_request_for_the_fleet() {
    let redis = Redis::start().await;
    let v = fake_vendor::new().run().await;
    // readiness = "required" (the default): each replica asks for its first token as it starts serving.
    let required = oauth2(&v, "").replace("readiness = \"ignored\"\n", "");
    assert!(!required.contains("readiness"));
    let gws = fleet_with(&redis, &v, &required).await;
    let statuses = burst(&gws, "warm", 20).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(
        v.grants(),
        1,
        "one token request for three replicas warming up"
    );
    // The admin API says whose token each replica uses: the fleet's.
    for gw in &gws {
        let url = format!("http://{}/admin/credentials", gw.admin.expect("admin"));
        let req = Request::get(url)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let rsp = http().request(req).await.expect("admin answers");
        let body = http_body_util::BodyExt::collect(rsp.into_body())
            .await
            .expect("body")
            .to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(doc["credentials"][0]["fleet"], "shared", "{doc}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_in_fleet_mode_keeps_the_shared_token_and_makes_no_token_request() {
    let redis = Redis::start().await;
    let v = fake_vendor::new().run().await;
    let dir = support::temp_dir("fleet-reload");
    let path = dir.join("config.toml");
    let config = |extra: &str| {
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[admin]
address = "127.0.0.1:0"
[upstreams.v]
url = "{}"
[credentials.v]
{}
[[routes]]
path_prefix = "/api"
upstream = "v"
credential = "v"
auth = "none"
{extra}
[cluster]
redis_url = "{}"
node_id = "a"
key_prefix = "test:"
encryption_key = "{KEY}"
"#,
            v.url(),
            oauth2(&v, "").replace("readiness = \"ignored\"\n", ""),
            redis.url()
        )
    };
    std::fs::write(&path, config("")).expect("config");
    let mut gw = support::binary::Binary::run(&path, "info", 1, true);
    let at = gw.addrs[0];
    let get = |p: &'static str| {
        let url = format!("http://{at}{p}");
        async move {
            let req = Request::get(url)
                .body(Full::new(Bytes::new()))
                .expect("request");
            http().request(req).await.expect("response").status()
        }
    };
    assert_eq!(get("/api/1").await, StatusCode::OK);
    assert_eq!(get("/more/1").await, StatusCode::NOT_FOUND);
    assert_eq!(v.grants(), 1);
    let admin = gw.admin.expect("admin");
    let from_the_fleet = || async move {
        let req = Request::get(format!("http://{admin}/metrics"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let rsp = http().request(req).await.expect("metrics");
        let body = rsp.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| {
                l.strip_prefix("credgate_cluster_tokens_total{credential=\"v\",source=\"fleet\"} ")?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    let read_before = from_the_fleet().await;
    let tmp = dir.join("config.toml.new");
    std::fs::write(
        &tmp,
        config("[[routes]]\npath_prefix = \"/more\"\nupstream = \"v\"\ncredential = \"v\"\nauth = \"none\"\n"),
    )
    .expect("new config");
    std::fs::rename(&tmp, &path).expect("rename");
    let (put, line) = gw.wait_reload();
    assert!(put, "{line}");
    assert_eq!(get("/more/1").await, StatusCode::OK);
    assert_eq!(get("/api/2").await, StatusCode::OK);
    assert_eq!(v.grants(), 1, "the shared token survived the reload");
    assert_eq!(
        from_the_fleet().await,
        read_before,
        "kept in this replica's cache: not even read back from Redis"
    );
    let req = Request::get(format!("http://{admin}/readyz"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let rsp = http().request(req).await.expect("readyz");
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("redis up"),
        "the kept cluster still reaches Redis: {text}"
    );
}

/// A Redis that speaks only TLS and requires client certificates: replicas given its CA and a client certificate
/// share one token through it; a replica whose certificate it refuses serves anyway, fetching on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_token_through_a_redis_that_requires_tls_and_client_certificates() {
    let server = certs::make();
    let redis = Redis::start_tls(&server).await;
    assert!(redis.url().starts_with("rediss://"));
    let v = fake_vendor::new().run().await;
    let tls = |c: &certs::TestCerts| {
        format!(
            "encryption_key = \"{KEY}\"\ntls_ca = \"{}\"\ntls_client_cert = \"{}\"\ntls_client_key = \"{}\"",
            server.ca.display(),
            c.cert.display(),
            c.key.display()
        )
    };
    let credential = oauth2(&v, "");
    let mut gws = Vec::new();
    for node in ["a", "b"] {
        gws.push(replica_on(node, &redis, &tls(&server), &v, &credential).await);
    }
    all_ok(&gws[..1], "first", 1).await;
    all_ok(&gws, "tls", 20).await;
    assert_eq!(v.grants(), 1, "one token request for both replicas");
    assert_eq!(
        (tokens(&gws[0], "fetched"), tokens(&gws[1], "fleet")),
        (1.0, 1.0),
        "a fetched it for the fleet over TLS, b read it over TLS"
    );
    assert!(
        redis.cli(&["KEYS", "*"]).contains("test:{v}:token"),
        "the token is stored in the TLS Redis"
    );

    // A client certificate from another CA: Redis ends the handshake; the replica serves on its own.
    let stranger = certs::make();
    let c = replica_on("c", &redis, &tls(&stranger), &v, &credential).await;
    all_ok(std::slice::from_ref(&c), "stranger", 5).await;
    assert_eq!(v.grants(), 2, "c could not share, so it fetched its own");
    assert_eq!(tokens(&c, "local"), 1.0);
    assert_eq!(metric(&c, "credgate_cluster_redis_up", &[]), 0.0);
}

/// A key rotation: a replica given a new key and the old one as a decryption key reads the token the old key
/// sealed (no token request), seals its renewal with the new key, and a replica on the old key that accepts the new
/// one reads that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_keeps_the_fleet_token_readable_with_no_token_request() {
    const NEW: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    let redis = Redis::start().await;
    let v = fake_vendor::new().run().await;
    let credential = oauth2(&v, "");
    let keys = |key: &str, also: &str| {
        format!("encryption_key = \"{key}\"\ndecryption_keys = [\"{also}\"]")
    };
    let old = replica_with("old", &redis, &v, &credential).await;
    all_ok(std::slice::from_ref(&old), "old", 3).await;
    assert_eq!(v.grants(), 1);

    let new = replica_on("new", &redis, &keys(NEW, KEY), &v, &credential).await;
    all_ok(std::slice::from_ref(&new), "new", 3).await;
    assert_eq!(
        v.grants(),
        1,
        "the new key's replica opened the old key's token"
    );
    assert_eq!(tokens(&new, "fleet"), 1.0);

    assert_eq!(
        admin_post(&new, "/admin/credentials/v/refresh").await,
        StatusCode::ACCEPTED
    );
    until("the new key's replica renews for the fleet", || {
        tokens(&new, "fetched") >= 1.0
    })
    .await;
    assert_eq!(v.grants(), 2);
    let accepting = replica_on("accepting", &redis, &keys(KEY, NEW), &v, &credential).await;
    all_ok(std::slice::from_ref(&accepting), "accepting", 3).await;
    assert_eq!(
        v.grants(),
        2,
        "the renewal, sealed with the new key, opened with it as a decryption key"
    );
    assert_eq!(tokens(&accepting, "fleet"), 1.0);
    assert_eq!(last_token(&v), v.issued()[1]);
}
