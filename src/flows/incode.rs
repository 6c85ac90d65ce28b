//! Incode identity verification, replacing Incode's sample token servers. Two handlers share one client:
//!
//! - `incode` (caller-facing): `GET /start`, `GET /onboarding-url`, and the session API pass-through `/0/omni/...`.
//!   Only `/start` uses the API key (Incode's "0 rule"); everything else carries a session token.
//! - `incode_webhooks` (called by Incode): `POST /webhook` records events, `POST /approve` approves finished
//!   onboardings whose overall score is OK, once per interview, with the admin token from a named credential.
//!
//! Never puts the API key, a session token or the admin token in a log line or an error body.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderName, Method, Request, Response, StatusCode};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::store::{Claim, IncodeEvent, Store};
use super::vendor::{self, Step};
use super::webhook_auth::{self, RawWebhookAuth, WebhookAuth};
use super::{FlowDeps, FlowError, FlowRequest, Handler, json_response, query_param, read_body};
use crate::body::{self, Body};
use crate::config::{ConfigError, Ctx, secret, show};
use crate::credentials::{self, Attachment, Credential, sensitive_value};
use crate::http_client::{Fetched, HttpClient};

/// Name of the caller-facing flow.
pub(crate) const FLOW: &str = "incode";
/// Name of the webhook flow (mount it on a route with `auth = "none"`; it authenticates Incode itself).
pub(crate) const WEBHOOKS_FLOW: &str = "incode_webhooks";

const VENDOR: &str = "incode";
const API_VERSION: &str = "1.0";
const SESSION_HEADER: &str = "x-incode-hardware-id";
const FINISHED: &str = "ONBOARDING_FINISHED";

/// `[flows.incode]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIncode {
    /// API base URL, e.g. `https://demo-api.incodesmile.com` (a trailing slash is ignored).
    pub api_url: String,
    /// The API key sent as `x-api-key` on `omni/start` only (`${ENV}`, `${file:PATH}`).
    pub api_key: Option<String>,
    /// File holding the API key, instead of `api_key`.
    pub api_key_file: Option<PathBuf>,
    /// The flow (configuration) id sent as `configurationId`.
    pub flow_id: String,
    /// Client id, sent as `clientId` when asking for an onboarding URL.
    pub client_id: Option<String>,
    /// `countryCode` sent to `omni/start` (default `ALL`).
    pub country_code: Option<String>,
    /// `language` sent to `omni/start`, e.g. `en-US` (omitted when unset).
    pub language: Option<String>,
    /// Name of the credential (in `[credentials]`) that attaches the admin token for scores and approval; without
    /// it `/approve` is not served.
    pub admin_credential: Option<String>,
    /// Origins (`https://app.example.com`) a caller may ask to be redirected to after onboarding.
    #[serde(default)]
    pub redirect_origins: Vec<String>,
    /// Time allowed for each Incode call (default `15s`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// How Incode's webhook deliveries authenticate; without it the `incode_webhooks` flow is not enabled.
    pub webhook: Option<RawWebhookAuth>,
}

/// Validated `[flows.incode]`.
#[derive(Debug, Serialize)]
pub struct IncodeConfig {
    /// API base without trailing slash.
    pub api_base: String,
    /// `x-api-key`, marked sensitive.
    #[serde(serialize_with = "show::redacted")]
    api_key: HeaderValue,
    /// Flow id.
    pub flow_id: String,
    /// Client id.
    pub client_id: Option<String>,
    /// Country code.
    pub country_code: String,
    /// Language.
    pub language: Option<String>,
    /// Admin credential name.
    pub admin_credential: Option<String>,
    /// Allowed redirect origins, serialized as `scheme://host[:port]`.
    pub redirect_origins: Vec<String>,
    /// Per-call timeout.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub timeout: Duration,
    /// Webhook authentication, when webhooks are enabled.
    pub webhook: Option<Arc<WebhookAuth>>,
}

/// Validate `[flows.incode]`.
pub(crate) fn validate(ctx: &Ctx, raw: RawIncode) -> Result<IncodeConfig, ConfigError> {
    let k = |f: &str| format!("flows.incode.{f}");
    let (scheme, authority, _, base_path) =
        crate::config::parse_base_url(ctx, &k("api_url"), &raw.api_url)?;
    let api_key = secret::resolve(ctx, raw.api_key.as_deref(), raw.api_key_file.as_deref())
        .map_err(|e| ctx.invalid(k("api_key"), e))?
        .ok_or_else(|| ctx.invalid(k("api_key"), "required (or api_key_file)"))?;
    let api_key = sensitive_value(api_key.expose_secret())
        .ok_or_else(|| ctx.invalid(k("api_key"), "is not a valid header value"))?;
    if raw.flow_id.is_empty() {
        return Err(ctx.invalid(k("flow_id"), "must not be empty"));
    }
    let mut redirect_origins = Vec::new();
    for (i, o) in raw.redirect_origins.iter().enumerate() {
        let origin = origin_of(o)
            .filter(|origin| o.trim_end_matches('/') == origin)
            .ok_or_else(|| {
                ctx.invalid(
                    format!("flows.incode.redirect_origins[{i}]"),
                    format!("{o:?} is not an origin like https://app.example.com"),
                )
            })?;
        redirect_origins.push(origin);
    }
    Ok(IncodeConfig {
        api_base: format!("{scheme}://{authority}{base_path}"),
        api_key,
        flow_id: raw.flow_id,
        client_id: raw.client_id,
        country_code: raw.country_code.unwrap_or_else(|| "ALL".to_owned()),
        language: raw.language,
        admin_credential: raw.admin_credential,
        redirect_origins,
        timeout: raw.timeout.unwrap_or(Duration::from_secs(15)),
        webhook: raw
            .webhook
            .map(|w| webhook_auth::validate(ctx, "flows.incode.webhook", w).map(Arc::new))
            .transpose()?,
    })
}

/// The `scheme://host[:port]` origin of an http(s) URL.
fn origin_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return None;
    }
    Some(u.origin().ascii_serialization())
}

/// The Incode handlers: caller-facing, and the webhooks when configured.
#[derive(Debug)]
pub(crate) struct Handlers {
    /// The `incode` flow.
    pub caller_facing: Arc<dyn Handler>,
    /// The `incode_webhooks` flow.
    pub webhooks: Option<Arc<dyn Handler>>,
}

/// Build both Incode handlers over one shared client.
pub(crate) fn build(
    cfg: &IncodeConfig,
    deps: &FlowDeps<'_>,
    store: Store,
) -> Result<Handlers, FlowError> {
    let admin = match &cfg.admin_credential {
        Some(name) => {
            Some(
                deps.credentials
                    .get(name)
                    .ok_or_else(|| FlowError::UnknownCredential {
                        flow: FLOW,
                        key: "admin_credential",
                        name: name.clone(),
                    })?,
            )
        }
        None => None,
    };
    let inner = Arc::new(Inner {
        api_base: cfg.api_base.clone(),
        api_key: cfg.api_key.clone(),
        flow_id: cfg.flow_id.clone(),
        client_id: cfg.client_id.clone(),
        country_code: cfg.country_code.clone(),
        language: cfg.language.clone(),
        redirect_origins: cfg.redirect_origins.clone(),
        timeout: cfg.timeout,
        http: deps.http.clone(),
        admin,
        store,
    });
    let webhooks = cfg
        .webhook
        .clone()
        .map(|auth| Arc::new(Webhooks(inner.clone(), auth)) as Arc<dyn Handler>);
    Ok(Handlers {
        caller_facing: Arc::new(CallerFacing(inner)),
        webhooks,
    })
}

struct Inner {
    api_base: String,
    api_key: HeaderValue,
    flow_id: String,
    client_id: Option<String>,
    country_code: String,
    language: Option<String>,
    redirect_origins: Vec<String>,
    timeout: Duration,
    http: HttpClient,
    admin: Option<Arc<dyn Credential>>,
    store: Store,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incode")
            .field("api_base", &self.api_base)
            .field("flow_id", &self.flow_id)
            .finish_non_exhaustive()
    }
}

/// The caller-facing Incode endpoints.
#[derive(Debug)]
pub(crate) struct CallerFacing(Arc<Inner>);

/// The Incode webhook endpoints.
#[derive(Debug)]
pub(crate) struct Webhooks(Arc<Inner>, Arc<WebhookAuth>);

impl Handler for CallerFacing {
    fn handle(&self, req: FlowRequest) -> BoxFuture<'_, Result<Response<Body>, FlowError>> {
        async move {
            let inner = &self.0;
            let path = req.req.uri().path().to_owned();
            let method = req.req.method().clone();
            match path.as_str() {
                "/start" => {
                    only(&method, Method::GET, "GET")?;
                    let s = inner.start(None).await?;
                    Ok(json_response(
                        StatusCode::OK,
                        &json!({"token": s.token, "interviewId": s.interview_id}),
                    ))
                }
                "/onboarding-url" => {
                    only(&method, Method::GET, "GET")?;
                    let q = req.req.uri().query();
                    let wanted =
                        query_param(q, "redirectionUrl").or_else(|| query_param(q, "redirectUrl"));
                    let redirect = wanted.map(|u| inner.allowed_redirect(&u)).transpose()?;
                    inner.onboarding_url(redirect.as_deref()).await
                }
                p if p.starts_with("/0/omni/") => inner.session_call(req.req).await,
                _ => Err(FlowError::NotFound),
            }
        }
        .boxed()
    }
}

impl Handler for Webhooks {
    fn handle(&self, req: FlowRequest) -> BoxFuture<'_, Result<Response<Body>, FlowError>> {
        async move {
            let (inner, auth) = (&self.0, &self.1);
            let path = req.req.uri().path();
            let approve = match path {
                "/webhook" => false,
                "/approve" if inner.admin.is_some() => true,
                _ => return Err(FlowError::NotFound),
            };
            only(req.req.method(), Method::POST, "POST")?;
            auth.check(req.req.headers(), req.conn.peer.ip())?;
            let event = parse_event(&read_body(req.req.into_body()).await?)?;
            tracing::info!(
                interview_id = %event.interview_id,
                onboarding_status = %event.onboarding_status,
                approve,
                "incode webhook received"
            );
            inner.store.record_incode_event(event.clone()).await?;
            if approve {
                inner.approve(&event).await
            } else {
                Ok(json_response(StatusCode::OK, &json!({"success": true})))
            }
        }
        .boxed()
    }
}

fn only(got: &Method, want: Method, allow: &'static str) -> Result<(), FlowError> {
    if *got == want {
        Ok(())
    } else {
        Err(FlowError::MethodNotAllowed { allow })
    }
}

/// Incode's webhook body: `{interviewId, onboardingStatus, clientId?, flowId?, externalId?}`; other fields ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEvent {
    interview_id: Option<String>,
    onboarding_status: Option<String>,
    client_id: Option<String>,
    flow_id: Option<String>,
    external_id: Option<String>,
}

pub(crate) fn parse_event(body: &[u8]) -> Result<IncodeEvent, FlowError> {
    let invalid = |detail: &str| FlowError::Invalid {
        detail: detail.to_owned(),
    };
    let raw: RawEvent = serde_json::from_slice(body)
        .map_err(|_| invalid("body must be a JSON object {interviewId, onboardingStatus, ...}"))?;
    let interview_id = raw
        .interview_id
        .filter(|s| is_id(s))
        .ok_or_else(|| invalid("interviewId is missing or not an id"))?;
    let onboarding_status = raw
        .onboarding_status
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .ok_or_else(|| {
            invalid("onboardingStatus is missing or not a status like ONBOARDING_FINISHED")
        })?;
    // Optional fields are customer-defined (an external id may be an email): any short text without control
    // characters. They are bound as SQL parameters and never logged.
    let opt = |v: Option<String>, what: &str| match v {
        Some(s) if s.len() > 256 || s.chars().any(char::is_control) => Err(invalid(&format!(
            "{what} is too long or has control characters"
        ))),
        other => Ok(other),
    };
    Ok(IncodeEvent {
        interview_id,
        onboarding_status,
        client_id: opt(raw.client_id, "clientId")?,
        flow_id: opt(raw.flow_id, "flowId")?,
        external_id: opt(raw.external_id, "externalId")?,
    })
}

/// Ids are short and plain; anything else is refused before it reaches a log line, the database or a URL.
fn is_id(s: &str) -> bool {
    vendor::is_plain_id(s, 128, b":")
}

struct Session {
    token: String,
    interview_id: String,
}

impl Inner {
    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.api_base)
    }

    fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<Bytes>,
    ) -> Result<Request<Body>, FlowError> {
        let mut b = Request::builder()
            .method(method)
            .uri(url)
            .header("api-version", API_VERSION);
        let h = b.headers_mut().ok_or_else(bad_url)?;
        for (n, v) in headers {
            h.insert(n.clone(), v.clone());
        }
        let body = match body {
            Some(bytes) => {
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                body::full(bytes)
            }
            None => body::empty(),
        };
        b.body(body).map_err(|_| bad_url())
    }

    /// `POST omni/start`: the one call made with the API key.
    async fn start(&self, redirection_url: Option<&str>) -> Result<Session, FlowError> {
        let step = Step {
            vendor: VENDOR,
            name: "omni/start",
        };
        let mut body = json!({"countryCode": self.country_code, "configurationId": self.flow_id});
        if let Some(l) = &self.language {
            body["language"] = json!(l);
        }
        if let Some(r) = redirection_url {
            body["redirectionUrl"] = json!(r);
        }
        let req = self.request(
            Method::POST,
            &self.url("omni/start"),
            &[(HeaderName::from_static("x-api-key"), self.api_key.clone())],
            Some(body.to_string().into()),
        )?;
        let f = vendor::send(&self.http, step, req, self.timeout).await?;
        let v = vendor::json_ok(step, &f)?;
        Ok(Session {
            token: vendor::str_field(step, &v, "token")?,
            interview_id: vendor::str_field(step, &v, "interviewId")?,
        })
    }

    /// The caller's redirect URL as parsed and written out again, when its origin is allowed and it carries no
    /// user name or password. What is checked is what is sent: a raw string that another parser reads differently
    /// (`https://app.example.com\@evil.com`) goes out in its one WHATWG form (`https://app.example.com/@evil.com`).
    fn allowed_redirect(&self, url: &str) -> Result<String, FlowError> {
        let refused = || FlowError::Invalid {
            detail: "redirect URL origin is not in flows.incode.redirect_origins".into(),
        };
        let u = url::Url::parse(url).map_err(|_| refused())?;
        if !u.username().is_empty() || u.password().is_some() {
            return Err(FlowError::Invalid {
                detail: "redirect URL carries a user name or password".into(),
            });
        }
        match origin_of(u.as_str()) {
            Some(o) if self.redirect_origins.contains(&o) => Ok(u.into()),
            _ => Err(refused()),
        }
    }

    /// Start a session, then `GET 0/omni/onboarding-url` with the session token alone.
    async fn onboarding_url(&self, redirect: Option<&str>) -> Result<Response<Body>, FlowError> {
        let session = self.start(redirect).await?;
        let step = Step {
            vendor: VENDOR,
            name: "0/omni/onboarding-url",
        };
        let mut url = self.url("0/omni/onboarding-url");
        if let Some(c) = &self.client_id {
            url.push_str("?clientId=");
            url.extend(url::form_urlencoded::byte_serialize(c.as_bytes()));
        }
        let token = sensitive_value(&session.token)
            .ok_or_else(|| step.fail(vendor::VendorFailure::Missing("a usable token")))?;
        let req = self.request(
            Method::GET,
            &url,
            &[(HeaderName::from_static(SESSION_HEADER), token)],
            None,
        )?;
        let f = vendor::send(&self.http, step, req, self.timeout).await?;
        let v = vendor::json_ok(step, &f)?;
        let onboarding = vendor::str_field(step, &v, "url")?;
        Ok(json_response(
            StatusCode::OK,
            &json!({"url": onboarding, "token": session.token, "interviewId": session.interview_id}),
        ))
    }

    /// Pass a session API call (`/0/omni/...`) through with the caller's session token and never the API key.
    async fn session_call(&self, req: Request<Body>) -> Result<Response<Body>, FlowError> {
        let (parts, incoming) = req.into_parts();
        let path = parts.uri.path();
        // The pipeline canonicalised the path already; a session call must also carry no escape at all, so that the
        // URL built below is exactly the path checked.
        if !matches!(crate::path::canonical(path), Ok(Cow::Borrowed(_))) || path.contains('%') {
            return Err(FlowError::Invalid {
                detail: "path segments must be plain".into(),
            });
        }
        let mut token = parts
            .headers
            .get(SESSION_HEADER)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or(FlowError::MissingSessionToken)?;
        token.set_sensitive(true);
        let rel = path.trim_start_matches('/');
        let step = Step {
            vendor: VENDOR,
            name: rel,
        };
        let mut url = self.url(rel);
        if let Some(q) = parts.uri.query() {
            url.push('?');
            url.push_str(q);
        }
        let body = read_body(incoming).await?;
        // Incode's POST endpoints take JSON; an empty POST (process/id, process/face) is sent as `{}` as the samples do.
        let body = match (body.is_empty(), parts.method == Method::POST) {
            (false, _) => Some(body),
            (true, true) => Some(Bytes::from_static(b"{}")),
            (true, false) => None,
        };
        let out = self.request(
            parts.method.clone(),
            &url,
            &[(HeaderName::from_static(SESSION_HEADER), token)],
            body,
        )?;
        let f = vendor::send(&self.http, step, out, self.timeout).await?;
        relay(step, f)
    }

    /// A call with the admin credential's headers; a 401 renews the credential and the call is made once more.
    async fn admin_call(
        &self,
        step: Step<'_>,
        method: Method,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<Fetched, FlowError> {
        let cred = self.admin.as_deref().ok_or(FlowError::NotFound)?;
        let send = async |att: &Attachment, body: Option<Bytes>| {
            let req = self.request(method.clone(), url, &att.headers, body)?;
            vendor::send(&self.http, step, req, self.timeout).await
        };
        let used = cred.attach().await?;
        let first = send(&used, body.clone()).await?;
        credentials::replay_on_rejection(
            cred,
            &used,
            first,
            |f: Fetched| async move { (f.status == StatusCode::UNAUTHORIZED, f) },
            Some(async |fresh: Attachment| send(&fresh, body).await),
        )
        .await
    }

    /// Decide one delivery for approval, at most once per interview.
    async fn approve(&self, event: &IncodeEvent) -> Result<Response<Body>, FlowError> {
        let id = &event.interview_id;
        if event.onboarding_status != FINISHED {
            return Ok(decision(
                id,
                "ignored",
                &format!(
                    "onboardingStatus {} is not {FINISHED}; nothing to approve",
                    event.onboarding_status
                ),
                false,
            ));
        }
        match self.store.claim_approval(id).await? {
            Claim::Taken(d) => {
                tracing::info!(interview_id = %id, state = %d.state, "incode approval already decided; not repeated");
                Ok(decision(id, &d.state, &d.reason, true))
            }
            Claim::Won => match self.decide(id).await {
                Ok((approved, reason)) => {
                    self.store.finish_approval(id, approved, &reason).await?;
                    tracing::info!(interview_id = %id, approved, reason = %reason, "incode approval decided");
                    let state = if approved { "approved" } else { "not_approved" };
                    Ok(decision(id, state, &reason, false))
                }
                Err(e) => {
                    // Leave no claim behind: Incode redelivers on a non-200, and that delivery should decide.
                    self.store.release_approval(id).await?;
                    Err(e)
                }
            },
        }
    }

    /// Fetch the scores and approve when the overall status is OK. Returns (approved, reason).
    async fn decide(&self, id: &str) -> Result<(bool, String), FlowError> {
        let enc: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        let step = Step {
            vendor: VENDOR,
            name: "omni/get/score",
        };
        let f = self
            .admin_call(
                step,
                Method::GET,
                &self.url(&format!("omni/get/score?id={enc}")),
                None,
            )
            .await?;
        let scores = vendor::json_ok(step, &f)?;
        let status = scores
            .get("overall")
            .and_then(|o| o.get("status"))
            .and_then(Value::as_str)
            .ok_or_else(|| step.fail(vendor::VendorFailure::Missing("overall.status")))?;
        if status != "OK" {
            let shown: String = status
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(32)
                .collect();
            return Ok((false, format!("overall score status is {shown}, not OK")));
        }
        let step = Step {
            vendor: VENDOR,
            name: "omni/process/approve",
        };
        let f = self
            .admin_call(
                step,
                Method::POST,
                &self.url(&format!("omni/process/approve?interviewId={enc}")),
                Some(Bytes::from_static(b"{}")),
            )
            .await?;
        let answer = vendor::json_ok(step, &f)?;
        if answer.get("success").and_then(Value::as_bool) == Some(false) {
            return Ok((
                false,
                "overall score status is OK but Incode did not approve (success: false)".into(),
            ));
        }
        Ok((true, "overall score status is OK; identity approved".into()))
    }
}

fn decision(id: &str, state: &str, reason: &str, repeated: bool) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({
            "success": true,
            "interviewId": id,
            "approved": state == "approved",
            "decision": state,
            "reason": reason,
            "repeated": repeated,
        }),
    )
}

fn bad_url() -> FlowError {
    FlowError::Invalid {
        detail: "request cannot be addressed to the vendor".into(),
    }
}

/// A session call's answer: 2xx passes through as is; 4xx is relayed as a problem with the vendor's status and code
/// but not its body (error bodies may quote PII); anything else is a vendor failure.
fn relay(step: Step<'_>, f: Fetched) -> Result<Response<Body>, FlowError> {
    if f.status.is_success() {
        let mut rsp = Response::new(body::full(f.body));
        *rsp.status_mut() = f.status;
        let ct = f
            .headers
            .get(CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("application/json"));
        rsp.headers_mut().insert(CONTENT_TYPE, ct);
        return Ok(rsp);
    }
    if f.status.is_client_error() {
        return Err(FlowError::VendorRefused {
            vendor: VENDOR,
            step: step.name.to_owned(),
            status: f.status,
            vendor_code: vendor::vendor_code(&f.body),
        });
    }
    Err(step.status_failure(&f))
}
