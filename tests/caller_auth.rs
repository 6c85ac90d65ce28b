//! Caller authentication over real sockets: the gateway, a fake IdP serving JWKS, and a recording upstream.
mod support;

use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use support::fake_idp::{FakeIdp, SigningKey, b64, claims, mint, now, token_with};
use support::upstream::{self, Behaviour, Upstream};

const ISS: &str = "https://idp.test/";
const AUD: &str = "credgate";

type HttpC = Client<HttpConnector, http_body_util::Full<bytes::Bytes>>;

fn client() -> HttpC {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn call(c: &HttpC, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = http::Request::get(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let rsp = c
        .request(req.body(upstream::full("")).expect("req"))
        .await
        .expect("response");
    let (parts, body) = rsp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

async fn get(c: &HttpC, url: &str, token: &str) -> Answer {
    let auth = format!("Bearer {token}");
    call(c, url, &[("authorization", &auth)]).await
}

/// Gateway config: plain listener, one upstream, issuers and routes as given.
fn config(up: &Upstream, issuers: &str, routes: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[admin]
address = "127.0.0.1:0"
[upstreams.u]
url = "{}"
{issuers}
{routes}
"#,
        up.url()
    )
}

fn jwks_issuer(idp: &FakeIdp, extra: &str) -> String {
    format!(
        r#"
[[issuers]]
name = "idp"
issuer = "{ISS}"
audiences = ["{AUD}", "other"]
jwks_url = "{}"
{extra}
"#,
        idp.jwks_url()
    )
}

const ROUTE: &str = r#"
[[routes]]
path_prefix = "/api"
upstream = "u"
forward_claims = { sub = "X-Credgate-Subject" }
"#;

/// Poll `cond` until it holds or `secs` pass.
async fn eventually<F, Fut>(secs: u64, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn wait_ready(c: &HttpC, gw: &support::TestGateway) {
    let url = format!("http://{}/readyz", gw.admin.expect("admin"));
    assert!(
        eventually(10, || async {
            call(c, &url, &[]).await.status == StatusCode::OK
        })
        .await,
        "gateway never became ready"
    );
}

#[tokio::test]
async fn valid_tokens_of_every_algorithm_pass_and_claims_are_forwarded() {
    let rsa = SigningKey::rsa("r1");
    let ec = SigningKey::ec("e1");
    let ed = SigningKey::ed("d1");
    let idp = FakeIdp::start(&[&rsa, &ec, &ed]).await;
    let up = upstream::start(Behaviour::Ok).await;
    let gw = support::start_gateway(&config(&up, &jwks_issuer(&idp, ""), ROUTE)).await;
    let c = client();
    wait_ready(&c, &gw).await;
    let url = format!("http://{}/api/x", gw.addr());
    let ps = token_with(
        &json!({"alg": "PS256", "kid": "r1"}),
        &claims(ISS, AUD),
        &rsa,
        "PS256",
    );
    let tokens = [
        ("RS256", mint(&rsa, &claims(ISS, AUD))),
        ("PS256", ps),
        ("ES256", mint(&ec, &claims(ISS, AUD))),
        ("EdDSA", mint(&ed, &claims(ISS, AUD))),
    ];
    for (alg, t) in &tokens {
        let a = call(
            &c,
            &url,
            &[
                ("authorization", &format!("Bearer {t}")),
                ("x-credgate-subject", "forged-by-caller"),
            ],
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{alg}: {:?}", a.body);
    }
    // The same tokens again come from the verified-token cache and still pass.
    for (alg, t) in &tokens {
        assert_eq!(
            get(&c, &url, t).await.status,
            StatusCode::OK,
            "{alg} cached"
        );
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 8);
    for s in &seen {
        assert!(s.headers.get("authorization").is_none());
        let subj: Vec<_> = s.headers.get_all("x-credgate-subject").iter().collect();
        assert_eq!(subj, vec!["svc-a"], "gateway-set subject only");
    }
    // The bearer scheme is case-insensitive.
    let t = mint(&rsa, &claims(ISS, AUD));
    let a = call(&c, &url, &[("authorization", &format!("bEARER {t}"))]).await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn adversarial_corpus_is_rejected_with_its_reason_and_never_reaches_upstream() {
    let rsa = SigningKey::rsa("r1");
    let other = SigningKey::rsa("r1");
    let ec = SigningKey::ec("e1");
    let idp = FakeIdp::start(&[&rsa, &ec]).await;
    let up = upstream::start(Behaviour::Ok).await;
    let gw = support::start_gateway(&config(
        &up,
        &jwks_issuer(&idp, "algorithms = [\"RS256\", \"ES256\"]\nleeway = \"30s\"\nunknown_kid_refetch_interval = \"1h\""),
        ROUTE,
    ))
    .await;
    let c = client();
    wait_ready(&c, &gw).await;
    let url = format!("http://{}/api/x", gw.addr());

    let good = claims(ISS, AUD);
    let with = |patch: Value| {
        let mut cl = claims(ISS, AUD);
        for (k, v) in patch.as_object().expect("obj") {
            if v.is_null() {
                cl.as_object_mut().expect("obj").remove(k);
            } else {
                cl[k] = v.clone();
            }
        }
        cl
    };
    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            b64(json!({"alg": alg, "kid": "r1"}).to_string().as_bytes()),
            b64(good.to_string().as_bytes())
        )
    };
    // HS256 keyed with the RSA public key (PEM and DER): the classic algorithm confusion.
    let hs = |secret: &[u8]| {
        let input = format!(
            "{}.{}",
            b64(json!({"alg": "HS256", "kid": "r1"}).to_string().as_bytes()),
            b64(good.to_string().as_bytes())
        );
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
        let tag = aws_lc_rs::hmac::sign(&k, input.as_bytes());
        format!("{input}.{}", b64(tag.as_ref()))
    };
    let valid = mint(&rsa, &good);
    let (h, p, s) = {
        let mut it = valid.split('.');
        (
            it.next().expect("h").to_owned(),
            it.next().expect("p").to_owned(),
            it.next().expect("s").to_owned(),
        )
    };
    let attacker = SigningKey::rsa("evil");
    let mut jwk_header = json!({"alg": "RS256", "kid": "evil", "jwk": attacker.jwk()});
    let huge = "x".repeat(2000);

    let corpus: Vec<(&str, String, &str)> = vec![
        ("alg none", unsigned("none"), "alg_not_allowed"),
        ("alg None", unsigned("None"), "alg_not_allowed"),
        ("alg NONE", unsigned("NONE"), "alg_not_allowed"),
        ("alg nOnE", unsigned("nOnE"), "alg_not_allowed"),
        (
            "hs256 with PEM",
            hs(rsa.public_pem().as_bytes()),
            "alg_not_allowed",
        ),
        ("hs256 with DER", hs(&rsa.spki_der()), "alg_not_allowed"),
        (
            "expired beyond leeway",
            mint(&rsa, &with(json!({"exp": now() - 31, "iat": now() - 100}))),
            "expired",
        ),
        (
            "nbf in future",
            mint(&rsa, &with(json!({"nbf": now() + 300}))),
            "not_yet_valid",
        ),
        (
            "iat in future",
            mint(&rsa, &with(json!({"iat": now() + 300}))),
            "issued_in_future",
        ),
        (
            "wrong iss",
            mint(&rsa, &with(json!({"iss": "https://evil.test/"}))),
            "unknown_issuer",
        ),
        (
            "no iss",
            mint(&rsa, &with(json!({"iss": null}))),
            "unknown_issuer",
        ),
        (
            "wrong aud",
            mint(&rsa, &with(json!({"aud": "someone-else"}))),
            "wrong_audience",
        ),
        (
            "wrong aud array",
            mint(&rsa, &with(json!({"aud": ["a", "b"]}))),
            "wrong_audience",
        ),
        (
            "missing exp",
            mint(&rsa, &with(json!({"exp": null}))),
            "missing_exp",
        ),
        (
            "unknown kid",
            mint(&rsa.with_kid("nope"), &good),
            "unknown_key",
        ),
        ("same kid, other key", mint(&other, &good), "bad_signature"),
        (
            "flipped signature",
            format!("{h}.{p}.{}", b64(&[0u8; 256])),
            "bad_signature",
        ),
        (
            "truncated: two segments",
            format!("{h}.{p}"),
            "malformed_token",
        ),
        (
            "truncated signature",
            format!("{h}.{p}.{}", b64(&base64_url(&s)[..200])),
            "bad_signature",
        ),
        (
            "garbled header",
            format!("{}x.{p}.{s}", &h[..h.len() - 3]),
            "malformed_token",
        ),
        ("garbled payload", format!("{h}.%%%.{s}"), "malformed_token"),
        (
            "four segments",
            format!("{h}.{p}.{s}.{s}"),
            "malformed_token",
        ),
        ("not a jwt", "not.a.jwt".into(), "malformed_token"),
        (
            "oversized header",
            token_with(
                &json!({"alg": "RS256", "kid": "r1", "pad": huge}),
                &good,
                &rsa,
                "RS256",
            ),
            "token_too_large",
        ),
        (
            "attacker jku",
            token_with(
                &json!({"alg": "RS256", "kid": "evil", "jku": idp.attacker_url()}),
                &good,
                &attacker,
                "RS256",
            ),
            "unknown_key",
        ),
        (
            "attacker jwk",
            token_with(&jwk_header, &good, &attacker, "RS256"),
            "unknown_key",
        ),
        (
            "attacker jwk with victim kid",
            {
                jwk_header["kid"] = json!("r1");
                token_with(&jwk_header, &good, &attacker, "RS256")
            },
            "bad_signature",
        ),
        (
            "attacker x5u",
            token_with(
                &json!({"alg": "RS256", "kid": "r1", "x5u": idp.attacker_url()}),
                &good,
                &attacker,
                "RS256",
            ),
            "bad_signature",
        ),
        (
            "unknown crit",
            token_with(
                &json!({"alg": "RS256", "kid": "r1", "crit": ["exp"], "exp": 1}),
                &good,
                &rsa,
                "RS256",
            ),
            "unsupported_crit",
        ),
        (
            "RS256 header on an EC key",
            token_with(&json!({"alg": "RS256", "kid": "e1"}), &good, &ec, "ES256"),
            "alg_key_mismatch",
        ),
        (
            "PS256 not on the issuer's list",
            token_with(&json!({"alg": "PS256", "kid": "r1"}), &good, &rsa, "PS256"),
            "alg_not_allowed",
        ),
    ];
    for (name, token, reason) in &corpus {
        let a = get(&c, &url, token).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{name}: {:?}", a.body);
        assert_eq!(a.body["code"], *reason, "{name}: {:?}", a.body);
        let www = a.headers["www-authenticate"].to_str().expect("ascii");
        assert!(
            www.starts_with("Bearer realm=\"credgate\", error=\"invalid_token\""),
            "{name}: {www}"
        );
        let body = a.body.to_string();
        assert!(
            !body.contains(token.as_str()) && !body.contains(&s),
            "{name}: token echoed"
        );
    }

    // Request-level violations (RFC 6750).
    let no_token = call(&c, &url, &[]).await;
    assert_eq!(no_token.status, StatusCode::UNAUTHORIZED);
    assert_eq!(no_token.body["code"], "missing_token");
    assert_eq!(
        no_token.headers["www-authenticate"],
        "Bearer realm=\"credgate\""
    );
    let basic = call(&c, &url, &[("authorization", "Basic dXNlcjpwYXNz")]).await;
    assert_eq!(basic.body["code"], "missing_token");
    let b = format!("Bearer {valid}");
    let two = call(&c, &url, &[("authorization", &b), ("authorization", &b)]).await;
    assert_eq!(two.status, StatusCode::BAD_REQUEST);
    assert_eq!(two.body["code"], "multiple_authorization");
    let q = call(&c, &format!("{url}?access_token={valid}"), &[]).await;
    assert_eq!(q.status, StatusCode::BAD_REQUEST);
    assert_eq!(q.body["code"], "token_in_query");
    let q2 = call(
        &c,
        &format!("{url}?a=1&access_token={valid}"),
        &[("authorization", &b)],
    )
    .await;
    assert_eq!(q2.body["code"], "token_in_query");

    assert!(
        up.seen().is_empty(),
        "a rejected request reached the upstream"
    );
    assert_eq!(idp.attacker_hits(), 0, "jku/x5u must never be fetched");
    let m = &gw.gw.metrics;
    for reason in [
        "alg_not_allowed",
        "bad_signature",
        "expired",
        "unknown_key",
        "token_in_query",
        "multiple_authorization",
    ] {
        assert!(
            m.get("credgate_auth_rejections_total", &[("reason", reason)]) >= 1.0,
            "{reason} not counted"
        );
    }
    assert_eq!(
        m.get(
            "credgate_auth_rejections_total",
            &[("reason", "alg_not_allowed")]
        ),
        7.0
    );

    // And the valid token itself passes.
    assert_eq!(get(&c, &url, &valid).await.status, StatusCode::OK);
}

#[tokio::test]
async fn scopes_claims_and_issuers_are_enforced_per_route() {
    let a_key = SigningKey::ec("a1");
    let b_key = SigningKey::ec("b1");
    let idp_a = FakeIdp::start(&[&a_key]).await;
    let idp_b = FakeIdp::start(&[&b_key]).await;
    let up = upstream::start(Behaviour::Ok).await;
    let issuers = format!(
        r#"
[[issuers]]
name = "a"
issuer = "https://a.test/"
audiences = ["{AUD}"]
jwks_url = "{}"
[[issuers]]
name = "b"
issuer = "https://b.test/"
audiences = ["{AUD}"]
jwks_url = "{}"
"#,
        idp_a.jwks_url(),
        idp_b.jwks_url()
    );
    let routes = r#"
[[routes]]
path_prefix = "/pay"
upstream = "u"
issuers = ["a"]
scopes = ["read", "payments"]
[[routes]]
path_prefix = "/billing"
upstream = "u"
require_claims = { azp = ["billing", "ops"] }
[[routes]]
path_prefix = "/public"
upstream = "u"
auth = "none"
"#;
    let gw = support::start_gateway(&config(&up, &issuers, routes)).await;
    let c = client();
    wait_ready(&c, &gw).await;
    let base = format!("http://{}", gw.addr());

    let mut cl = claims("https://a.test/", AUD);
    let t = mint(&a_key, &cl);
    let a = get(&c, &format!("{base}/pay/x"), &t).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.body["code"], "insufficient_scope");
    assert_eq!(
        a.headers["www-authenticate"],
        "Bearer realm=\"credgate\", error=\"insufficient_scope\", scope=\"payments\""
    );
    cl["scope"] = json!("read");
    cl["scp"] = json!(["payments"]);
    assert_eq!(
        get(&c, &format!("{base}/pay/x"), &mint(&a_key, &cl))
            .await
            .status,
        StatusCode::OK
    );

    // Issuer B's token is valid, but /pay only accepts issuer A.
    let mut clb = claims("https://b.test/", AUD);
    clb["scope"] = json!("read payments");
    let tb = mint(&b_key, &clb);
    let r = get(&c, &format!("{base}/pay/x"), &tb).await;
    assert_eq!(r.body["code"], "issuer_not_accepted");
    assert_eq!(
        get(&c, &format!("{base}/billing/x"), &tb).await.status,
        StatusCode::OK
    );

    // Key sets are bound to their issuer: A's key cannot vouch for a token claiming issuer B.
    let forged = mint(&a_key.with_kid("b1"), &clb);
    assert_eq!(
        get(&c, &format!("{base}/billing/x"), &forged).await.body["code"],
        "bad_signature"
    );
    let forged = mint(&a_key, &clb);
    assert_eq!(
        get(&c, &format!("{base}/billing/x"), &forged).await.body["code"],
        "unknown_key"
    );

    let mut bad_azp = claims("https://b.test/", AUD);
    bad_azp["azp"] = json!("intruder");
    let r = get(&c, &format!("{base}/billing/x"), &mint(&b_key, &bad_azp)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.body["code"], "claim_not_allowed");

    // Public routes read no token.
    assert_eq!(
        call(&c, &format!("{base}/public/x"), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn static_pem_key_with_explicit_kid_works_like_the_benchmark_config() {
    let rsa = SigningKey::rsa("k1");
    let dir = support::temp_dir("pem");
    let pem = dir.join("rsa.pub");
    std::fs::write(&pem, rsa.public_pem()).expect("write");
    let up = upstream::start(Behaviour::Ok).await;
    let issuers = format!(
        r#"
[[issuers]]
name = "idp"
issuer = "{ISS}"
audiences = ["{AUD}"]
algorithms = ["RS256"]
keys = [{{ file = "{}", kid = "k1" }}]
"#,
        pem.display()
    );
    let gw = support::start_gateway(&config(&up, &issuers, ROUTE)).await;
    let c = client();
    wait_ready(&c, &gw).await;
    let url = format!("http://{}/api/x", gw.addr());
    assert_eq!(
        get(&c, &url, &mint(&rsa, &claims(ISS, AUD))).await.status,
        StatusCode::OK
    );
    // A kid-less token is accepted when the issuer has exactly one key.
    let t = token_with(&json!({"alg": "RS256"}), &claims(ISS, AUD), &rsa, "RS256");
    assert_eq!(get(&c, &url, &t).await.status, StatusCode::OK);
    let a = get(&c, &url, &mint(&rsa.with_kid("k2"), &claims(ISS, AUD))).await;
    assert_eq!(a.body["code"], "unknown_key");
}

#[tokio::test]
async fn rotation_is_picked_up_by_unknown_kid_refetch_and_removed_keys_stop_cached_tokens() {
    let k1 = SigningKey::rsa("k1");
    let k2 = SigningKey::ec("k2");
    let idp = FakeIdp::start(&[&k1]).await;
    let up = upstream::start(Behaviour::Ok).await;
    let gw = support::start_gateway(&config(
        &up,
        &jwks_issuer(
            &idp,
            "refresh_interval = \"1h\"\nunknown_kid_refetch_interval = \"1h\"",
        ),
        ROUTE,
    ))
    .await;
    let c = client();
    wait_ready(&c, &gw).await;
    let url = format!("http://{}/api/x", gw.addr());
    let old = mint(&k1, &claims(ISS, AUD));
    assert_eq!(get(&c, &url, &old).await.status, StatusCode::OK);
    let hits = idp.jwks_hits();

    // The IdP rotates: k2 in, k1 out. The first k2 token triggers one refetch and passes.
    idp.set_keys(&[&k2]);
    assert_eq!(
        get(&c, &url, &mint(&k2, &claims(ISS, AUD))).await.status,
        StatusCode::OK
    );
    assert_eq!(idp.jwks_hits(), hits + 1);
    // k1 left the JWKS: its cached token stops validating at once.
    let a = get(&c, &url, &old).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{:?}", a.body);
    assert_eq!(a.body["code"], "unknown_key");
}

#[tokio::test]
async fn a_storm_of_random_kids_causes_at_most_the_configured_fetches() {
    let k1 = SigningKey::ed("k1");
    let idp = FakeIdp::start(&[&k1]).await;
    let up = upstream::start(Behaviour::Ok).await;
    let gw = support::start_gateway(&config(
        &up,
        &jwks_issuer(
            &idp,
            "refresh_interval = \"1h\"\nunknown_kid_refetch_interval = \"1h\"",
        ),
        ROUTE,
    ))
    .await;
    let c = client();
    wait_ready(&c, &gw).await;
    let url = format!("http://{}/api/x", gw.addr());
    let before = idp.jwks_hits();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let t = mint(
            &k1.with_kid(&format!("random-{i}-{}", rand_suffix(i))),
            &claims(ISS, AUD),
        );
        let c = c.clone();
        let url = url.clone();
        tasks.spawn(async move { get(&c, &url, &t).await.body["code"].clone() });
        if tasks.len() >= 50 {
            let code = tasks.join_next().await.expect("task").expect("join");
            assert_eq!(code, "unknown_key");
        }
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.expect("join"), "unknown_key");
    }
    // One refetch per unknown_kid_refetch_interval (1h here): one in all.
    assert_eq!(idp.jwks_hits() - before, 1, "JWKS fetched too often");
    assert!(up.seen().is_empty());
    assert_eq!(
        get(&c, &url, &mint(&k1, &claims(ISS, AUD))).await.status,
        StatusCode::OK
    );
}

fn base64_url(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("b64")
}

fn rand_suffix(i: usize) -> String {
    let mut b = [0u8; 4];
    aws_lc_rs::rand::fill(&mut b).expect("rand");
    format!("{i:x}{}", b64(&b))
}

#[tokio::test]
async fn idp_down_at_refresh_keeps_the_last_good_keys() {
    let k1 = SigningKey::rsa("k1");
    let idp = FakeIdp::start(&[&k1]).await;
    idp.set_max_age(Some(0));
    let up = upstream::start(Behaviour::Ok).await;
    let gw = support::start_gateway(&config(
        &up,
        &jwks_issuer(
            &idp,
            "refresh_interval = \"50ms\"\nmin_refresh_interval = \"50ms\"",
        ),
        ROUTE,
    ))
    .await;
    let c = client();
    wait_ready(&c, &gw).await;
    let url = format!("http://{}/api/x", gw.addr());
    idp.set_down(true);
    let from = idp.jwks_hits();
    assert!(
        eventually(10, || async { idp.jwks_hits() >= from + 3 }).await,
        "no refresh attempts"
    );
    // Fresh (uncached) tokens still verify against the last good keys; readiness stays up with the error shown.
    assert_eq!(
        get(&c, &url, &mint(&k1, &claims(ISS, AUD))).await.status,
        StatusCode::OK
    );
    let ready = call(
        &c,
        &format!("http://{}/readyz", gw.admin.expect("admin")),
        &[],
    )
    .await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(
        ready.body.to_string().contains("last fetch error"),
        "{}",
        ready.body
    );
    assert!(
        gw.gw.metrics.get(
            "credgate_jwks_fetches_total",
            &[("issuer", "idp"), ("result", "error")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn idp_down_at_startup_starts_not_ready_then_becomes_ready() {
    let k1 = SigningKey::ec("k1");
    let idp = FakeIdp::start(&[&k1]).await;
    idp.set_down(true);
    let up = upstream::start(Behaviour::Ok).await;
    let gw = support::start_gateway(&config(&up, &jwks_issuer(&idp, ""), ROUTE)).await;
    let c = client();
    let readyz = format!("http://{}/readyz", gw.admin.expect("admin"));
    let r = call(&c, &readyz, &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["checks"][0]["name"], "issuer:idp");
    assert_eq!(r.body["checks"][0]["ready"], false);
    let url = format!("http://{}/api/x", gw.addr());
    let t = mint(&k1, &claims(ISS, AUD));
    let a = get(&c, &url, &t).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.body["code"], "issuer_keys_unavailable");
    // Retries with backoff: ready once the IdP answers.
    assert!(
        eventually(5, || async { idp.jwks_hits() >= 2 }).await,
        "no retry"
    );
    idp.set_down(false);
    wait_ready(&c, &gw).await;
    assert_eq!(get(&c, &url, &t).await.status, StatusCode::OK);
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn fail_fast_issuer_refuses_to_start_while_the_idp_is_down() {
    let k1 = SigningKey::ec("k1");
    let idp = FakeIdp::start(&[&k1]).await;
    idp.set_down(true);
    let up = upstream::start(Behaviour::Ok).await;
    let toml = config(
        &up,
        &jwks_issuer(&idp, "startup = \"fail_fast\"\nfetch_timeout = \"2s\""),
        ROUTE,
    );
    let cfg = credgate::gateway::Config::from_toml(&toml, "<test>").expect("config");
    let gw = credgate::gateway::Gateway::build(&cfg).expect("build");
    assert_eq!(
        idp.jwks_hits(),
        0,
        "building (credgate check) must not fetch"
    );
    let err = credgate::server::start(gw, &cfg)
        .await
        .expect_err("must refuse to start");
    assert!(err.to_string().contains("issuer idp"), "{err}");
}

#[tokio::test]
async fn a_cached_token_is_still_time_checked() {
    let k1 = SigningKey::ed("k1");
    let idp = FakeIdp::start(&[&k1]).await;
    let up = upstream::start(Behaviour::Ok).await;
    let gw =
        support::start_gateway(&config(&up, &jwks_issuer(&idp, "leeway = \"0s\""), ROUTE)).await;
    let c = client();
    wait_ready(&c, &gw).await;
    let url = format!("http://{}/api/x", gw.addr());
    let mut cl = claims(ISS, AUD);
    // Valid for the first request even on a loaded machine, expired well within the wait below.
    cl["exp"] = json!(now() + 3);
    let t = mint(&k1, &cl);
    assert_eq!(get(&c, &url, &t).await.status, StatusCode::OK);
    assert!(
        eventually(15, || async {
            get(&c, &url, &t).await.body["code"] == "expired"
        })
        .await,
        "short-lived token kept passing"
    );
}

#[tokio::test]
async fn config_errors_name_the_issuer_key() {
    let bad = |issuer: &str| {
        let toml = format!("{issuer}\n[upstreams.u]\nurl = \"http://127.0.0.1:1\"\n");
        credgate::gateway::Config::from_toml(&toml, "<t>")
            .expect_err("must fail")
            .to_string()
    };
    let e = bad(
        "[[issuers]]\nname = \"x\"\nissuer = \"i\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\njwks_url = \"https://x/\"",
    );
    assert!(e.contains("issuers[0].algorithms"), "{e}");
    let e = bad(
        "[[issuers]]\nname = \"x\"\nissuer = \"i\"\naudiences = [\"a\"]\njwks_url = \"http://idp.example.com/jwks\"",
    );
    assert!(e.contains("issuers[0].jwks_url"), "{e}");
    let e = bad("[[issuers]]\nname = \"x\"\nissuer = \"i\"\naudiences = [\"a\"]");
    assert!(e.contains("issuers[0].jwks_url"), "{e}");
    let e = bad(
        "[[issuers]]\nname = \"x\"\nissuer = \"i\"\naudiences = [\"a\"]\nkeys = [{ file = \"/nonexistent.pem\", kid = \"k\" }]",
    );
    assert!(e.contains("issuers[0].keys[0].file"), "{e}");
}

/// An issuer with the JWKS of `idp` and the static PEM key `stat` (kid `kid`), plus `extra` settings.
fn jwks_and_static_issuer(
    idp: &FakeIdp,
    stat: &SigningKey,
    kid: &str,
    extra: &str,
) -> (String, support::Scratch) {
    let pem = support::temp_dir("static-key").join("static.pub");
    std::fs::write(&pem, stat.public_pem()).expect("write");
    let toml = format!(
        r#"
[[issuers]]
name = "idp"
issuer = "{ISS}"
audiences = ["{AUD}"]
jwks_url = "{}"
keys = [{{ file = "{}", kid = "{kid}" }}]
{extra}
"#,
        idp.jwks_url(),
        pem.display()
    );
    (toml, pem)
}

#[tokio::test]
async fn after_max_staleness_jwks_keys_are_dropped_and_static_keys_stay() {
    let from_jwks = SigningKey::rsa("j1");
    let stat = SigningKey::rsa("s1");
    let idp = FakeIdp::start(&[&from_jwks]).await;
    let up = upstream::start(Behaviour::Ok).await;
    let (issuer, _pem) = jwks_and_static_issuer(&idp, &stat, "s1", r#"max_staleness = "1s""#);
    let gw = support::start_gateway(&config(&up, &issuer, ROUTE)).await;
    let c = client();
    wait_ready(&c, &gw).await;
    let url = format!("http://{}/api/x", gw.addr());
    let jwks_token = mint(&from_jwks, &claims(ISS, AUD));
    let static_token = mint(&stat, &claims(ISS, AUD));
    assert_eq!(get(&c, &url, &jwks_token).await.status, StatusCode::OK);
    assert_eq!(get(&c, &url, &static_token).await.status, StatusCode::OK);
    // The IdP goes away: the last good JWKS stays in force for max_staleness, then its keys go, cached tokens too.
    idp.set_down(true);
    assert!(
        eventually(15, || async {
            get(&c, &url, &jwks_token).await.status == StatusCode::UNAUTHORIZED
        })
        .await,
        "JWKS keys outlived max_staleness"
    );
    assert_eq!(get(&c, &url, &jwks_token).await.body["code"], "unknown_key");
    assert_eq!(
        get(&c, &url, &static_token).await.status,
        StatusCode::OK,
        "static keys stay"
    );
}

#[tokio::test]
async fn a_static_key_wins_a_kid_clash_with_the_jwks() {
    // The JWKS publishes another key under the static key's kid.
    let impostor = SigningKey::rsa("shared");
    let stat = SigningKey::rsa("shared");
    let idp = FakeIdp::start(&[&impostor]).await;
    let up = upstream::start(Behaviour::Ok).await;
    let (issuer, _pem) = jwks_and_static_issuer(&idp, &stat, "shared", "");
    let gw = support::start_gateway(&config(&up, &issuer, ROUTE)).await;
    let c = client();
    wait_ready(&c, &gw).await;
    let url = format!("http://{}/api/x", gw.addr());
    assert_eq!(
        get(&c, &url, &mint(&stat, &claims(ISS, AUD))).await.status,
        StatusCode::OK
    );
    let refused = get(&c, &url, &mint(&impostor, &claims(ISS, AUD))).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.body["code"], "bad_signature");
}

#[tokio::test]
async fn a_token_without_kid_is_refused_when_the_issuer_has_several_keys() {
    let a = SigningKey::rsa("a");
    let b = SigningKey::rsa("b");
    let idp = FakeIdp::start(&[&a, &b]).await;
    let up = upstream::start(Behaviour::Ok).await;
    let gw = support::start_gateway(&config(&up, &jwks_issuer(&idp, ""), ROUTE)).await;
    let c = client();
    wait_ready(&c, &gw).await;
    let url = format!("http://{}/api/x", gw.addr());
    let no_kid = token_with(
        &json!({"alg": "RS256", "typ": "JWT"}),
        &claims(ISS, AUD),
        &a,
        "RS256",
    );
    let refused = get(&c, &url, &no_kid).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.body["code"], "unknown_key");
    assert_eq!(
        get(&c, &url, &mint(&a, &claims(ISS, AUD))).await.status,
        StatusCode::OK,
        "the same key with its kid passes"
    );
}

#[tokio::test]
async fn a_forwarded_claim_the_token_lacks_is_sent_empty_never_as_the_caller_wrote_it() {
    let k = SigningKey::rsa("k1");
    let idp = FakeIdp::start(&[&k]).await;
    let up = upstream::start(Behaviour::Ok).await;
    let route = r#"
[[routes]]
path_prefix = "/api"
upstream = "u"
forward_claims = { sub = "X-Credgate-Subject", email = "X-Credgate-Email" }
"#;
    let gw = support::start_gateway(&config(&up, &jwks_issuer(&idp, ""), route)).await;
    let c = client();
    wait_ready(&c, &gw).await;
    let url = format!("http://{}/api/x", gw.addr());
    let mut cl = claims(ISS, AUD);
    cl.as_object_mut().expect("claims").remove("email");
    let auth = format!("Bearer {}", mint(&k, &cl));
    let got = call(
        &c,
        &url,
        &[
            ("authorization", auth.as_str()),
            ("x-credgate-email", "ceo@victim.example"),
        ],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    let seen = &up.seen()[0];
    assert_eq!(seen.headers["x-credgate-subject"], "svc-a");
    let email: Vec<_> = seen.headers.get_all("x-credgate-email").iter().collect();
    assert_eq!(email, [""], "sent empty, the caller's value dropped");
}

#[tokio::test]
async fn a_key_removed_at_a_routine_refresh_stops_its_cached_tokens() {
    let (k1, k2) = (SigningKey::rsa("k1"), SigningKey::rsa("k2"));
    let idp = FakeIdp::start(&[&k1, &k2]).await;
    let up = upstream::start(Behaviour::Ok).await;
    let issuer = jwks_issuer(
        &idp,
        "refresh_interval = \"100ms\"\nmin_refresh_interval = \"100ms\"",
    );
    let gw = support::start_gateway(&config(&up, &issuer, ROUTE)).await;
    let c = client();
    wait_ready(&c, &gw).await;
    let url = format!("http://{}/api/x", gw.addr());
    let (t1, t2) = (mint(&k1, &claims(ISS, AUD)), mint(&k2, &claims(ISS, AUD)));
    assert_eq!(get(&c, &url, &t1).await.status, StatusCode::OK);
    assert_eq!(get(&c, &url, &t2).await.status, StatusCode::OK);
    // No unknown kid is ever sent: only the timed refresh can notice.
    idp.set_keys(&[&k1]);
    assert!(
        eventually(10, || async {
            get(&c, &url, &t2).await.status == StatusCode::UNAUTHORIZED
        })
        .await,
        "a token verified with a removed key kept passing"
    );
    assert_eq!(get(&c, &url, &t2).await.body["code"], "unknown_key");
    assert_eq!(get(&c, &url, &t1).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_admin_api_lists_issuer_keys_and_refetches_the_jwks_on_request() {
    let (k1, k2) = (SigningKey::rsa("k1"), SigningKey::ec("k2"));
    let idp = FakeIdp::start(&[&k1]).await;
    let up = upstream::start(Behaviour::Ok).await;
    let gw = support::start_gateway(&config(&up, &jwks_issuer(&idp, ""), ROUTE)).await;
    let c = client();
    wait_ready(&c, &gw).await;
    let admin = |path: &'static str| format!("http://{}{path}", gw.admin.expect("admin"));
    let issuers = call(&c, &admin("/admin/issuers"), &[]).await;
    assert_eq!(issuers.status, StatusCode::OK);
    let idp_doc = &issuers.body["issuers"][0];
    assert_eq!(idp_doc["name"], "idp");
    assert_eq!(idp_doc["ready"], true);
    assert_eq!(idp_doc["keys"], json!([{"kid": "k1", "type": "RSA"}]));
    let metrics = c
        .request(
            http::Request::get(admin("/metrics"))
                .body(upstream::full(""))
                .expect("request"),
        )
        .await
        .expect("response");
    let metrics = metrics
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&metrics).contains("credgate_jwks_age_seconds{issuer=\"idp\"} "),
        "no JWKS age gauge"
    );
    // A new key at the IdP: a refetch on request picks it up without waiting for the refresh interval.
    idp.set_keys(&[&k1, &k2]);
    let hits = idp.jwks_hits();
    let req = http::Request::post(admin("/admin/issuers/idp/refresh"))
        .body(upstream::full(""))
        .expect("request");
    let rsp = c.request(req).await.expect("response");
    assert_eq!(rsp.status(), StatusCode::ACCEPTED);
    assert!(
        eventually(10, || async {
            call(&c, &admin("/admin/issuers"), &[]).await.body["issuers"][0]["keys"]
                .as_array()
                .is_some_and(|k| k.len() == 2)
        })
        .await,
        "the refetch did not happen"
    );
    assert_eq!(idp.jwks_hits(), hits + 1);
    let unknown = http::Request::post(admin("/admin/issuers/nope/refresh"))
        .body(upstream::full(""))
        .expect("request");
    assert_eq!(
        c.request(unknown).await.expect("response").status(),
        StatusCode::NOT_FOUND
    );
}
