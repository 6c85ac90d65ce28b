//! OTLP span export (`[tracing]`) against a fake collector on loopback that decodes what the real `credgate run`
//! sends: the spans join the caller's trace, the upstream gets the gateway's own span as parent, a caller's unsampled
//! trace is not recorded, the collector's key arrives and is never logged.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use prost::Message as _;
use support::fake_http::{self, Answer, Recorded};
use support::upstream::{self, Behaviour};

/// The caller's trace, sampled.
const SENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// Another caller's trace, not sampled.
const UNSAMPLED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
const COLLECTOR_KEY: &str = "collector-key-7c1e";

/// Every span the collector received, with the `service.name` it came under.
fn spans(seen: &[Recorded]) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for r in seen.iter().filter(|r| r.path == "/v1/traces") {
        let req = ExportTraceServiceRequest::decode(r.body.clone()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|res| &res.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                out.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(s: &Span, key: &str) -> Option<Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_join_the_callers_trace_and_the_upstream_hangs_under_the_gateways_client_span() {
    let collector = fake_http::serve(Arc::new(|_: &Recorded| {
        Answer::Raw(StatusCode::OK, "application/x-protobuf", Bytes::new())
    }))
    .await;
    // A token endpoint that is down: the credential's first token is waited for, and fails.
    let token = fake_http::serve(Arc::new(|_: &Recorded| {
        Answer::Json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({}))
    }))
    .await;
    let up = upstream::start(Behaviour::Ok).await;
    let dir = support::temp_dir("otlp");
    let key_file = dir.join("collector-key");
    std::fs::write(&key_file, format!("{COLLECTOR_KEY}\n")).expect("key");
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[tracing]
otlp_endpoint = "{collector}"
service_name = "gateway-under-test"
batch_delay = "20ms"
headers = {{ "x-collector-key" = "${{file:{key}}}" }}
[upstreams.u]
url = "{up}"
[credentials.down]
kind = "oauth2_client_credentials"
allowed_hosts = ["127.0.0.1"]
token_url = "{token}/token"
client_id = "id"
client_secret = "secret"
readiness = "ignored"
[[routes]]
path_prefix = "/t"
upstream = "u"
auth = "none"
[[routes]]
path_prefix = "/down"
upstream = "u"
credential = "down"
auth = "none"
"#,
            collector = collector.url(),
            key = key_file.display(),
            up = up.url(),
            token = token.url(),
        ),
    )
    .expect("config");
    let mut gw = support::binary::Binary::run(&path, "debug", 1, false);
    let url = |p: &str| format!("http://{}{p}", gw.addrs[0]);
    let get = |u: String, tp: Option<&'static str>| async move {
        let h: Vec<(&str, &str)> = tp.map(|tp| ("traceparent", tp)).into_iter().collect();
        fake_http::call(http::Method::GET, &u, &h, "").await.status
    };
    // First the unsampled trace: had it been recorded, its spans would be queued ahead of the others.
    assert_eq!(
        get(url("/t/unsampled"), Some(UNSAMPLED)).await,
        StatusCode::OK
    );
    assert_eq!(get(url("/t/kept"), Some(SENT)).await, StatusCode::OK);
    assert_eq!(get(url("/t/started"), None).await, StatusCode::OK);
    let down = get(url("/down/x"), Some(SENT)).await;
    assert!(down.is_server_error(), "{down}");

    let forwarded = |p: &str| {
        let s = up
            .seen()
            .into_iter()
            .find(|s| s.uri == p)
            .unwrap_or_else(|| panic!("{p} not forwarded"));
        s.headers["traceparent"].to_str().expect("ascii").to_owned()
    };
    let kept = forwarded("/t/kept");
    let started = forwarded("/t/started");
    let unsampled = forwarded("/t/unsampled");
    assert_eq!(&kept[..36], &SENT[..36], "the caller's trace id: {kept}");
    assert_ne!(
        &kept[36..52],
        &SENT[36..52],
        "the gateway's span is the parent"
    );
    assert!(kept.ends_with("-01"), "{kept}");
    assert_eq!(&unsampled[..36], &UNSAMPLED[..36], "{unsampled}");
    assert!(unsampled.ends_with("-00"), "still not sampled: {unsampled}");

    // Four requests recorded (the unsampled one is not): each has a server span, a caller-auth span, and either
    // an upstream span or a credential wait.
    let recorded = |seen: &[Recorded]| {
        let all = spans(seen);
        all.iter()
            .filter(|(_, s)| s.kind == SpanKind::Server as i32)
            .count()
            >= 3
            && all.iter().filter(|(_, s)| s.name == "upstream").count() >= 2
            && all.iter().any(|(_, s)| s.name == "credential wait")
    };
    collector.wait_until(recorded).await;
    let seen = collector.seen();
    let all = spans(&seen);
    assert!(
        all.iter()
            .all(|(service, _)| service == "gateway-under-test"),
        "service.name"
    );
    assert!(
        all.iter()
            .all(|(_, s)| hex(&s.trace_id) != UNSAMPLED[3..35]),
        "an unsampled trace was recorded"
    );
    assert!(
        seen.iter()
            .all(|r| r.header("x-collector-key") == Some(COLLECTOR_KEY)),
        "the collector's key on every export"
    );
    // A request's spans: its server span (by trace and path) and the children under it, by name.
    let request = |trace_id: &str, path: &str| -> (Span, HashMap<String, Span>) {
        let server = all
            .iter()
            .map(|(_, s)| s)
            .find(|s| {
                hex(&s.trace_id) == trace_id
                    && s.kind == SpanKind::Server as i32
                    && attr(s, "url.path") == Some(Value::StringValue(path.into()))
            })
            .unwrap_or_else(|| panic!("no server span for {path} in {trace_id}"))
            .clone();
        let children = all
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s.trace_id == server.trace_id && s.parent_span_id == server.span_id)
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        (server, children)
    };

    // The caller's trace: the server span's parent is the caller's span; the children hang under it; the
    // upstream span's id is the parent id the upstream got.
    let (server, children) = request(&SENT[3..35], "/t/kept");
    assert_eq!(server.name, "GET /t");
    assert_eq!(hex(&server.parent_span_id), SENT[36..52]);
    assert_eq!(
        attr(&server, "http.response.status_code"),
        Some(Value::IntValue(200))
    );
    assert_eq!(
        attr(&server, "credgate.route"),
        Some(Value::StringValue("/t".into()))
    );
    assert!(
        children.contains_key("caller auth"),
        "{:?}",
        children.keys()
    );
    let upstream = &children["upstream"];
    assert_eq!(upstream.kind, SpanKind::Client as i32);
    assert_eq!(hex(&upstream.span_id), kept[36..52], "forwarded parent id");
    assert_eq!(
        attr(upstream, "credgate.upstream"),
        Some(Value::StringValue("u".into()))
    );
    assert!(upstream.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(upstream.end_time_unix_nano <= server.end_time_unix_nano);

    // A trace started here: a root span, named by the access log.
    let (root, children) = request(&started[3..35], "/t/started");
    assert!(root.parent_span_id.is_empty(), "a root span");
    assert_eq!(hex(&children["upstream"].span_id), started[36..52]);
    gw.wait_for(&format!("trace_id=\"{}\"", &started[3..35]));

    // The credential that could not get a token: its wait is an error, and so is the server span; nothing went
    // upstream.
    let (server, children) = request(&SENT[3..35], "/down/x");
    assert_eq!(server.name, "GET /down");
    let wait = &children["credential wait"];
    for s in [wait, &server] {
        assert_eq!(
            s.status.as_ref().map(|st| st.code),
            Some(SpanStatus::Error as i32),
            "{}",
            s.name
        );
    }
    assert!(!children.contains_key("upstream"));

    assert!(
        !gw.log.iter().any(|l| l.contains(COLLECTOR_KEY)),
        "the collector's key in the log"
    );
}
