//! Vendor flows: token-server endpoints answered by the gateway itself. Each flow is a [`Handler`] mounted on a
//! route; flows use the core (credentials, the outbound client) and the core never names a vendor.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use http::{Request, Response, StatusCode};
use serde::Deserialize;

use crate::body::Body;
use crate::caller_auth::Caller;
use crate::config::{ConfigError, Ctx};
use crate::error::Problem;
use crate::proxy::ConnInfo;

/// `[flows]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlows {}

/// Validated flow settings.
#[derive(Debug, Default)]
pub struct FlowsConfig {}

impl FlowsConfig {
    /// Names of the enabled flows.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::empty()
    }
}

/// Validate `[flows]`.
pub fn validate(ctx: &Ctx, raw: RawFlows) -> Result<FlowsConfig, ConfigError> {
    let _ = (ctx, raw);
    Ok(FlowsConfig {})
}

/// A vendor step failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The flow has no such endpoint.
    #[error("no such flow endpoint")]
    NotFound,
}

/// Map a flow error to the caller's problem.
pub fn problem(e: &FlowError) -> Problem {
    match e {
        FlowError::NotFound => Problem::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "No route matches this request",
        ),
    }
}

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
pub struct FlowDeps<'a> {
    /// The outbound client.
    pub http: &'a crate::http_client::HttpClient,
}

/// Build the enabled flows' handlers, by name.
pub fn build(
    cfg: &FlowsConfig,
    deps: &FlowDeps<'_>,
) -> Result<BTreeMap<String, Arc<dyn Handler>>, FlowError> {
    let _ = (cfg, deps);
    Ok(BTreeMap::new())
}
