//! Listeners: bind, accept, TLS handshake inside the per-connection task (bounded by a timeout), then hyper-util with
//! the protocol ALPN chose (or sniffed, on plain listeners). Until its first request head, every connection is bounded
//! by the header read timeout; after it, HTTP/1 must keep making progress at that pace and any connection with no
//! request in flight is closed after the idle timeout (HTTP/2 with a GOAWAY; its peers are also PINGed). Each
//! listener holds at most `max_connections`, capped so that all of them fit the open-files limit with room for the
//! admin listener and upstream connections. Shutdown stops accepting and lets in-flight requests finish within a
//! grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::admin::{Control, ReloadRecord, ReloadRequest};
use crate::body::{Body, BoxError, RequestBody};
use crate::config::ListenerConfig;
use crate::conn::{BodyTimeouts, ConnInfo};
use crate::gateway::Config;
use crate::gateway::Gateway;
use crate::metrics::{ListenerCounters, Outcome};
use crate::timer::Timer;
use crate::tls::{self, TlsError};

mod conn_guard;
mod park;

use conn_guard::{Counted, Guarded, HeadDeadline, Progress, Served, Shutdown};

/// A listener could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding failed (address in use, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TLS settings rejected.
    #[error("listener {addr}: TLS: {source}")]
    Tls {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: TlsError,
    },
    /// Background startup work failed (an issuer's JWKS with `startup = "fail_fast"`).
    #[error(transparent)]
    Startup(#[from] crate::caller_auth::StartError),
}

/// A running gateway: its bound addresses, the handle to stop it, and [`Running::reload`].
#[derive(Debug)]
pub struct Running {
    /// Bound addresses of the gateway listeners, in config order.
    pub addrs: Vec<SocketAddr>,
    /// Bound admin address.
    pub admin: Option<SocketAddr>,
    /// The gateway new requests are served by; a reload swaps it.
    live: Arc<ArcSwap<Gateway>>,
    listeners: Vec<Listener>,
    control: Arc<Control>,
    reload_requests: mpsc::Receiver<ReloadRequest>,
    fd_limit: Option<u64>,
    admin_configured: Option<SocketAddr>,
    tasks: JoinSet<()>,
    admin_stop: watch::Sender<bool>,
}

/// One gateway listener: its configured and bound address, what it serves new connections with, and its stop.
#[derive(Debug)]
struct Listener {
    configured: SocketAddr,
    bound: SocketAddr,
    serving: Arc<ArcSwap<Serving>>,
    stop: watch::Sender<bool>,
    /// Resolves once the accept loop has closed its socket after `stop`.
    closed: oneshot::Receiver<()>,
}

/// What a listener serves each new connection with: swapped whole by a reload (new certificate, client CA, limits),
/// while connections already open keep what they started with.
struct Serving {
    acceptor: Option<TlsAcceptor>,
    settings: ConnSettings,
    builders: Builders,
    timer: Timer,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("tls", &self.acceptor.is_some())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Serving {
    fn new(acceptor: Option<TlsAcceptor>, settings: ConnSettings, timer: &Timer) -> Self {
        Self {
            acceptor,
            builders: Builders::new(settings, timer),
            settings,
            timer: timer.clone(),
        }
    }
}

/// A reload could not be applied; the running config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config is invalid (the message names the key).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The gateway could not be assembled from it.
    #[error(transparent)]
    Build(#[from] crate::gateway::BuildError),
    /// A listener could not be bound or its TLS settings were refused, or a new issuer failed to start.
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl From<crate::caller_auth::StartError> for ReloadError {
    fn from(e: crate::caller_auth::StartError) -> Self {
        Self::Server(ServerError::Startup(e))
    }
}

impl Running {
    /// Stop accepting, then wait up to `grace` for in-flight requests to finish.
    pub async fn shutdown(mut self, grace: Duration) {
        for l in &self.listeners {
            let _ = l.stop.send(true);
        }
        let _ = self.admin_stop.send(true);
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            tracing::warn!(?grace, "grace period over; closing remaining connections");
            self.tasks.abort_all();
        }
        // The last requests' spans are sent before the process goes.
        if let Some(export) = &self.live.load().export {
            export.shutdown().await;
        }
    }

    /// The next reload asked for on the admin API (`POST /admin/reload`); whoever drives reloads answers it.
    pub async fn reload_requested(&mut self) -> Option<ReloadRequest> {
        self.reload_requests.recv().await
    }

    /// The gateway serving new requests now.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.live.load_full()
    }

    /// Put `cfg` in force without dropping a connection: the new config is assembled completely first (a credential,
    /// issuer or upstream whose section is unchanged keeps its state, see [`Gateway::rebuild`]), new listeners are
    /// bound and new TLS settings built; only then is everything swapped at once. Requests in flight finish on the
    /// config they started with; new requests and new TLS handshakes use the new one; removed listeners stop
    /// accepting and drain. On any error nothing changes. The outcome is logged, counted and kept for `/readyz` and
    /// the admin API.
    pub async fn reload(
        &mut self,
        cfg: Result<Config, crate::config::ConfigError>,
    ) -> ReloadRecord {
        let outcome = match cfg {
            Ok(cfg) => self.apply(&cfg).await,
            Err(e) => Err(ReloadError::Config(e)),
        };
        let metrics = self.live.load().metrics.clone();
        match outcome {
            Ok(notes) => {
                metrics.config_reload(Outcome::Ok);
                tracing::info!(notes = %notes.join("; "), "config reloaded");
                self.control.reloaded(Ok(notes))
            }
            Err(e) => {
                metrics.config_reload(Outcome::Error);
                let message = e.to_string();
                tracing::error!(error = %message, "config reload failed; the running config stays");
                self.control.reloaded(Err(message))
            }
        }
    }

    async fn apply(&mut self, cfg: &Config) -> Result<Vec<String>, ReloadError> {
        let gw = self.live.load_full().rebuild(cfg)?;
        let per_listener = connection_budget(self.fd_limit, cfg.listeners.len());
        // Everything that can fail, first: TLS settings of every listener, and sockets for new ones.
        let mut prepared = Vec::with_capacity(cfg.listeners.len());
        let mut kept = vec![false; self.listeners.len()];
        for l in &cfg.listeners {
            let acceptor = acceptor(l)?;
            let s = budgeted(settings(l), per_listener, l.address);
            let serving = Serving::new(acceptor, s, &gw.timer);
            // The same configured address keeps its socket (each old listener once: `127.0.0.1:0` may repeat).
            let same =
                (0..kept.len()).find(|&i| !kept[i] && self.listeners[i].configured == l.address);
            let socket = match same {
                Some(i) => {
                    kept[i] = true;
                    Err(i)
                }
                None => Ok(bind(l.address).await?),
            };
            prepared.push((l.address, serving, socket));
        }
        // Last, as it contacts vendors and IdPs: a fail_fast issuer's first JWKS fetch, new credentials' first tokens.
        gw.start_background().await?;
        // Nothing fails from here on.
        let mut notes = Vec::new();
        if cfg.admin != self.admin_configured {
            notes.push("admin.address changes take effect at the next start".to_owned());
        }
        self.live.store(gw.clone());
        let mut old: Vec<Option<Listener>> = self.listeners.drain(..).map(Some).collect();
        for (configured, serving, socket) in prepared {
            let listener = match socket {
                Err(i) => {
                    let Some(l) = old.get_mut(i).and_then(Option::take) else {
                        continue;
                    };
                    l.serving.store(Arc::new(serving));
                    l
                }
                Ok(socket) => {
                    let l = spawn_listener(
                        &mut self.tasks,
                        socket,
                        configured,
                        serving,
                        &self.live,
                        &gw,
                    );
                    notes.push(format!("listening on {}", l.bound));
                    l
                }
            };
            self.listeners.push(listener);
        }
        for l in old.into_iter().flatten() {
            tracing::info!(addr = %l.bound, "listener removed; draining its connections");
            notes.push(format!("stopped listening on {}", l.bound));
            let _ = l.stop.send(true);
            // Once the reload is reported, the removed address accepts no more.
            let _ = l.closed.await;
        }
        self.addrs = self.listeners.iter().map(|l| l.bound).collect();
        Ok(notes)
    }
}

/// The TLS acceptor of a listener's config, `None` for plain HTTP.
fn acceptor(l: &ListenerConfig) -> Result<Option<TlsAcceptor>, ServerError> {
    l.tls
        .as_ref()
        .map(|t| {
            tls::server_config(t)
                .map(TlsAcceptor::from)
                .map_err(|source| ServerError::Tls {
                    addr: l.address,
                    source,
                })
        })
        .transpose()
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok((listener, bound))
}

/// `s` with its connection limit lowered to what fits the open-files limit.
fn budgeted(mut s: ConnSettings, per_listener: usize, addr: SocketAddr) -> ConnSettings {
    if s.max_connections > per_listener {
        tracing::warn!(%addr, configured = s.max_connections, allowed = per_listener,
            "max_connections does not fit the open-files limit; lowered");
        s.max_connections = per_listener;
    }
    s
}

/// Start serving a bound gateway listener: each request goes to the gateway in force when it arrives.
fn spawn_listener(
    tasks: &mut JoinSet<()>,
    (socket, bound): (TcpListener, SocketAddr),
    configured: SocketAddr,
    serving: Serving,
    live: &Arc<ArcSwap<Gateway>>,
    gw: &Gateway,
) -> Listener {
    tracing::info!(addr = %bound, tls = serving.acceptor.is_some(), "listening");
    let counters = gw.metrics.listener(&bound.to_string());
    let live = live.clone();
    let handler = move |req: Request<Incoming>, conn: ConnInfo| {
        let drain = req.version() == http::Version::HTTP_2;
        crate::pipeline::handle(
            live.load_full(),
            req.map(|b| RequestBody::new(b, drain)),
            conn,
        )
    };
    let serving = Arc::new(ArcSwap::from_pointee(serving));
    let (stop, stopped) = watch::channel(false);
    let (closing, closed) = oneshot::channel();
    tasks.spawn(accept_loop(
        socket,
        serving.clone(),
        handler,
        counters,
        stopped,
        Some(closing),
    ));
    Listener {
        configured,
        bound,
        serving,
        stop,
        closed,
    }
}

/// Bind every listener in `cfg` (and the admin listener) and start serving `gw`.
pub async fn start(gw: Arc<Gateway>, cfg: &Config) -> Result<Running, ServerError> {
    gw.start_background().await?;
    let fd_limit = raise_open_files_limit();
    let per_listener = connection_budget(fd_limit, cfg.listeners.len());
    let live = Arc::new(ArcSwap::new(gw.clone()));
    let mut tasks = JoinSet::new();
    let mut listeners = Vec::new();
    for l in &cfg.listeners {
        let acceptor = acceptor(l)?;
        let socket = bind(l.address).await?;
        let s = budgeted(settings(l), per_listener, socket.1);
        let serving = Serving::new(acceptor, s, &gw.timer);
        listeners.push(spawn_listener(
            &mut tasks, socket, l.address, serving, &live, &gw,
        ));
    }
    let (reload_tx, reload_requests) = mpsc::channel(4);
    let control = Arc::new(Control::new(reload_tx));
    let (admin_stop, admin_stopped) = watch::channel(false);
    let admin = match cfg.admin {
        None => None,
        Some(a) => {
            let (listener, addr) = bind(a).await?;
            tracing::info!(%addr, "admin listening");
            let counters = gw.metrics.listener(&addr.to_string());
            let (live, control) = (live.clone(), control.clone());
            let handler = move |req: Request<Incoming>, _conn: ConnInfo| {
                crate::admin::handle(live.load_full(), control.clone(), req)
            };
            let s = ConnSettings {
                tls_handshake_timeout: Duration::from_secs(5),
                header_read_timeout: Duration::from_secs(5),
                max_header_bytes: 16384,
                idle_timeout: Duration::from_secs(60),
                http2_keepalive_interval: Duration::from_secs(30),
                http2_keepalive_timeout: Duration::from_secs(10),
                max_connections: ADMIN_CONNECTIONS,
                body: BodyTimeouts {
                    idle: Duration::from_secs(10),
                    total: Duration::from_secs(30),
                },
                send_timeout: Duration::from_secs(30),
            };
            let serving = Arc::new(ArcSwap::from_pointee(Serving::new(None, s, &gw.timer)));
            tasks.spawn(accept_loop(
                listener,
                serving,
                handler,
                counters,
                admin_stopped,
                None,
            ));
            Some(addr)
        }
    };
    Ok(Running {
        addrs: listeners.iter().map(|l| l.bound).collect(),
        admin,
        live,
        listeners,
        control,
        reload_requests,
        fd_limit,
        admin_configured: cfg.admin,
        tasks,
        admin_stop,
    })
}

/// Connections the admin listener holds at most: kept out of the gateway listeners' budget, so that health checks
/// and metrics still answer while callers hold every connection they may.
const ADMIN_CONNECTIONS: usize = 64;

/// Descriptors kept for everything but caller connections: the admin listener's, the listeners themselves, files
/// and control-plane connections (JWKS, token endpoints).
const RESERVED_FDS: u64 = ADMIN_CONNECTIONS as u64 + 192;

/// Raise the soft open-files limit to the hard one (as nginx's `worker_rlimit_nofile` and HAProxy do), logging both;
/// returns the soft limit in force, `None` when it cannot be read.
fn raise_open_files_limit() -> Option<u64> {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit");
            return None;
        }
    };
    match rlimit::increase_nofile_limit(hard) {
        Ok(raised) => {
            tracing::info!(soft_before = soft, soft = raised, hard, "open-files limit");
            Some(raised)
        }
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit");
            Some(soft)
        }
    }
}

/// Connections each of `listeners` may hold so that all fit `fd_limit`: every caller connection may hold an upstream
/// connection too, and [`RESERVED_FDS`] stay free. No limit is imposed when the limit is unknown.
fn connection_budget(fd_limit: Option<u64>, listeners: usize) -> usize {
    let Some(limit) = fd_limit else {
        return usize::MAX;
    };
    let per = limit.saturating_sub(RESERVED_FDS) / 2 / u64::try_from(listeners.max(1)).unwrap_or(1);
    usize::try_from(per).unwrap_or(usize::MAX).max(1)
}

#[derive(Debug, Clone, Copy)]
struct ConnSettings {
    tls_handshake_timeout: Duration,
    header_read_timeout: Duration,
    max_header_bytes: usize,
    idle_timeout: Duration,
    http2_keepalive_interval: Duration,
    http2_keepalive_timeout: Duration,
    max_connections: usize,
    body: BodyTimeouts,
    send_timeout: Duration,
}

fn settings(l: &ListenerConfig) -> ConnSettings {
    ConnSettings {
        tls_handshake_timeout: l.tls_handshake_timeout,
        header_read_timeout: l.header_read_timeout,
        max_header_bytes: l.max_header_bytes,
        idle_timeout: l.idle_timeout,
        http2_keepalive_interval: l.http2_keepalive_interval,
        http2_keepalive_timeout: l.http2_keepalive_timeout,
        max_connections: l.max_connections,
        body: l.body,
        send_timeout: l.send_timeout,
    }
}

/// One open connection of a listener; gives its place back (and leaves the open-connections gauge) when the
/// connection's task ends.
struct OpenSlot(Arc<AtomicUsize>, prometheus_client::metrics::gauge::Gauge);

impl OpenSlot {
    /// A place among `open`'s at most `limit`, or `None` when all are taken.
    fn take(
        open: &Arc<AtomicUsize>,
        limit: usize,
        gauge: &prometheus_client::metrics::gauge::Gauge,
    ) -> Option<Self> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .ok()
        .map(|_| {
            gauge.inc();
            Self(open.clone(), gauge.clone())
        })
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.dec();
    }
}

/// How connections are served. HTTP/1.1 (nearly every connection) goes straight to hyper's HTTP/1 server: hyper-util's
/// `auto` wraps even a protocol it was told in a replay buffer that every read passes through. `auto` serves what
/// remains: HTTP/2 chosen in ALPN, and plain connections that open like the HTTP/2 preface (prior knowledge).
struct Builders {
    http1: http1::Builder,
    auto: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

impl Builders {
    fn new(settings: ConnSettings, timer: &Timer) -> Self {
        let mut http1 = http1::Builder::new();
        // Heads are timed per connection by the guard (see `conn_guard`), far cheaper than hyper's per-request timer.
        http1
            .header_read_timeout(None)
            .max_buf_size(settings.max_header_bytes);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        auto.http1()
            .timer(timer.clone())
            .header_read_timeout(settings.header_read_timeout)
            .max_buf_size(settings.max_header_bytes);
        auto.http2()
            .timer(timer.clone())
            .keep_alive_interval(Some(settings.http2_keepalive_interval))
            .keep_alive_timeout(settings.http2_keepalive_timeout)
            .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
        Self {
            http1,
            h2: auto.clone().http2_only(),
            auto,
        }
    }
}

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a plain connection speaks, told from its first bytes without consuming them; `None` when it closed
/// or failed before sending any.
async fn sniff(tcp: &TcpStream, peer: SocketAddr) -> Option<Sniffed> {
    let mut head = [0u8; H2_PREFACE.len()];
    match tcp.peek(&mut head).await {
        Ok(0) => None,
        // Too few bytes yet to tell for sure: hyper-util reads on until it can.
        Ok(n) if head[..n] == H2_PREFACE[..n] => Some(Sniffed::MaybeH2),
        Ok(_) => Some(Sniffed::Http1),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "reading the first bytes failed");
            None
        }
    }
}

enum Sniffed {
    Http1,
    MaybeH2,
}

async fn accept_loop<H, F>(
    listener: TcpListener,
    serving: Arc<ArcSwap<Serving>>,
    handler: H,
    counters: ListenerCounters,
    mut stop: watch::Receiver<bool>,
    closing: Option<oneshot::Sender<()>>,
) where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let shutdown = Arc::new(Shutdown::default());
    let open = Arc::new(AtomicUsize::new(0));
    // Connection tasks live in this set so that aborting the accept loop (grace period over) closes them too.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    // What the listener serves with now: a reload swaps it for new connections only.
                    let now = serving.load_full();
                    let settings = now.settings;
                    // Over the limit: closed at once, so that the caller learns it now rather than after a timeout.
                    let Some(slot) = OpenSlot::take(&open, settings.max_connections, &counters.open) else {
                        counters.refused.inc();
                        tracing::debug!(%peer, limit = settings.max_connections, "connection limit reached; closing");
                        drop(tcp);
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let guard = ConnGuard {
                        shutdown: shutdown.clone(),
                        timer: now.timer.clone(),
                        head_period: settings.header_read_timeout,
                        idle_period: settings.idle_timeout,
                        send_timeout: settings.send_timeout,
                        tls_failures: counters.tls_failures.clone(),
                        parked: counters.parked.clone(),
                    };
                    // Spawned as is: wrapping it in another `async` block would hold the future twice.
                    conns.spawn(serve_conn(tcp, peer, now, handler.clone(), guard, slot));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    if let Some(c) = closing {
        let _ = c.send(());
    }
    shutdown.trigger();
    while conns.join_next().await.is_some() {}
}

/// What a connection is served under: the listener's shutdown signal, and the timer and period of its head deadline.
struct ConnGuard {
    shutdown: Arc<Shutdown>,
    timer: Timer,
    head_period: Duration,
    idle_period: Duration,
    send_timeout: Duration,
    tls_failures: prometheus_client::metrics::counter::Counter,
    /// Counts HTTP/1 connections parked while idle.
    parked: prometheus_client::metrics::counter::Counter,
}

impl ConnGuard {
    /// The head deadline for HTTP/1 served without hyper's header read timeout: progress every period, parked when
    /// quiet.
    fn every_period_parking(&self) -> HeadDeadline {
        HeadDeadline::parking(self.timer.clone(), self.head_period, self.send_timeout)
    }

    /// The deadline for connections served by hyper-util's `auto` (HTTP/2, sniffed plain connections): closed once
    /// a whole idle period passes with no request in flight and none started.
    fn idle_period(&self) -> HeadDeadline {
        HeadDeadline::every(self.timer.clone(), self.idle_period, self.send_timeout)
    }

    /// Serve `conn` under `rule` until it ends; `None` when the head deadline closed it (first head due by `first`).
    async fn serve<C, E>(
        &self,
        conn: C,
        first: Instant,
        progress: Arc<Progress>,
        rule: HeadDeadline,
    ) -> Option<Result<(), BoxError>>
    where
        C: Served + Future<Output = Result<(), E>>,
        E: Into<BoxError>,
    {
        Guarded::new(conn, self.shutdown.clone(), first, progress, rule)
            .await
            .map(|r| r.map_err(Into::into))
    }
}

/// A request's answer with its body counted for the head deadline: a named future (not `async`, not a closure's
/// `Map`), so that the service stays `Unpin` for parking and its `Send` bound is provable.
struct Answer<F> {
    fut: Pin<Box<F>>,
    progress: Arc<Progress>,
}

impl<F: Future<Output = Response<Body>>> Future for Answer<F> {
    type Output = Result<Response<Counted>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let res = ready!(this.fut.as_mut().poll(cx));
        Poll::Ready(Ok(res.map(|body| this.progress.clone().count(body))))
    }
}

async fn serve_conn<H, F>(
    tcp: TcpStream,
    peer: SocketAddr,
    serving: Arc<Serving>,
    handler: H,
    guard: ConnGuard,
    _slot: OpenSlot,
) where
    H: Fn(Request<Incoming>, ConnInfo) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let settings = serving.settings;
    let builders = &serving.builders;
    let conn = ConnInfo::new(peer, serving.acceptor.is_some(), settings.body);
    // Counted for the head deadline: every connection's first head is due within `header_read_timeout` (also while
    // the protocol is being sniffed or an HTTP/2 preface is incomplete), and HTTP/1 connections must keep making
    // progress at that pace.
    let progress = Arc::new(Progress::default());
    let counted = progress.clone();
    let svc = service_fn(move |req| {
        counted.head();
        // Boxed once here: the request future is kilobytes, and hyper moves its service future several times. The
        // box is allocated first so that the future is built in place rather than built on the stack and copied.
        let fut = Box::into_pin(Box::write(Box::new_uninit(), handler(req, conn.clone())));
        Answer {
            fut,
            progress: counted.clone(),
        }
    });
    let deadline = Instant::now() + settings.header_read_timeout;
    // Each protocol's connection is boxed on its own: this future is allocated for every connection the moment it
    // is accepted and lives as long as the connection, and holding the largest (TLS, HTTP/2) inline would cost every
    // idle plain HTTP/1 connection as much.
    let served = match &serving.acceptor {
        // Boxed: it is short-lived, and inline it would size this future, held for the connection's life.
        None => match Box::pin(guard.timer.timeout_at(deadline, sniff(&tcp, peer))).await {
            Ok(Some(Sniffed::Http1)) => {
                let accepted = deadline - settings.header_read_timeout;
                Box::pin(park::serve(
                    tcp,
                    svc,
                    &builders.http1,
                    &guard,
                    progress,
                    accepted,
                ))
                .await
            }
            Ok(Some(Sniffed::MaybeH2)) => {
                // Built in a block: a local still in scope at the await would keep its (large) slot in this future.
                let h2 = {
                    let c = builders.auto.serve_connection(TokioIo::new(tcp), svc);
                    Box::pin(guard.serve(c.into_owned(), deadline, progress, guard.idle_period()))
                };
                h2.await
            }
            Ok(None) => return,
            Err(_) => None,
        },
        Some(acceptor) => {
            let tls = Box::pin(serve_tls(
                acceptor, tcp, peer, &serving, svc, &guard, progress,
            ));
            tls.await
        }
    };
    match served {
        Some(Ok(())) => {}
        Some(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with error"),
        None => tracing::debug!(%peer, "no request head within the header read timeout; closing"),
    }
}

/// The TLS handshake, then HTTP/2 or HTTP/1.1 as ALPN chose; `Some(Ok(()))` when the handshake failed (counted and
/// logged here).
async fn serve_tls<S>(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    serving: &Serving,
    svc: S,
    guard: &ConnGuard,
    progress: Arc<Progress>,
) -> Option<Result<(), BoxError>>
where
    S: Service<Request<Incoming>, Response = Response<Counted>, Error = Infallible>,
    S: Clone + Unpin + Send + 'static,
    S::Future: Unpin + Send + 'static,
{
    let settings = serving.settings;
    let tls = match tokio::time::timeout(settings.tls_handshake_timeout, acceptor.accept(tcp)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            guard.tls_failures.inc();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return Some(Ok(()));
        }
        Err(_) => {
            guard.tls_failures.inc();
            tracing::debug!(%peer, "TLS handshake timed out");
            return Some(Ok(()));
        }
    };
    // The first request is due within the header read timeout of the end of the handshake.
    let handshaken = Instant::now();
    // ALPN already chose the protocol: no sniffing.
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let c = serving.builders.h2.serve_connection(TokioIo::new(tls), svc);
        let rule = guard.idle_period();
        let deadline = handshaken + settings.header_read_timeout;
        Box::pin(guard.serve(c.into_owned(), deadline, progress, rule)).await
    } else {
        Box::pin(park::serve(
            tls,
            svc,
            &serving.builders.http1,
            guard,
            progress,
            handshaken,
        ))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_budget_leaves_room_for_upstreams_and_the_admin_listener() {
        // 1,024 descriptors: 256 reserved, and half of the rest for the upstream side of each caller connection.
        assert_eq!(connection_budget(Some(1024), 1), 384);
        assert_eq!(connection_budget(Some(1024), 2), 192);
        assert_eq!(connection_budget(Some(100), 1), 1);
        assert_eq!(connection_budget(None, 3), usize::MAX);
    }
}
