//! What the request path knows of the caller's connection: its peer, whether it came over TLS and how long its
//! listener lets a request body take. A leaf: the server makes one per connection, the proxy and the flows read it.

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderValue;

/// How long a request body the gateway reads in full (flow routes, bodies kept for a replay) may take.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BodyTimeouts {
    /// Longest silence between two pieces of the body.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub idle: Duration,
    /// Longest time for the whole body.
    #[serde(serialize_with = "humantime_serde::serialize")]
    pub total: Duration,
}

/// What the proxy needs to know about the caller's connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The caller's address.
    pub peer: SocketAddr,
    /// Whether the caller came over TLS.
    pub tls: bool,
    /// The caller's IP as a header value, formatted once per connection for `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
    /// The listener's limits on request bodies read in full.
    pub body: BodyTimeouts,
}

impl ConnInfo {
    /// The connection from `peer`, over TLS or not, on a listener with `body` limits.
    pub fn new(peer: SocketAddr, tls: bool, body: BodyTimeouts) -> Self {
        let peer_ip = HeaderValue::try_from(peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            peer,
            tls,
            peer_ip,
            body,
        }
    }
}
