//! Shared test support: start the real gateway on loopback from TOML, real TLS clients, and fake upstreams.
#![allow(dead_code, unreachable_pub)]

pub mod callers;
pub mod certs;
pub mod fake_citadel;
pub mod fake_http;
pub mod fake_idp;
pub mod fake_incode;
pub mod fake_vendor;
pub mod raw_upstream;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use credgate::gateway::Config;
use credgate::gateway::Gateway;
use credgate::server::{self, Running};

/// A gateway running in this test's runtime.
pub struct TestGateway {
    /// Gateway listener addresses, in config order.
    pub addrs: Vec<SocketAddr>,
    /// Admin listener.
    pub admin: Option<SocketAddr>,
    /// The built gateway (for metrics and state).
    pub gw: std::sync::Arc<Gateway>,
    running: Option<Running>,
}

impl TestGateway {
    /// The first listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Graceful stop with `grace`.
    pub async fn shutdown(mut self, grace: Duration) {
        if let Some(r) = self.running.take() {
            r.shutdown(grace).await;
        }
    }
}

/// Validate `toml` exactly as `credgate run` does, build the gateway, and serve it (listen on port 0 for tests).
pub async fn start_gateway(toml: &str) -> TestGateway {
    let cfg = Config::from_toml(toml, "<test>").unwrap_or_else(|e| panic!("config rejected: {e}"));
    let gw = Gateway::build(&cfg).unwrap_or_else(|e| panic!("gateway build failed: {e}"));
    let running = server::start(gw.clone(), &cfg)
        .await
        .unwrap_or_else(|e| panic!("start failed: {e}"));
    TestGateway {
        addrs: running.addrs.clone(),
        admin: running.admin,
        gw,
        running: Some(running),
    }
}

/// A fresh directory under cargo's scratch directory for tests (`target/tmp`, gone with `cargo clean`), unique per
/// call.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "credgate-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
