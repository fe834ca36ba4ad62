//! `pgvane plugin test`: a plugin run offline over captured traffic, a real PostgreSQL log
//! among it, with verdicts checked against an expectation file.

use std::path::Path;
use std::process::Output;

use pgvane_tests::fixture::plugin_path;
use pgvane_tests::{describe_output, pgvane_bin, PgCluster, SUPERUSER};

fn plugin_test(plugin: &str, config: &str, queries: &Path, extra: &[&str]) -> anyhow::Result<Output> {
    let plugin = plugin_path(plugin)?;
    let mut args = vec!["plugin", "test", plugin.to_str().unwrap_or_default(), "--config", config, "--queries"];
    args.push(queries.to_str().unwrap_or_default());
    args.extend_from_slice(extra);
    Ok(std::process::Command::new(pgvane_bin()?).args(args).output()?)
}

/// The stdout lines as (verdict, query) pairs, in order.
fn verdicts(out: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let fields: Vec<&str> = l.split('\t').collect();
            (fields.get(1).copied().unwrap_or("").to_owned(), fields.get(2).copied().unwrap_or("").to_owned())
        })
        .collect()
}

const ROUTER: &str = r#"{"rules": [
    {"usernameRegex": "^postgres$", "queryRegex": "(?i)\\btableb\\b", "dbkey": "b"},
    {"queryRegex": "(?i)\\btablea\\b", "dbkey": "a"}]}"#;

#[tokio::test]
async fn a_real_postgresql_log_replays_through_a_plugin_and_differences_fail() -> anyhow::Result<()> {
    // PostgreSQL logs every statement with user@database, as a production server might.
    let cluster = PgCluster::start().await?;
    cluster.exec("create table tablea(x int); create table tableb(x int)").await?;
    cluster.exec("alter system set log_statement = 'all'").await?;
    cluster.exec("alter system set log_line_prefix = '%m [%p] %q%u@%d '").await?;
    cluster.exec("select pg_reload_conf()").await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let client = cluster.connect(SUPERUSER, pgvane_tests::SUPERUSER_PASSWORD, "postgres").await?;
    client.simple_query("SELECT count(*) FROM tablea").await?;
    client.query("SELECT x FROM tableb WHERE x = $1", &[&1i32]).await?;
    client.simple_query("SELECT 1\nFROM tableb").await?;
    client.simple_query("SELECT 'no table here'").await?;
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let dir = tempfile::tempdir()?;
    let log = dir.path().join("postgresql.log");
    std::fs::write(&log, cluster.log())?;
    let out = plugin_test("regex_router", ROUTER, &log, &["--databases", "a,b"])?;
    assert!(out.status.success(), "{}", describe_output(&out));
    let got = verdicts(&out);
    let verdict_of = |sql: &str| {
        got.iter().find(|(_, q)| q == sql).map(|(v, _)| v.clone()).unwrap_or_else(|| panic!("{sql:?} not in {got:?}"))
    };
    assert_eq!(verdict_of("SELECT count(*) FROM tablea"), "route database=a");
    // An extended-protocol statement (`execute s0: …` in the log) and a two-line one.
    assert_eq!(verdict_of("SELECT x FROM tableb WHERE x = $1"), "route database=b");
    assert_eq!(verdict_of("SELECT 1\\nFROM tableb"), "route database=b");
    assert_eq!(verdict_of("SELECT 'no table here'"), "pass");
    // Statements only: checkpoints, connections and the like are not queries.
    assert!(got.iter().all(|(_, q)| !q.contains("checkpoint")), "{got:?}");

    // The output is its own expectation file: as it is, nothing differs…
    let expect = dir.path().join("expected.tsv");
    std::fs::write(&expect, &out.stdout)?;
    let same =
        plugin_test("regex_router", ROUTER, &log, &["--databases", "a,b", "--expect", expect.to_str().unwrap()])?;
    assert!(same.status.success(), "{}", describe_output(&same));
    // …and a new version of the rules that sends tableb elsewhere is caught, naming the query.
    let changed = ROUTER.replace("\"dbkey\": \"b\"", "\"dbkey\": \"a\"");
    let differs =
        plugin_test("regex_router", &changed, &log, &["--databases", "a,b", "--expect", expect.to_str().unwrap()])?;
    assert_eq!(differs.status.code(), Some(1), "{}", describe_output(&differs));
    let stderr = String::from_utf8_lossy(&differs.stderr);
    assert!(stderr.contains("expected \"route database=b\", got route database=a"), "{stderr}");
    assert!(stderr.contains("verdict(s) differ"), "{stderr}");
    Ok(())
}

#[test]
fn rewrites_and_rejects_show_per_user_from_a_query_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let queries = dir.path().join("queries.sql");
    std::fs::write(
        &queries,
        "-- pgvane: user=analyst database=app\n\
         SELECT * FROM secrets\n\
         [admin@app] SELECT * FROM secrets\n\
         SELECT sum(amount) FROM sales JOIN dates USING (day)\n",
    )?;
    let guard = r#"{"rules": [{"exceptUsernameRegex": "^admin$", "tables": ["secrets"]}]}"#;
    let out = plugin_test("tenant_guard", guard, &queries, &[])?;
    assert!(out.status.success(), "{}", describe_output(&out));
    let got: Vec<String> = verdicts(&out).into_iter().map(|(v, _)| v).collect();
    assert_eq!(got, ["reject 42501 permission denied for table secrets", "pass", "pass"]);

    let rewrite =
        r#"{"rules": [{"queryRegex": "FROM sales JOIN dates USING \\(day\\)", "replace": "FROM sales_by_day"}]}"#;
    let out = plugin_test("query_rewrite", rewrite, &queries, &[])?;
    assert!(out.status.success(), "{}", describe_output(&out));
    let got: Vec<String> = verdicts(&out).into_iter().map(|(v, _)| v).collect();
    assert_eq!(got, ["pass", "pass", "rewrite SELECT sum(amount) FROM sales_by_day"]);

    // A config the plugin refuses is an error, not a run.
    let out = plugin_test("regex_router", ROUTER, &queries, &["--databases", "a"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("`b` is not a [databases] entry"),
        "{}",
        describe_output(&out)
    );
    Ok(())
}
