//! The `sluice` command line: `serve`, `dev`, `key`, `check`. It parses arguments, loads the
//! config, binds, and hands over to `server::run` with the stop signal as a future; nothing
//! below reads signals itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "An HTTP-to-SQL pooling gateway for PostgreSQL, built for serverless functions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    ///
    /// The config comes from --config, else ./sluice.toml, else the environment
    /// (SLUICE_DATABASE_URL, SLUICE_API_KEY, SLUICE_LISTEN, SLUICE_MAX_CONNECTIONS).
    Serve {
        /// The TOML config file.
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Start a throwaway local Postgres and a gateway in front of it with a demo tenant;
    /// print the URL, the key and a curl to try. Ctrl-C removes everything.
    Dev {
        /// Address for the gateway (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Print one JSON line {url, apiKey, adminKey, databaseUrl, caFile} instead of the summary.
        #[arg(long)]
        json: bool,
        /// Serve HTTPS with a throwaway certificate authority and certificate.
        #[arg(long)]
        tls: bool,
    },
    /// Print a new random API key and the `sha256:` line for the config.
    Key,
    /// Validate the config and print the effective limits per upstream and tenant; contact
    /// each upstream to check its budget against the server's connection limit.
    Check {
        #[arg(long, short, env = "SLUICE_CONFIG")]
        config: Option<PathBuf>,
        /// Do not contact the upstreams.
        #[arg(long)]
        offline: bool,
    },
}

fn main() -> ExitCode {
    sluice::allocator::tune();
    // The binary's panics never print their message at info (it may quote a request); the
    // library leaves the hook alone, so tests embedding the gateway keep their own.
    sluice::panic::install_hook();
    let cli = Cli::parse();
    match cli.command {
        Command::Key => {
            let key = sluice::auth::generate_key();
            println!("key:    {key}");
            println!(
                "config: api_keys = [\"{}\"]",
                sluice::auth::KeyHash::of_key(&key)
            );
            println!(
                "\nGive the key to the client (Authorization: Bearer <key>); only the sha256 line goes in sluice.toml."
            );
            ExitCode::SUCCESS
        }
        Command::Check { config, offline } => {
            let config = match load_config(config.as_deref()) {
                Ok((config, _)) => config,
                Err(error) => return fail(&error),
            };
            runtime().block_on(sluice::check::run(&config, offline))
        }
        Command::Serve { config } => {
            let (config, config_path) = match load_config(config.as_deref()) {
                Ok(loaded) => loaded,
                Err(error) => return fail(&error),
            };
            // Kept until `main` returns: dropping it writes the log lines still buffered.
            let _log_guard = init_logging(
                config.server.log_format,
                &config.server.log_level,
                config.server.log_buffer_bytes,
            );
            runtime().block_on(async move {
                let listeners = match sluice::server::bind(&config) {
                    Ok(listeners) => listeners,
                    Err(error) => return fail(&error.to_string()),
                };
                let options = sluice::server::RunOptions {
                    reload: Some(reload_signals()),
                    config_path,
                };
                match sluice::server::run_with(listeners, config, options, shutdown_signal()).await
                {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => fail(&error.to_string()),
                }
            })
        }
        Command::Dev { listen, json, tls } => run_dev(listen, json, tls),
    }
}

#[cfg(feature = "dev")]
fn run_dev(listen: SocketAddr, json: bool, tls: bool) -> ExitCode {
    let _log_guard = (!json).then(|| {
        init_logging(
            LogFormat::Text,
            "info",
            sluice::logging::DEFAULT_BUFFER_BYTES,
        )
    });
    let options = sluice::dev::DevOptions { listen, json, tls };
    match runtime().block_on(sluice::dev::run(options, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// The subcommand stays in `--help` so that users of such a build get the message below.
#[cfg(not(feature = "dev"))]
fn run_dev(_listen: SocketAddr, _json: bool, _tls: bool) -> ExitCode {
    fail(
        "this binary was built without the `dev` feature (cargo build --no-default-features); \
         `sluice dev` needs a build with it: cargo build --features dev",
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

fn fail(message: &str) -> ExitCode {
    eprintln!("sluice: {message}");
    ExitCode::FAILURE
}

/// The config and the file it came from (`None` in environment-only mode).
fn load_config(path: Option<&Path>) -> Result<(Config, Option<PathBuf>), String> {
    let default = Path::new("sluice.toml");
    let file = match path {
        Some(path) => Some(path.to_owned()),
        None if default.exists() => Some(default.to_owned()),
        None => None,
    };
    match file {
        Some(file) => {
            let config =
                Config::from_file(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            // Absolute, so a reload finds it whatever the working directory becomes.
            let file = std::fs::canonicalize(&file).unwrap_or(file);
            Ok((config, Some(file)))
        }
        None => {
            let vars: HashMap<String, String> = std::env::vars()
                .filter(|(k, _)| k.starts_with("SLUICE_"))
                .collect();
            if !vars.contains_key("SLUICE_DATABASE_URL") {
                return Err("no config: pass --config FILE, create ./sluice.toml, or set SLUICE_DATABASE_URL and \
                            SLUICE_API_KEY (try `sluice dev` for a local sandbox)"
                    .into());
            }
            Ok((Config::from_env(&vars).map_err(|e| e.to_string())?, None))
        }
    }
}

/// Logs to stderr: the level from `RUST_LOG` if set, else `[server] log_level`. Lines go
/// through a bounded buffer written by a thread of its own (`sluice::logging`), never by the
/// request path; the guard writes what is left when dropped.
fn init_logging(format: LogFormat, level: &str, buffer_bytes: usize) -> sluice::logging::LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let (writer, guard) = sluice::logging::LogWriter::stderr(buffer_bytes);
    sluice::logging::install_access_log(writer.clone(), format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

/// SIGHUP asks the gateway to reload (its TLS certificate and its config).
fn reload_signals() -> tokio::sync::mpsc::Receiver<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut hangup = signal(SignalKind::hangup()).expect("cannot listen for SIGHUP");
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// The first SIGTERM or Ctrl-C starts a drain; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("cannot listen for SIGTERM");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("sluice: second stop signal; exiting now");
        std::process::exit(130);
    });
}
