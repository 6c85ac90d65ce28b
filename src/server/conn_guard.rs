//! What every served connection is wrapped in: the graceful-shutdown signal and the deadline for request heads.
//!
//! hyper-util's graceful watcher polls a `watch` receiver's `changed()` future on every wake of every connection;
//! here a wake costs one atomic load, and the connection's waker is registered with the signal once.
//!
//! The head deadline is lazy. hyper's HTTP/1 header read timeout arms a fresh boxed sleep, reads the clock and makes
//! an extra read attempt for every request, about a thousand instructions each time. Here one deadline per connection
//! is armed once per period: when it passes, a connection that took in no request head and finished no response
//! since it was armed, and has none in flight, is closed; any other is given another period. A connection idle or
//! stalled in a head is therefore closed between one and two periods after its last progress.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use slab::Slab;

use crate::body::{Body, BoxError};
use crate::timer::{self, Timer};

/// Tells every guarded connection to finish its in-flight requests and close.
#[derive(Debug, Default)]
pub(super) struct Shutdown {
    requested: AtomicBool,
    wakers: Mutex<Slab<Waker>>,
}

impl Shutdown {
    fn wakers(&self) -> MutexGuard<'_, Slab<Waker>> {
        self.wakers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ask every connection, present and future, to shut down gracefully.
    pub(super) fn trigger(&self) {
        self.requested.store(true, Ordering::Release);
        let wakers: Vec<Waker> = self.wakers().drain().collect();
        wakers.into_iter().for_each(Waker::wake);
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }
}

/// A connection's place in [`Shutdown`]'s waker list; leaves it when dropped.
#[derive(Debug)]
struct Registration {
    shutdown: Arc<Shutdown>,
    /// The slab key and the waker stored under it.
    slot: Option<(usize, Waker)>,
}

impl Registration {
    /// True once shutdown was requested; otherwise makes sure `cx`'s task is woken when it is.
    fn poll_requested(&mut self, cx: &Context<'_>) -> bool {
        if self.shutdown.requested() {
            return true;
        }
        if self
            .slot
            .as_ref()
            .is_some_and(|(_, w)| w.will_wake(cx.waker()))
        {
            return false;
        }
        let mut wakers = self.shutdown.wakers();
        if let Some((key, _)) = self.slot.take() {
            wakers.try_remove(key);
        }
        let key = wakers.insert(cx.waker().clone());
        drop(wakers);
        self.slot = Some((key, cx.waker().clone()));
        // `trigger` sets the flag before it drains the list: a registration it did not see finds the flag set.
        self.shutdown.requested()
    }

    fn leave(&mut self) {
        if let Some((key, _)) = self.slot.take() {
            self.shutdown.wakers().try_remove(key);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.leave();
    }
}

/// How far a connection's requests got: heads taken in and responses finished, counted by the service.
#[derive(Debug, Default)]
pub(super) struct Progress {
    heads: AtomicU64,
    ends: AtomicU64,
}

impl Progress {
    /// A request head was taken in.
    pub(super) fn head(&self) {
        self.heads.fetch_add(1, Ordering::Relaxed);
    }

    /// A response was finished (or abandoned).
    pub(super) fn end(&self) {
        self.ends.fetch_add(1, Ordering::Relaxed);
    }

    /// `body`, counted as a finished response once hyper is done with it (sent in full, or dropped).
    pub(super) fn count(self: Arc<Self>, body: Body) -> Counted {
        Counted {
            body,
            progress: self,
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.heads.load(Ordering::Relaxed),
            self.ends.load(Ordering::Relaxed),
        )
    }
}

/// A response body that ends a response in [`Progress`] when dropped.
pub(super) struct Counted {
    body: Body,
    progress: Arc<Progress>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.progress.end();
    }
}

/// What the head deadline asks of a connection after its first request head: progress every period (a head taken
/// in or a response finished), or a request in flight. HTTP/1 served without hyper's header read timeout is held to
/// that timeout; connections served by hyper-util's `auto` (HTTP/2, sniffed plain ones) to the idle timeout.
pub(super) struct HeadDeadline {
    timer: Timer,
    period: Duration,
}

impl HeadDeadline {
    /// Progress every `period`, timed on `timer`.
    pub(super) fn every(timer: Timer, period: Duration) -> Self {
        Self { timer, period }
    }
}

/// The head deadline's waker: notes that the deadline fired before waking the connection's task, so that the
/// connection's many other wakes cost one load instead of a poll of the deadline.
#[derive(Default)]
struct Fired {
    flag: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Fired {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::Release);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// A connection's head deadline, armed under the [`Fired`] waker.
struct Deadline {
    sleep: timer::Sleep,
    fired: Arc<Fired>,
    waker: Waker,
    /// [`Progress`] when the deadline was armed.
    armed_at: (u64, u64),
}

impl Deadline {
    fn new(sleep: timer::Sleep) -> Self {
        let fired = Arc::new(Fired::default());
        Self {
            sleep,
            waker: Waker::from(fired.clone()),
            fired,
            armed_at: (0, 0),
        }
    }

    /// Poll the sleep with the flag-raising waker, to wake `cx`'s task when it fires.
    fn arm(&mut self, cx: &Context<'_>) -> Poll<()> {
        self.fired.flag.store(false, Ordering::Relaxed);
        *self
            .fired
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        Pin::new(&mut self.sleep).poll(&mut Context::from_waker(&self.waker))
    }
}

/// What the connection is to do about its head deadline once it passed.
enum Verdict {
    /// Close the connection: no progress for a whole period (or no first head at all).
    Close,
    /// Keep the connection; the deadline is re-armed for the next period.
    Rearmed,
}

pin_project! {
    /// A served connection under [`Shutdown`] and the head deadline; resolves to `None` when the deadline closed it
    /// (the connection is dropped, which closes it).
    pub(super) struct Guarded<C> {
        #[pin]
        conn: C,
        shutdown: Registration,
        draining: bool,
        deadline: Option<Deadline>,
        unarmed: bool,
        progress: Arc<Progress>,
        rule: HeadDeadline,
    }
}

impl<C: GracefulConnection> Guarded<C> {
    /// Guard `conn`, whose first request head is due by `first`; `progress` is counted by its service.
    pub(super) fn new(
        conn: C,
        shutdown: Arc<Shutdown>,
        first: timer::Sleep,
        progress: Arc<Progress>,
        rule: HeadDeadline,
    ) -> Self {
        Self {
            conn,
            shutdown: Registration {
                shutdown,
                slot: None,
            },
            draining: false,
            deadline: Some(Deadline::new(first)),
            unarmed: true,
            progress,
            rule,
        }
    }
}

/// `d` passed: close, keep without deadline, or arm the next period.
fn on_deadline(
    d: &mut Deadline,
    progress: &Progress,
    rule: &HeadDeadline,
    cx: &Context<'_>,
) -> Verdict {
    let now = progress.counts();
    if now.0 == 0 {
        return Verdict::Close;
    }
    let in_flight = now.0 > now.1;
    if !in_flight && now == d.armed_at {
        return Verdict::Close;
    }
    d.armed_at = now;
    rearm(d, rule, cx);
    Verdict::Rearmed
}

/// Arm `d` for the next period of `rule`.
fn rearm(d: &mut Deadline, rule: &HeadDeadline, cx: &Context<'_>) {
    d.sleep = rule.timer.sleep(rule.period);
    // A period cannot pass while it is being armed; were it to, the next wake sees it.
    let _ = d.arm(cx);
}

impl<C: GracefulConnection> Future for Guarded<C> {
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if !*this.draining && this.shutdown.poll_requested(cx) {
            *this.draining = true;
            this.shutdown.leave();
            this.conn.as_mut().graceful_shutdown();
        }
        if let Some(d) = this.deadline.as_mut() {
            let passed = if *this.unarmed {
                *this.unarmed = false;
                d.arm(cx).is_ready()
            } else {
                d.fired.flag.load(Ordering::Acquire)
                    && Pin::new(&mut d.sleep)
                        .poll(&mut Context::from_waker(&d.waker))
                        .is_ready()
            };
            if passed {
                match on_deadline(d, this.progress, this.rule, cx) {
                    // An idle connection that served requests is told first (HTTP/2 GOAWAY; HTTP/1 closes at once)
                    // and closed for good one period later if it is still there.
                    Verdict::Close if !*this.draining && this.progress.counts().0 > 0 => {
                        *this.draining = true;
                        this.shutdown.leave();
                        this.conn.as_mut().graceful_shutdown();
                        rearm(d, this.rule, cx);
                    }
                    Verdict::Close => return Poll::Ready(None),
                    Verdict::Rearmed => {}
                }
            }
        }
        this.conn.poll(cx).map(Some)
    }
}
