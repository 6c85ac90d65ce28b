//! The gateway's shared state, built once from a validated [`Config`]: the only wiring site. Everything the request
//! path needs is reached through [`Gateway`], handed down as `Arc<Gateway>`; there are no globals.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::caller_auth::{CallerAuth, RoutePolicy};
pub mod config;

pub use config::Config;

use crate::cluster::Cluster;
use crate::credentials::fleet::Fleet;
use crate::credentials::{self, Credentials};
use crate::flows::{self, FlowDeps, FlowError};
use crate::http_client::{self, ClientBuildError, HttpClient};
use crate::metrics::Metrics;
use crate::proxy::Upstream;
use crate::routes::config::RouteTarget;
use crate::routes::{Route, RouteTable, Target};
use crate::timer::Timer;

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
    /// The fleet this replica belongs to, in fleet mode.
    pub cluster: Option<Arc<Cluster>>,
}

impl Gateway {
    /// Assemble the gateway. Opens no sockets and fetches nothing; `check` runs exactly this.
    pub fn build(cfg: &Config) -> Result<Arc<Self>, BuildError> {
        let metrics = Arc::new(Metrics::default());
        let http = http_client::build(&[], Duration::from_secs(5)).map_err(|source| {
            BuildError::Client {
                upstream: "default".into(),
                source,
            }
        })?;
        let timer = Timer::of_kind(cfg.timer);
        let mut upstreams = BTreeMap::new();
        for (name, u) in &cfg.upstreams {
            let upstream = Upstream::new(u, &timer, cfg.upstream_pool).map_err(|source| {
                BuildError::Client {
                    upstream: name.clone(),
                    source,
                }
            })?;
            upstreams.insert(name.clone(), Arc::new(upstream));
        }
        let cluster = cfg
            .cluster
            .as_ref()
            .map(|c| Cluster::new(c, &metrics))
            .transpose()?;
        let fleet = cluster.as_deref().map(|c| c as &dyn Fleet);
        let credentials = Credentials::build_in_fleet(&cfg.credentials, &http, &metrics, fleet)?;
        let handlers = flows::build(
            &cfg.flows,
            &FlowDeps {
                http: &http,
                credentials: &credentials,
                limits: cluster.as_ref().map(|c| c.limits()),
            },
        )?;
        let mut routes = Vec::with_capacity(cfg.routes.len());
        for r in &cfg.routes {
            // Names were checked by config validation; a miss here would be a bug, so skip rather than panic.
            let target = match &r.target {
                RouteTarget::Upstream(u) => upstreams.get(u).cloned().map(Target::Upstream),
                RouteTarget::Flow(f) => handlers.get(f).cloned().map(Target::Flow),
            };
            let Some(target) = target else { continue };
            routes.push(Route::new(
                r.name.clone(),
                &r.path_prefix,
                r.host.clone(),
                target,
                r.strip_prefix,
                r.credential.as_deref().and_then(|c| credentials.get(c)),
                r.max_body_bytes,
                r.max_header_bytes,
                RoutePolicy::new(r.auth.clone()),
            ));
        }
        Ok(Arc::new(Self {
            routes: RouteTable::new(routes),
            caller_auth: CallerAuth::new(
                &cfg.issuers,
                cfg.routes.iter().flat_map(|r| r.auth.forwarded_claims()),
                &http,
                metrics.clone(),
            ),
            credentials,
            http,
            metrics,
            timer,
            cluster,
        }))
    }

    /// Start background work (issuer key fetching and refresh). Called when serving starts; `check` never calls it.
    pub async fn start_background(self: &Arc<Self>) -> Result<(), crate::caller_auth::StartError> {
        if let Some(c) = &self.cluster {
            c.start().await;
        }
        self.caller_auth.start().await
    }

    /// Readiness checks: name, ready, detail.
    pub fn readiness(&self) -> Vec<(String, bool, String)> {
        let mut checks = self.caller_auth.readiness();
        checks.extend(self.cluster.as_ref().map(|c| c.readiness()));
        checks
    }
}
