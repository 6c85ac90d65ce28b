//! Training load for the profile-guided build (`scripts/build-pgo.sh`): runs a credgate binary on the demo's sandbox
//! vendors plus a plain-HTTP listener and an HTTPS upstream, and drives every request path production traffic takes
//! through it: static, OAuth2 and login credentials; caller JWTs, one repeated and many distinct; plain HTTP/1.1, TLS
//! with HTTP/1.1 and HTTP/2; request bodies; an HTTPS upstream; 404 and 401 answers. Paths left out of the training
//! would be laid out as cold code, so what production runs must be here.
//!
//! Every answer is checked, so this is also an end-to-end check of the binary (`.ci/run` runs it briefly against the
//! debug build). The gateway runs twice: with the access log off (as benchmarked) and on (the default).
//!
//! `cargo run --release --example pgo_train -- BINARY [SECONDS_PER_PHASE]` (default 2).

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

type Error = Box<dyn std::error::Error + Send + Sync>;
type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Concurrent callers per phase.
const CALLERS: usize = 32;
/// Distinct caller tokens cycled through in the distinct-token phase.
const DISTINCT_TOKENS: usize = 2000;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: pgo_train BINARY [SECONDS_PER_PHASE]";
    let bin = args.next().ok_or(usage)?;
    let secs: f64 = args.next().map_or(Ok(2.0), |s| s.parse())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(train(Path::new(&bin), Duration::from_secs_f64(secs)))
}

async fn train(bin: &Path, per_phase: Duration) -> Result<(), Error> {
    let tls_port = free_port()?;
    let plain_port = free_port()?;
    let demo = credgate::demo::prepare(tls_port, 0).await?;
    let dir = demo.ca_path.parent().ok_or("demo dir")?.to_path_buf();
    let ca_pem = std::fs::read_to_string(&demo.ca_path)?;
    let tls_origin = spawn_tls_echo(&dir).await?;
    let config = format!(
        r#"{demo}
[[listeners]]
address = "127.0.0.1:{plain_port}"
tls = false

[upstreams.echo_tls]
url = "https://{tls_origin}"
ca = "{ca}"

[[routes]]
name = "static"
path_prefix = "/static"
upstream = "echo"
strip_prefix = true
credential = "demo_api_key"
auth = "none"

[[routes]]
name = "tls-origin"
path_prefix = "/tls-origin"
upstream = "echo_tls"
strip_prefix = true
credential = "demo_api_key"
auth = "none"
"#,
        demo = demo.config_toml,
        ca = demo.ca_path.display(),
    );
    let config_path = dir.join("pgo-train.toml");
    std::fs::write(&config_path, config)?;

    let mut tokens = Vec::with_capacity(DISTINCT_TOKENS);
    for i in 0..DISTINCT_TOKENS {
        tokens.push(demo.issuer.mint(&format!("service-{i}"))?);
    }
    let clients = Clients::new(&ca_pem)?;
    let plain = format!("http://127.0.0.1:{plain_port}");
    let tls = format!("https://localhost:{tls_port}");
    let one = Tokens::One(demo.caller_token.clone());
    let many = Tokens::Many(Arc::new(tokens));
    let body = Some(Bytes::from(vec![b'x'; 4096]));
    let ok = StatusCode::OK;
    let h1 = &clients.h1;
    let h2 = &clients.h2;
    let phases = [
        Phase::get("static", h1, &plain, "/static/x", Tokens::None, ok),
        Phase::get("caller JWT", h1, &plain, "/echo/x", one.clone(), ok),
        Phase::get("distinct JWTs", h1, &plain, "/echo/x", many, ok),
        Phase::get("OAuth2", h1, &plain, "/tropipay/x", Tokens::None, ok),
        Phase::get("login", h1, &plain, "/incode-admin/x", Tokens::None, ok),
        Phase::get(
            "HTTPS upstream",
            h1,
            &plain,
            "/tls-origin/x",
            Tokens::None,
            ok,
        ),
        Phase::post("upload", h1, &plain, "/static/up", body.clone()),
        Phase::post("OAuth2 upload", h1, &plain, "/tropipay/up", body),
        Phase::get("TLS h1", h1, &tls, "/echo/x", one.clone(), ok),
        Phase::get("TLS h2", h2, &tls, "/echo/x", one.clone(), ok),
        Phase::get("TLS h2 OAuth2", h2, &tls, "/tropipay/x", Tokens::None, ok),
        Phase::get(
            "no route",
            h1,
            &plain,
            "/nope",
            Tokens::None,
            StatusCode::NOT_FOUND,
        )
        .briefly(),
        Phase::get(
            "no token",
            h1,
            &plain,
            "/echo/x",
            Tokens::None,
            StatusCode::UNAUTHORIZED,
        )
        .briefly(),
    ];
    let logged = [
        Phase::get("logged static", h1, &plain, "/static/x", Tokens::None, ok),
        Phase::get("logged TLS h2", h2, &tls, "/echo/x", one, ok),
    ];

    let result = async {
        run_gateway(bin, &config_path, plain_port, "warn", &phases, per_phase).await?;
        run_gateway(
            bin,
            &config_path,
            plain_port,
            "info",
            &logged,
            per_phase / 2,
        )
        .await
    }
    .await;
    demo.remove_files()?;
    result
}

/// Start the gateway with `RUST_LOG=log`, run `phases` against it, and stop it with SIGTERM so that it exits
/// normally (a profile-generating binary writes its profile on exit).
async fn run_gateway(
    bin: &Path,
    config: &Path,
    port: u16,
    log: &str,
    phases: &[Phase<'_>],
    per_phase: Duration,
) -> Result<(), Error> {
    // Warnings and startup errors show; the access log (RUST_LOG=info) would bury them.
    let stderr = if log == "warn" {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", log)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()?;
    let driven = async {
        wait_ready(&mut child, port).await?;
        for phase in phases {
            let n = phase.run(per_phase.mul_f64(phase.share)).await?;
            println!(
                "pgo_train: {:<16} {n} requests (RUST_LOG={log})",
                phase.name
            );
        }
        Ok::<_, Error>(())
    }
    .await;
    let stopped = stop(&mut child);
    driven.and(stopped)
}

fn stop(child: &mut Child) -> Result<(), Error> {
    if let Some(status) = child.try_wait()? {
        return Err(format!("the gateway stopped early with {status}").into());
    }
    // The shell's own `kill`: std has no way to send a signal, and a minimal system may lack /bin/kill.
    let sent = Command::new("sh")
        .args(["-c", "kill -TERM \"$0\"", &child.id().to_string()])
        .status()?;
    if !sent.success() {
        return Err("kill -TERM failed".into());
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("gateway exited with {status}").into());
    }
    Ok(())
}

async fn wait_ready(child: &mut Child, port: u16) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Some(status) = child.try_wait()? {
            return Err(format!("the gateway exited at startup with {status}").into());
        }
        if Instant::now() > deadline {
            return Err("the gateway did not start listening within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn free_port() -> Result<u16, Error> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Which caller token a request carries.
#[derive(Clone)]
enum Tokens {
    None,
    One(String),
    Many(Arc<Vec<String>>),
}

impl Tokens {
    fn nth(&self, i: usize) -> Option<&str> {
        match self {
            Tokens::None => None,
            Tokens::One(t) => Some(t),
            Tokens::Many(ts) => ts.get(i % ts.len()).map(String::as_str),
        }
    }
}

/// One kind of request, sent by [`CALLERS`] concurrent callers for a while.
struct Phase<'a> {
    name: &'static str,
    client: &'a HttpClient,
    method: Method,
    url: String,
    tokens: Tokens,
    body: Option<Bytes>,
    expect: StatusCode,
    /// Fraction of the phase time it runs for: error answers are a small share of real traffic.
    share: f64,
}

impl<'a> Phase<'a> {
    fn get(
        name: &'static str,
        client: &'a HttpClient,
        base: &str,
        path: &str,
        tokens: Tokens,
        expect: StatusCode,
    ) -> Self {
        Phase {
            name,
            client,
            method: Method::GET,
            url: format!("{base}{path}"),
            tokens,
            body: None,
            expect,
            share: 1.0,
        }
    }

    fn briefly(self) -> Self {
        Phase {
            share: 0.125,
            ..self
        }
    }

    fn post(
        name: &'static str,
        client: &'a HttpClient,
        base: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> Self {
        Phase {
            method: Method::POST,
            body,
            ..Phase::get(name, client, base, path, Tokens::None, StatusCode::OK)
        }
    }

    /// Send requests until `for_` has passed; every answer must have the expected status.
    async fn run(&self, for_: Duration) -> Result<usize, Error> {
        let end = Instant::now() + for_;
        let count = AtomicUsize::new(0);
        let callers = (0..CALLERS).map(|_| async {
            while Instant::now() < end {
                let i = count.fetch_add(1, Ordering::Relaxed);
                self.send(i).await?;
            }
            Ok::<_, Error>(())
        });
        futures_util::future::try_join_all(callers).await?;
        Ok(count.into_inner())
    }

    async fn send(&self, i: usize) -> Result<(), Error> {
        let mut req = Request::builder().method(&self.method).uri(&self.url);
        if let Some(t) = self.tokens.nth(i) {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Full::new(self.body.clone().unwrap_or_default()))?;
        let rsp = self.client.request(req).await?;
        let status = rsp.status();
        rsp.into_body().collect().await?;
        if status != self.expect {
            return Err(format!("{}: {} answered {status}", self.name, self.url).into());
        }
        Ok(())
    }
}

/// Callers' HTTP clients: HTTP/1.1 (plain or TLS) and HTTP/2 over TLS, trusting the demo's dev CA.
struct Clients {
    h1: HttpClient,
    h2: HttpClient,
}

impl Clients {
    fn new(ca_pem: &str) -> Result<Self, Error> {
        let tls = client_tls(ca_pem)?;
        let h1 = HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .build();
        let h2 = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http2()
            .build();
        Ok(Clients {
            h1: Client::builder(TokioExecutor::new()).build(h1),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(h2),
        })
    }
}

fn client_tls(ca_pem: &str) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An HTTPS echo upstream with the demo's server certificate.
async fn spawn_tls_echo(dir: &Path) -> Result<SocketAddr, Error> {
    let chain =
        CertificateDer::pem_file_iter(dir.join("server.crt"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"{\"ok\":true}"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}
