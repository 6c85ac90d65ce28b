//! A fake Incode Omni API on 127.0.0.1:0 speaking the wire shapes in VENDORS.md §1: `omni/start` (API key),
//! `0/omni/...` session calls (session token only, an API key there is refused), scores and approval (admin token
//! plus API key), and `executive/log-in` issuing the admin token for `{email, password}` (VENDORS.md §1a row 5). It
//! refuses requests the real API would refuse, and records every request for exact assertions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::fake_http::{self, Answer, FakeServer, Recorded};

/// How `omni/start` misbehaves, when it does.
#[derive(Clone, Copy, Debug)]
pub enum StartFailure {
    /// Answer this status with Incode's error shape.
    Status(u16),
    /// Answer 200 with HTML.
    NotJson,
    /// Never answer.
    Hang,
}

/// Shared, adjustable behaviour.
#[derive(Default)]
struct State {
    api_key: String,
    admin_token: String,
    sessions: AtomicUsize,
    scores: Mutex<HashMap<String, String>>,
    start_failure: Mutex<Option<StartFailure>>,
    admin_rejects: AtomicUsize,
}

/// A running fake Incode.
#[derive(Clone)]
pub struct FakeIncode {
    /// The recording server.
    pub server: FakeServer,
    state: Arc<State>,
}

impl FakeIncode {
    /// Base URL (no trailing slash).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Requests received for `path`.
    pub fn seen(&self, path: &str) -> Vec<Recorded> {
        self.server.seen_path(path)
    }

    /// Every request received.
    pub fn all(&self) -> Vec<Recorded> {
        self.server.seen()
    }

    /// The overall score status `omni/get/score` reports for `interview` (default `OK`).
    pub fn set_score(&self, interview: &str, status: &str) {
        self.state
            .scores
            .lock()
            .expect("lock")
            .insert(interview.to_owned(), status.to_owned());
    }

    /// Make `omni/start` fail.
    pub fn fail_start(&self, f: StartFailure) {
        *self.state.start_failure.lock().expect("lock") = Some(f);
    }

    /// How many admin logins succeeded.
    pub fn logins(&self) -> usize {
        self.server
            .seen_path("/executive/log-in")
            .iter()
            .filter(|r| {
                r.header("x-api-key") == Some(self.state.api_key.as_str())
                    && r.json() == json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
            })
            .count()
    }

    /// Answer the next `n` admin-token calls with 401, as when the admin token has expired.
    pub fn reject_admin(&self, n: usize) {
        self.state.admin_rejects.store(n, Ordering::SeqCst);
    }
}

/// The admin login the fake accepts at `executive/log-in`.
pub const ADMIN_EMAIL: &str = "admin@example.com";
/// The admin password the fake accepts.
pub const ADMIN_PASSWORD: &str = "admin-password";

/// Start a fake Incode accepting `api_key` and the admin token `admin_token` (which `executive/log-in` hands out).
pub async fn start(api_key: &str, admin_token: &str) -> FakeIncode {
    let state = Arc::new(State {
        api_key: api_key.to_owned(),
        admin_token: admin_token.to_owned(),
        ..State::default()
    });
    let s = state.clone();
    let server = fake_http::serve(Arc::new(move |r: &Recorded| answer(&s, r))).await;
    FakeIncode { server, state }
}

fn error(status: u16, code: i64, error: &str, path: &str) -> Answer {
    Answer::Json(
        StatusCode::from_u16(status).expect("status"),
        json!({"timestamp": 1700000000000u64, "status": code, "error": error,
               "message": format!("{error} for subject JOHN DOE (DOB 1980-01-01)"), "path": path}),
    )
}

fn answer(s: &State, r: &Recorded) -> Answer {
    let path = r.path.as_str();
    if r.header("api-version") != Some("1.0") {
        return error(400, 1001, "api-version header missing", path);
    }
    let api_key_ok = r.header("x-api-key") == Some(s.api_key.as_str());
    let hardware = r.header("x-incode-hardware-id").unwrap_or("");
    let session_ok = hardware.starts_with("sess-");
    if let Some(rest) = path.strip_prefix("/0/omni/") {
        // The "0 rule": session endpoints take the session token alone; an API key here is a leak.
        if r.headers.contains_key("x-api-key") {
            return error(
                400,
                1002,
                "x-api-key must not be sent with a session token",
                path,
            );
        }
        if !session_ok {
            return error(401, 401, "Unauthorized", path);
        }
        return session(rest, r);
    }
    match (r.method.clone(), path) {
        (Method::POST, "/omni/start") => {
            if !api_key_ok {
                return error(401, 401, "Unauthorized", path);
            }
            if let Some(f) = *s.start_failure.lock().expect("lock") {
                return match f {
                    StartFailure::Status(code) => {
                        error(code, i64::from(code), "Internal error", path)
                    }
                    StartFailure::NotJson => Answer::Raw(
                        StatusCode::OK,
                        "text/html",
                        Bytes::from_static(b"<html>maintenance</html>"),
                    ),
                    StartFailure::Hang => Answer::Hang,
                };
            }
            let body: Value = match serde_json::from_slice(&r.body) {
                Ok(v) => v,
                Err(_) => return error(400, 400, "Bad Request", path),
            };
            if body
                .get("configurationId")
                .and_then(Value::as_str)
                .is_none()
                || body.get("countryCode").and_then(Value::as_str).is_none()
                || r.header("content-type") != Some("application/json")
            {
                return error(400, 400, "Bad Request", path);
            }
            let n = s.sessions.fetch_add(1, Ordering::SeqCst) + 1;
            Answer::Json(
                StatusCode::OK,
                json!({"token": format!("sess-{n}"), "interviewId": format!("iv-{n}"), "clientId": "acme",
                       "interviewCode": "ABC123", "flowType": "flow", "idCaptureTimeout": 15,
                       "selfieCaptureTimeout": 15, "idCaptureRetries": 3, "selfieCaptureRetries": 3,
                       "curpValidationRetries": 3, "env": "demo", "existingSession": false,
                       "endScreenTitle": "", "endScreenText": "", "optinEnabled": false, "optinCompanyName": ""}),
            )
        }
        (Method::POST, "/executive/log-in") => {
            let creds = serde_json::from_slice::<Value>(&r.body).ok();
            if !api_key_ok
                || creds != Some(json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
            {
                return error(401, 401, "Unauthorized", path);
            }
            Answer::Json(StatusCode::OK, json!({"token": s.admin_token}))
        }
        (Method::GET, "/omni/get/score") | (Method::POST, "/omni/process/approve") => {
            if !api_key_ok || hardware != s.admin_token {
                return error(401, 401, "Unauthorized", path);
            }
            let reject = s
                .admin_rejects
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if reject {
                return error(401, 401, "Unauthorized", path);
            }
            let q = r.query.clone().unwrap_or_default();
            if path == "/omni/get/score" {
                let Some(id) = q.strip_prefix("id=") else {
                    return error(400, 400, "Bad Request", path);
                };
                let status = s
                    .scores
                    .lock()
                    .expect("lock")
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| "OK".to_owned());
                return Answer::Json(
                    StatusCode::OK,
                    json!({"overall": {"value": "97.1", "status": status},
                           "idValidation": {"overall": {"value": "95", "status": status}},
                           "ocr": {"fullName": "JOHN DOE", "birthDate": "1980-01-01"}}),
                );
            }
            if !q.starts_with("interviewId=") || r.body.as_ref() != b"{}" {
                return error(400, 400, "Bad Request", path);
            }
            Answer::Json(
                StatusCode::OK,
                json!({"success": true, "uuid": "cust-1", "token": "identity-token-secret",
                       "totalScore": "OK", "existingCustomer": false}),
            )
        }
        _ => error(404, 404, "Not Found", path),
    }
}

fn session(rest: &str, r: &Recorded) -> Answer {
    match (r.method.clone(), rest) {
        (Method::GET, "onboarding-url") => Answer::Json(
            StatusCode::OK,
            json!({"url": "https://demo.incode.id/0/flow?token=onboarding"}),
        ),
        (Method::POST, "add/front-id/v2") => {
            if serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|v| v.get("base64Image").cloned())
                .is_none()
            {
                return error(400, 400, "Bad Request", &r.path);
            }
            Answer::Json(
                StatusCode::OK,
                json!({"classification": true, "sharpness": 100, "glare": 100, "horizontalResolution": 1280,
                       "readability": true, "typeOfId": "DriversLicense", "sessionStatus": "Alive"}),
            )
        }
        (Method::POST, "process/id") if r.body.as_ref() == b"{}" => Answer::Json(
            StatusCode::OK,
            json!({"success": true, "sessionStatus": "Alive"}),
        ),
        (Method::POST, "add/face/third-party") => {
            error(400, 4005, "Spoof attempt detected", &r.path)
        }
        (Method::GET, "get/score") => Answer::Json(
            StatusCode::OK,
            json!({"overall": {"value": "97.1", "status": "OK"}}),
        ),
        (Method::GET, "finish-status") => Answer::Raw(
            StatusCode::OK,
            "application/json",
            Bytes::from_static(b"{\"redirectionUrl\":null,\"action\":\"approved\"}"),
        ),
        _ => error(404, 404, "Not Found", &r.path),
    }
}
