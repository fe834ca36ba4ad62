//! `pgvane-demo`: starts a throw-away PostgreSQL with a small `app` database
//! and a pgvane in front of it, prints how to connect, and runs until Ctrl-C
//! (or until pgvane exits). Everything is stopped and deleted on exit.
//!
//! Usage: `cargo run -p pgvane-tests --bin pgvane-demo [-- --check]`
//!
//! With `--check` it starts everything, runs one query through pgvane with
//! tokio-postgres, prints the result and exits 0 (a non-interactive smoke test
//! for CI).

use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgvane_tests::{connect_via, free_port, tail, PgCluster, Pgvane};

/// The port the demo prefers for pgvane (PgBouncer's usual one).
const PREFERRED_PORT: u16 = 6432;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Everything was stopped and cleaned up when `run` returned.
            eprintln!("pgvane-demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The demo; returns after stopping and deleting everything it started.
async fn run() -> Result<()> {
    let mut check = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!(
                    "usage: pgvane-demo [--check]\n\n  --check  start everything, run one query through pgvane, exit"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }

    println!("Starting PostgreSQL ...");
    let cluster = PgCluster::start().await.context("starting PostgreSQL")?;
    setup_app_database(&cluster).await?;
    let verifier = cluster.scram_verifier("app").await?;
    let userlist = format!("\"app\" \"{verifier}\"\n");

    println!("Starting pgvane ...");
    let pgvane = start_pgvane(cluster.port(), &userlist).await?;

    println!();
    println!("PostgreSQL : 127.0.0.1:{} (superuser postgres/postgres)", cluster.port());
    println!("             log: {}", cluster.log_path().display());
    println!("pgvane     : {}", pgvane.addr());
    println!("             config: {}", pgvane.config_path().display());
    println!("             log:    {}", pgvane.log_path().display());
    println!("             (the userlist holds app's SCRAM verifier, no plain password)");
    println!();
    println!("Connect through pgvane with:");
    println!();
    println!("    PGPASSWORD=app psql -h 127.0.0.1 -p {} -U app app", pgvane.port());
    println!();

    if check {
        return run_check(&pgvane).await;
    }

    println!("Press Ctrl-C to stop (everything above is deleted on exit).");
    loop {
        tokio::select! {
            signal = tokio::signal::ctrl_c() => {
                signal.context("waiting for Ctrl-C")?;
                println!("\nStopping ...");
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if !pgvane.is_running() {
                    bail!("pgvane exited unexpectedly; last log lines:\n{}", tail(&pgvane.log(), 40));
                }
            }
        }
    }
    // `pgvane` and `cluster` are stopped and their dirs removed when dropped here.
    Ok(())
}

/// Creates user `app` (password `app`), database `app` owned by it, and a
/// small `items` table in it.
async fn setup_app_database(cluster: &PgCluster) -> Result<()> {
    cluster.create_user("app", "app").await?;
    cluster.create_database("app", "app").await?;
    let app = cluster.connect("app", "app", "app").await?;
    app.batch_execute(
        "CREATE TABLE items(id int PRIMARY KEY, name text);
         INSERT INTO items VALUES (1, 'apple'), (2, 'banana'), (3, 'cherry'), (4, 'damson'), (5, 'elderberry');",
    )
    .await
    .context("creating the items table")?;
    Ok(())
}

/// The demo's pgvane configuration.
fn config(listen_port: u16, backend_port: u16) -> String {
    format!(
        r#"[pgvane]
listen_addr = "127.0.0.1"
listen_port = {listen_port}
pool_mode = "session"
default_pool_size = 20
auth_type = "scram-sha-256"
auth_file = "userlist.txt"
admin_users = ["app"]

[databases.app]
host = "127.0.0.1"
port = {backend_port}
"#
    )
}

/// Starts pgvane on port 6432, or on a free port if 6432 is taken.
async fn start_pgvane(backend_port: u16, userlist: &str) -> Result<Pgvane> {
    let files = [("userlist.txt", userlist)];
    let preferred_free = TcpListener::bind(("127.0.0.1", PREFERRED_PORT)).is_ok();
    if preferred_free {
        match Pgvane::start(&config(PREFERRED_PORT, backend_port), &files).await {
            Ok(pgvane) => return Ok(pgvane),
            // Someone took the port in between: fall through to a free one.
            Err(e) if format!("{e:#}").contains("in use") => {}
            Err(e) => return Err(e.context("starting pgvane")),
        }
    }
    let port = free_port()?;
    println!("(port {PREFERRED_PORT} is busy, using {port})");
    Pgvane::start(&config(port, backend_port), &files).await.context("starting pgvane")
}

/// `--check`: one query through pgvane.
async fn run_check(pgvane: &Pgvane) -> Result<()> {
    let result = async {
        let (client, _connection) = connect_via(pgvane.port(), "app", "app", "app").await?;
        let count: i64 =
            client.query_one("select count(*) from items", &[]).await.context("select count(*) from items")?.get(0);
        anyhow::Ok(count)
    }
    .await;
    match result {
        Ok(count) => {
            println!("check: select count(*) from items through pgvane = {count}");
            println!("check: OK");
            Ok(())
        }
        Err(e) => Err(e.context(format!("check failed; last pgvane log lines:\n{}", tail(&pgvane.log(), 40)))),
    }
}
