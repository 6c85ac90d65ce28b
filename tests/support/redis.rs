//! A real `redis-server` for the fleet tests: its own port from the OS, a throwaway directory, no persistence (a
//! restart is a flushed Redis), killed when dropped. `redis-server` must be installed: the README's test command and
//! `.ci/run` install it (`scripts/install-test-deps.sh`); without it the tests fail saying so, never skip.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::certs::TestCerts;
use super::{ChildGuard, Scratch};

/// A running (or killed, to be restarted) Redis.
pub struct Redis {
    child: Option<ChildGuard>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: Scratch,
    tls: Option<Tls>,
}

/// A TLS-only Redis's files: its certificate, and the CA it checks client certificates against.
struct Tls {
    ca: Scratch,
    cert: Scratch,
    key: Scratch,
    /// What [`Redis::ping`] connects with: the CA, and the server's own leaf as its client certificate.
    client: Arc<rustls::ClientConfig>,
}

fn binary(name: &str) -> String {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|p| Path::new(&p).join(name).is_file())
    });
    assert!(
        found,
        "{name} is not on PATH: the fleet tests run a real Redis. Install it with \
         `scripts/install-test-deps.sh` (it runs `apt-get install -y redis-server`; the README's test command and \
         .ci/run do this), then run the tests again."
    );
    name.to_owned()
}

impl Redis {
    /// Start one on a free port and wait until it answers PING.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Start one that speaks only TLS with `certs`' server certificate and requires client certificates issued by
    /// `certs`' CA (`tls-auth-clients yes`, Redis's default), as a managed Redis with mTLS does.
    pub async fn start_tls(certs: &TestCerts) -> Self {
        let client = super::certs::client_tls(
            &certs.pem.ca_cert_pem,
            Some((&certs.pem.cert_pem, &certs.pem.key_pem)),
        );
        Self::start_with(Some(Tls {
            ca: certs.ca.clone(),
            cert: certs.cert.clone(),
            key: certs.key.clone(),
            client: Arc::new(client),
        }))
        .await
    }

    async fn start_with(mut tls: Option<Tls>) -> Self {
        let dir = super::temp_dir("redis");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("port")
                .port();
            let mut r = Self {
                child: None,
                port,
                dir: dir.clone(),
                tls: tls.take(),
            };
            if r.spawn().await {
                return r;
            }
            tls = r.tls.take();
        }
        panic!("redis-server never got a port of its own");
    }

    /// A Redis that is not there: `port` refuses connections (the caller holds it, see `closed_port`).
    pub fn nowhere(port: u16) -> Self {
        Self {
            child: None,
            port,
            dir: super::temp_dir("redis-nowhere"),
            tls: None,
        }
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://` for a TLS Redis.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> bool {
        let mut cmd = Command::new(binary("redis-server"));
        cmd.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => cmd.arg("--port").arg(self.port.to_string()),
            Some(t) => cmd
                .args(["--port", "0", "--tls-port"])
                .arg(self.port.to_string())
                .arg("--tls-cert-file")
                .arg(&t.cert)
                .arg("--tls-key-file")
                .arg(&t.key)
                .arg("--tls-ca-cert-file")
                .arg(&t.ca)
                .args(["--tls-auth-clients", "yes"]),
        };
        let child = cmd
            .arg("--dir")
            .arg(&*self.dir)
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let mut child = ChildGuard(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.ping().await {
                self.child = Some(child);
                return true;
            }
            if child.0.try_wait().expect("redis-server status").is_some() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not answer within 20 s");
    }

    /// Whether it answers PING now.
    pub async fn ping(&self) -> bool {
        let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        match &self.tls {
            None => pong(s).await,
            Some(t) => {
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
                match tokio_rustls::TlsConnector::from(t.client.clone())
                    .connect(name, s)
                    .await
                {
                    Ok(s) => pong(s).await,
                    Err(_) => false,
                }
            }
        }
    }

    /// Kill it (SIGKILL: no goodbye to clients) and wait until it is gone.
    pub fn kill(&mut self) {
        drop(self.child.take());
    }

    /// Start it again on the same port, empty.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        assert!(
            self.spawn().await,
            "redis-server could not take its port back"
        );
    }

    /// Run `redis-cli -p PORT ARGS...` and return its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(binary("redis-cli"));
        if let Some(t) = &self.tls {
            cmd.args(["--tls", "--cacert"])
                .arg(&t.ca)
                .arg("--cert")
                .arg(&t.cert)
                .arg("--key")
                .arg(&t.key);
        }
        let out = cmd
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Send PING on `s` and read whether the answer is PONG.
async fn pong<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) -> bool {
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.is_ok() && &buf == b"+PONG\r\n"
}
