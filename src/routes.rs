//! The route table, compiled once at startup: longest path-prefix match on segment boundaries, host-specific
//! routes before host-agnostic ones.

pub(crate) mod config;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::caller_auth::RoutePolicy;
use crate::credentials::Credential;
use crate::flows::Handler;
use crate::metrics::RouteLatency;
use crate::proxy::Upstream;

/// What answers a matched route.
#[derive(Debug, Clone)]
pub enum Target {
    /// Forward to an upstream.
    Upstream(Arc<Upstream>),
    /// Answer locally with a vendor flow.
    Flow(Arc<dyn Handler>),
}

/// Per-route response counters by status class (1xx..5xx).
#[derive(Debug, Default)]
pub struct RouteStats {
    by_class: [AtomicU64; 5],
}

impl RouteStats {
    /// Count one response with `status`.
    pub fn record(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Responses so far for class `class` (1..=5).
    pub fn count(&self, class: usize) -> u64 {
        self.by_class
            .get(class.wrapping_sub(1))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Name for logs and metrics.
    pub name: String,
    /// Path prefix without trailing slash ("" for "/").
    prefix: String,
    /// Exact host, lower case.
    host: Option<String>,
    /// What answers it.
    pub target: Target,
    /// Strip the prefix before forwarding.
    pub strip_prefix: bool,
    /// Credential attached upstream.
    pub credential: Option<Arc<dyn Credential>>,
    /// Body limit.
    pub max_body_bytes: u64,
    /// Header limit.
    pub max_header_bytes: usize,
    /// Caller authentication policy.
    pub auth: RoutePolicy,
    /// Response counters (kept across a reload for a route of the same name).
    pub stats: Arc<RouteStats>,
    /// Request-time histograms, when the gateway keeps them (it has an admin listener to show them).
    pub latency: Option<RouteLatency>,
}

impl Route {
    /// A route from its parts; `prefix` as configured.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        prefix: &str,
        host: Option<String>,
        target: Target,
        strip_prefix: bool,
        credential: Option<Arc<dyn Credential>>,
        max_body_bytes: u64,
        max_header_bytes: usize,
        auth: RoutePolicy,
    ) -> Self {
        Self {
            name,
            prefix: prefix.trim_end_matches('/').to_owned(),
            host,
            target,
            strip_prefix,
            credential,
            max_body_bytes,
            max_header_bytes,
            auth,
            stats: Arc::default(),
            latency: None,
        }
    }

    /// Does `path` (canonical, see [`crate::path`]) fall under this route's prefix, on a segment boundary? The
    /// prefix matches in any ASCII case, so that an upstream that ignores case cannot be reached past a stricter
    /// route.
    fn matches_path(&self, path: &str) -> bool {
        let n = self.prefix.len();
        match (path.get(..n), path.get(n..)) {
            (Some(head), Some(rest)) => {
                head.eq_ignore_ascii_case(&self.prefix)
                    && (rest.is_empty() || rest.starts_with('/'))
            }
            _ => false,
        }
    }

    /// `path` (which this route matched) without the prefix, always starting with `/`.
    pub fn rest<'a>(&self, path: &'a str) -> &'a str {
        crate::proxy::forwarded_path(path, self.prefix.len())
    }

    /// Bytes of a matched path the upstream does not see (see [`crate::proxy::Outgoing::strip_len`]).
    pub fn strip_len(&self) -> usize {
        if self.strip_prefix {
            self.prefix.len()
        } else {
            0
        }
    }
}

/// All routes, in match order.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Whether any route matches on host: if none does, requests need not have theirs looked up.
    uses_hosts: bool,
}

impl RouteTable {
    /// Compile a table; order among equal prefixes follows `routes`.
    pub fn new(mut routes: Vec<Route>) -> Self {
        // Longest prefix first; among equal prefixes a host-specific route first. Stable sort keeps file order.
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
        });
        let uses_hosts = routes.iter().any(|r| r.host.is_some());
        Self { routes, uses_hosts }
    }

    /// Whether any route matches on host.
    pub fn uses_hosts(&self) -> bool {
        self.uses_hosts
    }

    /// The route for `host` (without port, any case) and `path`.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            r.matches_path(path)
                && match (&r.host, host) {
                    (None, _) => true,
                    (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                    (Some(_), None) => false,
                }
        })
    }

    /// Every route.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}
