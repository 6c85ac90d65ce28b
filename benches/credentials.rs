//! Credential attach on a warm cache: the per-request cost of an OAuth2 token credential once a token is cached
//! (moka lookup, expiry check, `Arc` clone of the rendered headers), beside the static credential's fixed headers.
//! Target: under 1 µs, so that an injected token costs about what a static header does.
//!
//! Run: `cargo bench --bench credentials -- --warm-up-time 1 --measurement-time 3`
//! Figures: `BENCHMARKS.md` (Criterion: the hot path in process). Most of the warm read is moka's `get`; a
//! `max_capacity(1)` bound on the moka cache made it slower and was dropped, because each cache holds one key.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use credgate::gateway::Config;
use credgate::testing::Credentials;
use credgate::testing::Metrics;
use criterion::{Criterion, criterion_group, criterion_main};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A token endpoint on loopback that answers every request with a one-hour token.
async fn token_endpoint() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    let mut rsp = http::Response::new(credgate::body::full(
                        r#"{"access_token":"bench-token","token_type":"Bearer","expires_in":3600}"#,
                    ));
                    rsp.headers_mut()
                        .insert("content-type", "application/json".parse().expect("ct"));
                    Ok::<_, Infallible>(rsp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

fn attach(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let creds = rt.block_on(async {
        let addr = token_endpoint().await;
        let cfg = Config::from_toml(
            &format!(
                r#"
[credentials.static]
kind = "static"
allowed_hosts = ["api.example"]
headers = {{ "x-api-key" = "bench-key" }}
[credentials.oauth2]
kind = "oauth2_client_credentials"
allowed_hosts = ["api.example"]
token_url = "http://{addr}/token"
client_id = "id"
client_secret = "secret"
"#
            ),
            "<bench>",
        )
        .expect("config");
        let http = credgate::testing::http_client(&[], Duration::from_secs(5)).expect("client");
        let creds = Credentials::build(
            &cfg.credentials,
            &http,
            &Arc::new(Metrics::default()),
            |_| None,
        )
        .expect("credentials");
        creds
            .get("oauth2")
            .expect("oauth2")
            .attach()
            .await
            .expect("warm");
        creds
    });
    let mut g = c.benchmark_group("attach");
    for name in ["static", "oauth2"] {
        let cred = creds.get(name).expect("credential");
        let id = if name == "oauth2" {
            "oauth2_warm"
        } else {
            name
        };
        g.bench_function(id, |b| {
            b.to_async(&rt)
                .iter(|| async { cred.attach().await.expect("attach") })
        });
    }
    g.finish();
}

criterion_group!(benches, attach);
criterion_main!(benches);
