//! Property tests of hostile input. The bearer token: random tokens are refused without a panic, and no
//! single-character change to a valid token is accepted unless it decodes to the very same token (base64url's
//! unused trailing bits). The config: lines dropped, doubled or given bad values load or fail with an error naming
//! the file, never a panic. Bounded case counts keep them in the normal `cargo test`.
mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use credgate::gateway::Config;
use credgate::testing::{CallerAuth, Metrics};
use proptest::prelude::*;
use support::fake_idp::{SigningKey, claims, mint};

const ISS: &str = "https://idp.props.test/";
const AUD: &str = "credgate";

struct Fixture {
    auth: CallerAuth,
    valid: String,
    rt: tokio::runtime::Runtime,
    _dir: support::Scratch,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (ed, ec) = (SigningKey::ed("ed-1"), SigningKey::ec("ec-1"));
    let dir = support::temp_dir("props");
    let jwks = dir.join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::json!({"keys": [ed.jwk(), ec.jwk()]}).to_string(),
    )
    .expect("write");
    let cfg = Config::from_toml(
        &format!(
            r#"
[upstreams.u]
url = "http://127.0.0.1:1"
[[issuers]]
name = "idp"
issuer = "{ISS}"
audiences = ["{AUD}"]
keys = [{{ file = "{}" }}]
[[routes]]
path_prefix = "/"
upstream = "u"
"#,
            jwks.display()
        ),
        "<props>",
    )
    .expect("config");
    let http = credgate::testing::http_client(&[], Duration::from_secs(1)).expect("client");
    let auth = rt.block_on(async {
        CallerAuth::new(
            &cfg.issuers,
            cfg.routes.iter().flat_map(|r| r.auth.forwarded_claims()),
            &http,
            Arc::new(Metrics::default()),
        )
    });
    let valid = mint(&ed, &claims(ISS, AUD));
    assert!(
        rt.block_on(auth.verify(&valid)).is_ok(),
        "the fixture's token is valid"
    );
    Fixture {
        auth,
        valid,
        rt,
        _dir: dir,
    }
}

/// The bytes a JWS's three segments decode to, if they decode.
fn decoded(token: &str) -> Option<Vec<Vec<u8>>> {
    let parts: Vec<_> = token.split('.').collect();
    if parts.len() != 3 {
        return None;
    }
    parts
        .iter()
        .map(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .collect()
}

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn random_tokens_are_refused(token in prop::collection::vec(prop::sample::select(ALPHABET), 0..400)) {
        let f = fixture_once();
        let token = String::from_utf8(token).expect("ascii");
        prop_assert!(f.rt.block_on(f.auth.verify(&token)).is_err(), "accepted {}", token);
    }

    #[test]
    fn no_one_character_change_to_a_valid_token_is_accepted(
        at in any::<prop::sample::Index>(),
        with in prop::sample::select(ALPHABET),
    ) {
        let f = fixture_once();
        let mut bytes = f.valid.clone().into_bytes();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != with);
        bytes[i] = with;
        let changed = String::from_utf8(bytes).expect("ascii");
        let same = decoded(&changed).is_some_and(|d| Some(d) == decoded(&f.valid));
        let verdict = f.rt.block_on(f.auth.verify(&changed));
        prop_assert_eq!(verdict.is_ok(), same, "changed at {}: {}", i, changed);
    }
}

/// One fixture for all cases of a test binary: making keys and a verifier per case would dominate the run.
fn fixture_once() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(fixture)
}

/// A config touching every section a mutation can break: listener, upstream, both token kinds, a static credential,
/// an issuer, routes with every policy, flows.
const BASE_CONFIG: &str = r#"[server]
shutdown_grace = "5s"
[[listeners]]
address = "127.0.0.1:0"
tls = false
header_read_timeout = "10s"
max_connections = 100
body_idle_timeout = "60s"
[admin]
address = "127.0.0.1:0"
[upstreams.u]
url = "http://127.0.0.1:9/base"
response_timeout = "30s"
[credentials.s]
kind = "static"
allowed_hosts = ["127.0.0.1"]
headers = { "X-Api-Key" = "literal" }
[credentials.o]
kind = "oauth2_client_credentials"
allowed_hosts = ["127.0.0.1"]
token_url = "http://127.0.0.1:9/token"
client_id = "id"
client_secret = "secret"
min_token_age = "5s"
[credentials.l]
kind = "login"
allowed_hosts = ["127.0.0.1"]
url = "http://127.0.0.1:9/login"
body = { email = "e", password = "p" }
ttl = "24h"
headers = { "X-Token" = "{token}" }
[[issuers]]
name = "idp"
issuer = "https://idp.test/"
audiences = ["credgate"]
jwks_url = "http://127.0.0.1:9/jwks"
max_staleness = "1h"
[[routes]]
path_prefix = "/a"
upstream = "u"
credential = "o"
scopes = ["read"]
forward_claims = { sub = "X-Sub" }
[[routes]]
path_prefix = "/b"
upstream = "u"
credential = "s"
auth = "none"
max_body_bytes = 1024
"#;

/// Values that break a key in every way a typed config can be broken.
const BAD_VALUES: &[&str] = &[
    "",
    "0",
    "-1",
    "\"\"",
    "[]",
    "{}",
    "\"x\"",
    "true",
    "1e999",
    "\"0s\"",
    "\"-5s\"",
    "\"${NOPE_UNSET_VAR}\"",
    "\"${file:/nonexistent/x}\"",
    "\"http://\"",
    "\"ftp://x\"",
    "\"[::1]:99999\"",
    "99999999999999999999",
    "\"\\u0000\"",
    "[\"\"]",
    "{ \"\" = \"\" }",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// A config with lines dropped, doubled or given a bad value loads or fails with an error that names where: it
    /// never panics.
    #[test]
    fn a_broken_config_is_an_error_naming_a_place_never_a_panic(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, prop::sample::select(BAD_VALUES)), 1..4),
    ) {
        let mut lines: Vec<String> = BASE_CONFIG.lines().map(str::to_owned).collect();
        for (at, op, value) in edits {
            let i = at.index(lines.len());
            match op {
                0 => {
                    lines.remove(i);
                }
                1 => {
                    let l = lines[i].clone();
                    lines.insert(i, l);
                }
                _ => {
                    if let Some((key, _)) = lines[i].split_once(" = ") {
                        lines[i] = format!("{key} = {value}");
                    }
                }
            }
            if lines.is_empty() {
                break;
            }
        }
        let text = lines.join("\n");
        if let Err(e) = Config::from_toml(&text, "<prop>") {
            let msg = e.to_string();
            prop_assert!(msg.contains("<prop>"), "the error names no file: {}", msg);
            prop_assert!(msg.len() > "<prop>".len() + 2, "an empty error: {}", msg);
        }
    }
}

#[test]
fn the_base_config_of_the_mutations_loads() {
    Config::from_toml(BASE_CONFIG, "<prop>").expect("the unbroken config loads");
}

/// Header names a caller might send to steer the upstream: the credential's, hop-by-hop ones, forwarding ones, and
/// harmless ones that must pass.
const HEADER_NAMES: &[&str] = &[
    "authorization",
    "x-api-key",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
    "x-custom",
    "accept",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Whatever headers a caller sends, what the gateway owns reaches the upstream as the gateway set it: the
    /// credential, Host, the forwarding headers; hop-by-hop headers and those named in `Connection` do not pass.
    #[test]
    fn no_caller_value_of_a_gateway_owned_header_reaches_the_upstream(
        sent in prop::collection::vec((prop::sample::select(HEADER_NAMES), 0u32..1000), 0..16),
        connection_names in prop::collection::vec(prop::sample::select(HEADER_NAMES), 0..3),
    ) {
        use futures_util::FutureExt as _;
        let gw = gateway_once();
        let mut req = http::Request::get("/api/x");
        for (name, n) in &sent {
            req = req.header(*name, format!("caller-{n}"));
        }
        if !connection_names.is_empty() {
            req = req.header("connection", connection_names.join(", "));
        }
        let req = req
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        let route = gw.routes.find(None, req.uri().path()).expect("route");
        let credgate::testing::Target::Upstream(up) = &route.target else {
            panic!("an upstream route");
        };
        let cred = route.credential.as_ref().expect("credential");
        let attachment = cred.attach().now_or_never().expect("ready").expect("attach");
        let id = http::HeaderValue::from_static("gateway-request-id");
        let trace = http::HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let out = credgate::testing::Outgoing {
            strip_len: route.strip_len(),
            attachment: Some(&attachment),
            credential_headers: cred.header_names(),
            caller_headers: &[],
            max_body_bytes: route.max_body_bytes,
            request_id: &id,
            traceparent: &trace,
        };
        let conn = credgate::conn::ConnInfo::new(
            std::net::SocketAddr::from(([192, 0, 2, 7], 40000)),
            false,
            credgate::conn::BodyTimeouts { idle: Duration::from_secs(60), total: Duration::from_secs(300) },
        );
        let Ok(upstream_req) = credgate::testing::prepare(req, up, &out, &conn) else {
            return Ok(());
        };
        let h = upstream_req.headers();
        let all = |name: &str| h.get_all(name).iter().map(|v| v.to_str().unwrap_or("?").to_owned()).collect::<Vec<_>>();
        prop_assert_eq!(all("x-api-key"), vec!["gateway-secret".to_owned()]);
        prop_assert_eq!(all("host"), vec!["127.0.0.1:9".to_owned()]);
        prop_assert_eq!(all("x-request-id"), vec!["gateway-request-id".to_owned()]);
        for gone in [
            "connection", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection",
            "forwarded", "x-real-ip", "x-forwarded-host", "x-forwarded-port", "x-forwarded-prefix",
        ] {
            prop_assert!(h.get(gone).is_none(), "{} passed: {:?}", gone, all(gone));
        }
        let xff = all("x-forwarded-for");
        prop_assert_eq!(xff.len(), 1);
        prop_assert!(xff[0].ends_with("192.0.2.7"), "{:?}", xff);
        for (name, n) in &sent {
            if *name == "x-custom" && !connection_names.contains(name) {
                prop_assert!(all("x-custom").contains(&format!("caller-{n}")), "an end-to-end header was dropped");
            }
        }
    }
}

/// One gateway with a static credential on `/api`, for every case.
fn gateway_once() -> &'static std::sync::Arc<credgate::gateway::Gateway> {
    static G: std::sync::OnceLock<std::sync::Arc<credgate::gateway::Gateway>> =
        std::sync::OnceLock::new();
    G.get_or_init(|| {
        let cfg = Config::from_toml(
            r#"
[upstreams.u]
url = "http://127.0.0.1:9"
[credentials.k]
kind = "static"
allowed_hosts = ["127.0.0.1"]
headers = { "X-Api-Key" = "gateway-secret" }
[[routes]]
path_prefix = "/api"
upstream = "u"
credential = "k"
auth = "none"
"#,
            "<props>",
        )
        .expect("config");
        credgate::gateway::Gateway::build(&cfg).expect("gateway")
    })
}
