//! What every served connection is wrapped in: the graceful-shutdown signal and the deadline for its first request.
//!
//! hyper-util's graceful watcher polls a `watch` receiver's `changed()` future on every wake of every connection;
//! here a wake costs one atomic load, and the connection's waker is registered with the signal once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use slab::Slab;

use crate::timer;

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

pin_project! {
    /// A served connection under [`Shutdown`] and, until its first request head, a deadline; resolves to `None`
    /// when that deadline passed (the connection is dropped, which closes it).
    pub(super) struct Guarded<C> {
        #[pin]
        conn: C,
        shutdown: Registration,
        draining: bool,
        first_request: Option<timer::Sleep>,
        seen: Arc<AtomicBool>,
    }
}

impl<C: GracefulConnection> Guarded<C> {
    /// Guard `conn`; `seen` is set by the service when a request head has arrived.
    pub(super) fn new(
        conn: C,
        shutdown: Arc<Shutdown>,
        first_request: timer::Sleep,
        seen: Arc<AtomicBool>,
    ) -> Self {
        Self {
            conn,
            shutdown: Registration {
                shutdown,
                slot: None,
            },
            draining: false,
            first_request: Some(first_request),
            seen,
        }
    }
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
        if let Some(deadline) = this.first_request {
            if this.seen.load(Ordering::Relaxed) {
                *this.first_request = None;
            } else if Pin::new(deadline).poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        this.conn.poll(cx).map(Some)
    }
}
