//! SIGTERM and SIGINT through the real binary: the listeners close, idle keep-alive connections are closed, a request
//! in flight when the signal arrives completes, and one still running after `server.shutdown_grace` is cut.
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::ChildGuard as Child;
use support::upstream::{self, Behaviour, Upstream};

/// Longest any step may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// `credgate run` on a config with `/ok` to `fast` and `/held` to `held`; returns the child and its address.
fn run(
    fast: &Upstream,
    held: &Upstream,
    grace: &str,
) -> (Child, std::net::SocketAddr, support::Scratch) {
    let dir = support::temp_dir("shutdown");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
shutdown_grace = "{grace}"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[upstreams.fast]
url = "{fast}"
[upstreams.held]
url = "{held}"
[[routes]]
path_prefix = "/ok"
upstream = "fast"
auth = "none"
[[routes]]
path_prefix = "/held"
upstream = "held"
auth = "none"
"#,
            fast = fast.url(),
            held = held.url()
        ),
    )
    .expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_credgate"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn credgate");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = loop {
        let line = lines
            .recv_timeout(PATIENCE)
            .expect("a listening line from credgate");
        if let Some(i) = line.find("addr=") {
            let v = &line[i + 5..];
            let end = v.find(char::is_whitespace).unwrap_or(v.len());
            if line.contains("listening") && !line.contains("admin") {
                break v[..end].parse().expect("listening address");
            }
        }
    };
    // The reader thread keeps draining stderr so that the child never blocks on a full pipe.
    std::thread::spawn(move || while lines.recv().is_ok() {});
    (Child(child), addr, dir)
}

/// Send `GET path` on `tcp` (keep-alive).
async fn send(tcp: &mut TcpStream, path: &str) {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
        .await
        .expect("request");
}

/// Read until the answer to one request is in (its body ends with `tail`) or the connection ends; returns what came.
async fn read_answer(tcp: &mut TcpStream, tail: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.ends_with(tail) {
                    return got;
                }
            }
        }
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig}");
}

async fn exit_status(mut child: Child) -> std::process::ExitStatus {
    let wait = tokio::task::spawn_blocking(move || {
        let status = child.0.wait().expect("wait");
        std::mem::forget(child);
        status
    });
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("credgate exited")
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_lets_requests_in_flight_finish_and_closes_idle_connections() {
    for sig in ["-TERM", "-INT"] {
        let fast = upstream::start(Behaviour::Ok).await;
        let held = upstream::start(Behaviour::Hold).await;
        let (child, addr, _dir) = run(&fast, &held, "20s");
        // An idle keep-alive connection, after one answer.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        send(&mut idle, "/ok/a").await;
        let first = read_answer(&mut idle, b"ok").await;
        assert!(first.starts_with(b"HTTP/1.1 200"), "{sig}");
        // A request in flight: the upstream has it and holds its answer.
        let mut busy = TcpStream::connect(addr).await.expect("connect");
        send(&mut busy, "/held/b").await;
        held.wait_seen(1).await;

        signal(&child, sig);
        // The idle connection is closed; new connections are refused once the listener is gone.
        let rest = tokio::time::timeout(PATIENCE, read_answer(&mut idle, b"\0never"))
            .await
            .expect("the idle connection was closed");
        assert!(rest.is_empty(), "{sig}: {}", String::from_utf8_lossy(&rest));
        let refused = tokio::time::timeout(PATIENCE, async {
            loop {
                match TcpStream::connect(addr).await {
                    Err(_) => return,
                    Ok(mut c) => {
                        // Accepted before the listener closed: it must not be served either way.
                        let _ = c.shutdown().await;
                        tokio::task::yield_now().await;
                    }
                }
            }
        })
        .await;
        assert!(refused.is_ok(), "{sig}: the listener stayed open");

        // The request in flight completes once the upstream answers.
        held.release(1);
        let answer = tokio::time::timeout(PATIENCE, read_answer(&mut busy, b"released"))
            .await
            .expect("the answer in time");
        assert!(
            answer.starts_with(b"HTTP/1.1 200") && answer.ends_with(b"released"),
            "{sig}: {}",
            String::from_utf8_lossy(&answer)
        );
        assert!(exit_status(child).await.success(), "{sig}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_running_after_the_grace_is_cut() {
    let fast = upstream::start(Behaviour::Ok).await;
    let held = upstream::start(Behaviour::Hold).await;
    let (child, addr, _dir) = run(&fast, &held, "300ms");
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    send(&mut busy, "/held/b").await;
    held.wait_seen(1).await;
    signal(&child, "-TERM");
    let got = tokio::time::timeout(PATIENCE, read_answer(&mut busy, b"released"))
        .await
        .expect("the connection was cut");
    assert!(
        !got.ends_with(b"released"),
        "answered after the grace: {}",
        String::from_utf8_lossy(&got)
    );
    assert!(exit_status(child).await.success());
}
