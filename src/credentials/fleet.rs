//! What the token cache needs of a fleet (several replicas sharing one token per credential), as an interface: the
//! cache asks [`SharedToken::obtain`] instead of its source, and adopts what [`SharedToken::next_announced`] hands it.
//! The implementation (the `cluster` module, on Redis) decides whether the token the fleet holds will do, or whether
//! this replica fetches one for everybody; when the fleet cannot be reached it fetches locally, so a fleet never
//! makes a credential less available than a single node.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::config::TokenSettings;
use super::source::{FetchedToken, TokenError};

/// A token as the fleet holds it.
pub(crate) struct FleetToken {
    /// The token, its expiry and refresh token.
    pub token: FetchedToken,
    /// Its fleet-wide identity: drawn at random when fetched, never reused, the same on every replica.
    pub generation: u64,
    /// When a replica fetched it.
    pub fetched_at: Instant,
}

/// What [`SharedToken::obtain`] got.
pub(crate) enum Obtained {
    /// The fleet's token: stored by a replica (perhaps this one, which then fetched it).
    Fleet(FleetToken),
    /// Fetched by this replica alone, because the fleet could not be reached.
    Local(FetchedToken),
}

/// Which token a replica asks the fleet to replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replacing {
    /// None from the fleet: any token it holds will do.
    Nothing,
    /// Renewal ahead of expiry: a token other than this generation is wanted; this one stays for the others.
    Renewing(u64),
    /// An upstream rejected this generation: it is removed from the fleet if it is still the one held, so that a
    /// newer token fetched meanwhile by another replica survives.
    Rejected(u64),
}

/// One credential's token, shared by the fleet.
pub(crate) trait SharedToken: Send + Sync + fmt::Debug {
    /// The token to use in place of `replacing`: the fleet's when it has one, else one obtained by running `fetch`
    /// (at most once) under the fleet's lease and stored for every replica. After a failed `fetch` the fleet backs
    /// off for `backoff`. Fetches locally when the fleet cannot be reached.
    fn obtain<'a>(
        &'a self,
        replacing: Replacing,
        backoff: Duration,
        fetch: BoxFuture<'a, Result<FetchedToken, TokenError>>,
    ) -> BoxFuture<'a, Result<Obtained, TokenError>>;

    /// The next token the fleet announces whose generation is not `have`; `None` once the fleet is gone.
    fn next_announced(&self, have: Option<u64>) -> BoxFuture<'_, Option<FleetToken>>;
}

/// A fleet: where each token credential finds its [`SharedToken`].
pub(crate) trait Fleet: Send + Sync + fmt::Debug {
    /// The shared token of credential `name`.
    fn token(&self, name: &str, settings: &TokenSettings) -> Arc<dyn SharedToken>;
}
