//! The internals the crate's own benches and integration tests drive directly (a caller-auth validator, a credential
//! set, the proxy's prepare step, the timer). Not a stable API: a library user builds a gateway from a config
//! ([`crate::gateway`]) and serves it ([`crate::server`]).

pub use crate::caller_auth::{CallerAuth, RoutePolicy};
pub use crate::credentials::Credentials;
pub use crate::http_client::build as http_client;
pub use crate::metrics::Metrics;
pub use crate::proxy::{Outgoing, UpstreamPool, X_REQUEST_ID, prepare};
pub use crate::routes::{Route, Target};
pub use crate::timer::{Timer, TimerKind};
pub use crate::unix_time::now_secs;
