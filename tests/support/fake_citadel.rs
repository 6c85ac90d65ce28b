//! A fake Citadel (Truv) API under `/v1/` on 127.0.0.1:0 speaking VENDORS.md §2: Django-style paths (a missing
//! trailing slash is a 404 `{"detail":"Not Found."}`), `X-Access-Client-Id` / `X-Access-Secret` on every call,
//! single-use public tokens (reuse is 410), and PII-heavy verification reports. Records every request.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::fake_http::{self, Answer, FakeServer, Recorded};

/// The public token the fake's widget "issued"; any other is unknown.
pub const PUBLIC_TOKEN: &str = "pub-token-1";
/// The access token the exchange yields.
pub const ACCESS_TOKEN: &str = "access-token-permanent";
/// A social security number in the report, to prove PII handling.
pub const SSN: &str = "123-45-6789";

struct State {
    client_id: String,
    secret: String,
    spent: Mutex<HashSet<String>>,
}

/// A running fake Citadel.
#[derive(Clone)]
pub struct FakeCitadel {
    /// The recording server.
    pub server: FakeServer,
}

impl FakeCitadel {
    /// Base URL `http://addr/v1/`.
    pub fn url(&self) -> String {
        format!("{}/v1/", self.server.url())
    }

    /// Requests received for `path`.
    pub fn seen(&self, path: &str) -> Vec<Recorded> {
        self.server.seen_path(path)
    }
}

/// Start a fake Citadel accepting `client_id` and `secret`.
pub async fn start(client_id: &str, secret: &str) -> FakeCitadel {
    let state = Arc::new(State {
        client_id: client_id.to_owned(),
        secret: secret.to_owned(),
        spent: Mutex::default(),
    });
    let server = fake_http::serve(Arc::new(move |r: &Recorded| answer(&state, r))).await;
    FakeCitadel { server }
}

fn err(status: StatusCode, code: &str) -> Answer {
    Answer::Json(
        status,
        json!({"error": {"code": code, "message": format!("{code}: token for JOHN DOE ssn {SSN}")}}),
    )
}

fn report(product: &str) -> Value {
    json!({
        "id": "report-1", "status": "done", "completed_at": "2021-03-10T12:00:00Z",
        "access_token": ACCESS_TOKEN, "tracking_info": "user-42", "refresh_status": "done",
        "employments": [{
            "id": "emp-1", "job_title": "Engineer", "job_type": "F", "start_date": "2018-01-01",
            "end_date": null, "is_active": true, "income": "100000.00", "income_unit": "YEARLY",
            "pay_frequency": "BW", "product": product,
            "profile": {"first_name": "John", "last_name": "Doe", "ssn": SSN,
                        "home_address": {"street": "1 Main St", "city": "Springfield"}},
            "company": {"name": "Acme", "address": {"street": "2 Work Rd"}, "phone": "5555550100"},
            "statements": []
        }]
    })
}

fn answer(s: &State, r: &Recorded) -> Answer {
    if r.header("x-access-client-id") != Some(s.client_id.as_str())
        || r.header("x-access-secret") != Some(s.secret.as_str())
    {
        return err(StatusCode::UNAUTHORIZED, "authentication_failed");
    }
    if r.method != Method::POST || !r.path.ends_with('/') {
        return Answer::Json(StatusCode::NOT_FOUND, json!({"detail": "Not Found."}));
    }
    let body: Value = match serde_json::from_slice(&r.body) {
        Ok(v)
            if r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")) =>
        {
            v
        }
        _ => return err(StatusCode::BAD_REQUEST, "validation_error"),
    };
    match r.path.as_str() {
        "/v1/bridge-tokens/" => {
            let Some(product) = body.get("product_type").and_then(Value::as_str) else {
                return err(StatusCode::BAD_REQUEST, "validation_error");
            };
            Answer::Json(
                StatusCode::OK,
                json!({"bridge_token": "bridge-abc", "tracking_info": body.get("tracking_info"),
                       "product_type": product, "allowed_products": [product],
                       "company_mapping_id": null, "provider_id": null, "access_token": null,
                       "account": null, "template_id": null, "data_sources": null, "use_case": null}),
            )
        }
        "/v1/link-access-tokens/" | "/v1/access-tokens/" => {
            let legacy = r.path == "/v1/access-tokens/";
            let token = if legacy {
                body.get("public_tokens").and_then(|a| a.get(0))
            } else {
                body.get("public_token")
            }
            .and_then(Value::as_str)
            .unwrap_or("");
            if token != PUBLIC_TOKEN {
                return err(StatusCode::BAD_REQUEST, "validation_error");
            }
            if !s.spent.lock().expect("lock").insert(token.to_owned()) {
                return err(StatusCode::GONE, "token_expired");
            }
            if legacy {
                Answer::Json(StatusCode::OK, json!({"access_tokens": [ACCESS_TOKEN]}))
            } else {
                Answer::Json(
                    StatusCode::OK,
                    json!({"access_token": ACCESS_TOKEN, "link_id": "link-1"}),
                )
            }
        }
        "/v1/verifications/employments/" | "/v1/verifications/incomes/" => {
            if body.get("access_token").and_then(Value::as_str) != Some(ACCESS_TOKEN) {
                return err(StatusCode::BAD_REQUEST, "validation_error");
            }
            let product = if r.path.contains("employments") {
                "employment"
            } else {
                "income"
            };
            Answer::Json(StatusCode::OK, report(product))
        }
        _ => Answer::Json(StatusCode::NOT_FOUND, json!({"detail": "Not Found."})),
    }
}
