//! Vendor flows: token-server endpoints answered by the gateway itself. Each flow is a [`Handler`] mounted on a
//! route; flows use the core (credentials, the outbound client) and the core never names a vendor.
//!
//! What all flows share lives in submodules re-exported here: the `[flows]` config table ([`config`]), the one error
//! type with its single mapping to problem responses ([`error`]), the [`Handler`] trait and [`build`] ([`handler`]),
//! and body and response helpers ([`wire`]). Each vendor lives in its own submodule.

pub(crate) mod citadel;
pub(crate) mod config;
pub(crate) mod error;
pub(crate) mod handler;
pub(crate) mod incode;
pub(crate) mod store;
pub(crate) mod telesign;
pub(crate) mod vendor;
pub(crate) mod webhook_auth;
pub(crate) mod wire;

pub(crate) use config::{FlowsConfig, RawFlows, validate};
pub(crate) use error::{FlowError, problem};
pub(crate) use handler::{FlowDeps, FlowRequest, Flows, Handler, build};
pub(crate) use store::{Store, StoreError};
pub(crate) use vendor::VendorFailure;
pub(crate) use wire::{bytes_response, json_response, query_param, read_body, retry_after_secs};
