//! Reload without a restart, through the real binary: a change to any file the config reads (the config, the TLS
//! certificate and key, the client CA, a static JWT key file, `*_file` and `${file:…}` secrets) is put in force while
//! requests keep flowing; so are SIGHUP, `POST /admin/reload` and `credgate reload`. What did not change keeps its
//! state (no token request, no JWKS fetch); a bad config leaves the running one serving.
mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;

use support::binary::Binary;
use support::certs::{self, Alpn, TestClient};
use support::fake_http::{self, Got};
use support::fake_idp::{FakeIdp, SigningKey, claims, mint};
use support::fake_vendor;
use support::upstream::{self, Behaviour};

const ISS: &str = "https://idp.reload.test/";
const AUD: &str = "credgate";

/// Write `text` to `path` the way editors and Kubernetes do: to a temporary file beside it, then renamed over it.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename over");
}

/// GET `path` through `client` on the gateway's first listener.
async fn get(
    client: &TestClient,
    gw: &Binary,
    path: &str,
    bearer: Option<&str>,
) -> Option<StatusCode> {
    let mut b = Request::get(format!("https://127.0.0.1:{}{path}", gw.addrs[0].port()));
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let req = b.body(Full::new(Bytes::new())).expect("request");
    client.request(req).await.ok().map(|r| r.status())
}

async fn admin(gw: &Binary, method: Method, path: &str) -> Got {
    let admin = gw.admin.expect("admin listener");
    fake_http::call(method, &format!("http://{admin}{path}"), &[], "").await
}

/// The value of the unlabelled-or-labelled series `series` in the admin listener's metrics (0 when absent).
async fn metric(gw: &Binary, series: &str) -> f64 {
    let text = admin(gw, Method::GET, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_certificate_and_secret_change_under_load_with_no_failed_request_and_no_token_request()
 {
    let dir = support::temp_dir("reload-load");
    let first = certs::make();
    let second = credgate::dev_certs::generate("second CA", &["localhost", "127.0.0.1"])
        .expect("second certs");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert, &first.pem.cert_pem).expect("cert");
    std::fs::write(&key, &first.pem.key_pem).expect("key");
    let secret = dir.join("api-key");
    std::fs::write(&secret, "key-1\n").expect("secret");

    let up = upstream::start(Behaviour::Ok).await;
    let vendor = fake_vendor::new().run().await;
    let signer = SigningKey::rsa("k1");
    let idp = FakeIdp::start(&[&signer]).await;
    let config = |extra_route: &str| {
        format!(
            r#"
[[listeners]]
address = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"
[admin]
address = "127.0.0.1:0"
[[issuers]]
name = "idp"
issuer = "{ISS}"
audiences = ["{AUD}"]
jwks_url = "{jwks}"
startup = "fail_fast"
[upstreams.echo]
url = "{up}"
[credentials.vendor]
kind = "oauth2_client_credentials"
allowed_hosts = ["127.0.0.1"]
token_url = "{token_url}"
client_id = "id"
client_secret = "secret"
[credentials.api_key]
kind = "static"
allowed_hosts = ["127.0.0.1"]
headers = {{ "X-Api-Key" = "${{file:{secret}}}" }}
[[routes]]
path_prefix = "/vendor"
upstream = "echo"
credential = "vendor"
[[routes]]
path_prefix = "/static"
upstream = "echo"
credential = "api_key"
auth = "none"
{extra_route}
"#,
            cert = cert.display(),
            key = key.display(),
            jwks = idp.jwks_url(),
            up = up.url(),
            token_url = vendor.token_url(),
            secret = secret.display(),
        )
    };
    let path = dir.join("config.toml");
    std::fs::write(&path, config("")).expect("config");
    let mut gw = Binary::run(&path, "info", 1, true);
    let token = mint(&signer, &claims(ISS, AUD));

    // Callers that trust both CAs, each on its own kept-alive connections, in a loop until told to stop.
    let both = format!("{}{}", first.pem.ca_cert_pem, second.ca_cert_pem);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let port = gw.addrs[0].port();
    let mut load = Vec::new();
    for i in 0..4 {
        let client = certs::client(&both, if i % 2 == 0 { Alpn::H1 } else { Alpn::H2 });
        let (stop, ok, failed, token) = (stop.clone(), ok.clone(), failed.clone(), token.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for (path, bearer) in [("/vendor/x", Some(&token)), ("/static/y", None)] {
                    let mut b = Request::get(format!("https://127.0.0.1:{port}{path}"));
                    if let Some(t) = bearer {
                        b = b.header("authorization", format!("Bearer {t}"));
                    }
                    let req = b.body(Full::new(Bytes::new())).expect("request");
                    match client.request(req).await {
                        Ok(r) if r.status() == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
        }));
    }
    let served = |n: usize| {
        let ok = ok.clone();
        async move {
            let target = ok.load(Ordering::Relaxed) + n;
            while ok.load(Ordering::Relaxed) < target {
                tokio::task::yield_now().await;
            }
        }
    };
    served(50).await;
    assert_eq!(vendor.grants(), 1, "one token for all callers");
    assert_eq!(idp.jwks_hits(), 1, "the JWKS fetched once, at start");
    let probe = certs::client(&both, Alpn::H1);
    assert_eq!(
        get(&probe, &gw, "/extra/z", None).await,
        Some(StatusCode::NOT_FOUND)
    );

    // 1. A route added: the config file itself, replaced by rename.
    replace(
        &path,
        &config("[[routes]]\npath_prefix = \"/extra\"\nupstream = \"echo\"\nauth = \"none\"\n"),
    );
    let (put, line) = gw.wait_reload();
    assert!(put, "{line}");
    served(50).await;
    assert_eq!(
        get(&probe, &gw, "/extra/z", None).await,
        Some(StatusCode::OK)
    );

    // 2. The server certificate and key rotated to another CA's, written in place.
    let old_ca_only = certs::client(&first.pem.ca_cert_pem, Alpn::H1);
    assert_eq!(
        get(&old_ca_only, &gw, "/static/a", None).await,
        Some(StatusCode::OK)
    );
    std::fs::write(&key, &second.key_pem).expect("key");
    std::fs::write(&cert, &second.cert_pem).expect("cert");
    while !gw.wait_reload().0 {}
    served(50).await;
    let new_ca_only = certs::client(&second.ca_cert_pem, Alpn::H1);
    assert_eq!(
        get(&new_ca_only, &gw, "/static/a", None).await,
        Some(StatusCode::OK),
        "a new connection is served the new certificate"
    );
    let fresh_old = certs::client(&first.pem.ca_cert_pem, Alpn::H1);
    assert_eq!(
        get(&fresh_old, &gw, "/static/a", None).await,
        None,
        "and no longer the old one"
    );

    // 3. The static credential's secret file rotated.
    replace(&secret, "key-2\n");
    let (put, line) = gw.wait_reload();
    assert!(put, "{line}");
    served(50).await;
    let before = up.seen().len();
    assert_eq!(
        get(&probe, &gw, "/static/b", None).await,
        Some(StatusCode::OK)
    );
    let sent: Vec<_> = up.seen()[before..]
        .iter()
        .filter(|s| s.uri == "/static/b")
        .filter_map(|s| s.headers.get("x-api-key").cloned())
        .collect();
    assert_eq!(sent, ["key-2"], "the new secret is sent");

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed across three reloads"
    );
    assert!(ok.load(Ordering::Relaxed) >= 200);
    assert_eq!(
        vendor.grants(),
        1,
        "the unchanged credential kept its token: no token request"
    );
    assert_eq!(
        idp.jwks_hits(),
        1,
        "the unchanged issuer kept its keys: no JWKS fetch"
    );
    assert_eq!(
        metric(&gw, "credgate_config_reloads_total{result=\"ok\"}").await,
        3.0
    );
    let cfg = admin(&gw, Method::GET, "/admin/config").await.json();
    assert_eq!(cfg["generation"], 4, "{cfg}");
    let shown = &cfg["effective"];
    let vendor_shown = &shown["credentials"]["vendor"];
    assert_eq!(vendor_shown["kind"], "oauth2_client_credentials", "{cfg}");
    assert_eq!(vendor_shown["client_secret"], "[REDACTED]", "{cfg}");
    assert_eq!(vendor_shown["token"]["timeout"], "10s", "{cfg}");
    assert_eq!(
        shown["credentials"]["api_key"]["headers"]["x-api-key"],
        "[REDACTED]"
    );
    assert_eq!(shown["routes"][2]["path_prefix"], "/extra", "{cfg}");
    assert_eq!(shown["issuers"][0]["jwks"]["url"], idp.jwks_url(), "{cfg}");
    let tls = &shown["listeners"][0]["tls"];
    assert_eq!(tls["key"], "[REDACTED]", "{cfg}");
    assert!(
        tls["cert_chain"][0]
            .as_str()
            .is_some_and(|f| f.starts_with("sha256:") && f.len() == 71),
        "{cfg}"
    );
    let text = cfg.to_string();
    for secret in ["key-1", "key-2", "\"secret\"", "PRIVATE KEY"] {
        assert!(
            !text.contains(secret),
            "/admin/config shows {secret}: {text}"
        );
    }
}

/// A plain-HTTP gateway on `/u` to `up`, with its admin listener; `extra` is appended to the config.
fn plain_config(up: &upstream::Upstream, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[admin]
address = "127.0.0.1:0"
[upstreams.echo]
url = "{}"
{extra}
"#,
        up.url()
    )
}

const OPEN_ROUTE: &str = "[[routes]]\npath_prefix = \"/u\"\nupstream = \"echo\"\nauth = \"none\"\n";

async fn plain_get(gw: &Binary, path: &str, headers: &[(&str, &str)]) -> StatusCode {
    fake_http::call(
        Method::GET,
        &format!("http://{}{path}", gw.addrs[0]),
        headers,
        "",
    )
    .await
    .status
}

/// `credgate reload` against the running gateway's admin listener: (exit success, stdout, stderr).
fn credgate_reload(gw: &Binary) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_credgate"))
        .args(["reload", "--admin", &gw.admin.expect("admin").to_string()])
        .output()
        .expect("credgate reload");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_bad_config_is_refused_naming_the_key_and_the_running_one_keeps_serving() {
    let dir = support::temp_dir("reload-bad");
    let up = upstream::start(Behaviour::Ok).await;
    let path = dir.join("config.toml");
    std::fs::write(&path, plain_config(&up, OPEN_ROUTE)).expect("config");
    let mut gw = Binary::run(&path, "info", 1, true);
    assert_eq!(plain_get(&gw, "/u/1", &[]).await, StatusCode::OK);

    let broken = format!(
        "{OPEN_ROUTE}[[routes]]\npath_prefix = \"/v\"\nupstream = \"nowhere\"\nauth = \"none\"\n"
    );
    replace(&path, &plain_config(&up, &broken));
    let (put, line) = gw.wait_reload();
    assert!(!put, "a broken config is not put in force: {line}");
    assert!(
        line.contains("routes[1].upstream"),
        "the error names the key: {line}"
    );
    assert_eq!(
        plain_get(&gw, "/u/2", &[]).await,
        StatusCode::OK,
        "the old config serves"
    );
    let ready = admin(&gw, Method::GET, "/readyz").await;
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "still ready: {}",
        ready.text()
    );
    let text = ready.text();
    assert!(
        text.contains("last reload failed") && text.contains("routes[1].upstream"),
        "{text}"
    );
    assert_eq!(
        metric(&gw, "credgate_config_reloads_total{result=\"error\"}").await,
        1.0
    );
    let cfg = admin(&gw, Method::GET, "/admin/config").await.json();
    assert_eq!(cfg["generation"], 1);
    assert_eq!(cfg["last_reload"]["result"], "error");

    // Asked again on the command line: refused, with the same error, exit status non-zero.
    let (ok, _, err) = credgate_reload(&gw);
    assert!(!ok && err.contains("routes[1].upstream"), "{err}");
    assert!(!gw.wait_reload().0);

    // Fixed: put in force.
    let fixed = format!(
        "{OPEN_ROUTE}[[routes]]\npath_prefix = \"/v\"\nupstream = \"echo\"\nauth = \"none\"\n"
    );
    replace(&path, &plain_config(&up, &fixed));
    assert!(gw.wait_reload().0);
    assert_eq!(plain_get(&gw, "/v/1", &[]).await, StatusCode::OK);
    assert_eq!(
        metric(&gw, "credgate_config_reloads_total{result=\"ok\"}").await,
        1.0
    );
}

#[tokio::test]
async fn sighup_the_admin_api_and_credgate_reload_each_reload() {
    let dir = support::temp_dir("reload-triggers");
    let up = upstream::start(Behaviour::Ok).await;
    let path = dir.join("config.toml");
    std::fs::write(&path, plain_config(&up, OPEN_ROUTE)).expect("config");
    let mut gw = Binary::run(&path, "info", 1, true);
    gw.signal("-HUP");
    assert!(gw.wait_reload().0);
    let got = admin(&gw, Method::POST, "/admin/reload").await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.json()["reload"]["generation"], 3);
    assert!(gw.wait_reload().0);
    let (ok, out, err) = credgate_reload(&gw);
    assert!(ok, "{err}");
    assert!(out.contains("config generation 4"), "{out}");
    assert!(gw.wait_reload().0);
    let wrong = admin(&gw, Method::GET, "/admin/reload").await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    // A listener added and one removed: the new one serves, the old one stops accepting.
    let before = gw.addrs[0];
    let two = format!("{OPEN_ROUTE}[[listeners]]\naddress = \"127.0.0.1:0\"\ntls = false\n");
    replace(&path, &plain_config(&up, &two));
    assert!(gw.wait_reload().0);
    let added = *gw.addrs.last().expect("a new listener was announced");
    assert_ne!(added, before);
    let got = fake_http::call(Method::GET, &format!("http://{added}/u/x"), &[], "").await;
    assert_eq!(got.status, StatusCode::OK);
    replace(&path, &plain_config(&up, OPEN_ROUTE));
    let (put, line) = gw.wait_reload();
    assert!(
        put && line.contains(&format!("stopped listening on {added}")),
        "{line}"
    );
    assert!(
        tokio::net::TcpStream::connect(added).await.is_err(),
        "the removed listener accepts no more"
    );
    assert_eq!(plain_get(&gw, "/u/y", &[]).await, StatusCode::OK);
}

#[tokio::test]
async fn a_rotated_client_ca_admits_the_new_clients_on_new_connections() {
    let dir = support::temp_dir("reload-client-ca");
    let server = certs::make();
    let old = credgate::dev_certs::generate("old clients CA", &["client.test"]).expect("certs");
    let new = credgate::dev_certs::generate("new clients CA", &["client.test"]).expect("certs");
    let ca = dir.join("clients-ca.crt");
    std::fs::write(&ca, &old.ca_cert_pem).expect("client ca");
    let up = upstream::start(Behaviour::Ok).await;
    let path = dir.join("config.toml");
    let config = format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
cert = "{}"
key = "{}"
client_ca = "{}"
client_auth = "required"
[upstreams.echo]
url = "{}"
{OPEN_ROUTE}
"#,
        server.cert.display(),
        server.key.display(),
        ca.display(),
        up.url()
    );
    std::fs::write(&path, config).expect("config");
    let mut gw = Binary::run(&path, "info", 1, false);
    let with = |c: &credgate::dev_certs::DevCerts| {
        certs::client_with(
            certs::client_tls(&server.pem.ca_cert_pem, Some((&c.cert_pem, &c.key_pem))),
            Alpn::H1,
        )
    };
    assert_eq!(
        get(&with(&old), &gw, "/u/1", None).await,
        Some(StatusCode::OK)
    );
    assert_eq!(get(&with(&new), &gw, "/u/1", None).await, None);
    replace(&ca, &new.ca_cert_pem);
    assert!(gw.wait_reload().0);
    assert_eq!(
        get(&with(&new), &gw, "/u/2", None).await,
        Some(StatusCode::OK)
    );
    assert_eq!(get(&with(&old), &gw, "/u/2", None).await, None);
}

#[tokio::test]
async fn a_rotated_static_jwt_key_file_verifies_the_new_key_only() {
    let dir = support::temp_dir("reload-jwt-key");
    let (old, new) = (SigningKey::rsa("k"), SigningKey::rsa("k"));
    let pem = dir.join("issuer.pem");
    std::fs::write(&pem, old.public_pem()).expect("key");
    let up = upstream::start(Behaviour::Ok).await;
    let path = dir.join("config.toml");
    let issuer = format!(
        "[[issuers]]\nname = \"static\"\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\nalgorithms = [\"RS256\"]\nkeys = [{{ file = \"{}\", kid = \"k\" }}]\n[[routes]]\npath_prefix = \"/u\"\nupstream = \"echo\"\n",
        pem.display()
    );
    std::fs::write(&path, plain_config(&up, &issuer)).expect("config");
    let mut gw = Binary::run(&path, "info", 1, true);
    let bearer = |k: &SigningKey| format!("Bearer {}", mint(k, &claims(ISS, AUD)));
    let (old_token, new_token) = (bearer(&old), bearer(&new));
    assert_eq!(
        plain_get(&gw, "/u/1", &[("authorization", &old_token)]).await,
        StatusCode::OK
    );
    assert_eq!(
        plain_get(&gw, "/u/1", &[("authorization", &new_token)]).await,
        StatusCode::UNAUTHORIZED
    );
    replace(&pem, &new.public_pem());
    assert!(gw.wait_reload().0);
    assert_eq!(
        plain_get(&gw, "/u/2", &[("authorization", &new_token)]).await,
        StatusCode::OK
    );
    assert_eq!(
        plain_get(&gw, "/u/2", &[("authorization", &old_token)]).await,
        StatusCode::UNAUTHORIZED,
        "a token verified (and cached) under the old key is refused"
    );
}

#[tokio::test]
async fn a_rotated_client_secret_file_renews_that_credential_only() {
    let dir = support::temp_dir("reload-secret-file");
    let secret = dir.join("client-secret");
    std::fs::write(&secret, "secret\n").expect("secret");
    let rotated = fake_vendor::new().client("id", "rotated").run().await;
    let vendor = fake_vendor::new().run().await;
    let other = fake_vendor::new().run().await;
    let up = upstream::start(Behaviour::Ok).await;
    let path = dir.join("config.toml");
    let config = |token_url: &str| {
        plain_config(
            &up,
            &format!(
                r#"
[credentials.rotating]
kind = "oauth2_client_credentials"
allowed_hosts = ["127.0.0.1"]
token_url = "{token_url}"
client_id = "id"
client_secret_file = "{}"
[credentials.steady]
kind = "oauth2_client_credentials"
allowed_hosts = ["127.0.0.1"]
token_url = "{}"
client_id = "id"
client_secret = "secret"
[[routes]]
path_prefix = "/rotating"
upstream = "echo"
credential = "rotating"
auth = "none"
[[routes]]
path_prefix = "/steady"
upstream = "echo"
credential = "steady"
auth = "none"
"#,
                secret.display(),
                other.token_url()
            ),
        )
    };
    std::fs::write(&path, config(&vendor.token_url())).expect("config");
    let mut gw = Binary::run(&path, "info", 1, true);
    assert_eq!(plain_get(&gw, "/rotating/1", &[]).await, StatusCode::OK);
    assert_eq!(plain_get(&gw, "/steady/1", &[]).await, StatusCode::OK);
    assert_eq!((vendor.grants(), other.grants()), (1, 1));
    // The vendor moved and the secret rotated: the config and the secret file change together.
    replace(&secret, "rotated\n");
    replace(&path, &config(&rotated.token_url()));
    while !gw.wait_reload().0 {}
    assert_eq!(plain_get(&gw, "/rotating/2", &[]).await, StatusCode::OK);
    assert_eq!(plain_get(&gw, "/steady/2", &[]).await, StatusCode::OK);
    assert_eq!(
        rotated.grants(),
        1,
        "the changed credential fetched with its new secret"
    );
    assert_eq!(other.grants(), 1, "the unchanged one kept its token");
}

#[cfg(unix)]
#[tokio::test]
async fn a_kubernetes_style_symlink_swap_is_a_change() {
    use std::os::unix::fs::symlink;
    let dir = support::temp_dir("reload-k8s");
    let up = upstream::start(Behaviour::Ok).await;
    // What the kubelet lays out for a ConfigMap or Secret volume: a timestamped directory, `..data` pointing at it,
    // and each key a symlink through `..data`.
    let version = |name: &str, secret: &str| {
        let v = dir.join(name);
        std::fs::create_dir(&v).expect("version dir");
        std::fs::write(v.join("api-key"), secret).expect("secret");
    };
    version("..2026_12_04_01", "k8s-1");
    symlink("..2026_12_04_01", dir.join("..data")).expect("..data");
    symlink("..data/api-key", dir.join("api-key")).expect("key link");
    let path = dir.join("config.toml");
    let extra = format!(
        "[credentials.k]\nkind = \"static\"\nallowed_hosts = [\"127.0.0.1\"]\nheaders = {{ \"X-Api-Key\" = \"${{file:{}}}\" }}\n[[routes]]\npath_prefix = \"/u\"\nupstream = \"echo\"\ncredential = \"k\"\nauth = \"none\"\n",
        dir.join("api-key").display()
    );
    std::fs::write(&path, plain_config(&up, &extra)).expect("config");
    let mut gw = Binary::run(&path, "info", 1, true);
    let sent = |n: &str| {
        up.seen()
            .iter()
            .filter(|s| s.uri == n)
            .filter_map(|s| s.headers.get("x-api-key").cloned())
            .collect::<Vec<_>>()
    };
    assert_eq!(plain_get(&gw, "/u/1", &[]).await, StatusCode::OK);
    assert_eq!(sent("/u/1"), ["k8s-1"]);
    // The update: a new version directory, then `..data` swapped to it in one rename.
    version("..2026_12_04_02", "k8s-2");
    symlink("..2026_12_04_02", dir.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap");
    assert!(gw.wait_reload().0);
    assert_eq!(plain_get(&gw, "/u/2", &[]).await, StatusCode::OK);
    assert_eq!(sent("/u/2"), ["k8s-2"]);
}

#[tokio::test]
async fn an_admin_token_guards_metrics_and_the_admin_api_but_not_the_probes() {
    let dir = support::temp_dir("reload-admin-token");
    let up = upstream::start(Behaviour::Ok).await;
    let token = dir.join("admin-token");
    std::fs::write(&token, "t0p-admin-token\n").expect("token");
    let path = dir.join("config.toml");
    let config = plain_config(&up, OPEN_ROUTE).replace(
        "[admin]\naddress = \"127.0.0.1:0\"\n",
        &format!(
            "[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
            token.display()
        ),
    );
    assert!(config.contains("token_file"));
    std::fs::write(&path, &config).expect("config");
    let mut gw = Binary::run(&path, "info", 1, true);
    let addr = gw.admin.expect("admin");
    let at = |p: &str| format!("http://{addr}{p}");
    for open in ["/healthz", "/readyz"] {
        assert_eq!(
            fake_http::call(Method::GET, &at(open), &[], "")
                .await
                .status,
            StatusCode::OK,
            "{open}"
        );
    }
    for guarded in ["/metrics", "/admin/credentials", "/admin/config"] {
        let none = fake_http::call(Method::GET, &at(guarded), &[], "").await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{guarded}");
        assert_eq!(none.json()["code"], "admin_token_required");
        let wrong = [("authorization", "Bearer t0p-admin-tokeX")];
        assert_eq!(
            fake_http::call(Method::GET, &at(guarded), &wrong, "")
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
        let right = [("authorization", "Bearer t0p-admin-token")];
        assert_eq!(
            fake_http::call(Method::GET, &at(guarded), &right, "")
                .await
                .status,
            StatusCode::OK
        );
    }
    let refused = fake_http::call(Method::POST, &at("/admin/reload"), &[], "").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    // The command line takes the token from the environment (or `--token`, or the config file).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_credgate"))
        .args(["reload", "--admin", &addr.to_string()])
        .env("CREDGATE_ADMIN_TOKEN", "t0p-admin-token")
        .output()
        .expect("credgate reload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(gw.wait_reload().0);
    // A rotated token is in force after the reload its file sets off.
    replace(&token, "rotated-admin-token\n");
    assert!(gw.wait_reload().0);
    let old = [("authorization", "Bearer t0p-admin-token")];
    assert_eq!(
        fake_http::call(Method::GET, &at("/metrics"), &old, "")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let new = [("authorization", "Bearer rotated-admin-token")];
    assert_eq!(
        fake_http::call(Method::GET, &at("/metrics"), &new, "")
            .await
            .status,
        StatusCode::OK
    );
    assert!(
        !gw.log
            .iter()
            .any(|l| l.contains("t0p-admin-token") || l.contains("rotated-admin-token")),
        "the token is never logged"
    );
}

#[tokio::test]
async fn requests_and_upstream_responses_are_timed_by_route_class_and_upstream() {
    let dir = support::temp_dir("reload-histograms");
    let up = upstream::start(Behaviour::Ok).await;
    let path = dir.join("config.toml");
    std::fs::write(&path, plain_config(&up, OPEN_ROUTE)).expect("config");
    let gw = Binary::run(&path, "info", 1, true);
    for i in 0..3 {
        assert_eq!(
            plain_get(&gw, &format!("/u/{i}"), &[]).await,
            StatusCode::OK
        );
    }
    assert_eq!(plain_get(&gw, "/nowhere", &[]).await, StatusCode::NOT_FOUND);
    let text = admin(&gw, Method::GET, "/metrics").await.text();
    let count = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    // Routes without a name are named by their prefix.
    let route = text
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("credgate_request_duration_seconds_count{route=\"")?;
            Some(rest[..rest.find('"')?].to_owned())
        })
        .expect("a request-time series");
    assert_eq!(
        count(&format!(
            "credgate_request_duration_seconds_count{{route=\"{route}\",class=\"2xx\"}}"
        )),
        3.0,
        "{text}"
    );
    assert_eq!(
        count(&format!(
            "credgate_request_duration_seconds_count{{route=\"{route}\",class=\"5xx\"}}"
        )),
        0.0
    );
    assert_eq!(
        count("credgate_upstream_response_seconds_count{upstream=\"echo\"}"),
        3.0,
        "{text}"
    );
    let bucket = "credgate_upstream_response_seconds_bucket{le=\"+Inf\",upstream=\"echo\"}";
    assert_eq!(count(bucket), 3.0, "{text}");
}
