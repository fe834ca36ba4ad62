//! Transaction and statement pooling: applications cannot tell them from a direct connection.
//! Prepared statements follow clients across server connections, settings do not leak,
//! cancels hit the right query, pipelines with errors behave as PostgreSQL's.

use std::time::{Duration, Instant};

use pgvane_tests::fixture::{Proxied, ProxyOptions, SecretKind, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::wire::Wire;
use pgvane_tests::{client_command, describe_output, pgbench};
use tokio_postgres::NoTls;

fn transaction_mode(pool_size: usize, extra: &str) -> ProxyOptions {
    ProxyOptions {
        settings: format!("pool_mode = \"transaction\"\ndefault_pool_size = {pool_size}\n{extra}"),
        ..ProxyOptions::default()
    }
}

/// Transaction mode with trust auth, for the raw-protocol client.
fn trusted_transaction_mode(pool_size: usize, extra: &str) -> ProxyOptions {
    ProxyOptions { auth_type: "trust", secret: SecretKind::Plain, ..transaction_mode(pool_size, extra) }
}

/// Waits (up to 10 s) until a server session matching `condition` (SQL on pg_stat_activity)
/// is running.
async fn wait_for_activity(p: &Proxied, condition: &str) -> anyhow::Result<()> {
    let direct = p.direct_superuser().await?;
    let sql = format!("select count(*) from pg_stat_activity where {condition}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while direct.query_one(sql.as_str(), &[]).await?.get::<_, i64>(0) == 0 {
        anyhow::ensure!(Instant::now() < deadline, "no server session where {condition}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn backend_pid(client: &tokio_postgres::Client) -> anyhow::Result<i32> {
    Ok(client.query_one("select pg_backend_pid()", &[]).await?.get(0))
}

#[tokio::test]
async fn pgbench_in_every_protocol_mode_with_more_clients_than_servers() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(4, "")).await?;
    let out = pgbench(p.port(), APP_USER, APP_PASSWORD, APP_DB, &["-i", "-s", "1", "-q"])?;
    assert!(out.status.success(), "pgbench -i: {}", describe_output(&out));
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(p.port(), APP_USER, APP_PASSWORD, APP_DB, &["-c", "20", "-j", "2", "-T", "4", "-M", mode])?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "pgbench -M {mode}: {}", describe_output(&out));
        assert!(stdout.contains("number of failed transactions: 0 "), "-M {mode}:\n{stdout}");
        let processed: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|r| r.split('/').next()?.trim().parse().ok())
            .unwrap_or(0);
        assert!(processed > 100, "-M {mode}: only {processed} transactions\n{stdout}");
    }
    // 20 clients really shared 4 server connections.
    let direct = p.direct_superuser().await?;
    let servers: i64 =
        direct.query_one("select count(*) from pg_stat_activity where usename = 'app'", &[]).await?.get(0);
    assert!(servers <= 4, "{servers} server connections for a pool of 4");
    Ok(())
}

#[tokio::test]
async fn prepared_statements_follow_clients_across_server_connections() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(2, "")).await?;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(p.client().await?);
    }
    // Every client prepares statements (tokio-postgres names them s0, s1…: the same names in
    // every client, for different queries).
    let mut statements = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let sql = format!("select $1::int * {} + 0 * {i}", i + 1);
        statements.push(c.prepare(&sql).await?);
    }
    // Interleaved use from all clients, concurrently, over 2 server connections.
    let mut tasks = Vec::new();
    for (i, (c, s)) in clients.into_iter().zip(statements).enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut pids = std::collections::HashSet::new();
            for n in 0..50i32 {
                let row = c.query_one(&s, &[&n]).await?;
                assert_eq!(row.get::<_, i32>(0), n * (i as i32 + 1), "client {i}");
                pids.insert(backend_pid(&c).await?);
                tokio::task::yield_now().await;
            }
            anyhow::Ok(pids)
        }));
    }
    let mut all_pids = std::collections::HashSet::new();
    for t in tasks {
        all_pids.extend(t.await??);
    }
    assert!(all_pids.len() <= 2, "pool of 2, saw backends {all_pids:?}");
    assert_eq!(all_pids.len(), 2, "the statements must have been used on both server connections");
    Ok(())
}

#[tokio::test]
async fn statement_names_close_and_deallocate_behave_as_in_postgres() -> anyhow::Result<()> {
    let p = Proxied::start(trusted_transaction_mode(1, "")).await?;
    let mut w = Wire::connect(p.port(), APP_USER, APP_DB).await?;
    // Prepare "a", use it, prepare "a" again: 42P05, and the rest up to Sync is skipped.
    w.parse("a", "select 1").bind("a", &[]).execute().sync();
    let (tags, msgs) = w.roundtrip(1).await?;
    assert_eq!(tags, "12DCZ");
    assert_eq!(msgs[2].row(), [Some("1".to_owned())]);
    w.parse("a", "select 2").bind("a", &[]).execute().sync();
    let (tags, msgs) = w.roundtrip(1).await?;
    assert_eq!(tags, "EZ");
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("42P05"));
    // Close it; now the name is free for another query.
    w.close(b'S', "a").parse("a", "select 2").bind("a", &[]).execute().sync();
    let (tags, msgs) = w.roundtrip(1).await?;
    assert_eq!(tags, "312DCZ");
    assert_eq!(msgs[3].row(), [Some("2".to_owned())]);
    // DEALLOCATE through SQL, then the statement is gone.
    w.query("DEALLOCATE a");
    let (tags, _) = w.roundtrip(1).await?;
    assert_eq!(tags, "CZ");
    w.bind("a", &[]).execute().sync();
    let (tags, msgs) = w.roundtrip(1).await?;
    assert_eq!(tags, "EZ");
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("26000"));
    // Describe of a named statement works after a server switch too.
    w.parse("d", "select $1::int + 1 as x").sync();
    assert_eq!(w.roundtrip(1).await?.0, "1Z");
    w.describe(b'S', "d").sync();
    assert_eq!(w.roundtrip(1).await?.0, "tTZ");
    Ok(())
}

#[tokio::test]
async fn pipelined_extended_protocol_with_an_error_in_the_middle() -> anyhow::Result<()> {
    let p = Proxied::start(trusted_transaction_mode(1, "")).await?;
    let mut w = Wire::connect(p.port(), APP_USER, APP_DB).await?;
    w.query("create table pipe(id int primary key)");
    w.roundtrip(1).await?;
    // Two batches in one write: the error in the first skips its rest (and rolls it back);
    // the second batch runs. A Flush and a simple Query follow.
    w.parse("ins", "insert into pipe values ($1)")
        .bind("ins", &["1"])
        .execute()
        .bind("ins", &["1"]) // duplicate key
        .execute()
        .bind("ins", &["2"]) // skipped
        .execute()
        .sync()
        .bind("ins", &["3"])
        .execute()
        .flush_message()
        .sync()
        .query("select array_agg(id order by id)::text from pipe");
    let (tags, msgs) = w.roundtrip(3).await?;
    assert_eq!(tags, "12C2EZ2CZTDCZ");
    let error = msgs.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(error.sqlstate().as_deref(), Some("23505"));
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    assert_eq!(row.row(), [Some("{3}".to_owned())], "the failed batch is rolled back, the next one commits");
    // The named statement survived the error (it was created before it).
    w.bind("ins", &["4"]).execute().sync();
    assert_eq!(w.roundtrip(1).await?.0, "2CZ");
    // A simple Query right after extended messages (no Sync) commits them, as a Sync would,
    // and the server connection is free again afterwards: another client (pool of one) can
    // use it.
    w.bind("ins", &["5"]).execute().query("select count(*) from pipe");
    let (tags, msgs) = w.roundtrip(1).await?;
    assert_eq!(tags, "2CTDCZ");
    assert_eq!(msgs[3].row(), [Some("3".to_owned())]);
    let mut other = Wire::connect(p.port(), APP_USER, APP_DB).await?;
    other.query("select count(*) from pipe");
    let (tags, msgs) = other.roundtrip(1).await?;
    assert_eq!(tags, "TDCZ");
    assert_eq!(msgs[1].row(), [Some("3".to_owned())]);
    Ok(())
}

#[tokio::test]
async fn settings_do_not_leak_between_clients_sharing_a_server() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(1, "")).await?;
    let a = p.client().await?;
    let b = p.client().await?;
    a.batch_execute("set work_mem = '7MB'; set application_name = 'client-a'").await?;
    let (pid_a, pid_b) = (backend_pid(&a).await?, backend_pid(&b).await?);
    assert_eq!(pid_a, pid_b, "pool of one: both use the same server connection");
    let b_mem: String = b.query_one("show work_mem", &[]).await?.get(0);
    assert_eq!(b_mem, "4MB", "client A's SET leaked to client B");
    let b_app: String = b.query_one("show application_name", &[]).await?.get(0);
    assert_ne!(b_app, "client-a");
    // A keeps its settings in its next transactions.
    let a_mem: String = a.query_one("show work_mem", &[]).await?.get(0);
    assert_eq!(a_mem, "7MB");
    // A SET inside a rolled-back transaction is rolled back, as in PostgreSQL.
    a.batch_execute("begin; set work_mem = '9MB'; rollback").await?;
    let a_mem: String = a.query_one("show work_mem", &[]).await?.get(0);
    assert_eq!(a_mem, "7MB");
    // RESET and RESET ALL.
    a.batch_execute("reset work_mem").await?;
    let a_mem: String = a.query_one("show work_mem", &[]).await?.get(0);
    assert_eq!(a_mem, "4MB");
    a.batch_execute("set work_mem = '5MB'").await?;
    b.batch_execute("set search_path = other, public").await?;
    a.batch_execute("reset all").await?;
    let row = a.query_one("select current_setting('work_mem'), current_setting('search_path')", &[]).await?;
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("4MB".into(), "\"$user\", public".into()));
    let b_path: String = b.query_one("show search_path", &[]).await?.get(0);
    assert_eq!(b_path, "other, public");
    Ok(())
}

#[tokio::test]
async fn startup_parameters_are_per_client() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(1, "")).await?;
    let mut config = pgvane_tests::client_config(p.port(), APP_USER, APP_PASSWORD, APP_DB);
    config.application_name("first").options("-c statement_timeout=4321");
    let (first, conn) = config.connect(NoTls).await?;
    tokio::spawn(conn);
    let second = p.client().await?;
    for _ in 0..3 {
        let row = first
            .query_one("select current_setting('application_name'), current_setting('statement_timeout')", &[])
            .await?;
        assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("first".into(), "4321ms".into()));
        let row = second
            .query_one("select current_setting('application_name'), current_setting('statement_timeout')", &[])
            .await?;
        assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("".into(), "0".into()));
    }
    Ok(())
}

#[tokio::test]
async fn cancel_hits_the_right_query_and_stale_cancels_are_harmless() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(1, "query_wait_timeout_ms = 30000")).await?;
    let a = p.client().await?;
    let b = p.client().await?;
    a.simple_query("select 1").await?; // a has used the (only) server connection, and left it
    let stale = a.cancel_token();
    // b runs a query on that same server connection; a's cancel must not touch it.
    let b_query = tokio::spawn(async move { (b.simple_query("select pg_sleep(1), 'b'").await, b) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stale.cancel_query(NoTls).await?;
    let (result, b) = b_query.await?;
    assert!(result.is_ok(), "a stale cancel hit another client's query: {result:?}");

    // A cancel for a running query stops it.
    let token = b.cancel_token();
    let slow = tokio::spawn(async move { b.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await?;
    let err = tokio::time::timeout(Duration::from_secs(10), slow).await??.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"));
    a.simple_query("select 1").await?;
    Ok(())
}

/// A cancel sent while the client waits for a server connection is held, as a direct
/// connection would see it: the statement fails with 57014 while it executes, not before it
/// reaches a server (a driver such as postgres.js retries errors that come before its Bind
/// without telling the caller).
#[tokio::test]
async fn cancel_while_waiting_for_a_server_is_delivered_once_the_statement_runs() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(1, "query_wait_timeout_ms = 30000")).await?;
    let holder = p.client().await?;
    holder.batch_execute("begin; select 1").await?; // holds the only server connection
    let waiter = p.client().await?;
    let token = waiter.cancel_token();
    let wait = tokio::spawn(async move { (waiter.simple_query("select pg_sleep(30), 'waited'").await, waiter) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!wait.is_finished(), "the waiter must wait for the held connection");
    token.cancel_query(NoTls).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!wait.is_finished(), "the cancel is held until the statement runs");
    holder.batch_execute("commit").await?;
    let (result, waiter) = tokio::time::timeout(Duration::from_secs(20), wait).await??;
    let err = result.expect_err("the statement must be cancelled while it runs");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    // The cancel was spent: the waiter's session goes on, and its next statement runs.
    let rows = waiter.simple_query("select pg_sleep(0.2), 'after'").await?;
    assert!(rows.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
    Ok(())
}

#[tokio::test]
async fn client_killed_mid_transaction_leaves_the_server_clean() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(1, "")).await?;
    let setup = p.client().await?;
    setup.batch_execute("create table k(id int primary key)").await?;
    let mut psql = client_command("psql", p.port(), APP_USER, APP_PASSWORD)
        .args(["-d", APP_DB, "-X", "-c", "begin", "-c", "insert into k values (1)", "-c", "select pg_sleep(60)"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    wait_for_activity(&p, "query like 'select pg_sleep(60)%'").await?;
    psql.kill()?;
    psql.wait()?;
    let n: i64 =
        tokio::time::timeout(Duration::from_secs(10), setup.query_one("select count(*) from k", &[])).await??.get(0);
    assert_eq!(n, 0);
    setup.batch_execute("insert into k values (1)").await?;
    Ok(())
}

#[tokio::test]
async fn statement_mode_refuses_transactions() -> anyhow::Result<()> {
    let p = Proxied::start(ProxyOptions {
        settings: "pool_mode = \"statement\"\ndefault_pool_size = 1".into(),
        ..ProxyOptions::default()
    })
    .await?;
    let a = p.client().await?;
    let b = p.client().await?;
    a.simple_query("select 1").await?;
    b.simple_query("select 2").await?;
    let err = a.batch_execute("begin").await.expect_err("a transaction block must be refused");
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err}");
    // The other client is not affected, and no server was left inside a transaction.
    b.simple_query("select 1").await?;
    let direct = p.direct_superuser().await?;
    let open: i64 = direct
        .query_one("select count(*) from pg_stat_activity where state like 'idle in transaction%'", &[])
        .await?
        .get(0);
    assert_eq!(open, 0);
    Ok(())
}

#[tokio::test]
async fn evicted_statements_are_prepared_again() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(1, "max_prepared_statements = 2")).await?;
    let c = p.client().await?;
    let mut statements = Vec::new();
    for i in 0..5 {
        statements.push(c.prepare(&format!("select {i} + $1::int")).await?);
    }
    for round in 0..3 {
        for (i, s) in statements.iter().enumerate() {
            let v: i32 = c.query_one(s, &[&round]).await?.get(0);
            assert_eq!(v, i as i32 + round);
        }
    }
    let direct = p.direct_superuser().await?;
    let n: i64 = direct.query_one("select count(*) from pg_stat_activity where usename = 'app'", &[]).await?.get(0);
    assert_eq!(n, 1);
    Ok(())
}

#[tokio::test]
async fn bad_startup_settings_fail_the_session_once_a_server_checks_them() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(1, "")).await?;
    // A cold pool checks the settings at login, as PostgreSQL does.
    let mut config = pgvane_tests::client_config(p.port(), APP_USER, APP_PASSWORD, APP_DB);
    config.options("-c no_such_setting=1");
    let err = config.connect(NoTls).await.err().expect("login must fail on a cold pool");
    assert_eq!(err.code().map(|c| c.code()), Some("42704"), "{err}");
    // A warm pool logs clients in without a server connection; the first statement fails
    // with the server's error, FATAL, and nothing else is affected.
    let holder = p.client().await?;
    holder.batch_execute("begin").await?;
    let (client, conn) = config.connect(NoTls).await?;
    let conn = tokio::spawn(conn);
    holder.batch_execute("commit").await?;
    let err = client.simple_query("select 1").await.expect_err("the bad setting must fail the session");
    let db = err.as_db_error().map(|e| (e.code().code().to_owned(), e.severity().to_owned()));
    assert_eq!(db, Some(("42704".to_owned(), "FATAL".to_owned())), "{err}");
    assert!(conn.await?.is_err() || client.is_closed());
    holder.simple_query("select 1").await?;
    Ok(())
}

/// Session state a client keeps across transactions (a temporary table, a session advisory
/// lock) keeps it on its server connection: on a pool of one another client waits until the
/// state is gone, and then gets the connection reset. State that cannot follow the client
/// (LISTEN, a set_config with a computed name) never reaches the other client either.
#[tokio::test]
async fn session_state_pins_the_client_and_never_reaches_another() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(1, "query_wait_timeout_ms = 30000\nadmin_users = [\"app\"]")).await?;
    let a = p.client().await?;
    let b = p.client().await?;
    a.batch_execute("create temp table mine(x int); listen chan; select pg_advisory_lock(42)").await?;
    a.batch_execute("select set_config('statement_' || 'timeout', '777', false)").await?;
    let probe = tokio::spawn(async move {
        let row = b
            .query_one(
                "select (select count(*) from pg_class where relname = 'mine'), \
                 (select count(*) from pg_listening_channels()), \
                 (select count(*) from pg_locks where locktype = 'advisory' and granted), \
                 current_setting('statement_timeout')",
                &[],
            )
            .await?;
        anyhow::Ok(((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2), row.get::<_, String>(3)), b))
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!probe.is_finished(), "A keeps the only server connection while it holds session state");
    let clients = pgvane_tests::fixture::console_rows(p.port(), "CLIENTS").await?;
    let pinned: Vec<&str> = clients.iter().filter_map(|c| c.get("pinned").map(String::as_str)).collect();
    assert!(pinned.contains(&"advisory lock, temporary table"), "SHOW CLIENTS: {clients:?}");
    // A's temporary table lives across its transactions.
    a.batch_execute("insert into mine values (1)").await?;
    a.batch_execute("begin; insert into mine values (2); commit").await?;
    let n: i64 = a.query_one("select count(*) from mine", &[]).await?.get(0);
    assert_eq!(n, 2);
    assert!(!probe.is_finished(), "still pinned");
    a.batch_execute("drop table mine").await?;
    a.batch_execute("select pg_advisory_unlock_all()").await?;
    let (state, b) = match tokio::time::timeout(Duration::from_secs(20), probe).await {
        Ok(done) => done??,
        Err(_) => {
            anyhow::bail!("B never got the connection; pgvane's log:\n{}", pgvane_tests::tail(&p.pgvane.log(), 40))
        }
    };
    assert_eq!(state, (0, 0, 0, "0".to_owned()), "B sees none of A's session state");
    assert_eq!(backend_pid(&a).await?, backend_pid(&b).await?, "pool of one");
    // Prepared statements and settings still follow A after the reset.
    let s = a.prepare("select $1::int + 1").await?;
    a.batch_execute("set work_mem = '6MB'").await?;
    let v: i32 = a.query_one(&s, &[&1]).await?.get(0);
    assert_eq!(v, 2);
    let mem: String = a.query_one("show work_mem", &[]).await?.get(0);
    assert_eq!(mem, "6MB");
    Ok(())
}

#[tokio::test]
async fn client_killed_mid_copy_leaves_the_server_clean() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(1, "")).await?;
    let setup = p.client().await?;
    setup.batch_execute("create table c(x int)").await?;
    // psql copies from its stdin, which we keep open with some rows sent, then it is killed.
    let mut psql = client_command("psql", p.port(), APP_USER, APP_PASSWORD)
        .args(["-d", APP_DB, "-X", "-c", "\\copy c from stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    {
        use std::io::Write;
        let stdin = psql.stdin.as_mut().expect("piped stdin");
        for i in 0..1000 {
            writeln!(stdin, "{i}")?;
        }
        stdin.flush()?;
    }
    wait_for_activity(&p, "query like 'COPY%' and usename = 'app'").await?;
    psql.kill()?;
    psql.wait()?;
    let n: i64 =
        tokio::time::timeout(Duration::from_secs(10), setup.query_one("select count(*) from c", &[])).await??.get(0);
    assert_eq!(n, 0, "a COPY cut off by the client's death must not be committed");
    setup.batch_execute("insert into c values (1)").await?;
    Ok(())
}

/// A session advisory lock held across transactions by one client and contended by another
/// (on a pool of two, so both can run): released by unlock, and by the holder leaving. A WITH
/// HOLD cursor is fetched across transactions. A temporary table lives across its client's
/// transactions and is invisible to the other client.
#[tokio::test]
async fn advisory_locks_hold_cursors_and_temp_tables_live_across_transactions() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(2, "query_wait_timeout_ms = 30000")).await?;
    let holder = p.client().await?;
    let other = p.client().await?;
    let try_lock = "select pg_try_advisory_lock(7)";
    assert!(holder.query_one(try_lock, &[]).await?.get::<_, bool>(0));
    for _ in 0..3 {
        holder.batch_execute("begin; select 1; commit").await?;
        assert!(
            !other.query_one("select pg_try_advisory_lock(7)", &[]).await?.get::<_, bool>(0),
            "held across transactions"
        );
    }
    holder.batch_execute("select pg_advisory_unlock(7)").await?;
    assert!(other.query_one(try_lock, &[]).await?.get::<_, bool>(0), "released by unlock");
    other.batch_execute("select pg_advisory_unlock(7)").await?;
    // Released when the holder leaves.
    assert!(holder.query_one(try_lock, &[]).await?.get::<_, bool>(0));
    drop(holder);
    let mut taken = false;
    for _ in 0..50 {
        taken = other.query_one(try_lock, &[]).await?.get::<_, bool>(0);
        if taken {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken, "released when its holder left");
    other.batch_execute("select pg_advisory_unlock_all()").await?;

    let c = p.client().await?;
    c.batch_execute("begin; declare held cursor with hold for select generate_series(1, 5); commit").await?;
    let mut fetched = Vec::new();
    for _ in 0..3 {
        c.batch_execute("begin; select 1; commit").await?;
        let rows = c.query("fetch 2 from held", &[]).await?;
        fetched.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    assert_eq!(fetched, [1, 2, 3, 4, 5]);
    c.batch_execute("close held").await?;

    c.batch_execute("create temp table scratch(x int); insert into scratch values (1)").await?;
    c.batch_execute("begin; insert into scratch values (2); commit").await?;
    let n: i64 = c.query_one("select count(*) from scratch", &[]).await?.get(0);
    assert_eq!(n, 2, "the temporary table lives across transactions");
    let visible: bool = other.query_one("select to_regclass('pg_temp.scratch') is not null", &[]).await?.get(0);
    assert!(!visible, "another client's temporary table is invisible");
    Ok(())
}
