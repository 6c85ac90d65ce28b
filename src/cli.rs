//! The command line: `run`, `check` (the same load-and-build path as startup, without serving), `status` (a running
//! gateway's token and key state), `dev-certs` and `demo`. Exit code 2 for configuration errors, 1 for anything else.

mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::ConfigError;
use crate::gateway::Config;
use crate::gateway::{BuildError, Gateway};
use crate::pipeline::DisplayChain;
use crate::reload::Triggers;
use crate::server::{self, ServerError};

/// credgate: OAuth2 client-credentials gateway and reverse proxy.
#[derive(Debug, Parser)]
#[command(name = "credgate", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve with a config file.
    Run {
        /// Config file.
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Validate a config file without serving.
    Check {
        /// Config file.
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Tell a running gateway to reload its config (through its admin listener), and say how it went.
    Reload(AdminArgs),
    /// Show a running gateway's credentials and issuers, from its admin listener.
    Status(AdminArgs),
    /// Write a local development CA and localhost server certificate.
    DevCerts {
        /// Directory to write into.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
    /// Run the gateway with local sandbox vendors: no accounts, no files.
    Demo {
        /// Gateway port on 127.0.0.1.
        #[arg(long, default_value_t = 8443)]
        port: u16,
        /// Print the generated config and exit; the files it names (dev certificate and key) are kept.
        #[arg(long)]
        print_config: bool,
    },
}

/// Which running gateway `status` and `reload` talk to.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The admin listener's address (default: `[admin] address` of the config file).
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// Config file naming the admin listener (and its token), when `--admin` is not given.
    #[arg(long, short, default_value = "config.toml")]
    config: PathBuf,
    /// The admin listener's token, when it has one (default: `[admin] token` of the config file).
    #[arg(long, env = "CREDGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Why the command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad configuration.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The gateway could not be assembled.
    #[error("{0}")]
    Build(#[from] BuildError),
    /// Listening failed.
    #[error("{0}")]
    Server(#[from] ServerError),
    /// Anything else.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Certificates could not be generated.
    #[error("{0}")]
    DevCerts(#[from] crate::dev_certs::DevCertsError),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Build(_) => 2,
            CliError::Server(_) | CliError::Io(_) | CliError::DevCerts(_) => 1,
        }
    }
}

/// Entry point for the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    // On one CPU (e.g. pinned with taskset) a current-thread runtime serves the same load without the work-stealing
    // scheduler's cross-thread bookkeeping; otherwise one worker per CPU.
    let one_cpu = std::thread::available_parallelism().map_or(true, |n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("credgate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("credgate: {}", DisplayChain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Run one subcommand.
pub async fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Run { config } => serve(config, None).await,
        Command::Check { config } => {
            let cfg = Config::load(&config)?;
            Gateway::build(&cfg)?;
            println!(
                "{}: ok ({} listeners, {} routes)",
                config.display(),
                cfg.listeners.len(),
                cfg.routes.len()
            );
            Ok(())
        }
        Command::Status(args) => {
            print_out(&status::render(&admin_target(args)?).await?);
            Ok(())
        }
        Command::Reload(args) => {
            print_out(&status::reload(&admin_target(args)?).await?);
            Ok(())
        }
        Command::DevCerts { dir } => {
            for p in crate::dev_certs::write(&dir)? {
                println!("wrote {}", p.display());
            }
            println!(
                "trust {}/ca.crt in your client (e.g. curl --cacert); see certs/README.md",
                dir.display()
            );
            Ok(())
        }
        Command::Demo { port, print_config } => {
            // The admin listener next to the gateway's port (the demo's instructions print it for `credgate status`).
            let admin_port = if port == 0 { 0 } else { port.saturating_add(1) };
            let demo = crate::demo::prepare(port, admin_port).await?;
            if print_config {
                print_out(&demo.config_toml);
                return Ok(());
            }
            // Served from a file, like any config: editing it (or `credgate reload`) reloads the demo.
            let path = demo.config_path();
            std::fs::write(&path, &demo.config_toml)?;
            serve(path, Some(demo)).await
        }
    }
}

/// The admin listener to talk to: `--admin` and `--token`, or what the config file says of them.
fn admin_target(args: AdminArgs) -> Result<status::Admin, CliError> {
    let AdminArgs {
        admin,
        config,
        token,
    } = args;
    let token = token.map(secrecy::SecretString::from);
    match admin {
        Some(address) => Ok(status::Admin { address, token }),
        None => {
            let cfg = Config::load(&config)?;
            let address = cfg.admin.ok_or_else(|| {
                std::io::Error::other(format!(
                    "{} has no [admin] listener; give --admin ADDRESS",
                    config.display()
                ))
            })?;
            Ok(status::Admin {
                address,
                token: token.or(cfg.admin_token),
            })
        }
    }
}

/// Serve the config at `path` until SIGINT/SIGTERM, reloading it on SIGHUP, `POST /admin/reload` and a change to
/// any file it was read from.
async fn serve(path: PathBuf, demo: Option<crate::demo::Demo>) -> Result<(), CliError> {
    let stop = stop_signal();
    tokio::pin!(stop);
    let cfg = Config::load(&path)?;
    // Installed before the listeners announce themselves: a SIGHUP from then on reloads rather than kills.
    let mut triggers = Triggers::new(&cfg.files);
    let gw = Gateway::build(&cfg)?;
    let mut running = server::start(gw, &cfg).await?;
    if let (Some(demo), Some(addr)) = (&demo, running.addrs.first()) {
        print_out(&format!(
            "{}\n",
            crate::demo::instructions(demo, *addr, running.admin)
        ));
    }
    let mut grace = cfg.shutdown_grace;
    drop(cfg);
    loop {
        let asked = tokio::select! {
            () = &mut stop => break,
            why = triggers.next() => {
                tracing::info!(?why, "reloading");
                None
            }
            Some(req) = running.reload_requested() => {
                tracing::info!("reloading, as asked on the admin API");
                Some(req)
            }
        };
        let loaded = Config::load(&path);
        let next = loaded
            .as_ref()
            .ok()
            .map(|c| (c.files.clone(), c.shutdown_grace));
        let record = running.reload(loaded).await;
        if let (Some((files, g)), "ok") = (next, record.result) {
            triggers.follow(&files);
            grace = g;
        }
        if let Some(req) = asked {
            req.answer(record);
        }
    }
    tracing::info!(?grace, "shutting down");
    running.shutdown(grace).await;
    // The demo's dev keys were generated for this run only; none is left behind in the temp directory.
    if let Some(demo) = demo
        && let Err(e) = demo.remove_files()
    {
        tracing::warn!(error = %e, "could not remove the demo's temporary files");
    }
    Ok(())
}

/// Write to stdout, ignoring a reader that went away (`credgate demo | head`): `print!` would panic on it.
fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when it is first polled: a
/// signal that arrives while the gateway starts up then stops it gracefully instead of killing it outright (which
/// would skip the demo's cleanup).
fn stop_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {},
                        _ = term.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
