//! The gateway's shared state, built once from a validated [`Config`]: the only wiring site. Everything the request
//! path needs is reached through [`Gateway`], handed down as `Arc<Gateway>`; there are no globals.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use crate::caller_auth::{CallerAuth, RoutePolicy};
pub mod config;

pub use config::Config;

use crate::cluster::Cluster;
use crate::config::Fingerprint;
use crate::credentials::fleet::Fleet;
use crate::credentials::{self, Credentials};
use crate::flows::{self, FlowDeps, FlowError, Flows};
use crate::http_client::{self, ClientBuildError, HttpClient};
use crate::metrics::Metrics;
use crate::proxy::{Upstream, UpstreamPool};
use crate::routes::config::RouteTarget;
use crate::routes::{Route, RouteTable, Target};
use crate::timer::Timer;
use crate::trace::export::{Export, ExportError};

/// The gateway cannot be assembled from this config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An outbound client could not be built.
    #[error("upstreams.{upstream}: {source}")]
    Client {
        /// Upstream name ("default" for the control-plane client).
        upstream: String,
        /// Why.
        #[source]
        source: ClientBuildError,
    },
    /// A credential could not be built.
    #[error(transparent)]
    Credential(#[from] credentials::BuildError),
    /// A flow could not be built.
    #[error("flows: {0}")]
    Flow(#[from] FlowError),
    /// Fleet mode could not be set up.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::BuildError),
    /// Span export could not be set up.
    #[error(transparent)]
    Tracing(#[from] ExportError),
    /// The config could not be put in the form `/admin/config` shows.
    #[error("the config cannot be shown: {0}")]
    Show(#[from] serde_json::Error),
}

/// The first 16 hex digits of the SHA-256 of `text`.
fn version_of(text: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything shared by all requests.
#[derive(Debug)]
pub struct Gateway {
    /// The route table.
    pub routes: RouteTable,
    /// Caller authentication.
    pub caller_auth: CallerAuth,
    /// Upstream credentials.
    pub credentials: Credentials,
    /// The control-plane client (JWKS, token endpoints, vendor flows).
    pub http: HttpClient,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Per-request deadlines (header read, upstream response).
    pub timer: Timer,
    /// Upstreams by name, each with its connections.
    upstreams: BTreeMap<String, Arc<Upstream>>,
    /// The flows' handlers by name, and their database.
    flows: Flows,
    /// What each stateful section was built from (see [`Config::fingerprints`]).
    fingerprints: BTreeMap<String, Fingerprint>,
    /// The pool kind the upstreams were built with.
    upstream_pool: UpstreamPool,
    /// The config it was built from, as the admin API shows it: every secret redacted.
    config_shown: serde_json::Value,
    /// A digest of `config_shown`, to tell configs apart.
    config_version: String,
    /// The file the config came from.
    config_source: String,
    /// What `/metrics` and `/admin/*` require, when set.
    admin_token: Option<SecretString>,
    /// Whether requests are timed for the histograms: only when an admin listener can show them.
    histograms: bool,
    /// The fleet this replica belongs to, in fleet mode.
    pub cluster: Option<Arc<Cluster>>,
    /// Span export, when `[tracing]` is configured.
    pub export: Option<Arc<Export>>,
}

impl Gateway {
    /// Assemble the gateway. Opens no sockets and fetches nothing (span export only starts its batching thread);
    /// `check` runs exactly this.
    pub fn build(cfg: &Config) -> Result<Arc<Self>, BuildError> {
        let metrics = Arc::new(Metrics::default());
        let http = http_client::build(&[], Duration::from_secs(5)).map_err(|source| {
            BuildError::Client {
                upstream: "default".into(),
                source,
            }
        })?;
        let caller_auth = CallerAuth::new(
            &cfg.issuers,
            cfg.routes.iter().flat_map(|r| r.auth.forwarded_claims()),
            &http,
            metrics.clone(),
        );
        Self::assemble(
            cfg,
            None,
            caller_auth,
            http,
            metrics,
            Timer::of_kind(cfg.timer),
        )
    }

    /// The gateway a reload puts in place of this one, for `cfg`: every part whose section is unchanged is kept with
    /// its state (a credential's cached token and renewal timer, an issuer's keys, an upstream's connections, the
    /// flows, a route's counters); the rest is built fresh. Opens no sockets; [`Gateway::start_background`] starts
    /// what is new.
    pub fn rebuild(&self, cfg: &Config) -> Result<Arc<Self>, BuildError> {
        let caller_auth = self.caller_auth.rebuild(
            &cfg.issuers,
            cfg.routes.iter().flat_map(|r| r.auth.forwarded_claims()),
            &self.http,
            &self.metrics,
            |name| self.unchanged(cfg, &format!("issuers.{name}")),
        );
        // A new timer only when its kind changed: connections in flight keep the one they were served with.
        let timer = if self.timer.kind() == cfg.timer {
            self.timer.clone()
        } else {
            Timer::of_kind(cfg.timer)
        };
        Self::assemble(
            cfg,
            Some(self),
            caller_auth,
            self.http.clone(),
            self.metrics.clone(),
            timer,
        )
    }

    /// Whether `section` has the same fingerprint in `cfg` as in the config this gateway was built from (or is
    /// absent from both, as `[cluster]` may be).
    fn unchanged(&self, cfg: &Config, section: &str) -> bool {
        self.fingerprints.get(section) == cfg.fingerprints.get(section)
    }

    fn assemble(
        cfg: &Config,
        prev: Option<&Self>,
        caller_auth: CallerAuth,
        http: HttpClient,
        metrics: Arc<Metrics>,
        timer: Timer,
    ) -> Result<Arc<Self>, BuildError> {
        // Timing costs two clock reads a request: only worth it when an admin listener shows the histograms.
        let histograms = cfg.admin.is_some();
        // What a reload keeps: the parts of `prev` whose sections did not change.
        let kept_upstream = |name: &str| {
            let p = prev?;
            let same = p.upstream_pool == cfg.upstream_pool
                && p.timer.kind() == timer.kind()
                && p.histograms == histograms
                && p.unchanged(cfg, &format!("upstreams.{name}"));
            same.then(|| p.upstreams.get(name).cloned()).flatten()
        };
        // A token credential shares its token through the fleet it was built with: kept while that is kept too.
        let kept_credential = |name: &str| {
            let p = prev?;
            (p.unchanged(cfg, &format!("credentials.{name}")) && p.unchanged(cfg, "cluster"))
                .then(|| p.credentials.get(name))
                .flatten()
        };
        let mut upstreams = BTreeMap::new();
        for (name, u) in &cfg.upstreams {
            let upstream = match kept_upstream(name) {
                Some(kept) => kept,
                None => Arc::new(
                    Upstream::new(u, &timer, cfg.upstream_pool)
                        .map_err(|source| BuildError::Client {
                            upstream: name.clone(),
                            source,
                        })?
                        .with_latency(histograms.then(|| metrics.upstream_latency(name))),
                ),
            };
            upstreams.insert(name.clone(), upstream);
        }
        // Fleet mode: the Redis connection and its subscriptions are kept while [cluster] is unchanged.
        let cluster = match prev {
            Some(p) if p.unchanged(cfg, "cluster") => p.cluster.clone(),
            _ => cfg
                .cluster
                .as_ref()
                .map(|c| Cluster::new(c, &metrics))
                .transpose()?,
        };
        let fleet = cluster.as_deref().map(|c| c as &dyn Fleet);
        let credentials =
            Credentials::build_in_fleet(&cfg.credentials, &http, &metrics, fleet, kept_credential)?;
        // The flows name credentials of their own (Incode's admin token) and share the fleet's limits: kept only
        // while those are kept too.
        let flows = match prev {
            Some(p)
                if p.unchanged(cfg, "flows")
                    && p.unchanged(cfg, "cluster")
                    && p.credentials.iter().all(|(name, c)| {
                        credentials
                            .get(name)
                            .is_some_and(|now| Arc::ptr_eq(&now, c))
                    }) =>
            {
                p.flows.clone()
            }
            _ => flows::build(
                &cfg.flows,
                &FlowDeps {
                    http: &http,
                    credentials: &credentials,
                    limits: cluster.as_ref().map(|c| c.limits()),
                },
            )?,
        };
        // The exporter and its queue are kept while [tracing] is unchanged; a replaced one sends what it holds.
        let export = match prev {
            Some(p) if p.unchanged(cfg, "tracing") => p.export.clone(),
            _ => cfg
                .tracing
                .as_ref()
                .map(|t| Export::build(t).map(Arc::new))
                .transpose()?,
        };
        let mut routes = Vec::with_capacity(cfg.routes.len());
        for r in &cfg.routes {
            // Names were checked by config validation; a miss here would be a bug, so skip rather than panic.
            let target = match &r.target {
                RouteTarget::Upstream(u) => upstreams.get(u).cloned().map(Target::Upstream),
                RouteTarget::Flow(f) => flows.handlers.get(f).cloned().map(Target::Flow),
            };
            let Some(target) = target else { continue };
            let mut route = Route::new(
                r.name.clone(),
                &r.path_prefix,
                r.host.clone(),
                target,
                r.strip_prefix,
                r.credential.as_deref().and_then(|c| credentials.get(c)),
                r.max_body_bytes,
                r.max_header_bytes,
                RoutePolicy::new(r.auth.clone()),
            );
            if let Some(stats) = prev.and_then(|p| p.routes.iter().find(|o| o.name == r.name)) {
                route.stats = stats.stats.clone();
            }
            route.latency = histograms.then(|| metrics.route_latency(&r.name));
            routes.push(route);
        }
        let config_shown = serde_json::to_value(cfg)?;
        let config_version = version_of(&config_shown.to_string());
        Ok(Arc::new(Self {
            routes: RouteTable::new(routes),
            caller_auth,
            credentials,
            http,
            metrics,
            timer,
            upstreams,
            flows,
            fingerprints: cfg.fingerprints.clone(),
            upstream_pool: cfg.upstream_pool,
            config_version,
            config_shown,
            config_source: cfg.source.clone(),
            admin_token: cfg.admin_token.clone(),
            histograms,
            cluster,
            export,
        }))
    }

    /// The config in force as JSON, every secret shown as `[REDACTED]` (see [`crate::config::show`]).
    pub fn config_shown(&self) -> &serde_json::Value {
        &self.config_shown
    }

    /// A short digest of [`Gateway::config_shown`]: equal for equal configs.
    pub fn config_version(&self) -> &str {
        &self.config_version
    }

    /// Whether requests and upstream responses are timed for the histograms.
    pub fn histograms(&self) -> bool {
        self.histograms
    }

    /// The bearer token the admin API requires, when set.
    pub fn admin_token(&self) -> Option<&SecretString> {
        self.admin_token.as_ref()
    }

    /// The file the config in force came from.
    pub fn config_source(&self) -> &str {
        &self.config_source
    }

    /// Start background work: issuer key fetching and refresh, the first token of each credential readiness waits
    /// for, and connecting to (and migrating) a PostgreSQL flows database. Called when serving starts (and for what a reload built); `check` never calls it.
    pub async fn start_background(self: &Arc<Self>) -> Result<(), crate::caller_auth::StartError> {
        if let Some(c) = &self.cluster {
            c.start().await;
        }
        for (_, c) in self.credentials.iter() {
            c.warm_up();
        }
        if let Some(store) = self.flows.store.clone() {
            // In the background: a database that is down must not hold up serving the proxy.
            tokio::spawn(async move { store.prepare().await });
        }
        self.caller_auth.start().await
    }

    /// Readiness checks: name, ready, detail (issuers' keys, and the credentials readiness waits for).
    pub fn readiness(&self) -> Vec<(String, bool, String)> {
        let mut checks = self.caller_auth.readiness();
        for (name, c) in self.credentials.iter() {
            if let Some((ready, detail)) = c.readiness() {
                checks.push((format!("credential {name}"), ready, detail));
            }
        }
        checks.extend(self.cluster.as_ref().map(|c| c.readiness()));
        checks.extend(self.flows.store.as_ref().and_then(|s| s.readiness()));
        checks
    }
}
