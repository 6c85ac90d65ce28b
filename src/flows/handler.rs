//! What a flow is to the gateway: a [`Handler`] answering [`FlowRequest`]s, and [`build`], which makes the enabled
//! flows' handlers.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{Request, Response};

use super::{FlowError, FlowsConfig, Store, citadel, incode, telesign};
use crate::body::Body;
use crate::caller_auth::Caller;
use crate::conn::ConnInfo;

/// One request to a flow.
#[derive(Debug)]
pub struct FlowRequest {
    /// The request, body limited to the route's maximum; its path is relative to the route prefix.
    pub req: Request<Body>,
    /// The authenticated caller.
    pub caller: Caller,
    /// The caller's connection.
    pub conn: ConnInfo,
}

/// A locally answered endpoint group.
pub trait Handler: Send + Sync + fmt::Debug {
    /// Answer one request.
    fn handle(&self, req: FlowRequest) -> BoxFuture<'_, Result<Response<Body>, FlowError>>;
}

/// What flows may use from the core.
#[derive(Debug)]
pub(crate) struct FlowDeps<'a> {
    /// The outbound client.
    pub http: &'a crate::http_client::HttpClient,
    /// The configured upstream credentials (flows name theirs, e.g. Incode's admin token).
    pub credentials: &'a crate::credentials::Credentials,
    /// Rate limits shared by the fleet, in fleet mode.
    pub limits: Option<std::sync::Arc<dyn crate::rate_limit::SharedLimits>>,
}

/// The enabled flows' handlers by name, and the database they record into.
#[derive(Debug, Clone)]
pub(crate) struct Flows {
    /// Handlers by flow name.
    pub handlers: BTreeMap<String, Arc<dyn Handler>>,
    /// Their database, when a flow needs one.
    pub store: Option<Store>,
}

/// Build the enabled flows' handlers, by name. Opens and migrates the embedded database when a flow needs it (a
/// PostgreSQL one is connected and migrated by [`Store::prepare`] when serving starts).
pub(crate) fn build(cfg: &FlowsConfig, deps: &FlowDeps<'_>) -> Result<Flows, FlowError> {
    let store = match (&cfg.database, &cfg.postgres) {
        _ if cfg.incode.is_none() && cfg.telesign.is_none() => None,
        (_, Some(pg)) => Some(Store::postgres(pg, cfg.retention)?),
        (Some(path), None) => Some(Store::open(path, cfg.retention)?),
        (None, None) => None,
    };
    let mut out: BTreeMap<String, Arc<dyn Handler>> = BTreeMap::new();
    if let (Some(c), Some(store)) = (&cfg.incode, &store) {
        let h = incode::build(c, deps, store.clone())?;
        out.insert(incode::FLOW.to_owned(), h.caller_facing);
        if let Some(w) = h.webhooks {
            out.insert(incode::WEBHOOKS_FLOW.to_owned(), w);
        }
    }
    if let Some(c) = &cfg.citadel {
        out.insert(citadel::FLOW.to_owned(), citadel::build(c, deps));
    }
    if let (Some(c), Some(store)) = (&cfg.telesign, &store) {
        out.insert(
            telesign::FLOW.to_owned(),
            telesign::build(c, store.clone(), deps.limits.clone()),
        );
    }
    Ok(Flows {
        handlers: out,
        store,
    })
}
