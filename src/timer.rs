//! Deadlines that are cheap to arm and to disarm: credgate's own timer, with tokio's as a tested fallback.
//!
//! What it replaces: tokio's timer wheel (`tokio::time::sleep_until`) for the deadlines armed on every request and
//! connection, which almost never fire: hyper's header-read timeout, the connection guard's head deadline, the
//! upstream response timeout. With tokio's timer each arm-and-drop pair is an insertion into and a removal from the
//! wheel under the driver's lock. Here arming is a slab insertion under an uncontended lock and disarming a removal.
//!
//! Why it is kept: it was measured cheaper, per deadline and per request. See BENCHMARKS.md, section "Sittings 7 and
//! 8" (own deadline timer, and the `deadline/arm_and_drop/*` figures of `benches/pipeline.rs`), section "Sitting 6"
//! (the instructions tokio's per-request timers cost, from callgrind) and the table in "Criterion: the hot path in
//! process". `cargo bench --bench pipeline -- deadline` measures both timers again.
//!
//! How it works: one task, spawned on first use, sleeps on tokio's timer until the earliest deadline, wakes what is
//! due and goes back to sleep until the next (at most one pass per 10 ms); deadlines that were dropped meanwhile cost
//! it nothing but a skipped slot in that scan.
//!
//! Invariants it relies on:
//! - every deadline it serves tolerates firing up to one scan interval (10 ms) late: they are all timeouts of
//!   seconds, never a schedule;
//! - it runs inside a tokio runtime with time enabled, whose clock it reads; should that runtime end the firing
//!   task, the next armed deadline starts a new one;
//! - a deadline wakes the waker of its latest poll, as every future's contract asks; [`Sleep`] is `Unpin` and arms
//!   only when first polled, so a deadline made and never polled costs nothing.
//!
//! Fallback: [`TimerKind::Tokio`] (`timer = "tokio"` in `[server]`, or the default when built with the `std-timer`
//! feature) gives the same API on `tokio::time::sleep_until`. CI runs the whole test suite once with it.

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use pin_project_lite::pin_project;
use slab::Slab;
use tokio::sync::Notify;

/// The shortest time between two passes of the firing task over the armed deadlines.
const SCAN_INTERVAL: Duration = Duration::from_millis(10);

/// Which implementation a [`Timer`] arms its deadlines on (`server.timer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// credgate's own timer (this module): the default unless built with the `std-timer` feature.
    #[cfg_attr(not(feature = "std-timer"), default)]
    Credgate,
    /// tokio's timer wheel, the fallback.
    #[cfg_attr(feature = "std-timer", default)]
    Tokio,
}

/// A source of cheap deadlines; clones share one set of deadlines and one firing task.
#[derive(Clone)]
pub struct Timer {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Own(Arc<Shared>),
    Tokio,
}

impl Default for Timer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

struct Shared {
    /// Deadlines are spread over one shard per CPU (by task), so that workers of a multi-thread runtime arming
    /// deadlines at once rarely meet on a lock.
    shards: Box<[Mutex<Shard>]>,
    firing_task: AtomicBool,
    /// Wakes the firing task: a deadline earlier than all others arrived, or this timer is gone.
    wake: Arc<Notify>,
}

#[derive(Default)]
struct Shard {
    armed: Slab<Armed>,
    /// No deadline armed here is earlier than this (it may be stale-early: its deadline was dropped).
    earliest: Option<Instant>,
}

struct Armed {
    deadline: Instant,
    waker: Waker,
    fired: bool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The firing task holds only a weak reference; this wakes it to find the timer gone and end.
        self.wake.notify_one();
    }
}

impl Shared {
    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The shard for the current task: tasks are numbered in order, so connections spread evenly.
    fn pick_shard(&self) -> usize {
        /// Takes the task id's number as it is.
        #[derive(Default)]
        struct IdNumber(u64);
        impl Hasher for IdNumber {
            fn finish(&self) -> u64 {
                self.0
            }
            fn write(&mut self, bytes: &[u8]) {
                for b in bytes {
                    self.0 = (self.0 << 8) | u64::from(*b);
                }
            }
            fn write_u64(&mut self, n: u64) {
                self.0 = n;
            }
        }
        if self.shards.len() == 1 {
            return 0;
        }
        let Some(id) = tokio::task::try_id() else {
            return 0;
        };
        let mut h = IdNumber::default();
        id.hash(&mut h);
        usize::try_from(h.finish() % self.shards.len() as u64).unwrap_or(0)
    }

    /// A deadline earlier than any armed before it: make sure the firing task is running and looks again.
    fn kick(self: &Arc<Self>) {
        if self.firing_task.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        } else {
            tokio::spawn(fire(Arc::downgrade(self), self.wake.clone()));
        }
    }

    /// The earliest deadline armed in any shard.
    fn earliest(&self) -> Option<Instant> {
        (0..self.shards.len())
            .filter_map(|i| self.shard(i).earliest)
            .min()
    }
}

impl Timer {
    /// A timer of the build's default kind ([`TimerKind::default`]) with nothing armed.
    pub fn new() -> Self {
        Self::of_kind(TimerKind::default())
    }

    /// A timer of `kind` with nothing armed; credgate's starts its firing task with the first armed deadline.
    pub fn of_kind(kind: TimerKind) -> Self {
        let inner = match kind {
            TimerKind::Credgate => {
                let cpus = std::thread::available_parallelism().map_or(1, usize::from);
                Inner::Own(Arc::new(Shared {
                    shards: (0..cpus.min(64)).map(|_| Mutex::default()).collect(),
                    firing_task: AtomicBool::new(false),
                    wake: Arc::default(),
                }))
            }
            TimerKind::Tokio => Inner::Tokio,
        };
        Self { inner }
    }

    /// Which implementation this timer arms its deadlines on.
    pub fn kind(&self) -> TimerKind {
        match self.inner {
            Inner::Own(_) => TimerKind::Credgate,
            Inner::Tokio => TimerKind::Tokio,
        }
    }

    /// A future that completes at `deadline`.
    pub fn sleep_until(&self, deadline: Instant) -> Sleep {
        let state = match &self.inner {
            Inner::Own(shared) => SleepState::Own {
                shared: shared.clone(),
                armed: Arming::Unarmed,
            },
            Inner::Tokio => SleepState::Tokio(None),
        };
        Sleep { deadline, state }
    }

    /// A future that completes after `duration`.
    pub fn sleep(&self, duration: Duration) -> Sleep {
        // tokio's clock, which both kinds fire by (tests may pause it); outside tests it is `Instant::now()`.
        self.sleep_until(tokio::time::Instant::now().into_std() + duration)
    }

    /// Run `fut` until `deadline` at most: `Err(Elapsed)` when the time ran out first.
    pub fn timeout_at<F: Future>(&self, deadline: Instant, fut: F) -> Timeout<F> {
        Timeout {
            fut,
            sleep: self.sleep_until(deadline),
        }
    }
}

impl hyper::rt::Timer for Timer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Timer::sleep(self, duration))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Timer::sleep_until(self, deadline))
    }
}

/// A deadline of a [`Timer`]: armed when first polled, disarmed when dropped.
pub struct Sleep {
    deadline: Instant,
    state: SleepState,
}

enum SleepState {
    Own {
        shared: Arc<Shared>,
        armed: Arming,
    },
    /// tokio's sleep, made (and boxed, to keep [`Sleep`] `Unpin`) when first polled.
    Tokio(Option<Pin<Box<tokio::time::Sleep>>>),
}

#[derive(Clone, Copy)]
enum Arming {
    Unarmed,
    Armed { shard: usize, key: usize },
    Done,
}

impl std::fmt::Debug for Sleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleep")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let (shared, armed) = match &mut this.state {
            SleepState::Own { shared, armed } => (shared, armed),
            SleepState::Tokio(sleep) => {
                let deadline = this.deadline;
                return sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())))
                    .as_mut()
                    .poll(cx);
            }
        };
        match *armed {
            Arming::Done => Poll::Ready(()),
            Arming::Unarmed => {
                let shard = shared.pick_shard();
                let mut st = shared.shard(shard);
                let key = st.armed.insert(Armed {
                    deadline: this.deadline,
                    waker: cx.waker().clone(),
                    fired: false,
                });
                *armed = Arming::Armed { shard, key };
                if st.earliest.is_none_or(|e| this.deadline < e) {
                    st.earliest = Some(this.deadline);
                    drop(st);
                    shared.kick();
                }
                Poll::Pending
            }
            Arming::Armed { shard, key } => {
                let mut st = shared.shard(shard);
                match st.armed.get_mut(key) {
                    Some(a) if !a.fired => {
                        a.waker.clone_from(cx.waker());
                        Poll::Pending
                    }
                    _ => {
                        st.armed.try_remove(key);
                        *armed = Arming::Done;
                        Poll::Ready(())
                    }
                }
            }
        }
    }
}

impl hyper::rt::Sleep for Sleep {}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let SleepState::Own {
            shared,
            armed: Arming::Armed { shard, key },
        } = &self.state
        {
            shared.shard(*shard).armed.try_remove(*key);
        }
    }
}

/// The firing task: sleep until the earliest deadline, wake what is due, repeat; end once the timer is gone.
async fn fire(shared: Weak<Shared>, wake: Arc<Notify>) {
    // Should the runtime end this task (shutdown), the next armed deadline starts a new one.
    struct Running(Weak<Shared>);
    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(shared) = self.0.upgrade() {
                shared.firing_task.store(false, Ordering::Release);
            }
        }
    }
    let _running = Running(shared.clone());
    let mut due = Vec::new();
    loop {
        // tokio's clock, which tests may pause; outside tests it is the system's monotonic clock.
        let scanned_at = tokio::time::Instant::now().into_std();
        let next = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut next: Option<Instant> = None;
            for i in 0..shared.shards.len() {
                let mut st = shared.shard(i);
                let mut earliest: Option<Instant> = None;
                for (_, a) in st.armed.iter_mut().filter(|(_, a)| !a.fired) {
                    if a.deadline <= scanned_at {
                        a.fired = true;
                        due.push(a.waker.clone());
                    } else if earliest.is_none_or(|e| a.deadline < e) {
                        earliest = Some(a.deadline);
                    }
                }
                st.earliest = earliest;
                next = match (next, earliest) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            next
        };
        due.drain(..).for_each(Waker::wake);
        // Scans are at least SCAN_INTERVAL apart: many staggered deadlines (thousands of idle connections) cost one
        // pass over the armed set per interval, not one per deadline. A deadline fires at most that late.
        let not_before = scanned_at + SCAN_INTERVAL;
        let mut target = next.map(|t| t.max(not_before));
        loop {
            match target {
                Some(at) => tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => break,
                    () = wake.notified() => {}
                },
                None => wake.notified().await,
            }
            // Woken for an earlier deadline, or to find the timer gone.
            let Some(shared) = shared.upgrade() else {
                return;
            };
            target = shared.earliest().map(|t| t.max(not_before));
        }
    }
}

pin_project! {
    /// A future bounded by a [`Timer`] deadline; see [`Timer::timeout_at`].
    #[derive(Debug)]
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        sleep: Sleep,
    }
}

/// The deadline of a [`Timeout`] passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        Pin::new(this.sleep).poll(cx).map(|()| Err(Elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both kinds: every behaviour below holds for the fallback as for credgate's own.
    const KINDS: [TimerKind; 2] = [TimerKind::Credgate, TimerKind::Tokio];

    fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_at_its_time_and_not_before() {
        for kind in KINDS {
            let timer = Timer::of_kind(kind);
            let start = tokio::time::Instant::now();
            timer.sleep(Duration::from_millis(300)).await;
            assert!(start.elapsed() >= Duration::from_millis(300), "{kind:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_armed_later_still_fires_first() {
        for kind in KINDS {
            let timer = Timer::of_kind(kind);
            let mut late = timer.sleep(Duration::from_secs(60));
            assert!(poll_once(&mut late).is_pending(), "{kind:?}");
            let start = tokio::time::Instant::now();
            timer.sleep(Duration::from_millis(50)).await;
            assert!(start.elapsed() < Duration::from_secs(60), "{kind:?}");
            assert!(poll_once(&mut late).is_pending(), "{kind:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_passes_a_ready_value_and_cuts_a_stalled_one() {
        for kind in KINDS {
            let timer = Timer::of_kind(kind);
            assert_eq!(
                timer
                    .timeout_at(Instant::now() + Duration::from_secs(1), async { 7 })
                    .await,
                Ok(7),
                "{kind:?}"
            );
            let stalled = timer.timeout_at(
                Instant::now() + Duration::from_secs(1),
                std::future::pending::<()>(),
            );
            assert_eq!(stalled.await, Err(Elapsed), "{kind:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn staggered_deadlines_all_fire_within_one_scan_interval() {
        for kind in KINDS {
            let timer = Timer::of_kind(kind);
            let start = tokio::time::Instant::now();
            let waits: Vec<_> = (1..=100u64)
                .map(|i| {
                    let after = Duration::from_millis(i * 3);
                    let sleep = timer.sleep(after);
                    tokio::spawn(async move {
                        sleep.await;
                        (after, start.elapsed())
                    })
                })
                .collect();
            for w in waits {
                let (after, fired) = w.await.expect("task");
                assert!(
                    fired >= after,
                    "{kind:?}: {after:?} fired early at {fired:?}"
                );
                assert!(
                    fired <= after + SCAN_INTERVAL,
                    "{kind:?}: {after:?} fired late at {fired:?}"
                );
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deadlines_armed_from_several_workers_all_fire_and_none_early() {
        for kind in KINDS {
            let timer = Timer::of_kind(kind);
            let waits: Vec<_> = (0..200u64)
                .map(|i| {
                    let timer = timer.clone();
                    tokio::spawn(async move {
                        let deadline = Instant::now() + Duration::from_millis(20 + i % 30);
                        timer.sleep_until(deadline).await;
                        Instant::now() >= deadline
                    })
                })
                .collect();
            let all = async {
                for w in waits {
                    assert!(w.await.expect("task"), "{kind:?}: a deadline fired early");
                }
            };
            tokio::time::timeout(Duration::from_secs(10), all)
                .await
                .expect("every deadline fired");
        }
    }

    #[test]
    fn the_build_default_is_credgates_own_unless_std_timer() {
        let expected = if cfg!(feature = "std-timer") {
            TimerKind::Tokio
        } else {
            TimerKind::Credgate
        };
        assert_eq!(Timer::new().kind(), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_deadline_is_disarmed() {
        let timer = Timer::of_kind(TimerKind::Credgate);
        let mut s = timer.sleep(Duration::from_secs(5));
        assert!(poll_once(&mut s).is_pending());
        let armed = |t: &Timer| {
            let Inner::Own(shared) = &t.inner else {
                unreachable!("credgate's timer")
            };
            (0..shared.shards.len())
                .map(|i| shared.shard(i).armed.len())
                .sum::<usize>()
        };
        assert_eq!(armed(&timer), 1);
        drop(s);
        assert_eq!(armed(&timer), 0);
    }
}
