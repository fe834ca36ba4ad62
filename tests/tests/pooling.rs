//! Session pooling: server connections are reused after a reset, clients wait for a full pool
//! (bounded), the client limit holds, and a client that dies mid-transaction leaves nothing dirty.

use std::time::{Duration, Instant};

use pgvane_tests::fixture::{login_error, sqlstate, Proxied, ProxyOptions, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::{client_command, connect_via};

fn pool_of_one(extra: &str) -> ProxyOptions {
    ProxyOptions { settings: format!("default_pool_size = 1\n{extra}"), ..ProxyOptions::default() }
}

#[tokio::test]
async fn server_connections_are_reused_and_reset() -> anyhow::Result<()> {
    let p = Proxied::start(pool_of_one("")).await?;
    let first = p.client().await?;
    let pid1: i32 = first.query_one("select pg_backend_pid()", &[]).await?.get(0);
    first.batch_execute("set work_mem = '7MB'; create temp table scratch(x int); prepare s as select 1").await?;
    drop(first);

    // Give the reset time to run, then the next client gets the same backend, clean.
    let second = p.client().await?;
    let pid2: i32 = second.query_one("select pg_backend_pid()", &[]).await?.get(0);
    assert_eq!(pid1, pid2, "pool of one: the server connection must be reused");
    let work_mem: String = second.query_one("show work_mem", &[]).await?.get(0);
    assert_eq!(work_mem, "4MB", "a SET must not leak to the next client");
    let temp: i64 = second.query_one("select count(*) from pg_class where relname = 'scratch'", &[]).await?.get(0);
    assert_eq!(temp, 0, "temp tables must be gone");
    let prepared: i64 =
        second.query_one("select count(*) from pg_prepared_statements where name = 's'", &[]).await?.get(0);
    assert_eq!(prepared, 0, "prepared statements must be gone");
    Ok(())
}

#[tokio::test]
async fn a_full_pool_makes_clients_wait_then_serves_them() -> anyhow::Result<()> {
    let p = Proxied::start(pool_of_one("query_wait_timeout_ms = 20000")).await?;
    let holder = p.client().await?;
    holder.simple_query("select 1").await?;
    let waiter = tokio::spawn({
        let port = p.port();
        async move {
            let started = Instant::now();
            let (c, _) = connect_via(port, APP_USER, APP_PASSWORD, APP_DB).await?;
            c.simple_query("select 1").await?;
            anyhow::Ok(started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!waiter.is_finished(), "the second client must wait while the only server connection is taken");
    drop(holder);
    let waited = tokio::time::timeout(Duration::from_secs(15), waiter).await???;
    assert!(waited >= Duration::from_millis(900), "served after {waited:?}, before the first client left");
    Ok(())
}

#[tokio::test]
async fn waiting_is_bounded_by_query_wait_timeout() -> anyhow::Result<()> {
    let p = Proxied::start(pool_of_one("query_wait_timeout_ms = 300")).await?;
    let holder = p.client().await?;
    let err = login_error(p.port(), APP_USER, APP_PASSWORD, APP_DB).await;
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:#}");
    assert!(format!("{err:#}").contains("query_wait_timeout_ms"), "{err:#}");
    // The holder is unaffected.
    holder.simple_query("select 1").await?;
    Ok(())
}

#[tokio::test]
async fn max_client_conn_is_enforced() -> anyhow::Result<()> {
    let p = Proxied::start(ProxyOptions { settings: "max_client_conn = 2".into(), ..ProxyOptions::default() }).await?;
    let a = p.client().await?;
    let b = p.client().await?;
    let err = login_error(p.port(), APP_USER, APP_PASSWORD, APP_DB).await;
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:#}");
    drop(a);
    // The slot frees once the first client is gone.
    let mut third = None;
    for _ in 0..50 {
        if let Ok(c) = p.client().await {
            third = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    third.expect("a slot must free up").simple_query("select 1").await?;
    b.simple_query("select 1").await?;
    Ok(())
}

#[tokio::test]
async fn client_killed_mid_transaction_leaves_no_dirty_server() -> anyhow::Result<()> {
    let p = Proxied::start(pool_of_one("")).await?;
    p.client().await?.batch_execute("create table k(id int primary key)").await?;

    // psql opens a transaction, inserts and locks, then is killed before committing.
    let mut psql = client_command("psql", p.port(), APP_USER, APP_PASSWORD)
        .args([
            "-d",
            APP_DB,
            "-X",
            "-c",
            "begin",
            "-c",
            "insert into k values (1)",
            "-c",
            "lock table k",
            "-c",
            "select pg_sleep(60)",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let direct = p.direct_superuser().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = direct
            .query_one("select count(*) from pg_stat_activity where query like 'select pg_sleep(60)%'", &[])
            .await?
            .get(0);
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "psql never started its transaction");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    psql.kill()?;
    psql.wait()?;

    // The next client (same single-slot pool) gets a clean connection: no open transaction, no lock, no row.
    let next = tokio::time::timeout(Duration::from_secs(10), p.client()).await??;
    let status: i64 = next.query_one("select count(*) from k", &[]).await?.get(0);
    assert_eq!(status, 0, "the killed client's insert must not be committed");
    next.batch_execute("insert into k values (1)").await?;
    let dirty: i64 = direct
        .query_one("select count(*) from pg_stat_activity where state like 'idle in transaction%'", &[])
        .await?
        .get(0);
    assert_eq!(dirty, 0, "no server session may be left inside the killed client's transaction");
    Ok(())
}

#[tokio::test]
async fn broken_server_connections_are_never_handed_out() -> anyhow::Result<()> {
    let p = Proxied::start(pool_of_one("")).await?;
    let first = p.client().await?;
    let pid1: i32 = first.query_one("select pg_backend_pid()", &[]).await?.get(0);
    drop(first);
    // Wait until the connection is back in the pool (idle after its reset), then kill its backend.
    let direct = p.direct_superuser().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state: Option<String> = direct
            .query_opt("select state from pg_stat_activity where pid = $1", &[&pid1])
            .await?
            .and_then(|r| r.get(0));
        if state.as_deref() == Some("idle") {
            break;
        }
        assert!(Instant::now() < deadline, "pooled connection never went idle");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    direct.query_one("select pg_terminate_backend($1)", &[&pid1]).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The next client gets a fresh, working server connection.
    let second = p.client().await?;
    let pid2: i32 = second.query_one("select pg_backend_pid()", &[]).await?.get(0);
    assert_ne!(pid1, pid2);
    Ok(())
}

#[tokio::test]
async fn a_server_dying_mid_session_fails_only_that_client() -> anyhow::Result<()> {
    let p = Proxied::default_setup().await?;
    let victim = p.client().await?;
    let bystander = p.client().await?;
    let pid: i32 = victim.query_one("select pg_backend_pid()", &[]).await?.get(0);
    p.direct_superuser().await?.query_one("select pg_terminate_backend($1)", &[&pid]).await?;
    let err = victim.simple_query("select 1").await.expect_err("the victim's server is gone");
    assert!(err.is_closed() || err.code().is_some(), "{err}");
    bystander.simple_query("select 1").await?;
    p.client().await?.simple_query("select 1").await?;
    Ok(())
}
