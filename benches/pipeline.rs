//! The per-request hot path that exists so far, without sockets: route match over a realistic table (50 routes,
//! a few host-bound) and the request rewrite (`proxy::prepare`: hop-by-hop and caller credentials out, static
//! credential in, forwarding headers and request id added) on a typical ten-header request. It shows what the
//! gateway itself adds per request next to the network and TLS costs that dominate a real proxy hop, and catches
//! regressions in either step. `pipeline::handle` needs hyper's `Incoming` body, which only a live connection makes,
//! so the end-to-end figure comes from `benches/load.sh` against the peers instead.
//!
//! It also times a per-request deadline armed and dropped on credgate's timer against tokio's (`deadline/…`).
//!
//! Run: `cargo bench --bench pipeline -- --warm-up-time 1 --measurement-time 3`
//! Figures: `BENCHMARKS.md` (Criterion: the hot path in process). Runs taken during parallel builds are much slower:
//! compare only on a quiet machine.

use std::future::Future;
use std::hint::black_box;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{HeaderValue, Request};
use http_body_util::Full;

use credgate::conn::ConnInfo;
use credgate::gateway::Config;
use credgate::gateway::Gateway;
use credgate::testing::{self as proxy, Outgoing};
use credgate::testing::{Route, Target};
use credgate::testing::{Timer, TimerKind};

/// 50 routes: 45 path-only prefixes of varying depth and 5 host-bound ones, each with a static credential.
fn config() -> String {
    let mut toml = String::from(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[upstreams.api]
url = "http://127.0.0.1:18080/base"
[credentials.k]
kind = "static"
allowed_hosts = ["127.0.0.1"]
headers = { "Authorization" = "Bearer upstream-secret-token", "X-Api-Key" = "bench-api-key" }
"#,
    );
    for i in 0..45 {
        toml.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\npath_prefix = \"/svc{i}/v{}/resource{i}\"\nupstream = \"api\"\ncredential = \"k\"\nauth = \"none\"\nstrip_prefix = {}\n",
            i % 3,
            i % 2 == 0
        ));
    }
    for i in 0..5 {
        toml.push_str(&format!(
            "[[routes]]\nname = \"h{i}\"\npath_prefix = \"/svc{i}\"\nhost = \"tenant{i}.example\"\nupstream = \"api\"\ncredential = \"k\"\nauth = \"none\"\n"
        ));
    }
    toml
}

/// A typical caller request: ten headers, including the caller's own Authorization and a hop-by-hop header.
fn request() -> Request<Full<Bytes>> {
    Request::get("/svc44/v2/resource44/items/123?limit=10&cursor=abc")
        .header("host", "gateway.internal")
        .header("user-agent", "bench-client/1.0")
        .header("accept", "application/json")
        .header("accept-encoding", "gzip, br")
        .header(
            "authorization",
            "Bearer caller.jwt.token-abcdefghijklmnopqrstuvwxyz",
        )
        .header("x-api-key", "caller-attempt")
        .header("connection", "keep-alive")
        .header("x-forwarded-for", "203.0.113.7")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("x-request-id", "bench-request-id-0001")
        .body(Full::new(Bytes::new()))
        .expect("request")
}

fn conn() -> ConnInfo {
    ConnInfo::new(
        SocketAddr::from(([127, 0, 0, 1], 40000)),
        true,
        credgate::conn::BodyTimeouts {
            idle: std::time::Duration::from_secs(60),
            total: std::time::Duration::from_secs(300),
        },
    )
}

/// Match, attach and prepare one request: what the pipeline does between accepting and forwarding.
fn hot_path(
    gw: &Gateway,
    req: Request<Full<Bytes>>,
    conn: &ConnInfo,
) -> Request<credgate::body::Body> {
    let route: &Route = gw
        .routes
        .find(Some("gateway.internal"), req.uri().path())
        .expect("route");
    let Target::Upstream(up) = &route.target else {
        panic!("upstream route")
    };
    let cred = route.credential.as_ref().expect("credential");
    let attachment = cred
        .attach()
        .now_or_never()
        .expect("static credentials are ready")
        .expect("attach");
    let request_id = proxy::X_REQUEST_ID.clone();
    let id = credgate::pipeline::request_id(req.headers().get(&request_id));
    let trace = credgate::trace::TraceContext::of(req.headers());
    let out = Outgoing {
        strip_len: route.strip_len(),
        attachment: Some(&attachment),
        credential_headers: cred.header_names(),
        caller_headers: &[],
        max_body_bytes: route.max_body_bytes,
        request_id: &id,
        traceparent: trace.traceparent(),
    };
    proxy::prepare(req, up, &out, conn).expect("prepare")
}

fn benches(c: &mut Criterion) {
    let cfg = Config::from_toml(&config(), "<bench>").expect("config");
    let gw = Gateway::build(&cfg).expect("gateway");
    let conn = conn();

    let mut g = c.benchmark_group("route_match/50_routes");
    g.bench_function("hit_deep", |b| {
        b.iter(|| {
            gw.routes
                .find(
                    black_box(Some("gateway.internal")),
                    black_box("/svc44/v2/resource44/items/123"),
                )
                .map(|r| r.name.len())
        })
    });
    g.bench_function("miss", |b| {
        b.iter(|| {
            gw.routes
                .find(
                    black_box(Some("gateway.internal")),
                    black_box("/nothing/here"),
                )
                .is_some()
        })
    });
    g.finish();

    let route = gw
        .routes
        .find(Some("gateway.internal"), "/svc44/v2/resource44/items/123")
        .expect("route");
    let Target::Upstream(up) = &route.target else {
        panic!("upstream route")
    };
    let cred = route.credential.as_ref().expect("credential");
    let attachment = cred
        .attach()
        .now_or_never()
        .expect("ready")
        .expect("attach");
    let id = HeaderValue::from_static("bench-request-id-0001");
    let trace = credgate::trace::TraceContext::start().traceparent().clone();
    c.bench_function("prepare/static_credential", |b| {
        b.iter_batched(
            request,
            |req| {
                let out = Outgoing {
                    strip_len: route.strip_len(),
                    attachment: Some(&attachment),
                    credential_headers: cred.header_names(),
                    caller_headers: &[],
                    max_body_bytes: route.max_body_bytes,
                    request_id: &id,
                    traceparent: &trace,
                };
                proxy::prepare(req, up, &out, &conn).expect("prepare")
            },
            BatchSize::SmallInput,
        )
    });

    c.bench_function("hot_path/match_attach_prepare", |b| {
        b.iter_batched(
            request,
            |req| hot_path(&gw, req, &conn),
            BatchSize::SmallInput,
        )
    });

    deadlines(c);
}

/// A per-request deadline as the request path uses one: armed (first poll, nothing due) and dropped before it
/// fires, on credgate's timer and on tokio's, inside a current-thread runtime with other deadlines pending.
fn deadlines(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _in_rt = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let timeout = Duration::from_secs(10);
    // The gateway's own timer, whatever the build's default: this row compares it with tokio's.
    let timer = Timer::of_kind(TimerKind::Credgate);
    // A server's worth of idle connections, each with its own deadline armed.
    let mut ours: Vec<_> = (0..64).map(|_| timer.sleep(timeout)).collect();
    let mut theirs: Vec<_> = (0..64)
        .map(|_| Box::pin(tokio::time::sleep(timeout)))
        .collect();
    for s in &mut ours {
        assert!(Pin::new(s).poll(&mut cx).is_pending());
    }
    for s in &mut theirs {
        assert!(s.as_mut().poll(&mut cx).is_pending());
    }

    let mut g = c.benchmark_group("deadline/arm_and_drop");
    g.bench_function("credgate_timer", |b| {
        b.iter(|| {
            let mut s = timer.sleep(black_box(timeout));
            Pin::new(&mut s).poll(&mut cx).is_pending()
        })
    });
    g.bench_function("tokio_sleep", |b| {
        b.iter(|| {
            let mut s = std::pin::pin!(tokio::time::sleep(black_box(timeout)));
            s.as_mut().poll(&mut cx).is_pending()
        })
    });
    g.finish();
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
