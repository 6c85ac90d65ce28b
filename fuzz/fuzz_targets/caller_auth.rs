//! Bearer extraction, JWS parse, signature and claims checks of caller auth, against the fixed key set. The input is
//! a request head cut down to what caller auth reads: the request target on the first line, then one
//! `Authorization` value per line. Properties: a token is accepted only if jsonwebtoken (an independent verifier)
//! accepts it with the same keys, issuer and audience, it carries the route's scope and claim, and the query has no
//! `access_token` parameter (its name decoded as servers decode it); the verified-token cache gives the same verdict
//! as the first check.

use std::sync::Arc;

use credgate::gateway::{Config, Gateway};
use credgate_fuzz::{AUD, AZP, ISS, SCOPE, jwks_path, lines, runtime};
use http::{HeaderMap, HeaderValue, Uri};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;

struct Fixture {
    gw: Arc<Gateway>,
    jwks: JwkSet,
    rt: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    let rt = runtime();
    let path = jwks_path();
    let cfg = Config::from_toml(
        &format!(
            r#"
[upstreams.u]
url = "http://127.0.0.1:9"
[[issuers]]
name = "idp"
issuer = "{ISS}"
audiences = ["{AUD}"]
keys = [{{ file = "{}" }}]
[[routes]]
path_prefix = "/"
upstream = "u"
scopes = ["{SCOPE}"]
require_claims = {{ {} = ["{}"] }}
forward_claims = {{ sub = "X-Sub" }}
"#,
            path.display(),
            AZP.0,
            AZP.1
        ),
        "<fuzz>",
    )
    .unwrap_or_else(|e| panic!("fixture config: {e}"));
    let gw = rt
        .block_on(async { Gateway::build(&cfg) })
        .unwrap_or_else(|e| panic!("gateway: {e}"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let jwks = serde_json::from_str(&text).unwrap_or_else(|e| panic!("jwks: {e}"));
    Fixture { gw, jwks, rt }
}

/// jsonwebtoken's verdict on `token`: signature by the fixed key its `kid` names, `iss`, `aud`, `exp`, `nbf`.
fn independently_valid(jwks: &JwkSet, token: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let jwk = header
        .kid
        .as_deref()
        .and_then(|k| jwks.find(k))
        .ok_or("no key with the token's kid")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[ISS]);
    v.set_audience(&[AUD]);
    v.validate_nbf = true;
    let data = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| e.to_string())?;
    Ok(data.claims)
}

fn has_scope(claims: &Value) -> bool {
    let words = claims
        .get("scope")
        .and_then(Value::as_str)
        .into_iter()
        .flat_map(|s| s.split(' '));
    let scp = claims
        .get("scp")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    words.chain(scp).any(|s| s == SCOPE)
}

fn main() {
    // A panic is a finding that ends the run, so the verifier's state after one is never used.
    let f = std::panic::AssertUnwindSafe(fixture());
    afl::fuzz!(|data: &[u8]| {
        let mut it = lines(data, 5);
        let Some(Ok(uri)) = it.next().map(Uri::try_from) else {
            return;
        };
        let mut headers = HeaderMap::new();
        let mut sent = Vec::new();
        for line in it {
            if let Ok(v) = HeaderValue::from_bytes(line) {
                sent.push(v.clone());
                headers.append(http::header::AUTHORIZATION, v);
            }
        }
        let route =
            f.gw.routes
                .find(None, "/")
                .unwrap_or_else(|| panic!("the route"));
        let auth = &f.gw.caller_auth;
        let first =
            f.rt.block_on(auth.authenticate(&route.auth, &headers, &uri));
        let again =
            f.rt.block_on(auth.authenticate(&route.auth, &headers, &uri));
        // RFC 6750: `Bearer 1*SP b64token`; credgate also trims trailing whitespace.
        let token = sent
            .first()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.get(7..))
            .map_or("", str::trim_ascii);
        match (&first, &again) {
            (Ok(_), Ok(_)) => {
                assert_eq!(
                    sent.len(),
                    1,
                    "accepted with {} Authorization headers",
                    sent.len()
                );
                let scheme = sent[0].as_bytes().get(..7).unwrap_or(b"");
                assert!(
                    scheme.eq_ignore_ascii_case(b"bearer "),
                    "accepted without the Bearer scheme"
                );
                let query = uri.query().unwrap_or("").as_bytes();
                assert!(
                    !url::form_urlencoded::parse(query).any(|(k, _)| k == "access_token"),
                    "accepted with a token in the query"
                );
                let claims = independently_valid(&f.jwks, token).unwrap_or_else(|e| {
                    panic!("accepted what jsonwebtoken refuses ({e}): {token}")
                });
                assert!(
                    has_scope(&claims),
                    "accepted without scope {SCOPE}: {claims}"
                );
                assert_eq!(
                    claims.get(AZP.0).and_then(Value::as_str),
                    Some(AZP.1),
                    "accepted a wrong {}",
                    AZP.0
                );
            }
            (Err(a), Err(b)) => assert_eq!(a.reason(), b.reason(), "the cache changed the verdict"),
            _ => panic!("the cache changed the verdict: {first:?} then {again:?}"),
        }
        auth.forget(token);
    });
}
