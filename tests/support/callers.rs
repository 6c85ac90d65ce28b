//! Callers with their own verified identity: an issuer with one static RSA key, and tokens for any subject and
//! scopes, for the flows' per-caller state.

use serde_json::json;

use super::fake_idp::{self, SigningKey};

/// The issuer callers' tokens come from.
pub const ISS: &str = "https://idp.callers.test/";
/// The audience the gateway accepts.
pub const AUD: &str = "credgate";

/// An issuer key, written where the gateway's config can read it.
pub struct Callers {
    key: SigningKey,
    pem: super::Scratch,
}

impl Callers {
    /// A fresh key, its public half written to a temporary file.
    pub fn new() -> Self {
        let key = SigningKey::rsa("callers-1");
        let pem = super::temp_dir("callers").join("issuer.pem");
        std::fs::write(&pem, key.public_pem()).expect("write issuer key");
        Self { key, pem }
    }

    /// The `[[issuers]]` section that trusts this key.
    pub fn issuer_toml(&self) -> String {
        format!(
            r#"
[[issuers]]
name = "callers"
issuer = "{ISS}"
audiences = ["{AUD}"]
algorithms = ["RS256"]
keys = [{{ file = "{}", kid = "callers-1" }}]
"#,
            self.pem.display()
        )
    }

    /// A bearer token for `sub` with `scope` (space-separated).
    pub fn token(&self, sub: &str, scope: &str) -> String {
        let mut claims = fake_idp::claims(ISS, AUD);
        claims["sub"] = json!(sub);
        claims["scope"] = json!(scope);
        fake_idp::mint(&self.key, &claims)
    }

    /// `Authorization: Bearer` for `sub` with `scope`.
    pub fn bearer(&self, sub: &str, scope: &str) -> String {
        format!("Bearer {}", self.token(sub, scope))
    }
}
