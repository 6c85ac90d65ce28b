//! The admin listener: `/healthz` (process up), `/readyz` (every dependency ready, e.g. issuer keys loaded),
//! `/metrics` (OpenMetrics text), `GET /admin/credentials` and `GET /admin/issuers` (token and key state) and their
//! `POST .../{name}/refresh` (renew or refetch now), `GET /admin/config` (the config in force, secrets redacted) and
//! `POST /admin/reload`. Plain HTTP; bind it to loopback. Exposes no secret.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use secrecy::SecretString;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use prometheus_client::encoding::{EncodeLabelSet, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::body::{self, Body};
use crate::gateway::Gateway;
use crate::metrics;
use crate::problem::Problem;

/// How long `POST /admin/reload` waits for the reload it asked for.
const RELOAD_WAIT: Duration = Duration::from_secs(60);

/// A reload asked for on the admin API, answered by whoever drives reloads (see `server::Running::reload`).
#[derive(Debug)]
pub struct ReloadRequest {
    reply: oneshot::Sender<ReloadRecord>,
}

impl ReloadRequest {
    /// Tell the asker how the reload went.
    pub fn answer(self, record: ReloadRecord) {
        let _ = self.reply.send(record);
    }
}

/// How a reload ended, as the admin API and `/readyz` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadRecord {
    /// `"ok"` or `"error"`.
    pub result: &'static str,
    /// When, in seconds since the epoch.
    pub at: u64,
    /// What changed (listeners), or the error naming the key.
    pub detail: String,
    /// The generation of the config in force: 1 at start, one more per reload put in force.
    pub generation: u64,
}

/// What the admin API knows beyond the gateway in force: how to ask for a reload and how the last one went.
#[derive(Debug)]
pub(crate) struct Control {
    requests: mpsc::Sender<ReloadRequest>,
    state: Mutex<(u64, Option<ReloadRecord>)>,
}

impl Control {
    /// Reload requests go to `requests`.
    pub(crate) fn new(requests: mpsc::Sender<ReloadRequest>) -> Self {
        Self {
            requests,
            state: Mutex::new((1, None)),
        }
    }

    /// Record a reload's outcome: the notes of one put in force, or the error of one refused.
    pub(crate) fn reloaded(&self, outcome: Result<Vec<String>, String>) -> ReloadRecord {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (result, detail) = match outcome {
            Ok(notes) => {
                st.0 += 1;
                ("ok", notes.join("; "))
            }
            Err(e) => ("error", e),
        };
        let record = ReloadRecord {
            result,
            at: crate::unix_time::now_secs().try_into().unwrap_or(0),
            detail,
            generation: st.0,
        };
        st.1 = Some(record.clone());
        record
    }

    fn snapshot(&self) -> (u64, Option<ReloadRecord>) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Answer one admin request.
pub(crate) async fn handle<B>(
    gw: Arc<Gateway>,
    control: Arc<Control>,
    req: Request<B>,
) -> Response<Body> {
    let path = req.uri().path();
    let open = path == "/healthz" || path == "/readyz";
    if !open
        && let Some(token) = gw.admin_token()
        && !presents(&req, token)
    {
        let mut rsp = Problem::new(
            StatusCode::UNAUTHORIZED,
            "admin_token_required",
            "Admin token required",
        )
        .into_response("-");
        rsp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"credgate-admin\""),
        );
        return rsp;
    }
    if path == "/admin/reload" {
        if req.method() != Method::POST {
            return method_not_allowed("POST");
        }
        return reload(&control).await;
    }
    answer(&gw, &control, &req)
}

/// Whether `req` carries `Authorization: Bearer <token>` (compared in constant time).
fn presents<B>(req: &Request<B>, token: &SecretString) -> bool {
    req.headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|t| crate::config::secret::constant_time_eq(token, t))
}

/// `POST /admin/reload`: reload and answer how it went (422 with the error when the running config stays).
async fn reload(control: &Control) -> Response<Body> {
    let (reply, answered) = oneshot::channel();
    let unavailable = |detail: &str| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_unavailable",
            "Reload not available",
        )
        .detail(detail.to_owned())
        .into_response("-")
    };
    if control.requests.try_send(ReloadRequest { reply }).is_err() {
        return unavailable("a reload is already queued, or this gateway does not reload");
    }
    match tokio::time::timeout(RELOAD_WAIT, answered).await {
        Ok(Ok(record)) if record.result == "ok" => text(
            StatusCode::OK,
            json!({ "reload": record }).to_string(),
            "application/json",
        ),
        Ok(Ok(record)) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reload_failed",
            "Reload failed; the running config stays",
        )
        .detail(record.detail)
        .into_response("-"),
        Ok(Err(_)) | Err(_) => unavailable("the reload did not finish"),
    }
}

fn answer<B>(gw: &Gateway, control: &Control, req: &Request<B>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/admin/config" if req.method() == Method::GET => {
            let (generation, last) = control.snapshot();
            let doc = json!({
                "generation": generation,
                "version": gw.config_version(),
                "source": gw.config_source(),
                "last_reload": last,
                "effective": gw.config_shown(),
            });
            text(StatusCode::OK, doc.to_string(), "application/json")
        }
        "/admin/config" => method_not_allowed("GET"),
        "/readyz" => {
            let mut checks = gw.readiness();
            // A refused reload leaves the gateway serving the previous config: ready, and saying so.
            if let (_, Some(last)) = control.snapshot()
                && last.result == "error"
            {
                checks.push((
                    "config".to_owned(),
                    true,
                    format!(
                        "last reload failed, previous config in force: {}",
                        last.detail
                    ),
                ));
            }
            let ready = checks.iter().all(|(_, ok, _)| *ok);
            let doc = json!({
                "ready": ready,
                "checks": checks.iter().map(|(n, ok, d)| json!({"name": n, "ready": ok, "detail": d})).collect::<Vec<_>>(),
            });
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, doc.to_string(), "application/json")
        }
        "/metrics" => {
            let mut out = String::new();
            // Writing to a String cannot fail.
            let _ = text::encode_registry(&mut out, &route_responses(gw));
            let _ = text::encode_registry(&mut out, &state_gauges(gw));
            gw.metrics.render(&mut out);
            text(StatusCode::OK, out, metrics::CONTENT_TYPE)
        }
        "/admin/credentials" if req.method() == Method::GET => {
            let doc: Vec<_> = gw
                .credentials
                .iter()
                .map(|(name, c)| {
                    let mut v = serde_json::to_value(c.status()).unwrap_or_default();
                    v["name"] = json!(name);
                    v
                })
                .collect();
            text(
                StatusCode::OK,
                json!({ "credentials": doc }).to_string(),
                "application/json",
            )
        }
        "/admin/credentials" => method_not_allowed("GET"),
        "/admin/issuers" if req.method() == Method::GET => text(
            StatusCode::OK,
            json!({ "issuers": gw.caller_auth.issuer_status() }).to_string(),
            "application/json",
        ),
        "/admin/issuers" => method_not_allowed("GET"),
        p if p.starts_with("/admin/issuers/") => match p
            .strip_prefix("/admin/issuers/")
            .and_then(|rest| rest.strip_suffix("/refresh"))
        {
            Some(_) if req.method() != Method::POST => method_not_allowed("POST"),
            Some(name) => refresh_issuer(gw, name),
            None => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
        },
        p => match p
            .strip_prefix("/admin/credentials/")
            .and_then(|rest| rest.strip_suffix("/refresh"))
        {
            Some(_) if req.method() != Method::POST => method_not_allowed("POST"),
            Some(name) => refresh(gw, name),
            None => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
        },
    }
}

/// `POST /admin/credentials/{name}/refresh`: start a renewal (joining one in flight) and answer at once.
fn refresh(gw: &Gateway, name: &str) -> Response<Body> {
    match gw.credentials.get(name) {
        None => Problem::new(
            StatusCode::NOT_FOUND,
            "unknown_credential",
            "No such credential",
        )
        .into_response("-"),
        Some(c) if !c.refresh_now() => Problem::new(
            StatusCode::CONFLICT,
            "nothing_to_refresh",
            "This credential has no token to renew",
        )
        .detail(format!("{name} is {}", c.status().kind))
        .into_response("-"),
        Some(_) => text(
            StatusCode::ACCEPTED,
            json!({ "name": name, "refreshing": true }).to_string(),
            "application/json",
        ),
    }
}

/// `POST /admin/issuers/{name}/refresh`: refetch the JWKS (joining a fetch in flight) and answer at once.
fn refresh_issuer(gw: &Gateway, name: &str) -> Response<Body> {
    match gw.caller_auth.refresh_issuer(name) {
        None => Problem::new(StatusCode::NOT_FOUND, "unknown_issuer", "No such issuer")
            .into_response("-"),
        Some(false) => Problem::new(
            StatusCode::CONFLICT,
            "nothing_to_refresh",
            "This issuer has no JWKS to refetch",
        )
        .into_response("-"),
        Some(true) => text(
            StatusCode::ACCEPTED,
            json!({ "name": name, "refreshing": true }).to_string(),
            "application/json",
        ),
    }
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut rsp = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
    )
    .into_response("-");
    rsp.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    rsp
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CredentialLabels {
    credential: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
}

/// Gauges read from live state at each scrape: seconds until each cached token expires (absent while a credential
/// has none) and the age of each issuer's JWKS, the two figures to alert on before callers notice.
fn state_gauges(gw: &Gateway) -> Registry {
    let expires = Family::<CredentialLabels, Gauge>::default();
    for (name, c) in gw.credentials.iter() {
        if let Some(secs) = c.status().token.and_then(|t| t.expires_in_secs) {
            expires
                .get_or_create(&CredentialLabels {
                    credential: name.to_owned(),
                })
                .set(i64::try_from(secs).unwrap_or(i64::MAX));
        }
    }
    let jwks_age = Family::<IssuerLabels, Gauge>::default();
    for doc in gw.caller_auth.issuer_status() {
        if let (Some(name), Some(age)) = (doc["name"].as_str(), doc["jwks_age_secs"].as_u64()) {
            jwks_age
                .get_or_create(&IssuerLabels {
                    issuer: name.to_owned(),
                })
                .set(i64::try_from(age).unwrap_or(i64::MAX));
        }
    }
    let mut reg = Registry::default();
    reg.register(
        "credgate_token_expires_in_seconds",
        "Seconds until the cached token of each credential expires.",
        expires,
    );
    reg.register(
        "credgate_jwks_age_seconds",
        "Seconds since each issuer's JWKS was last fetched successfully.",
        jwks_age,
    );
    reg
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResponseLabels {
    route: String,
    class: &'static str,
}

/// `credgate_responses_total` from the per-route stats, which live on the hot path as plain atomics: a snapshot
/// per scrape, so a scrape renders them with the same encoder as the registry.
fn route_responses(gw: &Gateway) -> Registry {
    const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let family = Family::<ResponseLabels, Counter>::default();
    for r in gw.routes.iter() {
        for (i, class) in CLASSES.into_iter().enumerate() {
            let n = r.stats.count(i + 1);
            if n > 0 {
                family
                    .get_or_create(&ResponseLabels {
                        route: r.name.clone(),
                        class,
                    })
                    .inc_by(n);
            }
        }
    }
    let mut reg = Registry::default();
    reg.register(
        "credgate_responses",
        "Responses by route and status class.",
        family,
    );
    reg
}

fn text(status: StatusCode, body: String, ctype: &'static str) -> Response<Body> {
    let mut rsp = Response::new(body::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    rsp
}
