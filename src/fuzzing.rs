//! The crate-internal parsers the fuzz targets in `fuzz/` drive, each as the request path or a fetch calls it. Not a
//! stable API; [`crate::testing`] already exposes what the other targets need (caller auth, the proxy's prepare step).

use std::borrow::Cow;
use std::time::{Duration, Instant};

pub use crate::path::PathError;

use crate::caller_auth::keys::{self, Alg, KeySet};
use crate::credentials::config::CredentialConfig;
use crate::credentials::login::LoginSource;
use crate::credentials::oauth2::{OAuth2Source, VendorTokenResponse};
use crate::credentials::token_cache::FetchedToken;
use crate::gateway::Config;

/// The canonical form of a request path, as the pipeline makes it before routing.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, PathError> {
    crate::path::canonical(path)
}

/// A fetched JWKS document read and merged as a refresh does: each key in force, as its type and the algorithms it
/// verifies; `None` when the document is not a JWKS.
pub fn jwks(doc: &[u8]) -> Option<Vec<(&'static str, Vec<&'static str>)>> {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(doc).ok()?;
    let (fetched, _skipped) = keys::from_jwks(&set, &Alg::ALL);
    let (merged, _changed) = KeySet::default().merge(&[], fetched);
    let keys = KeySet::new(merged, Some(Instant::now()));
    Some(
        keys.iter()
            .map(|k| {
                let algs = Alg::ALL.iter().filter(|a| k.verifier(**a).is_some());
                (k.key_type(), algs.map(|a| a.name()).collect())
            })
            .collect(),
    )
}

/// The token sources of a config's `oauth2_client_credentials` and `login` credentials, to read vendor answers with.
#[derive(Debug)]
pub struct TokenAnswers {
    oauth2: Vec<OAuth2Source>,
    login: Vec<LoginSource>,
}

/// A token read from an answer, and how long it is believed.
pub type Read = Result<(String, Duration), String>;

impl TokenAnswers {
    /// The sources of `cfg`'s token credentials (they fetch nothing: only their answer reading is used).
    pub fn new(cfg: Config) -> Self {
        let http = crate::http_client::build(&[], Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("the fuzz targets' HTTP client: {e}"));
        let (mut oauth2, mut login) = (Vec::new(), Vec::new());
        for (name, c) in cfg.credentials {
            match c {
                CredentialConfig::OAuth2(o) => {
                    oauth2.push(OAuth2Source::new(&name, o, http.clone()))
                }
                CredentialConfig::Login(l) => login.push(LoginSource::new(l, http.clone())),
                CredentialConfig::Static(_) => {}
            }
        }
        Self { oauth2, login }
    }

    /// A token endpoint's answer body, read by each OAuth2 source as the oauth2 crate hands it over.
    pub fn oauth2(&self, body: &[u8]) -> Vec<Read> {
        self.oauth2
            .iter()
            .map(
                |s| match serde_json::from_slice::<VendorTokenResponse>(body) {
                    Ok(rsp) => read(s.fetched(rsp, 200, None)),
                    Err(e) => Err(e.to_string()),
                },
            )
            .collect()
    }

    /// A login answer body, read by each login source.
    pub fn login(&self, body: &[u8]) -> Vec<Read> {
        self.login
            .iter()
            .map(|s| read(s.answer(200, body)))
            .collect()
    }
}

fn read(r: Result<FetchedToken, crate::credentials::token_cache::TokenError>) -> Read {
    use secrecy::ExposeSecret as _;
    let t = r.map_err(|e| e.to_string())?;
    let left = t.expires_at.saturating_duration_since(Instant::now());
    Ok((t.token.expose_secret().to_owned(), left))
}

/// An Incode webhook body as the webhook endpoint reads it: interview id, status, client, flow and external ids.
pub fn incode_event(body: &[u8]) -> Result<[Option<String>; 5], String> {
    let e = crate::flows::incode::parse_event(body).map_err(|e| e.to_string())?;
    Ok([
        Some(e.interview_id),
        Some(e.onboarding_status),
        e.client_id,
        e.flow_id,
        e.external_id,
    ])
}

/// A TeleSign phone number from a caller's path or query, as sent to TeleSign.
pub fn telesign_phone(raw: &str) -> Option<String> {
    crate::flows::telesign::e164(raw).ok()
}

/// Whether a caller's TeleSign `xid` is accepted.
pub fn telesign_xid(raw: &str) -> bool {
    crate::flows::telesign::check_xid(raw).is_ok()
}

/// Whether a caller's Citadel public token (or any vendor id) is accepted as plain.
pub fn plain_id(raw: &str, max: usize) -> bool {
    crate::flows::vendor::is_plain_id(raw, max, &[])
}

/// The vendor error code a problem shows for a vendor's error body (Incode's `status`, Citadel's `error.code`).
pub fn vendor_code(body: &[u8]) -> Option<String> {
    crate::flows::vendor::vendor_code(body)
}
