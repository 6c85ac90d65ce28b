//! Configuration errors, each named by file and key, through the library and through the `credgate` binary (`check`
//! exits 2 on a bad file, 0 on a good one, and accepts `config.toml.example`); and the binary's access log: one line
//! per request with method, route, status, latency and request id, never a header value, human or JSON.
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use credgate::config::ConfigError;
use credgate::gateway::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::upstream::{self, Behaviour};

const BIN: &str = env!("CARGO_BIN_EXE_credgate");

/// A valid base: plain listener, one upstream, one static credential, one route. `{X}` markers are replaced.
const BASE: &str = r#"
[[listeners]]
address = "127.0.0.1:0"
tls = false
[upstreams.u]
url = "http://127.0.0.1:9/base"
[credentials.k]
kind = "static"
allowed_hosts = ["127.0.0.1"]
headers = { "X-Api-Key" = "literal-secret" }
[[routes]]
path_prefix = "/api"
upstream = "u"
credential = "k"
auth = "none"
"#;

/// Write `toml` to a fresh file and load it; returns the file and the error.
fn load_err(toml: &str) -> (support::Scratch, ConfigError) {
    let path = support::temp_dir("config").join("credgate.toml");
    std::fs::write(&path, toml).expect("write");
    match Config::load(&path) {
        Ok(_) => panic!("config accepted:\n{toml}"),
        Err(e) => (path, e),
    }
}

/// The error names the file and every fragment of `want`.
fn assert_names(toml: &str, want: &[&str]) {
    let (path, err) = load_err(toml);
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "no file name in {msg:?}"
    );
    for w in want {
        assert!(msg.contains(w), "{w:?} not in {msg:?}");
    }
    assert!(!msg.contains("literal-secret"), "secret in {msg:?}");
}

#[test]
fn base_config_is_valid() {
    let cfg = Config::from_toml(BASE, "<base>").expect("valid");
    assert_eq!(cfg.routes.len(), 1);
    assert!(cfg.listeners[0].tls.is_none());
}

#[test]
fn missing_env_var_is_named() {
    let toml = BASE.replace("\"literal-secret\"", "\"${CREDGATE_TEST_UNSET_7F3A}\"");
    assert_names(
        &toml,
        &[
            "credentials.k.headers.X-Api-Key",
            "CREDGATE_TEST_UNSET_7F3A",
        ],
    );
}

#[test]
fn unreadable_secret_file_is_named() {
    let toml = BASE.replace(
        "\"literal-secret\"",
        "\"${file:/nonexistent/credgate/secret}\"",
    );
    assert_names(
        &toml,
        &[
            "credentials.k.headers.X-Api-Key",
            "/nonexistent/credgate/secret",
        ],
    );
}

#[test]
fn unknown_keys_are_named() {
    assert_names(&format!("{BASE}bogus_key = 1\n"), &["bogus_key"]);
    assert_names(
        &BASE.replace("[upstreams.u]\n", "[upstreams.u]\nretries = 3\n"),
        &["retries"],
    );
    assert_names(&format!("[serverr]\n{BASE}"), &["serverr"]);
}

#[test]
fn route_naming_unknown_upstream_or_credential_is_named() {
    assert_names(
        &BASE.replace("upstream = \"u\"", "upstream = \"nope\""),
        &["routes[0].upstream", "nope"],
    );
    assert_names(
        &BASE.replace("credential = \"k\"", "credential = \"nope\""),
        &["routes[0].credential", "nope"],
    );
}

#[test]
fn bad_urls_are_named() {
    for bad in [
        "not a url",
        "ftp://127.0.0.1/",
        "http://user:pw@127.0.0.1/",
        "/relative",
    ] {
        assert_names(
            &BASE.replace("http://127.0.0.1:9/base", bad),
            &["upstreams.u.url"],
        );
    }
}

#[test]
fn unreadable_certs_are_named() {
    let tls = "tls = false";
    assert_names(
        &BASE.replace(
            tls,
            "cert = \"/nonexistent/server.crt\"\nkey = \"/nonexistent/server.key\"",
        ),
        &["listeners[0].cert", "/nonexistent/server.crt"],
    );
    let c = support::certs::make();
    let garbage = c.dir.join("garbage.crt");
    std::fs::write(&garbage, "not pem").expect("write");
    assert_names(
        &BASE.replace(
            tls,
            &format!(
                "cert = \"{}\"\nkey = \"{}\"",
                garbage.display(),
                c.key.display()
            ),
        ),
        &["listeners[0].cert", "garbage.crt"],
    );
    assert_names(
        &BASE.replace(
            tls,
            &format!(
                "cert = \"{}\"\nkey = \"{}\"\nclient_ca = \"/nonexistent/ca.crt\"",
                c.cert.display(),
                c.key.display()
            ),
        ),
        &["listeners[0].client_ca", "/nonexistent/ca.crt"],
    );
    assert_names(
        &BASE
            .replace(
                "[upstreams.u]\n",
                "[upstreams.u]\nca = \"/nonexistent/up-ca.crt\"\n",
            )
            .replace("http://127.0.0.1:9", "https://127.0.0.1:9"),
        &["upstreams.u.ca", "/nonexistent/up-ca.crt"],
    );
}

#[test]
fn credential_not_allowed_for_the_upstream_host_is_named() {
    assert_names(
        &BASE.replace("[\"127.0.0.1\"]", "[\"api.vendor.example\"]"),
        &["routes[0].credential", "allowed_hosts", "127.0.0.1"],
    );
}

#[test]
fn tls_listener_without_cert_is_named() {
    assert_names(&BASE.replace("tls = false", ""), &["listeners[0].cert"]);
}

#[test]
fn bad_durations_and_addresses_are_named() {
    assert_names(
        &BASE.replace("tls = false", "tls = false\nheader_read_timeout = \"soon\""),
        &["listeners[0].header_read_timeout", "soon"],
    );
    assert_names(
        &BASE.replace("127.0.0.1:0", "localhost-ish"),
        &["listeners[0].address"],
    );
}

fn check(config: &Path, dir: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .current_dir(dir)
        .output()
        .expect("run credgate")
}

#[test]
fn check_exits_2_naming_the_key_and_0_on_a_good_file() {
    let dir = support::temp_dir("check");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        BASE.replace("upstream = \"u\"", "upstream = \"nope\""),
    )
    .expect("write");
    let out = check(&bad, &dir);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("routes[0].upstream"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");

    let good = dir.join("good.toml");
    std::fs::write(&good, BASE).expect("write");
    let out = check(&good, &dir);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = check(&dir.join("missing.toml"), &dir);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unreadable config file is a config error"
    );
}

/// Every `${NAME}` environment reference in `text` outside comment lines (not `${file:...}`).
fn env_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let live: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = live.as_str();
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if !name.starts_with("file:") && !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
        rest = &after[end + 1..];
    }
    out
}

#[test]
fn the_example_config_passes_check() {
    let dir = support::temp_dir("example");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example");
    std::fs::copy(&example, dir.join("config.toml")).expect("copy example");
    let out = Command::new(BIN)
        .args(["dev-certs", "--dir", "certs"])
        .current_dir(&dir)
        .output()
        .expect("dev-certs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["ca.crt", "server.crt", "server.key"] {
        assert!(dir.join("certs").join(f).is_file(), "dev-certs wrote {f}");
    }
    let text = std::fs::read_to_string(&example).expect("read example");
    let refs = env_refs(&text);
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--config", "config.toml"])
        .current_dir(&dir);
    // Base64 text is a valid value for every kind of secret (TeleSign's API key must be base64).
    for name in &refs {
        use base64::Engine as _;
        cmd.env(
            name,
            base64::engine::general_purpose::STANDARD.encode(format!("example value for {name}")),
        );
    }
    let out = cmd.output().expect("check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "config.toml.example fails check (env set: {refs:?}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And it really depends on them: unset, check names the first missing variable.
    if let Some(first) = refs.first() {
        let out = Command::new(BIN)
            .args(["check", "--config", "config.toml"])
            .current_dir(&dir)
            .env_remove(first)
            .envs(refs.iter().skip(1).map(|n| (n, "x")))
            .output()
            .expect("check");
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(first.as_str()));
    }
}

/// A `credgate run` child with its stderr lines arriving on a channel.
struct Running {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
}

fn spawn_run(config: &Path, json: bool) -> Running {
    let mut cmd = Command::new(BIN);
    if json {
        cmd.args(["--log-format", "json"]);
    }
    let mut child = cmd
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn credgate run");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Running {
        child,
        lines,
        reader,
    }
}

/// The gateway's address from its "listening" line (human `addr=...` or JSON `"addr":"..."`).
fn listening_addr(r: &Running, seen: &mut Vec<String>) -> std::net::SocketAddr {
    loop {
        let line = r
            .lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no listening line; stderr so far: {seen:?}"));
        seen.push(line.clone());
        if !line.contains("listening") || line.contains("admin") {
            continue;
        }
        let value = if let Some(i) = line.find("addr=") {
            &line[i + 5..]
        } else if let Some(i) = line.find("\"addr\":\"") {
            &line[i + 8..]
        } else {
            continue;
        };
        let end = value
            .find(|c: char| c.is_whitespace() || c == '"')
            .unwrap_or(value.len());
        return value[..end].parse().expect("listening address");
    }
}

/// Run `credgate run`, make one request carrying secret-looking headers, stop it with SIGTERM; returns stderr.
async fn run_one_request(json: bool) -> Vec<String> {
    let up = upstream::start(Behaviour::Ok).await;
    let dir = support::temp_dir("run");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        BASE.replace("http://127.0.0.1:9/base", &up.url()).replace(
            "path_prefix = \"/api\"",
            "name = \"api\"\npath_prefix = \"/api\"",
        ),
    )
    .expect("write");
    let mut r = spawn_run(&config, json);
    let mut lines = Vec::new();
    let addr = listening_addr(&r, &mut lines);
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(
        b"GET /api/logged HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer caller-token-value\r\n\
          X-Api-Key: caller-key-value\r\nX-Request-Id: log-test-id-1\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut rsp = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut rsp))
        .await
        .expect("response in time")
        .expect("read");
    assert!(
        rsp.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&rsp)
    );
    let status = Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let exit = r.child.wait().expect("wait");
        r.reader.join().expect("reader");
        lines.extend(r.lines.try_iter());
        (exit, lines)
    });
    let (exit, lines) = tokio::time::timeout(Duration::from_secs(30), exit)
        .await
        .expect("credgate stopped on SIGTERM")
        .expect("join");
    assert!(exit.success(), "exit after SIGTERM: {exit:?}; {lines:?}");
    let all = lines.join("\n");
    for secret in ["caller-token-value", "caller-key-value", "literal-secret"] {
        assert!(!all.contains(secret), "{secret} logged:\n{all}");
    }
    lines
}

#[tokio::test]
async fn access_log_has_one_line_per_request_without_header_values() {
    let lines = run_one_request(false).await;
    let access: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("credgate::access"))
        .collect();
    assert_eq!(access.len(), 1, "{lines:#?}");
    let l = access[0];
    for want in [
        "method=GET",
        "route=\"api\"",
        "status=200",
        "latency_us=",
        "request_id=\"log-test-id-1\"",
    ] {
        assert!(l.contains(want), "{want} not in {l}");
    }
}

#[tokio::test]
async fn json_log_format_yields_json_lines() {
    let lines = run_one_request(true).await;
    let mut access = Vec::new();
    for l in &lines {
        let doc: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        if doc["target"] == "credgate::access" {
            access.push(doc);
        }
    }
    assert_eq!(access.len(), 1, "{lines:#?}");
    let f = &access[0]["fields"];
    assert_eq!(f["method"], "GET");
    assert_eq!(f["route"], "api");
    assert_eq!(f["status"], 200);
    assert!(f["latency_us"].is_u64());
    assert_eq!(f["request_id"], "log-test-id-1");
}

/// `credgate demo` on any free port, with its instructions (stdout) to read.
fn spawn_demo() -> (std::process::Child, std::process::ChildStdout) {
    let mut child = Command::new(BIN)
        .args(["demo", "--port", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn credgate demo");
    let stdout = child.stdout.take().expect("stdout");
    (child, stdout)
}

#[test]
fn demo_removes_its_dev_keys_when_stopped() {
    let (mut child, stdout) = spawn_demo();
    // The instructions name the dev CA; the directory holding it also holds the server key. Reading stops there, as
    // `head` would: the rest of the instructions must not kill the demo.
    let ca = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            let (_, rest) = l.split_once("--cacert ")?;
            rest.split_whitespace().next().map(PathBuf::from)
        })
        .expect("instructions naming the CA");
    let dir = ca.parent().expect("CA directory").to_owned();
    assert!(dir.join("server.key").exists(), "{}", dir.display());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let (tx, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let exit = exited
        .recv_timeout(Duration::from_secs(30))
        .expect("demo stopped on SIGTERM")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn an_admin_listener_off_loopback_needs_an_explicit_allow() {
    let exposed = format!("{BASE}\n[admin]\naddress = \"0.0.0.0:9090\"\n");
    assert_names(
        &exposed,
        &[
            "admin.address",
            "not a loopback address",
            "allow_non_loopback",
        ],
    );
    let allowed =
        format!("{BASE}\n[admin]\naddress = \"0.0.0.0:9090\"\nallow_non_loopback = true\n");
    let cfg = Config::from_toml(&allowed, "<test>").expect("allowed explicitly");
    assert!(cfg.admin.is_some());
    let local = format!("{BASE}\n[admin]\naddress = \"[::1]:9090\"\n");
    Config::from_toml(&local, "<test>").expect("loopback needs no allow");
}

#[test]
fn a_token_endpoint_in_plain_http_off_loopback_is_refused() {
    let oauth2 = |url: &str| {
        format!(
            r#"[credentials.c]
kind = "oauth2_client_credentials"
allowed_hosts = ["api.example"]
token_url = "{url}"
client_id = "id"
client_secret = "literal-secret"
"#
        )
    };
    assert_names(
        &oauth2("http://idp.example/token"),
        &["credentials.c.token_url", "plain http only on loopback"],
    );
    let login = r#"[credentials.c]
kind = "login"
allowed_hosts = ["api.example"]
url = "http://vendor.example/login"
body = '{"password": "literal-secret"}'
headers = { "X-Token" = "{token}" }
"#;
    assert_names(login, &["credentials.c.url", "plain http only on loopback"]);
    for local in [
        "http://127.0.0.1:9/token",
        "http://localhost:9/token",
        "http://[::1]:9/token",
    ] {
        Config::from_toml(&oauth2(local), "<test>").unwrap_or_else(|e| panic!("{local}: {e}"));
    }
}

#[test]
fn status_shows_the_running_demos_credentials_and_issuer() {
    let (mut child, stdout) = spawn_demo();
    let admin = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split_once("credgate status --admin ")
                .map(|(_, a)| a.trim().to_owned())
        })
        .expect("instructions naming the admin listener");
    // The demo fetches its credentials' first tokens as it starts serving: asked until it shows them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let out = loop {
        let out = Command::new(BIN)
            .args(["status", "--admin", &admin])
            .output()
            .expect("credgate status");
        let shown = String::from_utf8_lossy(&out.stdout);
        if shown
            .lines()
            .any(|l| l.starts_with("tropipay_sandbox ") && l.contains(" fresh "))
            || std::time::Instant::now() > deadline
        {
            break out;
        }
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let row = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("tropipay_sandbox")[1..3],
        ["oauth2_client_credentials", "fresh"]
    );
    assert_eq!(row("demo_api_key")[1], "static");
    assert_eq!(row("demo")[1], "yes", "the dev issuer is ready");
    // Nothing listens there: a clear error, not a panic.
    let (_held, closed) = support::closed_port();
    let out = Command::new(BIN)
        .args(["status", "--admin", &closed.to_string()])
        .output()
        .expect("credgate status");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin listener"));
}

/// A value each of the deploy examples' environment references accepts.
fn deploy_value(name: &str) -> String {
    use base64::Engine as _;
    match name {
        "CREDGATE_CLUSTER_KEY" => base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        "CREDGATE_REDIS_URL" => "redis://redis:6379".into(),
        "CREDGATE_POSTGRES_URL" => "postgres://credgate:pw@postgres:5432/credgate".into(),
        // Base64 text is a valid value for every other kind of secret (TeleSign's API key must be base64).
        other => base64::engine::general_purpose::STANDARD.encode(format!("value of {other}")),
    }
}

#[test]
fn every_config_under_deploy_passes_check() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut configs = Vec::new();
    let mut dirs = vec![deploy.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read deploy/").flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                configs.push(p);
            }
        }
    }
    assert!(!configs.is_empty(), "no config under deploy/");
    for config in configs {
        // As mounted in the containers: the config and a tls/ directory beside it.
        let dir = support::temp_dir("deploy");
        std::fs::copy(&config, dir.join("credgate.toml")).expect("copy config");
        let out = Command::new(BIN)
            .args(["dev-certs", "--dir", "tls"])
            .current_dir(&dir)
            .output()
            .expect("dev-certs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&config).expect("read config");
        let mut cmd = Command::new(BIN);
        cmd.args(["check", "--config", "credgate.toml"])
            .current_dir(&dir);
        for name in env_refs(&text) {
            cmd.env(&name, deploy_value(&name));
        }
        let out = cmd.output().expect("check");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{} fails check: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
