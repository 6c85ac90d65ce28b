//! What the request path knows of the caller's connection: its peer and whether it came over TLS. A leaf: the server
//! makes one per connection, the proxy and the flows read it.

use std::net::SocketAddr;

use http::HeaderValue;

/// What the proxy needs to know about the caller's connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The caller's address.
    pub peer: SocketAddr,
    /// Whether the caller came over TLS.
    pub tls: bool,
    /// The caller's IP as a header value, formatted once per connection for `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
}

impl ConnInfo {
    /// The connection from `peer`, over TLS or not.
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let peer_ip = HeaderValue::try_from(peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { peer, tls, peer_ip }
    }
}
