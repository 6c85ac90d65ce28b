//! `credgate demo`: the gateway on loopback with a generated dev certificate and local sandbox upstreams, no accounts
//! and no files needed. The config is ordinary TOML, validated by the same code as `credgate run`.

pub mod caller_auth;
pub mod credentials;
pub mod flows;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::body::{self, Body};

/// The demo's API key, injected by the gateway; a sandbox value, not a secret of anyone's.
pub const DEMO_API_KEY: &str = "demo-sandbox-api-key";

/// Files and addresses the demo set up.
#[derive(Debug)]
pub struct Demo {
    /// The demo's config text (for `--print-config`).
    pub config_toml: String,
    /// The dev CA to trust.
    pub ca_path: PathBuf,
    /// Where the sandbox echo upstream listens.
    pub echo: SocketAddr,
    /// Where the sandbox vendors for the flows listen.
    pub vendors: flows::Sandboxes,
    /// A caller token from the demo's dev issuer.
    pub caller_token: String,
    /// The demo's dev issuer, which can mint more caller tokens.
    pub issuer: caller_auth::DevIssuer,
    /// The temporary directory holding the dev certificate, its key and the flows database.
    dir: PathBuf,
}

impl Demo {
    /// Where the demo's config is written to be served from.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Delete the files the demo wrote (the dev CA and server keys among them); for when the demo stops.
    pub fn remove_files(&self) -> std::io::Result<()> {
        std::fs::remove_dir_all(&self.dir)
    }
}

/// Start the sandbox upstreams and write the demo config; `port` is the gateway's, `admin_port` the admin listener's
/// (0: any free one).
pub async fn prepare(port: u16, admin_port: u16) -> Result<Demo, std::io::Error> {
    let dir = std::env::temp_dir().join(format!("credgate-demo-{}", std::process::id()));
    crate::dev_certs::write(&dir).map_err(std::io::Error::other)?;
    let echo = spawn_echo().await?;
    let sandbox_vendors = credentials::spawn_sandbox().await?;
    let vendors = flows::spawn().await?;
    let dev_issuer = caller_auth::start().await.map_err(std::io::Error::other)?;
    let issuer_toml = &dev_issuer.issuer_toml;
    let scope = caller_auth::SCOPE;
    let d = dir.display();
    let mut config_toml = format!(
        r#"# credgate demo config (generated)
[[listeners]]
address = "127.0.0.1:{port}"
cert = "{d}/server.crt"
key = "{d}/server.key"

[admin]
address = "127.0.0.1:{admin_port}"

{issuer_toml}
[upstreams.echo]
url = "http://{echo}"

[credentials.demo_api_key]
kind = "static"
allowed_hosts = ["127.0.0.1"]
headers = {{ "X-Api-Key" = "{DEMO_API_KEY}" }}

[[routes]]
name = "echo"
path_prefix = "/echo"
upstream = "echo"
strip_prefix = true
credential = "demo_api_key"
scopes = ["{scope}"]
forward_claims = {{ sub = "X-Credgate-Subject" }}
"#
    );
    config_toml.push_str(&credentials::config_toml(sandbox_vendors));
    config_toml.push_str(&flows::config(&vendors, &dir));
    Ok(Demo {
        config_toml,
        ca_path: dir.join("ca.crt"),
        dir: dir.clone(),
        echo,
        vendors,
        caller_token: dev_issuer.token.clone(),
        issuer: dev_issuer,
    })
}

/// The curl commands the demo prints.
pub fn instructions(demo: &Demo, gateway: SocketAddr, admin: Option<SocketAddr>) -> String {
    let ca = demo.ca_path.display();
    let token = &demo.caller_token;
    format!(
        "credgate demo is running on https://{gateway} (sandbox upstreams on loopback; Ctrl-C stops it)\n\n\
         The sandbox upstream echoes what it receives. The gateway checks your caller JWT (from the demo's dev issuer),\n\
         strips your Authorization header, injects the route's credential (X-Api-Key) and forwards your subject:\n\n  \
         curl --cacert {ca} https://{gateway}/echo/hello -H 'Authorization: Bearer {token}'\n\n\
         A token the gateway cannot verify is refused with 401 (problem+json, WWW-Authenticate):\n\n  \
         curl --cacert {ca} https://{gateway}/echo/hello -H 'Authorization: Bearer my-own-token'\n\n\
         HTTP/2 works the same (add --http2). An unknown path gets a problem+json 404:\n\n  \
         curl --cacert {ca} https://{gateway}/nope\n{}\n{}{}",
        credentials::instructions(&ca.to_string(), gateway),
        flows::instructions(&ca.to_string(), gateway),
        admin.map_or_else(String::new, |a| format!(
            "\nThe credentials' token state and the issuer's keys, from the admin listener:\n\n  \
             credgate status --admin {a}\n\n\
             The demo serves {config}: edit it (add a route, say) and it reloads without dropping a \
             connection; or ask for a reload:\n\n  \
             credgate reload --admin {a}\n",
            config = demo.config_path().display()
        ))
    )
}

/// A sandbox upstream that answers every request with a JSON echo of what it received.
pub async fn spawn_echo() -> Result<SocketAddr, std::io::Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req| async move { Ok::<_, Infallible>(echo(req).await) });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let (parts, incoming) = req.into_parts();
    let body_len = incoming
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                json!(v.to_str().unwrap_or("<binary>")),
            )
        })
        .collect();
    let doc = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body_len,
    });
    let mut rsp = Response::new(body::full(doc.to_string()));
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rsp
}
