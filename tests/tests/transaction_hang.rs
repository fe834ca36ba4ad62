//! No hang in transaction mode while connections around are closed and killed (issue 18):
//! psycopg's own `test_commit_concurrency` workload (a thread calling `commit()` in a loop while
//! the main thread runs `select %s` and commits, 1000 times, on the same connection) runs
//! through a small transaction pool while other clients on it connect, run statements and are
//! closed abruptly, have their server connection terminated, their socket dropped mid-query or
//! mid-transaction, their statements cancelled and their COPY abandoned, so that server
//! connections are discarded, reset and reused under it.
//!
//! Every wait is bounded: the script reports any worker that made no progress for 20 s (with
//! what it was doing, the server connections' states and every thread's stack) and exits; the
//! test bounds the whole run and, on a hang, shows the end of pgvane's log.
//!
//! What was found about the hang seen in psycopg's suite: it came back only right after
//! psycopg's `test_concurrent_close` (a few times in a hundred such test pairs, none at all in
//! another 118), in the next test's first exchange (its login, or a `ROLLBACK` after a cancel),
//! with pgvane's trace showing the server's answer received and the session then waiting on
//! the client. That test fails through
//! a pooler before it closes its connection and joins its worker thread (it looks `backend_pid`
//! up in `pg_stat_activity`, and a pooler's cancel key is not a server pid), so the fixture
//! closes the connection under the still-waiting worker, whose C `fetch` generator keeps the
//! freed libpq connection and polls its file descriptor, which the next test's connection
//! reuses. With the worker joined first, 60 pairs did not hang; the same unjoined close
//! straight against PostgreSQL did not hang in 74 tries either, so this is the likeliest cause,
//! not a proven one. This workload never closes a connection from another thread while one
//! waits on it, so what it checks is pgvane alone.

use std::time::Duration;

use anyhow::{Context, Result};
use pgvane_tests::drivers;
use pgvane_tests::fixture::{Proxied, ProxyOptions, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::tail;

/// How long the workload and the disruptions run.
const SECONDS: u64 = 30;
/// Concurrent `test_commit_concurrency` workloads.
const WORKLOADS: usize = 2;

/// The workload and the disruptions (a Python script run with psycopg).
const SCRIPT: &str = include_str!("../drivers/commit_under_disruption.py");

/// What the server connections of `app` are doing, for a failure message.
async fn server_activity(p: &Proxied) -> String {
    let rows = async {
        let client = p.direct_superuser().await?;
        let sql = "select pid, state, coalesce(query, ''), now() - state_change from pg_stat_activity \
                   where usename = 'app' order by pid";
        let rows = client.query(sql, &[]).await?;
        anyhow::Ok(
            rows.iter()
                .map(|r| {
                    let since: String = format!("{:?}", r.get::<_, Option<String>>(1));
                    format!("{} {since} {:?}", r.get::<_, i32>(0), r.get::<_, String>(2))
                })
                .collect::<Vec<_>>()
                .join("\n"),
        )
    };
    match tokio::time::timeout(Duration::from_secs(10), rows).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => format!("(pg_stat_activity: {e:#})"),
        Err(_) => "(pg_stat_activity did not answer)".into(),
    }
}

#[tokio::test]
async fn commits_do_not_hang_while_other_connections_are_closed_and_killed() -> Result<()> {
    let p = Proxied::start(ProxyOptions {
        settings: "pool_mode = \"transaction\"\ndefault_pool_size = 3".into(),
        ..ProxyOptions::default()
    })
    .await?;
    let args = [
        p.port().to_string(),
        p.cluster.port().to_string(),
        APP_USER.into(),
        APP_PASSWORD.into(),
        APP_DB.into(),
        SECONDS.to_string(),
        WORKLOADS.to_string(),
    ];
    let bound = Duration::from_secs(SECONDS + 60);
    let out = match tokio::time::timeout(bound, drivers::run_python(SCRIPT, args.into())).await {
        Ok(out) => out.context("running the workload")?,
        Err(_) => panic!(
            "the workload did not end within {bound:?}\nserver connections:\n{}\npgvane log:\n{}",
            server_activity(&p).await,
            tail(&p.pgvane.log(), 60)
        ),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        panic!(
            "the workload failed ({}): {stdout}\n{}\nserver connections:\n{}\npgvane log:\n{}",
            out.status,
            tail(&stderr, 60),
            server_activity(&p).await,
            tail(&p.pgvane.log(), 60)
        );
    }
    println!("{stdout}");
    // The pool still serves a new client.
    let client = tokio::time::timeout(Duration::from_secs(20), p.client()).await.context("connecting after")??;
    let one = tokio::time::timeout(Duration::from_secs(20), client.query_one("select 1", &[]))
        .await
        .context("select 1 after")??;
    assert_eq!(one.get::<_, i32>(0), 1);
    Ok(())
}
