//! The one gate: nothing a client sends reaches a server without passing the policy chain.
//! Fastpath function calls are refused while plugins are loaded (and work, leaving no state
//! behind, when allowed: psql's large objects); unknown message types end the connection with
//! 08P01 and reach no server; a forbidden statement padded until a plugin gives up is refused,
//! never answered; and a RELOAD reaches statements clients prepared before it (psycopg).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use pgvane_tests::drivers;
use pgvane_tests::fixture::{plugin_path, sqlstate, Proxied, ProxyOptions, SecretKind, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::wire::Wire;
use pgvane_tests::{psql, tail};

/// The OID of `set_config(text, text, boolean)`.
const SET_CONFIG_OID: u32 = 2078;

/// tenant-guard refusing table `secrets`, failing closed.
fn guard(extra: &str) -> Result<String> {
    Ok(format!(
        "[[plugins]]\nname = \"guard\"\npath = \"{}\"\non_error = \"reject\"\n{extra}\n\
         [plugins.config]\nrules = [{{ tables = [\"secrets\"], sqlstate = \"42501\", message = \"{{table}} is forbidden\" }}]\n",
        plugin_path("tenant_guard")?.display()
    ))
}

/// pgvane with trust authentication (for raw protocol clients), the given settings and plugins.
async fn trusted(settings: &str, plugins: &str) -> Result<Proxied> {
    Proxied::start(ProxyOptions {
        auth_type: "trust",
        secret: SecretKind::Plain,
        settings: settings.to_owned(),
        extra: plugins.to_owned(),
        ..ProxyOptions::default()
    })
    .await
}

#[tokio::test]
async fn fastpath_calls_are_refused_while_plugins_are_loaded() -> Result<()> {
    let p = trusted("pool_mode = \"session\"", &guard("")?).await?;
    let mut wire = Wire::connect(p.port(), APP_USER, APP_DB).await?;
    wire.function_call(SET_CONFIG_OID, &["app.fastpath", "smuggled", "false"]);
    let (tags, msgs) = wire.roundtrip(1).await?;
    assert_eq!(tags, "EZ", "{msgs:?}");
    assert_eq!(msgs[0].sqlstate().as_deref(), Some("42501"));
    let message = msgs[0].field(b'M').unwrap_or_default();
    assert!(message.contains("function_calls"), "the error names the key: {message}");
    // The call never ran: the session (held for this client) has no such setting.
    wire.query("select coalesce(current_setting('app.fastpath', true), '')");
    let (tags, msgs) = wire.roundtrip(1).await?;
    assert_eq!(tags, "TDCZ", "{msgs:?}");
    assert_eq!(msgs[1].row(), vec![Some(String::new())]);
    Ok(())
}

#[tokio::test]
async fn allowed_fastpath_calls_leave_no_state_for_the_next_client() -> Result<()> {
    let settings = "pool_mode = \"transaction\"\ndefault_pool_size = 1\nfunction_calls = \"allow\"";
    let p = trusted(settings, &guard("")?).await?;
    let mut first = Wire::connect(p.port(), APP_USER, APP_DB).await?;
    first.function_call(SET_CONFIG_OID, &["app.fastpath", "leaked", "false"]);
    let (tags, msgs) = first.roundtrip(1).await?;
    assert_eq!(tags, "VZ", "the call runs: {msgs:?}");
    assert_eq!(String::from_utf8_lossy(&msgs[0].body[4..]), "leaked");
    // One server connection: the next client gets the same one, reset first.
    let mut second = Wire::connect(p.port(), APP_USER, APP_DB).await?;
    second.query("select coalesce(current_setting('app.fastpath', true), ''), pg_backend_pid()");
    let (tags, msgs) = second.roundtrip(1).await?;
    assert_eq!(tags, "TDCZ", "{msgs:?}");
    assert_eq!(msgs[1].row()[0].as_deref(), Some(""), "the fastpath call's setting reached another client");
    Ok(())
}

#[tokio::test]
async fn psql_large_objects_work_with_function_calls_allowed_and_not_by_default() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("in.bin");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&source, &content)?;
    let import = format!("\\lo_import '{}'", source.display());

    // Plugins loaded, key unset: refused.
    let p = Proxied::start(ProxyOptions {
        settings: "pool_mode = \"transaction\"".into(),
        extra: guard("")?,
        ..ProxyOptions::default()
    })
    .await?;
    let port = p.port();
    let cmd = import.clone();
    let out = tokio::task::spawn_blocking(move || psql(port, APP_USER, APP_PASSWORD, APP_DB, &["-c", &cmd])).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("function_calls"), "lo_import must be refused: {stderr}");
    drop(p);

    // Allowed: the object goes in and comes out whole, in transaction mode.
    let p = Proxied::start(ProxyOptions {
        settings: "pool_mode = \"transaction\"\ndefault_pool_size = 1\nfunction_calls = \"allow\"".into(),
        extra: guard("")?,
        ..ProxyOptions::default()
    })
    .await?;
    let port = p.port();
    let out =
        tokio::task::spawn_blocking(move || psql(port, APP_USER, APP_PASSWORD, APP_DB, &["-c", &import])).await??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "lo_import failed: {}", String::from_utf8_lossy(&out.stderr));
    let oid: u32 = stdout.trim().strip_prefix("lo_import ").context(stdout.clone())?.parse()?;
    let target = dir.path().join("out.bin");
    let export = format!("\\lo_export {oid} '{}'", target.display());
    let out =
        tokio::task::spawn_blocking(move || psql(port, APP_USER, APP_PASSWORD, APP_DB, &["-c", &export])).await??;
    ensure!(out.status.success(), "lo_export failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&target)? == content, "the large object came back changed");
    Ok(())
}

#[tokio::test]
async fn unknown_message_types_end_the_connection_and_reach_no_server() -> Result<()> {
    let p = trusted("pool_mode = \"session\"", "").await?;
    let mut wire = Wire::connect(p.port(), APP_USER, APP_DB).await?;
    wire.query("select 1");
    wire.roundtrip(1).await?; // the session holds its server connection now
    wire.message(b'z', b"hello").send().await?;
    let error = wire.read().await?;
    assert_eq!(error.tag, b'E');
    assert_eq!(error.field(b'S').as_deref(), Some("FATAL"));
    assert_eq!(error.sqlstate().as_deref(), Some("08P01"));
    assert!(wire.read().await.is_err(), "the connection closes after the FATAL");
    // Others are served as before.
    let client = p.client().await?;
    assert_eq!(client.query_one("select 2", &[]).await?.get::<_, i32>(0), 2);
    let log = p.cluster.log();
    assert!(!log.contains("invalid frontend message"), "the message reached the server: {}", tail(&log, 20));
    Ok(())
}

#[tokio::test]
async fn forbidden_statements_padded_past_a_plugins_limits_are_refused() -> Result<()> {
    let p = Proxied::start(ProxyOptions { extra: guard("")?, ..ProxyOptions::default() }).await?;
    p.cluster.exec_in(APP_DB, "create table secrets(s text); insert into secrets values ('classified')").await?;
    p.cluster.exec_in(APP_DB, "grant select on secrets to app").await?;
    let client = p.client().await?;
    for (mib, allowed_codes) in [(5usize, &["42501", "58000"][..]), (20, &["54000"][..])] {
        let padding = "x".repeat(mib << 20);
        let sql = format!("select * from secrets /* {padding} */");
        let simple = client.simple_query(&sql).await.map_err(anyhow::Error::from);
        let code = sqlstate(&simple.err().context(format!("{mib} MiB simple query answered"))?);
        assert!(code.as_deref().is_some_and(|c| allowed_codes.contains(&c)), "{mib} MiB simple: {code:?}");
        let extended = client.query(&sql, &[]).await.map_err(anyhow::Error::from);
        let code = sqlstate(&extended.err().context(format!("{mib} MiB extended query answered"))?);
        assert!(code.as_deref().is_some_and(|c| allowed_codes.contains(&c)), "{mib} MiB extended: {code:?}");
    }
    // The client is still served.
    assert_eq!(client.query_one("select 3", &[]).await?.get::<_, i32>(0), 3);
    Ok(())
}

/// 8 psycopg clients run one prepared statement in a loop (`prepare_threshold=0`: prepared at
/// once, then only bound and executed) until the file `argv[2]` exists, and print every
/// execution as JSON: [start, result, error sqlstate].
const SWAP_CLIENTS: &str = r#"
import json, os, sys, threading, time
import psycopg
port, stop = sys.argv[1], sys.argv[2]
results = []
lock = threading.Lock()
def worker():
    conn = psycopg.connect(host="127.0.0.1", port=port, user="app", password="app-secret",
                           dbname="app", autocommit=True, prepare_threshold=0)
    mine = []
    while not os.path.exists(stop):
        start = time.time()
        try:
            row = conn.execute("select which from marker").fetchone()
            mine.append([start, row[0], None])
        except psycopg.Error as e:
            mine.append([start, None, e.sqlstate])
    conn.close()
    with lock:
        results.extend(mine)
threads = [threading.Thread(target=worker) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
"#;

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

#[tokio::test]
async fn a_reload_reaches_statements_prepared_before_it() -> Result<()> {
    let p = Proxied::start(ProxyOptions {
        settings: "pool_mode = \"transaction\"\ndefault_pool_size = 4\nadmin_users = [\"app\"]".into(),
        ..ProxyOptions::default()
    })
    .await?;
    p.cluster.exec(&format!("create database reports owner {APP_USER}")).await?;
    for db in ["app", "reports"] {
        let client = p.cluster.connect(APP_USER, APP_PASSWORD, db).await?;
        client.batch_execute(&format!("create table marker(which text); insert into marker values ('{db}')")).await?;
    }
    let base = std::fs::read_to_string(p.pgvane.config_path())?;
    let reports = format!("[databases.reports]\nhost = \"127.0.0.1\"\nport = {}\n", p.cluster.port());
    let router = plugin_path("regex_router")?;
    let route_to = |db: &str, more: &str| {
        format!(
            "{base}\n{reports}\n[[plugins]]\nname = \"router\"\npath = \"{}\"\ntimeout_ms = 2000\n\
             [plugins.config]\nrules = [{{ usernameRegex = '.*', queryRegex = '\\bmarker\\b', dbkey = \"{db}\" }}]\n{more}",
            router.display()
        )
    };
    // (when RELOAD was sent, when it returned)
    let reload = |config: String| async {
        std::fs::write(p.pgvane.config_path(), config)?;
        let sent = now();
        p.console("RELOAD").await?.map_err(anyhow::Error::msg)?;
        Ok::<(f64, f64), anyhow::Error>((sent, now()))
    };
    reload(route_to("reports", "")).await?;

    let stop = tempfile::tempdir()?.keep().join("stop");
    let python = drivers::python()?;
    let clients = tokio::process::Command::new(python)
        .arg("-c")
        .arg(SWAP_CLIENTS)
        .arg(p.port().to_string())
        .arg(&stop)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(2)).await; // connected and prepared

    // Ten swaps: (when RELOAD was sent and returned, the database the table routes to).
    let mut swaps = Vec::new();
    for i in 0..10 {
        let target = if i % 2 == 0 { "app" } else { "reports" };
        let (sent, returned) = reload(route_to(target, "")).await?;
        swaps.push((sent, returned, target));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // A reject rule for the table: the statement the clients prepared long ago is refused.
    let (reject_sent, rejected_at) = reload(route_to("reports", &guard_marker()?)).await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    std::fs::write(&stop, "")?;
    let out = tokio::time::timeout(Duration::from_secs(60), clients.wait_with_output()).await??;
    ensure!(out.status.success(), "psycopg clients failed: {}", String::from_utf8_lossy(&out.stderr));
    let executions: Vec<(f64, Option<String>, Option<String>)> = serde_json::from_slice(&out.stdout)?;

    let mut checked = vec![0usize; swaps.len()];
    let mut refused = 0;
    for (start, result, error) in &executions {
        if *start > rejected_at {
            assert_eq!(error.as_deref(), Some("42501"), "after the reject rule: {result:?} {error:?}");
            refused += 1;
            continue;
        }
        match *start < reject_sent {
            true => assert_eq!(error, &None, "no execution fails while the routing table is swapped"),
            false => assert!(error.as_deref().is_none_or(|e| e == "42501"), "during the last RELOAD: {error:?}"),
        }
        // Started after swap i returned and before the next RELOAD was sent: swap i's table.
        let Some(i) = swaps.iter().rposition(|(_, returned, _)| returned < start) else { continue };
        let next_sent = swaps.get(i + 1).map_or(reject_sent, |(sent, _, _)| *sent);
        if *start < next_sent {
            assert_eq!(
                result.as_deref(),
                Some(swaps[i].2),
                "execution {:.4} s after swap {i} returned",
                start - swaps[i].1
            );
            checked[i] += 1;
        }
    }
    println!(
        "{} executions by 8 psycopg clients; checked after each of the 10 swaps: {checked:?}; refused after the reject rule: {refused}",
        executions.len()
    );
    assert!(checked.iter().all(|&n| n > 0), "every swap was followed by executions: {checked:?}");
    assert!(refused >= 8, "each client's prepared statement was refused: {refused}");
    Ok(())
}

/// tenant-guard refusing table `marker`.
fn guard_marker() -> Result<String> {
    Ok(format!(
        "\n[[plugins]]\nname = \"guard\"\npath = \"{}\"\non_error = \"reject\"\ntimeout_ms = 2000\n\
         [plugins.config]\nrules = [{{ tables = [\"marker\"], sqlstate = \"42501\", message = \"{{table}} is closed\" }}]\n",
        plugin_path("tenant_guard")?.display()
    ))
}
