//! Queries through pgvane behave as they do against PostgreSQL directly: simple and extended
//! protocol, transactions with errors, COPY both ways, large results, NULLs and binary
//! parameters, startup parameters, cancel.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use pgvane_tests::fixture::{Proxied, ProxyOptions, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::{client_config, psql};
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, SimpleQueryMessage};

#[tokio::test]
async fn simple_and_extended_protocol() -> anyhow::Result<()> {
    let p = Proxied::default_setup().await?;
    let client = p.client().await?;
    // Simple protocol, several statements in one message.
    let messages = client
        .simple_query(
            "create table t(id int, v text); insert into t values (1, 'a'), (2, NULL); select id, v from t order by id",
        )
        .await?;
    let rows: Vec<(Option<String>, Option<String>)> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((r.get(0).map(str::to_owned), r.get(1).map(str::to_owned))),
            _ => None,
        })
        .collect();
    assert_eq!(rows, vec![(Some("1".into()), Some("a".into())), (Some("2".into()), None)]);

    // Extended protocol with typed binary parameters, NULLs included.
    let stmt = client
        .prepare_typed(
            "select $1::int4 + 1, $2::text, $3::bytea, $4::float8",
            &[Type::INT4, Type::TEXT, Type::BYTEA, Type::FLOAT8],
        )
        .await?;
    let bytes: Vec<u8> = (0..=255).collect();
    let row = client.query_one(&stmt, &[&41i32, &None::<String>, &bytes, &1.5f64]).await?;
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(row.get::<_, Vec<u8>>(2), bytes);
    assert_eq!(row.get::<_, f64>(3), 1.5);
    // The statement is reusable.
    let row = client.query_one(&stmt, &[&1i32, &Some("x"), &vec![0u8], &0.0f64]).await?;
    assert_eq!((row.get::<_, i32>(0), row.get::<_, String>(1)), (2, "x".to_owned()));
    Ok(())
}

#[tokio::test]
async fn transactions_with_errors() -> anyhow::Result<()> {
    let p = Proxied::default_setup().await?;
    let mut client = p.client().await?;
    client.batch_execute("create table acct(id int primary key, n int)").await?;

    // An error inside a transaction aborts it; rollback recovers the session.
    client.batch_execute("begin; insert into acct values (1, 1)").await?;
    let err = client.batch_execute("insert into acct values (1, 2)").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("23505"));
    let err = client.simple_query("select 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("25P02"));
    client.batch_execute("rollback").await?;
    let n: i64 = client.query_one("select count(*) from acct", &[]).await?.get(0);
    assert_eq!(n, 0);

    // A committed transaction sticks; an error in the extended protocol leaves the session usable.
    let tx = client.transaction().await?;
    tx.execute("insert into acct values ($1, $2)", &[&2i32, &20i32]).await?;
    tx.commit().await?;
    let err = client.query("select 1/0", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22012"));
    let n: i32 = client.query_one("select n from acct where id = $1", &[&2i32]).await?.get(0);
    assert_eq!(n, 20);
    Ok(())
}

#[tokio::test]
async fn copy_in_and_out() -> anyhow::Result<()> {
    let p = Proxied::default_setup().await?;
    let client = p.client().await?;
    client.batch_execute("create table c(id int, v text)").await?;

    let sink = client.copy_in("copy c from stdin").await?;
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..20_000 {
        data.push_str(&format!("{i}\tvalue {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await?;
    let copied = sink.finish().await?;
    assert_eq!(copied, 20_000);

    let stream = client.copy_out("copy (select * from c order by id) to stdout").await?;
    futures_util::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    assert_eq!(String::from_utf8(out)?, data);

    // A COPY that fails half-way (bad row) is rolled back and leaves the session usable.
    let sink = client.copy_in("copy c from stdin").await?;
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\tok\nnot-a-number\tbad\n")).await?;
    let err = sink.finish().await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22P02"), "{err}");
    let n: i64 = client.query_one("select count(*) from c", &[]).await?.get(0);
    assert_eq!(n, 20_000);

    // psql's \copy through pgvane.
    let out = psql(p.port(), APP_USER, APP_PASSWORD, APP_DB, &["-c", "\\copy c to stdout"])?;
    assert!(out.status.success(), "{}", pgvane_tests::describe_output(&out));
    assert_eq!(String::from_utf8(out.stdout)?.lines().count(), 20_000);
    Ok(())
}

#[tokio::test]
async fn large_results_and_large_values() -> anyhow::Result<()> {
    let p = Proxied::default_setup().await?;
    let client = p.client().await?;
    let rows = client.query("select g, repeat('x', 100) from generate_series(1, 200000) g", &[]).await?;
    assert_eq!(rows.len(), 200_000);
    assert_eq!(rows[199_999].get::<_, i32>(0), 200_000);
    // One value of 20 MB each way (frames much larger than any buffer).
    let big = "y".repeat(20 << 20);
    let row = client.query_one("select $1::text || 'z', length($1::text)", &[&big]).await?;
    assert_eq!(row.get::<_, String>(0).len(), (20 << 20) + 1);
    assert_eq!(row.get::<_, i32>(1), 20 << 20);
    Ok(())
}

/// The settings a client with startup parameters sees, connecting to `port`.
async fn settings_seen(port: u16) -> anyhow::Result<Vec<String>> {
    let mut config = client_config(port, APP_USER, APP_PASSWORD, APP_DB);
    config
        .application_name("params-test")
        .options("-c search_path=custom,public -c statement_timeout=1234 --work-mem=5MB");
    let (client, conn) = config.connect(NoTls).await?;
    tokio::spawn(conn);
    let row = client
        .query_one(
            "select current_setting('application_name'), current_setting('search_path'), \
             current_setting('statement_timeout'), current_setting('work_mem')",
            &[],
        )
        .await?;
    Ok((0..4).map(|i| row.get::<_, String>(i)).collect())
}

#[tokio::test]
async fn startup_parameters_reach_the_server() -> anyhow::Result<()> {
    let p = Proxied::default_setup().await?;
    let direct = settings_seen(p.cluster.port()).await?;
    assert_eq!(direct, ["params-test", "custom,public", "1234ms", "5MB"]);
    let proxied = settings_seen(p.port()).await?;
    assert_eq!(proxied, direct, "through pgvane the session must be set up as when connecting directly");

    // The server sees it too (pg_stat_activity), not just the session.
    let (_keep, _conn) = {
        let mut config = client_config(p.port(), APP_USER, APP_PASSWORD, APP_DB);
        config.application_name("params-test");
        config.connect(NoTls).await?
    };
    let direct = p.direct_superuser().await?;
    let n: i64 = direct
        .query_one("select count(*) from pg_stat_activity where application_name = 'params-test'", &[])
        .await?
        .get(0);
    assert_eq!(n, 1);

    // DateStyle / TimeZone from psql's environment reach the server, and ParameterStatus the client.
    let out = pgvane_tests::client_command("psql", p.port(), APP_USER, APP_PASSWORD)
        .env("PGDATESTYLE", "SQL, DMY")
        .env("PGTZ", "Asia/Tokyo")
        .args([
            "-d",
            APP_DB,
            "-X",
            "-At",
            "-c",
            "show datestyle",
            "-c",
            "show timezone",
            "-c",
            "select '2024-02-01'::date",
        ])
        .output()?;
    assert!(out.status.success(), "{}", pgvane_tests::describe_output(&out));
    assert_eq!(String::from_utf8(out.stdout)?, "SQL, DMY\nAsia/Tokyo\n01/02/2024\n");

    // A setting the server refuses ends the login with the server's error, as PostgreSQL does.
    let mut config = client_config(p.port(), APP_USER, APP_PASSWORD, APP_DB);
    config.options("-c no_such_setting=1");
    let err = config.connect(NoTls).await.err().expect("login must fail");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("42704"), "{err}");
    // ...and pgvane keeps serving.
    p.client().await?.simple_query("select 1").await?;
    Ok(())
}

#[tokio::test]
async fn cancel_reaches_the_running_query_only() -> anyhow::Result<()> {
    let p = Proxied::start(ProxyOptions::default()).await?;
    let client = p.client().await?;
    let bystander = p.client().await?;
    let token = client.cancel_token();
    let slow = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bystander_query = tokio::spawn(async move {
        let r = bystander.simple_query("select pg_sleep(1.5), 'done'").await;
        (bystander, r)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    token.cancel_query(NoTls).await?;
    let err = tokio::time::timeout(Duration::from_secs(10), slow).await??.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    let (bystander, r) = bystander_query.await?;
    assert!(r.is_ok(), "the other client's query must not be cancelled: {r:?}");

    // A cancel while idle does nothing; the connection goes on.
    bystander.cancel_token().cancel_query(NoTls).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    bystander.simple_query("select 1").await?;
    Ok(())
}
