//! Routing statements to other `[databases]` entries with the regex-router plugin, across two
//! real PostgreSQL clusters: the seed's scenario (tablea on one cluster, tableb on another, one
//! client session querying both), in session and transaction modes, over the simple and the
//! extended protocol, pipelined, and inside transactions (where routes are ignored).

use futures_util::future::try_join_all;
use pgvane_tests::fixture::{plugin_path, sqlstate, Proxied, ProxyOptions, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::{client_config, quote_literal, PgCluster};
use tokio_postgres::SimpleQueryMessage;

/// The seed's setup: the client's own database `app` on one cluster holds `tablea`; the
/// `[databases]` entry `dev.2` is another cluster holding `tableb`.
struct TwoClusters {
    proxied: Proxied,
    other: PgCluster,
}

impl TwoClusters {
    async fn start(mode: &str) -> anyhow::Result<TwoClusters> {
        let other = PgCluster::start().await?;
        let router = plugin_path("regex_router")?;
        let extra = format!(
            "[databases.\"dev.2\"]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"{APP_DB}\"\n\n\
             [[plugins]]\nname = \"router\"\npath = \"{}\"\n[plugins.config]\n\
             rules = [\n\
               {{ usernameRegex = '.*', queryRegex = '.*tablea.*', dbkey = \"{APP_DB}\" }},\n\
               {{ usernameRegex = '^{APP_USER}$', queryRegex = '.*tableb.*', dbkey = \"dev.2\" }},\n\
             ]\n",
            other.port(),
            router.display()
        );
        let settings = format!("pool_mode = \"{mode}\"\ndefault_pool_size = 2");
        let proxied = Proxied::start(ProxyOptions { settings, extra, ..ProxyOptions::default() }).await?;
        // The auth file holds only app's SCRAM verifier: pgvane logs in to both clusters with
        // the keys the client's proof yields, so the other cluster stores the same verifier
        // (as an operator copying a role between clusters does).
        let verifier = proxied.cluster.scram_verifier(APP_USER).await?;
        other.exec(&format!("create role {APP_USER} login password {}", quote_literal(&verifier))).await?;
        other.create_database(APP_DB, APP_USER).await?;
        let own = proxied.cluster.connect(APP_USER, APP_PASSWORD, APP_DB).await?;
        own.batch_execute("create table tablea(v text); insert into tablea values ('from a')").await?;
        let theirs = other.connect(APP_USER, APP_PASSWORD, APP_DB).await?;
        theirs.batch_execute("create table tableb(v text); insert into tableb values ('from b')").await?;
        Ok(TwoClusters { proxied, other })
    }

    fn own_port(&self) -> i32 {
        i32::from(self.proxied.cluster.port())
    }

    fn other_port(&self) -> i32 {
        i32::from(self.other.port())
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

#[tokio::test]
async fn one_session_queries_tables_on_two_clusters() -> anyhow::Result<()> {
    for mode in ["session", "transaction"] {
        let t = TwoClusters::start(mode).await?;
        let client = t.proxied.client().await?;
        let (own, other) = (t.own_port().to_string(), t.other_port().to_string());
        for round in 0..3 {
            // Simple protocol: each table is found on its own cluster (the server's port says
            // which one ran the statement; each table exists on one cluster only).
            let a = simple_row(&client, "select v, inet_server_port() from tablea").await?;
            assert_eq!(a, ["from a", own.as_str()], "{mode} round {round}");
            let b = simple_row(&client, "select v, inet_server_port() from tableb").await?;
            assert_eq!(b, ["from b", other.as_str()], "{mode} round {round}");
            // A statement no rule matches runs on the client's own database.
            let unrouted = simple_row(&client, "select inet_server_port()").await?;
            assert_eq!(unrouted, [own.as_str()], "{mode} round {round}");
            // Extended protocol, unnamed statements.
            let row = client.query_one("select v, inet_server_port() from tableb where v <> $1", &[&"x"]).await?;
            assert_eq!((row.get::<_, String>(0), row.get::<_, i32>(1)), ("from b".to_owned(), t.other_port()));
        }
        // Named prepared statements follow their Parse, used between statements elsewhere.
        let on_b = client.prepare("select v, inet_server_port() from tableb").await?;
        let on_a = client.prepare("select v, inet_server_port() from tablea").await?;
        for _ in 0..3 {
            let b = client.query_one(&on_b, &[]).await?;
            assert_eq!(b.get::<_, i32>(1), t.other_port(), "{mode}: the statement prepared for tableb");
            client.simple_query("select 1").await?;
            let a = client.query_one(&on_a, &[]).await?;
            assert_eq!(a.get::<_, i32>(1), t.own_port(), "{mode}: the statement prepared for tablea");
        }
        // Writes route too.
        client.simple_query("insert into tableb values ('written through pgvane')").await?;
        let direct = t.other.connect(APP_USER, APP_PASSWORD, APP_DB).await?;
        let n: i64 = direct.query_one("select count(*) from tableb", &[]).await?.get(0);
        assert_eq!(n, 2, "{mode}: the insert must have reached the other cluster");
    }
    Ok(())
}

#[tokio::test]
async fn session_mode_keeps_the_clients_own_server_session_across_detours() -> anyhow::Result<()> {
    let t = TwoClusters::start("session").await?;
    let (client, connection) = client_config(t.proxied.port(), APP_USER, APP_PASSWORD, APP_DB)
        .application_name("routed-app")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    let pid_before = simple_row(&client, "select pg_backend_pid()").await?;
    client.batch_execute("set work_mem = '7MB'").await?;
    client.batch_execute("create temporary table scratch(x int)").await?;
    let b = simple_row(&client, "select v from tableb").await?;
    assert_eq!(b, ["from b"]);
    // Back home: the same server session, with its settings and temporary table.
    assert_eq!(simple_row(&client, "select pg_backend_pid()").await?, pid_before);
    assert_eq!(simple_row(&client, "show work_mem").await?, ["7MB"]);
    client.batch_execute("insert into scratch values (1)").await?;
    // The other cluster's server session is kept too (one per database the client used),
    // and got the client's startup parameters; a SET is its own server session's business.
    let other = simple_row(&client, "select pg_backend_pid(), current_setting('application_name') from tableb").await?;
    assert_eq!(other[1], "routed-app");
    client.simple_query("select 1").await?;
    let again = simple_row(&client, "select pg_backend_pid(), current_setting('application_name') from tableb").await?;
    assert_eq!(again, other);
    Ok(())
}

#[tokio::test]
async fn transaction_mode_carries_settings_to_the_other_cluster() -> anyhow::Result<()> {
    let t = TwoClusters::start("transaction").await?;
    let client = t.proxied.client().await?;
    client.batch_execute("set work_mem = '7MB'").await?;
    let b = simple_row(&client, "select v, current_setting('work_mem') from tableb").await?;
    assert_eq!(b, ["from b", "7MB"], "the client's SET must follow it to the other cluster");
    let a = simple_row(&client, "select v, current_setting('work_mem') from tablea").await?;
    assert_eq!(a, ["from a", "7MB"]);
    Ok(())
}

#[tokio::test]
async fn inside_a_transaction_a_route_is_ignored() -> anyhow::Result<()> {
    for mode in ["session", "transaction"] {
        let t = TwoClusters::start(mode).await?;
        let client = t.proxied.client().await?;
        client.batch_execute("begin").await?;
        assert_eq!(simple_row(&client, "select v from tablea").await?, ["from a"], "{mode}");
        // The transaction stays on its server, where tableb does not exist.
        let err = client.simple_query("select v from tableb").await.expect_err("must run in the transaction");
        assert_eq!(sqlstate(&err.into()).as_deref(), Some("42P01"), "{mode}");
        client.batch_execute("rollback").await?;
        // Outside the transaction routing applies again.
        assert_eq!(simple_row(&client, "select v from tableb").await?, ["from b"], "{mode}");
        // A transaction opened by a routed statement stays on the other cluster.
        client.batch_execute("begin; select v from tableb").await?;
        let port = simple_row(&client, "select inet_server_port()").await?;
        assert_eq!(port, [t.other_port().to_string()], "{mode}: unrouted statements stay in the transaction");
        client.batch_execute("commit").await?;
        assert!(t.proxied.pgvane.log().contains("route ignored inside a transaction"), "{mode}: not logged");
    }
    Ok(())
}

#[tokio::test]
async fn pipelined_statements_to_two_clusters_get_their_own_answers() -> anyhow::Result<()> {
    for mode in ["session", "transaction"] {
        let t = TwoClusters::start(mode).await?;
        let client = t.proxied.client().await?;
        let on_a = client.prepare("select v, inet_server_port(), $1::int from tablea").await?;
        let on_b = client.prepare("select v, inet_server_port(), $1::int from tableb").await?;
        // tokio-postgres sends these without waiting for answers: pgvane must let each
        // cluster finish before moving the next statement to the other one.
        let queries = (0..40i32).map(|i| {
            let statement = if i % 3 == 0 { &on_b } else { &on_a };
            let client = &client;
            async move { client.query_one(statement, &[&i]).await.map(|row| (i, row)) }
        });
        for (i, row) in try_join_all(queries).await? {
            let (expected_v, expected_port) =
                if i % 3 == 0 { ("from b", t.other_port()) } else { ("from a", t.own_port()) };
            assert_eq!(row.get::<_, String>(0), expected_v, "{mode} query {i}");
            assert_eq!(row.get::<_, i32>(1), expected_port, "{mode} query {i}");
            assert_eq!(row.get::<_, i32>(2), i, "{mode}: query {i} got another query's answer");
        }
    }
    Ok(())
}

#[tokio::test]
async fn rw_split_sends_reads_to_the_read_target_and_writes_to_the_primary() -> anyhow::Result<()> {
    // rw-split with `read_target`: reads go to another `[databases]` entry (here a second
    // cluster standing in for a reader), writes to the primary, the client's own database.
    let other = PgCluster::start().await?;
    let extra = format!(
        "[databases.reader]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"{APP_DB}\"\n\n\
         [[plugins]]\nname = \"rw-split\"\npath = \"{}\"\n[plugins.config]\nread_target = \"reader\"\n",
        other.port(),
        plugin_path("rw_split")?.display()
    );
    for mode in ["session", "transaction"] {
        let settings = format!("pool_mode = \"{mode}\"\ndefault_pool_size = 2");
        let extra = extra.clone();
        let p = Proxied::start(ProxyOptions { settings, extra, ..ProxyOptions::default() }).await?;
        let verifier = p.cluster.scram_verifier(APP_USER).await?;
        other.exec(&format!("drop database if exists {APP_DB}")).await?;
        other.exec(&format!("drop role if exists {APP_USER}")).await?;
        other.exec(&format!("create role {APP_USER} login password {}", quote_literal(&verifier))).await?;
        other.create_database(APP_DB, APP_USER).await?;
        let own = p.cluster.connect(APP_USER, APP_PASSWORD, APP_DB).await?;
        own.batch_execute("create sequence s; create table t(x int)").await?;
        let (own_port, reader_port) = (p.cluster.port().to_string(), other.port().to_string());

        let client = p.client().await?;
        let port = |sql: &'static str| {
            let client = &client;
            async move { simple_row(client, sql).await.map(|row| row.last().cloned().unwrap_or_default()) }
        };
        assert_eq!(port("select inet_server_port()").await?, reader_port, "{mode}: a read");
        assert_eq!(port("select nextval('s'), inet_server_port()").await?, own_port, "{mode}: a write function");
        assert_eq!(
            port("with w as (insert into t values (1) returning x) select x, inet_server_port() from w").await?,
            own_port,
            "{mode}: a data-modifying CTE"
        );
        let read: i32 = client.query_one("select inet_server_port()", &[]).await?.get(0);
        assert_eq!(read.to_string(), reader_port, "{mode}: a read over the extended protocol");
        client.batch_execute("begin read only").await?;
        assert_eq!(port("select inet_server_port()").await?, reader_port, "{mode}: a READ ONLY transaction");
        // (Separate messages: "commit; begin" in one would be decided inside the transaction.)
        client.batch_execute("commit").await?;
        client.batch_execute("begin").await?;
        assert_eq!(port("select inet_server_port()").await?, own_port, "{mode}: a read-write transaction");
        client.batch_execute("commit").await?;
        let n: i64 = own.query_one("select count(*) from t", &[]).await?.get(0);
        assert_eq!(n, 1, "{mode}: the write reached the primary");
    }
    Ok(())
}
