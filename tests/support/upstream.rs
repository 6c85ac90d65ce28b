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
}

/// A running recording upstream.
#[derive(Clone)]
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Start an upstream with `behaviour`.
pub async fn start(behaviour: Behaviour) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let rec = rec.clone();
                    async move { Ok::<_, Infallible>(answer(req, behaviour, rec).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Upstream { addr, seen }
}

async fn answer(
    req: http::Request<Incoming>,
    behaviour: Behaviour,
    rec: Arc<Mutex<Vec<Seen>>>,
) -> Response<credgate::body::Body> {
    let (parts, mut body) = req.into_parts();
    let mut body_len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => body_len += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    rec.lock().expect("lock").push(Seen {
        method: parts.method,
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body_len,
    });
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
