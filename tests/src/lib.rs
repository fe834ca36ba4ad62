//! Integration-test harness for pgvane.
//!
//! Everything here drives *real* programs: throw-away PostgreSQL 15 clusters
//! ([`PgCluster`]), the real `pgvane` binary ([`Pgvane`]), and the real clients
//! (tokio-postgres via [`connect_via`], `psql` via [`psql`], `pgbench` via
//! [`pgbench`]).
//!
//! Design notes:
//! - PostgreSQL refuses to run as root. When the tests run as root, every
//!   PostgreSQL program is started with the uid/gid of the `postgres` user
//!   (`std::os::unix::process::CommandExt::uid`, which also drops the
//!   supplementary groups), so the postmaster is our direct child and can be
//!   signalled and reaped. As a normal user they are run directly.
//! - `initdb` is slow (seconds), so it runs once into a template data directory
//!   that is cached in [`scratch_dir`] (keyed by the PostgreSQL version and the
//!   initdb options) and reused by every later process; each cluster then
//!   copies the template with `cp -a` (~0.1 s in /dev/shm).
//! - Ports are never fixed: a free one is picked by binding `127.0.0.1:0`, and a
//!   cluster start is retried with a new port when the port was taken meanwhile.
//! - Child processes run in their own process group (a Ctrl-C in the terminal
//!   reaches only the test or demo process, which then cleans up), and each one
//!   gets a tiny "reaper" shell that kills it and deletes its temp dir as soon
//!   as the test process dies, even by SIGKILL, so no postgres or pgvane
//!   process is ever left behind.

pub mod drivers;
pub mod fixture;
pub mod haproxy;
pub mod load;
pub mod prometheus;
pub mod registry;
pub mod tls;
pub mod wire;

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

/// Directory holding the PostgreSQL server binaries (`initdb`, `postgres`, ...).
/// Overridable with the environment variable `PG_BIN_DIR`.
pub const DEFAULT_PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// Path of the `psql` client used by [`psql`].
pub const PSQL: &str = "/usr/bin/psql";

/// Path of the `pgbench` client used by [`pgbench`].
pub const PGBENCH: &str = "/usr/bin/pgbench";

/// Name of the superuser of every [`PgCluster`].
pub const SUPERUSER: &str = "postgres";

/// Password of the superuser of every [`PgCluster`].
pub const SUPERUSER_PASSWORD: &str = "postgres";

/// Host every server in the harness listens on.
pub const HOST: &str = "127.0.0.1";

/// Prefix of the one line pgvane prints to stdout when it accepts connections.
pub const LISTENING_PREFIX: &str = "pgvane listening on ";

/// Options passed to `initdb` for the template cluster (also part of the cache key).
const INITDB_ARGS: &[&str] = &[
    "--auth=scram-sha-256",
    "-U",
    SUPERUSER,
    "-E",
    "UTF8",
    "--locale=C",
    "--no-sync",
    // 1 MB WAL segments instead of 16 MB: a smaller template to copy.
    "--wal-segsize=1",
];

/// Bumped whenever the template layout changes, so stale caches are ignored.
const TEMPLATE_FORMAT: &str = "v1";

/// How long [`PgCluster::start`] waits for the server to accept connections.
const PG_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Pgvane::start`] waits for the listening line. pgvane compiles its plugins before it
/// listens: the Python and JavaScript components (18 and 12 MB) take 10-25 s each in the debug
/// binary on a busy 2-core machine (tests/tests/languages.rs), a Rust one well under a second.
const PGVANE_START_TIMEOUT: Duration = Duration::from_secs(120);

/// Timeout for connections opened by the harness and by the clients it runs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// Returns a TCP port on 127.0.0.1 that was free a moment ago (found by
/// binding port 0). Another process may still take it before you do, so
/// callers that start servers on it should be ready to retry.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((HOST, 0)).context("binding 127.0.0.1:0 to find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Quotes an SQL identifier (`"..."`, inner quotes doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal (`'...'`, inner quotes doubled; assumes
/// `standard_conforming_strings = on`, the default).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Formats a finished process's status, stdout and stderr for an assertion or
/// error message.
pub fn describe_output(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The last `lines` lines of `text` (for error messages carrying a log tail).
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Reads a file as (lossy) UTF-8; an unreadable file gives a note instead.
fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Base directory for every temp dir the harness creates (clusters, the
/// cached template, pgvane runs): `$PGVANE_TEST_TMPDIR` if set, else
/// `/dev/shm` if it is a writable directory (RAM: copying a data directory
/// there takes ~0.1 s instead of ~1 s on this machine's disk), else the system
/// temp dir.
pub fn scratch_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("PGVANE_TEST_TMPDIR") {
            return PathBuf::from(dir);
        }
        let shm = Path::new("/dev/shm");
        if shm.is_dir() && tempfile::tempdir_in(shm).is_ok() {
            return shm.to_path_buf();
        }
        std::env::temp_dir()
    })
    .clone()
}

/// Directory with the PostgreSQL server binaries (`$PG_BIN_DIR` or the default).
fn pg_bin_dir() -> PathBuf {
    std::env::var_os("PG_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN_DIR))
}

/// Runs `id <args>` and parses the number it prints.
fn id_number(args: &[&str]) -> Result<u32> {
    let out = Command::new("id").args(args).output().with_context(|| format!("running `id {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!("`id {}` failed: {}", args.join(" "), describe_output(&out));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("parsing the output of `id {}`", args.join(" ")))
}

/// The (uid, gid) PostgreSQL programs must run as: `Some` of the `postgres`
/// user when we are root, `None` (run as ourselves) otherwise.
fn pg_owner() -> Result<Option<(u32, u32)>> {
    static OWNER: OnceLock<std::result::Result<Option<(u32, u32)>, String>> = OnceLock::new();
    OWNER
        .get_or_init(|| {
            let lookup = || -> Result<Option<(u32, u32)>> {
                if id_number(&["-u"])? != 0 {
                    return Ok(None);
                }
                let uid = id_number(&["-u", "postgres"]).context("running as root needs a `postgres` user")?;
                let gid = id_number(&["-g", "postgres"])?;
                Ok(Some((uid, gid)))
            };
            lookup().map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// A `Command` for a PostgreSQL server program, set to run as the right user,
/// in `cwd`, without any inherited `PG*` environment variables.
fn pg_command(program: &str, cwd: &Path) -> Result<Command> {
    let mut cmd = Command::new(pg_bin_dir().join(program));
    cmd.current_dir(cwd).stdin(Stdio::null());
    remove_pg_env(&mut cmd);
    if let Some((uid, gid)) = pg_owner()? {
        cmd.uid(uid).gid(gid);
    }
    Ok(cmd)
}

/// Removes every inherited `PG*` variable (PGHOST, PGDATA, PGSSLMODE, ...) so
/// the developer's environment cannot change what the harness connects to.
fn remove_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

/// Gives `path` to the PostgreSQL user (no-op when not root).
fn give_to_pg(path: &Path) -> Result<()> {
    if let Some((uid, gid)) = pg_owner()? {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {} to postgres", path.display()))?;
    }
    Ok(())
}

/// Sets the permission bits of `path`.
fn chmod(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Sends `signal` (a name such as "QUIT", "TERM", "HUP", "KILL") to `pid`
/// using the `kill` program (the crate forbids `unsafe`, so no libc here).
fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let out = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .context("running kill")?;
    if !out.status.success() {
        bail!("kill -{signal} {pid} failed: {}", describe_output(&out));
    }
    Ok(())
}

/// Waits up to `timeout` for `child` to exit; returns its status if it did.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

/// Stops `child`: sends `signal`, waits up to `grace`, then SIGKILLs and reaps it.
fn stop_child(child: &mut Child, signal: &str, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if send_signal(child.id(), signal).is_ok() && wait_timeout(child, grace).is_some() {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Spawns a watchdog that cleans up after this (the test) process if it dies
/// without running destructors (SIGKILL, abort, Ctrl-C on `cargo test`): it
/// blocks reading a pipe whose only writer is us, and the pipe reaches EOF
/// when we exit, however we exit. Then it sends `signal` to `pid`, waits up to
/// 10 s for it to exit (be gone or a zombie), and deletes `dir`. Kill it (SIGKILL, see
/// [`kill_reaper`]) before stopping `pid` yourself, so it cannot signal a
/// recycled pid.
fn spawn_reaper(pid: u32, signal: &str, dir: &Path) -> Result<Child> {
    const SCRIPT: &str = r#"
        while read -r line; do :; done
        kill -s "$1" "$2" 2>/dev/null
        i=0
        while [ "$i" -lt 100 ]; do
            case "$(ps -o stat= -p "$2" 2>/dev/null)" in ""|Z*) break ;; esac
            sleep 0.1; i=$((i + 1))
        done
        rm -rf -- "$3"
    "#;
    Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("pgvane-test-reaper")
        .arg(signal)
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("spawning the reaper shell")
}

/// Kills (SIGKILL) and reaps a reaper spawned by [`spawn_reaper`].
fn kill_reaper(reaper: &mut Option<Child>) {
    if let Some(mut r) = reaper.take() {
        let _ = r.kill();
        let _ = r.wait();
    }
}

/// A stable 64-bit FNV-1a hash (used for the template cache key).
fn fnv1a(data: &str) -> u64 {
    data.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

// ---------------------------------------------------------------------------
// Template data directory (initdb once)
// ---------------------------------------------------------------------------

/// Path of the template data directory, creating it on first use.
///
/// The template lives in `<scratch_dir()>/pgvane-pg-template-<key>/data`, where the
/// key hashes the PostgreSQL version and the initdb options. It is built in a
/// staging directory and renamed into place, so it is either complete or
/// absent, and concurrent test processes can race safely.
fn template_data_dir() -> Result<PathBuf> {
    static TEMPLATE: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    TEMPLATE.get_or_init(|| create_template().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

fn create_template() -> Result<PathBuf> {
    let tmp = scratch_dir();
    let version = pg_command("postgres", &tmp)?
        .arg("--version")
        .output()
        .with_context(|| format!("running {}/postgres --version", pg_bin_dir().display()))?;
    if !version.status.success() {
        bail!("postgres --version failed: {}", describe_output(&version));
    }
    let key =
        format!("{TEMPLATE_FORMAT} {} {}", String::from_utf8_lossy(&version.stdout).trim(), INITDB_ARGS.join(" "));
    let final_dir = tmp.join(format!("pgvane-pg-template-{:016x}", fnv1a(&key)));
    let final_data = final_dir.join("data");
    if final_data.join("PG_VERSION").exists() {
        return Ok(final_data);
    }

    let staging = tempfile::Builder::new()
        .prefix("pgvane-pg-template-staging-")
        .tempdir_in(&tmp)
        .context("creating the template staging dir")?;
    chmod(staging.path(), 0o755)?;
    let data = staging.path().join("data");
    fs::create_dir(&data).context("creating the template data dir")?;
    chmod(&data, 0o700)?;
    give_to_pg(&data)?;
    let pwfile = staging.path().join("pwfile");
    fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n")).context("writing the initdb pwfile")?;
    chmod(&pwfile, 0o644)?;

    let out = pg_command("initdb", staging.path())?
        .arg("-D")
        .arg(&data)
        .arg(format!("--pwfile={}", pwfile.display()))
        .args(INITDB_ARGS)
        .output()
        .context("running initdb")?;
    if !out.status.success() {
        bail!("initdb failed: {}", describe_output(&out));
    }
    fs::remove_file(&pwfile).context("removing the initdb pwfile")?;

    let staging_path = staging.keep();
    match fs::rename(&staging_path, &final_dir) {
        Ok(()) => Ok(final_data),
        // Another process finished first: use its template, drop ours.
        Err(_) if final_data.join("PG_VERSION").exists() => {
            let _ = fs::remove_dir_all(&staging_path);
            Ok(final_data)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&staging_path);
            Err(e).with_context(|| format!("renaming the template into {}", final_dir.display()))
        }
    }
}

// ---------------------------------------------------------------------------
// PgCluster
// ---------------------------------------------------------------------------

/// A throw-away PostgreSQL 15 server listening on 127.0.0.1 at a free port,
/// superuser `postgres` / password `postgres`, SCRAM-SHA-256 authentication
/// for every connection, durability switched off for speed.
///
/// Dropping it stops the server immediately (SIGQUIT to the postmaster, SIGKILL
/// after 5 s), waits for it, and deletes its directory.
pub struct PgCluster {
    port: u16,
    postmaster: Option<Child>,
    reaper: Option<Child>,
    dir: TempDir,
}

/// Why one start attempt failed.
enum StartFailure {
    /// The port was taken between picking and binding it: retry with another.
    PortInUse(anyhow::Error),
    /// Anything else: give up.
    Fatal(anyhow::Error),
}

impl PgCluster {
    /// Starts a new cluster (copying the template data directory, which is
    /// created with `initdb` on first use) and waits until it accepts
    /// connections (up to 30 s). Retries with another port if the chosen one
    /// was taken meanwhile.
    ///
    /// Note: the file-system work (and, once, initdb) blocks the calling thread.
    pub async fn start() -> Result<PgCluster> {
        let template = template_data_dir()?;
        let mut last = None;
        for _attempt in 0..5 {
            match Self::try_start(&template).await {
                Ok(cluster) => return Ok(cluster),
                Err(StartFailure::PortInUse(e)) => last = Some(e),
                Err(StartFailure::Fatal(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no start attempt made")).context("PostgreSQL kept hitting ports in use"))
    }

    async fn try_start(template: &Path) -> std::result::Result<PgCluster, StartFailure> {
        let port = free_port().map_err(StartFailure::Fatal)?;
        let dir = Self::prepare_dir(template).map_err(StartFailure::Fatal)?;
        let mut cluster = PgCluster { port, postmaster: None, reaper: None, dir };
        cluster.launch().map_err(StartFailure::Fatal)?;
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Starts a streaming replica of `primary`: `pg_basebackup -R` (run as the PostgreSQL
    /// user, connecting as the superuser, which the template's `pg_hba.conf` lets use
    /// replication connections from 127.0.0.1) into a fresh directory, then a postmaster on
    /// its own free port, in hot standby, replicating from `primary` over a replication
    /// connection. Waits until it accepts connections (up to 30 s). The base backup of a
    /// fresh cluster is a few MB, so this costs about as much as a template copy plus one
    /// checkpoint on the primary.
    pub async fn start_replica_of(primary: &PgCluster) -> Result<PgCluster> {
        let mut last = None;
        for _attempt in 0..5 {
            let port = free_port()?;
            let dir = Self::prepare_replica_dir(primary)?;
            let mut cluster = PgCluster { port, postmaster: None, reaper: None, dir };
            cluster.launch()?;
            match cluster.wait_ready().await {
                Ok(()) => return Ok(cluster),
                Err(StartFailure::PortInUse(e)) => last = Some(e),
                Err(StartFailure::Fatal(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no start attempt made")).context("the replica kept hitting ports in use"))
    }

    /// Creates a replica's temp dir: `data/` from `pg_basebackup -R` of `primary`, `sock/`.
    fn prepare_replica_dir(primary: &PgCluster) -> Result<TempDir> {
        let dir = tempfile::Builder::new()
            .prefix("pgvane-pg-replica-")
            .tempdir_in(scratch_dir())
            .context("creating the replica temp dir")?;
        chmod(dir.path(), 0o755)?;
        let data = dir.path().join("data");
        fs::create_dir(&data).context("creating the replica data dir")?;
        chmod(&data, 0o700)?;
        give_to_pg(&data)?;
        // The password goes in the connection string, so `-R` writes it into
        // primary_conninfo and the standby can log in to the primary by itself.
        let conninfo = format!(
            "host={HOST} port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} application_name=pgvane_replica",
            primary.port
        );
        let out = pg_command("pg_basebackup", dir.path())?
            .arg("-d")
            .arg(&conninfo)
            .arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"])
            .output()
            .context("running pg_basebackup")?;
        if !out.status.success() {
            bail!("pg_basebackup from port {} failed: {}", primary.port, describe_output(&out));
        }
        let sock = dir.path().join("sock");
        fs::create_dir(&sock).context("creating the socket dir")?;
        give_to_pg(&sock)?;
        Ok(dir)
    }

    /// True while the server is a standby (`pg_is_in_recovery()`).
    pub async fn is_in_recovery(&self) -> Result<bool> {
        let client = self.connect(SUPERUSER, SUPERUSER_PASSWORD, "postgres").await?;
        Ok(client.query_one("select pg_is_in_recovery()", &[]).await?.get(0))
    }

    /// Promotes a replica to primary (`pg_promote`, waiting up to 30 s for it to finish).
    pub async fn promote(&self) -> Result<()> {
        let client = self.connect(SUPERUSER, SUPERUSER_PASSWORD, "postgres").await?;
        let promoted: bool = client.query_one("select pg_promote(true, 30)", &[]).await?.get(0);
        if !promoted {
            bail!("pg_promote on port {} did not finish within 30 s; log:\n{}", self.port, tail(&self.log(), 30));
        }
        Ok(())
    }

    /// Pauses WAL replay on a replica (`pg_wal_replay_pause()`): it keeps receiving WAL but
    /// applies none, so it falls behind the primary for as long as the primary writes.
    pub async fn pause_replay(&self) -> Result<()> {
        self.exec("select pg_wal_replay_pause()").await
    }

    /// Resumes WAL replay on a replica paused with [`PgCluster::pause_replay`].
    pub async fn resume_replay(&self) -> Result<()> {
        self.exec("select pg_wal_replay_resume()").await
    }

    /// Waits (up to `timeout`) until this replica has replayed everything `primary` had
    /// written when called, so what was committed there is visible here.
    pub async fn wait_caught_up(&self, primary: &PgCluster, timeout: Duration) -> Result<()> {
        // The clusters run with synchronous_commit=off: a commit record may not even be
        // written yet, let alone sent. A synchronously committed transaction that wrote WAL
        // (a transactional logical message: no table needed) flushes the WAL up to its commit,
        // so everything committed before; a replica replays up to what the primary flushed.
        let on_primary = primary.connect(SUPERUSER, SUPERUSER_PASSWORD, "postgres").await?;
        on_primary
            .batch_execute("set synchronous_commit = on; select pg_logical_emit_message(true, 'pgvane', 'sync')")
            .await?;
        let target: String = on_primary.query_one("select pg_current_wal_flush_lsn()::text", &[]).await?.get(0);
        let client = self.connect(SUPERUSER, SUPERUSER_PASSWORD, "postgres").await?;
        let deadline = Instant::now() + timeout;
        loop {
            let done: Option<bool> =
                client.query_one("select pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&target]).await?.get(0);
            if done == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the replica on port {} did not replay up to {target} within {timeout:?}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates the cluster's temp dir: `data/` (copy of the template), `sock/`.
    fn prepare_dir(template: &Path) -> Result<TempDir> {
        let dir = tempfile::Builder::new()
            .prefix("pgvane-pg-")
            .tempdir_in(scratch_dir())
            .context("creating the cluster temp dir")?;
        // Let the postgres user traverse into data/ and sock/.
        chmod(dir.path(), 0o755)?;
        let data = dir.path().join("data");
        let out = Command::new("cp").arg("-a").arg(template).arg(&data).output().context("running cp -a")?;
        if !out.status.success() {
            bail!("copying the template data dir failed: {}", describe_output(&out));
        }
        let sock = dir.path().join("sock");
        fs::create_dir(&sock).context("creating the socket dir")?;
        give_to_pg(&sock)?;
        Ok(dir)
    }

    /// Spawns the postmaster (and its reaper) on `self.port`, logging to `postgres.log`.
    fn launch(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening the postgres log file")?;
        let log_err = log.try_clone().context("cloning the log file handle")?;
        let child = pg_command("postgres", self.dir.path())?
            .arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path().join("sock"))
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .args(["-c", "password_encryption=scram-sha-256"])
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .context("spawning postgres")?;
        self.reaper = Some(spawn_reaper(child.id(), "QUIT", self.dir.path())?);
        self.postmaster = Some(child);
        Ok(())
    }

    /// Polls until the server accepts a superuser connection.
    async fn wait_ready(&mut self) -> std::result::Result<(), StartFailure> {
        let deadline = Instant::now() + PG_START_TIMEOUT;
        let mut config = self.config(SUPERUSER, SUPERUSER_PASSWORD, "postgres");
        config.connect_timeout(Duration::from_secs(2));
        loop {
            let exited = match self.postmaster.as_mut() {
                Some(child) => child.try_wait().ok().flatten(),
                None => return Err(StartFailure::Fatal(anyhow!("postgres is not running"))),
            };
            if let Some(status) = exited {
                let log = self.log();
                let err = anyhow!("postgres exited ({status}) before accepting connections; log:\n{}", tail(&log, 30));
                return Err(if log.contains("already in use") {
                    StartFailure::PortInUse(err)
                } else {
                    StartFailure::Fatal(err)
                });
            }
            let last_error = match config.connect(NoTls).await {
                Ok((client, connection)) => {
                    let task = tokio::spawn(connection);
                    // Every cluster has the same superuser password, so make
                    // sure we reached *this* server and not another one that
                    // grabbed the port first (ours then fails to bind).
                    let data_dir = client.query_one("SHOW data_directory", &[]).await;
                    // Close politely (Terminate) so the server log stays clean.
                    drop(client);
                    let _ = task.await;
                    match data_dir {
                        Ok(row) if Path::new(row.get::<_, &str>(0)) == self.data_dir() => return Ok(()),
                        Ok(_) => {
                            return Err(StartFailure::PortInUse(anyhow!(
                                "port {} is served by another PostgreSQL",
                                self.port
                            )))
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(StartFailure::Fatal(anyhow!(
                    "postgres did not accept connections within {PG_START_TIMEOUT:?} (last error: {last_error}); log:\n{}",
                    tail(&self.log(), 30)
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// TCP port the server listens on (at 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host the server listens on: `"127.0.0.1"`.
    pub fn host(&self) -> &'static str {
        HOST
    }

    /// PID of the postmaster, if running.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.as_ref().map(Child::id)
    }

    /// The directory of the server's unix-domain socket `.s.PGSQL.<port>` (`<dir>/sock`,
    /// owned by the PostgreSQL user, which the test user, root or that user itself, can
    /// connect through): `host` for a libpq-style connection over the socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// The cluster's temp dir (holds `data/`, `sock/` and `postgres.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory (`<dir>/data`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Path of the server log file (`<dir>/postgres.log`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Current contents of the server log.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// libpq-style connection string for the superuser on database `db`
    /// (`host=127.0.0.1 port=... user=postgres password=postgres dbname=...`).
    pub fn superuser_conn_str(&self, db: &str) -> String {
        format!("host={HOST} port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname={db}", self.port)
    }

    /// A tokio-postgres config for connecting directly to this server.
    pub fn config(&self, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
        client_config(self.port, user, password, db)
    }

    /// Connects directly to this server (no pgvane) as `user` to `db`; the
    /// connection task is spawned on the current tokio runtime.
    pub async fn connect(&self, user: &str, password: &str, db: &str) -> Result<tokio_postgres::Client> {
        let (client, _task) = connect_via(self.port, user, password, db)
            .await
            .with_context(|| format!("connecting directly to postgres on port {} as {user} to {db}", self.port))?;
        Ok(client)
    }

    /// Runs `sql` (one or more statements) as superuser on database `postgres`.
    pub async fn exec(&self, sql: &str) -> Result<()> {
        self.exec_in("postgres", sql).await
    }

    /// Runs `sql` (one or more statements) as superuser on database `db`.
    pub async fn exec_in(&self, db: &str, sql: &str) -> Result<()> {
        let client = self.connect(SUPERUSER, SUPERUSER_PASSWORD, db).await?;
        client.batch_execute(sql).await.with_context(|| format!("executing on {db}: {sql}"))
    }

    /// Creates a login role `name` with `password` (stored as a SCRAM-SHA-256 verifier).
    pub async fn create_user(&self, name: &str, password: &str) -> Result<()> {
        self.exec(&format!("CREATE ROLE {} LOGIN PASSWORD {}", quote_ident(name), quote_literal(password))).await
    }

    /// Creates database `name` owned by role `owner`.
    pub async fn create_database(&self, name: &str, owner: &str) -> Result<()> {
        self.exec(&format!("CREATE DATABASE {} OWNER {}", quote_ident(name), quote_ident(owner))).await
    }

    /// The stored SCRAM verifier of `user` (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`),
    /// read from `pg_authid.rolpassword`.
    pub async fn scram_verifier(&self, user: &str) -> Result<String> {
        let client = self.connect(SUPERUSER, SUPERUSER_PASSWORD, "postgres").await?;
        let row = client
            .query_opt("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&user])
            .await
            .context("reading pg_authid")?
            .ok_or_else(|| anyhow!("no role named {user:?}"))?;
        let verifier: Option<String> = row.get(0);
        match verifier {
            Some(v) if v.starts_with("SCRAM-SHA-256$") => Ok(v),
            Some(_) => bail!("role {user:?} has a password that is not a SCRAM-SHA-256 verifier"),
            None => bail!("role {user:?} has no password"),
        }
    }

    /// Stops the server, keeping the data directory, so a test can see how
    /// pgvane copes with a dead backend. Uses PostgreSQL's "fast" shutdown
    /// (SIGINT: sessions are terminated, then a checkpoint), because with
    /// `synchronous_commit=off` an immediate stop would lose the last commits
    /// across [`PgCluster::restart`]. No-op if already stopped.
    pub fn stop(&mut self) {
        self.stop_with("INT", Duration::from_secs(10));
    }

    /// Kills the server like a crash (SIGQUIT: "immediate" shutdown, no
    /// checkpoint; the last ~200 ms of commits may be lost). No-op if stopped.
    pub fn stop_immediate(&mut self) {
        self.stop_with("QUIT", Duration::from_secs(5));
    }

    fn stop_with(&mut self, signal: &str, grace: Duration) {
        kill_reaper(&mut self.reaper);
        if let Some(mut child) = self.postmaster.take() {
            stop_child(&mut child, signal, grace);
        }
    }

    /// Turns on TLS (`ssl = on`) with this certificate and key (PEM), written into the data
    /// directory as `server.crt`/`server.key`, owned by the PostgreSQL user, the key with mode
    /// 0600 as PostgreSQL demands; takes effect with a configuration reload.
    pub async fn enable_ssl(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        let data = self.data_dir();
        for (file, contents, mode) in [("server.crt", cert_pem, 0o644), ("server.key", key_pem, 0o600)] {
            let path = data.join(file);
            fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
            chmod(&path, mode)?;
            give_to_pg(&path)?;
        }
        self.exec("alter system set ssl = on").await?;
        self.exec("select pg_reload_conf()").await?;
        // The reload is asynchronous: wait until the postmaster has TLS on.
        let deadline = Instant::now() + PG_START_TIMEOUT;
        loop {
            let client = self.connect(SUPERUSER, SUPERUSER_PASSWORD, "postgres").await?;
            let ssl: String = client.query_one("show ssl", &[]).await?.get(0);
            if ssl == "on" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("ssl did not turn on after a reload:\n{}", tail(&self.log(), 20));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces `pg_hba.conf` with `contents` and reloads.
    pub async fn set_hba(&self, contents: &str) -> Result<()> {
        fs::write(self.data_dir().join("pg_hba.conf"), contents).context("writing pg_hba.conf")?;
        self.exec("select pg_reload_conf()").await
    }

    /// Starts the server again after [`PgCluster::stop`] (or
    /// [`PgCluster::stop_immediate`], then crash recovery runs first), on the
    /// same port and data directory, and waits until it accepts connections.
    /// Fails if the port was taken in the meantime.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()?;
        match self.wait_ready().await {
            Ok(()) => Ok(()),
            Err(StartFailure::PortInUse(e)) | Err(StartFailure::Fatal(e)) => {
                self.stop();
                Err(e)
            }
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_immediate();
        // `dir` (a TempDir) is removed after this, when the fields are dropped.
    }
}

// ---------------------------------------------------------------------------
// pgvane binary
// ---------------------------------------------------------------------------

/// Path of the pgvane binary the tests run.
///
/// `$PGVANE_BIN` if set. Otherwise `target/<profile>/pgvane` next to the
/// running executable: the first call in a process runs
/// `cargo build -p pgvane --bin pgvane` (same target dir and profile) from the
/// workspace root, so the binary is never stale (integration tests of
/// `pgvane-tests` do not build other packages' binaries by themselves). That
/// is a quick no-op when it is up to date. Set `PGVANE_NO_BUILD=1` to skip the
/// build and use whatever binary is there.
pub fn pgvane_bin() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("PGVANE_BIN") {
        return Ok(PathBuf::from(bin));
    }
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| locate_or_build_pgvane().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

fn locate_or_build_pgvane() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the current executable")?;
    let mut profile_dir = exe.parent().ok_or_else(|| anyhow!("{} has no parent dir", exe.display()))?;
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    if profile_dir.file_name() == Some(OsStr::new("deps")) {
        profile_dir = profile_dir.parent().ok_or_else(|| anyhow!("{} has no parent dir", profile_dir.display()))?;
    }
    let bin = profile_dir.join("pgvane");
    if std::env::var_os("PGVANE_NO_BUILD").is_some() {
        if bin.exists() {
            return Ok(bin);
        }
        bail!("PGVANE_NO_BUILD is set but {} does not exist", bin.display());
    }

    let target_dir = profile_dir.parent().ok_or_else(|| anyhow!("{} has no parent dir", profile_dir.display()))?;
    let profile = profile_dir
        .file_name()
        .and_then(OsStr::to_str)
        .ok_or_else(|| anyhow!("cannot tell the profile of {}", profile_dir.display()))?;
    let workspace =
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or_else(|| anyhow!("the tests package has no parent dir"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace)
        .args(["build", "--quiet", "-p", "pgvane", "--bin", "pgvane", "--target-dir"])
        .arg(target_dir)
        .stdin(Stdio::null());
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd.output().with_context(|| format!("running {} build -p pgvane", cargo.to_string_lossy()))?;
    if !out.status.success() {
        bail!(
            "`cargo build -p pgvane --bin pgvane` (profile dir {}) failed, so the pgvane binary is not available:\n{}",
            profile_dir.display(),
            describe_output(&out)
        );
    }
    if !bin.exists() {
        bail!("cargo build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Resident set size now.
    pub rss: u64,
    /// Peak resident set size.
    pub peak: u64,
}

/// A running pgvane process with its own temp dir holding `pgvane.toml`, any
/// extra files, and `pgvane.log` (its stderr). Dropping it SIGKILLs the
/// process, reaps it and deletes the dir.
pub struct Pgvane {
    child: Mutex<Child>,
    reaper: Option<Child>,
    addr: SocketAddr,
    stdout: Arc<Mutex<String>>,
    dir: TempDir,
}

impl Pgvane {
    /// Writes `config_toml` (verbatim) to `<dir>/pgvane.toml` and each
    /// `(relative path, contents)` of `files` into a fresh temp dir, then runs
    /// `pgvane --config <dir>/pgvane.toml` with that dir as working directory,
    /// `RUST_LOG=pgvane=debug` (unless `RUST_LOG` is set) and `NO_COLOR=1`.
    ///
    /// Waits (up to 20 s) for the line `pgvane listening on <ip>:<port>` on
    /// stdout and takes the address from it, so the config may use
    /// `listen_port = 0` (the usual case in tests) or any fixed port. If
    /// pgvane exits or times out first, the error contains its stderr log.
    pub async fn start(config_toml: &str, files: &[(&str, &str)]) -> Result<Pgvane> {
        let bin = pgvane_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("pgvane-proxy-")
            .tempdir_in(scratch_dir())
            .context("creating the pgvane temp dir")?;
        let config_path = dir.path().join("pgvane.toml");
        fs::write(&config_path, config_toml).context("writing pgvane.toml")?;
        for (name, contents) in files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        }
        let stderr_path = dir.path().join("pgvane.log");
        let stderr = fs::File::create(&stderr_path).context("creating pgvane.log")?;

        let mut cmd = Command::new(&bin);
        cmd.arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "pgvane=debug");
        }
        let mut child = cmd.spawn().with_context(|| format!("spawning {}", bin.display()))?;
        let reaper = match spawn_reaper(child.id(), "KILL", dir.path()) {
            Ok(r) => r,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let stdout_pipe = child.stdout.take();

        // Read stdout in a thread for the whole life of the process: report
        // the listening address (or EOF) once, and keep everything it prints.
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<std::result::Result<SocketAddr, String>>();
        if let Some(pipe) = stdout_pipe {
            let buffer = Arc::clone(&stdout);
            std::thread::spawn(move || drain_stdout(pipe, buffer, tx));
        }

        let mut pgvane = Pgvane {
            child: Mutex::new(child),
            reaper: Some(reaper),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stdout,
            dir,
        };
        let failure = match tokio::time::timeout(PGVANE_START_TIMEOUT, rx).await {
            Ok(Ok(Ok(addr))) => {
                pgvane.addr = addr;
                return Ok(pgvane);
            }
            Ok(Ok(Err(problem))) => problem,
            Ok(Err(_)) => "pgvane's stdout was not captured or its reader died".to_string(),
            Err(_) => format!("pgvane did not print `{LISTENING_PREFIX}<addr>` within {PGVANE_START_TIMEOUT:?}"),
        };
        // Give an exiting process a moment so its exit status and last log lines are in.
        let status = pgvane.wait_exit(Duration::from_millis(500));
        pgvane.kill();
        bail!(
            "starting pgvane ({}) failed: {failure}; pgvane {}\n--- pgvane stdout ---\n{}\n--- pgvane stderr (last 60 lines) ---\n{}",
            bin.display(),
            status.map_or_else(|| "was still running (killed)".to_string(), |s| s.to_string()),
            pgvane.stdout(),
            tail(&pgvane.log(), 60)
        )
    }

    /// Address pgvane reported it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Port pgvane reported it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The temp dir holding `pgvane.toml`, the extra files and `pgvane.log`
    /// (pgvane's working directory; deleted on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the config file pgvane was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pgvane.toml")
    }

    /// Path of pgvane's stderr log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("pgvane.log")
    }

    /// Everything pgvane wrote to stderr so far (its tracing log).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// Everything pgvane wrote to stdout so far (including the listening line).
    pub fn stdout(&self) -> String {
        self.stdout.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// PID of the pgvane process.
    pub fn pid(&self) -> u32 {
        self.child.lock().map(|c| c.id()).unwrap_or_else(|e| e.into_inner().id())
    }

    /// Whether the process is still running (false once it exited or was killed).
    /// The process's resident set size and its peak since the last
    /// [`Pgvane::reset_peak_memory`], in bytes (from `/proc/<pid>/status`).
    pub fn memory(&self) -> Result<Memory> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> Result<u64> {
            let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name} in status"))?;
            let kib: u64 = line.split_whitespace().nth(1).context("no value")?.parse()?;
            Ok(kib * 1024)
        };
        Ok(Memory { rss: field("VmRSS:")?, peak: field("VmHWM:")? })
    }

    /// Starts measuring the peak resident set size afresh (`/proc/<pid>/clear_refs`).
    pub fn reset_peak_memory(&self) -> Result<()> {
        fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").context("resetting the peak RSS")
    }

    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        matches!(child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for pgvane to exit by itself (e.g. after
    /// [`Pgvane::signal`]); returns its exit status, or `None` if still running.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        wait_timeout(&mut child, timeout)
    }

    /// Sends a signal by name ("TERM", "INT", "HUP", ...) to pgvane, e.g. to
    /// test graceful shutdown or reload. Fails if it has exited already.
    pub fn signal(&self, signal: &str) -> Result<()> {
        if !self.is_running() {
            bail!("pgvane has already exited");
        }
        send_signal(self.pid(), signal)
    }

    /// Kills pgvane (SIGKILL) and waits for it. Idempotent.
    pub fn kill(&mut self) {
        kill_reaper(&mut self.reaper);
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Pgvane {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Body of the stdout reader thread of [`Pgvane`].
fn drain_stdout(
    pipe: std::process::ChildStdout,
    buffer: Arc<Mutex<String>>,
    tx: tokio::sync::oneshot::Sender<std::result::Result<SocketAddr, String>>,
) {
    let mut tx = Some(tx);
    let mut reader = BufReader::new(pipe);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Ok(mut buf) = buffer.lock() {
            buf.push_str(&line);
        }
        if let Some(rest) = line.trim_end().strip_prefix(LISTENING_PREFIX) {
            if let Some(tx) = tx.take() {
                let parsed = rest
                    .trim()
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("cannot parse the address in {:?}: {e}", line.trim_end()));
                let _ = tx.send(parsed);
            }
        }
    }
    if let Some(tx) = tx.take() {
        let _ = tx.send(Err(format!("pgvane closed stdout (exited?) before printing `{LISTENING_PREFIX}<addr>`")));
    }
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// A tokio-postgres config for `user`/`password` on `db` at 127.0.0.1:`port`
/// (10 s connect timeout), for tests that want to tweak it before connecting.
pub fn client_config(port: u16, user: &str, password: &str, db: &str) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config.host(HOST).port(port).user(user).password(password).dbname(db).connect_timeout(CONNECT_TIMEOUT);
    config
}

/// Connects with tokio-postgres (no TLS) to 127.0.0.1:`port` — pgvane or a
/// cluster — as `user`/`password` to `db`. The connection task is spawned on
/// the current runtime; its handle resolves when the connection closes (with
/// the connection error, if any).
pub async fn connect_via(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> Result<(tokio_postgres::Client, JoinHandle<std::result::Result<(), tokio_postgres::Error>>)> {
    let (client, connection) = client_config(port, user, password, db)
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting to 127.0.0.1:{port} as {user} to {db}"))?;
    let task = tokio::spawn(connection);
    Ok((client, task))
}

/// A `Command` for the PostgreSQL client `program` (psql, pgbench) with
/// `-h 127.0.0.1 -p <port> -U <user>` and the environment: `PGPASSWORD` set,
/// `PGCONNECT_TIMEOUT=10`, `~/.pgpass` and `~/.psqlrc` ignored, inherited
/// `PG*` variables removed, stdin null (override it to pipe input). The
/// database is left to the caller (`-d db` for psql, last argument for
/// pgbench, whose `-d` means `--debug`). TLS is libpq's default
/// (`sslmode=prefer`), so the proxy sees an SSLRequest as from real clients.
pub fn client_command(program: &str, port: u16, user: &str, password: &str) -> Command {
    client_command_at(program, HOST, port, user, password)
}

/// [`client_command`] with `-h <host>`: a socket directory (`/…`) for a unix-domain socket.
pub fn client_command_at(program: &str, host: &str, port: u16, user: &str, password: &str) -> Command {
    let mut cmd = Command::new(program);
    remove_pg_env(&mut cmd);
    cmd.env("PGPASSWORD", password)
        .env("PGPASSFILE", "/dev/null")
        .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT.as_secs().to_string())
        .env("PSQLRC", "/dev/null")
        .args(["-h", host, "-p", &port.to_string(), "-U", user])
        .stdin(Stdio::null());
    cmd
}

/// Runs `psql -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p <port> -U <user> -d <db> <args...>`
/// (see [`client_command`] for the environment) and returns its output.
/// Check `output.status` yourself; [`describe_output`] formats it for messages.
pub fn psql(port: u16, user: &str, password: &str, db: &str, args: &[&str]) -> Result<Output> {
    client_command(PSQL, port, user, password)
        .args(["-d", db, "-X", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .output()
        .context("running psql")
}

/// Runs `pgbench -h 127.0.0.1 -p <port> -U <user> <args...> <db>` (see
/// [`client_command`] for the environment) and returns its output.
pub fn pgbench(port: u16, user: &str, password: &str, db: &str, args: &[&str]) -> Result<Output> {
    client_command(PGBENCH, port, user, password).args(args).arg(db).output().context("running pgbench")
}
