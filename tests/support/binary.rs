//! The real `credgate run --config FILE` as a child process, its log lines read as they come: tests wait on what it
//! says ("listening", "config reloaded") rather than on time.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::ChildGuard;

/// Longest any awaited log line may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// A running `credgate run`.
pub struct Binary {
    /// The child, killed when dropped.
    pub child: ChildGuard,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    pub log: Vec<String>,
    /// The gateway listeners' bound addresses, in the order they were announced.
    pub addrs: Vec<SocketAddr>,
    /// The admin listener's bound address.
    pub admin: Option<SocketAddr>,
}

impl Binary {
    /// Start `credgate run --config config` (log level `RUST_LOG=info` unless `log` says otherwise) and wait until
    /// its listeners and, when `admin`, its admin listener are announced.
    pub fn run(config: &Path, rust_log: &str, listeners: usize, admin: bool) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_credgate"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", rust_log)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn credgate");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut b = Self {
            child: ChildGuard(child),
            lines,
            log: Vec::new(),
            addrs: Vec::new(),
            admin: None,
        };
        while b.addrs.len() < listeners || (admin && b.admin.is_none()) {
            b.next_line("the listeners to be announced");
        }
        b
    }

    /// Read the next line (noting announced listeners); panics after [`PATIENCE`] or when the child is gone.
    fn next_line(&mut self, waiting_for: &str) -> String {
        let line = self.lines.recv_timeout(PATIENCE).unwrap_or_else(|e| {
            panic!(
                "credgate said nothing more ({e}) while waiting for {waiting_for}; log:\n{}",
                self.log.join("\n")
            )
        });
        if line.contains("listening")
            && let Some(addr) = field(&line, "addr")
            && let Ok(addr) = addr.parse()
        {
            if line.contains("admin listening") {
                self.admin = Some(addr);
            } else {
                self.addrs.push(addr);
            }
        }
        self.log.push(line.clone());
        line
    }

    /// Read lines until one contains `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?}; log:\n{}",
                self.log.join("\n")
            );
            let line = self.next_line(needle);
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Read lines until a reload ends; returns whether it was put in force, and its line.
    pub fn wait_reload(&mut self) -> (bool, String) {
        loop {
            let line = self.next_line("a reload to end");
            if line.contains("config reloaded") {
                return (true, line);
            }
            if line.contains("config reload failed") {
                return (false, line);
            }
        }
    }

    /// Send signal `sig` (e.g. `-HUP`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig}");
    }
}

/// The value of `name=` in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    let v = &line[at..];
    Some(&v[..v.find(char::is_whitespace).unwrap_or(v.len())])
}
