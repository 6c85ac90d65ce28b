//! The demo's sandbox token endpoints on loopback: a TropiPay-style OAuth2 endpoint (JSON body, client credentials
//! in the body, `expires_in` as a Unix time, a JWT-shaped token, refresh tokens) and an Incode-style admin login
//! (`POST /executive/log-in` with `x-api-key`, `api-version: 1.0`, JSON `{email, password}` → `{token}`), plus the
//! config and curl lines that show their tokens injected. Sandbox values only; nothing here is anyone's secret.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::body::{self, Body};

/// The sandbox TropiPay-style client id.
pub const TROPIPAY_CLIENT_ID: &str = "demo-tropipay-client";
/// The sandbox TropiPay-style client secret.
pub const TROPIPAY_CLIENT_SECRET: &str = "demo-tropipay-secret";
/// The sandbox Incode-style API key.
pub const INCODE_API_KEY: &str = "demo-incode-api-key";
/// The sandbox Incode-style admin email.
pub const INCODE_EMAIL: &str = "admin@demo.invalid";
/// The sandbox Incode-style admin password.
pub const INCODE_PASSWORD: &str = "demo-admin-password";
/// Lifetime of sandbox tokens, in seconds: short, so that renewals show in the log.
const TTL: u64 = 120;

/// Start the sandbox token endpoints; returns their address.
pub async fn spawn_sandbox() -> Result<SocketAddr, std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req| async move { Ok::<_, Infallible>(answer(req).await) });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Credentials and routes for the demo config: `/tropipay/` and `/incode-admin/` to the echo upstream.
pub fn config_toml(sandbox: SocketAddr) -> String {
    format!(
        r#"
[credentials.tropipay_sandbox]
kind = "oauth2_client_credentials"
allowed_hosts = ["127.0.0.1"]
token_url = "http://{sandbox}/api/v2/access/token"
client_id = "{TROPIPAY_CLIENT_ID}"
client_secret = "{TROPIPAY_CLIENT_SECRET}"
scopes = ["ALLOW_GET_BALANCE"]
client_auth = "request_body"
request_format = "json"
expires_in = "auto"
refresh_before = "30s"

[credentials.incode_admin_sandbox]
kind = "login"
allowed_hosts = ["127.0.0.1"]
url = "http://{sandbox}/executive/log-in"
request_headers = {{ "x-api-key" = "{INCODE_API_KEY}", "api-version" = "1.0" }}
body = {{ email = "{INCODE_EMAIL}", password = "{INCODE_PASSWORD}" }}
ttl = "24h"
headers = {{ "X-Incode-Hardware-Id" = "{{token}}", "x-api-key" = "{INCODE_API_KEY}", "api-version" = "1.0" }}

[[routes]]
name = "tropipay"
path_prefix = "/tropipay/"
upstream = "echo"
strip_prefix = true
credential = "tropipay_sandbox"
auth = "none"

[[routes]]
name = "incode-admin"
path_prefix = "/incode-admin/"
upstream = "echo"
strip_prefix = true
credential = "incode_admin_sandbox"
auth = "none"
"#
    )
}

/// The curl lines for the token routes.
pub fn instructions(ca: &str, gateway: SocketAddr) -> String {
    format!(
        "\nToken credentials: the gateway fetches a TropiPay-style OAuth2 token (JSON body, expires_in as a Unix time)\n\
         and an Incode-style admin login token from sandbox endpoints on loopback, caches and renews them, and injects\n\
         them (Authorization: Bearer ...; X-Incode-Hardware-Id + x-api-key + api-version):\n\n  \
         curl --cacert {ca} https://{gateway}/tropipay/users/balance\n  \
         curl --cacert {ca} https://{gateway}/incode-admin/omni/get/score?id=demo\n"
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn json_answer(status: StatusCode, v: &Value) -> Response<Body> {
    let mut rsp = Response::new(body::full(v.to_string()));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rsp
}

/// A JWT-shaped token with `exp`, as TropiPay issues (the signature is a placeholder: nobody verifies it here).
fn sandbox_jwt(name: &str, exp: u64) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.{}",
        e.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        e.encode(
            json!({"credentialName": name, "id": uuid::Uuid::new_v4().to_string(), "iat": unix_now(), "exp": exp})
                .to_string()
        ),
        e.encode(b"sandbox-signature")
    )
}

async fn answer(req: Request<Incoming>) -> Response<Body> {
    let (parts, incoming) = req.into_parts();
    let body = incoming
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let field = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or("");
    match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/api/v2/access/token") => {
            if field("client_id") != TROPIPAY_CLIENT_ID
                || field("client_secret") != TROPIPAY_CLIENT_SECRET
            {
                return json_answer(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "invalid_client", "error_description": "Credential not found"}),
                );
            }
            if !matches!(field("grant_type"), "client_credentials" | "refresh_token") {
                return json_answer(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "unsupported_grant_type"}),
                );
            }
            let exp = unix_now() + TTL;
            json_answer(
                StatusCode::OK,
                &json!({
                    "access_token": sandbox_jwt("demo", exp),
                    "refresh_token": base64::engine::general_purpose::STANDARD
                        .encode(format!("demo:{}", uuid::Uuid::new_v4().simple())),
                    "token_type": "Bearer",
                    "expires_in": exp,
                    "scope": field("scope"),
                }),
            )
        }
        (&Method::POST, "/executive/log-in") => {
            let h = |n: &str| {
                parts
                    .headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
            };
            if h("x-api-key") != INCODE_API_KEY || h("api-version") != "1.0" {
                return json_answer(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": "invalid api key"}),
                );
            }
            if field("email") != INCODE_EMAIL || field("password") != INCODE_PASSWORD {
                return json_answer(StatusCode::UNAUTHORIZED, &json!({"error": "bad login"}));
            }
            json_answer(
                StatusCode::OK,
                &json!({"token": sandbox_jwt("incode-admin", unix_now() + 24 * 3600)}),
            )
        }
        _ => json_answer(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}
