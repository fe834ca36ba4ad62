//! The `pgvane` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgvane::config::Config;
use pgvane::listener::Listener;

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
    /// Validate the configuration file (and the auth file it names) and exit: 0 when valid,
    /// 1 with a message naming the file, the key and the problem otherwise.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => match Config::load(&cli.config) {
            Ok(config) => {
                println!("{}: configuration is valid ({} database(s))", cli.config.display(), config.databases.len());
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
        let listener = Listener::bind(config).await.context("cannot listen")?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "pgvane listening");
        // A machine-readable line for scripts and the test harness.
        println!("pgvane listening on {addr}");
        tokio::select! {
            () = listener.run() => {}
            signal = shutdown_signal() => {
                tracing::info!(signal, "shutting down");
            }
        }
        anyhow::Ok(())
    })
}

/// Resolves on SIGINT or SIGTERM with the signal's name.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
