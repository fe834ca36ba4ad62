//! Policy plugins written in Python (componentize-py) and JavaScript (ComponentizeJS), through
//! pgvane against two real PostgreSQL clusters: python-router routes statements to the second
//! cluster, js-rewrite rewrites them (and routes a rewritten one), over the simple and the
//! extended protocol, with several clients at once (each one a plugin instance of its own), and a
//! bad config of either is refused at startup with the plugin's own message.
//!
//! The components are built by `plugins/build.sh` (`./dev test` runs it first); the tests do not
//! build them, and fail, saying so, when they are missing.

use futures_util::future::try_join_all;
use pgvane_tests::fixture::{Proxied, ProxyOptions, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::{quote_literal, PgCluster};
use tokio_postgres::SimpleQueryMessage;

/// The component of a plugin built by plugins/build-lang.sh, or an error saying how to build it.
fn lang_plugin(file: &str, package: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins").join(format!("{file}.wasm"));
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it with `bash plugins/build.sh {package}` (`./dev test` builds it before the tests; \
         it needs python3 and node/npm, see plugins/{package}/README.md)",
        path.display()
    );
    Ok(path)
}

/// The limits a Python or JavaScript plugin needs (docs/plugins.md), besides `memory_limit_mb`:
/// their interpreters start from a pre-initialised memory of 12.4 (Python) or 9.1 (JavaScript,
/// whose heap grows to ~31) MiB, and a call costs 50k-650k fuel where a Rust plugin's costs
/// thousands.
const LIMITS: &str = "fuel = 5_000_000\ntimeout_ms = 50\nmax_instances = 4\non_error = \"reject\"";

/// The python-router entry: `tableb` goes to the second cluster, `tablea` to the client's own
/// database, for user `app` only.
fn python_router(config: &str) -> anyhow::Result<String> {
    let path = lang_plugin("python_router", "python-router")?;
    Ok(format!(
        "[[plugins]]\nname = \"py-router\"\npath = \"{}\"\n{LIMITS}\nmemory_limit_mb = 32\n[plugins.config]\n{config}\n",
        path.display()
    ))
}

fn js_rewrite(config: &str) -> anyhow::Result<String> {
    let path = lang_plugin("js_rewrite", "js-rewrite")?;
    Ok(format!(
        "[[plugins]]\nname = \"js-rewrite\"\npath = \"{}\"\n{LIMITS}\nmemory_limit_mb = 64\n[plugins.config]\n{config}\n",
        path.display()
    ))
}

const ROUTES: &str = r#"rules = [
    { usernameRegex = '.*', queryRegex = '\btablea\b', dbkey = "app" },
    { usernameRegex = '^app$', queryRegex = '(?i)\bfrom\s+tableb\b', dbkey = "dev.2" },
]"#;

/// Every `<name>_v1` becomes `<name>_v2` (a capture group in the replacement); `reports_old`
/// becomes `reports` on the second cluster (a rewrite with a route).
const REWRITES: &str = r#"rules = [
    { queryRegex = '\breports_old\b', replace = "reports", dbkey = "dev.2" },
    { queryRegex = '(?i)\b(\w+)_v1\b', replace = "${1}_v2" },
]"#;

/// pgvane in front of the client's own cluster, `[databases."dev.2"]` on another, and `plugins`.
struct TwoClusters {
    proxied: Proxied,
    other: PgCluster,
}

impl TwoClusters {
    async fn start(plugins: &[String]) -> anyhow::Result<TwoClusters> {
        let other = PgCluster::start().await?;
        let extra = format!(
            "[databases.\"dev.2\"]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"{APP_DB}\"\n\n{}",
            other.port(),
            plugins.join("\n")
        );
        let settings = "pool_mode = \"transaction\"\ndefault_pool_size = 4".to_owned();
        let proxied = Proxied::start(ProxyOptions { settings, extra, ..ProxyOptions::default() }).await?;
        // The same SCRAM verifier on both clusters (see tests/tests/routing.rs).
        let verifier = proxied.cluster.scram_verifier(APP_USER).await?;
        other.exec(&format!("create role {APP_USER} login password {}", quote_literal(&verifier))).await?;
        other.create_database(APP_DB, APP_USER).await?;
        let own = proxied.cluster.connect(APP_USER, APP_PASSWORD, APP_DB).await?;
        own.batch_execute(
            "create table tablea(v text); insert into tablea values ('from a');
             create table items_v1(v text); insert into items_v1 values ('old items');
             create table items_v2(v text); insert into items_v2 values ('new items');",
        )
        .await?;
        let theirs = other.connect(APP_USER, APP_PASSWORD, APP_DB).await?;
        theirs
            .batch_execute(
                "create table tableb(v text); insert into tableb values ('from b');
                 create table reports(v text); insert into reports values ('reports on b');",
            )
            .await?;
        Ok(TwoClusters { proxied, other })
    }

    fn own_port(&self) -> String {
        self.proxied.cluster.port().to_string()
    }

    fn other_port(&self) -> String {
        self.other.port().to_string()
    }
}

/// The first row of a simple query, as text columns.
async fn simple_row(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<Vec<String>> {
    for message in client.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(row) = message {
            return Ok((0..row.len()).map(|i| row.get(i).unwrap_or("NULL").to_owned()).collect());
        }
    }
    anyhow::bail!("{sql}: no row")
}

/// The first row of an extended-protocol query with one text parameter, as text columns.
async fn extended_row(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<Vec<String>> {
    let row = client.query_one(sql, &[&"-"]).await?;
    Ok((0..row.len()).map(|i| row.get::<_, String>(i)).collect())
}

#[tokio::test]
async fn python_routes_and_javascript_rewrites_over_both_protocols() -> anyhow::Result<()> {
    let t = TwoClusters::start(&[python_router(ROUTES)?, js_rewrite(REWRITES)?]).await?;
    let (own, other) = (t.own_port(), t.other_port());
    // Several clients at once, so the plugins run on several instances each.
    let clients = try_join_all((0..4).map(|_| t.proxied.client())).await?;
    let rounds = clients.iter().enumerate().map(|(n, client)| {
        let (own, other) = (own.as_str(), other.as_str());
        async move {
            for round in 0..5 {
                let at = format!("client {n} round {round}");
                // python-router: tableb exists only on the second cluster.
                let b = simple_row(client, "select v, inet_server_port()::text from tableb").await?;
                assert_eq!(b, ["from b", other], "{at}: simple, routed by python-router");
                let b = extended_row(client, "select v, inet_server_port()::text from TableB where v <> $1").await?;
                assert_eq!(b, ["from b", other], "{at}: extended, routed by python-router ((?i) rule)");
                let a = simple_row(client, "select v, inet_server_port()::text from tablea").await?;
                assert_eq!(a, ["from a", own], "{at}: tablea stays on the client's own database");
                // js-rewrite: the server runs items_v2 (and its capture-group replacement).
                let items = simple_row(client, "select v, inet_server_port()::text from items_v1").await?;
                assert_eq!(items, ["new items", own], "{at}: simple, rewritten by js-rewrite");
                let items = extended_row(client, "SELECT v FROM ITEMS_V1 WHERE v <> $1").await?;
                assert_eq!(items, ["new items"], "{at}: extended, rewritten by js-rewrite");
                // js-rewrite's route: reports_old is rewritten to reports and sent to dev.2.
                let reports = simple_row(client, "select v, inet_server_port()::text from reports_old").await?;
                assert_eq!(reports, ["reports on b", other], "{at}: simple, rewritten and routed by js-rewrite");
                let reports =
                    extended_row(client, "select v, current_database() from reports_old where v <> $1").await?;
                assert_eq!(reports, ["reports on b", APP_DB], "{at}: extended, rewritten and routed by js-rewrite");
                // Neither plugin has an opinion: the client's own database, unchanged.
                let plain = simple_row(client, "select 'items_v9', inet_server_port()::text").await?;
                assert_eq!(plain, ["items_v9", own], "{at}: untouched");
            }
            anyhow::Ok(())
        }
    });
    try_join_all(rounds).await?;
    // Named prepared statements keep their verdict (routed at Parse).
    let client = &clients[0];
    let on_b = client.prepare("select v, inet_server_port()::text from tableb").await?;
    let rewritten = client.prepare("select v from items_v1").await?;
    for _ in 0..3 {
        let row = client.query_one(&on_b, &[]).await?;
        assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("from b".to_owned(), other.clone()));
        let row = client.query_one(&rewritten, &[]).await?;
        assert_eq!(row.get::<_, String>(0), "new items");
    }
    // on_error = "reject" and no errors: every statement above was decided by the plugins.
    assert!(t.proxied.pgvane.is_running());
    Ok(())
}

/// Starts pgvane with `plugin` and returns its startup error, which must name the plugin and
/// hold `message`.
async fn refused(plugin: String, name: &str, message: &str) -> anyhow::Result<()> {
    let options = ProxyOptions { extra: plugin, ..ProxyOptions::default() };
    let Err(err) = Proxied::start(options).await else {
        anyhow::bail!("pgvane started with a bad {name} config (expected: {message})");
    };
    let text = format!("{err:#}");
    assert!(text.contains(&format!("plugin \"{name}\"")) && text.contains(message), "expected {message:?} in:\n{text}");
    Ok(())
}

#[tokio::test]
async fn bad_configs_are_refused_at_startup_with_the_plugins_message() -> anyhow::Result<()> {
    refused(
        python_router(r#"rules = [{ queryRegex = 'x', dbkey = "nowhere" }]"#)?,
        "py-router",
        "rules[0].dbkey: `nowhere` is not a [databases] entry",
    )
    .await?;
    refused(
        python_router(r#"rules = [{ queryRegex = '(', dbkey = "app" }]"#)?,
        "py-router",
        "rules[0].queryRegex: bad regular expression: missing ), unterminated subpattern",
    )
    .await?;
    refused(
        js_rewrite(r#"rules = [{ queryRegex = 'x' }]"#)?,
        "js-rewrite",
        "rules[0].replace: missing, or not a string",
    )
    .await?;
    refused(
        js_rewrite(r#"rules = [{ queryRegex = '(', replace = "y" }]"#)?,
        "js-rewrite",
        "rules[0].queryRegex: bad regular expression",
    )
    .await?;
    Ok(())
}
