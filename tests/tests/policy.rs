//! Policy plugins through pgvane, against real PostgreSQL: rewrites the server really runs,
//! rejects with the plugin's SQLSTATE, chains, and hostile plugins that cannot hurt the proxy.

use std::time::{Duration, Instant};

use pgvane_tests::fixture::{plugin_path, Proxied, ProxyOptions, APP_USER};

/// A `[[plugins]]` entry for example plugin `file` with extra keys and a config table.
fn plugin(name: &str, file: &str, keys: &str, config: &str) -> anyhow::Result<String> {
    let path = plugin_path(file)?;
    Ok(format!("[[plugins]]\nname = \"{name}\"\npath = \"{}\"\n{keys}\n[plugins.config]\n{config}\n", path.display()))
}

fn with_plugins(entries: &[String], mode: &str) -> ProxyOptions {
    ProxyOptions {
        settings: format!("pool_mode = \"{mode}\"\ndefault_pool_size = 2\nadmin_users = [\"{APP_USER}\"]"),
        extra: entries.join("\n"),
        ..ProxyOptions::default()
    }
}

const STAR_SCHEMA: &str = "
create table store(storeid int primary key, storename text);
create table sales(storeid int, total numeric);
create table store_sales(storename text, total numeric);
insert into store values (1, 'north'), (2, 'south');
insert into sales values (1, 10), (1, 5), (2, 7);
-- The pre-aggregated table holds different numbers, so the test can see which one ran.
insert into store_sales values ('north', 1500), ('south', 700);
";

const STAR_QUERY: &str =
    "SELECT storename, SUM(total) FROM sales JOIN store USING (storeid) GROUP BY storename ORDER BY storename";

fn rewrite_rules() -> String {
    r#"rules = [{ queryRegex = '^\s*SELECT storename, SUM\(total\) FROM sales JOIN store USING \(storeid\) GROUP BY storename ORDER BY storename\s*;?\s*$', replace = "SELECT storename, SUM(total) FROM store_sales GROUP BY storename ORDER BY storename" }]"#.to_owned()
}

#[tokio::test]
async fn the_seeds_star_schema_rewrite_runs_on_the_server() -> anyhow::Result<()> {
    for mode in ["session", "transaction"] {
        let p =
            Proxied::start(with_plugins(&[plugin("rewrite", "query_rewrite", "", &rewrite_rules())?], mode)).await?;
        // The server logs every statement it runs: the log shows what it really got.
        let direct = p.direct_superuser().await?;
        direct.batch_execute("alter system set log_statement = 'all'").await?;
        direct.batch_execute("select pg_reload_conf()").await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let client = p.client().await?;
        client.batch_execute(STAR_SCHEMA).await?;
        // Simple protocol and extended (prepared) both get the rewrite.
        let simple = client.simple_query(STAR_QUERY).await?;
        let totals: Vec<String> = simple
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(1).map(str::to_owned),
                _ => None,
            })
            .collect();
        assert_eq!(totals, ["1500", "700"], "{mode}: the rewritten query must have run");
        let rows = client.query(STAR_QUERY, &[]).await?;
        assert_eq!(rows.len(), 2);
        let log = p.cluster.log();
        assert!(log.contains("FROM store_sales GROUP BY storename"), "{mode}: the server never ran the rewrite");
        assert!(!log.contains("FROM sales JOIN store"), "{mode}: the original query reached the server");
        // Other queries pass unchanged.
        let n: i64 = client.query_one("select count(*) from sales", &[]).await?.get(0);
        assert_eq!(n, 3, "{mode}");
    }
    Ok(())
}

#[tokio::test]
async fn a_reject_reaches_the_client_with_its_sqlstate() -> anyhow::Result<()> {
    let guard = plugin(
        "guard",
        "tenant_guard",
        "",
        r#"rules = [{ usernameRegex = "^app$", tables = ["secrets"], sqlstate = "42501", message = "{user} may not read {table}" }]"#,
    )?;
    let p = Proxied::start(with_plugins(&[guard], "transaction")).await?;
    // Created directly: through pgvane the guard refuses anything naming `secrets`.
    let direct = p.cluster.connect("app", pgvane_tests::fixture::APP_PASSWORD, "app").await?;
    direct.batch_execute("create table secrets(x int); create table open(x int)").await?;
    let client = p.client().await?;
    let err = client.simple_query("select * from secrets").await.expect_err("must be rejected");
    let db = err.as_db_error().expect("a server-style error");
    assert_eq!((db.code().code(), db.severity()), ("42501", "ERROR"));
    assert!(db.message().contains("app") && db.message().contains("secrets"), "{}", db.message());
    // Extended protocol: the Parse is rejected, the session goes on.
    let err = client.query("select x from public.secrets where x = $1", &[&1i32]).await.expect_err("rejected");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    client.simple_query("select * from open").await?;
    Ok(())
}

#[tokio::test]
async fn a_chain_composes_rewrites_and_stops_at_a_reject() -> anyhow::Result<()> {
    // First plugin rewrites "sales JOIN store…" to the aggregate table; the second rejects
    // anything touching store_sales — so the rewrite, seen by the second, is rejected.
    let rewrite = plugin("rewrite", "query_rewrite", "", &rewrite_rules())?;
    let guard = plugin("guard", "tenant_guard", "", r#"rules = [{ tables = ["store_sales"], sqlstate = "42501" }]"#)?;
    let p = Proxied::start(with_plugins(&[rewrite, guard], "session")).await?;
    let client = p.client().await?;
    let err = client.simple_query(STAR_QUERY).await.expect_err("the rewritten SQL must reach the guard");
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    client.simple_query("select 1").await?;
    Ok(())
}

/// A hostile fixture entry.
fn hostile(name: &str, behaviour: &str, on_error: &str) -> anyhow::Result<String> {
    plugin(
        name,
        "hostile_fixture",
        &format!("on_error = \"{on_error}\"\ntimeout_ms = 200\nfuel = 50_000_000\nmemory_limit_mb = 8"),
        &format!("behaviour = \"{behaviour}\""),
    )
}

#[tokio::test]
async fn hostile_plugins_cannot_hurt_the_proxy() -> anyhow::Result<()> {
    for behaviour in ["loop", "memory-bomb", "panic", "unknown-database", "invalid-sqlstate", "nul-in-sql"] {
        for on_error in ["pass", "reject"] {
            let p = Proxied::start(with_plugins(&[hostile("bad", behaviour, on_error)?], "transaction")).await?;
            let client = p.client().await?;
            for round in 0..3 {
                let started = Instant::now();
                let result = client.simple_query("select 41 + 1").await;
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "{behaviour}: the client waited {:?}",
                    started.elapsed()
                );
                match on_error {
                    "pass" => {
                        let rows = result.unwrap_or_else(|e| panic!("{behaviour}/{on_error} round {round}: {e}"));
                        assert!(rows.len() >= 2, "{behaviour}: the statement must run unchanged");
                    }
                    _ => {
                        let err = result.expect_err("fail closed");
                        let db = err.as_db_error().expect("an ErrorResponse");
                        assert_eq!(db.code().code(), "58000", "{behaviour}");
                        assert!(db.message().contains("\"bad\""), "the error names the plugin: {}", db.message());
                    }
                }
            }
            // The proxy keeps serving other clients on other connections.
            let other = p.client().await?;
            let _ = other.simple_query("select 1").await;
            assert!(p.pgvane.is_running(), "{behaviour}: pgvane died");
            // Every instance was made at load and a trapped one is replaced by the call that
            // trapped: all 8 (max_instances' default) are ready, none left for a query to make.
            let row = p.show("PLUGINS").await?.into_iter().find(|r| r["name"] == "bad").expect("a row for bad");
            assert_eq!(row["warm_instances"], "8", "{behaviour}/{on_error}: {row:?}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_plugin_that_refuses_its_config_stops_startup_with_a_clear_error() -> anyhow::Result<()> {
    let entry = plugin("picky", "hostile_fixture", "", "behaviour = \"refuse-init\"")?;
    let err = Proxied::start(with_plugins(&[entry], "session")).await.err().expect("startup must fail");
    let text = format!("{err:#}");
    assert!(text.contains("picky") && text.contains("init"), "{text}");
    Ok(())
}
