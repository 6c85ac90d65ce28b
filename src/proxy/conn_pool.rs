//! A plain-HTTP upstream's keep-alive HTTP/1.1 connections, each driven by the task that serves the request it
//! carries.
//!
//! hyper-util's pooled client runs every connection in a task of its own, so one forwarded request crosses tasks
//! several times (request hand-off, response, body chunks, a spawned task that returns the connection). Here the
//! caller's own task polls the upstream connection, from sending the head to the response body's end, then puts it
//! back on a LIFO idle list. Idle connections are not polled by anyone. One that the exchange left ready for the next
//! request goes back as it is; any other is polled once more with a waker that only raises a flag, so checkout polls
//! just the ones that something happened to (most often the upstream closing them) and takes the others as they were
//! left. A request that a reused connection could not send (it was closed while idle) is sent once more on a fresh
//! one.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use super::SendError;
use crate::body::{self, Body};

type Conn = http1::Connection<TokioIo<TcpStream>, Body>;

/// The idle connections of one upstream, and how to open more.
#[derive(Debug)]
pub(super) struct ConnPool {
    target: Uri,
    connector: HttpConnector,
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

/// One connection: the handle to send on and the connection state that must be polled to make progress. Always
/// boxed: the state is kilobytes, and request futures that hold it are moved several times per request.
struct Pooled {
    sender: http1::SendRequest<Body>,
    conn: Conn,
    /// Raised by `idle_waker`: the parked connection has something to take in (data, EOF, an error).
    stirred: Arc<Stirred>,
    idle_waker: Waker,
}

/// The flag behind a parked connection's waker.
#[derive(Default)]
struct Stirred(AtomicBool);

impl Wake for Stirred {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

struct Idle {
    pooled: Box<Pooled>,
    /// When the request that last used it was sent: the idle clock is counted from there, which reuses the clock
    /// read of the request's own deadline instead of two more per request (closing a connection early at worst).
    since: Instant,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("since", &self.since).finish()
    }
}

impl Pooled {
    /// Let the connection take in whatever happened while nobody polled it; `false` once it is closed.
    fn poll_alive(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.conn).poll(cx).is_pending()
    }

    /// Poll with the idle waker, so that whatever happens to the connection from now on raises `stirred`: true
    /// when it can take a request now.
    fn park(&mut self) -> bool {
        self.stirred.0.store(false, Ordering::Relaxed);
        let alive = Pin::new(&mut self.conn)
            .poll(&mut Context::from_waker(&self.idle_waker))
            .is_pending();
        alive && self.sender.is_ready()
    }

    /// Whether a parked connection can take a request: as it was parked unless something stirred it since.
    fn reusable(&mut self) -> bool {
        if self.stirred.0.load(Ordering::Acquire) {
            self.park()
        } else {
            self.sender.is_ready()
        }
    }
}

impl ConnPool {
    /// A pool for the upstream at `target` (`http://` and authority), connecting within `connect_timeout` and
    /// keeping at most `max_idle` connections for at most `idle_timeout` each.
    pub(super) fn new(
        target: Uri,
        connect_timeout: Duration,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        Self {
            target,
            connector,
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout,
        }
    }

    /// Send `req` (origin-form URI, `Host` set) at `now` and return the response once its head has arrived; its body
    /// drives the connection and returns it to the pool at its end.
    pub(super) async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
        now: Instant,
    ) -> Result<Response<Body>, SendError> {
        // Fresh connections are boxed: they are rare on a warm pool, and their futures would otherwise take room in
        // every request's future beside the reused connection's.
        let Some(reused) = self.checkout(now) else {
            return Box::pin(self.send_fresh(req, now)).await;
        };
        match self.send_on(reused, req, now).await {
            Ok(rsp) => Ok(rsp),
            // Closed by the upstream between checkout and write: nothing was sent, so a fresh connection may try.
            Err((_, Some(req))) => Box::pin(self.send_fresh(req, now)).await,
            Err((e, None)) => Err(e),
        }
    }

    async fn send_fresh(
        self: &Arc<Self>,
        req: Request<Body>,
        now: Instant,
    ) -> Result<Response<Body>, SendError> {
        let fresh = Box::pin(self.connect()).await?;
        self.send_on(fresh, req, now).await.map_err(|(e, _)| e)
    }

    async fn send_on(
        self: &Arc<Self>,
        mut pooled: Box<Pooled>,
        req: Request<Body>,
        now: Instant,
    ) -> Result<Response<Body>, (SendError, Option<Request<Body>>)> {
        let mut sent = std::pin::pin!(pooled.sender.try_send_request(req));
        let mut pooled = Some(pooled);
        let result = poll_fn(|cx| {
            // A connection that ended is dropped, which fails the pending request instead of leaving it waiting.
            if let Some(p) = pooled.as_mut()
                && !p.poll_alive(cx)
            {
                pooled = None;
            }
            sent.as_mut().poll(cx)
        })
        .await;
        match result {
            Ok(rsp) => {
                let (parts, incoming) = rsp.into_parts();
                let body = Driven {
                    inner: incoming,
                    conn: pooled,
                    pool: self.clone(),
                    ended: false,
                    sent_at: now,
                };
                Ok(Response::from_parts(parts, body::boxed(body)))
            }
            Err(mut e) => {
                let req = e.take_message();
                Err((SendError::Http(e.into_error()), req))
            }
        }
    }

    fn checkout(&self, now: Instant) -> Option<Box<Pooled>> {
        // Each candidate is polled, and a dead one closed, outside the lock: other tasks check out meanwhile.
        loop {
            let mut i = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_back()?;
            if now.saturating_duration_since(i.since) < self.idle_timeout && i.pooled.reusable() {
                return Some(i.pooled);
            }
        }
    }

    fn checkin(&self, pooled: Box<Pooled>, since: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // The oldest sit at the front; those past their time close here rather than at some later checkout.
        while idle
            .front()
            .is_some_and(|i| since.saturating_duration_since(i.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back(Idle { pooled, since });
        }
    }

    async fn connect(&self) -> Result<Box<Pooled>, SendError> {
        let io = self
            .connector
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        let stirred = Arc::new(Stirred::default());
        Ok(Box::new(Pooled {
            sender,
            conn,
            idle_waker: Waker::from(stirred.clone()),
            stirred,
        }))
    }
}

/// A response body that drives its connection, and hands the connection back to the pool once the body has ended.
struct Driven {
    inner: Incoming,
    conn: Option<Box<Pooled>>,
    pool: Arc<ConnPool>,
    ended: bool,
    sent_at: Instant,
}

impl http_body::Body for Driven {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let mut frame = Pin::new(&mut this.inner).poll_frame(cx);
        // Nothing buffered (a small body usually came in with the head): drive the connection to read on.
        if frame.is_pending() {
            if let Some(p) = this.conn.as_mut()
                && !p.poll_alive(cx)
            {
                this.conn = None;
            }
            frame = Pin::new(&mut this.inner).poll_frame(cx);
        }
        if let Poll::Ready(None) = frame {
            this.ended = true;
        } else if let Poll::Ready(Some(Ok(_))) = frame {
            this.ended = http_body::Body::is_end_stream(&this.inner);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-response: it closes with this drop.
        // Often the connection already took in the whole exchange while the response was read, and can take the
        // next request as it is: it goes back without another poll of hyper's dispatcher. It then keeps this task's
        // waker while idle instead of the flag-raising one, so an upstream close in that time is found by the next
        // request to poll it, which then goes out on a fresh connection.
        if self.ended
            && let Some(mut p) = self.conn.take()
            && (p.sender.is_ready() || p.park())
        {
            self.pool.checkin(p, self.sent_at);
        }
    }
}
