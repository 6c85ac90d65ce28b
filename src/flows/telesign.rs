//! TeleSign App Verify JWT service, replacing TeleSign's `pygenjwt` and the Flask tutorial: `GET /token/{phone}[/{xid}]`
//! mints an HS256 JWT signed with the base64-decoded API key, records it in the token ledger (xid, phone, times and a
//! digest, never the token), and answers it as `text/plain`. `GET /token-status/{xid}` and
//! `GET /token-status?phone=...` read the ledger. Per-caller and per-phone rate limits answer 429 with `Retry-After`.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::future::{BoxFuture, FutureExt};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::rate_limit::{Rate, SharedLimits};
use http::header::{CACHE_CONTROL, HeaderValue};
use http::{Method, Response, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::store::{Store, TokenRecord};
use super::{FlowError, FlowRequest, Handler, bytes_response, json_response, query_param};
use crate::body::Body;
use crate::caller_auth::Caller;
use crate::config::{ConfigError, Ctx, secret, show};
use crate::conn::ConnInfo;
use crate::unix_time::now_secs;

/// Name of the flow.
pub(crate) const FLOW: &str = "telesign";

/// `iat` is backdated by this much for clock skew between the gateway, the device and TeleSign.
const IAT_BACKDATE_SECS: i64 = 10;
/// Keyed limiters forget idle keys once they hold this many, so memory stays bounded.
const LIMITER_KEYS_MAX: usize = 100_000;

/// A rate limit as written: `{ requests = 5, per = "1m" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// Requests allowed per period (also the burst).
    pub requests: u32,
    /// The period, e.g. `"1s"`, `"1m"`.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

/// `[flows.telesign]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelesign {
    /// TeleSign customer id, the JWT's `iss` (`${ENV}`, `${file:PATH}`).
    pub customer_id: String,
    /// The API key as TeleSign issues it, base64 text; decoded, it is the HS256 key (`${ENV}`, `${file:PATH}`).
    pub api_key: Option<String>,
    /// File holding the API key, instead of `api_key`.
    pub api_key_file: Option<PathBuf>,
    /// Token lifetime from `iat` (default `90s`; TeleSign's Java reference uses `30s`).
    #[serde(default, with = "humantime_serde")]
    pub token_ttl: Option<Duration>,
    /// Include the `phn` claim (default true; the Java reference omits it).
    pub include_phone: Option<bool>,
    /// Include `bta: true`, pygenjwt's development flag (default false).
    pub bta: Option<bool>,
    /// Tokens per caller (default `{ requests = 30, per = "1m" }`); the caller is the verified token's subject
    /// (`iss` and `sub`), else the route's forwarded verified claims, else the peer address.
    pub caller_limit: Option<RawRate>,
    /// Tokens per phone number (default `{ requests = 3, per = "1m" }`), whoever asks: any caller can use up a
    /// number's quota, and `caller_phone_limit` keeps one caller from taking all of it.
    pub phone_limit: Option<RawRate>,
    /// Tokens per caller and phone number together (default: no such limit).
    pub caller_phone_limit: Option<RawRate>,
    /// A scope whose holders may read every caller's ledger entries (default: none; each caller reads its own).
    pub admin_scope: Option<String>,
}

/// Validated `[flows.telesign]`.
#[derive(Debug, Serialize)]
pub struct TelesignConfig {
    #[serde(serialize_with = "show::redacted")]
    customer_id: SecretString,
    /// The base64-decoded API key: the HS256 key.
    #[serde(serialize_with = "show::redacted")]
    key: SecretSlice<u8>,
    /// Token lifetime from `iat`.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub token_ttl: Duration,
    /// Include `phn`.
    pub include_phone: bool,
    /// Include `bta`.
    pub bta: bool,
    /// Per-caller limit.
    pub caller_limit: Limit,
    /// Per-phone limit.
    pub phone_limit: Limit,
    /// Per-caller-and-phone limit, when set.
    pub caller_phone_limit: Option<Limit>,
    /// The scope that reads every caller's ledger.
    pub admin_scope: Option<String>,
}

/// A validated limit, as governor's quota (in process) and as the fleet's rate (shared): the same GCRA.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    quota: Quota,
    rate: Rate,
}

/// Shown as written: `requests` per `per`.
impl Serialize for Limit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Limit", 2)?;
        st.serialize_field("requests", &self.rate.burst)?;
        st.serialize_field(
            "per",
            &humantime::format_duration(self.rate.interval * self.rate.burst).to_string(),
        )?;
        st.end()
    }
}

fn quota(
    ctx: &Ctx,
    key: &str,
    raw: Option<RawRate>,
    default: (u32, Duration),
) -> Result<Limit, ConfigError> {
    let (n, per) = match raw {
        None => default,
        Some(r) => (r.requests, r.per),
    };
    let burst = NonZeroU32::new(n)
        .ok_or_else(|| ctx.invalid(format!("{key}.requests"), "must be at least 1"))?;
    let quota = Quota::with_period(per / n)
        .map(|q| q.allow_burst(burst))
        .ok_or_else(|| ctx.invalid(format!("{key}.per"), "must be longer than zero"))?;
    Ok(Limit {
        quota,
        rate: Rate {
            interval: per / n,
            burst: n,
        },
    })
}

/// Validate `[flows.telesign]`.
pub(crate) fn validate(ctx: &Ctx, raw: RawTelesign) -> Result<TelesignConfig, ConfigError> {
    let k = |f: &str| format!("flows.telesign.{f}");
    let customer_id =
        secret::expand(ctx, &raw.customer_id).map_err(|e| ctx.invalid(k("customer_id"), e))?;
    let api_key = secret::resolve(ctx, raw.api_key.as_deref(), raw.api_key_file.as_deref())
        .map_err(|e| ctx.invalid(k("api_key"), e))?
        .ok_or_else(|| ctx.invalid(k("api_key"), "required (or api_key_file)"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(api_key.expose_secret().trim())
        .map_err(|_| {
            ctx.invalid(
                k("api_key"),
                "is not base64 (TeleSign API keys are base64 text)",
            )
        })?;
    if decoded.is_empty() {
        return Err(ctx.invalid(k("api_key"), "decodes to nothing"));
    }
    let token_ttl = raw.token_ttl.unwrap_or(Duration::from_secs(90));
    if token_ttl.as_secs() <= u64::try_from(IAT_BACKDATE_SECS).unwrap_or(0) {
        return Err(ctx.invalid(k("token_ttl"), "must be longer than the 10s iat backdating"));
    }
    Ok(TelesignConfig {
        customer_id,
        key: SecretSlice::from(decoded),
        token_ttl,
        include_phone: raw.include_phone.unwrap_or(true),
        bta: raw.bta.unwrap_or(false),
        caller_limit: quota(
            ctx,
            &k("caller_limit"),
            raw.caller_limit,
            (30, Duration::from_secs(60)),
        )?,
        phone_limit: quota(
            ctx,
            &k("phone_limit"),
            raw.phone_limit,
            (3, Duration::from_secs(60)),
        )?,
        caller_phone_limit: raw
            .caller_phone_limit
            .map(|r| quota(ctx, &k("caller_phone_limit"), Some(r), (1, Duration::ZERO)))
            .transpose()?,
        admin_scope: raw.admin_scope.filter(|s| !s.is_empty()),
    })
}

/// Build the TeleSign handler; its limits are the fleet's when `shared` is given, each replica's own otherwise (and
/// while the fleet cannot answer).
pub(crate) fn build(
    cfg: &TelesignConfig,
    store: Store,
    shared: Option<Arc<dyn SharedLimits>>,
) -> Arc<dyn Handler> {
    let keyed = |l: &Limit| Limiter {
        local: DefaultKeyedRateLimiter::keyed(l.quota),
        rate: l.rate,
    };
    Arc::new(Telesign {
        iss: cfg.customer_id.clone(),
        key: EncodingKey::from_secret(cfg.key.expose_secret()),
        ttl: i64::try_from(cfg.token_ttl.as_secs()).unwrap_or(i64::MAX),
        include_phone: cfg.include_phone,
        bta: cfg.bta,
        per_caller: keyed(&cfg.caller_limit),
        per_phone: keyed(&cfg.phone_limit),
        per_caller_phone: cfg.caller_phone_limit.as_ref().map(keyed),
        shared,
        admin_scope: cfg.admin_scope.clone(),
        store,
    })
}

/// The TeleSign endpoints.
pub(crate) struct Telesign {
    iss: SecretString,
    key: EncodingKey,
    ttl: i64,
    include_phone: bool,
    bta: bool,
    per_caller: Limiter,
    per_phone: Limiter,
    per_caller_phone: Option<Limiter>,
    shared: Option<Arc<dyn SharedLimits>>,
    admin_scope: Option<String>,
    store: Store,
}

/// One limit: the in-process limiter and the rate the fleet enforces.
struct Limiter {
    local: DefaultKeyedRateLimiter<String>,
    rate: Rate,
}

impl std::fmt::Debug for Telesign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telesign")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// The claims TeleSign's SDK verifies.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    phn: Option<&'a str>,
    xid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    bta: Option<bool>,
}

impl Handler for Telesign {
    fn handle(&self, req: FlowRequest) -> BoxFuture<'_, Result<Response<Body>, FlowError>> {
        async move {
            if req.req.method() != Method::GET {
                return Err(FlowError::MethodNotAllowed { allow: "GET" });
            }
            let path = req.req.uri().path();
            if let Some(rest) = path.strip_prefix("/token/") {
                let (phone, xid) = match rest.split_once('/') {
                    Some((p, x)) => (p, Some(x)),
                    None => (rest, None),
                };
                return self.mint(phone, xid, &req.caller, &req.conn).await;
            }
            let reader = self.reader(&req.caller, &req.conn);
            if let Some(xid) = path.strip_prefix("/token-status/") {
                return self.status_by_xid(xid, reader).await;
            }
            if path == "/token-status" {
                let phone = query_param(req.req.uri().query(), "phone").ok_or_else(|| {
                    FlowError::Invalid {
                        detail: "give an xid in the path or ?phone=".into(),
                    }
                })?;
                return self.status_by_phone(&phone, reader).await;
            }
            Err(FlowError::NotFound)
        }
        .boxed()
    }
}

/// The phone number as TeleSign wants it (E.164 digits, no `+`), or why not.
pub(crate) fn e164(raw: &str) -> Result<String, FlowError> {
    // A `+` arrives as itself in a path, as `%2B` when escaped, and as a space when a query was form-decoded.
    let digits = raw
        .strip_prefix('+')
        .or_else(|| raw.strip_prefix(' '))
        .or_else(|| raw.strip_prefix("%2B"))
        .or_else(|| raw.strip_prefix("%2b"))
        .unwrap_or(raw);
    let ok = (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if ok {
        Ok(digits.to_owned())
    } else {
        Err(FlowError::Invalid {
            detail: "phone number must be E.164: country code and number, 7 to 15 digits, optional leading +".into(),
        })
    }
}

pub(crate) fn check_xid(xid: &str) -> Result<(), FlowError> {
    if super::vendor::is_plain_id(xid, 128, &[]) {
        Ok(())
    } else {
        Err(FlowError::Invalid {
            detail: "xid must be 1 to 128 characters of letters, digits, '-', '_' or '.'".into(),
        })
    }
}

/// Who the caller is for rate limiting: the verified claims the route forwards, else the peer address.
/// Who is asking, for limits and the ledger: the verified subject, else the forwarded verified claims, else the peer
/// address (two services behind one address then share it: configure a JWT check on the route).
fn caller_key(caller: &Caller, conn: &ConnInfo) -> String {
    if let Some(sub) = caller.subject() {
        return format!("sub:{sub}");
    }
    if caller.forward_headers.is_empty() {
        return format!("ip:{}", conn.peer.ip());
    }
    let mut key = String::from("claims:");
    for (n, v) in &caller.forward_headers {
        key.push_str(n.as_str());
        key.push('=');
        key.push_str(&String::from_utf8_lossy(v.as_bytes()));
        key.push('\n');
    }
    key
}

/// Take one request from `key`'s budget: the fleet's when it answers, else this replica's own.
async fn limit(
    limiter: &Limiter,
    shared: Option<&dyn SharedLimits>,
    key: String,
    scope: &'static str,
) -> Result<(), FlowError> {
    if let Some(shared) = shared
        && let Some(answer) = shared
            .check(
                &format!("telesign:{}", scope.replace(' ', "_")),
                &key,
                limiter.rate,
            )
            .await
    {
        return answer.map_err(|wait| FlowError::RateLimited {
            scope,
            retry_after: super::retry_after_secs(wait),
        });
    }
    let limiter = &limiter.local;
    let result = limiter.check_key(&key);
    if limiter.len() > LIMITER_KEYS_MAX {
        limiter.retain_recent();
    }
    result.map_err(|not_until| FlowError::RateLimited {
        scope,
        retry_after: super::retry_after_secs(not_until.wait_time_from(limiter.clock().now())),
    })
}

fn record_json(r: &TokenRecord, now: i64) -> serde_json::Value {
    json!({
        "xid": r.xid,
        "phone": r.phone,
        "issuedAt": r.issued_at,
        "expiresAt": r.expires_at,
        "expired": r.expires_at <= now,
        "tokenSha256": r.token_sha256,
    })
}

impl Telesign {
    async fn mint(
        &self,
        phone: &str,
        xid: Option<&str>,
        caller: &Caller,
        conn: &ConnInfo,
    ) -> Result<Response<Body>, FlowError> {
        let phone = e164(phone)?;
        let xid = match xid {
            Some(x) => {
                check_xid(x)?;
                x.to_owned()
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        let who = caller_key(caller, conn);
        let shared = self.shared.as_deref();
        limit(&self.per_caller, shared, who.clone(), "caller").await?;
        if let Some(l) = &self.per_caller_phone {
            limit(l, shared, format!("{who}\n{phone}"), "caller and phone").await?;
        }
        limit(&self.per_phone, shared, phone.clone(), "phone").await?;
        let iat = now_secs() - IAT_BACKDATE_SECS;
        let exp = iat + self.ttl;
        let claims = Claims {
            iss: self.iss.expose_secret(),
            iat,
            exp,
            phn: self.include_phone.then_some(phone.as_str()),
            xid: &xid,
            bta: self.bta.then_some(true),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(FlowError::Sign)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let token_sha256 = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        self.store
            .insert_token(TokenRecord {
                xid: xid.clone(),
                phone,
                issued_at: iat,
                expires_at: exp,
                token_sha256,
                caller: who,
            })
            .await?;
        tracing::info!(xid = %xid, "telesign token minted");
        let mut rsp = bytes_response(StatusCode::OK, "text/plain; charset=utf-8", token.into());
        rsp.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(rsp)
    }

    /// Whose ledger entries `caller` may read: its own, or everyone's (`None`) with the admin scope.
    fn reader(&self, caller: &Caller, conn: &ConnInfo) -> Option<String> {
        match &self.admin_scope {
            Some(scope) if caller.has_scope(scope) => None,
            _ => Some(caller_key(caller, conn)),
        }
    }

    async fn status_by_xid(
        &self,
        xid: &str,
        reader: Option<String>,
    ) -> Result<Response<Body>, FlowError> {
        check_xid(xid)?;
        let rows = self.store.tokens_by_xid(xid, reader).await?;
        let now = now_secs();
        let latest = rows.first().ok_or(FlowError::NoRecord)?;
        let mut doc = record_json(latest, now);
        doc["issued"] = json!(rows.len());
        Ok(json_response(StatusCode::OK, &doc))
    }

    async fn status_by_phone(
        &self,
        phone: &str,
        reader: Option<String>,
    ) -> Result<Response<Body>, FlowError> {
        let phone = e164(phone)?;
        let rows = self.store.tokens_by_phone(&phone, reader).await?;
        let now = now_secs();
        let tokens: Vec<_> = rows.iter().map(|r| record_json(r, now)).collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({"phone": phone, "tokens": tokens}),
        ))
    }
}
