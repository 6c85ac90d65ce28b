//! TLS termination and origination over real sockets: HTTP/1.1 and HTTP/2 by ALPN, TLS 1.2 and 1.3, plain HTTP
//! only when asked for, mTLS required/optional, handshake and header timeouts, HTTP/2 header-list limits, and
//! upstreams over TLS (HTTP/2 with `:authority`, HTTP/1.1 with `Host`, verified against the configured CA).
mod support;

use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode, Version};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::certs::{self, Alpn, TestCerts};
use support::upstream::{self, Behaviour, Upstream};

const SECRET: &str = "tls-test-secret";

/// A TLS gateway in front of `up`, with extra listener keys (`listener_extra`) and upstream keys.
fn config(c: &TestCerts, up: &Upstream, listener_extra: &str, upstream_extra: &str) -> String {
    let host = if up.url().starts_with("https") {
        "localhost"
    } else {
        "127.0.0.1"
    };
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"
{listener_extra}
[upstreams.u]
url = "{url}"
{upstream_extra}
[credentials.k]
kind = "static"
allowed_hosts = ["{host}"]
headers = {{ "X-Api-Key" = "{SECRET}" }}
[[routes]]
path_prefix = "/"
upstream = "u"
credential = "k"
auth = "none"
"#,
        cert = c.cert.display(),
        key = c.key.display(),
        url = up.url(),
    )
}

fn url(gw: &support::TestGateway, path: &str) -> String {
    format!("https://localhost:{}{path}", gw.addr().port())
}

async fn get_with(
    client: &certs::TestClient,
    url: String,
) -> Result<(Version, StatusCode), String> {
    let req = Request::get(url).body(upstream::full("")).expect("request");
    let rsp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let version = rsp.version();
    let status = rsp.status();
    upstream::body_bytes(rsp).await;
    Ok((version, status))
}

#[tokio::test]
async fn http2_and_http1_over_tls_by_alpn() {
    let up = upstream::start(Behaviour::Ok).await;
    let c = certs::make();
    let gw = support::start_gateway(&config(&c, &up, "", "")).await;
    for (alpn, want) in [(Alpn::H2, Version::HTTP_2), (Alpn::H1, Version::HTTP_11)] {
        let client = certs::client(&c.pem.ca_cert_pem, alpn);
        let got = get_with(&client, url(&gw, "/v")).await.expect("response");
        assert_eq!(got, (want, StatusCode::OK), "{alpn:?}");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.headers["x-api-key"], SECRET);
        assert_eq!(s.headers["x-forwarded-proto"], "https");
        assert_eq!(s.authority.as_deref(), Some(up.addr.to_string().as_str()));
    }
}

/// Handshake with exactly `version` and ALPN http/1.1, then one GET over it.
async fn request_with_version(
    gw: &support::TestGateway,
    c: &TestCerts,
    version: &'static rustls::SupportedProtocolVersion,
) -> StatusCode {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            rustls::pki_types::CertificateDer::from_pem_slice(c.pem.ca_cert_pem.as_bytes())
                .expect("ca"),
        )
        .expect("root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("version")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(version.version),
        "negotiated version"
    );
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http handshake");
    tokio::spawn(conn);
    let req = Request::get("/tls-version")
        .header("host", "localhost")
        .body(upstream::full(""))
        .expect("request");
    sender.send_request(req).await.expect("response").status()
}

#[tokio::test]
async fn tls12_and_tls13_are_both_accepted() {
    let up = upstream::start(Behaviour::Ok).await;
    let c = certs::make();
    let gw = support::start_gateway(&config(&c, &up, "", "")).await;
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        assert_eq!(request_with_version(&gw, &c, v).await, StatusCode::OK);
    }
}

/// Read until EOF (or error); panics if the gateway keeps the socket open past `deadline`.
async fn read_to_eof<S: tokio::io::AsyncRead + Unpin>(s: &mut S, deadline: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(deadline, read)
        .await
        .expect("the gateway kept the connection open");
    got
}

#[tokio::test]
async fn plain_http_only_on_listeners_that_say_tls_false() {
    let up = upstream::start(Behaviour::Ok).await;
    let c = certs::make();
    let gw = support::start_gateway(&config(&c, &up, "", "")).await;
    let mut tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let got = read_to_eof(&mut tcp, Duration::from_secs(10)).await;
    assert!(
        !got.starts_with(b"HTTP/"),
        "a TLS listener answered plain HTTP"
    );
    assert!(up.seen().is_empty());

    let plain = support::start_gateway(&format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[upstreams.u]
url = "{}"
[[routes]]
path_prefix = "/"
upstream = "u"
auth = "none"
"#,
        up.url()
    ))
    .await;
    let mut tcp = TcpStream::connect(plain.addr()).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let got = read_to_eof(&mut tcp, Duration::from_secs(10)).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "plain listener serves HTTP"
    );
}

struct Mtls {
    gw: support::TestGateway,
    server: TestCerts,
    good: credgate::dev_certs::DevCerts,
    other: credgate::dev_certs::DevCerts,
}

async fn mtls_gateway(up: &Upstream, mode: &str) -> Mtls {
    let server = certs::make();
    let good = credgate::dev_certs::generate("clients CA", &["client.test"]).expect("certs");
    let other = credgate::dev_certs::generate("other CA", &["client.test"]).expect("certs");
    let ca_file = server.dir.join("clients-ca.crt");
    std::fs::write(&ca_file, &good.ca_cert_pem).expect("write");
    let extra = format!(
        "client_ca = \"{}\"\nclient_auth = \"{mode}\"",
        ca_file.display()
    );
    let gw = support::start_gateway(&config(&server, up, &extra, "")).await;
    Mtls {
        gw,
        server,
        good,
        other,
    }
}

async fn mtls_get(
    m: &Mtls,
    cert: Option<&credgate::dev_certs::DevCerts>,
) -> Result<StatusCode, String> {
    let tls = certs::client_tls(
        &m.server.pem.ca_cert_pem,
        cert.map(|c| (c.cert_pem.as_str(), c.key_pem.as_str())),
    );
    let client = certs::client_with(tls, Alpn::H1);
    get_with(&client, url(&m.gw, "/m")).await.map(|(_, s)| s)
}

#[tokio::test]
async fn mtls_required_rejects_missing_and_foreign_client_certs() {
    let up = upstream::start(Behaviour::Ok).await;
    let m = mtls_gateway(&up, "required").await;
    assert!(mtls_get(&m, None).await.is_err(), "no client cert accepted");
    assert!(
        mtls_get(&m, Some(&m.other)).await.is_err(),
        "cert from another CA accepted"
    );
    assert_eq!(mtls_get(&m, Some(&m.good)).await, Ok(StatusCode::OK));
    assert_eq!(
        up.seen().len(),
        1,
        "only the authenticated request got through"
    );
}

#[tokio::test]
async fn mtls_optional_accepts_with_and_without_a_cert() {
    let up = upstream::start(Behaviour::Ok).await;
    let m = mtls_gateway(&up, "optional").await;
    assert_eq!(mtls_get(&m, None).await, Ok(StatusCode::OK));
    assert_eq!(mtls_get(&m, Some(&m.good)).await, Ok(StatusCode::OK));
    assert!(
        mtls_get(&m, Some(&m.other)).await.is_err(),
        "a presented cert from another CA is still refused"
    );
}

#[tokio::test]
async fn stalled_tls_handshakes_and_heads_are_disconnected() {
    let up = upstream::start(Behaviour::Ok).await;
    let c = certs::make();
    let extra = "tls_handshake_timeout = \"300ms\"\nheader_read_timeout = \"300ms\"";
    let gw = support::start_gateway(&config(&c, &up, extra, "")).await;
    // No ClientHello at all.
    let mut tcp = TcpStream::connect(gw.addr()).await.expect("connect");
    read_to_eof(&mut tcp, Duration::from_secs(10)).await;
    // A finished handshake, then a partial request head, for each ALPN protocol.
    for (alpn, partial) in [
        (
            &b"http/1.1"[..],
            &b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: "[..],
        ),
        (b"h2", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ] {
        let mut tls = certs::client_tls(&c.pem.ca_cert_pem, None);
        tls.alpn_protocols = vec![alpn.to_vec()];
        let tcp = TcpStream::connect(gw.addr()).await.expect("connect");
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("handshake");
        stream.write_all(partial).await.expect("write");
        stream.flush().await.expect("flush");
        read_to_eof(&mut stream, Duration::from_secs(10)).await;
    }
    assert!(up.seen().is_empty());
    // The handshake that never started timed out, and is counted.
    assert_eq!(
        gw.gw.metrics.get(
            "credgate_tls_handshake_failures_total",
            &[("listener", &gw.addr().to_string())]
        ),
        1.0
    );
}

#[tokio::test]
async fn http2_header_list_over_listener_limit_is_refused() {
    let up = upstream::start(Behaviour::Ok).await;
    let c = certs::make();
    let gw = support::start_gateway(&config(&c, &up, "max_header_bytes = 8192", "")).await;
    let client = certs::client(&c.pem.ca_cert_pem, Alpn::H2);
    let req = Request::get(url(&gw, "/big"))
        .header("x-big", "b".repeat(16 * 1024))
        .body(upstream::full(""))
        .expect("request");
    match client.request(req).await {
        Ok(rsp) => assert_eq!(rsp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => eprintln!("refused with a stream error: {e:?}"),
    }
    // The connection stays usable for a request within the limit.
    let ok = get_with(&client, url(&gw, "/small"))
        .await
        .expect("response");
    assert_eq!(ok, (Version::HTTP_2, StatusCode::OK));
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/small");
}

async fn via_tls_upstream(alpn: &[&[u8]]) -> (Upstream, StatusCode) {
    let c = certs::make();
    let up = upstream::start_tls(Behaviour::Ok, certs::server_tls(&c, alpn)).await;
    let ca = format!("ca = \"{}\"", c.ca.display());
    let gw = support::start_gateway(&config(&c, &up, "", &ca)).await;
    let client = certs::client(&c.pem.ca_cert_pem, Alpn::H2);
    let (_, status) = get_with(&client, url(&gw, "/tls-up?q=1"))
        .await
        .expect("response");
    (up, status)
}

#[tokio::test]
async fn upstream_over_tls_speaks_h2_or_h1_with_the_right_authority() {
    let (up, status) = via_tls_upstream(&[b"h2", b"http/1.1"]).await;
    assert_eq!(status, StatusCode::OK);
    let seen = up.seen();
    assert_eq!(seen[0].version, Version::HTTP_2, "h2 negotiated upstream");
    let want = format!("localhost:{}", up.addr.port());
    assert_eq!(seen[0].authority.as_deref(), Some(want.as_str()));
    assert!(seen[0].headers.get("host").is_none() || seen[0].headers["host"] == want);
    assert_eq!(seen[0].headers["x-api-key"], SECRET);

    let (up, status) = via_tls_upstream(&[b"http/1.1"]).await;
    assert_eq!(status, StatusCode::OK);
    let seen = up.seen();
    assert_eq!(seen[0].version, Version::HTTP_11);
    assert_eq!(
        seen[0].headers["host"],
        format!("localhost:{}", up.addr.port())
    );
    assert_eq!(seen[0].uri, "/tls-up?q=1");
}

#[tokio::test]
async fn upstream_tls_is_verified() {
    let c = certs::make();
    let up = upstream::start_tls(Behaviour::Ok, certs::server_tls(&c, &[b"http/1.1"])).await;
    // No `ca`: the test CA is not among the webpki roots, so the upstream must not be trusted.
    let gw = support::start_gateway(&config(&c, &up, "", "")).await;
    let client = certs::client(&c.pem.ca_cert_pem, Alpn::H1);
    let rsp = client
        .request(
            Request::get(url(&gw, "/x"))
                .body(upstream::full(""))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    let (_, body) = upstream::body_bytes(rsp).await;
    assert!(!String::from_utf8_lossy(&body).contains(SECRET));
    assert!(
        up.seen().is_empty(),
        "the credential never left over an unverified connection"
    );
}

#[tokio::test]
async fn http2_split_cookies_reach_an_http1_upstream_as_one_field() {
    let up = upstream::start(Behaviour::Ok).await;
    let c = certs::make();
    let gw = support::start_gateway(&config(&c, &up, "", "")).await;
    let client = certs::client(&c.pem.ca_cert_pem, Alpn::H2);
    let req = Request::get(url(&gw, "/cookies"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(upstream::full(""))
        .expect("request");
    let rsp = client.request(req).await.expect("response");
    assert_eq!(rsp.status(), StatusCode::OK);
    let seen = up.seen();
    assert_eq!(seen[0].version, Version::HTTP_11);
    let cookies: Vec<_> = seen[0].headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);
}
