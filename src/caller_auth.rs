//! Caller authentication: who is calling, proven by a JWT checked locally against the issuer's own keys, then the
//! route's rules (accepted issuers, scopes, claim requirements). Routes with `auth = "none"` pass without reading a
//! token. The token's `iss` picks the issuer first and its `kid` is looked up only among that issuer's keys; the key
//! decides the algorithm family. Never logs, stores in plain or echoes a token.
//!
//! Request path: bearer extraction → verified-token cache ([`verified`]) → on a miss, parse ([`token`]), issuer,
//! cheap claim checks, key lookup ([`keys`], with an unknown-kid refetch from [`jwks`]), one signature verification
//! with a pre-parsed aws-lc-rs key → cache → time and route checks. No lock is taken on this path.

pub(crate) mod config;
pub(crate) mod jwks;
pub(crate) mod keys;
pub(crate) mod token;
pub(crate) mod verified;

use std::fmt::{self, Write as _};
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::http_client::HttpClient;
use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::unix_time::now_secs;
use config::IssuerConfig;
pub(crate) use config::RouteAuthConfig;
use jwks::{Issuer, Refetch};
use keys::{Alg, Lookup};
use verified::{Verified, VerifiedCache};

/// A route's caller policy, compiled from config.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    jwt: Option<JwtPolicy>,
}

#[derive(Debug, Clone)]
struct JwtPolicy {
    issuers: Box<[Box<str>]>,
    scopes: Box<[Box<str>]>,
    require_claims: Box<[ClaimRule]>,
    forward_claims: Box<[(Box<str>, HeaderName)]>,
}

/// A claim and the values it may take.
type ClaimRule = (Box<str>, Box<[String]>);

impl RoutePolicy {
    /// Compile a route's policy.
    pub fn new(cfg: RouteAuthConfig) -> Self {
        let jwt = match cfg {
            RouteAuthConfig::None => None,
            RouteAuthConfig::Jwt {
                issuers,
                scopes,
                require_claims,
                forward_claims,
            } => Some(JwtPolicy {
                issuers: issuers.into_iter().map(Box::from).collect(),
                scopes: scopes.into_iter().map(Box::from).collect(),
                require_claims: require_claims
                    .into_iter()
                    .map(|(k, v)| (Box::from(k), v.into_boxed_slice()))
                    .collect(),
                forward_claims: forward_claims
                    .into_iter()
                    .map(|(k, h)| (Box::from(k), h))
                    .collect(),
            }),
        };
        Self { jwt }
    }
}

/// The authenticated caller.
#[derive(Debug, Default, Clone)]
pub struct Caller {
    /// Headers the gateway sets from verified claims (a claim the token lacks is sent empty, so a caller-sent value
    /// never passes).
    pub forward_headers: Vec<(HeaderName, HeaderValue)>,
    /// The verified token, on routes that check one.
    verified: Option<Arc<Verified>>,
}

impl Caller {
    /// Who the verified token speaks for (`iss`, newline, `sub`), for state kept per caller; `None` on routes
    /// without a JWT check or for a token without `sub`.
    pub fn subject(&self) -> Option<&str> {
        self.verified.as_deref()?.subject.as_deref()
    }

    /// Whether the verified token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.verified
            .as_deref()
            .is_some_and(|v| v.scopes.iter().any(|s| &**s == scope))
    }
}

/// Why a caller was refused. Carries no token content.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No bearer token.
    #[error("missing bearer token")]
    Missing,
    /// More than one `Authorization` header.
    #[error("more than one Authorization header")]
    MultipleAuthorization,
    /// `access_token` in the query string.
    #[error("token in query string")]
    TokenInQuery,
    /// The token is not a well-formed JWS.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The token or its header is over the size limit.
    #[error("token too large")]
    TooLarge,
    /// `alg` is `none`, symmetric, unknown or not on the issuer's list (`None`: not a name credgate knows).
    #[error("algorithm not allowed")]
    AlgNotAllowed {
        /// The algorithm, when it is one credgate knows.
        alg: Option<Alg>,
    },
    /// The header has `crit`.
    #[error("unsupported critical header")]
    UnsupportedCrit,
    /// `iss` matches no configured issuer.
    #[error("unknown issuer")]
    UnknownIssuer,
    /// The issuer is configured but not accepted on this route.
    #[error("issuer not accepted on this route")]
    IssuerNotAccepted,
    /// `aud` has none of the issuer's audiences.
    #[error("wrong audience")]
    WrongAudience,
    /// No `exp`.
    #[error("token has no exp")]
    MissingExp,
    /// `exp` passed (beyond leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` in the future (beyond leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` in the future (beyond leeway).
    #[error("token issued in the future")]
    IssuedInFuture,
    /// No key of the issuer has this `kid`.
    #[error("unknown signing key")]
    UnknownKey,
    /// The key's type does not allow the header's `alg`.
    #[error("algorithm does not match the key")]
    AlgKeyMismatch,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The issuer has no keys (JWKS never fetched, or stale beyond `max_staleness`).
    #[error("keys of issuer {issuer} unavailable")]
    KeysUnavailable {
        /// Issuer name.
        issuer: String,
    },
    /// A required scope is missing.
    #[error("missing scope {scope}")]
    InsufficientScope {
        /// The first missing scope.
        scope: String,
    },
    /// A claim requirement is not met.
    #[error("claim {claim} not allowed")]
    ClaimNotAllowed {
        /// The claim.
        claim: String,
    },
}

impl AuthError {
    /// Why, as one of a closed set (the rejection counter's `reason` label).
    pub fn kind(&self) -> Reason {
        match self {
            AuthError::Missing => Reason::MissingToken,
            AuthError::MultipleAuthorization => Reason::MultipleAuthorization,
            AuthError::TokenInQuery => Reason::TokenInQuery,
            AuthError::Malformed(_) => Reason::MalformedToken,
            AuthError::TooLarge => Reason::TokenTooLarge,
            AuthError::AlgNotAllowed { .. } => Reason::AlgNotAllowed,
            AuthError::UnsupportedCrit => Reason::UnsupportedCrit,
            AuthError::UnknownIssuer => Reason::UnknownIssuer,
            AuthError::IssuerNotAccepted => Reason::IssuerNotAccepted,
            AuthError::WrongAudience => Reason::WrongAudience,
            AuthError::MissingExp => Reason::MissingExp,
            AuthError::Expired => Reason::Expired,
            AuthError::NotYetValid => Reason::NotYetValid,
            AuthError::IssuedInFuture => Reason::IssuedInFuture,
            AuthError::UnknownKey => Reason::UnknownKey,
            AuthError::AlgKeyMismatch => Reason::AlgKeyMismatch,
            AuthError::BadSignature => Reason::BadSignature,
            AuthError::KeysUnavailable { .. } => Reason::IssuerKeysUnavailable,
            AuthError::InsufficientScope { .. } => Reason::InsufficientScope,
            AuthError::ClaimNotAllowed { .. } => Reason::ClaimNotAllowed,
        }
    }

    /// Stable reason code, used in the problem body and the rejection counter.
    pub fn reason(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// A rejection reason: one per [`AuthError`] kind, so the `reason` label set is fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `missing_token`.
    MissingToken,
    /// `multiple_authorization`.
    MultipleAuthorization,
    /// `token_in_query`.
    TokenInQuery,
    /// `malformed_token`.
    MalformedToken,
    /// `token_too_large`.
    TokenTooLarge,
    /// `alg_not_allowed`.
    AlgNotAllowed,
    /// `unsupported_crit`.
    UnsupportedCrit,
    /// `unknown_issuer`.
    UnknownIssuer,
    /// `issuer_not_accepted`.
    IssuerNotAccepted,
    /// `wrong_audience`.
    WrongAudience,
    /// `missing_exp`.
    MissingExp,
    /// `expired`.
    Expired,
    /// `not_yet_valid`.
    NotYetValid,
    /// `issued_in_future`.
    IssuedInFuture,
    /// `unknown_key`.
    UnknownKey,
    /// `alg_key_mismatch`.
    AlgKeyMismatch,
    /// `bad_signature`.
    BadSignature,
    /// `issuer_keys_unavailable`.
    IssuerKeysUnavailable,
    /// `insufficient_scope`.
    InsufficientScope,
    /// `claim_not_allowed`.
    ClaimNotAllowed,
}

impl Reason {
    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::MultipleAuthorization => "multiple_authorization",
            Reason::TokenInQuery => "token_in_query",
            Reason::MalformedToken => "malformed_token",
            Reason::TokenTooLarge => "token_too_large",
            Reason::AlgNotAllowed => "alg_not_allowed",
            Reason::UnsupportedCrit => "unsupported_crit",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::IssuerNotAccepted => "issuer_not_accepted",
            Reason::WrongAudience => "wrong_audience",
            Reason::MissingExp => "missing_exp",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::UnknownKey => "unknown_key",
            Reason::AlgKeyMismatch => "alg_key_mismatch",
            Reason::BadSignature => "bad_signature",
            Reason::IssuerKeysUnavailable => "issuer_keys_unavailable",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::ClaimNotAllowed => "claim_not_allowed",
        }
    }
}

impl EncodeLabelValue for Reason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RejectionLabels {
    reason: Reason,
}

const REALM: &str = "credgate";

fn invalid_token(code: &'static str, title: &'static str, detail: String) -> Problem {
    Problem {
        www_authenticate: Some(format!(
            "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{detail}\""
        )),
        ..Problem::new(StatusCode::UNAUTHORIZED, code, title).detail(detail)
    }
}

fn invalid_request(code: &'static str, detail: &'static str) -> Problem {
    Problem {
        www_authenticate: Some(format!(
            "Bearer realm=\"{REALM}\", error=\"invalid_request\", error_description=\"{detail}\""
        )),
        ..Problem::new(StatusCode::BAD_REQUEST, code, "Invalid request").detail(detail)
    }
}

fn forbidden(code: &'static str, www: String, detail: String) -> Problem {
    Problem {
        www_authenticate: Some(www),
        ..Problem::new(StatusCode::FORBIDDEN, code, "Insufficient scope").detail(detail)
    }
}

/// Map an auth error to the caller's problem: which check failed, never the token.
pub(crate) fn problem(e: &AuthError) -> Problem {
    let code = e.reason();
    let bad = |detail: &str| invalid_token(code, "Invalid token", detail.to_owned());
    match e {
        AuthError::Missing => Problem {
            www_authenticate: Some(format!("Bearer realm=\"{REALM}\"")),
            ..Problem::new(StatusCode::UNAUTHORIZED, code, "Bearer token required")
        },
        AuthError::MultipleAuthorization => {
            invalid_request(code, "send exactly one Authorization header")
        }
        AuthError::TokenInQuery => invalid_request(
            code,
            "tokens are not accepted in the query string; use the Authorization header",
        ),
        AuthError::Malformed(what) => bad(&format!("malformed token: {what}")),
        AuthError::TooLarge => bad("token too large"),
        AuthError::AlgNotAllowed { alg } => match alg {
            Some(a) => bad(&format!("algorithm {} is not accepted", a.name())),
            None => bad("algorithm is not accepted"),
        },
        AuthError::UnsupportedCrit => bad("unsupported critical header (crit)"),
        AuthError::UnknownIssuer => bad("unknown issuer (iss)"),
        AuthError::IssuerNotAccepted => bad("issuer not accepted on this route"),
        AuthError::WrongAudience => bad("wrong audience (aud)"),
        AuthError::MissingExp => bad("token has no expiry (exp)"),
        AuthError::Expired => bad("token expired"),
        AuthError::NotYetValid => bad("token not yet valid (nbf)"),
        AuthError::IssuedInFuture => bad("token issued in the future (iat)"),
        AuthError::UnknownKey => bad("unknown signing key (kid)"),
        AuthError::AlgKeyMismatch => bad("algorithm does not match the signing key"),
        AuthError::BadSignature => bad("bad signature"),
        AuthError::KeysUnavailable { issuer } => Problem {
            retry_after: Some(5),
            ..Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                code,
                "Issuer keys unavailable",
            )
            .detail(format!("keys of issuer {issuer} are not loaded"))
        },
        AuthError::InsufficientScope { scope } => forbidden(
            code,
            format!("Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{scope}\""),
            format!("missing scope {scope}"),
        ),
        AuthError::ClaimNotAllowed { claim } => forbidden(
            code,
            format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"claim {claim} not allowed\""
            ),
            format!("claim {claim} not allowed"),
        ),
    }
}

/// Each claim once, in the order first named.
fn forwarded_set<'c>(claims: impl IntoIterator<Item = &'c str>) -> Box<[Box<str>]> {
    let mut out: Vec<Box<str>> = Vec::new();
    for claim in claims {
        if !out.iter().any(|f| **f == *claim) {
            out.push(claim.into());
        }
    }
    out.into_boxed_slice()
}

/// An issuer's JWKS could not be fetched at startup with `startup = "fail_fast"`.
#[derive(Debug, thiserror::Error)]
#[error("issuer {issuer}: JWKS fetch at startup failed: {reason}")]
pub struct StartError {
    /// Issuer name.
    pub issuer: String,
    /// Why (transport or format; no response content).
    pub reason: String,
}

/// Validates caller tokens against the configured issuers.
#[derive(Debug)]
pub struct CallerAuth {
    issuers: Vec<Arc<Issuer>>,
    /// Shared with the `CallerAuth` a reload replaces when the forwarded claims are the same: an entry is honoured
    /// only while its exact key is in its issuer's key set, so entries of a changed issuer stop counting at once.
    cache: Arc<VerifiedCache>,
    /// `credgate_auth_rejections_total` by reason: a `Copy` key, so counting allocates nothing.
    rejections: Family<RejectionLabels, Counter>,
    /// Claims some route forwards: the only ones prepared as header values when a token is verified.
    forwarded: Box<[Box<str>]>,
}

impl CallerAuth {
    /// Build from the configured issuers and the claims some route forwards (the only ones prepared as header values
    /// when a token is verified); fetches nothing until [`CallerAuth::start`].
    pub fn new<'c>(
        issuers: &[IssuerConfig],
        forwarded_claims: impl IntoIterator<Item = &'c str>,
        http: &HttpClient,
        metrics: Arc<Metrics>,
    ) -> Self {
        let rejections = Family::default();
        metrics.register(
            "credgate_auth_rejections",
            "Requests refused by caller authentication, by reason.",
            rejections.clone(),
        );
        Self {
            issuers: issuers
                .iter()
                .map(|c| Arc::new(Issuer::new(c.clone(), http, &metrics)))
                .collect(),
            cache: Arc::default(),
            rejections,
            forwarded: forwarded_set(forwarded_claims),
        }
    }

    /// The caller authentication a reload puts in place of this one: an issuer for which `unchanged` says so is kept
    /// with its keys and refresh loop; the others start fresh (and a removed one's loop ends with it). The
    /// verified-token cache is kept when the forwarded claims are the same.
    pub fn rebuild<'c>(
        &self,
        issuers: &[IssuerConfig],
        forwarded_claims: impl IntoIterator<Item = &'c str>,
        http: &HttpClient,
        metrics: &Arc<Metrics>,
        unchanged: impl Fn(&str) -> bool,
    ) -> Self {
        let forwarded = forwarded_set(forwarded_claims);
        let kept = |c: &IssuerConfig| {
            self.issuers
                .iter()
                .find(|i| i.cfg.name == c.name && unchanged(&c.name))
                .cloned()
        };
        Self {
            issuers: issuers
                .iter()
                .map(|c| kept(c).unwrap_or_else(|| Arc::new(Issuer::new(c.clone(), http, metrics))))
                .collect(),
            cache: if forwarded == self.forwarded {
                self.cache.clone()
            } else {
                Arc::default()
            },
            rejections: self.rejections.clone(),
            forwarded,
        }
    }

    /// Start key fetching: `fail_fast` issuers are fetched before this returns; the others start not ready and
    /// retry with backoff in the background. Every JWKS issuer then refreshes in the background.
    pub async fn start(&self) -> Result<(), StartError> {
        for iss in &self.issuers {
            let Some(j) = &iss.cfg.jwks else { continue };
            if !iss.claim_start() {
                continue;
            }
            if j.fail_fast {
                iss.initial_fetch().await.map_err(|reason| StartError {
                    issuer: iss.cfg.name.clone(),
                    reason,
                })?;
                iss.spawn_refresh(true);
            } else {
                iss.spawn_refresh(false);
            }
        }
        Ok(())
    }

    /// Each issuer as the admin API shows it.
    pub fn issuer_status(&self) -> Vec<serde_json::Value> {
        self.issuers.iter().map(|i| i.status()).collect()
    }

    /// Refetch issuer `name`'s JWKS now: `None` for an unknown issuer, `Some(false)` for one without a JWKS.
    pub fn refresh_issuer(&self, name: &str) -> Option<bool> {
        self.issuers
            .iter()
            .find(|i| i.cfg.name == name)
            .map(|i| i.refresh_now())
    }

    /// Readiness rows, one per issuer: (name, keys loaded, detail).
    pub fn readiness(&self) -> Vec<(String, bool, String)> {
        self.issuers
            .iter()
            .map(|i| {
                let (ok, detail) = i.readiness();
                (format!("issuer:{}", i.cfg.name), ok, detail)
            })
            .collect()
    }

    /// Authenticate and authorize one request under `policy`. Every rejection is counted by reason.
    pub async fn authenticate(
        &self,
        policy: &RoutePolicy,
        headers: &HeaderMap,
        uri: &Uri,
    ) -> Result<Caller, AuthError> {
        let Some(p) = &policy.jwt else {
            return Ok(Caller::default());
        };
        // The cache-hit path is synchronous; the miss path is boxed so the future every request builds stays small.
        let result = match self.check_cached(p, headers, uri) {
            Some(r) => r,
            None => Box::pin(self.check_uncached(p, headers)).await,
        };
        if let Err(e) = &result {
            self.rejections
                .get_or_create(&RejectionLabels { reason: e.kind() })
                .inc();
        }
        result
    }

    /// Request checks and a cache hit; `None` when the token must be verified.
    fn check_cached(
        &self,
        p: &JwtPolicy,
        headers: &HeaderMap,
        uri: &Uri,
    ) -> Option<Result<Caller, AuthError>> {
        if uri.query().is_some_and(has_access_token) {
            return Some(Err(AuthError::TokenInQuery));
        }
        let token = match bearer(headers) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        let v = self.cached(token)?;
        Some(v.and_then(|v| self.authorize(p, v)))
    }

    async fn check_uncached(
        &self,
        p: &JwtPolicy,
        headers: &HeaderMap,
    ) -> Result<Caller, AuthError> {
        let token = utf8(bearer(headers)?)?;
        let v = self.verify_and_cache(token).await?;
        self.authorize(p, v)
    }

    /// Validate a bearer token: a cache hit re-checks the key and time; a miss verifies and caches.
    pub async fn validate(&self, token: &str) -> Result<Arc<Verified>, AuthError> {
        match self.cached(token.as_bytes()) {
            Some(r) => r,
            None => Box::pin(self.verify_and_cache(token)).await,
        }
    }

    /// The cached verification of `token`, time-checked, if its key is still published.
    fn cached(&self, token: &[u8]) -> Option<Result<Arc<Verified>, AuthError>> {
        let v = self.cache.get(token)?;
        if !self.key_still_valid(&v) {
            self.cache.remove(token);
            return None;
        }
        Some(self.check_time(&v).map(|()| v))
    }

    async fn verify_and_cache(&self, token: &str) -> Result<Arc<Verified>, AuthError> {
        let v = Arc::new(self.verify(token).await?);
        self.cache.insert(token, v.clone());
        Ok(v)
    }

    /// Drop a token from the verified-token cache (benchmarks measure the miss path with it).
    pub fn forget(&self, token: &str) {
        self.cache.remove(token.as_bytes());
    }

    fn key_still_valid(&self, v: &Verified) -> bool {
        self.issuers
            .get(v.issuer)
            .is_some_and(|i| i.keys().holds(&v.key))
    }

    fn check_time(&self, v: &Verified) -> Result<(), AuthError> {
        let leeway = self.issuers.get(v.issuer).map_or(0, |i| {
            i64::try_from(i.cfg.leeway.as_secs()).unwrap_or(i64::MAX)
        });
        check_times(now_secs(), leeway, Some(v.exp), v.nbf, v.iat)
    }

    /// Verify a token without the cache: parse, issuer, claims, key, signature.
    pub async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let parsed = token::parse(token)?;
        let c = &parsed.claims;
        let iss = c.iss.as_deref().ok_or(AuthError::UnknownIssuer)?;
        let (idx, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| i.cfg.issuer == iss)
            .ok_or(AuthError::UnknownIssuer)?;
        let cfg = &issuer.cfg;
        if !cfg.algorithms.contains(&parsed.alg) {
            return Err(AuthError::AlgNotAllowed {
                alg: Some(parsed.alg),
            });
        }
        // Cheap claim checks before key lookup and signature: garbage costs little and cannot trigger refetches.
        let leeway = i64::try_from(cfg.leeway.as_secs()).unwrap_or(i64::MAX);
        let exp = c.exp.ok_or(AuthError::MissingExp)?;
        check_times(now_secs(), leeway, Some(exp), c.nbf, c.iat)?;
        if !c.aud.iter().any(|a| cfg.audiences.iter().any(|x| x == a)) {
            return Err(AuthError::WrongAudience);
        }
        let key = self.find_key(issuer, parsed.kid.as_deref()).await?;
        let verifier = key.verifier(parsed.alg).ok_or(AuthError::AlgKeyMismatch)?;
        verifier
            .verify_sig(parsed.signing_input, &parsed.signature)
            .map_err(|_| AuthError::BadSignature)?;
        let claims = parsed.claims;
        let subject = claims
            .all
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .map(|sub| format!("{}\n{sub}", issuer.cfg.issuer).into_boxed_str());
        Ok(Verified {
            subject,
            header_values: header_values(&claims.all, &self.forwarded),
            issuer: idx,
            key,
            exp,
            nbf: claims.nbf,
            iat: claims.iat,
            scopes: claims.scopes.into_boxed_slice(),
            claims: claims.all,
        })
    }

    async fn find_key(
        &self,
        issuer: &Arc<Issuer>,
        kid: Option<&str>,
    ) -> Result<Arc<keys::Key>, AuthError> {
        if let Lookup::Found(k) = issuer.keys().find(kid) {
            return Ok(k.clone());
        }
        // A kid-less token with several keys is ambiguous; a refetch cannot fix that.
        if kid.is_some() && issuer.refetch_for_unknown_kid(kid).await == Refetch::Done {
            if let Lookup::Found(k) = issuer.keys().find(kid) {
                return Ok(k.clone());
            }
            if let Some(kid) = kid {
                issuer.remember_unknown(kid);
            }
        }
        if issuer.keys().is_empty() {
            return Err(AuthError::KeysUnavailable {
                issuer: issuer.cfg.name.clone(),
            });
        }
        Err(AuthError::UnknownKey)
    }

    fn authorize(&self, p: &JwtPolicy, v: Arc<Verified>) -> Result<Caller, AuthError> {
        if !p.issuers.is_empty() {
            let name = self.issuers.get(v.issuer).map(|i| i.cfg.name.as_str());
            if !p.issuers.iter().any(|n| Some(&**n) == name) {
                return Err(AuthError::IssuerNotAccepted);
            }
        }
        for s in &p.scopes {
            if !v.scopes.iter().any(|have| have == s) {
                return Err(AuthError::InsufficientScope {
                    scope: s.to_string(),
                });
            }
        }
        for (claim, allowed) in &p.require_claims {
            let ok = match v.claims.get(&**claim) {
                Some(serde_json::Value::String(s)) => allowed.iter().any(|a| a == s),
                Some(other @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    let s = other.to_string();
                    allowed.contains(&s)
                }
                _ => false,
            };
            if !ok {
                return Err(AuthError::ClaimNotAllowed {
                    claim: claim.to_string(),
                });
            }
        }
        let mut forward_headers = Vec::with_capacity(p.forward_claims.len());
        for (claim, header) in &p.forward_claims {
            let value = v
                .header_values
                .iter()
                .find_map(|(k, hv)| (k == claim).then(|| hv.clone()))
                .unwrap_or_else(|| HeaderValue::from_static(""));
            forward_headers.push((header.clone(), value));
        }
        Ok(Caller {
            forward_headers,
            verified: Some(v),
        })
    }
}

/// The forwarded claims of a token as header values, prepared once per verified token so that a cache hit forwards
/// them by reference count: strings as they are, numbers and booleans printed. Anything else cannot be forwarded.
fn header_values(
    claims: &serde_json::Map<String, serde_json::Value>,
    forwarded: &[Box<str>],
) -> Box<[(Box<str>, HeaderValue)]> {
    forwarded
        .iter()
        .filter_map(|k| {
            let v = claims.get(&**k)?;
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(_) | serde_json::Value::Bool(_) => v.to_string(),
                _ => return None,
            };
            let hv = HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).ok()?;
            Some((k.clone(), hv))
        })
        .collect()
}

fn check_times(
    now: i64,
    leeway: i64,
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
) -> Result<(), AuthError> {
    let exp = exp.ok_or(AuthError::MissingExp)?;
    if now > exp.saturating_add(leeway) {
        return Err(AuthError::Expired);
    }
    if nbf.is_some_and(|n| n.saturating_sub(leeway) > now) {
        return Err(AuthError::NotYetValid);
    }
    if iat.is_some_and(|i| i.saturating_sub(leeway) > now) {
        return Err(AuthError::IssuedInFuture);
    }
    Ok(())
}

/// The bearer token of the single `Authorization` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Result<&[u8], AuthError> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let Some(v) = all.next() else {
        return Err(AuthError::Missing);
    };
    if all.next().is_some() {
        return Err(AuthError::MultipleAuthorization);
    }
    // Bytes, not `to_str`: a cache hit compares the exact bytes of a token that once verified (hence base64url), and a
    // miss checks UTF-8 before parsing; walking every byte of every header here would cost more than that.
    let v = v.as_bytes();
    let sp = v
        .iter()
        .position(|&b| b == b' ')
        .ok_or(AuthError::Missing)?;
    if !v[..sp].eq_ignore_ascii_case(b"bearer") {
        return Err(AuthError::Missing);
    }
    let token = v[sp..].trim_ascii();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

fn utf8(token: &[u8]) -> Result<&str, AuthError> {
    std::str::from_utf8(token).map_err(|_| AuthError::Malformed("token is not UTF-8"))
}

/// Whether the query has an `access_token` parameter (RFC 6750 §2.3), its name read as servers read it: decoded, so
/// that `%61ccess_token` is one too.
fn has_access_token(query: &str) -> bool {
    url::form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "access_token")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[tokio::test]
    async fn rejections_are_counted_by_a_fixed_reason_never_by_what_was_sent() {
        let metrics = Arc::new(Metrics::default());
        let http =
            crate::http_client::build(&[], std::time::Duration::from_secs(1)).expect("client");
        let auth = CallerAuth::new(&[], [], &http, metrics.clone());
        let policy = RoutePolicy::new(RouteAuthConfig::Jwt {
            issuers: vec![],
            scopes: vec![],
            require_claims: BTreeMap::new(),
            forward_claims: vec![],
        });
        let uri: Uri = "/x".parse().expect("uri");
        let mut reasons = Vec::new();
        for sent in [
            None,
            Some("Bearer evil\"label"),
            Some("Bearer other-evil-label"),
        ] {
            let mut h = HeaderMap::new();
            if let Some(v) = sent {
                h.insert(AUTHORIZATION, HeaderValue::from_static(v));
            }
            let e = auth
                .authenticate(&policy, &h, &uri)
                .await
                .expect_err("refused");
            reasons.push(e.reason());
        }
        assert_eq!(reasons[0], "missing_token");
        assert_eq!(reasons[1], reasons[2]);
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(
            out.contains("# TYPE credgate_auth_rejections counter\n"),
            "{out}"
        );
        assert!(
            out.contains("credgate_auth_rejections_total{reason=\"missing_token\"} 1\n"),
            "{out}"
        );
        let line = format!(
            "credgate_auth_rejections_total{{reason=\"{}\"}} 2\n",
            reasons[1]
        );
        assert!(out.contains(&line), "{out}");
        assert!(!out.contains("evil"), "{out}");
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with("credgate_auth_rejections_total"))
                .count(),
            2,
            "{out}"
        );
    }

    /// Found while triaging the `caller_auth` fuzz target's query property: a parameter name spelt with escapes
    /// (`%61ccess_token`, `access%5Ftoken`) passed the refusal of tokens in the query, though every server decodes it.
    #[test]
    fn fuzz_caller_auth_an_escaped_access_token_name_is_a_token_in_the_query() {
        for q in ["%61ccess_token=x", "a=1&access%5Ftoken=x", "access_toke%6E"] {
            assert!(has_access_token(q), "{q}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_single() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("bEaReR abc"));
        assert_eq!(bearer(&h).ok(), Some(&b"abc"[..]));
        h.append(AUTHORIZATION, HeaderValue::from_static("Bearer def"));
        assert!(matches!(bearer(&h), Err(AuthError::MultipleAuthorization)));
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(matches!(bearer(&h), Err(AuthError::Missing)));
    }

    #[test]
    fn times_honour_leeway() {
        assert!(check_times(100, 10, Some(95), None, None).is_ok());
        assert!(matches!(
            check_times(100, 10, Some(89), None, None),
            Err(AuthError::Expired)
        ));
        assert!(matches!(
            check_times(100, 10, Some(200), Some(111), None),
            Err(AuthError::NotYetValid)
        ));
        assert!(matches!(
            check_times(100, 10, Some(200), None, Some(111)),
            Err(AuthError::IssuedInFuture)
        ));
        assert!(matches!(
            check_times(100, 10, None, None, None),
            Err(AuthError::MissingExp)
        ));
    }

    #[test]
    fn access_token_query_is_spotted() {
        assert!(has_access_token("a=1&access_token=x"));
        assert!(!has_access_token("my_access_token=x"));
        assert!(!has_access_token("q=access_token=1"));
    }
}
