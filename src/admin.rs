//! The admin listener: `/healthz` (process up), `/readyz` (every dependency ready, e.g. issuer keys loaded) and
//! `/metrics` (Prometheus text). Plain HTTP; bind it to loopback. Exposes no secret.

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use serde_json::json;

use crate::body::{self, Body};
use crate::gateway::Gateway;

/// Answer one admin request.
pub(crate) fn handle<B>(gw: &Gateway, req: &Request<B>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => {
            let checks = gw.readiness();
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
            for r in gw.routes.iter() {
                for class in 1..=5 {
                    let n = r.stats.count(class);
                    if n > 0 {
                        out.push_str(&format!(
                            "credgate_responses_total{{route=\"{}\",class=\"{class}xx\"}} {n}\n",
                            r.name.replace('"', "")
                        ));
                    }
                }
            }
            gw.metrics.render(&mut out);
            text(StatusCode::OK, out, "text/plain; version=0.0.4")
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

fn text(status: StatusCode, body: String, ctype: &'static str) -> Response<Body> {
    let mut rsp = Response::new(body::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    rsp
}
