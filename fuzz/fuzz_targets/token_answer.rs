//! Token-endpoint and login answers, read by sources configured every way a vendor needs: `expires_in` as seconds,
//! as a Unix time or either (`auto`), and login tokens at several JSON pointers, with and without a `ttl`. The first
//! byte picks OAuth2 (even) or login (odd); the rest is the answer body. Properties: no panic; a token read is the
//! non-empty string the answer holds there, believed for at most a year.

use std::time::Duration;

use credgate::fuzzing::TokenAnswers;
use credgate::gateway::Config;
use serde_json::Value;

const CONFIG: &str = r#"
[credentials.seconds]
kind = "oauth2_client_credentials"
allowed_hosts = ["127.0.0.1"]
token_url = "http://127.0.0.1:9/token"
client_id = "id"
client_secret = "secret"
[credentials.unix]
kind = "oauth2_client_credentials"
allowed_hosts = ["127.0.0.1"]
token_url = "http://127.0.0.1:9/token"
client_id = "id"
client_secret = "secret"
expires_in = "unix_time"
[credentials.auto]
kind = "oauth2_client_credentials"
allowed_hosts = ["127.0.0.1"]
token_url = "http://127.0.0.1:9/token"
client_id = "id"
client_secret = "secret"
expires_in = "auto"
default_ttl = "10m"
[credentials.login_top]
kind = "login"
allowed_hosts = ["127.0.0.1"]
url = "http://127.0.0.1:9/login"
ttl = "24h"
headers = { "X-Token" = "{token}" }
[credentials.login_nested]
kind = "login"
allowed_hosts = ["127.0.0.1"]
url = "http://127.0.0.1:9/login"
token_pointer = "/data/0/access~1token"
headers = { "X-Token" = "{token}" }
"#;

const POINTERS: &[&str] = &["/token", "/data/0/access~1token"];
const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

fn main() {
    let cfg = Config::from_toml(CONFIG, "<fuzz>").unwrap_or_else(|e| panic!("fixture config: {e}"));
    // Read-only after setup: a panic in one input cannot leave it half-changed.
    let answers = std::panic::AssertUnwindSafe(TokenAnswers::new(cfg));
    afl::fuzz!(|data: &[u8]| {
        let Some((&pick, body)) = data.split_first() else {
            return;
        };
        let doc: Option<Value> = serde_json::from_slice(body).ok();
        let (reads, wanted): (_, Vec<&str>) = if pick % 2 == 0 {
            let t = doc
                .as_ref()
                .and_then(|d| d.get("access_token"))
                .and_then(Value::as_str);
            (answers.oauth2(body), t.into_iter().collect())
        } else {
            let at = |p: &str| {
                doc.as_ref()
                    .and_then(|d| d.pointer(p))
                    .and_then(Value::as_str)
            };
            (
                answers.login(body),
                POINTERS.iter().filter_map(|p| at(p)).collect(),
            )
        };
        for r in reads {
            let Ok((token, left)) = r else { continue };
            assert!(!token.is_empty(), "an empty token was read");
            assert!(
                wanted.contains(&token.as_str()),
                "read {token:?}, the answer holds {wanted:?}"
            );
            assert!(left <= YEAR, "believed for {left:?}");
        }
    });
}
