//! What clients see while pgvane changes under them: throughput while its plugins are swapped
//! (RELOAD every half second), and a writer switchover under a write load.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pgvane_tests::fixture::{APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::{connect_via, PgCluster, Pgvane, SUPERUSER, SUPERUSER_PASSWORD};
use tokio_postgres::SimpleQueryMessage;

use crate::pgbench::{Outcome, Run};
use crate::{Plan, Protocol, Target};

/// The pause after each RELOAD during the swap runs.
const SWAP_EVERY: Duration = Duration::from_millis(500);
/// Clients inserting during a switchover, half with the simple protocol, half extended.
const WRITERS: usize = 4;

/// pgbench (`-S -M simple`, 10 clients) against one pgvane, alternately left alone and with its
/// plugin chain reloaded every [`SWAP_EVERY`].
pub struct Swaps {
    pub target: String,
    pub seconds: u32,
    /// Each round: (steady, swapping, RELOADs during the swapping run).
    pub rounds: Vec<(Outcome, Outcome, u32)>,
}

/// One planned switchover: statements run by [`WRITERS`] clients inserting in autocommit,
/// those that failed, the longest time without a successful insert, and pgvane's own
/// `switchover_ms` from SHOW BACKENDS.
pub struct Switchover {
    pub statements: usize,
    pub failed: Vec<String>,
    pub window: Duration,
    pub pgvane_ms: String,
}

/// Swap runs against `target` (a pgvane with `admin_users = ["app"]`).
pub async fn swaps(target: &Target, label: String, plan: &Plan) -> Result<Swaps> {
    let seconds = plan.seconds * 2;
    let mut rounds = Vec::new();
    for _ in 0..plan.repeats.min(2) {
        let steady = pgbench(target, seconds).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let reloads = tokio::spawn(reload_until(target.port, stop.clone()));
        let swapping = pgbench(target, seconds).await?;
        stop.store(true, Ordering::SeqCst);
        let reloads = reloads.await??;
        rounds.push((steady, swapping, reloads));
    }
    Ok(Swaps { target: label, seconds, rounds })
}

async fn pgbench(target: &Target, seconds: u32) -> Result<Outcome> {
    let run = Run { port: target.port, protocol: Protocol::Simple, clients: 10, seconds, proxy_pid: target.pid };
    tokio::task::spawn_blocking(move || run.execute()).await?
}

/// RELOADs on pgvane's console every [`SWAP_EVERY`] until `stop`; how many were done.
async fn reload_until(port: u16, stop: Arc<AtomicBool>) -> Result<u32> {
    let (console, _connection) = connect_via(port, APP_USER, APP_PASSWORD, "pgvane").await?;
    let mut reloads = 0;
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(SWAP_EVERY).await;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        console.simple_query("RELOAD").await.context("RELOAD")?;
        reloads += 1;
    }
    Ok(reloads)
}

/// One switchover on a fresh primary and streaming replica: writers insert for a second, the
/// primary stops (fast shutdown), the replica is promoted, and the writers go on for two more.
pub async fn switchover(threads: u32) -> Result<Switchover> {
    let primary = PgCluster::start().await?;
    primary.create_user(APP_USER, APP_PASSWORD).await?;
    primary.create_database(APP_DB, APP_USER).await?;
    primary.exec_in(APP_DB, "create table t(x int); alter table t owner to app").await?;
    let replica = PgCluster::start_replica_of(&primary).await?;
    let verifier = primary.scram_verifier(APP_USER).await?;
    let userlist = format!("\"{APP_USER}\" \"{verifier}\"\n\"{SUPERUSER}\" \"{SUPERUSER_PASSWORD}\"\n");
    let config = format!(
        "[pgvane]\nlisten_port = 0\nworker_threads = {threads}\nauth_type = \"scram-sha-256\"\n\
         auth_file = \"userlist.txt\"\npool_mode = \"transaction\"\nadmin_users = [\"{APP_USER}\"]\n\
         monitor_user = \"{SUPERUSER}\"\nhealth_check_period_ms = 100\n\n\
         [databases.{APP_DB}]\nhosts = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n",
        primary.port(),
        replica.port()
    );
    let pgvane = Pgvane::start(&config, &[("userlist.txt", &userlist)]).await?;
    wait_for_replica(&pgvane, replica.port()).await?;

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<(Duration, Option<String>)>::new()));
    let mut writers = Vec::new();
    for id in 0..WRITERS {
        let (client, _connection) = connect_via(pgvane.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
        let (stop, outcomes) = (stop.clone(), outcomes.clone());
        writers.push(tokio::spawn(async move {
            let _connection = _connection;
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let value = id as i32 * 1_000_000 + i;
                let result = match id % 2 {
                    0 => client.simple_query(&format!("insert into t values ({value})")).await.map(drop),
                    _ => client.execute("insert into t values ($1)", &[&value]).await.map(drop),
                };
                let error = result.err().map(|e| e.to_string());
                outcomes.lock().unwrap_or_else(|p| p.into_inner()).push((t0.elapsed(), error));
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut old_primary = primary;
    let old_primary = tokio::task::spawn_blocking(move || {
        old_primary.stop();
        old_primary
    })
    .await?;
    replica.promote().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await?;
    }
    drop(old_primary);

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|p| p.into_inner()));
    let failed: Vec<String> = outcomes.iter().filter_map(|(_, e)| e.clone()).collect();
    let mut ok: Vec<Duration> = outcomes.iter().filter(|(_, e)| e.is_none()).map(|(t, _)| *t).collect();
    ok.sort();
    let window = ok.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let pgvane_ms = backend_column(&pgvane, replica.port(), "switchover_ms").await?.unwrap_or_default();
    Ok(Switchover { statements: outcomes.len(), failed, window, pgvane_ms })
}

/// Waits (up to 20 s) until pgvane knows the replica as one.
async fn wait_for_replica(pgvane: &Pgvane, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while backend_column(pgvane, port, "role").await?.as_deref() != Some("replica") {
        anyhow::ensure!(Instant::now() < deadline, "pgvane never saw the replica on port {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A column of the SHOW BACKENDS row of the node on `port`.
async fn backend_column(pgvane: &Pgvane, port: u16, column: &str) -> Result<Option<String>> {
    let (console, _connection) = connect_via(pgvane.port(), APP_USER, APP_PASSWORD, "pgvane").await?;
    for message in console.simple_query("SHOW BACKENDS").await? {
        if let SimpleQueryMessage::Row(row) = message {
            if row.get("port") == Some(port.to_string().as_str()) {
                return Ok(row.get(column).map(str::to_owned));
            }
        }
    }
    Ok(None)
}

/// The report's section on swaps and switchovers.
pub fn render(swaps: Option<&Swaps>, switchovers: &[Result<Switchover>]) -> String {
    let mut md = String::from("## While pgvane changes under its clients\n\n");
    if let Some(s) = swaps {
        let _ = writeln!(
            md,
            "**Plugin swaps.** {}: `pgbench -S -M simple -c 10 -T {}` left alone, then the same while the admin \
             console runs RELOAD after RELOAD with {} ms between them (each RELOAD compiles the plugin \
             chain again on a blocking thread, runs `init` and switches to it; the compile competes for \
             the same 2 cores as pgbench and PostgreSQL), interleaved.\n",
            s.target,
            s.seconds,
            SWAP_EVERY.as_millis()
        );
        let _ = writeln!(md, "| round | TPS steady | TPS swapping | swapping/steady | RELOADs | failed transactions |");
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---|");
        for (i, (steady, swapping, reloads)) in s.rounds.iter().enumerate() {
            let tps = |o: &Outcome| o.as_ref().map_or_else(|e| format!("fails: {e}"), |s| format!("{:.0}", s.tps));
            let ratio = match (steady, swapping) {
                (Ok(a), Ok(b)) if a.tps > 0.0 => format!("{:.2}", b.tps / a.tps),
                _ => "—".to_owned(),
            };
            let failed = if steady.is_ok() && swapping.is_ok() { "none" } else { "see TPS" };
            let _ =
                writeln!(md, "| {} | {} | {} | {ratio} | {reloads} | {failed} |", i + 1, tps(steady), tps(swapping));
        }
        let _ = writeln!(md);
    }
    if !switchovers.is_empty() {
        let _ = writeln!(
            md,
            "**Switchover.** A fresh primary and streaming replica behind pgvane (`hosts`, transaction \
             mode); {WRITERS} clients insert in autocommit (2 simple protocol, 2 extended), the primary \
             stops (fast shutdown) and the replica is promoted. The window is the longest time \
             without a successful insert; pgvane's own figure is SHOW BACKENDS' `switchover_ms` \
             (writer lost → new writer found).\n"
        );
        let _ = writeln!(md, "| run | statements | failed | write-unavailability window | pgvane switchover_ms |");
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|");
        for (i, run) in switchovers.iter().enumerate() {
            match run {
                Ok(s) => {
                    let failed = match s.failed.first() {
                        None => "0".to_owned(),
                        Some(first) => format!("{} (first: {first})", s.failed.len()),
                    };
                    let _ = writeln!(
                        md,
                        "| {} | {} | {failed} | {} ms | {} |",
                        i + 1,
                        s.statements,
                        s.window.as_millis(),
                        s.pgvane_ms
                    );
                }
                Err(e) => {
                    let _ = writeln!(md, "| {} | could not run: {e:#} | | | |", i + 1);
                }
            }
        }
        let _ = writeln!(md);
    }
    md
}
