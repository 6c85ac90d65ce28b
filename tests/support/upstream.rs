//! A fake upstream on 127.0.0.1:0 that records every request it receives and answers with a configurable behaviour.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What the upstream saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub uri: String,
    /// Headers as received.
    pub headers: HeaderMap,
    /// Body length in bytes (bodies are counted, not kept, so huge uploads stay cheap).
    pub body_len: u64,
    /// HTTP version the request arrived with.
    pub version: http::Version,
    /// The authority addressed: the URI's (HTTP/2 `:authority`) or else the `Host` header.
    pub authority: Option<String>,
    /// False when the request body broke off (caller or gateway aborted it).
    pub body_complete: bool,
}

/// How the upstream answers.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// 200 with body `ok`.
    Ok,
    /// Sleep before answering.
    Delay(Duration),
    /// Answer 200 with a streamed body of this many bytes.
    Download(u64),
    /// Answer 200 with hop-by-hop headers (`Connection: x-up`, `X-Up`, `Keep-Alive`, `Proxy-Authenticate`) and an
    /// end-to-end `X-Kept`, to check the gateway strips the former on the way back.
    HopHeaders,
    /// Wait until the test calls [`Upstream::release`], then answer 200 `released`.
    Hold,
}

/// A running recording upstream.
#[derive(Clone)]
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: Arc<tokio::sync::Notify>,
    gate: Arc<tokio::sync::Semaphore>,
    tls: bool,
}

impl Upstream {
    /// Requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// `http://addr`, or `https://localhost:port` when serving TLS.
    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// Wait (at most 30 s) until `n` requests have been recorded; panics otherwise.
    pub async fn wait_seen(&self, n: usize) {
        let wait = async {
            loop {
                let notified = self.arrived.notified();
                if self.seen.lock().expect("lock").len() >= n {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("upstream never saw the expected requests");
    }

    /// Let `n` held requests ([`Behaviour::Hold`]) answer.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }
}

/// Start an upstream with `behaviour`.
pub async fn start(behaviour: Behaviour) -> Upstream {
    start_with(behaviour, None).await
}

/// Start an upstream serving TLS with `tls` (offer ALPN `h2` and `http/1.1` in it for HTTP/2).
pub async fn start_tls(behaviour: Behaviour, tls: Arc<rustls::ServerConfig>) -> Upstream {
    start_with(behaviour, Some(tls)).await
}

async fn start_with(behaviour: Behaviour, tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let up = Upstream {
        addr,
        seen: Arc::default(),
        arrived: Arc::default(),
        gate: Arc::new(tokio::sync::Semaphore::new(0)),
        tls: tls.is_some(),
    };
    let shared = up.clone();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let shared = shared.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(answer(req, behaviour, shared).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = match acceptor {
                    None => builder.serve_connection(TokioIo::new(tcp), svc).await,
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(tls) => builder.serve_connection(TokioIo::new(tls), svc).await,
                        Err(_) => return,
                    },
                };
            });
        }
    });
    up
}

async fn answer(
    req: http::Request<Incoming>,
    behaviour: Behaviour,
    up: Upstream,
) -> Response<credgate::body::Body> {
    let (parts, mut body) = req.into_parts();
    let mut body_len = 0u64;
    let mut body_complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_len += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => {
                body_complete = false;
                break;
            }
        }
    }
    let authority = match parts.uri.authority() {
        Some(a) => Some(a.to_string()),
        None => parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned),
    };
    up.seen.lock().expect("lock").push(Seen {
        method: parts.method,
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body_len,
        version: parts.version,
        authority,
        body_complete,
    });
    up.arrived.notify_waiters();
    match behaviour {
        Behaviour::Ok => Response::new(credgate::body::full("ok")),
        Behaviour::Delay(d) => {
            tokio::time::sleep(d).await;
            Response::new(credgate::body::full("late"))
        }
        Behaviour::Download(n) => {
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let take = left.min(chunk.len() as u64);
                    let frame = hyper::body::Frame::data(chunk.slice(..take as usize));
                    Some((Ok::<_, Infallible>(frame), left - take))
                }
            });
            let mut rsp = Response::new(credgate::body::boxed(http_body_util::StreamBody::new(
                stream,
            )));
            *rsp.status_mut() = StatusCode::OK;
            rsp
        }
        Behaviour::HopHeaders => Response::builder()
            .header("connection", "x-up")
            .header("x-up", "hop")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic")
            .header("x-kept", "yes")
            .body(credgate::body::full("ok"))
            .expect("response"),
        Behaviour::Hold => {
            up.gate.acquire().await.expect("gate").forget();
            Response::new(credgate::body::full("released"))
        }
    }
}

/// Read a whole response body.
pub async fn body_bytes(rsp: Response<Incoming>) -> (http::response::Parts, Bytes) {
    let (parts, body) = rsp.into_parts();
    (parts, body.collect().await.expect("body").to_bytes())
}

/// A full request body.
pub fn full(b: impl Into<Bytes>) -> Full<Bytes> {
    Full::new(b.into())
}
