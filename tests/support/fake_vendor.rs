//! A fake vendor on 127.0.0.1:0: an OAuth2 token endpoint (`POST /oauth/token`, TropiPay-style quirks on request), an
//! Incode-style login (`POST /executive/log-in`) and an API that accepts only live tokens it issued. It counts grants,
//! records what it was sent, and can be slow, held, failing, or answer garbage.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How the token and login endpoints answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// Issue tokens.
    Ok,
    /// Issue tokens after a delay.
    Slow(Duration),
    /// Wait until [`FakeVendor::release`], then issue.
    Hold,
    /// 500 with a JSON error.
    Fail500,
    /// 200 with an HTML page.
    Html,
    /// 200, `application/json`, but not JSON.
    NotJson,
    /// 200 JSON without `access_token` / `token`.
    MissingFields,
    /// 200 JSON with an empty token.
    EmptyToken,
    /// Hand back the last token issued again, with a fresh-looking `expires_in` (a server-side cache gone stale).
    SameToken,
}

/// How `expires_in` is written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Expires {
    /// Seconds from now (RFC 6749).
    Seconds,
    /// Absolute Unix time (TropiPay v2).
    UnixTime,
    /// A duration string, `"<n>s"`.
    DurationString,
    /// A far-away duration string (`"1d"`): only the JWT `exp` tells the truth.
    FarDuration,
}

/// One request to the token or login endpoint.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Path.
    pub path: String,
    /// Method.
    pub method: Method,
    /// Headers.
    pub headers: HeaderMap,
    /// The raw body.
    pub body: Bytes,
    /// Parameters (form or JSON), strings only.
    pub params: BTreeMap<String, String>,
}

impl Grant {
    /// `grant_type`, or "" when absent.
    pub fn grant_type(&self) -> &str {
        self.params.get("grant_type").map_or("", String::as_str)
    }
}

/// One API request.
#[derive(Clone, Debug)]
pub struct ApiSeen {
    /// Path and query.
    pub uri: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Status answered.
    pub status: u16,
}

#[derive(Clone)]
struct Settings {
    ttl: Duration,
    expires: Expires,
    jwt: bool,
    refresh_tokens: bool,
    json_only: bool,
    refuse_refresh: bool,
    client: (String, String),
    login: Option<(String, String, String)>,
    prefix: String,
    one_live_token: bool,
}

struct Issued {
    token: String,
    expires: Instant,
    revoked: bool,
}

#[derive(Default)]
struct Log {
    grants: Vec<Grant>,
    api: Vec<ApiSeen>,
    issued: Vec<Issued>,
    refresh_tokens: Vec<String>,
}

struct Shared {
    settings: Settings,
    mode: Mutex<Mode>,
    gate: watch::Sender<bool>,
    log: Mutex<Log>,
    n: AtomicUsize,
    expired_seen: AtomicUsize,
    reject_next: AtomicUsize,
}

/// Builder: `fake_vendor::new().ttl(..).run().await`.
pub struct Builder {
    s: Settings,
}

/// A builder with defaults: 1 h opaque tokens, `expires_in` in seconds, form or JSON accepted, client `id`/`secret`.
pub fn new() -> Builder {
    Builder {
        s: Settings {
            ttl: Duration::from_secs(3600),
            expires: Expires::Seconds,
            jwt: false,
            refresh_tokens: false,
            json_only: false,
            refuse_refresh: false,
            client: ("id".into(), "secret".into()),
            login: None,
            prefix: "tok".into(),
            one_live_token: false,
        },
    }
}

impl Builder {
    /// Token lifetime.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.s.ttl = ttl;
        self
    }
    /// How `expires_in` is written.
    pub fn expires(mut self, e: Expires) -> Self {
        self.s.expires = e;
        self
    }
    /// Issue JWTs (unsigned-looking HS256 shape with `exp`).
    pub fn jwt(mut self) -> Self {
        self.s.jwt = true;
        self
    }
    /// Return refresh tokens and accept the refresh_token grant.
    pub fn refresh_tokens(mut self) -> Self {
        self.s.refresh_tokens = true;
        self
    }
    /// Reject token requests that are not JSON (TropiPay documents JSON).
    pub fn json_only(mut self) -> Self {
        self.s.json_only = true;
        self
    }
    /// Refuse every refresh_token grant with `invalid_grant`.
    pub fn refuse_refresh(mut self) -> Self {
        self.s.refuse_refresh = true;
        self
    }
    /// The client id and secret accepted.
    pub fn client(mut self, id: &str, secret: &str) -> Self {
        self.s.client = (id.into(), secret.into());
        self
    }
    /// Accept Incode-style logins with this API key, email and password.
    pub fn login(mut self, api_key: &str, email: &str, password: &str) -> Self {
        self.s.login = Some((api_key.into(), email.into(), password.into()));
        self
    }
    /// Keep one live token per client: each grant revokes every token issued before (vendors that do this turn
    /// one token per replica into a revocation thrash).
    pub fn one_live_token(mut self) -> Self {
        self.s.one_live_token = true;
        self
    }
    /// Prefix of issued tokens (so log checks can find them).
    pub fn token_prefix(mut self, p: &str) -> Self {
        self.s.prefix = p.into();
        self
    }

    /// Start serving.
    pub async fn run(self) -> FakeVendor {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (gate, _) = watch::channel(true);
        let shared = Arc::new(Shared {
            settings: self.s,
            mode: Mutex::new(Mode::Ok),
            gate,
            log: Mutex::default(),
            n: AtomicUsize::new(0),
            expired_seen: AtomicUsize::new(0),
            reject_next: AtomicUsize::new(0),
        });
        let sh = shared.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let sh = sh.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let sh = sh.clone();
                        async move { Ok::<_, Infallible>(answer(&sh, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        FakeVendor { addr, shared }
    }
}

/// A running fake vendor.
#[derive(Clone)]
pub struct FakeVendor {
    /// Its address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeVendor {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The token endpoint URL.
    pub fn token_url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }
    /// The login URL.
    pub fn login_url(&self) -> String {
        format!("http://{}/executive/log-in", self.addr)
    }
    /// Change how the token endpoints answer; leaving `Hold` opens the gate.
    pub fn set_mode(&self, m: Mode) {
        *self.shared.mode.lock().expect("lock") = m;
        self.shared.gate.send_replace(m != Mode::Hold);
    }
    /// Let held token requests through (and answer normally from now on).
    pub fn release(&self) {
        self.set_mode(Mode::Ok);
    }
    /// Token and login requests received so far (answered or not).
    pub fn grants(&self) -> usize {
        self.shared.log.lock().expect("lock").grants.len()
    }
    /// Every token and login request.
    pub fn grant_log(&self) -> Vec<Grant> {
        self.shared.log.lock().expect("lock").grants.clone()
    }
    /// Every API request.
    pub fn api_log(&self) -> Vec<ApiSeen> {
        self.shared.log.lock().expect("lock").api.clone()
    }
    /// Tokens issued, in order.
    pub fn issued(&self) -> Vec<String> {
        let log = self.shared.log.lock().expect("lock");
        log.issued.iter().map(|i| i.token.clone()).collect()
    }
    /// Refresh tokens issued, in order.
    pub fn refresh_tokens_issued(&self) -> Vec<String> {
        self.shared.log.lock().expect("lock").refresh_tokens.clone()
    }
    /// Revoke every token issued so far: the API answers 401 to them.
    pub fn revoke_all(&self) {
        for i in &mut self.shared.log.lock().expect("lock").issued {
            i.revoked = true;
        }
    }
    /// The API answers 401 to the next `n` requests, whatever token they carry.
    pub fn reject_next(&self, n: usize) {
        self.shared.reject_next.store(n, Ordering::SeqCst);
    }
    /// API requests that carried an expired token.
    pub fn expired_tokens_seen(&self) -> usize {
        self.shared.expired_seen.load(Ordering::SeqCst)
    }
}

fn json_rsp(status: StatusCode, v: &Value) -> Response<credgate::body::Body> {
    let mut r = Response::new(credgate::body::full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("ct"));
    r
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn parse_params(headers: &HeaderMap, body: &[u8]) -> (bool, BTreeMap<String, String>) {
    let is_json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let params = if is_json {
        serde_json::from_slice::<serde_json::Map<String, Value>>(body)
            .map(|m| {
                m.into_iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        url::form_urlencoded::parse(body).into_owned().collect()
    };
    (is_json, params)
}

async fn answer(sh: &Shared, req: Request<Incoming>) -> Response<credgate::body::Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    if parts.method == Method::POST && (path == "/oauth/token" || path == "/executive/log-in") {
        let (is_json, params) = parse_params(&parts.headers, &body);
        sh.log.lock().expect("lock").grants.push(Grant {
            path: path.clone(),
            method: parts.method.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
            params: params.clone(),
        });
        let mode = *sh.mode.lock().expect("lock");
        match mode {
            Mode::Hold => {
                let mut rx = sh.gate.subscribe();
                let _ = rx.wait_for(|open| *open).await;
            }
            Mode::Slow(d) => tokio::time::sleep(d).await,
            _ => {}
        }
        let mode = match *sh.mode.lock().expect("lock") {
            Mode::Hold | Mode::Slow(_) => Mode::Ok,
            m => m,
        };
        match mode {
            Mode::Fail500 => {
                return json_rsp(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"error": "server_error"}),
                );
            }
            Mode::Html => {
                let mut r = Response::new(credgate::body::full(
                    "<html><body><h1>502 Bad Gateway</h1></body></html>",
                ));
                r.headers_mut()
                    .insert("content-type", "text/html".parse().expect("ct"));
                return r;
            }
            Mode::NotJson => {
                let mut r = Response::new(credgate::body::full("access_token=oops; not json"));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().expect("ct"));
                return r;
            }
            Mode::MissingFields => {
                return json_rsp(
                    StatusCode::OK,
                    &json!({"token_type": "Bearer", "expires_in": 60}),
                );
            }
            _ => {}
        }
        if path == "/executive/log-in" {
            return login(sh, &parts.headers, &body, mode == Mode::EmptyToken);
        }
        return token(sh, &parts.headers, is_json, &params, mode);
    }
    api(sh, parts.uri.to_string(), parts.headers, body)
}

fn mint(sh: &Shared) -> (String, Instant) {
    let n = sh.n.fetch_add(1, Ordering::SeqCst) + 1;
    let s = &sh.settings;
    let exp_unix = unix_now() + s.ttl.as_secs().max(1);
    let token = if s.jwt {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            e.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            e.encode(
                json!({"credentialName": "fake", "id": n, "iat": unix_now(), "exp": exp_unix})
                    .to_string()
            ),
            e.encode(format!("sig-{}-{n}", s.prefix))
        )
    } else {
        format!("{}-{n}-{}", s.prefix, uuid::Uuid::new_v4().simple())
    };
    let expires = Instant::now() + s.ttl;
    let mut log = sh.log.lock().expect("lock");
    if s.one_live_token {
        for i in &mut log.issued {
            i.revoked = true;
        }
    }
    log.issued.push(Issued {
        token: token.clone(),
        expires,
        revoked: false,
    });
    (token, expires)
}

fn token(
    sh: &Shared,
    headers: &HeaderMap,
    is_json: bool,
    params: &BTreeMap<String, String>,
    mode: Mode,
) -> Response<credgate::body::Body> {
    let empty = mode == Mode::EmptyToken;
    let s = &sh.settings;
    if s.json_only && !is_json {
        return json_rsp(
            StatusCode::BAD_REQUEST,
            &json!({"error": "invalid_request"}),
        );
    }
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(a, b)| (a.to_owned(), b.to_owned())));
    let (id, secret) = basic.unwrap_or_else(|| {
        (
            params.get("client_id").cloned().unwrap_or_default(),
            params.get("client_secret").cloned().unwrap_or_default(),
        )
    });
    if (id, secret) != s.client {
        return json_rsp(
            StatusCode::UNAUTHORIZED,
            &json!({"error": "invalid_client", "error_description": "Credential not found"}),
        );
    }
    match params.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some("refresh_token") => {
            let known = params.get("refresh_token").is_some_and(|rt| {
                sh.log
                    .lock()
                    .expect("lock")
                    .refresh_tokens
                    .iter()
                    .any(|k| k == rt)
            });
            if s.refuse_refresh || !known {
                return json_rsp(StatusCode::BAD_REQUEST, &json!({"error": "invalid_grant"}));
            }
        }
        _ => {
            return json_rsp(
                StatusCode::BAD_REQUEST,
                &json!({"error": "unsupported_grant_type"}),
            );
        }
    }
    let last = sh
        .log
        .lock()
        .expect("lock")
        .issued
        .last()
        .map(|i| i.token.clone());
    let tok = match last {
        Some(t) if mode == Mode::SameToken => t,
        _ => mint(sh).0,
    };
    let expires_in = match s.expires {
        Expires::Seconds => json!(s.ttl.as_secs()),
        Expires::UnixTime => json!(unix_now() + s.ttl.as_secs()),
        Expires::DurationString => json!(format!("{}s", s.ttl.as_secs())),
        Expires::FarDuration => json!("1d"),
    };
    let mut doc = json!({
        "access_token": if empty { String::new() } else { tok },
        "token_type": "Bearer",
        "expires_in": expires_in,
    });
    if let Some(scope) = params.get("scope") {
        doc["scope"] = json!(scope);
    }
    if s.refresh_tokens {
        let rt = format!("{}-refresh-{}", s.prefix, uuid::Uuid::new_v4().simple());
        sh.log.lock().expect("lock").refresh_tokens.push(rt.clone());
        doc["refresh_token"] = json!(rt);
    }
    json_rsp(StatusCode::OK, &doc)
}

fn login(
    sh: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    empty: bool,
) -> Response<credgate::body::Body> {
    let Some((key, email, password)) = &sh.settings.login else {
        return json_rsp(StatusCode::NOT_FOUND, &json!({"error": "no login"}));
    };
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if h("x-api-key") != key || h("api-version") != "1.0" {
        return json_rsp(StatusCode::UNAUTHORIZED, &json!({"error": "bad api key"}));
    }
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return json_rsp(StatusCode::BAD_REQUEST, &json!({"error": "not json"}));
    };
    if doc != json!({"email": email, "password": password}) {
        return json_rsp(StatusCode::UNAUTHORIZED, &json!({"error": "bad login"}));
    }
    let (tok, _) = mint(sh);
    json_rsp(
        StatusCode::OK,
        &json!({"token": if empty { String::new() } else { tok }}),
    )
}

fn api(
    sh: &Shared,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
) -> Response<credgate::body::Body> {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| {
            headers
                .get("x-incode-hardware-id")
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("")
        .to_owned();
    let now = Instant::now();
    let forced = sh
        .reject_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if forced {
        StatusCode::UNAUTHORIZED
    } else {
        let log = sh.log.lock().expect("lock");
        match log.issued.iter().find(|i| i.token == presented) {
            Some(i) if i.revoked => StatusCode::UNAUTHORIZED,
            Some(i) if i.expires <= now => {
                sh.expired_seen.fetch_add(1, Ordering::SeqCst);
                StatusCode::UNAUTHORIZED
            }
            Some(_) => StatusCode::OK,
            None => StatusCode::UNAUTHORIZED,
        }
    };
    sh.log.lock().expect("lock").api.push(ApiSeen {
        uri,
        headers,
        body: body.clone(),
        status: status.as_u16(),
    });
    if status == StatusCode::OK {
        json_rsp(status, &json!({"ok": true, "body_len": body.len()}))
    } else {
        json_rsp(
            status,
            &json!({"error": {"msg": "Failed to authenticate token!"}}),
        )
    }
}
