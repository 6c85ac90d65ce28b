//! Property tests of what a caller sends: the bearer token. Random tokens are refused without a panic, and no
//! single-character change to a valid token is accepted unless it decodes to the very same token (base64url's
//! unused trailing bits). Bounded case counts keep them in the normal `cargo test`.
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
