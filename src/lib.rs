//! credgate: an OAuth2 client-credentials gateway and reverse proxy.
//!
//! The request path runs one way, and each step has one owner:
//!
//! 1. [`server`] accepts TCP, terminates TLS ([`tls`]) and serves HTTP/1.1 and HTTP/2 with hyper-util; each
//!    connection is described to the layers below by a [`conn::ConnInfo`].
//! 2. [`pipeline`] is the request path, read top to bottom: match a route ([`routes`]), authenticate the caller
//!    ([`caller_auth`]), attach the upstream credential ([`credentials`]), forward ([`proxy`]) and stream back. Its
//!    [`pipeline::Error`] gathers every module's error and answers it, in one place.
//! 3. Each module maps its own errors into the leaf [`problem::Problem`] (`application/problem+json`).
//!
//! Layers only point down. The leaves: [`config`] (the shared kit: errors naming the key, durations, secret
//! references, PEM reading, listener and upstream sections), [`problem`], [`conn`], [`body`], [`metrics`],
//! [`timer`], and the shared mechanisms [`unix_time`], [`jwt_payload`] (JWT segments, unverified claims) and
//! [`refresh`] (single flight, backoff). Each domain module owns its config section and validation
//! (`caller_auth::config`, `credentials::config`, `routes::config`, the flows' sections); [`gateway::config`] is the root TOML schema that
//! assembles them, and [`gateway::Gateway`] is built once from it and owns every shared part (the control-plane
//! [`http_client`], credentials, routes, metrics; each upstream keeps its own connections in [`proxy`]). Vendor flows
//! ([`flows`]) are users of that core, mounted on routes like any other handler; the core never names a vendor.
//!
//! Inside the steps: [`caller_auth`] keeps issuer-bound key sets (JWKS fetch and refresh, static key files) and a
//! verified-token cache; [`credentials`] holds static headers and token kinds (OAuth2 client credentials, vendor
//! login) behind one cache with refresh-ahead and single flight; [`trace`] honours or starts the request's W3C trace
//! and, with `[tracing]`, exports the request's spans over OTLP.
//! Around them: [`admin`] serves health, readiness, metrics and the admin API; [`server::Running::reload`] puts a
//! new config in force without dropping a connection, keeping what did not change (`Gateway::rebuild`), and
//! [`reload`] says when (SIGHUP, a changed file); [`cli`] is the command line (`run`, `check`, `status`, `reload`,
//! `dev-certs`, `demo`); [`demo`] starts sandbox vendors on loopback and [`dev_certs`] makes a local CA; [`body`]
//! is the one body type handed to hyper.
//! [`cluster`] is fleet mode: replicas sharing one token per credential through Redis, behind the interface the
//! token cache defines (`credentials::fleet`), so the core never names Redis.

#![warn(missing_docs)]

pub(crate) mod admin;
pub mod body;
pub(crate) mod caller_auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod conn;
pub(crate) mod credentials;
pub mod demo;
pub mod dev_certs;
pub(crate) mod flows;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub(crate) mod http_client;
pub(crate) mod jwt_payload;
pub(crate) mod metrics;
pub(crate) mod path;
pub mod pipeline;
pub mod problem;
pub(crate) mod proxy;
pub(crate) mod rate_limit;
pub(crate) mod refresh;
pub mod reload;
pub(crate) mod routes;
pub mod server;
#[doc(hidden)]
pub mod testing;
pub(crate) mod timer;
pub(crate) mod tls;
pub mod trace;
pub(crate) mod unix_time;
