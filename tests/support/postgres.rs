//! A real PostgreSQL server for the fleet tests: `initdb` into a throwaway directory, its own port from the OS,
//! stopped (fast shutdown) when dropped. Run as the `postgres` user when the tests run as root (PostgreSQL refuses
//! root). It must be installed: `scripts/install-test-deps.sh` (`apt-get install -y postgresql`) does it, as the
//! README's test command and `.ci/run` do; without it the tests fail saying so, never skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::ChildGuard;

/// A running PostgreSQL.
pub struct Postgres {
    child: Option<ChildGuard>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

/// The directory of `initdb` and `postgres`: Debian keeps them out of PATH, under /usr/lib/postgresql/VERSION/bin.
fn bin_dir() -> PathBuf {
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .max();
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|p| p.join("initdb").is_file()));
    debian.or(on_path).unwrap_or_else(|| {
        panic!(
            "PostgreSQL (initdb, postgres) is not installed: the fleet tests run a real PostgreSQL. Install it with \
             `scripts/install-test-deps.sh` (it runs `apt-get install -y postgresql`; the README's test command and \
             .ci/run do this), then run the tests again."
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// `program` run as the `postgres` user when we are root (setpriv execs it, so its pid is the server's).
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn id_of(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("id postgres");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the postgres user exists (installed with the postgresql package)")
}

impl Postgres {
    /// Initialise a cluster and start it on a free port; returns once it accepts connections.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// [`Postgres::start`], accepting TCP connections over TLS only (`hostnossl ... reject`), with `certs`' server
    /// certificate.
    pub async fn start_tls(certs: &super::certs::TestCerts) -> Self {
        Self::start_with(Some(certs)).await
    }

    async fn start_with(tls: Option<&super::certs::TestCerts>) -> Self {
        let bin = bin_dir();
        // Under /tmp, which the postgres user can reach (the build directory may not be).
        let dir = tempfile::Builder::new()
            .prefix("credgate-test-postgres-")
            .tempdir()
            .expect("temp dir");
        if is_root() {
            std::os::unix::fs::chown(dir.path(), Some(id_of("-u")), Some(id_of("-g")))
                .expect("chown the data directory");
        }
        let data = dir.path().join("data");
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "credgate", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut ssl = Vec::new();
        if let Some(certs) = tls {
            // The server reads its key only when it is the server user's and private.
            let (cert, key) = (data.join("server.crt"), data.join("server.key"));
            std::fs::copy(&certs.cert, &cert).expect("copy the server certificate");
            std::fs::copy(&certs.key, &key).expect("copy the server key");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod the server key");
            if is_root() {
                for f in [&cert, &key] {
                    std::os::unix::fs::chown(f, Some(id_of("-u")), Some(id_of("-g")))
                        .expect("chown the TLS files");
                }
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            )
            .expect("pg_hba.conf");
            ssl = vec![
                "-c".to_owned(),
                "ssl=on".to_owned(),
                "-c".to_owned(),
                format!("ssl_cert_file={}", cert.display()),
                "-c".to_owned(),
                format!("ssl_key_file={}", key.display()),
            ];
        }
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("port")
                .port();
            let log = std::fs::File::create(dir.path().join(format!("log-{port}"))).expect("log");
            let child = as_server_user(&bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-p",
                    &port.to_string(),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-k",
                ])
                .arg(dir.path())
                .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
                .args(&ssl)
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn postgres");
            let mut child = ChildGuard(child);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ready = Command::new(bin.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                    .status()
                    .is_ok_and(|s| s.success());
                if ready {
                    return Self {
                        child: Some(child),
                        port,
                        bin,
                        _dir: dir,
                    };
                }
                if child.0.try_wait().expect("postgres status").is_some() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "postgres did not start within 30 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("postgres never got a port of its own");
    }

    /// `postgres://credgate@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://credgate@127.0.0.1:{}/postgres", self.port)
    }

    /// Run one SQL statement with `psql` and return its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "credgate",
                "-d",
                "postgres",
            ])
            .args(["-At", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            // Fast shutdown, so no backend outlives the test; the guard then reaps it.
            let _ = Command::new("kill")
                .args(["-INT", &child.0.id().to_string()])
                .status();
            let mut child = child;
            let _ = child.0.wait();
        }
    }
}
