//! The TeleSign App Verify JWT service over real sockets: claims verified with the base64-decoded key, the ledger read
//! back after a restart, and rate limits.
mod support;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::Method;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use support::callers::Callers;
use support::fake_http::{Got, call};

const CUSTOMER_ID: &str = "CUSTOMER-0001";
/// Base64 of the 32 key bytes below; TeleSign hands out keys in this form.
const KEY_BYTES: &[u8] = b"0123456789abcdef0123456789ABCDEF";

fn api_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(KEY_BYTES)
}

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    iat: i64,
    exp: i64,
    phn: Option<String>,
    xid: String,
    bta: Option<bool>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn config(db: &Path, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false

[flows]
database = "{db}"

[flows.telesign]
customer_id = "{CUSTOMER_ID}"
api_key = "{key}"
{extra}

[[routes]]
path_prefix = "/telesign"
flow = "telesign"
auth = "none"
"#,
        db = db.display(),
        key = api_key()
    )
}

const GENEROUS: &str = "caller_limit = { requests = 100, per = \"1h\" }\nphone_limit = { requests = 100, per = \"1h\" }";

struct Setup {
    gw: support::TestGateway,
    db: support::Scratch,
}

impl Setup {
    async fn start(extra: &str) -> Self {
        let db = support::temp_dir("telesign").join("flows.db");
        let gw = support::start_gateway(&config(&db, extra)).await;
        Self { gw, db }
    }

    async fn get(&self, path: &str) -> Got {
        call(
            Method::GET,
            &format!("http://127.0.0.1:{}{path}", self.gw.addr().port()),
            &[],
            "",
        )
        .await
    }
}

fn verify(token: &str) -> Claims {
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&[CUSTOMER_ID]);
    v.set_required_spec_claims(&["exp", "iat", "iss"]);
    jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(KEY_BYTES), &v)
        .expect("signed with the base64-decoded key")
        .claims
}

#[tokio::test]
async fn token_is_an_hs256_jwt_signed_with_the_decoded_key() {
    let s = Setup::start(GENEROUS).await;
    let before = now();
    let got = s.get("/telesign/token/+15551234567/order-1").await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(got.headers["cache-control"], "no-store");
    let token = got.text();
    let header = jsonwebtoken::decode_header(&token).expect("header");
    assert_eq!(header.alg, Algorithm::HS256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let c = verify(&token);
    assert_eq!(c.iss, CUSTOMER_ID);
    assert_eq!(c.phn.as_deref(), Some("15551234567"));
    assert_eq!(c.xid, "order-1");
    assert!(c.bta.is_none());
    assert!(
        (before - 11..=now() - 10).contains(&c.iat),
        "iat {} is now-10",
        c.iat
    );
    assert_eq!(c.exp - c.iat, 90);

    // The base64 text itself is not the key.
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&[CUSTOMER_ID]);
    assert!(
        jsonwebtoken::decode::<Claims>(&token, &DecodingKey::from_secret(api_key().as_bytes()), &v)
            .is_err()
    );
}

#[tokio::test]
async fn without_an_xid_a_uuid_v4_is_minted_and_lifetime_and_claims_follow_config() {
    let s = Setup::start(&format!(
        "{GENEROUS}\ntoken_ttl = \"30s\"\ninclude_phone = false\nbta = true"
    ))
    .await;
    let got = s.get("/telesign/token/447700900123").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let c = verify(&got.text());
    let xid = uuid::Uuid::parse_str(&c.xid).expect("xid is a UUID");
    assert_eq!(xid.get_version_num(), 4);
    assert_eq!(c.exp - c.iat, 30);
    assert!(c.phn.is_none());
    assert_eq!(c.bta, Some(true));
}

#[tokio::test]
async fn phone_numbers_and_xids_are_validated() {
    let s = Setup::start(GENEROUS).await;
    for bad in [
        "/telesign/token/12345",
        "/telesign/token/+0123456789",
        "/telesign/token/+1555abc4567",
        "/telesign/token/1234567890123456",
        "/telesign/token/+15551234567/bad*xid",
        "/telesign/token/+15551234567/a/b",
        "/telesign/token/+15551234567/bad%20xid",
    ] {
        let got = s.get(bad).await;
        assert_eq!(got.status, 400, "{bad}: {}", got.text());
        assert_eq!(got.json()["code"], "invalid_request");
    }
    let rows: i64 = rusqlite::Connection::open(&s.db)
        .expect("db")
        .query_row("SELECT count(*) FROM telesign_tokens", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn the_ledger_is_read_back_after_a_restart() {
    let s = Setup::start(GENEROUS).await;
    let token = s.get("/telesign/token/%2B15551234567/order-9").await.text();
    let second = s.get("/telesign/token/15551234567").await;
    assert_eq!(second.status, 200);
    let issued = verify(&token);
    let Setup { gw, db } = s;
    gw.shutdown(std::time::Duration::from_secs(1)).await;

    let gw = support::start_gateway(&config(&db, GENEROUS)).await;
    let s = Setup { gw, db };
    let got = s.get("/telesign/token-status/order-9").await;
    assert_eq!(got.status, 200, "{}", got.text());
    let st = got.json();
    assert_eq!(st["xid"], "order-9");
    assert_eq!(st["phone"], "15551234567");
    assert_eq!(st["issuedAt"], issued.iat);
    assert_eq!(st["expiresAt"], issued.exp);
    assert_eq!(st["issued"], 1);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(st["tokenSha256"], hex.as_str());
    assert!(
        !got.text().contains(&token),
        "the ledger never holds the token"
    );

    let by_phone = s
        .get("/telesign/token-status?phone=%2B15551234567")
        .await
        .json();
    let tokens = by_phone["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 2);
    assert!(tokens.iter().any(|t| t["xid"] == "order-9"));
    let unescaped = s
        .get("/telesign/token-status?phone=+15551234567")
        .await
        .json();
    assert_eq!(unescaped["tokens"].as_array().map(Vec::len), Some(2));

    let conn = rusqlite::Connection::open(&s.db).expect("db");
    let (xid, phone, iat, exp, sha): (String, String, i64, i64, String) = conn
        .query_row(
            "SELECT xid, phone, issued_at, expires_at, token_sha256 FROM telesign_tokens WHERE xid = 'order-9'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .expect("row");
    assert_eq!(
        (xid.as_str(), phone.as_str(), iat, exp, sha.as_str()),
        (
            "order-9",
            "15551234567",
            issued.iat,
            issued.exp,
            hex.as_str()
        )
    );

    let missing = s.get("/telesign/token-status/never-issued").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["code"], "not_found");
}

#[tokio::test]
async fn per_phone_and_per_caller_limits_answer_429_with_retry_after() {
    let s = Setup::start(
        "caller_limit = { requests = 4, per = \"1h\" }\nphone_limit = { requests = 2, per = \"1h\" }",
    )
    .await;
    assert_eq!(s.get("/telesign/token/15550000001").await.status, 200);
    assert_eq!(s.get("/telesign/token/15550000001").await.status, 200);
    let limited = s.get("/telesign/token/15550000001").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["code"], "rate_limited");
    assert_eq!(limited.json()["detail"], "rate limit per phone exceeded");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    // Two per hour: the next slot is about half an hour away.
    assert!((1700..=1800).contains(&retry), "retry-after {retry}");

    // Another phone is not limited by the first one's count, but the caller's budget (4/h) runs out.
    assert_eq!(s.get("/telesign/token/15550000002").await.status, 200);
    let limited = s.get("/telesign/token/15550000003").await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["detail"], "rate limit per caller exceeded");
    assert!(limited.headers.contains_key("retry-after"));
    let rows: i64 = rusqlite::Connection::open(&s.db)
        .expect("db")
        .query_row("SELECT count(*) FROM telesign_tokens", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 3, "refused requests mint nothing");
}

/// A TeleSign route behind a JWT check, with callers of their own.
struct JwtSetup {
    gw: support::TestGateway,
    callers: Callers,
}

impl JwtSetup {
    async fn start(extra: &str) -> Self {
        let db = support::temp_dir("telesign-jwt").join("flows.db");
        let callers = Callers::new();
        let toml = config(&db, extra)
            .replace("auth = \"none\"\n", "")
            .replace("[flows]", &format!("{}\n[flows]", callers.issuer_toml()));
        let gw = support::start_gateway(&toml).await;
        Self { gw, callers }
    }

    async fn get_as(&self, sub: &str, scope: &str, path: &str) -> Got {
        let bearer = self.callers.bearer(sub, scope);
        call(
            Method::GET,
            &format!("http://127.0.0.1:{}{path}", self.gw.addr().port()),
            &[("authorization", bearer.as_str())],
            "",
        )
        .await
    }
}

#[tokio::test]
async fn the_ledger_is_read_by_the_caller_that_minted_or_an_admin() {
    let s = JwtSetup::start(&format!("{GENEROUS}\nadmin_scope = \"telesign-admin\"")).await;
    let minted = s
        .get_as("svc-a", "", "/telesign/token/15551230001/order-a")
        .await;
    assert_eq!(minted.status, 200, "{}", minted.text());
    for (sub, scope, sees) in [
        ("svc-a", "", true),
        ("svc-b", "", false),
        ("svc-b", "read telesign-admin", true),
    ] {
        let by_xid = s.get_as(sub, scope, "/telesign/token-status/order-a").await;
        assert_eq!(
            by_xid.status,
            if sees { 200 } else { 404 },
            "{sub} {scope}: {}",
            by_xid.text()
        );
        let by_phone = s
            .get_as(sub, scope, "/telesign/token-status?phone=15551230001")
            .await;
        assert_eq!(by_phone.status, 200);
        assert_eq!(
            by_phone.json()["tokens"].as_array().map(Vec::len),
            Some(usize::from(sees)),
            "{sub} {scope}"
        );
    }
}

#[tokio::test]
async fn callers_behind_one_address_have_their_own_buckets_and_a_caller_phone_limit() {
    let s = JwtSetup::start(
        "caller_limit = { requests = 3, per = \"1h\" }\nphone_limit = { requests = 10, per = \"1h\" }\n\
         caller_phone_limit = { requests = 1, per = \"1h\" }",
    )
    .await;
    let mint = |sub: &'static str, phone: &'static str| {
        let path = format!("/telesign/token/{phone}");
        let s = &s;
        async move { s.get_as(sub, "", &path).await }
    };
    assert_eq!(mint("svc-a", "15551230001").await.status, 200);
    let again = mint("svc-a", "15551230001").await;
    assert_eq!(again.status, 429);
    assert_eq!(
        again.json()["detail"],
        "rate limit per caller and phone exceeded"
    );
    // (The refused request still counted against svc-a's own budget of 3.) Another caller from the same address may
    // still ask for that number: the number's quota is not one caller's.
    assert_eq!(mint("svc-b", "15551230001").await.status, 200);
    assert_eq!(mint("svc-a", "15551230002").await.status, 200);
    let spent = mint("svc-a", "15551230003").await;
    assert_eq!(spent.status, 429);
    assert_eq!(spent.json()["detail"], "rate limit per caller exceeded");
    assert_eq!(
        mint("svc-b", "15551230003").await.status,
        200,
        "svc-b's bucket is its own, though it shares svc-a's address"
    );
}

#[test]
fn config_errors_name_the_key() {
    let db = support::temp_dir("telesign-cfg").join("flows.db");
    let base = config(&db, "");
    for (from, to, key) in [
        (
            api_key(),
            "not base64!".to_owned(),
            "flows.telesign.api_key",
        ),
        (
            "[[routes]]".to_owned(),
            "token_ttl = \"5s\"\n[[routes]]".to_owned(),
            "flows.telesign.token_ttl",
        ),
        (
            "[[routes]]".to_owned(),
            "phone_limit = { requests = 0, per = \"1s\" }\n[[routes]]".to_owned(),
            "flows.telesign.phone_limit.requests",
        ),
        (
            "[[routes]]".to_owned(),
            "caller_limit = { requests = 1, per = \"soon\" }\n[[routes]]".to_owned(),
            "flows.telesign.caller_limit.per",
        ),
    ] {
        let text = base.replacen(&from, &to, 1);
        let err = credgate::gateway::Config::from_toml(&text, "<t>").expect_err(key);
        assert!(err.to_string().contains(key), "{err}");
    }
}
