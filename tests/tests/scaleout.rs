//! Several pgvane instances behind one address, as a deployment runs them: three instances,
//! peers of each other (`peer_id`, `[peers]`, `so_reuseport`), behind a real HAProxy in TCP
//! mode (round robin, health checks on `/ready`), in front of one PostgreSQL cluster.
//!
//! - A cancel goes through the load balancer, so it usually lands on another instance than the
//!   client's: it is forwarded to the right peer and cancels the query (57014), 20 of 20 times.
//! - pgbench `-C` (a new connection per transaction) runs while each instance in turn is
//!   drained (SIGTERM) and restarted on the same port: no transaction fails. (The issue's run
//!   is 30 s; this one is 14 s, enough for the three restarts, to keep CI short.)
//! - pgbench without `-C`, and a psycopg client that reconnects, while one instance drains:
//!   its clients are disconnected between transactions only (pgbench's aborted clients fail on
//!   the first statement of a transaction, and every transaction pgbench counts is in the
//!   history table), the psycopg client loses no committed row, and the instance exits by
//!   itself (every client left) within `shutdown_timeout_ms`.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pgvane_tests::drivers::run_python;
use pgvane_tests::fixture::{APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::haproxy::{Backend, Haproxy};
use pgvane_tests::{connect_via, describe_output, free_port, pgbench, tail, PgCluster, Pgvane};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Instances in the group.
const INSTANCES: usize = 3;

/// `shutdown_timeout_ms` of every instance.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// One instance: its ports and, while it runs, its process.
struct Instance {
    port: u16,
    metrics: u16,
    config: String,
    pgvane: Option<Pgvane>,
}

/// A cluster, three peered instances in front of it and HAProxy in front of them.
struct Group {
    cluster: PgCluster,
    instances: Vec<Instance>,
    haproxy: Haproxy,
}

fn userlist() -> String {
    format!("\"{APP_USER}\" \"{APP_PASSWORD}\"\n")
}

impl Group {
    async fn start() -> Result<Group> {
        let cluster = PgCluster::start().await?;
        cluster.create_user(APP_USER, APP_PASSWORD).await?;
        cluster.create_database(APP_DB, APP_USER).await?;
        let ports: Vec<(u16, u16)> = (0..INSTANCES).map(|_| Ok((free_port()?, free_port()?))).collect::<Result<_>>()?;
        let peers: String = ports
            .iter()
            .enumerate()
            .map(|(i, (port, _))| format!("[peers.{}]\nhost = \"127.0.0.1\"\nport = {port}\n\n", i + 1))
            .collect();
        let mut instances = Vec::new();
        for (i, (port, metrics)) in ports.iter().copied().enumerate() {
            let config = format!(
                "[pgvane]\nlisten_addr = \"127.0.0.1\"\nlisten_port = {port}\nso_reuseport = true\npeer_id = {}\n\
                 metrics_addr = \"127.0.0.1:{metrics}\"\nauth_type = \"scram-sha-256\"\nauth_file = \"userlist.txt\"\n\
                 pool_mode = \"transaction\"\ndefault_pool_size = 10\nshutdown_timeout_ms = {}\n\
                 log_connections = false\nlog_disconnections = false\n\n\
                 [databases.app]\nhost = \"127.0.0.1\"\nport = {}\n\n{peers}",
                i + 1,
                SHUTDOWN_TIMEOUT.as_millis(),
                cluster.port(),
            );
            let pgvane = Pgvane::start(&config, &[("userlist.txt", &userlist())]).await?;
            instances.push(Instance { port, metrics, config, pgvane: Some(pgvane) });
        }
        let backends: Vec<Backend> =
            instances.iter().map(|i| Backend { port: i.port, ready_port: Some(i.metrics) }).collect();
        let haproxy = Haproxy::start(&backends)?;
        let group = Group { cluster, instances, haproxy };
        for i in 0..INSTANCES {
            group.wait_ready(i).await?;
        }
        Ok(group)
    }

    fn pgvane(&self, i: usize) -> Result<&Pgvane> {
        self.instances[i].pgvane.as_ref().context("instance not running")
    }

    /// Waits until instance `i` answers 200 on `/ready`, then for HAProxy to see it (two checks).
    async fn wait_ready(&self, i: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while ready_status(self.instances[i].metrics).await.ok() != Some(200) {
            ensure!(Instant::now() < deadline, "instance {i} never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        Ok(())
    }

    /// Drains instance `i` with SIGTERM and waits for it to exit; returns how long that took.
    fn drain(&mut self, i: usize) -> Result<Duration> {
        let pgvane = self.instances[i].pgvane.as_ref().context("instance not running")?;
        let start = Instant::now();
        pgvane.signal("TERM")?;
        // The bound the drain promises: shutdown_timeout_ms, then at most 2 s to disconnect.
        let Some(status) = pgvane.wait_exit(SHUTDOWN_TIMEOUT + Duration::from_secs(5)) else {
            bail!("instance {i} did not exit after SIGTERM:\n{}", tail(&pgvane.log(), 40));
        };
        let took = start.elapsed();
        ensure!(status.success(), "instance {i} exited with {status}:\n{}", tail(&pgvane.log(), 40));
        ensure!(
            pgvane.log().contains("drained: every client has left"),
            "instance {i} did not drain (its clients did not all leave):\n{}",
            tail(&pgvane.log(), 40)
        );
        Ok(took)
    }

    /// Starts instance `i` again, on the same ports, and waits until it is in service.
    async fn restart(&mut self, i: usize) -> Result<()> {
        let old = self.instances[i].pgvane.take();
        drop(old);
        let pgvane = Pgvane::start(&self.instances[i].config, &[("userlist.txt", &userlist())]).await?;
        self.instances[i].pgvane = Some(pgvane);
        self.wait_ready(i).await
    }

    fn logs(&self) -> String {
        self.instances
            .iter()
            .filter_map(|i| i.pgvane.as_ref())
            .map(|p| tail(&p.log(), 30))
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

/// The status code of `GET /ready` on `127.0.0.1:port`.
async fn ready_status(port: u16) -> Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let status = answer.split_whitespace().nth(1).context("no status line")?;
    Ok(status.parse()?)
}

/// Runs pgbench through the load balancer off the async threads.
async fn pgbench_lb(port: u16, args: Vec<String>) -> Result<std::process::Output> {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pgbench(port, APP_USER, APP_PASSWORD, APP_DB, &args)
    })
    .await?
}

/// The number after `label` in pgbench's report.
fn figure(report: &str, label: &str) -> Option<u64> {
    let line = report.lines().find(|l| l.starts_with(label))?;
    line[label.len()..].split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_the_load_balancer_reaches_its_query_whichever_instance_gets_it() -> Result<()> {
    const TRIALS: usize = 20;
    let group = Group::start().await?;
    let lb = group.haproxy.port();
    let observer = group.cluster.connect("postgres", "postgres", "postgres").await?;
    let mut within_1s = 0;
    let mut slowest = Duration::ZERO;
    for trial in 0..TRIALS {
        let (client, _connection) = connect_via(lb, APP_USER, APP_PASSWORD, APP_DB).await?;
        let cancel = client.cancel_token();
        let sleeping = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
        // Cancel once the query runs on the server.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let running: i64 = observer
                .query_one(
                    "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'",
                    &[],
                )
                .await?
                .get(0);
            if running == 1 {
                break;
            }
            ensure!(Instant::now() < deadline, "trial {trial}: the query never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let start = Instant::now();
        // Through the load balancer, on a new connection: round robin gives it to another
        // instance than the client's.
        cancel.cancel_query(tokio_postgres::NoTls).await.with_context(|| format!("trial {trial}: cancel"))?;
        let outcome = tokio::time::timeout(Duration::from_secs(25), sleeping)
            .await
            .with_context(|| format!("trial {trial}: the query was not cancelled:\n{}", group.logs()))??;
        let took = start.elapsed();
        let code = match &outcome {
            Err(e) => e.code().map(|c| c.code().to_owned()),
            Ok(_) => None,
        };
        ensure!(
            code.as_deref() == Some("57014"),
            "trial {trial}: expected 57014 (query canceled), got {outcome:?}\n{}",
            group.logs()
        );
        if took <= Duration::from_secs(1) {
            within_1s += 1;
        }
        slowest = slowest.max(took);
    }
    let logs: Vec<String> = (0..INSTANCES).map(|i| group.pgvane(i).map(|p| p.log())).collect::<Result<_>>()?;
    let forwarded: usize = logs.iter().map(|l| l.matches("cancel request forwarded to peer").count()).sum();
    let dropped: usize = logs.iter().map(|l| l.matches("; dropped").count()).sum();
    println!(
        "cancel through HAProxy: {TRIALS} of {TRIALS} cancelled (57014), {within_1s} within 1 s, slowest {slowest:?}; \
         {forwarded} forwarded to the client's instance by a peer, {} applied where they landed",
        TRIALS.saturating_sub(forwarded)
    );
    ensure!(forwarded > 0, "no cancel was forwarded: the test did not exercise peering");
    ensure!(dropped == 0, "a cancel was dropped:\n{}", group.logs());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_reconnecting_per_transaction_sees_no_failure_across_a_rolling_restart() -> Result<()> {
    let mut group = Group::start().await?;
    let init = pgbench(group.cluster.port(), APP_USER, APP_PASSWORD, APP_DB, &["-i", "-s", "1", "-q"])?;
    ensure!(init.status.success(), "pgbench -i: {}", describe_output(&init));
    let lb = group.haproxy.port();
    let args = ["-C", "-n", "-c", "4", "-j", "2", "-T", "14"].map(String::from).to_vec();
    let bench = tokio::spawn(pgbench_lb(lb, args));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut drains = Vec::new();
    for i in 0..INSTANCES {
        drains.push(group.drain(i)?);
        group.restart(i).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(!bench.is_finished(), "pgbench ended before the rolling restart was over: make -T longer");
    let out = bench.await??;
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "pgbench failed: {}\n{}", describe_output(&out), group.logs());
    let processed = figure(&report, "number of transactions actually processed:").context("no count")?;
    let failed = figure(&report, "number of failed transactions:").context("no failed count")?;
    println!(
        "pgbench -C through HAProxy across a rolling restart of {INSTANCES} instances: {processed} transactions, \
         {failed} failed; drains took {drains:?}"
    );
    ensure!(failed == 0, "failed transactions: {report}");
    ensure!(processed > 0, "no transaction ran: {report}");
    Ok(())
}

/// One deposit per transaction, the first statement of each being BEGIN (command 1).
const SCRIPT: &str = "\\set aid random(1, 100000)\n\
BEGIN;\n\
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n\
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, :aid, 1, CURRENT_TIMESTAMP);\n\
END;\n";

/// Inserts rows one transaction each for `seconds`, first on the instance at `direct`, and
/// after any connection error through the load balancer at `lb`, retrying the same row. Creates
/// the file `ready` once connected. Prints JSON: the rows whose COMMIT succeeded, and the
/// errors (SQLSTATE, or the message when there is none).
const RECONNECTING_WRITER: &str = r#"
import json, sys, time
import psycopg
direct, lb, seconds, ready = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
def connect(port):
    return psycopg.connect(host="127.0.0.1", port=port, user="app", password="app-secret", dbname="app")
conn = connect(direct)
open(ready, "w").close()
committed, errors, i = [], [], 0
end = time.time() + seconds
while time.time() < end:
    try:
        with conn.transaction():
            conn.execute("insert into writes (id) values (%s) on conflict do nothing", (i,))
        committed.append(i)
        i += 1
    except psycopg.OperationalError as e:
        errors.append(e.sqlstate or str(e))
        conn.close()
        conn = connect(lb)
    time.sleep(0.005)
conn.close()
print(json.dumps({"committed": committed, "errors": errors}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_instance_closes_its_clients_between_transactions_and_exits() -> Result<()> {
    let mut group = Group::start().await?;
    let init = pgbench(group.cluster.port(), APP_USER, APP_PASSWORD, APP_DB, &["-i", "-s", "1", "-q"])?;
    ensure!(init.status.success(), "pgbench -i: {}", describe_output(&init));
    group.cluster.exec_in(APP_DB, "create table writes (id int primary key); grant all on writes to app").await?;
    let script = group.cluster.dir().join("deposit.sql");
    std::fs::write(&script, SCRIPT)?;
    let lb = group.haproxy.port();
    let args = vec!["-n".into(), "-c".into(), "6".into(), "-j".into(), "2".into(), "-T".into(), "8".into()];
    let args = [args, vec!["-f".into(), script.display().to_string()]].concat();
    let bench = tokio::spawn(pgbench_lb(lb, args));
    let ready = group.cluster.dir().join("writer-ready");
    let writer = tokio::spawn(run_python(
        RECONNECTING_WRITER,
        vec![group.instances[0].port.to_string(), lb.to_string(), "4".into(), ready.display().to_string()],
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        ensure!(Instant::now() < deadline && !writer.is_finished(), "the psycopg writer did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(!bench.is_finished(), "pgbench ended before the drain: make -T longer");
    let took = group.drain(0)?;

    let out = bench.await??;
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors = String::from_utf8_lossy(&out.stderr).into_owned();
    let aborted: Vec<&str> = errors.lines().filter(|l| l.contains("aborted in command")).collect();
    ensure!(!aborted.is_empty(), "no pgbench client was on the drained instance: {}", describe_output(&out));
    for line in &aborted {
        // Command 1 is BEGIN: the client was disconnected before a transaction, not inside one.
        ensure!(line.contains("aborted in command 1 "), "a client was disconnected inside a transaction: {line}");
    }
    ensure!(
        errors.contains("terminating connection due to administrator command"),
        "pgbench's clients were not told why (FATAL 57P01): {errors}"
    );
    let processed = figure(&report, "number of transactions actually processed:").context("no count")?;
    let history: i64 = group
        .cluster
        .connect("postgres", "postgres", APP_DB)
        .await?
        .query_one("select count(*) from pgbench_history", &[])
        .await?
        .get(0);
    ensure!(
        history == processed as i64,
        "pgbench counted {processed} transactions, the history table holds {history} rows"
    );

    let writer = writer.await??;
    ensure!(writer.status.success(), "psycopg writer: {}", describe_output(&writer));
    let result: serde_json::Value = serde_json::from_slice(&writer.stdout)?;
    let committed: Vec<i32> = result["committed"]
        .as_array()
        .context("committed")?
        .iter()
        .filter_map(|v| v.as_i64().and_then(|n| i32::try_from(n).ok()))
        .collect();
    let errors: Vec<String> =
        result["errors"].as_array().context("errors")?.iter().map(|v| v.as_str().unwrap_or("").to_owned()).collect();
    let client = group.cluster.connect("postgres", "postgres", APP_DB).await?;
    let stored: i64 = client.query_one("select count(*) from writes where id = any($1)", &[&committed]).await?.get(0);
    println!(
        "drain under pgbench (no -C) and psycopg: instance exited after {took:?} (shutdown_timeout_ms {}); \
         {} pgbench clients disconnected between transactions; pgbench {processed} transactions = {history} history \
         rows; psycopg committed {} rows, {stored} stored, errors {errors:?}",
        SHUTDOWN_TIMEOUT.as_millis(),
        aborted.len(),
        committed.len()
    );
    // libpq reads a FATAL that comes while the connection is idle as a notice, and reports the
    // connection closing at the next statement; one that comes after it sent one, as 57P01.
    ensure!(
        errors.len() == 1 && (errors[0] == "57P01" || errors[0].contains("server closed the connection")),
        "the writer must see one disconnection, it saw {errors:?}"
    );
    ensure!(stored == committed.len() as i64, "committed rows lost: {stored} of {}", committed.len());
    Ok(())
}

/// The lines of the `|` block under `key:` in `yaml` (indented by four spaces), unindented.
fn yaml_block(yaml: &str, key: &str) -> Result<String> {
    let mut lines = yaml.lines().skip_while(|l| l.trim_end() != format!("  {key}: |"));
    ensure!(lines.next().is_some(), "no `{key}: |` block");
    let block: Vec<&str> =
        lines.take_while(|l| l.is_empty() || l.starts_with("    ")).map(|l| l.get(4..).unwrap_or("")).collect();
    Ok(block.join("\n") + "\n")
}

/// The configuration in the Kubernetes manifests (the ConfigMap's pgvane.toml, the Secret's
/// userlist.txt beside it) passes `pgvane check`.
#[test]
fn the_kubernetes_manifests_hold_a_valid_configuration() -> Result<()> {
    let manifests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/pgvane.yaml");
    let yaml = std::fs::read_to_string(&manifests).with_context(|| format!("reading {}", manifests.display()))?;
    let dir = tempfile::tempdir()?;
    let config = yaml_block(&yaml, "pgvane.toml")?;
    ensure!(config.contains("[peers.3]") && config.contains("so_reuseport = true"), "unexpected config:\n{config}");
    std::fs::write(dir.path().join("pgvane.toml"), config)?;
    std::fs::write(dir.path().join("userlist.txt"), yaml_block(&yaml, "userlist.txt")?)?;
    let out = std::process::Command::new(pgvane_tests::pgvane_bin()?)
        .arg("check")
        .arg("--config")
        .arg(dir.path().join("pgvane.toml"))
        .output()?;
    ensure!(out.status.success(), "pgvane check on the manifests' configuration: {}", describe_output(&out));
    Ok(())
}
