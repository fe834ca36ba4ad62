//! Unix-domain sockets on both legs: clients on pgvane's `unix_socket_dir` (psql, pgbench,
//! tokio-postgres, a raw SSLRequest, a cancel) and servers whose `host` is a socket directory
//! (PostgreSQL's own socket from the harness). The server side is checked on the server:
//! `pg_stat_activity.client_port` is -1 only for a session that came over a unix-domain socket.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use pgvane_tests::fixture::{console_rows, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::{client_command_at, connect_via, describe_output, PgCluster, Pgvane, PGBENCH, PSQL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_postgres::NoTls;

/// A cluster with the `app` user and database.
async fn cluster() -> Result<PgCluster> {
    let cluster = PgCluster::start().await?;
    cluster.create_user(APP_USER, APP_PASSWORD).await?;
    cluster.create_database(APP_DB, APP_USER).await?;
    Ok(cluster)
}

/// A directory for pgvane's socket, which outlives the test's pgvane.
fn socket_dir() -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix("pgvane-sock-").tempdir_in(pgvane_tests::scratch_dir())?)
}

/// pgvane with its socket in `dir`, `app`'s server at `server_host` (a host or a socket
/// directory), transaction pooling, `app` an admin, and `settings` added to `[pgvane]`.
async fn pgvane(dir: &Path, cluster: &PgCluster, server_host: &str, settings: &str) -> Result<Pgvane> {
    let config = format!(
        "[pgvane]\nlisten_port = 0\nauth_type = \"scram-sha-256\"\nauth_file = \"userlist.txt\"\n\
         admin_users = [\"{APP_USER}\"]\npool_mode = \"transaction\"\ndefault_pool_size = 4\n\
         unix_socket_dir = \"{}\"\n{settings}\n\n\
         [databases.app]\nhost = \"{server_host}\"\nport = {}\n",
        dir.display(),
        cluster.port()
    );
    Pgvane::start(&config, &[("userlist.txt", &format!("\"{APP_USER}\" \"{APP_PASSWORD}\"\n"))]).await
}

fn socket_file(dir: &Path, pgvane: &Pgvane) -> PathBuf {
    dir.join(format!(".s.PGSQL.{}", pgvane.port()))
}

/// A tokio-postgres client on pgvane's unix-domain socket.
async fn unix_client(dir: &Path, port: u16, db: &str) -> Result<tokio_postgres::Client> {
    let mut config = tokio_postgres::Config::new();
    config.host_path(dir).port(port).user(APP_USER).password(APP_PASSWORD).dbname(db);
    config.connect_timeout(Duration::from_secs(10));
    let (client, connection) = config.connect(NoTls).await.context("connecting over the unix-domain socket")?;
    tokio::spawn(connection);
    Ok(client)
}

/// (client_addr is null, client_port) of the server session running this query: -1 and null
/// for a session that came over a unix-domain socket.
const SERVER_LEG: &str =
    "select (client_addr is null)::text, client_port::text from pg_stat_activity where pid = pg_backend_pid()";

fn psql(dir: &Path, port: u16, db: &str, sql: &str) -> Result<String> {
    let out = client_command_at(PSQL, dir.to_str().context("path")?, port, APP_USER, APP_PASSWORD)
        .args(["-d", db, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()?;
    ensure!(out.status.success(), "psql -h {}: {}", dir.display(), describe_output(&out));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test]
async fn clients_on_the_unix_socket_reach_a_server_on_its_unix_socket() -> Result<()> {
    let cluster = cluster().await?;
    let dir = socket_dir()?;
    let server_dir = cluster.socket_dir();
    let pgvane =
        pgvane(dir.path(), &cluster, server_dir.to_str().context("path")?, "unix_socket_mode = \"0770\"").await?;
    let path = socket_file(dir.path(), &pgvane);
    let metadata = std::fs::metadata(&path).with_context(|| format!("{} is missing", path.display()))?;
    ensure!(metadata.file_type().is_socket(), "{} is not a socket", path.display());
    ensure!(metadata.permissions().mode() & 0o777 == 0o770, "mode {:o}", metadata.permissions().mode());
    // The line scripts read; printed right after the TCP one, which the harness waits for.
    let line = format!("pgvane unix socket {}", path.display());
    for _ in 0..100 {
        if pgvane.stdout().contains(&line) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(pgvane.stdout().contains(&line), "{}", pgvane.stdout());

    // psql (libpq) on pgvane's socket; the server session is on PostgreSQL's socket.
    ensure!(psql(dir.path(), pgvane.port(), APP_DB, SERVER_LEG)? == "true|-1", "the server leg is not a unix socket");
    ensure!(psql(dir.path(), pgvane.port(), APP_DB, "select current_user")? == APP_USER);

    // tokio-postgres: simple and extended protocol, a transaction, over both sockets.
    let client = unix_client(dir.path(), pgvane.port(), APP_DB).await?;
    let row = client.query_one(SERVER_LEG, &[]).await?;
    ensure!((row.get::<_, &str>(0), row.get::<_, &str>(1)) == ("true", "-1"));
    let sum: i64 = client.query_one("select $1::int8 + $2::int8", &[&40i64, &2i64]).await?.get(0);
    ensure!(sum == 42);
    client.batch_execute("create table t (n int); begin; insert into t values (1), (2); commit").await?;
    let n: i64 = client.query_one("select count(*) from t", &[]).await?.get(0);
    ensure!(n == 2);

    // A TCP client goes the same way to the same server socket.
    let (tcp, _task) = connect_via(pgvane.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
    let n: i64 = tcp.query_one("select count(*) from t", &[]).await?.get(0);
    ensure!(n == 2);

    // The console tells the two kinds of clients apart, and shows the servers on the socket.
    let clients = console_rows(pgvane.port(), "CLIENTS").await?;
    let on_socket: Vec<_> = clients.iter().filter(|c| c["addr"] == "unix").collect();
    ensure!(on_socket.len() == 1, "{clients:?}");
    ensure!(on_socket[0]["port"] == pgvane.port().to_string(), "{clients:?}");
    ensure!(clients.iter().any(|c| c["addr"] == "127.0.0.1"), "{clients:?}");
    let servers = console_rows(pgvane.port(), "SERVERS").await?;
    ensure!(!servers.is_empty() && servers.iter().all(|s| s["addr"] == "unix"), "{servers:?}");
    ensure!(servers.iter().all(|s| s["port"] == cluster.port().to_string()), "{servers:?}");
    Ok(())
}

#[tokio::test]
async fn an_ssl_request_on_the_socket_is_answered_n_even_where_tcp_requires_tls() -> Result<()> {
    let cluster = cluster().await?;
    let dir = socket_dir()?;
    let ca = pgvane_tests::tls::TestCa::new("unix")?;
    let certs = tempfile::tempdir()?;
    let (cert, key) = ca.server_cert()?.write(certs.path(), "server")?;
    let settings = format!(
        "client_tls_sslmode = \"require\"\nclient_tls_cert_file = \"{}\"\nclient_tls_key_file = \"{}\"",
        cert.display(),
        key.display()
    );
    let pgvane = pgvane(dir.path(), &cluster, cluster.host(), &settings).await?;
    let path = socket_file(dir.path(), &pgvane);

    // SSLRequest: 'N', and the plain-text login that follows is served.
    let mut raw = UnixStream::connect(&path).await?;
    raw.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).await?;
    ensure!(answer == *b"N", "SSLRequest answered {:?}", answer[0] as char);
    drop(raw);
    ensure!(psql(dir.path(), pgvane.port(), APP_DB, "select 1")? == "1");

    // Over TCP without TLS the same login is refused.
    let err = match connect_via(pgvane.port(), APP_USER, APP_PASSWORD, APP_DB).await {
        Ok(_) => anyhow::bail!("a plain TCP login was accepted with client_tls_sslmode = require"),
        Err(e) => e,
    };
    ensure!(format!("{err:#}").contains("requires TLS"), "{err:#}");
    Ok(())
}

#[tokio::test]
async fn pgbench_runs_over_both_sockets_in_transaction_mode() -> Result<()> {
    let cluster = cluster().await?;
    let dir = socket_dir()?;
    let server_dir = cluster.socket_dir();
    let pgvane = pgvane(dir.path(), &cluster, server_dir.to_str().context("path")?, "").await?;
    let host = dir.path().to_str().context("path")?.to_owned();
    let port = pgvane.port();
    let run = move |args: &[&str]| {
        client_command_at(PGBENCH, &host, port, APP_USER, APP_PASSWORD).args(args).arg(APP_DB).output()
    };
    let out = run(&["-i", "-s", "1", "-q"])?;
    ensure!(out.status.success(), "pgbench -i: {}", describe_output(&out));
    for mode in ["simple", "extended", "prepared"] {
        let out = run(&["-c", "8", "-j", "2", "-t", "100", "-M", mode])?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(out.status.success(), "pgbench -M {mode}: {}", describe_output(&out));
        ensure!(stdout.contains("number of transactions actually processed: 800/800"), "-M {mode}:\n{stdout}");
        ensure!(stdout.contains("number of failed transactions: 0 "), "-M {mode}:\n{stdout}");
    }
    let direct = cluster.connect(APP_USER, APP_PASSWORD, APP_DB).await?;
    let n: i64 = direct.query_one("select count(*) from pgbench_history", &[]).await?.get(0);
    // pgbench empties pgbench_history before each run: the last run's transactions.
    ensure!(n == 800, "pgbench_history has {n} rows");
    Ok(())
}

#[tokio::test]
async fn a_cancel_over_the_socket_reaches_a_server_on_its_socket() -> Result<()> {
    let cluster = cluster().await?;
    let dir = socket_dir()?;
    let server_dir = cluster.socket_dir();
    let pgvane = pgvane(dir.path(), &cluster, server_dir.to_str().context("path")?, "").await?;
    let client = unix_client(dir.path(), pgvane.port(), APP_DB).await?;
    let cancel = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel_query(NoTls).await
    });
    let err = client.simple_query("select pg_sleep(30)").await.err().context("pg_sleep(30) was not cancelled")?;
    ensure!(err.code().map(|c| c.code()) == Some("57014"), "{err}");
    canceller.await??;
    ensure!(client.simple_query("select 1").await.is_ok(), "the client is unusable after its cancel");
    Ok(())
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_drain_removes_the_socket() -> Result<()> {
    let cluster = cluster().await?;
    let dir = socket_dir()?;
    let port = pgvane_tests::free_port()?;
    // What a killed pgvane leaves: a socket file nobody listens on.
    let path = dir.path().join(format!(".s.PGSQL.{port}"));
    drop(std::os::unix::net::UnixListener::bind(&path)?);
    ensure!(path.exists());
    let config = format!(
        "[pgvane]\nlisten_port = {port}\nauth_type = \"scram-sha-256\"\nauth_file = \"userlist.txt\"\n\
         unix_socket_dir = \"{}\"\n\n[databases.app]\nhost = \"{}\"\nport = {}\n",
        dir.path().display(),
        cluster.host(),
        cluster.port()
    );
    let pgvane = Pgvane::start(&config, &[("userlist.txt", &format!("\"{APP_USER}\" \"{APP_PASSWORD}\"\n"))]).await?;
    ensure!(psql(dir.path(), port, APP_DB, "select 1")? == "1");

    pgvane.signal("TERM")?;
    let status = pgvane.wait_exit(Duration::from_secs(20)).context("pgvane did not exit after SIGTERM")?;
    ensure!(status.success(), "{status}");
    ensure!(!path.exists(), "{} is still there after the shutdown", path.display());
    Ok(())
}

#[test]
fn check_refuses_a_bad_unix_socket_mode() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("pgvane.toml");
    let check = |config: &str| -> Result<std::process::Output> {
        std::fs::write(&path, config)?;
        Ok(std::process::Command::new(pgvane_tests::pgvane_bin()?).args(["check", "--config"]).arg(&path).output()?)
    };
    let config = |settings: &str| {
        format!("[pgvane]\nauth_type = \"trust\"\n{settings}\n[databases.app]\nhost = \"/var/run/postgresql\"\n")
    };
    let good = check(&config("unix_socket_dir = \"/run/pgvane\"\nunix_socket_mode = \"0770\""))?;
    ensure!(good.status.success(), "{}", describe_output(&good));
    for (settings, key) in [
        ("unix_socket_mode = \"0789\"", "pgvane.unix_socket_mode"),
        ("unix_socket_mode = \"rw\"", "pgvane.unix_socket_mode"),
        ("unix_socket_mode = 777", "unix_socket_mode"),
        ("unix_socket_dir = \"relative\"", "pgvane.unix_socket_dir"),
    ] {
        let out = check(&config(settings))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "accepted: {settings}");
        ensure!(stderr.contains(key), "{key} missing in: {stderr}");
    }
    Ok(())
}
