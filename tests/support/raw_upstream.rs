//! A byte-level HTTP/1.1 upstream that counts TCP connections and decides, per answer, whether the connection stays
//! open, so that the gateway's connection reuse can be observed from the far side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// What happens to a connection after each answer.
#[derive(Clone, Copy, Debug)]
pub enum AfterAnswer {
    /// Keep-alive: wait for the next request.
    KeepOpen,
    /// Close the socket without saying so in the answer (as an upstream whose idle timeout fired would).
    CloseSilently,
    /// Answer with `Connection: close`, then close.
    SayCloseAndClose,
}

/// A running raw upstream.
#[derive(Clone)]
pub struct RawUpstream {
    /// Its address.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    closed_signal: Arc<Notify>,
}

impl RawUpstream {
    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Wait (at most 10 s) until `n` connections have been closed by this side; panics otherwise.
    pub async fn wait_closed(&self, n: usize) {
        let wait = async {
            loop {
                let notified = self.closed_signal.notified();
                if self.closed.load(Ordering::SeqCst) >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("upstream never closed the expected connections");
    }
}

/// Start a raw upstream answering every request `200 ok`, then doing `after`.
pub async fn start(after: AfterAnswer) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up = RawUpstream {
        addr: listener.local_addr().expect("addr"),
        connections: Arc::default(),
        requests: Arc::default(),
        closed: Arc::default(),
        closed_signal: Arc::default(),
    };
    let shared = up.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            shared.connections.fetch_add(1, Ordering::SeqCst);
            let up = shared.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Bodiless requests only: a request ends at its blank line.
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    buf.drain(..end + 4);
                    up.requests.fetch_add(1, Ordering::SeqCst);
                    let answer: &[u8] = match after {
                        AfterAnswer::SayCloseAndClose => {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                        }
                        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                    };
                    if tcp.write_all(answer).await.is_err() {
                        break;
                    }
                    if !matches!(after, AfterAnswer::KeepOpen) {
                        break;
                    }
                }
                drop(tcp);
                up.closed.fetch_add(1, Ordering::SeqCst);
                up.closed_signal.notify_waiters();
            });
        }
    });
    up
}
