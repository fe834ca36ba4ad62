//! The admin console (virtual database `pgvane`), driven with psql as an operator would:
//! every SHOW, PAUSE/RESUME, RECONNECT, KILL, RELOAD (also under load, with good and bad
//! files), SIGHUP and SHUTDOWN; and who may use it.

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgvane_tests::fixture::{login_error, sqlstate, Proxied, ProxyOptions, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::{connect_via, describe_output, psql, tail};

/// `app` is an admin; `settings` adds lines to `[pgvane]`.
fn options(settings: &str) -> ProxyOptions {
    ProxyOptions { settings: format!("admin_users = [\"{APP_USER}\"]\n{settings}"), ..ProxyOptions::default() }
}

/// Runs `psql --csv -c <sql>` on the console (off the async threads: it may block).
async fn console(p: &Proxied, sql: &str) -> Output {
    let (port, sql) = (p.port(), sql.to_owned());
    tokio::task::spawn_blocking(move || psql(port, APP_USER, APP_PASSWORD, "pgvane", &["--csv", "-c", &sql]))
        .await
        .expect("psql task")
        .expect("running psql")
}

/// Runs a console command that must succeed; returns its stdout.
async fn console_ok(p: &Proxied, sql: &str) -> String {
    let out = console(p, sql).await;
    assert!(
        out.status.success(),
        "`{sql}` failed:\n{}\n--- pgvane log ---\n{}",
        describe_output(&out),
        tail(&p.pgvane.log(), 40)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a console command that must fail; returns psql's stderr.
async fn console_err(p: &Proxied, sql: &str) -> String {
    let out = console(p, sql).await;
    assert!(!out.status.success(), "`{sql}` must fail but succeeded:\n{}", describe_output(&out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Splits one CSV line (psql --csv quotes fields holding `,` or `"`).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                fields.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            (c, _) => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

type Row = BTreeMap<String, String>;

/// `SHOW <what>` as rows of column → value.
async fn show(p: &Proxied, what: &str) -> Vec<Row> {
    let out = console_ok(p, &format!("SHOW {what}")).await;
    let mut lines = out.lines();
    let header = csv_fields(lines.next().unwrap_or_default());
    lines.map(|line| header.iter().cloned().zip(csv_fields(line)).collect()).collect()
}

fn find<'a>(rows: &'a [Row], column: &str, value: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.get(column).map(String::as_str) == Some(value))
}

fn columns(rows: &[Row]) -> Vec<&str> {
    rows.first().map(|r| r.keys().map(String::as_str).collect()).unwrap_or_default()
}

/// Replaces `from` by `to` in pgvane's config file (which must contain it).
fn edit_config(p: &Proxied, from: &str, to: &str) {
    let path = p.pgvane.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "config has no {from:?}:\n{text}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_describe_pools_clients_servers_and_settings() -> anyhow::Result<()> {
    // Session mode: the client holds its server connection, so SHOW SERVERS has it active.
    let p = Proxied::start(options("default_pool_size = 7")).await?;
    let (client, _conn) = connect_via(p.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
    let pid = backend_pid(&client).await;
    client.simple_query("select 1; select 2").await?;

    let pools = show(&p, "POOLS").await;
    assert_eq!(
        columns(&pools),
        [
            "cl_active",
            "cl_waiting",
            "database",
            "maxwait",
            "maxwait_us",
            "node",
            "pool_mode",
            "sv_active",
            "sv_idle",
            "sv_login",
            "sv_tested",
            "user"
        ]
    );
    let pool = find(&pools, "database", APP_DB).expect("a pool for app");
    assert_eq!((pool["user"].as_str(), pool["cl_active"].as_str(), pool["sv_active"].as_str()), (APP_USER, "1", "1"));
    assert_eq!((pool["cl_waiting"].as_str(), pool["pool_mode"].as_str()), ("0", "session"));

    let clients = show(&p, "CLIENTS").await;
    let app_client = find(&clients, "database", APP_DB).expect("the app client");
    assert_eq!((app_client["type"].as_str(), app_client["state"].as_str()), ("C", "active"));
    assert_eq!(app_client["addr"], "127.0.0.1");
    assert!(app_client["connect_time"].ends_with(" UTC"), "{app_client:?}");
    let console_client = find(&clients, "database", "pgvane").expect("the console's own client");
    assert_eq!(console_client["application_name"], "psql");

    let servers = show(&p, "SERVERS").await;
    let server = find(&servers, "remote_pid", &pid.to_string()).expect("the app client's server connection");
    assert_eq!(
        (server["state"].as_str(), server["database"].as_str(), server["user"].as_str()),
        ("active", APP_DB, APP_USER)
    );
    assert_eq!(
        (server["port"].as_str(), server["close_needed"].as_str()),
        (p.cluster.port().to_string().as_str(), "0")
    );
    // Client and server name each other.
    assert_eq!(server["link"], app_client["id"]);
    assert_eq!(app_client["link"], server["id"]);

    let databases = show(&p, "DATABASES").await;
    let db = find(&databases, "name", APP_DB).expect("app in SHOW DATABASES");
    assert_eq!((db["host"].as_str(), db["database"].as_str(), db["pool_size"].as_str()), ("127.0.0.1", APP_DB, "7"));
    assert_eq!(
        (db["current_connections"].as_str(), db["current_client_connections"].as_str(), db["paused"].as_str()),
        ("1", "1", "0")
    );

    let stats = show(&p, "STATS").await;
    let s = find(&stats, "database", APP_DB).expect("stats for app");
    assert!(s["total_query_count"].parse::<u64>()? >= 2, "{s:?}");
    assert!(s["total_xact_count"].parse::<u64>()? >= 2, "{s:?}");

    let config = show(&p, "CONFIG").await;
    assert_eq!(columns(&config), ["changeable", "default", "key", "value"]);
    let size = find(&config, "key", "default_pool_size").expect("default_pool_size");
    assert_eq!((size["value"].as_str(), size["default"].as_str(), size["changeable"].as_str()), ("7", "20", "yes"));
    assert_eq!(find(&config, "key", "listen_port").expect("listen_port")["changeable"], "no");
    assert_eq!(find(&config, "key", "admin_users").expect("admin_users")["value"], "[\"app\"]");
    assert_eq!(find(&config, "key", "auth_file").expect("auth_file")["value"], "userlist.txt");

    let version = show(&p, "VERSION").await;
    assert!(version[0]["version"].starts_with("pgvane "), "{version:?}");

    // HELP is a notice; keywords are case-insensitive; several commands in one query.
    let out = console(&p, "show help").await;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Console usage"),
        "{}",
        describe_output(&out)
    );
    let out = console_ok(&p, "show version; Show Databases;").await;
    assert!(out.contains("pgvane ") && out.contains("current_connections"), "{out}");

    // Traffic is counted query by query, while the client is still connected.
    let s = find(&show(&p, "STATS").await, "database", APP_DB).expect("stats for app").clone();
    assert!(s["total_received"].parse::<u64>()? > 0 && s["total_sent"].parse::<u64>()? > 0, "{s:?}");
    Ok(())
}

#[tokio::test]
async fn only_admins_get_in_and_mistakes_get_clear_errors() -> anyhow::Result<()> {
    let p =
        Proxied::start(ProxyOptions { settings: "admin_users = [\"someone_else\"]".into(), ..ProxyOptions::default() })
            .await?;
    let err = login_error(p.port(), APP_USER, APP_PASSWORD, "pgvane").await;
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err:#}");
    drop(p);

    let p = Proxied::start(options("")).await?;
    let stderr = console_err(&p, "FROBNICATE").await;
    assert!(
        stderr.contains("unknown command \"FROBNICATE\"") && stderr.contains("HINT") && stderr.contains("SHOW"),
        "{stderr}"
    );
    let stderr = console_err(&p, "SHOW FDS").await;
    assert!(stderr.contains("unknown SHOW item"), "{stderr}");
    let stderr = console_err(&p, "RELOAD now").await;
    assert!(stderr.contains("takes no arguments"), "{stderr}");
    let stderr = console_err(&p, "PAUSE nosuchdb").await;
    assert!(stderr.contains("database \"nosuchdb\" does not exist"), "{stderr}");
    let stderr = console_err(&p, "KILL pgvane").await;
    assert!(stderr.contains("admin console"), "{stderr}");
    let stderr = console_err(&p, "RESUME").await;
    assert!(stderr.contains("not paused"), "{stderr}");

    // A driver: errors carry SQLSTATEs, the extended protocol is refused, and the session
    // stays usable after each.
    let (admin, _conn) = connect_via(p.port(), APP_USER, APP_PASSWORD, "pgvane").await?;
    let err = admin.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42601"), "{err}");
    let err = admin.query("SHOW VERSION", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("0A000"), "{err}");
    let rows = admin.simple_query("SHOW VERSION").await?;
    assert!(rows.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_waits_for_transactions_and_holds_new_ones_until_resume() -> anyhow::Result<()> {
    let p = Proxied::start(options("pool_mode = \"transaction\"")).await?;
    let holder = p.client().await?;
    let waiter = Arc::new(p.client().await?);
    holder.simple_query("BEGIN; select 1").await?;

    // A CancelRequest (psql's Ctrl-C) ends a waiting PAUSE; the pause stays in force.
    let (admin, _admin_conn) = connect_via(p.port(), APP_USER, APP_PASSWORD, "pgvane").await?;
    let cancel = admin.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel_query(tokio_postgres::NoTls).await
    });
    let err = admin.simple_query("PAUSE app").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    canceller.await??;
    assert_eq!(find(&show(&p, "DATABASES").await, "name", APP_DB).unwrap()["paused"], "1");
    console_ok(&p, "RESUME app").await;

    // PAUSE waits for the open transaction.
    let pause = tokio::spawn({
        let port = p.port();
        async move {
            tokio::task::spawn_blocking(move || psql(port, APP_USER, APP_PASSWORD, "pgvane", &["-c", "PAUSE app"]))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!pause.is_finished(), "PAUSE must wait while a transaction is open");
    holder.simple_query("COMMIT").await?;
    let out = tokio::time::timeout(Duration::from_secs(10), pause).await????;
    assert!(out.status.success(), "{}", describe_output(&out));

    // Paused: no server connection left, new transactions wait, the console still answers.
    assert_eq!(find(&show(&p, "DATABASES").await, "name", APP_DB).unwrap()["paused"], "1");
    assert!(show(&p, "SERVERS").await.is_empty(), "PAUSE closes the server connections");
    let query = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.query_one("select 41 + 1", &[]).await.map(|r| r.get::<_, i32>(0)) }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!query.is_finished(), "a query must wait while its database is paused");
    let pools = show(&p, "POOLS").await;
    assert_eq!(find(&pools, "database", APP_DB).unwrap()["cl_waiting"], "1", "{pools:?}");
    let stderr = console_err(&p, "PAUSE app").await;
    assert!(stderr.contains("database \"app\" is already paused"), "{stderr}");

    console_ok(&p, "RESUME app").await;
    let answer = tokio::time::timeout(Duration::from_secs(10), query).await???;
    assert_eq!(answer, 42);
    assert_eq!(find(&show(&p, "DATABASES").await, "name", APP_DB).unwrap()["paused"], "0");
    holder.simple_query("select 1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_everything() -> anyhow::Result<()> {
    let p = Proxied::start(options("pool_mode = \"transaction\"")).await?;
    let client = Arc::new(p.client().await?);
    client.simple_query("select 1").await?;
    console_ok(&p, "PAUSE").await;
    assert!(console_err(&p, "PAUSE app").await.contains("already paused"));
    let stderr = console_err(&p, "RESUME app").await;
    assert!(stderr.contains("RESUME without a database"), "{stderr}");
    let query = tokio::spawn({
        let client = client.clone();
        async move { client.simple_query("select 1").await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!query.is_finished(), "PAUSE without a database pauses app too");
    console_ok(&p, "RESUME").await;
    tokio::time::timeout(Duration::from_secs(10), query).await???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_replaces_server_connections_after_their_transaction() -> anyhow::Result<()> {
    let p = Proxied::start(options("pool_mode = \"transaction\"\ndefault_pool_size = 1")).await?;
    let client = p.client().await?;
    let before = backend_pid(&client).await;
    assert_eq!(backend_pid(&client).await, before, "pool of one: the same backend");

    client.simple_query("BEGIN").await?;
    console_ok(&p, "RECONNECT app").await;
    let servers = show(&p, "SERVERS").await;
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["close_needed"], "1", "{servers:?}");
    assert_eq!(backend_pid(&client).await, before, "a transaction in flight keeps its backend");
    client.simple_query("COMMIT").await?;

    let after = backend_pid(&client).await;
    assert_ne!(after, before, "RECONNECT must give new server connections");
    console_ok(&p, "RECONNECT").await;
    assert_ne!(backend_pid(&client).await, after);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_disconnects_the_clients_of_a_database() -> anyhow::Result<()> {
    let p = Proxied::start(options("pool_mode = \"transaction\"")).await?;
    let (idle, idle_conn) = connect_via(p.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
    let (busy, busy_conn) = connect_via(p.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
    idle.simple_query("select 1").await?;
    busy.simple_query("BEGIN; select 1").await?;
    let busy_pid = backend_pid(&busy).await;

    console_ok(&p, "KILL app").await;
    for conn in [idle_conn, busy_conn] {
        let ended = tokio::time::timeout(Duration::from_secs(10), conn).await?.expect("connection task");
        if let Err(e) = ended {
            if let Some(db) = e.as_db_error() {
                assert_eq!(db.code().code(), "57P01", "{db:?}");
            }
        }
    }
    assert!(idle.simple_query("select 1").await.is_err() && busy.simple_query("select 1").await.is_err());

    // The transaction was rolled back and its server connection closed.
    let direct = p.direct_superuser().await?;
    let mut gone = false;
    for _ in 0..100 {
        let n: i64 =
            direct.query_one("select count(*) from pg_stat_activity where pid = $1", &[&busy_pid]).await?.get(0);
        if n == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the killed client's server connection must be closed");
    // KILL does not pause: new clients get in, and the console is alive.
    p.client().await?.simple_query("select 1").await?;
    console_ok(&p, "SHOW VERSION").await;
    Ok(())
}

/// Clients running queries (half of them in explicit transactions) until told to stop;
/// counts successes and keeps every failure.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    pids: Arc<Mutex<Vec<i32>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(p: &Proxied, clients: usize) -> anyhow::Result<Load> {
        let mut load = Load {
            stop: Arc::default(),
            done: Arc::default(),
            failures: Arc::default(),
            pids: Arc::default(),
            tasks: Vec::new(),
        };
        for i in 0..clients {
            let (mut client, _conn) = connect_via(p.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
            let (stop, done, failures, pids) =
                (load.stop.clone(), load.done.clone(), load.failures.clone(), load.pids.clone());
            load.tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let result = if i % 2 == 0 {
                        client.query_one("select pg_backend_pid()", &[]).await.map(|r| r.get::<_, i32>(0))
                    } else {
                        async {
                            let tx = client.transaction().await?;
                            let pid: i32 = tx.query_one("select pg_backend_pid()", &[]).await?.get(0);
                            tx.query_one("select pg_sleep(0.005)", &[]).await?;
                            tx.commit().await?;
                            Ok(pid)
                        }
                        .await
                    };
                    match result {
                        Ok(pid) => {
                            done.fetch_add(1, Ordering::SeqCst);
                            pids.lock().unwrap().push(pid);
                        }
                        Err(e) => {
                            // Counted; this client stops (its connection may be gone).
                            failures.lock().unwrap().push(format!("client {i}: {e:?}"));
                            break;
                        }
                    }
                }
            }));
        }
        Ok(load)
    }

    /// Lets the clients run for `d`; returns how many queries completed meanwhile.
    async fn run_for(&self, d: Duration) -> u64 {
        let before = self.done.load(Ordering::SeqCst);
        tokio::time::sleep(d).await;
        self.done.load(Ordering::SeqCst) - before
    }

    fn take_pids(&self) -> Vec<i32> {
        std::mem::take(&mut *self.pids.lock().unwrap())
    }

    async fn stop(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for task in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.done.load(Ordering::SeqCst), failures)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // Also when a test fails half-way: no client task outlives it.
        self.stop.store(true, Ordering::SeqCst);
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_applies_good_configs_refuses_bad_ones_and_fails_no_query() -> anyhow::Result<()> {
    let p = Proxied::start(options("pool_mode = \"transaction\"\ndefault_pool_size = 20")).await?;
    let load = Load::start(&p, 10).await?;
    assert!(load.run_for(Duration::from_millis(700)).await > 0, "the load must be running");

    // A good reload of a [pgvane] key: applied at once.
    edit_config(&p, "default_pool_size = 20", "default_pool_size = 4");
    console_ok(&p, "RELOAD").await;
    assert_eq!(find(&show(&p, "CONFIG").await, "key", "default_pool_size").unwrap()["value"], "4");
    assert_eq!(find(&show(&p, "DATABASES").await, "name", APP_DB).unwrap()["pool_size"], "4");
    assert!(load.run_for(Duration::from_millis(700)).await > 0);
    let servers = show(&p, "SERVERS").await;
    assert!(servers.len() <= 4, "the pool shrank to 4: {servers:?}");

    // A good reload of the database entry: a new size and a new server target. Server
    // connections are replaced as their transactions end.
    let old_pids: std::collections::BTreeSet<i32> = load.take_pids().into_iter().collect();
    let config = std::fs::read_to_string(p.pgvane.config_path())?;
    std::fs::write(
        p.pgvane.config_path(),
        format!("{}pool_size = 2\n", config.replace("host = \"127.0.0.1\"", "host = \"localhost\"")),
    )?;
    let out = console(&p, "RELOAD").await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let notices = String::from_utf8_lossy(&out.stderr);
    assert!(notices.contains("databases changed: app") && notices.contains("reconnecting"), "{notices}");
    let db = find(&show(&p, "DATABASES").await, "name", APP_DB).unwrap().clone();
    assert_eq!((db["host"].as_str(), db["pool_size"].as_str()), ("localhost", "2"));
    assert!(load.run_for(Duration::from_millis(1000)).await > 0);
    load.take_pids();
    assert!(load.run_for(Duration::from_millis(500)).await > 0);
    let new_pids: std::collections::BTreeSet<i32> = load.take_pids().into_iter().collect();
    assert!(
        new_pids.is_disjoint(&old_pids),
        "server connections of the old target must be gone: {new_pids:?} vs {old_pids:?}"
    );
    assert!(new_pids.len() <= 2, "pool_size = 2 must hold: {new_pids:?}");
    let servers = show(&p, "SERVERS").await;
    assert!(servers.len() <= 2 && servers.iter().all(|s| s["close_needed"] == "0"), "{servers:?}");

    // Bad files are refused; the configuration in force stays and keeps serving.
    let good = std::fs::read_to_string(p.pgvane.config_path())?;
    std::fs::write(p.pgvane.config_path(), format!("{good}\nthis is not toml\n"))?;
    let stderr = console_err(&p, "RELOAD").await;
    assert!(stderr.contains("configuration not reloaded") && stderr.contains("pgvane.toml"), "{stderr}");
    std::fs::write(
        p.pgvane.config_path(),
        good.replace("default_pool_size = 4", "default_pool_size = 4\npool_size_typo = 3"),
    )?;
    let stderr = console_err(&p, "RELOAD").await;
    assert!(stderr.contains("pool_size_typo"), "{stderr}");
    std::fs::write(p.pgvane.config_path(), good.replace("default_pool_size = 4", "default_pool_size = 0"))?;
    let stderr = console_err(&p, "RELOAD").await;
    assert!(stderr.contains("default_pool_size"), "{stderr}");
    assert_eq!(find(&show(&p, "CONFIG").await, "key", "default_pool_size").unwrap()["value"], "4");
    assert_eq!(find(&show(&p, "DATABASES").await, "name", APP_DB).unwrap()["pool_size"], "2");
    assert!(load.run_for(Duration::from_millis(700)).await > 0);

    let (done, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} queries failed: {failures:#?}",
        failures.len(),
        done + failures.len() as u64
    );
    assert!(done > 50, "only {done} queries ran");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_databases() -> anyhow::Result<()> {
    let p = Proxied::start(options("pool_mode = \"transaction\"")).await?;
    let port = p.cluster.port();
    let config = std::fs::read_to_string(p.pgvane.config_path())?;
    let with_other =
        format!("{config}\n[databases.other]\nhost = \"127.0.0.1\"\nport = {port}\ndbname = \"{APP_DB}\"\n");
    std::fs::write(p.pgvane.config_path(), &with_other)?;
    let out = console(&p, "RELOAD").await;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stderr).contains("databases added: other"),
        "{}",
        describe_output(&out)
    );

    let (other, _conn) = connect_via(p.port(), APP_USER, APP_PASSWORD, "other").await?;
    other.simple_query("select 1").await?;
    std::fs::write(p.pgvane.config_path(), &config)?;
    let out = console(&p, "RELOAD").await;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stderr).contains("databases removed: other"),
        "{}",
        describe_output(&out)
    );

    // Its clients get an error at their next transaction; new logins are refused.
    let err = other.simple_query("select 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("3D000"), "{err}");
    let err = login_error(p.port(), APP_USER, APP_PASSWORD, "other").await;
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"), "{err:#}");
    assert!(find(&show(&p, "POOLS").await, "database", "other").is_none());
    p.client().await?.simple_query("select 1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_keeps_the_old_config_when_the_new_one_is_bad() -> anyhow::Result<()> {
    let p = Proxied::start(options("default_pool_size = 20")).await?;
    edit_config(&p, "default_pool_size = 20", "default_pool_size = 9");
    p.pgvane.signal("HUP")?;
    let mut value = String::new();
    for _ in 0..100 {
        value = find(&show(&p, "CONFIG").await, "key", "default_pool_size").unwrap()["value"].clone();
        if value == "9" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(value, "9", "SIGHUP must reload");

    edit_config(&p, "default_pool_size = 9", "default_pool_size = 9\nbogus_key = 1");
    p.pgvane.signal("HUP")?;
    let mut logged = false;
    for _ in 0..100 {
        if p.pgvane.log().contains("configuration not reloaded") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged, "a bad file on SIGHUP must be logged:\n{}", tail(&p.pgvane.log(), 20));
    assert!(p.pgvane.is_running());
    assert_eq!(find(&show(&p, "CONFIG").await, "key", "default_pool_size").unwrap()["value"], "9");
    p.client().await?.simple_query("select 1").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_disconnects_clients_and_exits_cleanly() -> anyhow::Result<()> {
    let p = Proxied::start(options("")).await?;
    let (client, conn) = connect_via(p.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
    client.simple_query("select 1").await?;
    let out = console(&p, "SHUTDOWN").await;
    assert!(out.status.success(), "{}", describe_output(&out));
    let status = p.pgvane.wait_exit(Duration::from_secs(10)).expect("pgvane must exit after SHUTDOWN");
    assert!(status.success(), "exit status {status}:\n{}", tail(&p.pgvane.log(), 20));
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await?.expect("connection task");
    if let Err(e) = ended {
        if let Some(db) = e.as_db_error() {
            assert_eq!(db.code().code(), "57P01", "{db:?}");
        }
    }
    Ok(())
}
