//! Vendor flows: token-server endpoints answered by the gateway itself. Each flow is a [`Handler`] mounted on a
//! route; flows use the core (credentials, the outbound client) and the core never names a vendor.
//!
//! What all flows share lives in submodules re-exported here: the `[flows]` config table ([`config`]), the one error
//! type with its single mapping to problem responses ([`error`]), the [`Handler`] trait and [`build`] ([`handler`]),
//! and body and response helpers ([`wire`]). Each vendor lives in its own submodule.

pub mod citadel;
pub mod config;
pub mod error;
pub mod handler;
pub mod incode;
pub mod store;
pub mod telesign;
pub mod vendor;
pub mod webhook_auth;
pub mod wire;

pub use config::{FlowsConfig, RawFlows, validate};
pub use error::{FlowError, problem};
pub use handler::{FlowDeps, FlowRequest, Handler, build};
pub use store::{Store, StoreError};
pub use vendor::VendorFailure;
pub use wire::{bytes_response, json_response, query_param, read_body, retry_after_secs};
