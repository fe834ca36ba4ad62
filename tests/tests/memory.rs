//! Memory stays bounded whatever clients send or read: large client messages wait for the
//! shared budget (`client_message_budget_bytes`), statements too long for the policy chain
//! are dropped as they arrive, and long rows stream through. The figures are printed for the
//! record (run with `--nocapture`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use pgvane_tests::fixture::{plugin_path, Proxied, ProxyOptions, SecretKind, APP_DB, APP_USER};
use pgvane_tests::wire::Wire;
use pgvane_tests::Pgvane;

const MIB: u64 = 1024 * 1024;

/// A simple Query message `select length('xxx…')` carrying `n` bytes of `x`.
fn long_query(n: usize) -> Arc<Vec<u8>> {
    let sql_len = "select length('')".len() + n + 1;
    let mut message = Vec::with_capacity(sql_len + 5);
    message.push(b'Q');
    message.extend_from_slice(&((sql_len + 4) as u32).to_be_bytes());
    message.extend_from_slice(b"select length('");
    message.resize(message.len() + n, b'x');
    message.extend_from_slice(b"')\0");
    Arc::new(message)
}

async fn proxied(settings: &str, extra: String) -> Result<Proxied> {
    Proxied::start(ProxyOptions {
        auth_type: "trust",
        secret: SecretKind::Plain,
        settings: format!("pool_mode = \"transaction\"\ndefault_pool_size = 4\n{settings}"),
        extra,
        ..ProxyOptions::default()
    })
    .await
}

/// A guard plugin (tenant-guard) that refuses on error.
fn guard() -> Result<String> {
    Ok(format!(
        "[[plugins]]\nname = \"guard\"\npath = \"{}\"\non_error = \"reject\"\n\
         [plugins.config]\nrules = [{{ tables = [\"secrets\"], sqlstate = \"42501\", message = \"{{table}} is forbidden\" }}]\n",
        plugin_path("tenant_guard")?.display()
    ))
}

/// The peak RSS growth of `pgvane` while `work` runs.
async fn peak_growth<T>(pgvane: &Pgvane, work: impl std::future::Future<Output = Result<T>>) -> Result<(u64, T)> {
    let before = pgvane.memory()?.rss;
    pgvane.reset_peak_memory()?;
    let out = work.await?;
    Ok((pgvane.memory()?.peak.saturating_sub(before), out))
}

/// Sends `message` from `clients` connections at once; each runs `check` on what it got.
async fn send_from_many(
    port: u16,
    clients: usize,
    message: &Arc<Vec<u8>>,
    done: &Arc<AtomicUsize>,
    check: fn(&[pgvane_tests::wire::Msg]) -> Result<()>,
) -> Result<Vec<tokio::task::JoinHandle<Result<()>>>> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut wire = Wire::connect(port, APP_USER, APP_DB).await?;
        wire.set_read_timeout(Duration::from_secs(300));
        let (message, done) = (message.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            wire.write_raw(&message).await?;
            let answer = wire.read_until_ready().await?;
            check(&answer)?;
            // The session goes on.
            let (tags, _) = wire.query("select 1").roundtrip(1).await?;
            ensure!(tags == "TDCZ", "after the long message: {tags}");
            done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }));
    }
    Ok(tasks)
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<Result<()>>>) -> Result<()> {
    for task in tasks {
        task.await??;
    }
    Ok(())
}

#[tokio::test]
async fn twenty_clients_sending_256_mib_statements_stay_within_the_budget() -> Result<()> {
    const BUDGET: u64 = 600 * MIB;
    let p = proxied(&format!("client_message_budget_bytes = {BUDGET}"), String::new()).await?;
    let statement = long_query(256 << 20);
    let done = Arc::new(AtomicUsize::new(0));
    let (growth, finished_before_small) = peak_growth(&p.pgvane, async {
        let tasks = send_from_many(p.port(), 20, &statement, &done, |answer| {
            let row = answer.iter().find(|m| m.tag == b'D').map(|m| m.row());
            ensure!(row == Some(vec![Some((256u32 << 20).to_string())]), "answer: {:?}", answer.last());
            Ok(())
        })
        .await?;
        // A small client is served while the long statements wait for the budget.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let small = p.client().await?;
        let one: i32 = small.query_one("select 1", &[]).await?.get(0);
        ensure!(one == 1);
        let finished_before_small = done.load(Ordering::SeqCst);
        join_all(tasks).await?;
        Ok(finished_before_small)
    })
    .await?;
    println!(
        "20 x 256 MiB statements, budget {} MiB: peak RSS growth {} MiB; `select 1` answered with {finished_before_small} of 20 done",
        BUDGET / MIB,
        growth / MIB
    );
    ensure!(finished_before_small < 20, "the small client was not served meanwhile");
    ensure!(growth < BUDGET, "peak RSS grew by {} MiB, more than the budget", growth / MIB);
    ensure!(done.load(Ordering::SeqCst) == 20);

    // Bulk statements of a few MiB keep working with the defaults.
    let values = (0..100_000).map(|i| format!("({i}, '{}')", "v".repeat(40))).collect::<Vec<_>>().join(",");
    let client = p.client().await?;
    client.batch_execute("create table bulk (id int, v text)").await?;
    let insert = format!("insert into bulk values {values}");
    ensure!(insert.len() > 4 << 20);
    client.batch_execute(&insert).await?;
    let n: i64 = client.query_one("select count(*) from bulk", &[]).await?.get(0);
    ensure!(n == 100_000);
    Ok(())
}

#[tokio::test]
async fn statements_longer_than_the_policy_limit_are_dropped_as_they_arrive() -> Result<()> {
    let p = proxied("", guard()?).await?;
    let statement = long_query(256 << 20);
    let done = Arc::new(AtomicUsize::new(0));
    let (growth, ()) = peak_growth(&p.pgvane, async {
        let tasks = send_from_many(p.port(), 20, &statement, &done, |answer| {
            let error = answer.iter().find(|m| m.tag == b'E');
            ensure!(error.and_then(|e| e.sqlstate()).as_deref() == Some("54000"), "answer: {answer:?}");
            Ok(())
        })
        .await?;
        join_all(tasks).await
    })
    .await?;
    println!("20 x 256 MiB statements over policy_max_sql_bytes: peak RSS growth {} MiB", growth / MIB);
    ensure!(growth < 32 * MIB, "peak RSS grew by {} MiB", growth / MIB);

    Ok(())
}

#[tokio::test]
async fn bulk_statements_of_a_few_mib_pass_the_policy_chain_with_the_defaults() -> Result<()> {
    let p = proxied("", guard()?).await?;
    let client = p.client().await?;
    let values = (0..60_000).map(|i| format!("({i}, '{}')", "w".repeat(60))).collect::<Vec<_>>().join(",");
    client.batch_execute("create table bulk (id int, v text)").await?;
    let insert = format!("insert into bulk values {values}");
    ensure!(insert.len() > 4 << 20);
    client.batch_execute(&insert).await.map_err(|e| anyhow::anyhow!("{:?}", e.as_db_error()))?;
    let n: i64 = client.query_one("select count(*) from bulk", &[]).await?.get(0);
    ensure!(n == 60_000);
    Ok(())
}

#[tokio::test]
async fn a_500_mb_row_and_a_100_mb_notice_stream_through() -> Result<()> {
    let p = proxied("", String::new()).await?;
    let mut wire = Wire::connect(p.port(), APP_USER, APP_DB).await?;
    wire.set_read_timeout(Duration::from_secs(120));
    let (growth, answer) = peak_growth(&p.pgvane, async {
        let (tags, msgs) = wire.query("select repeat('x', 500000000)").roundtrip(1).await?;
        let row_len = msgs.iter().find(|m| m.tag == b'D').map(|m| m.body.len());
        Ok((tags, row_len))
    })
    .await?;
    println!("a 500 MB row: peak RSS growth {} MiB", growth / MIB);
    ensure!(answer.0 == "TDCZ", "tags: {}", answer.0);
    ensure!(answer.1 == Some(2 + 4 + 500_000_000), "row of {:?} bytes", answer.1);
    ensure!(growth < 32 * MIB, "peak RSS grew by {} MiB", growth / MIB);
    // A long notice streams through too.
    let (growth, notice_len) = peak_growth(&p.pgvane, async {
        wire.query("do $$ begin raise notice '%', repeat('n', 100000000); end $$").send().await?;
        let msgs = wire.read_until_ready().await?;
        let tags: String = msgs.iter().map(|m| m.tag as char).collect();
        ensure!(tags == "NCZ", "tags: {tags}");
        Ok(msgs[0].body.len())
    })
    .await?;
    println!("a 100 MB notice: peak RSS growth {} MiB", growth / MIB);
    ensure!(notice_len > 100_000_000, "notice of {notice_len} bytes");
    ensure!(growth < 32 * MIB, "peak RSS grew by {} MiB", growth / MIB);
    // The connection goes on.
    let (tags, _) = wire.query("select 1").roundtrip(1).await?;
    ensure!(tags == "TDCZ");
    Ok(())
}
