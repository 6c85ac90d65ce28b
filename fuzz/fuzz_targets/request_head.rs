//! Request-head rewriting (hop-by-hop removal, credential header override, forwarded headers), on any head a caller
//! can send: the request target on the first line, then `name: value` lines. Property: no caller-sent value of a
//! gateway-owned header reaches the upstream (the credential, `Host`, `X-Request-Id`, `traceparent` (the one the
//! pipeline chose), a forwarded claim's header, `X-Forwarded-For` only ends with the peer), and no hop-by-hop header,
//! untrusted forwarding header or header named in `Connection` passes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use credgate::conn::{BodyTimeouts, ConnInfo};
use credgate::gateway::{Config, Gateway};
use credgate::testing::{Outgoing, Target, prepare};
use credgate_fuzz::lines;
use futures_util::FutureExt as _;
use http::{HeaderName, HeaderValue, Request};

const GONE: &[&str] = &[
    "connection",
    "keep-alive",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "forwarded",
    "x-real-ip",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "authorization",
];

fn gateway() -> Arc<Gateway> {
    let cfg = Config::from_toml(
        r#"
[upstreams.u]
url = "http://127.0.0.1:9/base"
[credentials.k]
kind = "static"
allowed_hosts = ["127.0.0.1"]
headers = { "X-Api-Key" = "gateway-secret", "X-Tenant" = "gateway-tenant" }
[[routes]]
path_prefix = "/api"
upstream = "u"
credential = "k"
auth = "none"
strip_prefix = true
"#,
        "<fuzz>",
    )
    .unwrap_or_else(|e| panic!("fixture config: {e}"));
    credgate_fuzz::runtime()
        .block_on(async { Gateway::build(&cfg) })
        .unwrap_or_else(|e| panic!("gateway: {e}"))
}

fn main() {
    // Read-only after setup: a panic in one input cannot leave it half-changed.
    let gw = std::panic::AssertUnwindSafe(gateway());
    let route = gw
        .routes
        .find(None, "/api")
        .unwrap_or_else(|| panic!("the route"));
    let Target::Upstream(up) = &route.target else {
        panic!("an upstream route")
    };
    let cred = route
        .credential
        .as_ref()
        .unwrap_or_else(|| panic!("the credential"));
    let attachment = cred
        .attach()
        .now_or_never()
        .unwrap_or_else(|| panic!("a static credential is ready"))
        .unwrap_or_else(|e| panic!("attach: {e}"));
    let id = HeaderValue::from_static("gateway-request-id");
    let trace = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    let claim = [(
        HeaderName::from_static("x-caller-sub"),
        HeaderValue::from_static("verified-sub"),
    )];
    let conn = ConnInfo::new(
        SocketAddr::from(([192, 0, 2, 7], 40000)),
        false,
        BodyTimeouts {
            idle: Duration::from_secs(60),
            total: Duration::from_secs(300),
        },
    );
    let fixture =
        std::panic::AssertUnwindSafe((route, up, cred, attachment, id, trace, claim, conn));
    afl::fuzz!(|data: &[u8]| {
        let (route, up, cred, attachment, id, trace, claim, conn) = &*fixture;
        let mut it = lines(data, 64);
        let target = it.next().unwrap_or(b"/api/x");
        let mut req = Request::builder().uri(format!("/api{}", String::from_utf8_lossy(target)));
        let mut connection_names = Vec::new();
        for line in it {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
            ) else {
                continue;
            };
            if name == http::header::CONNECTION {
                let listed = value
                    .to_str()
                    .unwrap_or("")
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase());
                connection_names.extend(listed.filter(|t| !t.is_empty()));
            }
            req = req.header(name, value);
        }
        let Ok(req) = req.body(http_body_util::Full::new(bytes::Bytes::new())) else {
            return;
        };
        let out = Outgoing {
            strip_len: route.strip_len(),
            attachment: Some(attachment),
            credential_headers: cred.header_names(),
            caller_headers: claim,
            max_body_bytes: route.max_body_bytes,
            request_id: id,
            traceparent: trace,
        };
        let Ok(sent) = prepare(req, up, &out, conn) else {
            return;
        };
        let h = sent.headers();
        let all = |n: &str| {
            h.get_all(n)
                .iter()
                .map(|v| v.as_bytes().to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-api-key"), [b"gateway-secret".to_vec()]);
        assert_eq!(all("x-tenant"), [b"gateway-tenant".to_vec()]);
        assert_eq!(all("x-caller-sub"), [b"verified-sub".to_vec()]);
        assert_eq!(all("host"), [b"127.0.0.1:9".to_vec()]);
        assert_eq!(all("x-request-id"), [b"gateway-request-id".to_vec()]);
        assert_eq!(all("traceparent"), [trace.as_bytes().to_vec()]);
        for gone in GONE {
            assert!(
                h.get(*gone).is_none(),
                "{gone} reached the upstream: {:?}",
                all(gone)
            );
        }
        let te = all("te");
        assert!(
            te.is_empty() || te == [b"trailers".to_vec()],
            "TE other than trailers passed: {te:?}"
        );
        for n in &connection_names {
            let owned = [
                "x-api-key",
                "x-tenant",
                "x-caller-sub",
                "host",
                "x-request-id",
                "traceparent",
                "x-forwarded-for",
                "x-forwarded-proto",
                "te",
            ];
            if !owned.contains(&n.as_str()) {
                assert!(
                    h.get(n.as_str()).is_none(),
                    "{n} was named in Connection and passed"
                );
            }
        }
        let xff = all("x-forwarded-for");
        assert_eq!(xff.len(), 1, "X-Forwarded-For {xff:?}");
        assert!(xff[0].ends_with(b"192.0.2.7"), "X-Forwarded-For {xff:?}");
        assert_eq!(all("x-forwarded-proto"), [b"http".to_vec()]);
        assert!(
            sent.uri().path().starts_with("/base"),
            "the upstream path {}",
            sent.uri()
        );
    });
}
