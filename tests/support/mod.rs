//! Shared test support: start the real gateway on loopback from TOML, real TLS clients, and fake upstreams.
#![allow(dead_code, unreachable_pub)]

pub mod binary;
pub mod callers;
pub mod certs;
pub mod fake_citadel;
pub mod fake_http;
pub mod fake_idp;
pub mod fake_incode;
pub mod fake_vendor;
pub mod postgres;
pub mod raw_upstream;
pub mod redis;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;

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

/// A loopback port nothing listens on, held (bound, never listening) for as long as the socket lives: connecting is
/// refused, and no parallel test can take the port meanwhile, as it could one whose listener was bound and dropped.
pub fn closed_port() -> (tokio::net::TcpSocket, std::net::SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

/// A fresh directory under cargo's scratch directory for tests (`target/tmp`), removed with its contents (private
/// keys, SQLite files) once the last [`Scratch`] made from it is dropped.
pub fn temp_dir(tag: &str) -> Scratch {
    let dir = tempfile::Builder::new()
        .prefix(&format!("credgate-test-{tag}-"))
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create temp dir");
    let path = dir.path().to_owned();
    Scratch {
        guard: std::sync::Arc::new(dir),
        path,
    }
}

/// A path in a test's scratch directory; holding it keeps the directory.
#[derive(Clone, Debug)]
pub struct Scratch {
    guard: std::sync::Arc<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    /// `name` in the same directory, which it keeps as well.
    pub fn join(&self, name: impl AsRef<std::path::Path>) -> Scratch {
        Scratch {
            guard: self.guard.clone(),
            path: self.path.join(name),
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.path.as_os_str()
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.path
    }
}

/// A child process, killed and reaped when dropped.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the built `credgate` with `args` then `run --config PATH`, the config at `config` written by
/// `config_for(port)` for a free port, stderr into `log`, `RUST_LOG=trace`; returns once it listens. The port is
/// picked here and bound by the child: should another process take it in between, the child exits and another is
/// tried.
pub async fn run_binary_on_a_free_port(
    args: &[&str],
    config: &std::path::Path,
    log: &std::path::Path,
    config_for: impl Fn(u16) -> String,
) -> (ChildGuard, u16) {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        std::fs::write(config, config_for(port)).expect("write config");
        let log_file = std::fs::File::create(log).expect("log file");
        let mut child = ChildGuard(
            std::process::Command::new(env!("CARGO_BIN_EXE_credgate"))
                .args(args)
                .args(["run", "--config"])
                .arg(config)
                .env("RUST_LOG", "trace")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::from(log_file))
                .spawn()
                .expect("spawn credgate"),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return (child, port);
            }
            if child.0.try_wait().expect("child status").is_some() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "credgate did not start listening"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    panic!("credgate never got a port of its own");
}
