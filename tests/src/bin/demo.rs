//! `pgvane-demo`: starts two throw-away PostgreSQL clusters and a pgvane in
//! front of them with the example policy plugins, prints how to connect and
//! what to try, and runs until Ctrl-C (or until pgvane exits). Everything is
//! stopped and deleted on exit.
//!
//! The plugins: `regex-router` sends statements on `tableb` to the second
//! cluster (the seed's pgbouncer-rr routing table), `query-rewrite` turns the
//! seed's star-schema join into a query on the pre-aggregated table, and
//! `tenant-guard` refuses statements on `secrets`.
//!
//! Usage: `cargo run -p pgvane-tests --bin pgvane-demo [-- --check]`
//!
//! With `--check` it starts everything, runs the demo's queries through pgvane
//! with tokio-postgres, prints what each did and exits 0 (a non-interactive
//! smoke test for CI).

use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use pgvane_tests::fixture::plugin_path;
use pgvane_tests::{connect_via, free_port, quote_literal, tail, PgCluster, Pgvane};

/// The port the demo prefers for pgvane (PgBouncer's usual one).
const PREFERRED_PORT: u16 = 6432;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Everything was stopped and cleaned up when `run` returned.
            eprintln!("pgvane-demo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The demo; returns after stopping and deleting everything it started.
async fn run() -> Result<()> {
    let mut check = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!(
                    "usage: pgvane-demo [--check]\n\n  --check  start everything, run one query through pgvane, exit"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }

    println!("Starting two PostgreSQL clusters ...");
    let cluster = PgCluster::start().await.context("starting PostgreSQL")?;
    let reports = PgCluster::start().await.context("starting the second PostgreSQL")?;
    setup_app_database(&cluster, &reports).await?;
    let verifier = cluster.scram_verifier("app").await?;
    let userlist = format!("\"app\" \"{verifier}\"\n");

    println!("Building the example plugins (first time only) ...");
    let plugins = plugins_config()?;
    println!("Starting pgvane ...");
    let pgvane = start_pgvane(cluster.port(), reports.port(), &plugins, &userlist).await?;

    println!();
    println!(
        "PostgreSQL : 127.0.0.1:{} (database app: items, tablea, sales, store, store_sales, secrets)",
        cluster.port()
    );
    println!(
        "             127.0.0.1:{} (database app: tableb; pgvane's [databases] entry \"reports\")",
        reports.port()
    );
    println!("             superuser postgres/postgres; logs: {}", cluster.log_path().display());
    println!("                                               {}", reports.log_path().display());
    println!("pgvane     : {}", pgvane.addr());
    println!("             config: {}", pgvane.config_path().display());
    println!("             log:    {}", pgvane.log_path().display());
    println!("             (the userlist holds app's SCRAM verifier, no plain password)");
    println!();
    println!("Connect through pgvane with:");
    println!();
    println!("    PGPASSWORD=app psql -h 127.0.0.1 -p {} -U app app", pgvane.port());
    println!();
    println!("and try the policy plugins:");
    println!();
    println!("    select v, inet_server_port() from tablea;   -- runs on the first cluster");
    println!("    select v, inet_server_port() from tableb;   -- routed to the second (regex-router)");
    println!("    {STAR_QUERY};");
    println!("        -- rewritten to read store_sales (query-rewrite): totals 1500 and 700, not 15 and 7");
    println!("    select * from secrets;                      -- refused with 42501 (tenant-guard)");
    println!();
    println!("The admin console: PGPASSWORD=app psql -h 127.0.0.1 -p {} -U app pgvane -c 'show pools'", pgvane.port());
    println!();

    if check {
        return run_check(&pgvane, cluster.port(), reports.port()).await;
    }

    println!("Press Ctrl-C to stop (everything above is deleted on exit).");
    loop {
        tokio::select! {
            signal = tokio::signal::ctrl_c() => {
                signal.context("waiting for Ctrl-C")?;
                println!("\nStopping ...");
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if !pgvane.is_running() {
                    bail!("pgvane exited unexpectedly; last log lines:\n{}", tail(&pgvane.log(), 40));
                }
            }
        }
    }
    // `pgvane` and `cluster` are stopped and their dirs removed when dropped here.
    Ok(())
}

/// The seed's star-schema query, which query-rewrite sends to the aggregate table.
const STAR_QUERY: &str =
    "SELECT storename, SUM(total) FROM sales JOIN store USING (storeid) GROUP BY storename ORDER BY storename";

/// Creates user `app` (password `app`) and database `app` on both clusters (the second with the
/// same SCRAM verifier, so pgvane logs in to both with the keys of one client login), and the
/// demo's tables.
async fn setup_app_database(cluster: &PgCluster, reports: &PgCluster) -> Result<()> {
    cluster.create_user("app", "app").await?;
    cluster.create_database("app", "app").await?;
    let verifier = cluster.scram_verifier("app").await?;
    reports.exec(&format!("CREATE ROLE app LOGIN PASSWORD {}", quote_literal(&verifier))).await?;
    reports.create_database("app", "app").await?;
    let app = cluster.connect("app", "app", "app").await?;
    app.batch_execute(
        "CREATE TABLE items(id int PRIMARY KEY, name text);
         INSERT INTO items VALUES (1, 'apple'), (2, 'banana'), (3, 'cherry'), (4, 'damson'), (5, 'elderberry');
         CREATE TABLE tablea(v text); INSERT INTO tablea VALUES ('a row on the first cluster');
         CREATE TABLE store(storeid int PRIMARY KEY, storename text);
         CREATE TABLE sales(storeid int, total numeric);
         CREATE TABLE store_sales(storename text, total numeric);
         INSERT INTO store VALUES (1, 'north'), (2, 'south');
         INSERT INTO sales VALUES (1, 10), (1, 5), (2, 7);
         INSERT INTO store_sales VALUES ('north', 1500), ('south', 700);
         CREATE TABLE secrets(v text);",
    )
    .await
    .context("creating the demo tables")?;
    let other = reports.connect("app", "app", "app").await?;
    other
        .batch_execute("CREATE TABLE tableb(v text); INSERT INTO tableb VALUES ('a row on the second cluster');")
        .await
        .context("creating tableb")?;
    Ok(())
}

/// The `[[plugins]]` entries (building the example plugins if needed).
fn plugins_config() -> Result<String> {
    let path = |name: &str| plugin_path(name).map(|p| p.display().to_string());
    Ok(format!(
        r#"
[[plugins]]
name = "guard"
path = "{guard}"
on_error = "reject"   # a guard fails closed: padding a query until the plugin gives up must not pass it
[plugins.config]
rules = [{{ tables = ["secrets"], sqlstate = "42501", message = "{{user}} may not use {{table}}" }}]

[[plugins]]
name = "router"
path = "{router}"
[plugins.config]
rules = [
    {{ usernameRegex = '.*', queryRegex = '\btablea\b', dbkey = "app" }},
    {{ usernameRegex = '.*', queryRegex = '\btableb\b', dbkey = "reports" }},
]

[[plugins]]
name = "rewrite"
path = "{rewrite}"
[plugins.config]
rules = [{{ queryRegex = '^\s*SELECT storename, SUM\(total\) FROM sales JOIN store USING \(storeid\) GROUP BY storename ORDER BY storename\s*;?\s*$', replace = "SELECT storename, SUM(total) FROM store_sales GROUP BY storename ORDER BY storename" }}]
"#,
        guard = path("tenant_guard")?,
        router = path("regex_router")?,
        rewrite = path("query_rewrite")?,
    ))
}

/// The demo's pgvane configuration.
fn config(listen_port: u16, backend_port: u16, reports_port: u16, plugins: &str) -> String {
    format!(
        r#"[pgvane]
listen_addr = "127.0.0.1"
listen_port = {listen_port}
pool_mode = "transaction"
default_pool_size = 20
auth_type = "scram-sha-256"
auth_file = "userlist.txt"
admin_users = ["app"]

[databases.app]
host = "127.0.0.1"
port = {backend_port}

[databases.reports]
host = "127.0.0.1"
port = {reports_port}
dbname = "app"
{plugins}"#
    )
}

/// Starts pgvane on port 6432, or on a free port if 6432 is taken.
async fn start_pgvane(backend_port: u16, reports_port: u16, plugins: &str, userlist: &str) -> Result<Pgvane> {
    let config = |port| config(port, backend_port, reports_port, plugins);
    let files = [("userlist.txt", userlist)];
    let preferred_free = TcpListener::bind(("127.0.0.1", PREFERRED_PORT)).is_ok();
    if preferred_free {
        match Pgvane::start(&config(PREFERRED_PORT), &files).await {
            Ok(pgvane) => return Ok(pgvane),
            // Someone took the port in between: fall through to a free one.
            Err(e) if format!("{e:#}").contains("in use") => {}
            Err(e) => return Err(e.context("starting pgvane")),
        }
    }
    let port = free_port()?;
    println!("(port {PREFERRED_PORT} is busy, using {port})");
    Pgvane::start(&config(port), &files).await.context("starting pgvane")
}

/// `--check`: the demo's queries through pgvane.
async fn run_check(pgvane: &Pgvane, own_port: u16, reports_port: u16) -> Result<()> {
    let result = async {
        let (client, _connection) = connect_via(pgvane.port(), "app", "app", "app").await?;
        let count: i64 =
            client.query_one("select count(*) from items", &[]).await.context("select count(*) from items")?.get(0);
        println!("check: select count(*) from items through pgvane = {count}");
        for (table, expected) in [("tablea", own_port), ("tableb", reports_port)] {
            let sql = format!("select inet_server_port() from {table}");
            let port: i32 = client.query_one(sql.as_str(), &[]).await.with_context(|| sql.clone())?.get(0);
            ensure!(port == i32::from(expected), "{sql} ran on port {port}, expected {expected}");
            println!("check: {table} is served by the cluster on port {port}");
        }
        let messages = client.simple_query(STAR_QUERY).await.context("the star-schema query")?;
        let totals: Vec<&str> = messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(1),
                _ => None,
            })
            .collect();
        ensure!(totals == ["1500", "700"], "the star-schema query was not rewritten: {totals:?}");
        println!("check: the star-schema query was rewritten to store_sales (totals {totals:?})");
        let refused = client.simple_query("select * from secrets").await;
        let code = refused.as_ref().err().and_then(|e| e.code()).map(|c| c.code().to_owned());
        ensure!(code.as_deref() == Some("42501"), "select from secrets was not refused: {code:?}");
        println!("check: select * from secrets refused with 42501");
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            println!("check: OK");
            Ok(())
        }
        Err(e) => Err(e.context(format!("check failed; last pgvane log lines:\n{}", tail(&pgvane.log(), 40)))),
    }
}
