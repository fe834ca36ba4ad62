//! Write-leader routing by a `role_query` (issue 22), against a simulated multi-writer group:
//! three independent PostgreSQL 15 primaries, all accepting writes as PGD's nodes do, each
//! answering the role query from a one-row table `node_role` that the test controls, as each
//! PGD node answers from its own view of the Raft-elected write leader. Every write the
//! clients make records, in the same statement, the role its node had then
//! (`insert into t select …, role from node_role`), so the rows on each node say whether it
//! was the leader when the write committed there.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pgvane_tests::fixture::{console_rows, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::load::{Outcome, WriteLoad, Writes};
use pgvane_tests::{connect_via, tail, PgCluster, Pgvane, SUPERUSER, SUPERUSER_PASSWORD};
use tokio_postgres::SimpleQueryMessage;

const ROLE_QUERY: &str = "select role from node_role";

/// Three primaries with the `app` user and database, and pgvane with `app` as a cluster of
/// them whose writer is named by [`ROLE_QUERY`].
struct Group {
    nodes: Vec<PgCluster>,
    pgvane: Pgvane,
}

impl Group {
    /// Starts the nodes, node `i` answering `roles[i]`.
    async fn start(roles: [&str; 3]) -> anyhow::Result<Group> {
        let mut nodes = Vec::new();
        for role in roles {
            let node = PgCluster::start().await?;
            node.create_user(APP_USER, APP_PASSWORD).await?;
            node.create_database(APP_DB, APP_USER).await?;
            node.exec_in(
                APP_DB,
                &format!(
                    "create table node_role(role text not null); insert into node_role values ('{role}');\n\
                     grant select on node_role to app;\n\
                     create table t(client int, i int, role text); alter table t owner to app"
                ),
            )
            .await?;
            nodes.push(node);
        }
        // One SCRAM verifier on every node (as replication would give them), so that the
        // keys a client's proof yields log in to each.
        let verifier = nodes[0].scram_verifier(APP_USER).await?;
        for node in &nodes[1..] {
            node.exec(&format!("alter role {APP_USER} password '{verifier}'")).await?;
        }
        let userlist = format!("\"{APP_USER}\" \"{verifier}\"\n\"{SUPERUSER}\" \"{SUPERUSER_PASSWORD}\"\n");
        let hosts: Vec<String> = nodes.iter().map(|n| format!("\"127.0.0.1:{}\"", n.port())).collect();
        let config = format!(
            "[pgvane]\nlisten_port = 0\nauth_type = \"scram-sha-256\"\nauth_file = \"userlist.txt\"\n\
             pool_mode = \"transaction\"\nadmin_users = [\"{APP_USER}\"]\nmonitor_user = \"{SUPERUSER}\"\n\
             health_check_period_ms = 100\nserver_failed_delay_ms = 300\n\n\
             [databases.app]\nhosts = [{}]\nrole_query = \"{ROLE_QUERY}\"\n",
            hosts.join(", ")
        );
        let pgvane = Pgvane::start(&config, &[("userlist.txt", &userlist)]).await?;
        Ok(Group { nodes, pgvane })
    }

    async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        Ok(connect_via(self.pgvane.port(), APP_USER, APP_PASSWORD, APP_DB).await?.0)
    }

    /// Makes node `i` answer `role` (directly on the node, as its own view would change).
    async fn set_role(&self, i: usize, role: &str) -> anyhow::Result<()> {
        self.nodes[i].exec_in(APP_DB, &format!("update node_role set role = '{role}'")).await
    }

    /// The index of the node whose port is `port`.
    fn node_of(&self, port: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.port().to_string() == port)
    }

    /// `SHOW BACKENDS` as rows of column → value (NULL as ""), in node order.
    async fn backends(&self) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        let rows = console_rows(self.pgvane.port(), "BACKENDS").await?;
        let mut ordered = Vec::new();
        for node in &self.nodes {
            let port = node.port().to_string();
            match rows.iter().find(|r: &&BTreeMap<String, String>| r["port"] == port) {
                Some(row) => ordered.push(row.clone()),
                None => anyhow::bail!("no SHOW BACKENDS row for port {port}: {rows:?}"),
            }
        }
        Ok(ordered)
    }

    /// Waits (up to 20 s) until SHOW BACKENDS satisfies `holds`; returns those rows.
    async fn wait_backends(
        &self,
        what: &str,
        holds: impl Fn(&[BTreeMap<String, String>]) -> bool,
    ) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let rows = self.backends().await?;
            if holds(&rows) {
                return Ok(rows);
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "SHOW BACKENDS never showed {what}: {rows:#?}\n--- pgvane log ---\n{}",
                    tail(&self.pgvane.log(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until node `i` is the writer.
    async fn wait_writer(&self, i: usize) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        self.wait_backends(&format!("node {i} as the writer"), |rows| rows[i]["writer"] == "1").await
    }

    /// Waits until pgvane reports a split view.
    async fn wait_split(&self) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        self.wait_backends("a split view", |rows| {
            rows.iter().all(|r| r["writer"] == "0" && r["writer_wait"].starts_with("split view"))
        })
        .await
    }

    /// The rows of `t` on node `i`, counted by the role recorded with each.
    async fn rows_by_role(&self, i: usize) -> anyhow::Result<BTreeMap<String, i64>> {
        let direct = self.nodes[i].connect(SUPERUSER, SUPERUSER_PASSWORD, APP_DB).await?;
        let rows = direct.query("select coalesce(role, 'NULL'), count(*) from t group by 1", &[]).await?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1))).collect())
    }
}

/// A write that reports the port of the node it ran on.
const INSERT_RETURNING_PORT: &str = "insert into t select 0, 0, role from node_role returning inet_server_port()";

/// The port `client`'s write ran on.
async fn write_port(client: &tokio_postgres::Client) -> anyhow::Result<String> {
    for message in client.simple_query(INSERT_RETURNING_PORT).await? {
        if let SimpleQueryMessage::Row(row) = message {
            return Ok(row.get(0).unwrap_or("").to_owned());
        }
    }
    anyhow::bail!("no row from {INSERT_RETURNING_PORT}")
}

/// A text bar `width` characters long at most, proportional to `value / max`.
fn bar(value: u128, max: u128, width: u128) -> String {
    "█".repeat((value * width / max.max(1)).max(u128::from(value > 0)) as usize)
}

/// The largest gap between two successful writes that ended within `from..to`.
fn window(ok_ends: &[Duration], from: Duration, to: Duration) -> Duration {
    let within: Vec<Duration> = ok_ends.iter().copied().filter(|e| *e >= from && *e < to).collect();
    within.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_write_leader_moves_under_write_load() -> anyhow::Result<()> {
    const CLIENTS: usize = 6;
    let g = Group::start(["writer", "replica", "replica"]).await?;
    g.wait_writer(0).await?;
    let idle = g.client().await?;
    assert_eq!(g.node_of(&write_port(&idle).await?), Some(0), "writes go to the leader");
    // A client in a transaction block on the first leader when the leadership moves.
    let (in_transaction, in_transaction_conn) = connect_via(g.pgvane.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
    in_transaction.batch_execute("begin; insert into t select -1, 0, role from node_role").await?;

    // The load: each client writes in autocommit as fast as it can, half over the simple
    // protocol, half over the extended one.
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(g.client().await?);
    }
    let load = WriteLoad::start(
        clients,
        Writes {
            simple: |client, i| format!("insert into t select {client}, {i}, role from node_role"),
            extended: "insert into t select $1, $2, role from node_role",
            params: |client, i| vec![client as i32, i],
        },
    );
    let t0 = load.t0;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Two moves, 0 → 1 then 1 → 2, each as an election shows on the nodes: the new leader
    // claims the lead while the old one still does (a split view, during which pgvane
    // pauses writes), then, as soon as pgvane shows the split, the old one steps down. A
    // statement that took the old leader from pgvane just before the split was seen and got
    // its connection after it finds the writer has changed and moves to the new one.
    let mut moves = Vec::new();
    for (from, to) in [(0, 1), (1, 2)] {
        let began = t0.elapsed();
        g.set_role(to, "writer").await?;
        g.wait_split().await?;
        let split_seen = t0.elapsed();
        g.set_role(from, "replica").await?;
        let stepped_down = t0.elapsed();
        let rows = g.wait_writer(to).await?;
        let resolved = t0.elapsed();
        let switchover_ms = rows[to]["switchover_ms"].clone();
        assert_eq!(rows[to]["switchover_from"], format!("127.0.0.1:{}", g.nodes[from].port()));
        moves.push((from, to, began, split_seen, stepped_down, resolved, switchover_ms));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let outcomes = load.stop().await?;
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    let mut ok_ends: Vec<Duration> = outcomes.iter().filter(|o| o.error.is_none()).map(|o| o.end).collect();
    ok_ends.sort();
    let mut per_node = Vec::new();
    for i in 0..g.nodes.len() {
        per_node.push(g.rows_by_role(i).await?);
    }
    let committed: Vec<i64> = per_node.iter().map(|roles| roles.values().sum()).collect();

    // The figures.
    println!(
        "write leader moves under load: {CLIENTS} clients, {} statements, {} failed",
        outcomes.len(),
        failed.len()
    );
    let end_of_load = ok_ends.last().copied().unwrap_or_default();
    let windows: Vec<Duration> = moves
        .iter()
        .enumerate()
        .map(|(k, m)| {
            let until = moves.get(k + 1).map_or(end_of_load + Duration::from_millis(1), |next| next.2);
            window(&ok_ends, m.2.saturating_sub(Duration::from_millis(200)), until)
        })
        .collect();
    let widest = windows.iter().max().copied().unwrap_or_default().as_millis();
    for ((from, to, began, split_seen, stepped_down, resolved, switchover_ms), w) in moves.iter().zip(&windows) {
        println!(
            "  move {from} -> {to}: window {:>5} ms {:<40} (split seen after {} ms, old leader stepped down at +{} ms, \
             new leader used at +{} ms; pgvane switchover_ms {switchover_ms})",
            w.as_millis(),
            bar(w.as_millis(), widest, 40),
            (*split_seen - *began).as_millis(),
            (*stepped_down - *began).as_millis(),
            (*resolved - *began).as_millis(),
        );
    }
    println!("  failed statements: {:>5} {}", failed.len(), bar(failed.len() as u128, outcomes.len() as u128, 40));
    for o in failed.iter().take(10) {
        println!("    client {}: {:?} at {:?}..{:?}", o.client, o.error, o.start, o.end);
    }
    let most = committed.iter().copied().max().unwrap_or_default() as u128;
    println!("  committed writes per leader:");
    for (i, roles) in per_node.iter().enumerate() {
        println!(
            "    node {i} (127.0.0.1:{}) {:>6} {:<40} by role then: {roles:?}",
            g.nodes[i].port(),
            committed[i],
            bar(committed[i] as u128, most, 40)
        );
    }

    // Every committed write ran on the leader of its moment.
    for (i, node) in g.nodes.iter().enumerate() {
        let direct = node.connect(SUPERUSER, SUPERUSER_PASSWORD, APP_DB).await?;
        for row in direct.query("select client, i, role from t where role <> 'writer'", &[]).await? {
            let (client, n, role): (i32, i32, String) = (row.get(0), row.get(1), row.get(2));
            let ran = outcomes.iter().filter(|o| o.client == client as usize).nth(n as usize);
            println!("  node {i} took a write as {role}: client {client} #{n}, {:?}", ran.map(|o| (o.start, o.end)));
        }
    }
    println!(
        "  moves (began, split seen, stepped down, resolved): {:?}",
        moves.iter().map(|m| (m.2, m.3, m.4, m.5)).collect::<Vec<_>>()
    );
    for (i, roles) in per_node.iter().enumerate() {
        assert_eq!(
            roles.keys().collect::<Vec<_>>(),
            ["writer"],
            "node {i} took writes while not the leader: {roles:?}"
        );
    }
    assert!(committed.iter().all(|&n| n > 0), "every node led for a while: {committed:?}");
    // Autocommit writes in flight on a leader that stepped down ran again on the new one:
    // no client saw an error, every acknowledged write is there once, none twice.
    assert!(failed.is_empty(), "{} failed statements", failed.len());
    let acknowledged = outcomes.len() + 1; // and the idle client's first write
    assert_eq!(committed.iter().sum::<i64>() as usize, acknowledged, "rows on the nodes vs acknowledged writes");
    for client in 0..CLIENTS {
        let after = outcomes.iter().filter(|o| o.client == client && o.start > moves[1].5 && o.error.is_none()).count();
        assert!(after > 0, "client {client} wrote nothing after the last move");
    }
    // The transaction open on the first leader failed with the usual error: its session was
    // ended there, as a fast shutdown ends it, and the client's session ended with a FATAL
    // error (57P01 if the server's word reached it, 08006 "server closed the connection
    // unexpectedly" when, as here, the client was idle in its transaction: the same as at a
    // streaming switchover). Its write is gone.
    let next = in_transaction.simple_query("commit").await;
    assert!(next.is_err(), "the transaction's session was ended");
    let ended = in_transaction_conn.await?.expect_err("the connection ended with an error");
    let (code, message) = ended.as_db_error().map(|e| (e.code().code(), e.message())).unwrap_or_default();
    println!("  transaction in flight on the old leader: FATAL {code} {message}");
    assert!(matches!(code, "57P01" | "08006"), "{ended:?}");
    let lost: i64 = g.nodes[0]
        .connect(SUPERUSER, SUPERUSER_PASSWORD, APP_DB)
        .await?
        .query_one("select count(*) from t where client = -1", &[])
        .await?
        .get(0);
    assert_eq!(lost, 0, "the transaction's write was rolled back");
    // The idle client saw nothing: its next write runs on the new leader.
    assert_eq!(g.node_of(&write_port(&idle).await?), Some(2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_view_pauses_writes_until_it_resolves() -> anyhow::Result<()> {
    let g = Group::start(["writer", "replica", "replica"]).await?;
    g.wait_writer(0).await?;
    let client = g.client().await?;
    assert_eq!(g.node_of(&write_port(&client).await?), Some(0));

    // Node 1 claims the lead while node 0 still does: pgvane picks neither.
    g.set_role(1, "writer").await?;
    let rows = g.wait_split().await?;
    let because = rows[0]["writer_wait"].clone();
    println!("SHOW BACKENDS during the split: writer_wait = {because:?}");
    let claimants = format!("127.0.0.1:{}, 127.0.0.1:{}", g.nodes[0].port(), g.nodes[1].port());
    assert_eq!(because, format!("split view: {claimants} all answer writer"));
    assert_eq!((rows[1]["role"].as_str(), rows[1]["health"].as_str()), ("primary", "up"), "{rows:?}");
    assert_eq!(rows[2]["writer_wait"], because, "the same on every row of the database");

    // A write waits through the split…
    let began = Instant::now();
    let write = tokio::spawn(async move { (write_port(&client).await, began.elapsed()) });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!write.is_finished(), "a write ran during the split view");
    // …and runs on the one writer left once node 0 steps down.
    g.set_role(0, "replica").await?;
    let (port, waited) = write.await?;
    let port = port?;
    println!("the write waited {} ms and ran on port {port}", waited.as_millis());
    assert_eq!(g.node_of(&port), Some(1));
    let rows = g.backends().await?;
    assert_eq!((rows[1]["writer"].as_str(), rows[1]["writer_wait"].as_str()), ("1", ""), "{rows:?}");
    assert_eq!(rows[1]["switchover_from"], format!("127.0.0.1:{}", g.nodes[0].port()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_role_query_fails_is_marked_down() -> anyhow::Result<()> {
    let g = Group::start(["writer", "replica", "replica"]).await?;
    g.wait_writer(0).await?;
    // Node 2's query fails; node 1 answers something that is not a role.
    g.nodes[2].exec_in(APP_DB, "drop table node_role").await?;
    g.set_role(1, "leader").await?;
    let rows = g
        .wait_backends("nodes 1 and 2 down", |rows| rows[1]["health"] == "down" && rows[2]["health"] == "down")
        .await?;
    println!("node 1: {:?}\nnode 2: {:?}", rows[1]["error"], rows[2]["error"]);
    assert!(rows[2]["error"].contains("relation \"node_role\" does not exist"), "{:?}", rows[2]);
    assert!(
        rows[1]["error"].contains("\"leader\"") && rows[1]["error"].contains("writer, replica or none"),
        "{:?}",
        rows[1]
    );
    assert_eq!((rows[1]["reads"].as_str(), rows[2]["reads"].as_str()), ("0", "0"));
    // The writer is unaffected.
    let client = g.client().await?;
    assert_eq!(g.node_of(&write_port(&client).await?), Some(0));

    // Fixed, they come back after server_failed_delay_ms: node 2 as a replica, node 1
    // answering `none` (up, but no statements).
    g.nodes[2]
        .exec_in(APP_DB, "create table node_role(role text not null); insert into node_role values ('replica')")
        .await?;
    g.set_role(1, "none").await?;
    let rows = g.wait_backends("nodes 1 and 2 up", |rows| rows[1]["health"] == "up" && rows[2]["reads"] == "1").await?;
    assert_eq!((rows[1]["role"].as_str(), rows[1]["reads"].as_str(), rows[1]["writer"].as_str()), ("none", "0", "0"));
    assert_eq!((rows[2]["role"].as_str(), rows[2]["error"].as_str()), ("replica", ""));
    Ok(())
}
