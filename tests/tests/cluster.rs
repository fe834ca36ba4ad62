//! Cluster databases against a real primary and a real streaming replica (`pg_basebackup -R`):
//! role discovery, SHOW BACKENDS, reads on the replica and writes on the primary through one
//! endpoint (checked on the server side with `pg_is_in_recovery()` inside the routed
//! statement), fallback to the primary when the replica is down or lagging.

use std::collections::BTreeMap;

use anyhow::Context;
use std::time::{Duration, Instant};

use pgvane_tests::fixture::{console_rows, plugin_path, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::load::{Outcome, WriteLoad, Writes};
use pgvane_tests::{connect_via, tail, PgCluster, Pgvane, SUPERUSER, SUPERUSER_PASSWORD};
use tokio_postgres::SimpleQueryMessage;

/// A primary with the `app` user and database, a streaming replica of it, and pgvane with
/// the database `app` as a cluster of both.
struct Replicated {
    primary: PgCluster,
    replica: PgCluster,
    pgvane: Pgvane,
}

/// How to configure pgvane.
struct Setup {
    /// `pool_mode`.
    mode: &'static str,
    /// Lines for `[pgvane]`.
    settings: &'static str,
    /// Lines for `[databases.app]` (after `hosts`).
    database: &'static str,
    /// Load the rw-split plugin.
    rw_split: bool,
    /// Let the monitor log in as `postgres` (`monitor_user`); otherwise it uses the first
    /// client's credential.
    monitor_user: bool,
    /// `health_check_period_ms`.
    check_period_ms: u64,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            mode: "transaction",
            settings: "",
            database: "",
            rw_split: false,
            monitor_user: true,
            check_period_ms: 100,
        }
    }
}

impl Replicated {
    async fn start(setup: Setup) -> anyhow::Result<Replicated> {
        let primary = PgCluster::start().await?;
        primary.create_user(APP_USER, APP_PASSWORD).await?;
        primary.create_database(APP_DB, APP_USER).await?;
        primary.exec_in(APP_DB, "create table t(x int); alter table t owner to app").await?;
        let replica = PgCluster::start_replica_of(&primary).await?;
        let pgvane = Self::start_pgvane(&primary, &replica, &setup).await?;
        Ok(Replicated { primary, replica, pgvane })
    }

    async fn start_pgvane(primary: &PgCluster, replica: &PgCluster, setup: &Setup) -> anyhow::Result<Pgvane> {
        let verifier = primary.scram_verifier(APP_USER).await?;
        let mut userlist = format!("\"{APP_USER}\" \"{verifier}\"\n");
        let mut settings = format!(
            "pool_mode = \"{}\"\nadmin_users = [\"{APP_USER}\"]\nhealth_check_period_ms = {}\n\
             server_failed_delay_ms = 300\n{}\n",
            setup.mode, setup.check_period_ms, setup.settings
        );
        if setup.monitor_user {
            userlist.push_str(&format!("\"{SUPERUSER}\" \"{SUPERUSER_PASSWORD}\"\n"));
            settings.push_str(&format!("monitor_user = \"{SUPERUSER}\"\n"));
        }
        let plugin = match setup.rw_split {
            true => format!("[[plugins]]\nname = \"rw-split\"\npath = \"{}\"\n", plugin_path("rw_split")?.display()),
            false => String::new(),
        };
        let config = format!(
            "[pgvane]\nlisten_port = 0\nauth_type = \"scram-sha-256\"\nauth_file = \"userlist.txt\"\n{settings}\n\
             [databases.app]\nhosts = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n{}\n\n{plugin}",
            primary.port(),
            replica.port(),
            setup.database,
        );
        Pgvane::start(&config, &[("userlist.txt", &userlist)]).await
    }

    async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        Ok(connect_via(self.pgvane.port(), APP_USER, APP_PASSWORD, APP_DB).await?.0)
    }

    /// `SHOW BACKENDS` as rows of column → value (NULL as "").
    async fn backends(&self) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        console_rows(self.pgvane.port(), "BACKENDS").await
    }

    /// The nodes SHOW POOLS lists pools of the database `app` on.
    async fn pool_nodes(&self) -> anyhow::Result<std::collections::BTreeSet<String>> {
        let (console, _task) = connect_via(self.pgvane.port(), APP_USER, APP_PASSWORD, "pgvane").await?;
        let mut nodes = std::collections::BTreeSet::new();
        for message in console.simple_query("SHOW POOLS").await? {
            if let SimpleQueryMessage::Row(row) = message {
                if row.get("database") == Some(APP_DB) {
                    nodes.insert(row.get("node").unwrap_or("").to_owned());
                }
            }
        }
        Ok(nodes)
    }

    /// The SHOW BACKENDS row of `node`.
    async fn backend(&self, node: &PgCluster) -> anyhow::Result<BTreeMap<String, String>> {
        let port = node.port().to_string();
        let rows = self.backends().await?;
        rows.into_iter()
            .find(|r| r["port"] == port)
            .ok_or_else(|| anyhow::anyhow!("no SHOW BACKENDS row for port {port}"))
    }

    /// Waits (up to 20 s) until SHOW BACKENDS shows `node` (a row for it, once it has one)
    /// with `column` = `value`.
    async fn wait_backend(&self, node: &PgCluster, column: &str, value: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // A node a RELOAD is adding has no row until the reload has run.
            let row = self.backend(node).await.unwrap_or_default();
            if row.get(column).map(String::as_str) == Some(value) {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "SHOW BACKENDS never showed {column} = {value} for port {}: {row:?}\n--- pgvane log ---\n{}",
                    node.port(),
                    tail(&self.pgvane.log(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

/// `pg_is_in_recovery()` and `inet_server_port()` as seen by the server `sql` ran on; `sql`
/// must end with those two columns.
async fn where_ran(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<(bool, u16)> {
    let row = simple_row(client, sql).await?;
    let [.., recovery, port] = row.as_slice() else { anyhow::bail!("{sql}: {row:?}") };
    Ok((recovery == "t", port.parse()?))
}

const WHERE: &str = "select pg_is_in_recovery(), inet_server_port()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_discovered_and_shown() -> anyhow::Result<()> {
    let r = Replicated::start(Setup::default()).await?;
    r.wait_backend(&r.primary, "writer", "1").await?;
    r.wait_backend(&r.replica, "reads", "1").await?;
    let primary = r.backend(&r.primary).await?;
    let replica = r.backend(&r.replica).await?;
    println!("SHOW BACKENDS:\n  {primary:?}\n  {replica:?}");
    assert_eq!((primary["database"].as_str(), primary["host"].as_str()), (APP_DB, "127.0.0.1"));
    assert_eq!(
        (primary["role"].as_str(), primary["health"].as_str(), primary["reads"].as_str()),
        ("primary", "up", "0")
    );
    assert_eq!(
        (replica["role"].as_str(), replica["health"].as_str(), replica["writer"].as_str()),
        ("replica", "up", "0")
    );
    assert_eq!((replica["lag_bytes"].as_str(), replica["lag_ms"].as_str()), ("0", "0"), "an idle replica is caught up");
    assert_eq!((primary["origin"].as_str(), primary["error"].as_str()), ("configured", ""));
    assert!(primary["last_check"].ends_with(" UTC"), "{primary:?}");
    assert_eq!(primary["last_switchover"], "", "no switchover happened");

    // Without a plugin, the default route is the primary: reads and writes run there.
    let client = r.client().await?;
    assert_eq!(where_ran(&client, WHERE).await?, (false, r.primary.port()));
    client.batch_execute("insert into t values (1)").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_route_replica_reads_on_the_replica() -> anyhow::Result<()> {
    let r = Replicated::start(Setup { database: "default_route = \"replica\"", ..Setup::default() }).await?;
    r.wait_backend(&r.replica, "reads", "1").await?;
    let client = r.client().await?;
    for _ in 0..3 {
        assert_eq!(where_ran(&client, WHERE).await?, (true, r.replica.port()));
        let row = client.query_one("select pg_is_in_recovery(), inet_server_port()", &[]).await?;
        assert!(row.get::<_, bool>(0), "extended protocol too");
    }
    // A write sent there is refused by the standby itself.
    let err = client.batch_execute("insert into t values (1)").await.expect_err("the replica is read-only");
    assert_eq!(err.code().map(|c| c.code()), Some("25006"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_split_reads_on_the_replica_writes_on_the_primary_through_one_endpoint() -> anyhow::Result<()> {
    for mode in ["session", "transaction"] {
        // No monitor_user: the monitor logs in with the first client's SCRAM keys, so that
        // client's login waits for the roles to be discovered.
        let setup = Setup { mode, rw_split: true, monitor_user: false, ..Setup::default() };
        let r = Replicated::start(setup).await?;
        r.primary.exec_in(APP_DB, "create sequence s; alter sequence s owner to app").await?;
        r.replica.wait_caught_up(&r.primary, Duration::from_secs(10)).await?;
        let client = r.client().await?;
        r.wait_backend(&r.replica, "reads", "1").await?;
        let (p, rep) = (r.primary.port(), r.replica.port());
        for round in 0..3 {
            assert_eq!(where_ran(&client, WHERE).await?, (true, rep), "{mode} {round}: a read");
            let row = client.query_one("select pg_is_in_recovery(), $1::int", &[&round]).await?;
            assert!(row.get::<_, bool>(0), "{mode} {round}: a read over the extended protocol");
            let write = "select nextval('s'), pg_is_in_recovery(), inet_server_port()";
            assert_eq!(where_ran(&client, write).await?, (false, p), "{mode} {round}: a write function");
            client.batch_execute("insert into t values (1)").await?;
            client.batch_execute("begin").await?;
            assert_eq!(where_ran(&client, WHERE).await?, (false, p), "{mode} {round}: a read-write transaction");
            client.batch_execute("commit").await?;
            client.batch_execute("begin read only").await?;
            assert_eq!(where_ran(&client, WHERE).await?, (true, rep), "{mode} {round}: a READ ONLY transaction");
            client.batch_execute("commit").await?;
        }
        let n: i64 = r
            .primary
            .connect(APP_USER, APP_PASSWORD, APP_DB)
            .await?
            .query_one("select count(*) from t", &[])
            .await?
            .get(0);
        assert_eq!(n, 3, "{mode}: the inserts reached the primary");
        r.replica.wait_caught_up(&r.primary, Duration::from_secs(10)).await?;
        let seen = simple_row(&client, "select count(*), pg_is_in_recovery() from t").await?;
        assert_eq!(seen, ["3", "t"], "{mode}: and streamed to the replica, where reads see them");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_fall_back_to_the_primary_while_the_replica_is_down() -> anyhow::Result<()> {
    let mut r = Replicated::start(Setup { rw_split: true, ..Setup::default() }).await?;
    r.wait_backend(&r.replica, "reads", "1").await?;
    let client = r.client().await?;
    assert_eq!(where_ran(&client, WHERE).await?, (true, r.replica.port()));
    r.replica.stop();
    r.wait_backend(&r.replica, "health", "down").await?;
    let row = r.backend(&r.replica).await?;
    println!("replica down: {row:?}");
    assert!(!row["error"].is_empty() && row["reads"] == "0", "{row:?}");
    for _ in 0..5 {
        assert_eq!(where_ran(&client, WHERE).await?, (false, r.primary.port()), "reads fall back to the primary");
    }
    // Back up: it is checked again after server_failed_delay_ms and gets reads again.
    r.replica.restart().await?;
    r.wait_backend(&r.replica, "reads", "1").await?;
    assert_eq!(where_ran(&client, WHERE).await?, (true, r.replica.port()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_gets_no_reads_until_it_catches_up() -> anyhow::Result<()> {
    let setup = Setup { settings: "max_replica_lag_ms = 300", rw_split: true, ..Setup::default() };
    let r = Replicated::start(setup).await?;
    r.wait_backend(&r.replica, "reads", "1").await?;
    let client = r.client().await?;
    assert_eq!(where_ran(&client, WHERE).await?, (true, r.replica.port()));

    r.replica.pause_replay().await?;
    r.primary.exec_in(APP_DB, "insert into t values (42)").await?;
    r.wait_backend(&r.replica, "reads", "0").await?;
    let row = r.backend(&r.replica).await?;
    println!("replica lagging: {row:?}");
    assert_eq!(row["health"], "up", "lagging is not down: {row:?}");
    assert!(row["lag_bytes"].parse::<u64>()? > 0 && row["lag_ms"].parse::<u64>()? > 300, "{row:?}");
    // Reads go to the primary and see the row the replica has not replayed.
    let row =
        simple_row(&client, "select count(*), pg_is_in_recovery(), inet_server_port() from t where x = 42").await?;
    assert_eq!(row, ["1", "f", r.primary.port().to_string().as_str()]);

    r.replica.resume_replay().await?;
    r.wait_backend(&r.replica, "reads", "1").await?;
    let row = simple_row(&client, "select count(*), pg_is_in_recovery() from t where x = 42").await?;
    assert_eq!(row, ["1", "t"], "caught up: reads are back on the replica");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_balanced_round_robin_over_two_replicas() -> anyhow::Result<()> {
    let r = Replicated::start(Setup { database: "default_route = \"replica\"", ..Setup::default() }).await?;
    let second = PgCluster::start_replica_of(&r.primary).await?;
    // A client's login creates its pools on every node; RELOAD adds them on new nodes.
    let client = r.client().await?;
    let node = |c: &PgCluster| format!("127.0.0.1:{}", c.port());
    assert_eq!(r.pool_nodes().await?, [node(&r.primary), node(&r.replica)].into());
    // RELOAD with the second replica added to `hosts`.
    let path = r.pgvane.config_path();
    let text = std::fs::read_to_string(&path)?;
    let hosts = format!("\"127.0.0.1:{}\"]", r.replica.port());
    let more = format!("\"127.0.0.1:{}\", \"127.0.0.1:{}\"]", r.replica.port(), second.port());
    std::fs::write(&path, text.replacen(&hosts, &more, 1))?;
    r.pgvane.signal("HUP")?;
    r.wait_backend(&second, "reads", "1").await?;
    r.wait_backend(&r.replica, "reads", "1").await?;
    assert_eq!(r.pool_nodes().await?, [node(&r.primary), node(&r.replica), node(&second)].into());
    let mut ports = BTreeMap::new();
    for _ in 0..10 {
        let (recovery, port) = where_ran(&client, WHERE).await?;
        assert!(recovery);
        *ports.entry(port).or_insert(0) += 1;
    }
    println!("reads per replica port: {ports:?}");
    assert_eq!(ports.len(), 2, "both replicas get reads: {ports:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_no_reachable_primary_gives_a_clear_error_and_pgvane_keeps_serving() -> anyhow::Result<()> {
    // Every node refuses the monitor (no such database on the servers): clients wait
    // switchover_timeout_ms for a primary, then get 57P03 naming what the nodes said.
    let setup = Setup { settings: "switchover_timeout_ms = 1000", database: "dbname = \"nope\"", ..Setup::default() };
    let r = Replicated::start(setup).await?;
    let err = connect_via(r.pgvane.port(), APP_USER, APP_PASSWORD, APP_DB).await.expect_err("no primary");
    let message = format!("{err:#}");
    println!("{message}");
    assert_eq!(pgvane_tests::fixture::sqlstate(&err).as_deref(), Some("57P03"), "{message}");
    assert!(message.contains("switchover_timeout_ms") && message.contains("\"nope\" does not exist"), "{message}");
    let row = r.backend(&r.primary).await?;
    assert_eq!(row["health"], "down", "{row:?}");
    // The proxy still serves: the console answers, and so does the database after a fix.
    let text = std::fs::read_to_string(r.pgvane.config_path())?;
    std::fs::write(r.pgvane.config_path(), text.replacen("dbname = \"nope\"", "", 1))?;
    let (console, _task) = connect_via(r.pgvane.port(), APP_USER, APP_PASSWORD, "pgvane").await?;
    console.simple_query("RELOAD").await?;
    r.wait_backend(&r.primary, "writer", "1").await?;
    let client = r.client().await?;
    assert_eq!(where_ran(&client, WHERE).await?, (false, r.primary.port()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planned_switchover_under_write_load() -> anyhow::Result<()> {
    const CLIENTS: usize = 4;
    let mut r = Replicated::start(Setup::default()).await?;
    r.wait_backend(&r.replica, "reads", "1").await?;
    let idle = r.client().await?;
    assert_eq!(where_ran(&idle, WHERE).await?, (false, r.primary.port()));

    // The load: each client inserts in autocommit, as fast as it can.
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(r.client().await?);
    }
    let load = WriteLoad::start(
        clients,
        Writes {
            simple: |client, i| format!("insert into t values ({})", client as i32 * 1_000_000 + i),
            extended: "insert into t values ($1)",
            params: |client, i| vec![client as i32 * 1_000_000 + i],
        },
    );
    let t0 = load.t0;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The planned switchover: stop the primary (fast shutdown), promote the replica.
    let stop_began = t0.elapsed();
    let mut old_primary = r.primary;
    let old_primary = tokio::task::spawn_blocking(move || {
        old_primary.stop();
        old_primary
    })
    .await?;
    let stopped = t0.elapsed();
    r.replica.promote().await?;
    let promoted = t0.elapsed();
    r.primary = old_primary;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = load.stop().await?;
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    let mut ok_ends: Vec<Duration> = outcomes.iter().filter(|o| o.error.is_none()).map(|o| o.end).collect();
    ok_ends.sort();
    // The write-unavailability window: the longest time without a successful write.
    let window = ok_ends.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    let backend = r.backend(&r.replica).await?;
    let log = r.pgvane.log();
    let replays: Vec<&str> = log.lines().filter(|l| l.contains("run again")).collect();
    println!("replays: {replays:#?}");
    println!(
        "switchover under load: {} clients, {} statements, {} failed {:?}; stop took {:?}, promote {:?}; \
         write-unavailability window {:?}; pgvane switchover_ms {}",
        CLIENTS,
        outcomes.len(),
        failed.len(),
        failed
            .iter()
            .map(|o| (
                o.client,
                o.error.clone().unwrap_or_default(),
                o.start.checked_sub(stop_began),
                o.end.checked_sub(stop_began)
            ))
            .collect::<Vec<_>>(),
        stopped - stop_began,
        promoted - stopped,
        window,
        backend["switchover_ms"],
    );
    assert_eq!((backend["writer"].as_str(), backend["role"].as_str()), ("1", "primary"), "{backend:?}");
    assert_eq!(backend["switchover_from"], format!("127.0.0.1:{}", r.primary.port()));
    // No client was inside a transaction: none sees an error. A statement in flight when
    // the old primary shut down was rolled back there and ran again on the new writer; every
    // later one waited for the new writer.
    assert!(failed.is_empty(), "{} failed statements", failed.len());
    for client in 0..CLIENTS {
        let after = outcomes.iter().filter(|o| o.client == client && o.start > promoted && o.error.is_none()).count();
        assert!(after > 0, "client {client} wrote nothing after the switchover");
    }
    // The idle client saw nothing: its next statement runs on the new writer.
    assert_eq!(where_ran(&idle, WHERE).await?, (false, r.replica.port()));
    let rows: i64 =
        r.replica.connect(APP_USER, APP_PASSWORD, APP_DB).await?.query_one("select count(*) from t", &[]).await?.get(0);
    // Every acknowledged write survived (a fast shutdown sends all WAL to the standby), and
    // none ran twice.
    assert_eq!(rows as usize, outcomes.len(), "rows on the new primary vs acknowledged inserts");
    Ok(())
}

/// Statements running on the old writer when it shuts down: outside a transaction they run
/// again on the new writer and the client gets their real result (the extended-protocol one
/// after its BindComplete had already reached the client, so pgvane must not repeat it);
/// inside a transaction block the client gets the server's error and its session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statements_in_flight_at_a_switchover_run_again_unless_in_a_transaction() -> anyhow::Result<()> {
    let mut r = Replicated::start(Setup::default()).await?;
    r.wait_backend(&r.replica, "reads", "1").await?;
    let (simple, extended, in_transaction) = (r.client().await?, r.client().await?, r.client().await?);
    // A named statement prepared beforehand: the Bind/Execute/Sync in flight is answered
    // BindComplete at once, then nothing until pg_sleep ends.
    let statement = extended.prepare("select $1::int + 1, inet_server_port() from pg_sleep(1.5)").await?;
    in_transaction.batch_execute("begin; insert into t values (1)").await?;

    let simple_task =
        tokio::spawn(
            async move { (where_ran(&simple, "select pg_sleep(1.5), false, inet_server_port()").await, simple) },
        );
    let extended_task = tokio::spawn(async move {
        let row = extended.query_one(&statement, &[&41i32]).await;
        (row.map(|row| (row.get::<_, i32>(0), row.get::<_, i32>(1))), extended)
    });
    let transaction_task =
        tokio::spawn(async move { (in_transaction.simple_query("select pg_sleep(1.5)").await, in_transaction) });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut old_primary = r.primary;
    let old_primary = tokio::task::spawn_blocking(move || {
        old_primary.stop();
        old_primary
    })
    .await?;
    r.replica.promote().await?;
    r.primary = old_primary;
    let new_port = r.replica.port();

    let (ran, simple) = simple_task.await?;
    assert_eq!(ran.context("the simple Query")?, (false, new_port), "the simple Query ran again on the new writer");
    let (row, extended) = extended_task.await?;
    let row = row.context("the extended-protocol statement")?;
    assert_eq!(row, (42, i32::from(new_port)), "the extended-protocol statement ran again on the new writer");
    // The transaction cannot be replayed: the client hears what the server said, and its
    // session ends, as with a direct connection (it must not take the lost transaction for
    // a live one).
    let (result, in_transaction) = transaction_task.await?;
    let error = result.expect_err("a transaction in flight on the old writer cannot be replayed");
    assert_eq!(error.code().map(|c| c.code()), Some("57P01"), "{error}");
    assert!(in_transaction.simple_query("select 1").await.is_err(), "the transaction's session ended");
    // The other sessions go on, on the new writer, as does a new one.
    let again = r.client().await?;
    for client in [&simple, &extended, &again] {
        assert_eq!(where_ran(client, WHERE).await?, (false, new_port));
    }
    let rows: i64 = again.query_one("select count(*) from t", &[]).await?.get(0);
    assert_eq!(rows, 0, "the transaction's insert was rolled back with the old writer");
    Ok(())
}

/// A writer that refuses writes (SQLSTATE 25006, as a demoted one does) is replaced at once,
/// not at the next health check: the refused statement fails, the next one waits for the
/// writer pgvane finds and runs there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_refusing_writes_is_replaced_at_once() -> anyhow::Result<()> {
    // Health checks so rare that only the refused write can make pgvane look again.
    let r = Replicated::start(Setup { check_period_ms: 600_000, ..Setup::default() }).await?;
    r.wait_backend(&r.replica, "role", "replica").await?;
    let client = r.client().await?;
    let insert = "insert into t values (1) returning inet_server_port()";
    assert_eq!(simple_row(&client, insert).await?, [r.primary.port().to_string()]);

    // The old writer turns read-only (its sessions stay up) and the replica is promoted.
    r.primary.exec("alter system set default_transaction_read_only = on").await?;
    r.primary.exec("select pg_reload_conf()").await?;
    r.replica.promote().await?;
    let refused = client.simple_query(insert).await.expect_err("the old writer refuses the write");
    assert_eq!(refused.code().map(|c| c.code()), Some("25006"), "{refused}");
    assert_eq!(
        simple_row(&client, insert).await?,
        [r.replica.port().to_string()],
        "the next write runs on the new writer"
    );
    let backend = r.backend(&r.replica).await?;
    assert_eq!(
        (backend["writer"].as_str(), backend["switchover_from"].clone()),
        ("1", format!("127.0.0.1:{}", r.primary.port()))
    );
    Ok(())
}
