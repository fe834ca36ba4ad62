//! Swapping plugins at runtime, against real PostgreSQL with real clients: RELOAD and SIGHUP
//! under continuous load lose no query and drop no connection, and the new plugins are in force
//! when RELOAD returns; a plugin set that fails to load (bad wasm, the wrong world, init refusing
//! its config) leaves the last good one running, shown by SHOW PLUGINS; `watch = true` reloads
//! when the plugin file changes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgvane_tests::fixture::{plugin_path, ConsoleRow, Proxied, ProxyOptions, APP_USER};

/// `wasm` with a custom section appended: the same component, other bytes (another digest),
/// so a swap between the two really loads a different file.
fn with_custom_section(wasm: &[u8], payload: &str) -> Vec<u8> {
    let name = b"pgvane-test";
    let body_len = 1 + name.len() + payload.len();
    assert!(body_len < 128 && name.len() < 128, "one-byte LEB128 lengths");
    let mut out = wasm.to_vec();
    out.push(0); // custom section id
    out.push(body_len as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(payload.as_bytes());
    out
}

/// A query_rewrite entry that answers `SELECT 'probe'` with `SELECT '<answer>'`. A plugin error
/// fails the statement (`on_error = "reject"`) instead of letting the probe pass unanswered,
/// and the deadline per call is generous: this tests swapping, not speed, on a busy machine.
fn probe_plugin(path: &str, answer: &str, extra: &str) -> String {
    format!(
        "[[plugins]]\nname = \"probe\"\npath = \"{path}\"\non_error = \"reject\"\ntimeout_ms = 2000\n{extra}\n\
         [[plugins.config.rules]]\n\
         queryRegex = \"^SELECT 'probe'$\"\nreplace = \"SELECT '{answer}'\"\n"
    )
}

/// One worker thread: swaps load plugins on a blocking thread that drives the single-threaded
/// runtime's I/O through its handle, which these tests then cover.
fn options(plugins: &str) -> ProxyOptions {
    ProxyOptions {
        settings: format!(
            "admin_users = [\"{APP_USER}\"]\npool_mode = \"transaction\"\ndefault_pool_size = 4\nworker_threads = 1"
        ),
        extra: plugins.to_owned(),
        ..ProxyOptions::default()
    }
}

/// The answer to the probe through `client` (simple protocol).
async fn probe(client: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    let messages = client.simple_query("SELECT 'probe'").await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default())
}

/// The generation in an answer `gen-<n>` (0 for anything else).
fn generation(answer: &str) -> u32 {
    answer.strip_prefix("gen-").and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Rewrites pgvane.toml with the plugins of `plugins`, keeping everything before them.
fn rewrite_config(p: &Proxied, base: &str, plugins: &str) {
    std::fs::write(p.pgvane.config_path(), format!("{base}\n{plugins}")).expect("writing pgvane.toml");
}

fn plugin_row(rows: &[ConsoleRow], name: &str) -> ConsoleRow {
    rows.iter().find(|r| r["name"] == name).cloned().unwrap_or_else(|| panic!("no {name} in SHOW PLUGINS: {rows:?}"))
}

const SWAPS: u32 = 24;
const CLIENTS: usize = 20;

/// How long after RELOAD returned every client must have seen the new plugins. The issue asks
/// for 1 s, and that is the deadline. The switch itself happens before RELOAD returns (the probe
/// right after each RELOAD must already see it, with no waiting at all); what the deadline
/// bounds is a client's query that was already inside the old plugin when the switch happened,
/// plus its next query — milliseconds normally. On this 2-core machine shared with other builds
/// 20 busy clients still finish a query each well within it; a miss means a client kept the old
/// plugin, which is the bug this looks for.
const NEW_BEHAVIOUR_DEADLINE: Duration = Duration::from_secs(1);

#[tokio::test]
async fn plugins_swap_under_load_with_no_failed_query() -> anyhow::Result<()> {
    let original = std::fs::read(plugin_path("query_rewrite")?)?;
    // Two component files with different bytes; the swaps alternate between them.
    let p = Proxied::start(options("")).await?;
    let files = ["rewrite-a.wasm", "rewrite-b.wasm"];
    std::fs::write(p.pgvane.dir().join(files[0]), &original)?;
    std::fs::write(p.pgvane.dir().join(files[1]), with_custom_section(&original, "b"))?;
    let base = std::fs::read_to_string(p.pgvane.config_path())?;
    rewrite_config(&p, &base, &probe_plugin(files[0], "gen-0", ""));
    p.console("RELOAD").await?.map_err(anyhow::Error::msg)?;

    // 20 clients, each on one connection for the whole test, half of them with the extended
    // protocol (a Parse goes through the chain too), querying as fast as they can.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in 0..CLIENTS {
        let client = p.client().await?;
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut seen: Vec<(Instant, u32)> = Vec::new();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let answer = if i % 2 == 0 {
                    probe(&client).await
                } else {
                    client.query_one("SELECT 'probe'", &[]).await.map(|row| row.get::<_, String>(0))
                };
                match answer {
                    Ok(answer) if answer.starts_with("gen-") => seen.push((Instant::now(), generation(&answer))),
                    Ok(answer) => failures.push(format!("client {i}: unexpected answer {answer:?}")),
                    Err(e) => failures.push(format!("client {i}: {e}")),
                }
            }
            (seen, failures, client.is_closed())
        }));
    }
    let reloaded_at = Arc::new(Mutex::new(Vec::new()));
    let checker = p.client().await?;
    for generation in 1..=SWAPS {
        let file = files[generation as usize % 2];
        rewrite_config(&p, &base, &probe_plugin(file, &format!("gen-{generation}"), ""));
        // Every fourth swap by SIGHUP, the others by RELOAD on the console.
        if generation % 4 == 0 {
            let sent = Instant::now();
            p.pgvane.signal("HUP")?;
            // SIGHUP does not say when it is done: wait for the probe to change (the reload
            // compiles the plugin first, which takes a while on a loaded machine).
            let deadline = sent + Duration::from_secs(30);
            while self::generation(&probe(&checker).await?) != generation {
                assert!(Instant::now() < deadline, "SIGHUP {generation} never took effect:\n{}", p.pgvane.log());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            reloaded_at.lock().unwrap().push((generation, Instant::now()));
        } else {
            p.console("RELOAD").await?.map_err(anyhow::Error::msg)?;
            let done = Instant::now();
            // In force when RELOAD returns: the very next statement sees it.
            assert_eq!(probe(&checker).await?, format!("gen-{generation}"), "right after RELOAD {generation}");
            reloaded_at.lock().unwrap().push((generation, done));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    tokio::time::sleep(NEW_BEHAVIOUR_DEADLINE).await;
    stop.store(true, Ordering::Relaxed);

    let reloads = reloaded_at.lock().unwrap().clone();
    let mut total = 0;
    let mut worst_lag = Duration::ZERO;
    for (i, worker) in workers.into_iter().enumerate() {
        let (seen, failures, closed) = worker.await?;
        assert!(failures.is_empty(), "failed queries: {failures:?}\n{}", p.pgvane.log());
        assert!(!closed, "client {i}: connection dropped");
        total += seen.len();
        // Once a client has seen a generation it never sees an older one: the switch is atomic.
        for pair in seen.windows(2) {
            assert!(pair[0].1 <= pair[1].1, "client {i} went back from gen-{} to gen-{}", pair[0].1, pair[1].1);
        }
        for &(generation, done) in &reloads {
            let first = seen.iter().find(|(_, g)| *g >= generation).map(|(t, _)| *t);
            let first = first.unwrap_or_else(|| panic!("client {i} never saw gen-{generation}"));
            let lag = first.saturating_duration_since(done);
            worst_lag = worst_lag.max(lag);
            assert!(lag <= NEW_BEHAVIOUR_DEADLINE, "client {i} saw gen-{generation} only {lag:?} after the reload");
        }
    }
    eprintln!(
        "{SWAPS} swaps, {CLIENTS} clients, {total} queries, none failed; the slowest client saw a swap {worst_lag:?} after it"
    );
    // The counters are those of the plugin in force, loaded by the last swap.
    let row = plugin_row(&p.show("PLUGINS").await?, "probe");
    assert!(row["source"].ends_with(files[SWAPS as usize % 2]), "{row:?}");
    assert_eq!(row["errors"], "0", "{row:?}");
    assert_eq!(row["last_load_error"], "", "{row:?}");
    Ok(())
}

#[tokio::test]
async fn a_plugin_set_that_fails_to_load_leaves_the_last_good_one_running() -> anyhow::Result<()> {
    let p = Proxied::start(options("")).await?;
    let good = plugin_path("query_rewrite")?;
    let base = std::fs::read_to_string(p.pgvane.config_path())?;
    rewrite_config(&p, &base, &probe_plugin(&good.display().to_string(), "good", ""));
    p.console("RELOAD").await?.map_err(anyhow::Error::msg)?;
    let client = p.client().await?;
    assert_eq!(probe(&client).await?, "good");
    let loaded = plugin_row(&p.show("PLUGINS").await?, "probe");

    std::fs::write(p.pgvane.dir().join("garbage.wasm"), b"not wasm at all")?;
    // An empty component (header only): valid, but it exports nothing of the pgvane:policy world.
    std::fs::write(p.pgvane.dir().join("empty.wasm"), b"\0asm\x0d\0\x01\0")?;
    let hostile = plugin_path("hostile_fixture")?;
    let refuse_init = format!(
        "[[plugins]]\nname = \"probe\"\npath = \"{}\"\n[plugins.config]\nbehaviour = \"refuse-init\"\n",
        hostile.display()
    );
    let cases = [
        (probe_plugin("garbage.wasm", "bad", ""), "not a valid component"),
        (probe_plugin("empty.wasm", "bad", ""), "pgvane:policy world"),
        (refuse_init, "init refused its config"),
        (probe_plugin("missing.wasm", "bad", ""), "cannot read"),
    ];
    for (plugins, expected) in cases {
        rewrite_config(&p, &base, &plugins);
        let err = p.console("RELOAD").await?.expect_err("RELOAD of a bad plugin must fail");
        assert!(err.contains("F0000") || err.contains("configuration not reloaded"), "{err}");
        assert!(err.contains("\"probe\"") && err.contains(expected), "expected {expected:?}: {err}");
        // The last good plugin still decides, on the same connection and on new ones.
        assert_eq!(probe(&client).await?, "good");
        assert_eq!(probe(&p.client().await?).await?, "good");
        let row = plugin_row(&p.show("PLUGINS").await?, "probe");
        assert_eq!((&row["digest"], &row["loaded_at"]), (&loaded["digest"], &loaded["loaded_at"]), "{row:?}");
        assert!(row["last_load_error"].contains(expected), "{row:?}");
        assert!(!row["last_load_error_at"].is_empty(), "{row:?}");
    }
    // SIGHUP with a bad set: logged, the good one stays.
    p.pgvane.signal("HUP")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !p.pgvane.log().contains("plugins not reloaded") {
        assert!(Instant::now() < deadline, "SIGHUP's failure was not logged:\n{}", p.pgvane.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(probe(&client).await?, "good");

    // Fixed: the next RELOAD loads it, and the error is gone.
    rewrite_config(&p, &base, &probe_plugin(&good.display().to_string(), "better", ""));
    p.console("RELOAD").await?.map_err(anyhow::Error::msg)?;
    assert_eq!(probe(&client).await?, "better");
    let row = plugin_row(&p.show("PLUGINS").await?, "probe");
    assert_eq!(row["last_load_error"], "", "{row:?}");
    Ok(())
}

#[tokio::test]
async fn a_watched_plugin_file_reloads_when_it_changes() -> anyhow::Result<()> {
    let original = std::fs::read(plugin_path("query_rewrite")?)?;
    let p = Proxied::start(options("")).await?;
    let file = p.pgvane.dir().join("watched.wasm");
    std::fs::write(&file, &original)?;
    let base = std::fs::read_to_string(p.pgvane.config_path())?;
    rewrite_config(&p, &base, &probe_plugin("watched.wasm", "watched", "watch = true"));
    p.console("RELOAD").await?.map_err(anyhow::Error::msg)?;
    let client = p.client().await?;
    assert_eq!(probe(&client).await?, "watched");
    let first = plugin_row(&p.show("PLUGINS").await?, "probe");

    let wait_for = |what: &'static str, check: Box<dyn Fn(&ConsoleRow) -> bool>| {
        let p = &p;
        async move {
            // The watcher polls every 250 ms and waits for the file to hold still, then
            // compiles: seconds at most, even on a busy machine.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let row = plugin_row(&p.show("PLUGINS").await.unwrap(), "probe");
                if check(&row) {
                    return row;
                }
                assert!(Instant::now() < deadline, "{what}: {row:?}\n{}", p.pgvane.log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Broken in place: the reload fails, the loaded plugin stays and the error shows.
    std::fs::write(&file, b"broken")?;
    let row = wait_for("the broken file's load error", Box::new(|r| !r["last_load_error"].is_empty())).await;
    assert!(row["last_load_error"].contains("not a valid component"), "{row:?}");
    assert_eq!(row["digest"], first["digest"]);
    assert_eq!(probe(&client).await?, "watched");
    // A new version: loaded, with its digest.
    let v2 = with_custom_section(&original, "v2");
    std::fs::write(&file, &v2)?;
    let row = wait_for("the new version", Box::new(move |r| r["digest"] != first["digest"])).await;
    assert_eq!(row["last_load_error"], "", "{row:?}");
    assert_eq!(probe(&client).await?, "watched");
    Ok(())
}
