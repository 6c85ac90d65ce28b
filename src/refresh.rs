//! The mechanics shared by everything fetched from a remote and kept fresh (issuer key sets, credential tokens): one
//! fetch at a time that every caller joins ([`Flight`]), and exponential backoff between failed attempts
//! ([`Backoff`]).

use std::future::Future;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};
use rand::Rng as _;

/// A fetch in flight, to wait on: `None` when its task died (a panic, or the runtime shutting down).
pub(crate) type Landing<T> = Shared<BoxFuture<'static, Option<T>>>;

/// Single flight: at most one fetch runs, and every caller joins it. Kept inside its owner's state lock; the fetch
/// calls [`Flight::land`] under that same lock before it ends, so a caller either joins a live fetch or starts one.
#[derive(Debug)]
pub(crate) struct Flight<T> {
    in_flight: Option<Landing<T>>,
}

impl<T> Default for Flight<T> {
    fn default() -> Self {
        Self { in_flight: None }
    }
}

impl<T: Clone + Send + Sync + 'static> Flight<T> {
    /// The fetch in flight, if any.
    pub(crate) fn in_flight(&self) -> Option<Landing<T>> {
        self.in_flight.clone()
    }

    /// Join the fetch in flight or start `fetch` as its own task, so that a caller going away does not cancel it.
    pub(crate) fn join_or_start<F>(&mut self, fetch: F) -> Landing<T>
    where
        F: Future<Output = T> + Send + 'static,
    {
        if let Some(l) = &self.in_flight {
            return l.clone();
        }
        let task = tokio::spawn(fetch);
        let landing = async move { task.await.ok() }.boxed().shared();
        self.in_flight = Some(landing.clone());
        landing
    }

    /// The fetch has done its work: the next caller starts a new one.
    pub(crate) fn land(&mut self) {
        self.in_flight = None;
    }
}

/// Exponential backoff: `first` after the first failure, doubling with each further one, never above `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// The delay after one failure.
    pub first: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay after `failures` failures in a row (1 for the first).
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        self.first.saturating_mul(1 << exp).min(self.max)
    }

    /// [`Backoff::delay`] drawn from its upper half, so that clients that failed together do not retry together.
    pub(crate) fn jittered(&self, failures: u32) -> Duration {
        self.delay(failures)
            .mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitters_in_the_upper_half() {
        let b = Backoff {
            first: Duration::from_millis(250),
            max: Duration::from_secs(1),
        };
        let ms = |n| b.delay(n).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(4)],
            [250, 250, 500, 1000, 1000]
        );
        assert_eq!(b.delay(u32::MAX), b.max);
        for n in 1..6 {
            let j = b.jittered(n);
            assert!(j >= b.delay(n) / 2 && j <= b.delay(n), "{j:?}");
        }
    }

    #[tokio::test]
    async fn callers_join_the_one_fetch_in_flight_until_it_lands() {
        let mut flight = Flight::<u32>::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let first = flight.join_or_start(async move { rx.await.unwrap_or(0) });
        let joined = flight.join_or_start(async { 99 });
        assert!(flight.in_flight().is_some());
        tx.send(7).expect("fetch waiting");
        assert_eq!((first.await, joined.await), (Some(7), Some(7)));
        flight.land();
        assert!(flight.in_flight().is_none());
        assert_eq!(flight.join_or_start(async { 8 }).await, Some(8));
    }
}
