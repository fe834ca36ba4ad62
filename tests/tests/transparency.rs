//! Transaction pooling that a client cannot tell from a direct connection (issue 18): shared
//! statements after schema changes, prepared SETs, failed Parses, session state that must not
//! leak to the next client of a server connection, and one FATAL when a server goes away.
//! The same cases with the drivers applications use are in `drivers.rs`.

use std::time::Duration;

use pgvane_tests::fixture::{Proxied, ProxyOptions, SecretKind, APP_DB, APP_USER};
use pgvane_tests::wire::Wire;

fn transaction_mode(pool_size: usize, extra: &str) -> ProxyOptions {
    ProxyOptions {
        settings: format!("pool_mode = \"transaction\"\ndefault_pool_size = {pool_size}\n{extra}"),
        ..ProxyOptions::default()
    }
}

/// Transaction mode with trust auth, for the raw-protocol client.
fn trusted(mode: &str, pool_size: usize) -> ProxyOptions {
    ProxyOptions {
        auth_type: "trust",
        secret: SecretKind::Plain,
        settings: format!("pool_mode = \"{mode}\"\ndefault_pool_size = {pool_size}\n"),
        ..ProxyOptions::default()
    }
}

fn columns(statement: &tokio_postgres::Statement) -> Vec<String> {
    statement.columns().iter().map(|c| c.name().to_owned()).collect()
}

/// DDL run through pgvane: a statement prepared afterwards, by a new client or the same one,
/// gets a fresh plan with the new column, on every server connection, although the text is
/// the one already prepared on them.
#[tokio::test]
async fn statements_prepared_after_ddl_see_the_new_schema() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(2, "")).await?;
    let a = p.client().await?;
    a.batch_execute("create table t(a int); insert into t values (1)").await?;
    // Both server connections get the statement.
    let b = p.client().await?;
    let (sa, sb) = (a.prepare("select * from t").await?, b.prepare("select * from t").await?);
    let (ra, rb) = tokio::join!(a.query(&sa, &[]), b.query(&sb, &[]));
    assert_eq!((ra?.len(), rb?.len()), (1, 1));
    b.batch_execute("alter table t add column c int default 7").await?;
    for client in [&a, &b, &p.client().await?] {
        let statement = client.prepare("select * from t").await?;
        assert_eq!(columns(&statement), ["a", "c"]);
        let row = client.query_one(&statement, &[]).await?;
        assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (1, 7));
    }
    Ok(())
}

/// DDL pgvane does not see (run directly on the server): the first client whose statement
/// meets the stale plan has its Parse and Describe run again on a fresh statement without
/// noticing, and later clients get fresh statements from the start.
#[tokio::test]
async fn a_statement_gone_stale_behind_pgvanes_back_is_prepared_again_transparently() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(1, "")).await?;
    let a = p.client().await?;
    a.batch_execute("create table t(a int); insert into t values (1)").await?;
    let old = a.prepare("select * from t").await?;
    a.query(&old, &[]).await?;
    let direct = p.direct_superuser().await?;
    direct.batch_execute("alter table public.t add column c int default 7").await?;
    for _ in 0..2 {
        let fresh = p.client().await?;
        let statement = fresh.prepare("select * from t").await?;
        assert_eq!(columns(&statement), ["a", "c"]);
        assert_eq!(fresh.query_one(&statement, &[]).await?.get::<_, i32>(1), 7);
    }
    // The statement prepared before, and described then, fails as on a direct connection:
    // its result type changed.
    let err = a.query(&old, &[]).await.expect_err("the old plan must not change its result type");
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err}");
    assert_eq!(columns(&a.prepare("select * from t").await?), ["a", "c"]);
    Ok(())
}

/// After DROP TYPE / CREATE TYPE, psycopg sends DEALLOCATE ALL; a statement naming the type
/// must then be prepared again, for that client and for every other.
#[tokio::test]
async fn dropped_and_recreated_types_leave_no_stale_statement() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(1, "")).await?;
    let a = p.client().await?;
    a.batch_execute("create type mood as enum ('sad', 'ok')").await?;
    let sql = "select 'ok'::mood::text, pg_typeof('ok'::mood)::text";
    let statement = a.prepare(sql).await?;
    a.query_one(&statement, &[]).await?;
    let direct = p.direct_superuser().await?;
    direct.batch_execute("drop type public.mood; create type public.mood as enum ('ok', 'happy')").await?;
    a.batch_execute("deallocate all").await?;
    for client in [&a, &p.client().await?] {
        let row = client.query_one(sql, &[]).await?;
        assert_eq!(row.get::<_, String>(0), "ok");
    }
    Ok(())
}

/// A SET prepared and executed separately (psycopg with prepare_threshold=0: Parse+Sync,
/// then Bind/Execute+Sync) is carried to the client's next server connection, and so is one
/// executed again from the same prepared statement.
#[tokio::test]
async fn prepared_sets_are_carried_once_they_ran() -> anyhow::Result<()> {
    let p = Proxied::start(trusted("transaction", 2)).await?;
    let mut w = Wire::connect(p.port(), APP_USER, APP_DB).await?;
    let (tags, _) = w.parse("set_app", "set application_name = 'prepared-set'").sync().roundtrip(1).await?;
    assert_eq!(tags, "1Z");
    let (tags, _) = w.bind("set_app", &[]).execute().sync().roundtrip(1).await?;
    assert_eq!(tags, "2CSZ", "the SET runs, and the server reports the new value");
    let other = p.client().await?;
    other.batch_execute("begin").await?; // holds one server connection: the next query may get the other
    for _ in 0..4 {
        let (_, msgs) = w.query("select current_setting('application_name')").roundtrip(1).await?;
        let row = msgs.iter().find(|m| m.tag == b'D').map(|m| m.row());
        assert_eq!(row, Some(vec![Some("prepared-set".to_owned())]));
    }
    other.batch_execute("commit").await?;
    // Changed elsewhere, then set again by the same prepared statement: carried again.
    w.query("set application_name = 'changed'").roundtrip(1).await?;
    w.bind("set_app", &[]).execute().sync().roundtrip(1).await?;
    let holder = p.client().await?;
    holder.batch_execute("begin").await?;
    let (_, msgs) = w.query("select current_setting('application_name')").roundtrip(1).await?;
    assert_eq!(msgs.iter().find(|m| m.tag == b'D').map(|m| m.row()), Some(vec![Some("prepared-set".to_owned())]));
    Ok(())
}

/// A named Parse the server refuses: the client gets the server's error with no
/// ParseComplete before it, and may use the name again, with a server free and with none.
#[tokio::test]
async fn a_failed_named_parse_leaves_nothing_behind() -> anyhow::Result<()> {
    let p = Proxied::start(trusted("transaction", 1)).await?;
    let mut w = Wire::connect(p.port(), APP_USER, APP_DB).await?;
    for holding in [false, true] {
        // With the only server connection held by another client, pgvane answers the Parse
        // itself and the statement meets the server at its Bind.
        let holder = p.client().await?;
        if holding {
            holder.batch_execute("begin").await?;
        }
        w.parse("s1", "select * from no_such_table").bind("s1", &[]).execute().sync();
        w.send().await?;
        if holding {
            tokio::time::sleep(Duration::from_millis(200)).await;
            holder.batch_execute("commit").await?;
        }
        let msgs: Vec<_> = w.read_until_ready().await?.into_iter().filter(|m| m.tag != b'N').collect();
        let error = msgs.iter().find(|m| m.tag == b'E').expect("an error");
        assert_eq!(error.sqlstate().as_deref(), Some("42P01"));
        if !holding {
            let tags: String = msgs.iter().map(|m| m.tag as char).collect();
            assert_eq!(tags, "EZ", "no ParseComplete before the server's error");
        }
        let (tags, msgs) = w.parse("s1", "select 41 + 1").bind("s1", &[]).execute().sync().roundtrip(1).await?;
        assert_eq!(tags, "12DCZ", "the name is free again: {msgs:?}");
        assert_eq!(msgs[2].row(), [Some("42".to_owned())]);
        w.close(b'S', "s1").sync().roundtrip(1).await?;
    }
    Ok(())
}

/// Each construct leaves state in the server session; on a pool of one, the next client of
/// the server connection must find it pristine.
#[tokio::test]
async fn session_state_made_in_many_ways_never_reaches_the_next_client() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(1, "")).await?;
    let direct = p.direct_superuser().await?;
    direct.batch_execute(&format!("alter user {APP_USER} superuser")).await?; // for LOAD
    let cases = [
        "do $$ begin perform set_config('search_path', 'leaked', false); end $$",
        "do $$ begin execute 'set search_path = leaked'; end $$",
        "select 1, set_config('search_path', 'leaked', false), 2",
        "select 1 as x into temp leaked",
        "select pg_advisory_lock(4242)",
        "load 'auto_explain'",
    ];
    for sql in cases {
        let first = p.client().await?;
        first.batch_execute(sql).await?;
        drop(first);
        let second = p.client().await?;
        let row = second
            .query_one(
                "select current_setting('search_path'), to_regclass('pg_temp.leaked') is null, \
                 (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()), \
                 (select count(*) from pg_settings where name like 'auto_explain.%')",
                &[],
            )
            .await?;
        let state = (row.get::<_, String>(0), row.get::<_, bool>(1), row.get::<_, i64>(2), row.get::<_, i64>(3));
        assert_eq!(state, ("\"$user\", public".to_owned(), true, 0, 0), "after {sql}");
    }
    // set_config(…, false) is carried for its own client, like SET.
    let c = p.client().await?;
    c.batch_execute("select set_config('application_name', 'via-set-config', false)").await?;
    let holder = p.client().await?;
    holder.batch_execute("select 1").await?; // the server connection went round another client
    let name: String = c.query_one("select current_setting('application_name')", &[]).await?.get(0);
    assert_eq!(name, "via-set-config");
    Ok(())
}

/// A client may not touch the statements pgvane shares between clients: DEALLOCATE of a
/// `pgvane_…` name is refused (26000) and other clients' statements keep working.
#[tokio::test]
async fn pgvanes_own_statement_names_are_out_of_clients_reach() -> anyhow::Result<()> {
    let p = Proxied::start(transaction_mode(1, "")).await?;
    let a = p.client().await?;
    let statement = a.prepare("select 1 + $1::int").await?;
    a.query_one(&statement, &[&1i32]).await?;
    let b = p.client().await?;
    let names: Vec<String> = b
        .query("select name from pg_prepared_statements where name like 'pgvane\\_%'", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!names.is_empty(), "pgvane prepared the statement under its own name");
    for name in &names {
        let err = b.batch_execute(&format!("deallocate {name}")).await.expect_err("refused");
        assert_eq!(err.code().map(|c| c.code()), Some("26000"), "{err}");
        let err = b.batch_execute(&format!("deallocate prepare {name}")).await.expect_err("refused");
        assert_eq!(err.code().map(|c| c.code()), Some("26000"), "{err}");
    }
    assert_eq!(a.query_one(&statement, &[&1i32]).await?.get::<_, i32>(0), 2);
    Ok(())
}

/// A server connection ended by the server (pg_terminate_backend): the client gets the
/// server's FATAL once, then the connection closes, in session and transaction modes.
#[tokio::test]
async fn a_terminated_server_connection_reaches_the_client_as_one_fatal() -> anyhow::Result<()> {
    for mode in ["session", "transaction"] {
        let p = Proxied::start(trusted(mode, 1)).await?;
        let mut w = Wire::connect(p.port(), APP_USER, APP_DB).await?;
        let (_, msgs) = w.query("begin; select pg_backend_pid()").roundtrip(1).await?;
        let pid = msgs.iter().find(|m| m.tag == b'D').and_then(|m| m.row()[0].clone()).expect("a pid");
        let direct = p.direct_superuser().await?;
        direct.batch_execute(&format!("select pg_terminate_backend({pid})")).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        w.query("select 1").send().await?;
        let mut errors = Vec::new();
        while let Ok(msg) = w.read().await {
            if msg.tag == b'E' {
                errors.push((msg.field(b'S'), msg.sqlstate()));
            }
        }
        assert_eq!(errors, [(Some("FATAL".to_owned()), Some("57P01".to_owned()))], "{mode} mode");
    }
    Ok(())
}
