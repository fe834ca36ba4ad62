//! `/metrics` scraped by a real Prometheus (Debian's package) every second while pgbench runs
//! through a chain of three plugins; the numbers Prometheus holds are checked against what the
//! test did: transactions and queries per database (pgbench's count plus the test's own
//! statements), route and rewrite verdicts, a failed login, a RELOAD, and a plugin made to trap.
//! Also `/health`, `/ready`, SHOW STATS_TOTALS against the same counters, and JSON log lines
//! carrying the session's connection id, user, database and address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use pgvane_tests::fixture::{plugin_path, Proxied, ProxyOptions, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::prometheus::{http_get, Prometheus};
use pgvane_tests::{connect_via, describe_output, pgbench};

/// pgbench's clients and transactions per client.
const CLIENTS: u64 = 4;
const TRANSACTIONS_PER_CLIENT: u64 = 50;
/// The test's own statements through pgvane: rewritten, routed, and judged after the trap.
const REWRITES: u64 = 3;
const ROUTES: u64 = 2;
const TRAPPED: u64 = 3;

/// One run of pgbench's script: a transaction of 4 statements on `app`, then one statement the
/// router sends to `reader`.
const SCRIPT: &str = "\\set id random(1, 10)
BEGIN;
UPDATE counters SET n = n + 1 WHERE id = :id;
SELECT n FROM counters WHERE id = :id;
END;
SELECT 'route-me';
";

/// Patience for Prometheus to scrape after the test acted (a scrape every second).
const SCRAPE_WAIT: Duration = Duration::from_secs(60);

fn config_extra(trap_behaviour: &str) -> anyhow::Result<String> {
    let entry = |name: &str, file: &str, keys: &str, config: &str| -> anyhow::Result<String> {
        let path = plugin_path(file)?;
        Ok(format!(
            "[[plugins]]\nname = \"{name}\"\npath = \"{}\"\n{keys}\n[plugins.config]\n{config}\n",
            path.display()
        ))
    };
    Ok([
        format!("[databases.reader]\nhost = \"127.0.0.1\"\nport = PORT\ndbname = \"{APP_DB}\"\n"),
        entry(
            "rewrite",
            "query_rewrite",
            "",
            r#"rules = [{ queryRegex = "^SELECT 'rewrite-me'$", replace = "SELECT 'rewritten'" }]"#,
        )?,
        entry(
            "router",
            "regex_router",
            "",
            r#"rules = [{ usernameRegex = '.*', queryRegex = "^SELECT 'route-me'", dbkey = "reader" }]"#,
        )?,
        entry(
            "trap",
            "hostile_fixture",
            "on_error = \"pass\"\nmax_instances = 1",
            &format!("behaviour = \"{trap_behaviour}\""),
        )?,
    ]
    .join("\n"))
}

fn settings() -> String {
    format!(
        "pool_mode = \"transaction\"\ndefault_pool_size = 4\nadmin_users = [\"{APP_USER}\"]\n\
         metrics_addr = \"127.0.0.1:0\"\nlog_format = \"json\""
    )
}

/// The metrics address pgvane printed.
fn metrics_addr(p: &Proxied) -> anyhow::Result<SocketAddr> {
    let stdout = p.pgvane.stdout();
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pgvane metrics on "))
        .ok_or_else(|| anyhow::anyhow!("pgvane printed no `pgvane metrics on` line: {stdout}"))?;
    Ok(line.trim().parse()?)
}

/// pgbench's "number of transactions actually processed: N/M".
fn processed(stdout: &str) -> Option<u64> {
    let prefix = "number of transactions actually processed: ";
    let line = stdout.lines().find(|l| l.starts_with(prefix))?;
    line[prefix.len()..].split('/').next()?.trim().parse().ok()
}

/// Every series of `promql` by the value of `label`.
async fn by_label(prom: &Prometheus, promql: &str, label: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    Ok(prom
        .query(promql)
        .await?
        .into_iter()
        .map(|(labels, value)| (labels.get(label).cloned().unwrap_or_default(), value))
        .collect())
}

#[tokio::test]
async fn prometheus_sees_what_pgbench_and_the_plugins_did() -> anyhow::Result<()> {
    // The `reader` entry needs the cluster's port, known only once the fixture has started
    // it: pgvane starts with a placeholder port and is RELOADed with the real one (a reload
    // the test counts).
    let placeholder = config_extra("pass")?;
    let p = Proxied::start(ProxyOptions {
        settings: settings(),
        extra: placeholder.replace("port = PORT", "port = 1"),
        ..ProxyOptions::default()
    })
    .await?;
    let config_path = p.pgvane.config_path();
    let with_port = |extra: String| -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&config_path)?;
        let start = text.find("[databases.reader]").ok_or_else(|| anyhow::anyhow!("no reader entry"))?;
        let mut text = text[..start].to_owned();
        text.push_str(&extra.replace("port = PORT", &format!("port = {}", p.cluster.port())));
        std::fs::write(&config_path, text)?;
        Ok(())
    };
    with_port(config_extra("pass")?)?;
    p.console("RELOAD").await?.map_err(anyhow::Error::msg)?;
    let reloads = 1u64;

    let addr = metrics_addr(&p)?;
    assert_eq!(http_get(addr, "/health").await?.0, 200);
    assert_eq!(http_get(addr, "/ready").await?, (200, "ready\n".to_owned()));
    assert_eq!(http_get(addr, "/nothing-here").await?.0, 404);
    let prom = Prometheus::start(addr).await?;

    // The table pgbench updates, made directly on the server: not through pgvane, not counted.
    let direct = p.cluster.connect(APP_USER, APP_PASSWORD, APP_DB).await?;
    direct
        .batch_execute("create table counters(id int primary key, n int); insert into counters select g, 0 from generate_series(1, 10) g")
        .await?;

    // A failed login.
    let wrong = connect_via(p.port(), APP_USER, "not-the-password", APP_DB).await;
    assert!(wrong.is_err(), "a wrong password must be refused");

    let script = p.pgvane.dir().join("script.sql");
    std::fs::write(&script, SCRIPT)?;
    let (clients, transactions) = (CLIENTS.to_string(), TRANSACTIONS_PER_CLIENT.to_string());
    let script_arg = script.display().to_string();
    let args = ["-n", "-M", "simple", "-f", &script_arg, "-c", &clients, "-j", "2", "-t", &transactions];
    let out = pgbench(p.port(), APP_USER, APP_PASSWORD, APP_DB, &args)?;
    assert!(out.status.success(), "pgbench: {}", describe_output(&out));
    let n = processed(&String::from_utf8_lossy(&out.stdout)).expect("pgbench printed no processed count");
    assert_eq!(n, CLIENTS * TRANSACTIONS_PER_CLIENT, "{}", describe_output(&out));

    let client = p.client().await?;
    for _ in 0..REWRITES {
        let rows = client.simple_query("SELECT 'rewrite-me'").await?;
        let value = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(value.as_deref(), Some("rewritten"), "the rewrite plugin must have rewritten it");
    }
    for _ in 0..ROUTES {
        client.simple_query("SELECT 'route-me'").await?;
    }
    let done = SystemTime::now();
    prom.wait_for_scrape_after("pgvane_ready", done, SCRAPE_WAIT).await?;

    // Prometheus could parse every scrape, and pgvane was ready all along.
    assert_eq!(prom.value("up{job=\"pgvane\"}").await?, 1.0);
    assert_eq!(prom.value("min_over_time(pgvane_ready[1h])").await?, 1.0);

    // Transactions and queries per database: pgbench's, plus the test's own statements.
    let xacts = by_label(&prom, "pgvane_stats_sql_transactions_pooled_total", "database").await?;
    assert_eq!(xacts.get("app"), Some(&((n + REWRITES) as f64)), "one per pgbench block, one per rewrite: {xacts:?}");
    assert_eq!(xacts.get("reader"), Some(&((n + ROUTES) as f64)), "one per routed statement: {xacts:?}");
    let queries = by_label(&prom, "pgvane_stats_queries_pooled_total", "database").await?;
    assert_eq!(queries.get("app"), Some(&((4 * n + REWRITES) as f64)), "{queries:?}");
    assert_eq!(queries.get("reader"), Some(&((n + ROUTES) as f64)), "{queries:?}");
    // The histograms count the same transactions.
    let histogram =
        by_label(&prom, "sum by (database) (pgvane_pools_transaction_duration_seconds_count)", "database").await?;
    assert_eq!(histogram, xacts, "the transaction histogram counts every transaction");
    let unbucketed = prom
        .value("sum(pgvane_pools_query_duration_seconds_bucket{le=\"+Inf\"}) - sum(pgvane_stats_queries_pooled_total)")
        .await?;
    assert_eq!(unbucketed, 0.0, "the query histogram's +Inf bucket counts every query");

    // Verdicts: the router routed what the test and pgbench sent to `reader`, the rewrite plugin
    // rewrote the test's statements, everything else passed; nothing failed.
    let statements = 5 * n + REWRITES + ROUTES;
    let router = by_label(&prom, "pgvane_plugin_verdicts_total{plugin=\"router\"}", "verdict").await?;
    assert_eq!(router.get("route"), Some(&((n + ROUTES) as f64)), "{router:?}");
    assert_eq!(router.get("pass"), Some(&((statements - n - ROUTES) as f64)), "{router:?}");
    let rewrite = by_label(&prom, "pgvane_plugin_verdicts_total{plugin=\"rewrite\"}", "verdict").await?;
    assert_eq!(rewrite.get("rewrite"), Some(&(REWRITES as f64)), "{rewrite:?}");
    assert_eq!(rewrite.get("pass"), Some(&((statements - REWRITES) as f64)), "{rewrite:?}");
    for plugin in ["rewrite", "router", "trap"] {
        assert_eq!(prom.value(&format!("pgvane_plugin_calls_total{{plugin=\"{plugin}\"}}")).await?, statements as f64);
        let errors = prom.value(&format!("sum(pgvane_plugin_errors_total{{plugin=\"{plugin}\"}})")).await?;
        assert_eq!(errors, 0.0, "{plugin}");
        let latency = format!("pgvane_plugin_decide_duration_seconds_count{{plugin=\"{plugin}\"}}");
        assert_eq!(prom.value(&latency).await?, statements as f64, "{plugin}: one latency per call");
    }

    // The failed login and the reload.
    assert_eq!(prom.value("pgvane_auth_failures_total{reason=\"password\"}").await?, 1.0);
    assert_eq!(prom.value("pgvane_reloads_total{result=\"ok\"}").await?, reloads as f64);

    // SHOW STATS_TOTALS reads the same counters.
    let totals = p.show("STATS_TOTALS").await?;
    let app = totals.iter().find(|r| r["database"] == "app").expect("a row for app");
    assert_eq!(app["xact_count"].parse::<u64>()?, n + REWRITES, "{totals:?}");
    assert!(p.show("STATS_AVERAGES").await?.iter().any(|r| r["database"] == "reader"));

    // The trap: the same chain with the third plugin panicking in every call (on_error = pass,
    // so the statements still run).
    with_port(config_extra("panic")?)?;
    p.console("RELOAD").await?.map_err(anyhow::Error::msg)?;
    let reloads = reloads + 1;
    let client = p.client().await?;
    for _ in 0..TRAPPED {
        client.simple_query("SELECT 1").await?;
    }
    let done = SystemTime::now();
    prom.wait_for_scrape_after("pgvane_ready", done, SCRAPE_WAIT).await?;
    // The plugins' counters start again with the reloaded chain.
    let causes = by_label(&prom, "pgvane_plugin_errors_total{plugin=\"trap\"}", "cause").await?;
    assert_eq!(causes.get("trap"), Some(&(TRAPPED as f64)), "{causes:?}");
    assert_eq!(causes.values().sum::<f64>(), TRAPPED as f64, "only traps: {causes:?}");
    assert_eq!(prom.value("pgvane_plugin_calls_total{plugin=\"trap\"}").await?, TRAPPED as f64);
    assert_eq!(prom.value("pgvane_reloads_total{result=\"ok\"}").await?, reloads as f64);
    // Loaded at the start and at each reload, always the same component.
    let plugins = p.show("PLUGINS").await?;
    let digest = &plugins.iter().find(|r| r["name"] == "trap").expect("trap in SHOW PLUGINS")["digest"];
    let loads = prom.query("pgvane_plugin_loads_total{plugin=\"trap\"}").await?;
    assert_eq!(loads.len(), 1, "{loads:?}");
    assert_eq!((loads[0].0["digest"].as_str(), loads[0].1), (digest.as_str(), (1 + reloads) as f64));

    // Every session line carries the connection id, user, database and client address.
    let log = p.pgvane.log();
    let login: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "client logged in" && l["span"]["database"] == APP_DB)
        .ok_or_else(|| {
            anyhow::anyhow!("no JSON `client logged in` line in the log:\n{}", pgvane_tests::tail(&log, 20))
        })?;
    let span = &login["span"];
    assert!(span["conn"].as_u64().is_some_and(|c| c > 0), "{login}");
    assert_eq!(span["user"], APP_USER, "{login}");
    assert!(span["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{login}");
    assert!(log.lines().any(|l| l.contains("client disconnected")), "log_disconnections");

    assert_eq!(http_get(addr, "/ready").await?.0, 200, "still ready");
    dashboard_queries_work(&prom, addr).await
}

/// Every query of the Grafana dashboard (deploy/grafana/pgvane.json) parses in Prometheus and
/// names only metrics pgvane exposes.
async fn dashboard_queries_work(prom: &Prometheus, addr: SocketAddr) -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/pgvane.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let (status, exposition) = http_get(addr, "/metrics").await?;
    assert_eq!(status, 200);
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let promql = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
                .replace("$instance", ".*")
                .replace("$database", ".*")
                .replace("$plugin", ".*");
            prom.query(&promql).await.map_err(|e| e.context(format!("panel {}", panel["title"])))?;
            for name in metric_names(expr) {
                let family = name.strip_suffix("_bucket").unwrap_or(&name);
                assert!(
                    exposition.contains(&format!("# TYPE {name} "))
                        || exposition.contains(&format!("# TYPE {family} histogram")),
                    "panel {}: pgvane exposes no {name}",
                    panel["title"]
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} queries in the dashboard");
    Ok(())
}

/// The `pgvane_…` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("pgvane_") {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// `/ready` answers 503 from the moment a shutdown starts, while the process still ends its
/// sessions; `/health` stays 200 until the process is gone.
#[tokio::test]
async fn ready_turns_false_while_draining() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Proxied::start(ProxyOptions { settings: settings(), ..ProxyOptions::default() }).await?;
    let addr = metrics_addr(&p)?;
    assert_eq!(http_get(addr, "/ready").await?, (200, "ready\n".to_owned()));
    // A client that stops in the middle of its SCRAM exchange: registered, and slow to end, so
    // the shutdown has a client to wait for (up to its 2 s grace).
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", p.port())).await?;
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    for part in ["user", APP_USER, "database", APP_DB, ""] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend(body);
    stalled.write_all(&packet).await?;
    let mut first = [0u8; 1];
    stalled.read_exact(&mut first).await?;
    assert_eq!(first[0], b'R', "an authentication request");

    p.pgvane.signal("TERM")?;
    let mut answers = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        match http_get(addr, "/ready").await {
            Ok(answer) if answer.0 == 200 => {}
            Ok(answer) => {
                let health = http_get(addr, "/health").await.map(|(status, _)| status).ok();
                answers.push((answer, health));
                break;
            }
            Err(_) => break, // the process is gone
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        matches!(answers.first(), Some(((503, body), health)) if body == "draining\n" && health.is_none_or(|s| s == 200)),
        "/ready must answer 503 draining before the process ends: {answers:?}"
    );
    Ok(())
}
