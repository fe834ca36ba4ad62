//! Per-client limits PgBouncer users expect: `idle_transaction_timeout_ms` and
//! `max_client_prepared_statements`.

use std::time::Duration;

use anyhow::{ensure, Result};
use pgvane_tests::fixture::{console_rows, Proxied, ProxyOptions, SecretKind, APP_DB, APP_USER};
use pgvane_tests::wire::Wire;

async fn proxied(settings: &str) -> Result<Proxied> {
    Proxied::start(ProxyOptions {
        auth_type: "trust",
        secret: SecretKind::Plain,
        settings: format!("pool_mode = \"transaction\"\ndefault_pool_size = 1\n{settings}"),
        ..ProxyOptions::default()
    })
    .await
}

#[tokio::test]
async fn a_client_idle_in_a_transaction_is_disconnected_and_its_work_rolled_back() -> Result<()> {
    let p = proxied("idle_transaction_timeout_ms = 500").await?;
    p.client().await?.batch_execute("create table t (v int)").await?;

    // Idle outside a transaction: left alone.
    let mut calm = Wire::connect(p.port(), APP_USER, APP_DB).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (tags, _) = calm.query("select 1").roundtrip(1).await?;
    ensure!(tags == "TDCZ", "an idle client outside a transaction: {tags}");
    drop(calm);

    // Idle inside one: FATAL 25P03, as PostgreSQL's idle_in_transaction_session_timeout.
    let mut idle = Wire::connect(p.port(), APP_USER, APP_DB).await?;
    let (tags, _) = idle.query("begin; insert into t values (1)").roundtrip(1).await?;
    ensure!(tags == "CCZ", "{tags}");
    let fatal = idle.read().await?;
    ensure!(fatal.tag == b'E' && fatal.sqlstate().as_deref() == Some("25P03"), "got {:?}", fatal.field(b'M'));
    ensure!(idle.read().await.is_err(), "the connection must be closed");

    // The insert was rolled back and the only server connection serves others.
    let client = p.client().await?;
    let n: i64 = client.query_one("select count(*) from t", &[]).await?.get(0);
    ensure!(n == 0, "the idle transaction's insert survived");
    Ok(())
}

#[tokio::test]
async fn prepared_statements_per_client_are_capped_with_53400() -> Result<()> {
    let p = proxied("max_client_prepared_statements = 3\nadmin_users = [\"app\"]").await?;
    let mut wire = Wire::connect(p.port(), APP_USER, APP_DB).await?;
    for name in ["s1", "s2", "s3"] {
        wire.parse(name, "select 1");
    }
    let (tags, _) = wire.sync().roundtrip(1).await?;
    ensure!(tags == "111Z", "{tags}");
    let (tags, msgs) = wire.parse("s4", "select 4").sync().roundtrip(1).await?;
    ensure!(tags == "EZ" && msgs[0].sqlstate().as_deref() == Some("53400"), "{tags} {:?}", msgs[0].field(b'M'));
    // The unnamed statement does not count, and closing one makes room.
    let (tags, _) = wire.parse("", "select 5").sync().roundtrip(1).await?;
    ensure!(tags == "1Z", "{tags}");
    let (tags, _) = wire.close(b'S', "s1").parse("s4", "select 4").sync().roundtrip(1).await?;
    ensure!(tags == "31Z", "{tags}");
    let (tags, msgs) = wire.bind("s4", &[]).execute().sync().roundtrip(1).await?;
    ensure!(tags == "2DCZ" && msgs[1].row() == vec![Some("4".to_owned())], "{tags}");

    // SHOW STATS_TOTALS counts the prepared-statement traffic as PgBouncer does: six Parses
    // from the client (the refused one too); three sent to the server (a Parse is checked on
    // a free server connection at once: s1, whose text s2 and s3 share, the unnamed one, and
    // s4); one Bind.
    let totals = console_rows(p.port(), "STATS_TOTALS").await?;
    let app = totals.iter().find(|r| r["database"] == APP_DB).ok_or_else(|| anyhow::anyhow!("{totals:?}"))?;
    let counts = ["client_parse_count", "server_parse_count", "bind_count"].map(|c| app[c].as_str());
    ensure!(counts == ["6", "3", "1"], "{app:?}");
    Ok(())
}
