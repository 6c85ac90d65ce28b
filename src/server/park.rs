//! Parking: HTTP/1.1 connections that give their buffers back while idle.
//!
//! hyper keeps an 8 KiB write buffer and the last request's 8 KiB read buffer for as long as it serves a connection,
//! which made an idle keep-alive connection cost ~16 KiB (BENCHMARKS.md, "Idle connections"). A connection the head
//! deadline finds quiet (no head taken in, no response finished, nothing in flight for a tick) is parked instead:
//! hyper is asked to close it without shutting the socket down (`graceful_shutdown` + `poll_without_shutdown`, which
//! closes at once when idle and after the response otherwise), the socket is taken back with whatever hyper had read
//! ahead (`into_parts`), and nothing but the socket is held until the caller sends again; then a new hyper connection
//! serves it, starting with the bytes read ahead. hyper closes an idle connection this way without writing anything,
//! so the caller sees one connection kept alive.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::ConnGuard;
use super::conn_guard::{Counted, Guarded, Progress, Served};
use crate::body::BoxError;

/// A caller's socket, plain or TLS, that can tell when the caller has sent something without reading it.
pub(super) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready once the caller has sent something (or closed, or failed).
    fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Socket for TcpStream {
    fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl Socket for TlsStream<TcpStream> {
    fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (tcp, tls) = self.get_mut();
        // Plaintext rustls has already decrypted (or an alert) will not make the socket readable again.
        match tls.process_new_packets() {
            Ok(state) if state.plaintext_bytes_to_read() == 0 && !state.peer_has_closed() => {
                tcp.poll_read_ready(cx)
            }
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// A socket with the bytes hyper had read ahead of it when the connection was parked, read again first.
pub(super) struct Resumed<I> {
    ahead: Bytes,
    io: I,
}

impl<I> Resumed<I> {
    /// `io`, with nothing read ahead.
    pub(super) fn new(io: I) -> Self {
        Self {
            ahead: Bytes::new(),
            io,
        }
    }

    /// Put `read` (read from the socket before what is still ahead) in front of the bytes still to be read.
    fn read_back(&mut self, read: Bytes) {
        if read.is_empty() {
            return;
        }
        // Copied: `read` shares hyper's whole read buffer, which is what parking gives back.
        let mut ahead = BytesMut::with_capacity(read.len() + self.ahead.len());
        ahead.extend_from_slice(&read);
        ahead.extend_from_slice(&self.ahead);
        self.ahead = ahead.freeze();
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Resumed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.ahead.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.ahead.len().min(buf.remaining());
        buf.put_slice(&self.ahead.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Resumed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How one hyper connection on the socket ended.
pub(super) enum Ended<I, S> {
    /// The connection is over (the caller closed it, asked to, or shutdown came).
    Closed,
    /// Parked: the socket and the service, to be served anew when the caller sends again.
    Parked(Resumed<I>, S),
}

/// One hyper HTTP/1 connection on a socket, which can be parked.
pub(super) struct Http1<I: Socket, S: HttpService<Incoming>> {
    conn: Option<http1::Connection<TokioIo<Resumed<I>>, S>>,
    parking: bool,
    /// Over and not parked: the socket is being shut down, as hyper would have done.
    closing: Option<Resumed<I>>,
}

impl<I: Socket, S: HttpService<Incoming>> Http1<I, S> {
    fn new(conn: http1::Connection<TokioIo<Resumed<I>>, S>) -> Self {
        Self {
            conn: Some(conn),
            parking: false,
            closing: None,
        }
    }
}

impl<I, S> Future for Http1<I, S>
where
    I: Socket,
    S: HttpService<Incoming, ResBody = Counted> + Unpin,
    S::Future: Unpin,
{
    type Output = Result<Ended<I, S>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            if let Some(io) = this.closing.as_mut() {
                // The caller may be gone already: a failed shutdown ends the connection all the same.
                let _ = ready!(Pin::new(io).poll_shutdown(cx));
                this.closing = None;
                return Poll::Ready(Ok(Ended::Closed));
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(Ok(Ended::Closed));
            };
            ready!(conn.poll_without_shutdown(cx))?;
            let Some(conn) = this.conn.take() else {
                return Poll::Ready(Ok(Ended::Closed));
            };
            let parts = conn.into_parts();
            let mut io = parts.io.into_inner();
            io.read_back(parts.read_buf);
            if this.parking {
                return Poll::Ready(Ok(Ended::Parked(io, parts.service)));
            }
            this.closing = Some(io);
        }
    }
}

impl<I, S> Served for Http1<I, S>
where
    I: Socket,
    S: HttpService<Incoming, ResBody = Counted> + Unpin,
    S::Future: Unpin,
{
    fn graceful_shutdown(mut self: Pin<&mut Self>) {
        self.parking = false;
        if let Some(conn) = self.conn.as_mut() {
            Pin::new(conn).graceful_shutdown();
        }
    }

    fn park(mut self: Pin<&mut Self>) {
        if let Some(conn) = self.conn.as_mut() {
            Pin::new(conn).graceful_shutdown();
            self.parking = true;
        }
    }
}

/// What the parked socket woke for.
enum Woken {
    Sent,
    Due,
    Shutdown,
}

/// Hold a parked socket until the caller sends, `due` passes, or shutdown is asked for.
async fn wait<I: Socket>(io: &mut I, due: Instant, guard: &ConnGuard) -> Woken {
    let mut shutdown = guard.shutdown.watch();
    let mut sleep = guard.timer.sleep_until(due);
    std::future::poll_fn(|cx| {
        if shutdown.poll_requested(cx) {
            return Poll::Ready(Woken::Shutdown);
        }
        if Pin::new(&mut sleep).poll(cx).is_ready() {
            return Poll::Ready(Woken::Due);
        }
        // A failed socket counts as sent: hyper reads the error and reports it.
        io.poll_sent(cx).map(|_| Woken::Sent)
    })
    .await
}

/// How long closing an idle parked connection may wait for the socket's shutdown (a TLS close_notify).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serve HTTP/1.1 on `io` until the connection ends, parking it whenever it is quiet; `None` when the head deadline
/// closed it. Its first head is due one header read timeout after `since` (its accept or the end of its handshake).
pub(super) async fn serve<I, S>(
    io: I,
    mut svc: S,
    builder: &http1::Builder,
    guard: &ConnGuard,
    progress: Arc<Progress>,
    since: Instant,
) -> Option<Result<(), BoxError>>
where
    I: Socket,
    S: HttpService<Incoming, ResBody = Counted> + Unpin,
    S::Future: Unpin,
{
    progress.quiet_from(since);
    let mut io = Resumed::new(io);
    let mut first = true;
    loop {
        let rule = guard.every_period_parking();
        let due = rule.close_at(progress.quiet_since().unwrap_or(since));
        if io.ahead.is_empty() {
            match wait(&mut io.io, due, guard).await {
                Woken::Sent => {}
                Woken::Due if first => return None,
                Woken::Due | Woken::Shutdown => {
                    // Closed as hyper closes an idle connection: the socket is shut down first.
                    let _ = guard
                        .timer
                        .timeout_at(Instant::now() + CLOSE_GRACE, io.shutdown())
                        .await;
                    return Some(Ok(()));
                }
            }
        }
        first = false;
        let conn = Http1::new(builder.serve_connection(TokioIo::new(io), svc));
        match Box::pin(Guarded::new(
            conn,
            guard.shutdown.clone(),
            due,
            progress.clone(),
            rule,
        ))
        .await
        {
            Some(Ok(Ended::Parked(back, service))) => {
                guard.parked.inc();
                io = back;
                svc = service;
            }
            Some(Ok(Ended::Closed)) => return Some(Ok(())),
            Some(Err(e)) => return Some(Err(e)),
            None => return None,
        }
    }
}
