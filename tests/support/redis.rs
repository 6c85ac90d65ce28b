//! A real `redis-server` for the fleet tests: its own port from the OS, a throwaway directory, no persistence (a
//! restart is a flushed Redis), killed when dropped. `redis-server` must be installed: the README's test command and
//! `.ci/run` install it (`scripts/install-test-deps.sh`); without it the tests fail saying so, never skip.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ChildGuard, Scratch};

/// A running (or killed, to be restarted) Redis.
pub struct Redis {
    child: Option<ChildGuard>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: Scratch,
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
            };
            if r.spawn().await {
                return r;
            }
        }
        panic!("redis-server never got a port of its own");
    }

    /// A Redis that is not there: `port` refuses connections (the caller holds it, see `closed_port`).
    pub fn nowhere(port: u16) -> Self {
        Self {
            child: None,
            port,
            dir: super::temp_dir("redis-nowhere"),
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> bool {
        let child = Command::new(binary("redis-server"))
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
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
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.is_ok() && &buf == b"+PONG\r\n"
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
        let out = Command::new(binary("redis-cli"))
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(out.status.success(), "redis-cli {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
