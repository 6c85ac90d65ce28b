//! The one body type the gateway hands to hyper, in both directions, small constructors for it, and the deadline
//! that bounds how slowly a body may come.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::conn::BodyTimeouts;
use crate::timer::{self, Timer};

/// Error type carried by streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed HTTP body, boxed so that requests, responses and local handlers share one type.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `data` in full.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Box any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A body that was too slow: silent for longer than its idle limit, or not over by its deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("body timed out after {after:?} {}", if *.idle { "of silence" } else { "in all" })]
pub struct BodyTimedOut {
    /// The limit that passed.
    pub after: Duration,
    /// Whether it was the silence limit (otherwise the whole body's).
    pub idle: bool,
}

pin_project! {
    /// A body read under deadlines: it fails with [`BodyTimedOut`] once no frame came for `idle`, or once `until`
    /// passed before its end. The deadline is armed only while the body has nothing ready, so a body that is there
    /// when asked for costs no timer.
    pub struct Deadlined<B> {
        #[pin]
        inner: B,
        timer: Timer,
        idle: Duration,
        until: Option<(Instant, Duration)>,
        sleep: Option<(timer::Sleep, bool)>,
    }
}

impl<B> Deadlined<B> {
    /// A request body the gateway reads in full, under its listener's `limits`.
    pub fn read_in_full(inner: B, timer: &Timer, limits: BodyTimeouts) -> Self {
        Self::new(inner, timer, limits.idle, Some(limits.total))
    }

    /// `inner`, silent for at most `idle` at a time; with `total`, over within that time from now.
    pub fn new(inner: B, timer: &Timer, idle: Duration, total: Option<Duration>) -> Self {
        Self {
            inner,
            timer: timer.clone(),
            idle,
            until: total.map(|t| (Instant::now() + t, t)),
            sleep: None,
        }
    }
}

impl<B> http_body::Body for Deadlined<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Pending => {}
            Poll::Ready(frame) => {
                *this.sleep = None;
                if let (Some(Ok(_)), Some((until, total))) = (&frame, this.until)
                    && Instant::now() >= *until
                {
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut {
                        after: *total,
                        idle: false,
                    }))));
                }
                return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
            }
        }
        let (sleep, idle) = this.sleep.get_or_insert_with(|| {
            let idle_at = Instant::now() + *this.idle;
            match this.until {
                Some((until, _)) if *until < idle_at => (this.timer.sleep_until(*until), false),
                _ => (this.timer.sleep_until(idle_at), true),
            }
        });
        match Pin::new(sleep).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                let after = if *idle {
                    *this.idle
                } else {
                    this.until.map_or(*this.idle, |(_, total)| total)
                };
                Poll::Ready(Some(Err(Box::new(BodyTimedOut { after, idle: *idle }))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The `E` somewhere in `e`'s chain of sources, if any: why a body failed (it went over the route's limit, it
/// timed out) whatever the layers that wrapped the error.
pub fn find_cause<'e, E: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e E> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

/// How much of an unread HTTP/2 request body is read and dropped after an early answer, at most.
const DRAIN_LIMIT: usize = 64 * 1024;
/// How long that may take, at most.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// The caller's request body as the pipeline reads it. Over HTTP/2 a body left unread (the gateway answered before
/// reading it: 401, 404, 413) is drained, up to 64 KiB within 1 s, before it is let go, as nginx does: letting it go
/// at once resets the stream, and some clients (curl 7.88) then lose the answer that was already on its way.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Incoming>,
    drain: bool,
}

impl RequestBody {
    /// `inner`, drained when dropped unread if `drain` (an HTTP/2 request).
    pub fn new(inner: Incoming, drain: bool) -> Self {
        Self {
            inner: Some(inner),
            drain,
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.as_ref().map_or_else(
            || http_body::SizeHint::with_exact(0),
            http_body::Body::size_hint,
        )
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if !self.drain {
            return;
        }
        let Some(body) = self.inner.take() else {
            return;
        };
        if http_body::Body::is_end_stream(&body) {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(drain(body));
        }
    }
}

/// Read and drop `body` until it ends, [`DRAIN_LIMIT`] bytes have come or [`DRAIN_TIME`] passed.
async fn drain(mut body: Incoming) {
    let read = async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}
