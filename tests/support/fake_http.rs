//! A tiny HTTP/1.1 + HTTP/2 server on 127.0.0.1:0 for fake vendors: records every request (method, path, query,
//! headers, whole body) and answers with a handler the fake supplies.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// One request a fake received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Method.
    pub method: Method,
    /// Path without query.
    pub path: String,
    /// Raw query, if any.
    pub query: Option<String>,
    /// Headers as received.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Recorded {
    /// The body parsed as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body of {} is not JSON: {e}", self.path))
    }

    /// A header as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }
}

/// A fake's answer.
pub enum Answer {
    /// Status and JSON body.
    Json(StatusCode, serde_json::Value),
    /// Status, content type and raw body.
    Raw(StatusCode, &'static str, Bytes),
    /// Never answer (for timeouts).
    Hang,
}

/// The fake's request handler.
pub type HandlerFn = Arc<dyn Fn(&Recorded) -> Answer + Send + Sync>;

/// A running fake server.
#[derive(Clone)]
pub struct FakeServer {
    /// Its address.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
    arrived: Arc<tokio::sync::Notify>,
}

impl FakeServer {
    /// Every request received so far.
    pub fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().expect("lock").clone()
    }

    /// Requests received for `path`.
    pub fn seen_path(&self, path: &str) -> Vec<Recorded> {
        self.seen().into_iter().filter(|r| r.path == path).collect()
    }

    /// Wait (at most 30 s) until what was received satisfies `done`; panics otherwise.
    pub async fn wait_until(&self, done: impl Fn(&[Recorded]) -> bool) {
        let wait = async {
            loop {
                let notified = self.arrived.notified();
                if done(&self.seen.lock().expect("lock")) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), wait)
            .await
            .expect("the fake never received what was expected");
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Start a fake answering with `handler`.
pub async fn serve(handler: HandlerFn) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (rec, told) = (seen.clone(), arrived.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (rec, told) = (rec.clone(), told.clone());
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let (rec, told) = (rec.clone(), told.clone());
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(answer(req, &handler, &rec, &told).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    FakeServer {
        addr,
        seen,
        arrived,
    }
}

async fn answer(
    req: http::Request<Incoming>,
    handler: &HandlerFn,
    rec: &Mutex<Vec<Recorded>>,
    arrived: &tokio::sync::Notify,
) -> Response<credgate::body::Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let r = Recorded {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    };
    rec.lock().expect("lock").push(r.clone());
    arrived.notify_waiters();
    let (status, ct, body) = match handler(&r) {
        Answer::Json(s, v) => (s, "application/json", Bytes::from(v.to_string())),
        Answer::Raw(s, ct, b) => (s, ct, b),
        Answer::Hang => {
            let never: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(std::future::pending());
            never.await;
            unreachable!("pending never completes")
        }
    };
    let mut rsp = Response::new(credgate::body::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ct),
    );
    rsp
}

/// What a test client got back.
#[derive(Debug)]
pub struct Got {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Whole body.
    pub body: Bytes,
}

impl Got {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send one plain-HTTP request to `url` with `headers` and `body`, and read the whole answer.
pub async fn call(method: Method, url: &str, headers: &[(&str, &str)], body: &str) -> Got {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let mut b = http::Request::builder().method(method).uri(url);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let req = b
        .body(http_body_util::Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    let rsp = client.request(req).await.expect("gateway answered");
    let (parts, body) = rsp.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}
