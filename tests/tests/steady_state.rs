//! pgvane's own work per query, counted rather than timed: once a session is warm, relaying a
//! query allocates nothing, in the simple, extended and prepared protocols.
//!
//! pgvane runs inside this test's process (its library: the listener and query loop the
//! binary runs) under a counting global allocator, in transaction mode in front of a real
//! PostgreSQL 15; the clients are pgbench processes, so the only allocations this process
//! makes while they run are pgvane's (and the few of spawning pgbench). Each protocol runs
//! twice with the same clients and logins, once short and once long: logins, new sessions and
//! spawning pgbench cost the same in both, so what the long run allocates beyond the short
//! run is what its extra queries allocated.

use std::alloc::System;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use pgvane_tests::fixture::{APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::{describe_output, pgbench, PgCluster};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// pgbench clients per run (one pgbench thread), and the transactions each runs in the short
/// and the long run.
const CLIENTS: u32 = 4;
const SHORT: u32 = 200;
const LONG: u32 = 1200;

/// Allocations the long run may make beyond the short one without a query allocating: far
/// below one per query (the long run has 4,000 more), room for a collection that grows once.
const SLACK: u64 = 16;

/// Starts pgvane (its library) on a thread of its own, with a runtime of `worker_threads`
/// threads as the binary builds it, serving `config_path`. Returns where it listens.
fn start_pgvane(config_path: &Path) -> Result<SocketAddr> {
    let config = pgvane::config::Config::load(config_path)?;
    let threads = config.settings.worker_threads;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = match threads {
            1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
            n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
        }
        .expect("a runtime");
        runtime.block_on(async move {
            let chain = pgvane::lifecycle::load(&config).await.expect("no plugins to load");
            let listener = pgvane::listener::Listener::bind(config, chain).await.expect("listening");
            tx.send(listener.local_addr().expect("an address")).expect("the test waits");
            listener.run().await;
        });
    });
    rx.recv().context("pgvane did not start")
}

/// A cluster with pgbench's tables, and pgvane in transaction mode in front of it.
async fn setup(dir: &Path, worker_threads: u32) -> Result<(PgCluster, u16)> {
    let cluster = PgCluster::start().await?;
    cluster.create_user(APP_USER, APP_PASSWORD).await?;
    cluster.create_database(APP_DB, APP_USER).await?;
    let out = pgbench(cluster.port(), APP_USER, APP_PASSWORD, APP_DB, &["-i", "-q", "-s", "1"])?;
    ensure!(out.status.success(), "pgbench -i: {}", describe_output(&out));
    // Pool size = clients: the warm-up opens every server connection the runs will use.
    let config = format!(
        "[pgvane]\nlisten_port = 0\npool_mode = \"transaction\"\ndefault_pool_size = {CLIENTS}\n\
         auth_type = \"trust\"\nworker_threads = {worker_threads}\nserver_tls_sslmode = \"disable\"\n\
         log_connections = false\nlog_disconnections = false\nlog_stats = false\n\n\
         [databases.{APP_DB}]\nhost = \"{}\"\nport = {}\nuser = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n",
        cluster.host(),
        cluster.port()
    );
    let path = dir.join("pgvane.toml");
    std::fs::write(&path, config)?;
    let addr = start_pgvane(&path)?;
    Ok((cluster, addr.port()))
}

/// Runs pgbench -S through pgvane: `CLIENTS` clients, `transactions` each, protocol `mode`.
fn run(port: u16, mode: &str, transactions: u32) -> Result<()> {
    let (clients, transactions) = (CLIENTS.to_string(), transactions.to_string());
    let args = ["-S", "-M", mode, "-c", &clients, "-j", "1", "-t", &transactions];
    let out = pgbench(port, APP_USER, "", APP_DB, &args)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("number of failed transactions: 0 "),
        "pgbench -M {mode}: {}",
        describe_output(&out)
    );
    Ok(())
}

/// Allocations (new blocks and reallocations) while `f` runs.
fn allocations(f: impl FnOnce() -> Result<()>) -> Result<u64> {
    let region = Region::new(GLOBAL);
    f()?;
    let change = region.change();
    Ok((change.allocations + change.reallocations) as u64)
}

#[tokio::test]
async fn a_warm_session_allocates_nothing_per_query() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (_cluster, port) = setup(dir.path(), 1).await?;
    let mut report = Vec::new();
    for mode in ["simple", "extended", "prepared"] {
        run(port, mode, SHORT)?; // warm-up: server connections, their prepared statements
        let short = allocations(|| run(port, mode, SHORT))?;
        let long = allocations(|| run(port, mode, LONG))?;
        let extra_queries = u64::from(CLIENTS * (LONG - SHORT));
        report.push(format!(
            "-M {mode}: {short} allocations in {} queries, {long} in {}: {} per query",
            CLIENTS * SHORT,
            CLIENTS * LONG,
            long.saturating_sub(short) as f64 / extra_queries as f64
        ));
        println!("{}", report.last().unwrap());
        // Fails with one allocation per query (4,000 more), and with one in a hundred.
        assert!(long <= short + SLACK, "queries allocate:\n{}", report.join("\n"));
    }
    Ok(())
}
