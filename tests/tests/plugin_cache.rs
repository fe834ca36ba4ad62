//! The compiled-component cache (`plugin_cache_dir`): a cold load fills it, the next start,
//! RELOAD and `pgvane check` read from it instead of compiling, a damaged entry is compiled again
//! and replaced, a directory other users can write is not used, and `pgvane plugin compile`
//! fills it ahead of time. Which path a load took is read from pgvane's log lines, never from
//! how long it took.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use pgvane_tests::fixture::{plugin_path, APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::{connect_via, describe_output, pgvane_bin, scratch_dir, PgCluster, Pgvane};

const STORED: &str = "plugin compiled and stored in the compiled-component cache";
const HIT: &str = "plugin loaded from the compiled-component cache";
const REFUSED: &str = "compiled-component cache entry refused";
const NOT_USED: &str = "plugin_cache_dir not used";
const COMPILED_WITHOUT_CACHE: &str = "plugin compiled (without the compiled-component cache)";

/// A cluster, a cache directory that outlives each pgvane, and a config file using both.
struct Setup {
    cluster: PgCluster,
    /// Holds the cache directory, the config file and the auth file.
    root: tempfile::TempDir,
}

impl Setup {
    async fn start() -> anyhow::Result<Setup> {
        let cluster = PgCluster::start().await?;
        cluster.create_user(APP_USER, APP_PASSWORD).await?;
        cluster.create_database(APP_DB, APP_USER).await?;
        let root = tempfile::Builder::new().prefix("pgvane-plugin-cache-").tempdir_in(scratch_dir())?;
        let setup = Setup { cluster, root };
        std::fs::write(setup.root.path().join("pgvane.toml"), setup.config()?)?;
        std::fs::write(setup.root.path().join("userlist.txt"), USERLIST)?;
        Ok(setup)
    }

    fn cache_dir(&self) -> PathBuf {
        self.root.path().join("compiled")
    }

    fn config_path(&self) -> PathBuf {
        self.root.path().join("pgvane.toml")
    }

    /// regex-router sends statements naming `route_me` to database `other` (the cluster's
    /// `postgres`), so a query shows whether the plugin ran.
    fn config(&self) -> anyhow::Result<String> {
        self.config_with("max_instances = 2")
    }

    /// The config, with `plugin_keys` in the plugin's entry.
    fn config_with(&self, plugin_keys: &str) -> anyhow::Result<String> {
        Ok(format!(
            "[pgvane]\nlisten_port = 0\nauth_type = \"scram-sha-256\"\nauth_file = \"userlist.txt\"\n\
             admin_users = [\"{APP_USER}\"]\nplugin_cache_dir = \"{}\"\n\n\
             [databases.{APP_DB}]\nhost = \"127.0.0.1\"\nport = {port}\n\n\
             [databases.other]\nhost = \"127.0.0.1\"\nport = {port}\ndbname = \"postgres\"\n\n\
             [[plugins]]\nname = \"router\"\npath = \"{}\"\n{plugin_keys}\n[plugins.config]\n\
             rules = [{{ usernameRegex = '.*', queryRegex = '.*route_me.*', dbkey = \"other\" }}]\n",
            self.cache_dir().display(),
            plugin_path("regex_router")?.display(),
            port = self.cluster.port(),
        ))
    }

    async fn pgvane(&self) -> anyhow::Result<Pgvane> {
        self.pgvane_with("max_instances = 2").await
    }

    async fn pgvane_with(&self, plugin_keys: &str) -> anyhow::Result<Pgvane> {
        Pgvane::start(&self.config_with(plugin_keys)?, &[("userlist.txt", USERLIST)]).await
    }

    /// `pgvane <args>` with the config file, `RUST_LOG=pgvane=info`.
    fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let config = self.config_path();
        Ok(std::process::Command::new(pgvane_bin()?)
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "pgvane=info")
            .env("NO_COLOR", "1")
            .output()?)
    }

    /// The cache's entries.
    fn entries(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(self.cache_dir())? {
            entries.push(entry?.path());
        }
        entries.sort();
        Ok(entries)
    }

    /// The one entry (the chain has one plugin).
    fn entry(&self) -> anyhow::Result<PathBuf> {
        let entries = self.entries()?;
        anyhow::ensure!(entries.len() == 1, "expected one cache entry, found {entries:?}");
        anyhow::ensure!(entries[0].extension().is_some_and(|e| e == "cwasm"), "{entries:?}");
        Ok(entries[0].clone())
    }
}

const USERLIST: &str = "\"app\" \"app-secret\"\n";

/// The plugin ran: a statement naming `route_me` went to database `postgres`, another to `app`.
async fn assert_routes(pgvane: &Pgvane) -> anyhow::Result<()> {
    let (client, _) = connect_via(pgvane.port(), APP_USER, APP_PASSWORD, APP_DB).await?;
    let routed: String = client.query_one("select current_database()::text as route_me", &[]).await?.get(0);
    let unrouted: String = client.query_one("select current_database()::text", &[]).await?.get(0);
    assert_eq!((routed.as_str(), unrouted.as_str()), ("postgres", APP_DB), "the router plugin did not decide");
    Ok(())
}

fn count(log: &str, line: &str) -> usize {
    log.matches(line).count()
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?)
}

#[tokio::test]
async fn a_cold_load_fills_the_cache_and_later_loads_read_it() -> anyhow::Result<()> {
    let setup = Setup::start().await?;
    assert!(!setup.cache_dir().exists());

    // Cold: compiled, and the entry written (the directory made, writable by its owner only).
    let first = setup.pgvane().await?;
    let log = first.log();
    assert_eq!((count(&log, STORED), count(&log, HIT), count(&log, REFUSED)), (1, 0, 0), "{log}");
    let entry = setup.entry()?;
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(setup.cache_dir())?.mode() & 0o022, 0);
    assert_eq!(std::fs::metadata(&entry)?.mode() & 0o022, 0);
    assert!(log.contains(&entry.display().to_string()), "the log names the entry: {log}");
    assert_routes(&first).await?;
    drop(first);
    let written = std::fs::read(&entry)?;

    // Warm: read from the entry, nothing compiled, the entry untouched.
    let second = setup.pgvane().await?;
    let log = second.log();
    assert_eq!((count(&log, HIT), count(&log, STORED), count(&log, COMPILED_WITHOUT_CACHE)), (1, 0, 0), "{log}");
    assert_routes(&second).await?;
    assert_eq!(setup.entries()?, std::slice::from_ref(&entry));
    assert_eq!(std::fs::read(&entry)?, written);

    // RELOAD loads the chain again: from the cache too.
    second.signal("HUP")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&second.log(), "SIGHUP: configuration reloaded") == 0 {
        anyhow::ensure!(Instant::now() < deadline, "no reload within 120 s: {}", second.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = second.log();
    assert_eq!((count(&log, HIT), count(&log, STORED)), (2, 0), "{log}");
    assert_routes(&second).await?;

    // `pgvane check` reads it as well.
    let out = setup.cli(&["check"])?;
    assert!(out.status.success(), "{}", describe_output(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!((count(&stderr, HIT), count(&stderr, STORED)), (1, 0), "{stderr}");
    drop(second);

    // Settings that do not change the code share the entry; a memory limit (which sizes the
    // memory slots the code is compiled for) gets an entry of its own.
    let pgvane = setup.pgvane_with("max_instances = 3\nfuel = 1000000\ntimeout_ms = 50").await?;
    let log = pgvane.log();
    assert_eq!((count(&log, HIT), count(&log, STORED)), (1, 0), "{log}");
    drop(pgvane);
    let pgvane = setup.pgvane_with("max_instances = 2\nmemory_limit_mb = 32").await?;
    let log = pgvane.log();
    assert_eq!((count(&log, HIT), count(&log, STORED)), (0, 1), "{log}");
    assert_routes(&pgvane).await?;
    assert_eq!(setup.entries()?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn a_damaged_entry_is_compiled_again_and_replaced() -> anyhow::Result<()> {
    let setup = Setup::start().await?;

    // `pgvane plugin compile` fills the cache ahead of time: from the config's plugins, then
    // from the file given (the same component and engine: the same entry).
    let out = setup.cli(&["plugin", "compile"])?;
    assert!(out.status.success(), "{}", describe_output(&out));
    let entry = setup.entry()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("router ({}): compiled: {}", plugin_path("regex_router")?.display(), entry.display())),
        "{stdout}"
    );
    let wasm = plugin_path("regex_router")?;
    let out = setup.cli(&["plugin", "compile", wasm.to_str().unwrap_or_default()])?;
    assert!(out.status.success(), "{}", describe_output(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("already compiled: {}", entry.display())));
    let good = std::fs::read(&entry)?;
    assert!(good.len() > 1000, "{} bytes", good.len());

    // Damaged in three ways; each time the entry is refused, the plugin compiled and working,
    // and the entry replaced by a sound one (the next start reads it).
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    let mut foreign = b"\x7fELF".to_vec();
    foreign.extend_from_slice(&good[4..]);
    for (what, bytes, reason) in [
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
        ("a flipped byte", flipped, "damaged"),
        ("another file format", foreign, "not an entry"),
    ] {
        std::fs::write(&entry, &bytes)?;
        let pgvane = setup.pgvane().await?;
        let log = pgvane.log();
        assert_eq!((count(&log, REFUSED), count(&log, STORED), count(&log, HIT)), (1, 1, 0), "{what}: {log}");
        assert!(log.contains(reason), "{what}: the log says why ({reason}): {log}");
        assert_routes(&pgvane).await?;
        drop(pgvane);
        assert_eq!(setup.entries()?, std::slice::from_ref(&entry), "{what}");
        assert_ne!(std::fs::read(&entry)?, bytes, "{what}: replaced");
        let pgvane = setup.pgvane().await?;
        let log = pgvane.log();
        assert_eq!((count(&log, HIT), count(&log, REFUSED)), (1, 0), "{what}: the replacement is read: {log}");
        assert_routes(&pgvane).await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_cache_dir_other_users_can_write_is_not_used() -> anyhow::Result<()> {
    let setup = Setup::start().await?;
    std::fs::create_dir(setup.cache_dir())?;
    set_mode(&setup.cache_dir(), 0o777)?;

    // pgvane serves, compiling the plugin, and says why the directory is not used.
    let pgvane = setup.pgvane().await?;
    let log = pgvane.log();
    assert_eq!((count(&log, NOT_USED), count(&log, COMPILED_WITHOUT_CACHE), count(&log, STORED)), (1, 1, 0), "{log}");
    assert!(log.contains("can be written by other users (mode 777)"), "{log}");
    assert_routes(&pgvane).await?;
    drop(pgvane);
    assert!(setup.entries()?.is_empty(), "nothing written there");

    // `pgvane plugin compile`, whose point is filling it, fails.
    let out = setup.cli(&["plugin", "compile"])?;
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("can be written by other users"),
        "{}",
        describe_output(&out)
    );

    // A directory of another user (not root) is not used either, whatever its mode.
    if running_as_root() {
        set_mode(&setup.cache_dir(), 0o755)?;
        let status = std::process::Command::new("chown").arg("postgres").arg(setup.cache_dir()).status()?;
        anyhow::ensure!(status.success(), "chown postgres failed");
        let pgvane = setup.pgvane().await?;
        let log = pgvane.log();
        assert_eq!((count(&log, NOT_USED), count(&log, STORED)), (1, 0), "{log}");
        assert!(log.contains("belongs to user"), "{log}");
        assert_routes(&pgvane).await?;
        // Given back to pgvane's user, with a safe mode: used.
        drop(pgvane);
        let status = std::process::Command::new("chown").arg("root").arg(setup.cache_dir()).status()?;
        anyhow::ensure!(status.success(), "chown root failed");
    } else {
        set_mode(&setup.cache_dir(), 0o755)?;
    }
    let pgvane = setup.pgvane().await?;
    let log = pgvane.log();
    assert_eq!((count(&log, NOT_USED), count(&log, STORED)), (0, 1), "{log}");
    Ok(())
}

/// Whether the tests run as root (CI does): only root can give a directory to another user.
fn running_as_root() -> bool {
    std::process::Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
