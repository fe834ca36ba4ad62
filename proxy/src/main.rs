//! The `pgvane` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgvane::config::Config;
use pgvane::listener::{Listener, Shared};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// A PostgreSQL proxy whose routing and rewrite decisions are made by sandboxed WebAssembly plugins.
///
/// Without a subcommand, runs the proxy with the given configuration.
#[derive(Debug, Parser)]
#[command(name = "pgvane", version, about, long_about)]
struct Cli {
    /// The configuration file (TOML; every key is described in docs/config.md).
    #[arg(short, long, global = true, default_value = "pgvane.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration file (the auth file it names, and its plugins: compiled and
    /// initialised with their config) and exit: 0 when valid,
    /// 1 with a message naming the file, the key and the problem otherwise.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => match check(&cli.config) {
            Ok((chain, config)) => {
                println!(
                    "{}: configuration is valid ({} database(s), {} plugin(s))",
                    cli.config.display(),
                    config.databases.len(),
                    chain.plugins().len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgvane: invalid configuration: {e}");
                ExitCode::FAILURE
            }
        },
        None => match run(&cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pgvane: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Loads the configuration and its plugins, as a start would.
fn check(path: &std::path::Path) -> Result<(pgvane::policy::Chain, Config), pgvane::config::ConfigError> {
    let config = Config::load(path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| pgvane::config::ConfigError::Plugins(pgvane::policy::PolicyError::Engine(e.to_string())))?;
    let chain = runtime.block_on(config.load_plugins())?;
    Ok((chain, config))
}

fn run(config_path: &std::path::Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("pgvane=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let policy = config.load_plugins().await?;
        let listener = Listener::bind(config, policy).await.context("cannot listen")?;
        let addr = listener.local_addr()?;
        let shared = listener.shared();
        // Installed before the listening line, so a SIGHUP from then on reloads instead of
        // killing the process (the default action).
        let hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        tokio::spawn(reload_on_sighup(hangup, shared.clone()));
        tracing::info!(%addr, "pgvane listening");
        // A machine-readable line for scripts and the test harness.
        println!("pgvane listening on {addr}");
        tokio::select! {
            () = listener.run() => {}
            signal = shutdown_signal() => {
                tracing::info!(signal, "shutting down");
            }
            () = shared.shutdown_requested() => {
                tracing::info!("shutting down: SHUTDOWN on the admin console");
            }
        }
        // The listening socket is closed now; tell connected clients, as PostgreSQL does.
        disconnect_clients(&shared).await;
        anyhow::Ok(())
    })
}

/// Reloads the configuration on every SIGHUP, like RELOAD on the admin console. A bad
/// file is logged and the configuration in force stays.
async fn reload_on_sighup(mut hangup: Signal, shared: Arc<Shared>) {
    while hangup.recv().await.is_some() {
        match shared.reload().await {
            Ok(outcome) => tracing::info!(
                added = ?outcome.added,
                removed = ?outcome.removed,
                changed = ?outcome.changed,
                reconnecting = ?outcome.reconnecting,
                restart_needed = ?outcome.restart_needed,
                "SIGHUP: configuration reloaded"
            ),
            Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded; the old one stays in force"),
        }
    }
}

/// Ends every session with FATAL 57P01 and gives them a moment to say so.
async fn disconnect_clients(shared: &Shared) {
    const GRACE: Duration = Duration::from_secs(2);
    shared.clients.kill(None);
    let deadline = tokio::time::Instant::now() + GRACE;
    while !shared.clients.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Resolves on SIGINT or SIGTERM with the signal's name.
async fn shutdown_signal() -> &'static str {
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
