//! Smoke test of the harness itself: PgCluster starts, answers queries, can
//! create users and databases, exposes SCRAM verifiers, and cleans up.

use pgvane_tests::{connect_via, psql, PgCluster};

#[tokio::test]
async fn pg_cluster_works() -> anyhow::Result<()> {
    let cluster = PgCluster::start().await?;
    assert_eq!(cluster.host(), "127.0.0.1");

    // Superuser query through tokio-postgres.
    let client = cluster.connect("postgres", "postgres", "postgres").await?;
    let row = client.query_one("select current_user::text, 1 + 1", &[]).await?;
    assert_eq!(row.get::<_, String>(0), "postgres");
    assert_eq!(row.get::<_, i32>(1), 2);
    let method: String = client.query_one("show password_encryption", &[]).await?.get(0);
    assert_eq!(method, "scram-sha-256");

    // A user and a database it owns.
    cluster.create_user("alice", "s3cret'pw").await?;
    cluster.create_database("alicedb", "alice").await?;
    let (alice, _task) = connect_via(cluster.port(), "alice", "s3cret'pw", "alicedb").await?;
    alice.batch_execute("create table t(id int primary key); insert into t values (1), (2)").await?;
    let row = alice.query_one("select current_user::text, current_database()::text, count(*) from t", &[]).await?;
    assert_eq!(row.get::<_, String>(0), "alice");
    assert_eq!(row.get::<_, String>(1), "alicedb");
    assert_eq!(row.get::<_, i64>(2), 2);

    // Wrong password is refused (SCRAM is enforced).
    assert!(connect_via(cluster.port(), "alice", "wrong", "alicedb").await.is_err());

    let verifier = cluster.scram_verifier("alice").await?;
    assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");

    // psql works against it too.
    let out = psql(cluster.port(), "alice", "s3cret'pw", "alicedb", &["-At", "-c", "select count(*) from t"])?;
    assert!(out.status.success(), "{}", pgvane_tests::describe_output(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");

    // Stop/restart keeps the data.
    let mut cluster = cluster;
    drop(alice);
    cluster.stop();
    assert!(cluster.connect("postgres", "postgres", "postgres").await.is_err());
    cluster.restart().await?;
    let client = cluster.connect("alice", "s3cret'pw", "alicedb").await?;
    let n: i64 = client.query_one("select count(*) from t", &[]).await?.get(0);
    assert_eq!(n, 2);

    // Drop stops the postmaster and removes the directory.
    let pid = cluster.pid().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let dir = cluster.dir().to_path_buf();
    assert!(cluster.log().contains("database system is ready to accept connections"));
    drop(cluster);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "postmaster {pid} still alive");
    assert!(!dir.exists(), "{} not removed", dir.display());
    Ok(())
}

#[tokio::test]
async fn clusters_start_in_parallel() -> anyhow::Result<()> {
    let (a, b, c) = tokio::try_join!(PgCluster::start(), PgCluster::start(), PgCluster::start())?;
    assert!(a.port() != b.port() && b.port() != c.port() && a.port() != c.port());
    for cluster in [&a, &b, &c] {
        cluster.exec("create table x(i int)").await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_replica_streams_pauses_and_is_promoted() -> anyhow::Result<()> {
    use std::time::Duration;
    let primary = PgCluster::start().await?;
    primary.exec("create table t(x int); insert into t values (1)").await?;
    let replica = PgCluster::start_replica_of(&primary).await?;
    assert_ne!(primary.port(), replica.port());
    assert!(!primary.is_in_recovery().await? && replica.is_in_recovery().await?);
    // Real streaming replication: a walsender on the primary, the base backup's data and
    // later commits on the replica, writes refused there.
    let senders: i64 = primary
        .connect("postgres", "postgres", "postgres")
        .await?
        .query_one("select count(*) from pg_stat_replication where state = 'streaming'", &[])
        .await?
        .get(0);
    assert_eq!(senders, 1);
    primary.exec("insert into t values (2)").await?;
    replica.wait_caught_up(&primary, Duration::from_secs(10)).await?;
    let on_replica = replica.connect("postgres", "postgres", "postgres").await?;
    let n: i64 = on_replica.query_one("select count(*) from t", &[]).await?.get(0);
    assert_eq!(n, 2);
    let err = on_replica.batch_execute("insert into t values (3)").await.expect_err("a standby is read-only");
    assert_eq!(err.code().map(|c| c.code()), Some("25006"));

    // Paused replay: the replica falls behind and cannot catch up until resumed.
    replica.pause_replay().await?;
    primary.exec("insert into t values (3)").await?;
    assert!(replica.wait_caught_up(&primary, Duration::from_millis(500)).await.is_err(), "replay is paused");
    let n: i64 = on_replica.query_one("select count(*) from t", &[]).await?.get(0);
    assert_eq!(n, 2, "paused replay must not apply the new row");
    replica.resume_replay().await?;
    replica.wait_caught_up(&primary, Duration::from_secs(10)).await?;
    let n: i64 = on_replica.query_one("select count(*) from t", &[]).await?.get(0);
    assert_eq!(n, 3, "resumed replay applies it");

    // Promotion: the replica becomes a primary and takes writes.
    let mut primary = primary;
    primary.stop();
    replica.promote().await?;
    assert!(!replica.is_in_recovery().await?);
    on_replica.batch_execute("insert into t values (4)").await?;
    let n: i64 = on_replica.query_one("select count(*) from t", &[]).await?.get(0);
    assert_eq!(n, 4);
    Ok(())
}
