//! A plain-HTTP upstream's keep-alive HTTP/1.1 connections, each driven by the task that serves the request it
//! carries: credgate's own pool, with hyper-util's as a tested fallback.
//!
//! What it replaces: hyper-util's pooled client (`hyper_util::client::legacy`) for `http://` upstreams. That client
//! runs every connection in a task of its own, so one forwarded request crosses tasks several times (request
//! hand-off, response, body chunks, a spawned task that returns the connection). Here the caller's own task polls the
//! upstream connection, from sending the head to the response body's end, then puts it back on a LIFO idle list.
//! Idle connections are not polled by anyone. A request that a reused connection could not send (it was closed while
//! idle) is sent once more on a fresh one.
//!
//! Why it is kept: it was measured cheaper per request. See BENCHMARKS.md, section "Instructions per request
//! (callgrind): the figure that repeats" (hyper-util's client against the pool driven in the serving task), section
//! "Before and after, same sitting" (the same two builds under load), and section "Sitting 12" (two task polls per
//! request instead of 3.3, from the wakers below).
//!
//! Every poll of a connection registers one waker of its own ([`ConnWaker`]), which raises a flag and wakes the task
//! using the connection only while that task waits on it. hyper's connection signals its side of each hand-over
//! (request queued, response delivered, body chunk taken) to whoever polled it last; here that is always the task that
//! is about to poll it anyway, or nobody at all, and a woken task would only be polled once more for nothing, or,
//! with a connection fresh from the pool, some other caller's task would be. Idle connections keep the same waker, so
//! checkout polls just the ones whose flag something raised (most often the upstream closing them) and takes the
//! others as they were left.
//!
//! Invariants it relies on, all of them hyper's client connection's (`hyper::client::conn::http1`) and none of them
//! promised by its API:
//! - a queued request, data or EOF on the socket, and a body chunk taken each wake the waker of the connection's last
//!   poll, and no other;
//! - the response head and body chunks are handed over only while the connection is polled, so the response future
//!   and the body may be polled with a no-op waker right after each poll of the connection;
//! - for speed and reuse only (correctness holds without them): a small body is taken in with its head, and a
//!   connection whose exchange is complete is ready for the next request without another poll.
//!
//! The unit test `hypers_wake_order_on_a_reused_connection_is_the_one_the_pool_relies_on` pins that sequence step by
//! step. Should it fail after a hyper upgrade, the fallback is one line: `upstream_pool = "hyper_util"` in `[server]`
//! (or the `std-pool` build feature) sends `http://` upstreams through hyper-util's pooled client, as `https://` ones
//! always are. CI runs the whole test suite once with it.

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
    wakes: Arc<ConnWaker>,
    /// `wakes` as a waker, made once: every poll of `conn` registers this same one.
    waker: Waker,
}

/// The waker of a pooled connection: records that something happened to it, and passes that on to the task using it
/// while the task waits on it.
#[derive(Default)]
struct ConnWaker {
    /// Raised by every wake: the connection has something to take in (data, EOF, an error, a queued request).
    stirred: AtomicBool,
    /// Whether `task` waits on the connection now.
    attached: AtomicBool,
    /// The task that last polled the connection.
    task: Mutex<Option<Waker>>,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.stirred.store(true, Ordering::Release);
        if self.attached.load(Ordering::Acquire)
            && let Some(task) = self
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
        {
            task.wake_by_ref();
        }
    }
}

impl ConnWaker {
    /// From now on wakes reach `task` as well.
    fn attach(&self, task: &Waker) {
        {
            let mut slot = self.task.lock().unwrap_or_else(PoisonError::into_inner);
            match slot.as_mut() {
                Some(w) => w.clone_from(task),
                None => *slot = Some(task.clone()),
            }
        }
        self.attached.store(true, Ordering::Release);
    }

    /// From now on wakes only raise the flag: whatever the task does next either polls the connection itself or
    /// does not need it.
    fn detach(&self) {
        self.attached.store(false, Ordering::Release);
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
    /// Poll the connection on behalf of `task`, which is woken by whatever it then waits for; `false` once it is
    /// closed.
    fn poll_for(&mut self, task: &Waker) -> bool {
        self.wakes.attach(task);
        self.poll_detached()
    }

    /// Let the connection take in whatever happened since it was last polled, waking no task; `false` once it is
    /// closed.
    fn poll_detached(&mut self) -> bool {
        self.wakes.stirred.store(false, Ordering::Relaxed);
        Pin::new(&mut self.conn)
            .poll(&mut Context::from_waker(&self.waker))
            .is_pending()
    }

    /// Whether the connection, which no task waits on, can take a request: as it was left unless something stirred
    /// it since.
    fn reusable(&mut self) -> bool {
        self.wakes.detach();
        if self.wakes.stirred.load(Ordering::Acquire) && !self.poll_detached() {
            return false;
        }
        self.sender.is_ready()
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
        // Queueing the request wakes the connection's waker, which no task is attached to yet: it only stirs it.
        let mut sent = std::pin::pin!(pooled.sender.try_send_request(req));
        let mut pooled = Some(pooled);
        let result = poll_fn(|cx| {
            if let Some(p) = pooled.as_mut() {
                if p.poll_for(cx.waker()) {
                    // The response can only come from the connection just polled, and is looked for after every
                    // such poll: its hand-over need not wake this task.
                    return sent.as_mut().poll(&mut Context::from_waker(Waker::noop()));
                }
                // A connection that ended is dropped, which fails the pending request instead of leaving it waiting.
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
        let wakes = Arc::new(ConnWaker::default());
        Ok(Box::new(Pooled {
            sender,
            conn,
            waker: Waker::from(wakes.clone()),
            wakes,
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
        let frame = match this.conn.as_mut() {
            Some(p) => {
                // Only the connection feeds the body, and it is polled below whenever the body has nothing: neither
                // taking a chunk (which tells the connection to read on) nor a chunk arriving needs to wake this task.
                p.wakes.detach();
                let mut detached = Context::from_waker(Waker::noop());
                let mut frame = Pin::new(&mut this.inner).poll_frame(&mut detached);
                // Nothing buffered (a small body usually came in with the head): drive the connection to read on.
                if frame.is_pending() {
                    if p.poll_for(cx.waker()) {
                        frame = Pin::new(&mut this.inner).poll_frame(&mut detached);
                    } else {
                        this.conn = None;
                        frame = Pin::new(&mut this.inner).poll_frame(cx);
                    }
                }
                frame
            }
            None => Pin::new(&mut this.inner).poll_frame(cx),
        };
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
        // next request as it is: it goes back without another poll of hyper's dispatcher.
        if self.ended
            && let Some(mut p) = self.conn.take()
            && p.reusable()
        {
            self.pool.checkin(p, self.sent_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http::header::HOST;
    use http_body::Body as _;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::Notify;

    use super::*;

    /// A task's waker that counts its wakes and lets the test wait for the next one.
    #[derive(Default)]
    struct Task {
        wakes: AtomicUsize,
        woken: Notify,
    }

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            self.woken.notify_one();
        }
    }

    impl Task {
        fn wakes(&self) -> usize {
            self.wakes.load(Ordering::SeqCst)
        }

        /// Poll `fut` to its end as this task, each time after a wake; returns its output and how many polls found
        /// it waiting.
        async fn run<F: Future>(self: &Arc<Self>, fut: F) -> (F::Output, usize) {
            let waker = Waker::from(self.clone());
            let mut fut = std::pin::pin!(fut);
            let mut waits = 0;
            loop {
                if let Poll::Ready(out) = fut.as_mut().poll(&mut Context::from_waker(&waker)) {
                    return (out, waits);
                }
                waits += 1;
                self.woken.notified().await;
            }
        }
    }

    /// A keep-alive upstream on loopback answering every request `200 ok`; counts the connections it accepted.
    async fn upstream() -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while let Ok(n @ 1..) = tcp.read(&mut chunk).await {
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if tcp.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let uri = format!("http://{addr}").parse().expect("uri");
        (uri, accepted)
    }

    /// One request through `pool`, its response body read to the end.
    async fn exchange(pool: &Arc<ConnPool>, host: &str) -> Bytes {
        let req = Request::get("/")
            .header(HOST, host)
            .body(body::empty())
            .expect("request");
        let rsp = pool.send(req, Instant::now()).await.expect("response");
        rsp.into_body().collect().await.expect("body").to_bytes()
    }

    /// A pool to `uri` with room for a few idle connections.
    fn test_pool(uri: Uri) -> Arc<ConnPool> {
        Arc::new(ConnPool::new(
            uri,
            Duration::from_secs(5),
            8,
            Duration::from_secs(60),
        ))
    }

    /// Should this fail after a hyper upgrade, see the next test: switch `upstream_pool = "hyper_util"` and
    /// investigate.
    #[tokio::test]
    async fn an_exchange_wakes_its_task_once_per_wait_and_no_other_task() {
        let (uri, accepted) = upstream().await;
        let host = uri.authority().expect("authority").to_string();
        let pool = test_pool(uri);

        let first = Arc::new(Task::default());
        let (body, waits) = first.run(exchange(&pool, &host)).await;
        assert_eq!(&body[..], b"ok");
        assert!(waits >= 1, "the upstream's answer was waited for");
        // A wake beyond the waits came while the task was being polled: it would only poll the task again.
        assert_eq!(first.wakes(), waits, "wakes of the first task");

        let before = first.wakes();
        let second = Arc::new(Task::default());
        let (body, waits) = second.run(exchange(&pool, &host)).await;
        assert_eq!(&body[..], b"ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the connection was reused"
        );
        assert_eq!(second.wakes(), waits, "wakes of the second task");
        assert_eq!(
            first.wakes(),
            before,
            "the first task was woken by the connection it had handed back"
        );
    }

    /// The wake sequence of one exchange on a reused connection, step by step as [`ConnPool::send`] and [`Driven`]
    /// take it. The pool relies on each step: hyper's client connection signals every hand-over to the waker of its
    /// last poll and to nobody else, and hands the response and its body over only while the connection is polled,
    /// so that the pool can poll the response and the body with a no-op waker.
    ///
    /// If this fails after a hyper upgrade, hyper changed that order and the pool may leave a request waiting
    /// forever: set `upstream_pool = "hyper_util"` in `[server]` (or build with the `std-pool` feature) and
    /// investigate before switching back.
    #[tokio::test]
    async fn hypers_wake_order_on_a_reused_connection_is_the_one_the_pool_relies_on() {
        let (uri, accepted) = upstream().await;
        let host = uri.authority().expect("authority").to_string();
        let pool = test_pool(uri);
        assert_eq!(&exchange(&pool, &host).await[..], b"ok");
        let mut p = pool
            .checkout(Instant::now())
            .expect("the connection went back");
        let task = Arc::new(Task::default());
        let waker = Waker::from(task.clone());
        let mut noop = Context::from_waker(Waker::noop());
        let stirred = |p: &Pooled| p.wakes.stirred.swap(false, Ordering::SeqCst);
        stirred(&p);

        // 1. Queueing the request wakes the connection's own waker (detached: no task).
        let req = Request::get("/")
            .header(HOST, &host)
            .body(body::empty())
            .expect("request");
        let mut sent = std::pin::pin!(p.sender.try_send_request(req));
        assert!(
            stirred(&p),
            "1: queueing a request wakes the connection's waker"
        );
        assert_eq!(task.wakes(), 0, "1: no task is woken by queueing");

        // 2. A poll of the connection writes the request and waits for the answer; no response yet.
        assert!(p.poll_for(&waker), "2: the connection is open");
        assert!(
            sent.as_mut().poll(&mut noop).is_pending(),
            "2: no response yet"
        );
        assert_eq!(task.wakes(), 0, "2: writing the request wakes no task");

        // 3. The answer arriving wakes the connection's waker, and through it the attached task: once.
        task.woken.notified().await;
        assert!(stirred(&p), "3: the answer wakes the connection's waker");
        assert_eq!(task.wakes(), 1, "3: the answer wakes the task once");

        // 4. One poll of the connection takes the answer in and hands the response over, waking no task.
        assert!(p.poll_for(&waker), "4: the connection is open");
        let Poll::Ready(Ok(rsp)) = sent.as_mut().poll(&mut noop) else {
            panic!("4: the response is handed over within the poll of the connection");
        };
        assert_eq!(
            task.wakes(),
            1,
            "4: handing the response over wakes no task"
        );

        // 5. The body came in with the head: it is there without another poll of the connection, and ends.
        p.wakes.detach();
        let mut incoming = rsp.into_body();
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut incoming).poll_frame(&mut noop) else {
            panic!("5: the body is buffered with the head");
        };
        assert_eq!(frame.into_data().ok().as_deref(), Some(&b"ok"[..]));
        assert!(incoming.is_end_stream(), "5: the body has ended");
        assert_eq!(task.wakes(), 1, "5: taking the body wakes no task");

        // 6. The connection can take the next request as it is.
        assert!(p.reusable(), "6: the connection is reusable");
        assert_eq!(task.wakes(), 1, "6: checking it in wakes no task");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection throughout"
        );
    }
}
