//! A flood of idle connections, on loopback, bounded and self-stopping: the built gateway is started as a child
//! process, 10,000 idle HTTP/1.1 connections (half of them after one request) and 1,000 idle HTTP/2 connections (each
//! after one request) are opened and held, and meanwhile new callers must still be answered within 50 ms. Prints the
//! gateway's resident memory before, during and after the flood (per held connection) and the new callers' latency.
//!
//! `cargo bench --bench idle_connections`; `HTTP1=n HTTP2=n` change the counts. It raises its open-files limit to
//! what the counts need (as root, or within the hard limit) and lowers the counts, saying so, when it cannot.
//! Figures live in BENCHMARKS.md.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// New callers timed while the flood is held.
const PROBES: usize = 200;
/// What a new caller must be answered within.
const NEW_CALLER_BUDGET: Duration = Duration::from_millis(50);

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Open descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raise the open-files limit to fit `wanted` descriptors; returns how many fit.
fn raise_nofile(wanted: u64) -> u64 {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    if rlimit::setrlimit(rlimit::Resource::NOFILE, wanted.max(hard), wanted.max(hard)).is_ok() {
        return wanted.max(hard);
    }
    let _ = rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard);
    hard
}

async fn origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    let addr = listener.local_addr().expect("origin addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

fn start_gateway(origin: SocketAddr, connections: usize) -> (Gateway, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let dir = std::env::temp_dir().join(format!("credgate-idle-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("config.toml");
    // Idle connections are held open for the measurement: the default idle and head deadlines would close them.
    std::fs::write(
        &config,
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:{port}"
tls = false
header_read_timeout = "10m"
idle_timeout = "10m"
max_connections = {max}
[upstreams.o]
url = "http://{origin}"
[[routes]]
path_prefix = "/"
upstream = "o"
auth = "none"
"#,
            max = connections + PROBES + 100
        ),
    )
    .expect("write config");
    let child = Command::new(env!("CARGO_BIN_EXE_credgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn credgate");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "credgate did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (Gateway(child), addr)
}

/// One request on a fresh connection, timed from connect to the whole answer.
async fn new_caller(addr: SocketAddr) -> Duration {
    let t0 = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.expect("probe connect");
    tcp.write_all(b"GET /probe HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .expect("probe request");
    let mut buf = Vec::new();
    tcp.read_to_end(&mut buf).await.expect("probe answer");
    assert!(
        buf.starts_with(b"HTTP/1.1 200"),
        "probe answered {:?}",
        String::from_utf8_lossy(&buf)
    );
    t0.elapsed()
}

/// An HTTP/1.1 connection that sends one request and reads its answer (`request`), or none, and is then held.
async fn idle_http1(addr: SocketAddr, request: bool) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    if request {
        tcp.write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .expect("request");
        let mut buf = [0u8; 1024];
        let mut got = 0;
        while !buf[..got].ends_with(b"ok") {
            let n = tcp.read(&mut buf[got..]).await.expect("answer");
            assert!(n > 0, "connection closed before the answer");
            got += n;
        }
    }
    tcp
}

/// An HTTP/2 connection (prior knowledge) that sends one request, then is held with its sender.
async fn idle_http2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let rsp = sender
        .send_request(
            Request::get(format!("http://{addr}/x"))
                .body(Empty::new())
                .expect("request"),
        )
        .await
        .expect("h2 answer");
    let _ = rsp.into_body().collect().await;
    sender
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let mut http1 = count("HTTP1", 10_000);
    let mut http2 = count("HTTP2", 1_000);
    let fit = raise_nofile(((http1 + http2 + PROBES) * 2 + 512) as u64) as usize;
    // The gateway also keeps one descriptor per connection and its reserve; this process one per connection.
    let room = fit.saturating_sub(PROBES + 512) / 2;
    if http1 + http2 > room {
        let scale = room as f64 / (http1 + http2) as f64;
        http1 = (http1 as f64 * scale) as usize;
        http2 = (http2 as f64 * scale) as usize;
        eprintln!(
            "open-files limit {fit}: lowered to {http1} HTTP/1.1 and {http2} HTTP/2 connections"
        );
    }
    let origin = origin().await;
    let (gw, addr) = start_gateway(origin, http1 + http2);
    let pid = gw.0.id();
    // Warm up: the first requests build the upstream pool and the allocator's first pages.
    for _ in 0..20 {
        new_caller(addr).await;
    }
    let before = rss_kib(pid);

    let mut held1 = Vec::with_capacity(http1);
    for chunk in (0..http1).collect::<Vec<_>>().chunks(500) {
        let opened =
            futures_util::future::join_all(chunk.iter().map(|i| idle_http1(addr, i % 2 == 0)))
                .await;
        held1.extend(opened);
    }
    let mut held2 = Vec::with_capacity(http2);
    for chunk in (0..http2).collect::<Vec<_>>().chunks(100) {
        let opened = futures_util::future::join_all(chunk.iter().map(|_| idle_http2(addr))).await;
        held2.extend(opened);
    }
    let opened = rss_kib(pid);
    // Idle HTTP/1.1 connections give their buffers back once quiet for a tick of the head deadline (at most 250 ms).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = rss_kib(pid);
    let fds_held = fds(pid);

    let mut probes = Vec::with_capacity(PROBES);
    for _ in 0..PROBES {
        probes.push(new_caller(addr).await);
    }
    probes.sort();

    drop(held1);
    drop(held2);
    // Memory handed back: the gateway notices the closes, then the allocator returns freed pages.
    let mut after = rss_kib(pid);
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Ordinary traffic goes on: allocators hand pages back as threads allocate and free again.
        new_caller(addr).await;
        let now = rss_kib(pid);
        if now + 256 >= after && settle.elapsed() > Duration::from_secs(3) {
            after = now;
            break;
        }
        after = now;
    }
    let held = (http1 + http2).max(1) as u64;
    println!(
        "idle_connections http1={http1} http2={http2} rss_before={before}KiB rss_opened={opened}KiB \
         rss_held={during}KiB rss_after_close={after}KiB per_connection={:.2}KiB fds_held={fds_held} fds_after_close={}",
        (during.saturating_sub(before)) as f64 / held as f64,
        fds(pid)
    );
    let (p50, p99, max) = (
        percentile(&probes, 0.5),
        percentile(&probes, 0.99),
        probes[probes.len() - 1],
    );
    println!(
        "new callers during the flood: {PROBES} sequential, p50={p50:?} p99={p99:?} max={max:?} (budget {NEW_CALLER_BUDGET:?}): {}",
        if p99 <= NEW_CALLER_BUDGET {
            "met"
        } else {
            "NOT MET"
        }
    );
}
