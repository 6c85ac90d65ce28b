//! The vendor flows in `credgate demo`: sandbox Incode and Citadel APIs on loopback answering the vendors' wire shapes
//! (TeleSign needs no vendor: the gateway mints its tokens), the `[flows]` config that points at them, and the curl
//! commands that show each flow. Sandbox values only; nothing here is anyone's secret.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::body::{self, Body};

const INCODE_API_KEY: &str = "demo-incode-api-key";
const INCODE_ADMIN_TOKEN: &str = "demo-incode-admin-token";
/// The demo's Incode webhook secret, sent by the printed curl commands.
pub const WEBHOOK_SECRET: &str = "demo-webhook-secret";
const CITADEL_CLIENT_ID: &str = "demo-citadel-client";
const CITADEL_SECRET: &str = "sandbox-demo-secret";
/// Base64 of a sandbox TeleSign key.
const TELESIGN_KEY: &str = "ZGVtby10ZWxlc2lnbi1rZXktYnl0ZXMtZm9yLWhtYWM=";

/// Where the sandbox vendors listen.
#[derive(Debug, Clone, Copy)]
pub struct Sandboxes {
    /// Sandbox Incode.
    pub incode: SocketAddr,
    /// Sandbox Citadel.
    pub citadel: SocketAddr,
}

/// Start the sandbox vendors.
pub async fn spawn() -> Result<Sandboxes, std::io::Error> {
    let sessions = Arc::new(AtomicUsize::new(0));
    let incode = serve(Arc::new(move |m, p, q, b| incode(&sessions, m, p, q, b))).await?;
    let citadel = serve(Arc::new(|m, p, _, b| citadel(m, p, b))).await?;
    Ok(Sandboxes { incode, citadel })
}

/// The `[credentials]`, `[flows]` and `[[routes]]` config for the flows, with the database in `dir`.
pub fn config(s: &Sandboxes, dir: &Path) -> String {
    format!(
        r#"
[credentials.incode_admin]
kind = "static"
allowed_hosts = ["127.0.0.1"]
headers = {{ "X-Incode-Hardware-Id" = "{INCODE_ADMIN_TOKEN}", "x-api-key" = "{INCODE_API_KEY}", "api-version" = "1.0" }}

[flows]
database = "{db}"

[flows.incode]
api_url = "http://{incode}"
api_key = "{INCODE_API_KEY}"
flow_id = "demo-flow"
client_id = "demo-client"
admin_credential = "incode_admin"
redirect_origins = ["https://app.example.com"]

[flows.incode.webhook]
header = "X-Webhook-Secret"
secret = "{WEBHOOK_SECRET}"
allow_ips = ["127.0.0.1", "::1"]

[flows.citadel]
api_url = "http://{citadel}/v1/"
client_id = "{CITADEL_CLIENT_ID}"
access_secret = "{CITADEL_SECRET}"
client_name = "credgate demo"
tracking_info = "demo-user"

[flows.telesign]
customer_id = "DEMO-CUSTOMER"
api_key = "{TELESIGN_KEY}"

[[routes]]
path_prefix = "/incode"
flow = "incode"
auth = "none"

[[routes]]
path_prefix = "/incode/hooks"
flow = "incode_webhooks"
auth = "none"

[[routes]]
path_prefix = "/citadel"
flow = "citadel"
auth = "none"

[[routes]]
path_prefix = "/telesign"
flow = "telesign"
auth = "none"
"#,
        db = dir.join("flows.db").display(),
        incode = s.incode,
        citadel = s.citadel,
    )
}

/// The curl commands that show the flows.
pub fn instructions(ca: &str, gateway: SocketAddr) -> String {
    let c = format!("curl --cacert {ca} https://{gateway}");
    format!(
        "Vendor flows (sandbox vendors on loopback; the gateway holds every vendor secret):\n\n  \
         {c}/incode/start\n  \
         {c}/incode/onboarding-url?redirectUrl=https://app.example.com/done\n  \
         {c}/incode/hooks/approve -H 'X-Webhook-Secret: {WEBHOOK_SECRET}' \\\n      \
         -d '{{\"interviewId\":\"iv-1\",\"onboardingStatus\":\"ONBOARDING_FINISHED\"}}'\n  \
         {c}/citadel/bridge-token\n  \
         {c}/citadel/verifications/demo-public-token\n  \
         {c}/telesign/token/+15551234567/order-1\n  \
         {c}/telesign/token-status/order-1\n"
    )
}

type Answer = (StatusCode, Value);
type Handler = Arc<dyn Fn(&Method, &str, Option<&str>, &[u8]) -> Answer + Send + Sync>;

async fn serve(handler: Handler) -> Result<SocketAddr, std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(answer(req, &handler).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn answer(req: Request<Incoming>, handler: &Handler) -> Response<Body> {
    let (parts, incoming) = req.into_parts();
    let body = incoming
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let ok_auth = |name: &str, want: &str| {
        parts
            .headers
            .get(name)
            .is_some_and(|v| v.as_bytes() == want.as_bytes())
    };
    let path = parts.uri.path();
    // The sandboxes check credentials like the real vendors do, so the demo shows the gateway attaching them.
    let refused = if path.starts_with("/v1/") {
        !(ok_auth("x-access-client-id", CITADEL_CLIENT_ID)
            && ok_auth("x-access-secret", CITADEL_SECRET))
    } else if path == "/omni/start" {
        !ok_auth("x-api-key", INCODE_API_KEY)
    } else if path.starts_with("/omni/") {
        !ok_auth("x-incode-hardware-id", INCODE_ADMIN_TOKEN)
    } else {
        parts.headers.contains_key("x-api-key")
            || !parts.headers.contains_key("x-incode-hardware-id")
    };
    let (status, doc) = if refused {
        (
            StatusCode::UNAUTHORIZED,
            json!({"status": 401, "error": "Unauthorized", "path": path}),
        )
    } else {
        handler(&parts.method, path, parts.uri.query(), &body)
    };
    let mut rsp = Response::new(body::full(doc.to_string()));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rsp
}

fn incode(
    sessions: &AtomicUsize,
    method: &Method,
    path: &str,
    query: Option<&str>,
    _body: &[u8],
) -> Answer {
    match (method.as_str(), path) {
        ("POST", "/omni/start") => {
            let n = sessions.fetch_add(1, Ordering::Relaxed) + 1;
            (
                StatusCode::OK,
                json!({"token": format!("demo-session-{n}"), "interviewId": format!("iv-{n}"),
                       "clientId": "demo-client", "env": "sandbox", "existingSession": false}),
            )
        }
        ("GET", "/0/omni/onboarding-url") => (
            StatusCode::OK,
            json!({"url": "https://demo.incode.id/0/flow/demo-client?sandbox=1"}),
        ),
        ("GET", "/omni/get/score") => {
            // Interviews whose id ends in an odd digit fail, so the demo can show both decisions.
            let odd = query.is_some_and(|q| {
                q.bytes()
                    .last()
                    .is_some_and(|b| b.is_ascii_digit() && (b - b'0') % 2 == 1)
            });
            let status = if odd { "FAIL" } else { "OK" };
            (
                StatusCode::OK,
                json!({"overall": {"value": "91.0", "status": status}}),
            )
        }
        ("POST", "/omni/process/approve") => (
            StatusCode::OK,
            json!({"success": true, "uuid": "demo-customer", "token": "demo-identity-token",
                   "totalScore": "OK", "existingCustomer": false}),
        ),
        (_, p) if p.starts_with("/0/omni/") => (
            StatusCode::OK,
            json!({"sandbox": true, "call": &p[1..], "sessionStatus": "Alive"}),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            json!({"status": 404, "error": "Not Found", "path": path}),
        ),
    }
}

fn citadel(method: &Method, path: &str, body: &[u8]) -> Answer {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (method.as_str(), path) {
        ("POST", "/v1/bridge-tokens/") => (
            StatusCode::OK,
            json!({"bridge_token": "demo-bridge-token", "tracking_info": body.get("tracking_info"),
                   "product_type": body.get("product_type"), "allowed_products": [body.get("product_type")]}),
        ),
        ("POST", "/v1/link-access-tokens/") => (
            StatusCode::OK,
            json!({"access_token": "demo-access-token", "link_id": "demo-link"}),
        ),
        ("POST", "/v1/verifications/employments/" | "/v1/verifications/incomes/") => (
            StatusCode::OK,
            json!({"id": "demo-report", "status": "done", "access_token": "demo-access-token",
                   "employments": [{"job_title": "Engineer", "is_active": true,
                                    "company": {"name": "Sandbox Inc"}, "income": "100000.00",
                                    "income_unit": "YEARLY"}]}),
        ),
        _ => (StatusCode::NOT_FOUND, json!({"detail": "Not Found."})),
    }
}
