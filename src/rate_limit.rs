//! Rate limits a fleet enforces together: the interface a limited flow asks before its own in-process limiter.
//! The algorithm is GCRA, the one governor runs in process, so a limit means the same with or without a fleet:
//! `burst` requests at once, then one per `interval`. When the fleet cannot answer, the flow's local limiter decides
//! (the limit then holds per replica).

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;

/// One limit: `burst` requests at once, then one more per `interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rate {
    /// Time for one request's budget to come back.
    pub interval: Duration,
    /// Requests allowed at once.
    pub burst: u32,
}

/// A fleet's shared rate limits.
pub(crate) trait SharedLimits: Send + Sync + fmt::Debug {
    /// Take one request from `key`'s budget in `scope` under `rate`: `Some(Ok(()))` when allowed,
    /// `Some(Err(wait))` when over the limit for `wait` more, `None` when the fleet cannot answer now.
    fn check<'a>(
        &'a self,
        scope: &'a str,
        key: &'a str,
        rate: Rate,
    ) -> BoxFuture<'a, Option<Result<(), Duration>>>;
}
