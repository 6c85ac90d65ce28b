//! What every served connection is wrapped in: the graceful-shutdown signal and the deadline for request heads.
//!
//! hyper-util's graceful watcher polls a `watch` receiver's `changed()` future on every wake of every connection;
//! here a wake costs one atomic load, and the connection's waker is registered with the signal once.
//!
//! The head deadline is lazy. hyper's HTTP/1 header read timeout arms a fresh boxed sleep, reads the clock and makes
//! an extra read attempt for every request, about a thousand instructions each time. Here one deadline per connection
//! is armed once per tick (the period, or for HTTP/1 a quarter of it, at most 250 ms): when it passes, a connection
//! that took in no request head and finished no response for a whole period, and has none in flight, is closed. A
//! connection idle or stalled in a head is therefore closed between one period and one period plus a tick after its
//! last progress. An HTTP/1 connection found quiet at a tick is parked instead (see `park`): its buffers go back.
//!
//! The same deadline bounds a caller that stops reading: a response frame handed to hyper that hyper has not come
//! back for (its socket is full, or the HTTP/2 window closed) while no frame moved on the whole connection for
//! `send_timeout` closes the connection, between one period and `send_timeout` plus one period late.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

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

    /// A place in the waker list, for a task that waits on the signal itself (a parked connection).
    pub(super) fn watch(self: &Arc<Self>) -> Registration {
        Registration {
            shutdown: self.clone(),
            slot: None,
        }
    }
}

/// A connection's place in [`Shutdown`]'s waker list; leaves it when dropped.
#[derive(Debug)]
pub(super) struct Registration {
    shutdown: Arc<Shutdown>,
    /// The slab key and the waker stored under it.
    slot: Option<(usize, Waker)>,
}

impl Registration {
    /// True once shutdown was requested; otherwise makes sure `cx`'s task is woken when it is.
    pub(super) fn poll_requested(&mut self, cx: &Context<'_>) -> bool {
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
    /// Response frames handed to hyper.
    frames: AtomicU64,
    /// Response bodies holding something hyper has not come for (see [`Counted`]).
    owing: AtomicU64,
    /// When the connection last made progress, as seen at a tick (or when its first head became due): kept across
    /// the hyper connections that serve one parked socket in turn.
    quiet_since: Mutex<Option<Instant>>,
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
            owed: false,
            source: None,
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.heads.load(Ordering::Relaxed),
            self.ends.load(Ordering::Relaxed),
        )
    }

    /// Since when the connection has made no progress; `None` before [`Progress::quiet_from`] was first called.
    pub(super) fn quiet_since(&self) -> Option<Instant> {
        *self
            .quiet_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection made progress (or became due for its first head) at `at`.
    pub(super) fn quiet_from(&self, at: Instant) {
        *self
            .quiet_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(at);
    }
}

/// A response body that ends a response in [`Progress`] when dropped, and tells the send timeout when it has
/// something hyper has not come for: a frame just handed out (until hyper asks for the next), or, after a poll that
/// found nothing, a wake from the body's source. A caller that stops reading leaves one of the two standing.
pub(super) struct Counted {
    body: Body,
    progress: Arc<Progress>,
    /// A frame was handed out and hyper has not asked for the next one yet.
    owed: bool,
    /// The waker the body's source holds after a pending poll, made at the first one: most bodies never pend.
    source: Option<(Arc<SourceWake>, Waker)>,
}

/// The waker a response body's source is given: notes that the source has something before waking hyper's task.
struct SourceWake {
    progress: Arc<Progress>,
    state: Mutex<SourceState>,
}

#[derive(Default)]
struct SourceState {
    /// Woken since the last poll: counted in [`Progress`]'s `owing`.
    woken: bool,
    /// The body is gone: a late wake counts nothing.
    gone: bool,
    task: Option<Waker>,
}

impl SourceWake {
    fn state(&self) -> MutexGuard<'_, SourceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Polled again (or dropped): a standing wake is settled; `task` is woken by the next one.
    fn settle(&self, task: Option<&Waker>, gone: bool) {
        let mut st = self.state();
        if std::mem::take(&mut st.woken) {
            self.progress.owing.fetch_sub(1, Ordering::Relaxed);
        }
        st.gone = gone;
        if let Some(task) = task
            && !st.task.as_ref().is_some_and(|t| t.will_wake(task))
        {
            st.task = Some(task.clone());
        }
    }
}

impl Wake for SourceWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let task = {
            let mut st = self.state();
            if !st.gone && !st.woken {
                st.woken = true;
                self.progress.owing.fetch_add(1, Ordering::Relaxed);
            }
            st.task.clone()
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl Counted {
    fn settle_frame(&mut self) {
        if std::mem::take(&mut self.owed) {
            self.progress.owing.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        this.settle_frame();
        let polled = match &this.source {
            None => Pin::new(&mut this.body).poll_frame(cx),
            Some((source, waker)) => {
                source.settle(Some(cx.waker()), false);
                Pin::new(&mut this.body).poll_frame(&mut Context::from_waker(waker))
            }
        };
        match polled {
            Poll::Ready(Some(Ok(_))) => {
                this.owed = true;
                this.progress.owing.fetch_add(1, Ordering::Relaxed);
                this.progress.frames.fetch_add(1, Ordering::Relaxed);
            }
            Poll::Pending if this.source.is_none() => {
                // From now on the source wakes through `SourceWake`; polled once with it so that it holds that waker.
                let source = Arc::new(SourceWake {
                    progress: this.progress.clone(),
                    state: Mutex::default(),
                });
                source.settle(Some(cx.waker()), false);
                let waker = Waker::from(source.clone());
                this.source = Some((source, waker));
                return self.poll_frame(cx);
            }
            _ => {}
        }
        polled
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
        self.settle_frame();
        if let Some((source, _)) = &self.source {
            source.settle(None, true);
        }
        self.progress.end();
    }
}

/// What the head deadline asks of a connection after its first request head: progress every period (a head taken
/// in or a response finished), or a request in flight. HTTP/1 served without hyper's header read timeout is held to
/// that timeout; connections served by hyper-util's `auto` (HTTP/2, sniffed plain ones) to the idle timeout.
pub(super) struct HeadDeadline {
    timer: Timer,
    period: Duration,
    send_timeout: Duration,
    /// How often the deadline is looked at: the period, or less for connections that park.
    tick: Duration,
    parks: bool,
}

/// The longest an idle HTTP/1 connection keeps its buffers: a tick is at most this long. A flood of connections that
/// each send one request holds hyper's buffers for every connection of the last tick or two at once, and the allocator
/// keeps much of that peak after they park; a 1 s tick held up to half as much again (BENCHMARKS.md, "Idle
/// connections", has the figures). Busy connections never park, so the shorter tick costs them only its wake.
const PARK_AFTER: Duration = Duration::from_millis(250);

impl HeadDeadline {
    /// Progress every `period`, timed on `timer`; a caller may leave a response unread for `send_timeout`.
    pub(super) fn every(timer: Timer, period: Duration, send_timeout: Duration) -> Self {
        Self {
            timer,
            period,
            send_timeout,
            tick: period,
            parks: false,
        }
    }

    /// As [`HeadDeadline::every`], for a connection that is asked to park when a tick finds it quiet; ticks are a
    /// quarter of the period, at most [`PARK_AFTER`].
    pub(super) fn parking(timer: Timer, period: Duration, send_timeout: Duration) -> Self {
        Self {
            tick: (period / 4).min(PARK_AFTER),
            parks: true,
            ..Self::every(timer, period, send_timeout)
        }
    }

    /// When a connection quiet since `since` is to be closed.
    pub(super) fn close_at(&self, since: Instant) -> Instant {
        since + self.period
    }
}

/// A served connection the guard drives: one that can be asked to finish its requests and close, and, for HTTP/1, to
/// finish them and hand its socket back instead (park).
pub(super) trait Served: Future {
    /// Finish in-flight requests, then close.
    fn graceful_shutdown(self: Pin<&mut Self>);

    /// Finish in-flight requests, then resolve with the socket instead of closing it; a no-op where unsupported.
    fn park(self: Pin<&mut Self>) {}
}

impl<C: GracefulConnection> Served for C {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        GracefulConnection::graceful_shutdown(self);
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
    /// Response frames handed out when it was armed, and when.
    armed_frames: (u64, Instant),
    /// Since when a response has waited for its caller to read, with no frame moving on the connection.
    stalled_since: Option<Instant>,
}

impl Deadline {
    fn new(sleep: timer::Sleep, armed_at: (u64, u64)) -> Self {
        let fired = Arc::new(Fired::default());
        Self {
            sleep,
            waker: Waker::from(fired.clone()),
            fired,
            armed_at,
            armed_frames: (0, Instant::now()),
            stalled_since: None,
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
    /// Close the connection at once: its caller left a response unread for the send timeout.
    Stalled,
    /// Keep the connection; the deadline is re-armed for the next period.
    Rearmed,
    /// Park the connection (it is quiet); the deadline is re-armed in case it has something left to send.
    Park,
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

impl<C: Served> Guarded<C> {
    /// Guard `conn`, whose first request head is due by `first`; `progress` is counted by its service.
    pub(super) fn new(
        conn: C,
        shutdown: Arc<Shutdown>,
        first: Instant,
        progress: Arc<Progress>,
        rule: HeadDeadline,
    ) -> Self {
        if progress.quiet_since().is_none() {
            progress.quiet_from(Instant::now());
        }
        let first = rule
            .timer
            .sleep_until(first.min(Instant::now() + rule.tick));
        Self {
            conn,
            shutdown: shutdown.watch(),
            draining: false,
            deadline: Some(Deadline::new(first, progress.counts())),
            unarmed: true,
            progress,
            rule,
        }
    }
}

/// `d` passed: close, park, or arm the next tick.
fn on_deadline(
    d: &mut Deadline,
    progress: &Progress,
    rule: &HeadDeadline,
    cx: &Context<'_>,
) -> Verdict {
    let now = progress.counts();
    let at = Instant::now();
    let quiet = now == d.armed_at;
    if !quiet {
        progress.quiet_from(at);
    }
    let in_flight = now.0 > now.1;
    if !in_flight && quiet {
        let since = progress.quiet_since().unwrap_or(at);
        if rule.tick >= rule.period || at >= rule.close_at(since) {
            return Verdict::Close;
        }
        if rule.parks && now.0 > 0 {
            rearm(d, rule, cx);
            return Verdict::Park;
        }
    }
    let frames = progress.frames.load(Ordering::Relaxed);
    if in_flight && frames == d.armed_frames.0 && progress.owing.load(Ordering::Relaxed) > 0 {
        let since = *d.stalled_since.get_or_insert(d.armed_frames.1);
        if at.saturating_duration_since(since) >= rule.send_timeout {
            return Verdict::Stalled;
        }
    } else {
        d.stalled_since = None;
    }
    d.armed_frames = (frames, at);
    d.armed_at = now;
    rearm(d, rule, cx);
    Verdict::Rearmed
}

/// Arm `d` for the next tick of `rule`.
fn rearm(d: &mut Deadline, rule: &HeadDeadline, cx: &Context<'_>) {
    d.sleep = rule.timer.sleep(rule.tick);
    // A period cannot pass while it is being armed; were it to, the next wake sees it.
    let _ = d.arm(cx);
}

impl<C: Served> Future for Guarded<C> {
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
                    Verdict::Stalled => {
                        tracing::debug!(
                            "caller left a response unread for the send timeout; closing"
                        );
                        return Poll::Ready(None);
                    }
                    Verdict::Park if !*this.draining => this.conn.as_mut().park(),
                    Verdict::Rearmed | Verdict::Park => {}
                }
            }
        }
        this.conn.poll(cx).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/core.md promises that a quiet HTTP/1.1 connection gives its buffers back within a quarter of the head
    /// period, at most 250 ms: the tick that finds it quiet.
    #[tokio::test]
    async fn a_parking_connection_is_looked_at_every_quarter_period_at_most_250_ms() {
        let tick =
            |period| HeadDeadline::parking(Timer::new(), period, Duration::from_secs(30)).tick;
        assert_eq!(tick(Duration::from_secs(10)), Duration::from_millis(250));
        assert_eq!(tick(Duration::from_millis(400)), Duration::from_millis(100));
        let plain = HeadDeadline::every(
            Timer::new(),
            Duration::from_secs(10),
            Duration::from_secs(30),
        );
        assert_eq!(
            plain.tick,
            Duration::from_secs(10),
            "a connection that does not park ticks once a period"
        );
    }
}
