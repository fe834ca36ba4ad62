//! `pgvane-bench`: pgvane against PostgreSQL directly and against PgBouncer, measured in the same
//! run on the same machine, with pgbench's select-only script.
//!
//! Usage: `./dev bench [--quick] [--seconds N] [--repeats N] …` (see `--help`). It starts one
//! throw-away PostgreSQL 15 cluster (`pgbench -i -s 10`), then for every pool mode a PgBouncer
//! and a pgvane with the same pool mode and pool size (and, in transaction mode, a pgvane per
//! policy plugin measured: regex-router, rw-split), and runs `pgbench -S` at each client count
//! and protocol (`-M simple|extended|prepared`) against every target, interleaved (A B C, B C A,
//! …) and repeated, so slow drift of the machine hits every target alike. It reports medians of
//! TPS, average and p99 latency, the ratios pgvane/direct and pgvane/PgBouncer, and the proxy
//! process's CPU time per query, prints the report and writes it as markdown (`bench/results.md`
//! by default).
//!
//! Speed is never asserted: the bench reports, and exits 0 whether or not the targets are met.
//!
//! Environment: `PGVANE_BIN` names the pgvane binary (the harness's `pgvane_bin()`; `./dev bench`
//! points it at the release build), `PGVANE_BENCH_REVISION` names its source in the report when it
//! was not built in this workspace, `RUST_LOG` defaults to `pgvane=warn`.

mod events;
mod noise;
mod pgbench;
mod pgbouncer;
mod profile;
mod report;
mod server_socket;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use pgvane_tests::fixture::{APP_DB, APP_PASSWORD, APP_USER};
use pgvane_tests::haproxy::Haproxy;
use pgvane_tests::{describe_output, pgbench as run_pgbench, pgvane_bin, tail, PgCluster, Pgvane};

use crate::pgbench::{Outcome, Run};
use crate::pgbouncer::PgBouncer;
use crate::report::{Measurement, Meta, Report};
use crate::server_socket::ServerSocket;

/// pgvane against PostgreSQL directly and against PgBouncer (pgbench -S, same run, same machine).
///
/// Run it through `./dev bench`, which installs PgBouncer and builds everything in release mode.
#[derive(Debug, Parser)]
#[command(name = "pgvane-bench")]
struct Args {
    /// A short run (~2 minutes): transaction pooling only, one round of 2 s runs, written to
    /// bench/results-quick.md unless --out says otherwise.
    #[arg(long)]
    quick: bool,
    /// Seconds per pgbench run [default: 3, 2 with --quick].
    #[arg(long)]
    seconds: Option<u32>,
    /// Rounds: runs per target and configuration; medians are reported [default: 4, 1 with
    /// --quick].
    #[arg(long)]
    repeats: Option<u32>,
    /// Client counts (pgbench -c; -j is min(clients, 2)).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 50])]
    clients: Vec<u32>,
    /// pgbench protocols (-M).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Protocol::Simple, Protocol::Extended, Protocol::Prepared])]
    protocols: Vec<Protocol>,
    /// Pool modes of PgBouncer and pgvane [default: transaction,session; transaction with --quick].
    #[arg(long, value_enum, value_delimiter = ',')]
    modes: Vec<PoolMode>,
    /// Pool size of PgBouncer and pgvane in transaction mode. Session mode cannot share a server
    /// connection between clients, so there both get max(this, the largest client count).
    #[arg(long, default_value_t = 20)]
    pool_size: u32,
    /// Repeat a run (after a pause) when processes the bench did not start took more than this
    /// share of the machine's CPU during it, in % (a compile beside the bench, say).
    #[arg(long, default_value_t = 10.0, value_name = "PERCENT")]
    max_other_load: f64,
    /// How many times at most a disturbed run is repeated; the least disturbed attempt is kept.
    /// All repeats together are limited to a quarter of the runs, so a machine that stays busy
    /// makes the bench at most 25% longer.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Where the plugin components are (`plugins/build.sh` writes them) [default:
    /// <workspace>/target/plugins]. A plugin whose component is missing is not measured (the
    /// report says so).
    #[arg(long, value_name = "DIR")]
    plugins: Option<PathBuf>,
    /// Do not measure pgvane with policy plugins.
    #[arg(long)]
    no_plugins: bool,
    /// Do not measure pgvane with `/metrics` on (metrics_addr set, scraped every second).
    #[arg(long)]
    no_metrics: bool,
    /// pgvane's `worker_threads`. 1 (the default here) runs it on one thread as PgBouncer runs:
    /// the same share of the 2-core machine that pgbench and PostgreSQL also need. 0 is
    /// pgvane's own default, one thread per core.
    #[arg(long, default_value_t = 1)]
    pgvane_threads: u32,
    /// Skip the runs while pgvane changes under its clients: throughput during plugin swaps
    /// and writer switchovers on a fresh primary and replica.
    #[arg(long)]
    no_events: bool,
    /// pgbench scale factor (pgbench -i -s).
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// Where to write the markdown report [default: bench/results.md, bench/results-quick.md with
    /// --quick].
    #[arg(long)]
    out: Option<PathBuf>,
    /// After the measurements, profile pgvane and PgBouncer with `perf record -g` for this many
    /// seconds each (transaction mode, -M simple, 10 clients), count their system calls per query
    /// with `strace -c`, and write both to profile-pgvane.txt and profile-pgbouncer.txt next to
    /// the report.
    #[arg(long, value_name = "SECONDS")]
    perf: Option<u32>,
    /// How the proxies reach PostgreSQL: `tcp` (127.0.0.1), `unix` (its unix-domain socket, for
    /// every PgBouncer and pgvane), or `both` (the proxies on TCP, plus a PgBouncer and a pgvane
    /// per pool mode on the unix-domain socket, compared in a section of their own). pgbench
    /// always reaches the proxies over TCP.
    #[arg(long, value_enum, default_value_t = ServerSocket::Tcp)]
    server_socket: ServerSocket,
}

/// pgbench's `-M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Protocol {
    Simple,
    Extended,
    Prepared,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
            Protocol::Prepared => "prepared",
        }
    }
}

/// `pool_mode` of both proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum PoolMode {
    Transaction,
    Session,
}

impl PoolMode {
    pub fn name(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }
}

/// What pgbench talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// PostgreSQL itself.
    Direct,
    /// HAProxy in TCP mode on one thread in front of PostgreSQL: relaying bytes with no
    /// protocol work (no pooling: a server connection per client), the floor no proxy beats.
    Relay,
    /// Debian's PgBouncer.
    PgBouncer,
    /// pgvane with no policy plugin.
    Pgvane,
    /// pgvane with one policy plugin (transaction mode only, to keep the run short).
    PgvanePlugin(Plugin),
    /// pgvane with `metrics_addr` set and `/metrics` scraped every second while it is measured
    /// (transaction mode only). Plain `Pgvane` runs without `metrics_addr`.
    PgvaneMetrics,
    /// PgBouncer reaching PostgreSQL over its unix-domain socket (`--server-socket both`).
    PgBouncerUnix,
    /// pgvane reaching PostgreSQL over its unix-domain socket (`--server-socket both`).
    PgvaneUnix,
}

/// The policy plugins measured: each one alone in pgvane's chain, with a configuration that does
/// real work on pgbench's `SELECT … FROM pgbench_accounts WHERE aid = $1`. To measure another
/// plugin, add it here and in `Plugin::ALL` (its section in pgvane.toml is `Plugin::config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Plugin {
    RegexRouter,
    RwSplit,
}

impl Plugin {
    pub const ALL: [Plugin; 2] = [Plugin::RegexRouter, Plugin::RwSplit];

    pub fn name(self) -> &'static str {
        match self {
            Plugin::RegexRouter => "regex-router",
            Plugin::RwSplit => "rw-split",
        }
    }

    /// The component `plugins/build.sh` writes.
    pub fn file(self) -> &'static str {
        match self {
            Plugin::RegexRouter => "regex_router.wasm",
            Plugin::RwSplit => "rw_split.wasm",
        }
    }

    /// What the plugin is given to do, for the report.
    pub fn setup(self) -> &'static str {
        match self {
            Plugin::RegexRouter => {
                "two rules, `\\bpgbench_branches\\b` then `\\bpgbench_accounts\\b`, both routing to `app` (the \
                 client's own database; this version refuses routes to another one outside a transaction): every \
                 query runs both regexes and gets a route"
            }
            Plugin::RwSplit => {
                "defaults: every `SELECT` is lexed, classified as a read and routed to `replica` (in this version \
                 the client's own database)"
            }
        }
    }

    /// Its `[[plugins]]` table, the component at `path`.
    fn config(self, path: &Path) -> String {
        let head = format!("[[plugins]]\nname = \"{}\"\npath = \"{}\"\n", self.name(), path.display());
        match self {
            Plugin::RegexRouter => format!(
                "{head}[plugins.config]\nrules = [\n    \
                 {{ queryRegex = '\\bpgbench_branches\\b', dbkey = \"{APP_DB}\" }},\n    \
                 {{ queryRegex = '\\bpgbench_accounts\\b', dbkey = \"{APP_DB}\" }},\n]\n"
            ),
            Plugin::RwSplit => head,
        }
    }
}

/// One running thing pgbench can be pointed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetId {
    pub kind: Kind,
    /// The proxy's pool mode; `None` for direct.
    pub mode: Option<PoolMode>,
}

pub struct Target {
    pub id: TargetId,
    pub port: u16,
    /// The process whose CPU time is measured (the proxy); `None` for direct.
    pub pid: Option<u32>,
}

/// Everything the bench started; dropping it stops and deletes everything.
struct Servers {
    cluster: PgCluster,
    relay: Option<Haproxy>,
    bouncers: Vec<PgBouncer>,
    pgvanes: Vec<Pgvane>,
    targets: Vec<Target>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // pgvane logs at warn so logging does not distort the numbers (the harness's default is
    // debug). Set before any thread exists.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "pgvane=warn");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgvane-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(args) => result,
            // Dropping `run` stops everything it started (pgbench, in our process group, got
            // the Ctrl-C too).
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgvane-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The settled options of one bench run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seconds: u32,
    pub repeats: u32,
    pub clients: Vec<u32>,
    pub protocols: Vec<Protocol>,
    pub modes: Vec<PoolMode>,
    pub pool_size: u32,
    pub pgvane_threads: u32,
    pub scale: u32,
    pub max_other_load: f64,
    pub retries: u32,
    /// Plugins measured (in transaction mode), with their components.
    pub plugins: Vec<(Plugin, PathBuf)>,
    /// Plugins not measured, and why.
    pub skipped_plugins: Vec<(Plugin, String)>,
    /// Measure pgvane with `/metrics` on too (transaction mode).
    pub metrics: bool,
    /// How the proxies reach PostgreSQL.
    pub server_socket: ServerSocket,
}

impl Plan {
    fn from_args(args: &Args, workspace: &Path) -> Result<Plan> {
        let mut plan = Plan {
            seconds: args.seconds.unwrap_or(if args.quick { 2 } else { 3 }),
            repeats: args.repeats.unwrap_or(if args.quick { 1 } else { 4 }),
            clients: args.clients.clone(),
            protocols: args.protocols.clone(),
            modes: if !args.modes.is_empty() {
                args.modes.clone()
            } else if args.quick {
                vec![PoolMode::Transaction]
            } else {
                vec![PoolMode::Transaction, PoolMode::Session]
            },
            pool_size: args.pool_size,
            pgvane_threads: args.pgvane_threads,
            scale: args.scale,
            max_other_load: args.max_other_load,
            retries: args.retries,
            plugins: Vec::new(),
            skipped_plugins: Vec::new(),
            metrics: false,
            server_socket: args.server_socket,
        };
        plan.metrics = !args.no_metrics && plan.modes.contains(&PoolMode::Transaction);
        let dir = args.plugins.clone().unwrap_or_else(|| workspace.join("target").join("plugins"));
        for plugin in Plugin::ALL {
            let path = dir.join(plugin.file());
            if args.no_plugins {
                plan.skipped_plugins.push((plugin, "--no-plugins".to_owned()));
            } else if !plan.modes.contains(&PoolMode::Transaction) {
                plan.skipped_plugins.push((plugin, "plugins are measured in transaction mode only".to_owned()));
            } else if !path.exists() {
                plan.skipped_plugins
                    .push((plugin, format!("no component at {} (plugins/build.sh builds it)", path.display())));
            } else {
                plan.plugins.push((plugin, path));
            }
        }
        plan.clients.sort_unstable();
        plan.clients.dedup();
        plan.protocols.sort_unstable();
        plan.protocols.dedup();
        plan.modes.sort_unstable();
        plan.modes.dedup();
        if plan.seconds == 0 || plan.repeats == 0 || plan.clients.is_empty() || plan.clients.contains(&0) {
            bail!("--seconds, --repeats and every --clients value must be at least 1");
        }
        if plan.pool_size == 0 {
            bail!("--pool-size must be at least 1");
        }
        Ok(plan)
    }

    /// Pool size of both proxies in `mode`.
    pub fn pool_size(&self, mode: PoolMode) -> u32 {
        match mode {
            PoolMode::Transaction => self.pool_size,
            PoolMode::Session => self.pool_size.max(self.clients.iter().copied().max().unwrap_or(1)),
        }
    }

    /// Every target, in the order of the report.
    pub fn targets(&self) -> Vec<TargetId> {
        let mut targets = vec![TargetId { kind: Kind::Direct, mode: None }, TargetId { kind: Kind::Relay, mode: None }];
        for &mode in &self.modes {
            targets.push(TargetId { kind: Kind::PgBouncer, mode: Some(mode) });
            targets.push(TargetId { kind: Kind::Pgvane, mode: Some(mode) });
        }
        for &(plugin, _) in &self.plugins {
            targets.push(TargetId { kind: Kind::PgvanePlugin(plugin), mode: Some(PoolMode::Transaction) });
        }
        if self.metrics {
            targets.push(TargetId { kind: Kind::PgvaneMetrics, mode: Some(PoolMode::Transaction) });
        }
        targets.extend(server_socket::extra_targets(self));
        targets
    }

    /// Number of pgbench runs measured.
    fn runs(&self) -> usize {
        self.clients.len() * self.protocols.len() * self.repeats as usize * self.targets().len()
    }
}

async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let load_before = report::load_average();
    let workspace = workspace_dir()?;
    let plan = Plan::from_args(&args, &workspace)?;
    let out = match &args.out {
        Some(path) => path.clone(),
        None => workspace.join("bench").join(if args.quick { "results-quick.md" } else { "results.md" }),
    };
    let pgvane = pgvane_bin()?;
    if !pgvane.components().any(|c| c.as_os_str() == "release") {
        eprintln!("pgvane-bench: warning: {} is not a release build; numbers will be meaningless", pgvane.display());
    }
    let estimate = plan.runs() as u64 * (u64::from(plan.seconds) + 1);
    println!(
        "pgvane-bench: {} pgbench runs of {} s (about {} min, more if other work disturbs runs), pgvane {}",
        plan.runs(),
        plan.seconds,
        estimate.div_ceil(60),
        pgvane.display()
    );

    let servers = start_servers(&plan).await?;
    warm_up(&servers, &plan).await?;
    let measurements = measure(&servers, &plan).await?;
    for bouncer in &servers.bouncers {
        if bouncer.log().contains("FATAL") {
            eprintln!("pgvane-bench: PgBouncer logged errors:\n{}", tail(&bouncer.log(), 20));
        }
    }
    let events = if args.no_events { String::new() } else { measure_events(&servers, &plan, args.quick).await };
    let profiles = match args.perf {
        // Next to the report, which links to them.
        Some(seconds) => profile::profile(&servers.targets, &plan, seconds, out.parent().unwrap_or(&workspace)).await?,
        None => Vec::new(),
    };
    drop(servers);

    let meta = Meta::collect(&pgvane, &workspace, bench_command(), started.elapsed(), load_before, profiles);
    let markdown = Report { meta: &meta, plan: &plan, measurements: &measurements }.render()
        + &server_socket::render(&plan, &measurements)
        + &events;
    println!("\n{markdown}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, &markdown).with_context(|| format!("writing {}", out.display()))?;
    println!("pgvane-bench: wrote {} ({:.1} min in all)", out.display(), started.elapsed().as_secs_f64() / 60.0);
    Ok(())
}

/// Plugin swaps against the pgvane with the regex-router plugin (or, without plugins, the one
/// in transaction mode), then switchovers (1 with --quick, else 3); the report's section.
async fn measure_events(servers: &Servers, plan: &Plan, quick: bool) -> String {
    let target = servers.targets.iter().find(|t| t.id.kind == Kind::PgvanePlugin(Plugin::RegexRouter)).or_else(|| {
        servers.targets.iter().find(|t| t.id == TargetId { kind: Kind::Pgvane, mode: Some(PoolMode::Transaction) })
    });
    let swaps = match target {
        Some(target) => {
            println!("Plugin swaps: pgbench against {} with a RELOAD every 500 ms ...", report::label(target.id));
            match events::swaps(target, report::label(target.id), plan).await {
                Ok(swaps) => Some(swaps),
                Err(e) => {
                    eprintln!("pgvane-bench: the plugin swap runs failed: {e:#}");
                    None
                }
            }
        }
        None => None,
    };
    let mut switchovers = Vec::new();
    for i in 1..=if quick { 1 } else { 3 } {
        println!("Switchover {i}: primary + streaming replica, 4 writers ...");
        switchovers.push(events::switchover(plan.pgvane_threads).await);
    }
    events::render(swaps.as_ref(), &switchovers)
}

/// The command line as the user typed it: `./dev bench …` when run through `dev` (which says so
/// in `PGVANE_BENCH_COMMAND`), else the binary's own.
fn bench_command() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let program = std::env::var("PGVANE_BENCH_COMMAND").unwrap_or_else(|_| "pgvane-bench".to_owned());
    std::iter::once(program).chain(args).collect::<Vec<_>>().join(" ")
}

/// The workspace root (the parent of the tests package).
fn workspace_dir() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).context("the tests package has no parent dir")
}

/// Starts the cluster (loaded with pgbench's tables) and, per pool mode, a PgBouncer and a
/// pgvane in front of it.
async fn start_servers(plan: &Plan) -> Result<Servers> {
    println!("Starting PostgreSQL ...");
    let mut cluster = PgCluster::start().await.context("starting PostgreSQL")?;
    // Room for every pool at once (direct clients + two proxies × pool modes), and the whole
    // pgbench database in shared buffers.
    cluster.exec("ALTER SYSTEM SET max_connections = 1000").await?;
    cluster.exec("ALTER SYSTEM SET shared_buffers = '1GB'").await?;
    cluster.restart().await.context("restarting PostgreSQL with the bench settings")?;
    cluster.create_user(APP_USER, APP_PASSWORD).await?;
    cluster.create_database(APP_DB, APP_USER).await?;
    println!("pgbench -i -s {} ...", plan.scale);
    let out =
        run_pgbench(cluster.port(), APP_USER, APP_PASSWORD, APP_DB, &["-i", "-q", "-s", &plan.scale.to_string()])?;
    if !out.status.success() {
        bail!("pgbench -i failed: {}", describe_output(&out));
    }

    // Both proxies hold app's SCRAM verifier (not a plain password): clients authenticate with
    // SCRAM-SHA-256 and the proxies log in to the server with the keys from the client's proof,
    // so neither proxy runs PBKDF2 while being measured.
    let verifier = cluster.scram_verifier(APP_USER).await?;
    let userlist = format!("\"{APP_USER}\" \"{verifier}\"\n");
    let host = plan.server_socket.main_host(&cluster);
    let mut servers = Servers { targets: Vec::new(), bouncers: Vec::new(), pgvanes: Vec::new(), relay: None, cluster };
    servers.targets.push(Target {
        id: TargetId { kind: Kind::Direct, mode: None },
        port: servers.cluster.port(),
        pid: None,
    });
    println!("Starting HAProxy (TCP relay, one thread) ...");
    let relay = Haproxy::relay(servers.cluster.port()).context("starting HAProxy")?;
    servers.targets.push(Target {
        id: TargetId { kind: Kind::Relay, mode: None },
        port: relay.port(),
        pid: Some(relay.pid()),
    });
    servers.relay = Some(relay);
    for &mode in &plan.modes {
        let size = plan.pool_size(mode);
        println!("Starting PgBouncer and pgvane, pool_mode = {}, pool size {size} ...", mode.name());
        let bouncer = PgBouncer::start_at(&host, servers.cluster.port(), mode, size, &userlist)
            .await
            .context("starting PgBouncer")?;
        servers.targets.push(Target {
            id: TargetId { kind: Kind::PgBouncer, mode: Some(mode) },
            port: bouncer.port(),
            pid: Some(bouncer.pid()),
        });
        servers.bouncers.push(bouncer);
        let pgvane = Pgvane::start(
            &pgvane_config(&host, servers.cluster.port(), mode, size, plan.pgvane_threads),
            &[("userlist.txt", &userlist)],
        )
        .await
        .context("starting pgvane")?;
        servers.targets.push(Target {
            id: TargetId { kind: Kind::Pgvane, mode: Some(mode) },
            port: pgvane.port(),
            pid: Some(pgvane.pid()),
        });
        servers.pgvanes.push(pgvane);
    }
    for (plugin, path) in &plan.plugins {
        let mode = PoolMode::Transaction;
        println!("Starting pgvane with the {} plugin, pool_mode = {} ...", plugin.name(), mode.name());
        let config = format!(
            "{}\n{}",
            pgvane_config(&host, servers.cluster.port(), mode, plan.pool_size(mode), plan.pgvane_threads),
            plugin.config(path)
        );
        let pgvane = Pgvane::start(&config, &[("userlist.txt", &userlist)])
            .await
            .with_context(|| format!("starting pgvane with the {} plugin", plugin.name()))?;
        servers.targets.push(Target {
            id: TargetId { kind: Kind::PgvanePlugin(*plugin), mode: Some(mode) },
            port: pgvane.port(),
            pid: Some(pgvane.pid()),
        });
        servers.pgvanes.push(pgvane);
    }
    if plan.metrics {
        let mode = PoolMode::Transaction;
        println!("Starting pgvane with metrics_addr, scraped every second, pool_mode = {} ...", mode.name());
        let config = pgvane_config(&host, servers.cluster.port(), mode, plan.pool_size(mode), plan.pgvane_threads)
            .replace("[pgvane]\n", "[pgvane]\nmetrics_addr = \"127.0.0.1:0\"\n");
        let pgvane =
            Pgvane::start(&config, &[("userlist.txt", &userlist)]).await.context("starting pgvane with metrics")?;
        let stdout = pgvane.stdout();
        let addr: std::net::SocketAddr = stdout
            .lines()
            .find_map(|l| l.strip_prefix("pgvane metrics on "))
            .context("pgvane printed no metrics address")?
            .trim()
            .parse()?;
        // As Prometheus would: a scrape every second for as long as the bench runs.
        tokio::spawn(async move {
            loop {
                if let Err(e) = pgvane_tests::prometheus::http_get(addr, "/metrics").await {
                    eprintln!("bench: scraping {addr}/metrics failed: {e}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        servers.targets.push(Target {
            id: TargetId { kind: Kind::PgvaneMetrics, mode: Some(mode) },
            port: pgvane.port(),
            pid: Some(pgvane.pid()),
        });
        servers.pgvanes.push(pgvane);
    }
    let unix = server_socket::unix_host(&servers.cluster);
    for target in server_socket::extra_targets(plan) {
        let Some(mode) = target.mode else { continue };
        let (size, port) = (plan.pool_size(mode), servers.cluster.port());
        println!("Starting {} ...", report::label(target));
        let (port, pid) = if target.kind == Kind::PgBouncerUnix {
            let bouncer =
                PgBouncer::start_at(&unix, port, mode, size, &userlist).await.context("starting PgBouncer")?;
            let started = (bouncer.port(), bouncer.pid());
            servers.bouncers.push(bouncer);
            started
        } else {
            let config = pgvane_config(&unix, port, mode, size, plan.pgvane_threads);
            let pgvane = Pgvane::start(&config, &[("userlist.txt", &userlist)]).await.context("starting pgvane")?;
            let started = (pgvane.port(), pgvane.pid());
            servers.pgvanes.push(pgvane);
            started
        };
        servers.targets.push(Target { id: target, port, pid: Some(pid) });
    }
    Ok(servers)
}

/// pgvane's configuration: the same pool mode, pool size, client limit, auth type and reset query
/// as PgBouncer's (see `pgbouncer::config`), for the server at `server_host` (an address or a
/// socket directory) and `server_port`.
fn pgvane_config(server_host: &str, server_port: u16, mode: PoolMode, pool_size: u32, threads: u32) -> String {
    format!(
        "[pgvane]\n\
         listen_addr = \"127.0.0.1\"\n\
         listen_port = 0\n\
         worker_threads = {threads}\n\
         admin_users = [\"{APP_USER}\"]\n\
         pool_mode = \"{mode}\"\n\
         default_pool_size = {pool_size}\n\
         max_client_conn = 1000\n\
         auth_type = \"scram-sha-256\"\n\
         auth_file = \"userlist.txt\"\n\
         server_reset_query = \"DISCARD ALL\"\n\
         \n\
         [databases.{APP_DB}]\n\
         host = \"{server_host}\"\n\
         port = {server_port}\n",
        mode = mode.name(),
    )
}

/// One short unmeasured run per target: pools filled, caches warm, code paged in.
async fn warm_up(servers: &Servers, plan: &Plan) -> Result<()> {
    println!("Warming up ...");
    let clients = plan.clients.iter().copied().max().unwrap_or(1).min(plan.pool_size);
    for target in &servers.targets {
        let run = Run { port: target.port, protocol: Protocol::Simple, clients, seconds: 2, proxy_pid: None };
        if let Err(e) = blocking(move || run.execute()).await?? {
            bail!("warm-up run against {} failed: {e}", report::label(target.id));
        }
    }
    Ok(())
}

/// Every measured run: per (protocol, clients), `repeats` rounds over all targets, the order
/// rotated each round.
async fn measure(servers: &Servers, plan: &Plan) -> Result<Vec<Measurement>> {
    let total = plan.runs();
    let mut measurements = Vec::with_capacity(total);
    let mut budget = total / 4;
    for &protocol in &plan.protocols {
        for &clients in &plan.clients {
            for round in 0..plan.repeats as usize {
                let n = servers.targets.len();
                for i in 0..n {
                    let target = &servers.targets[(i + round) % n];
                    let (outcome, attempts) =
                        measure_one(servers, plan, target, protocol, clients, &mut budget).await?;
                    print_progress(measurements.len() + 1, total, target.id, protocol, clients, &outcome);
                    measurements.push(Measurement { target: target.id, protocol, clients, outcome, attempts });
                }
            }
        }
    }
    Ok(measurements)
}

/// One run, repeated (up to `plan.retries` times, after a pause, while `budget` lasts) while
/// other work on the machine took more than `plan.max_other_load` of it; keeps the least
/// disturbed attempt.
async fn measure_one(
    servers: &Servers,
    plan: &Plan,
    target: &Target,
    protocol: Protocol,
    clients: u32,
    budget: &mut usize,
) -> Result<(Outcome, u32)> {
    let mut best: Option<Outcome> = None;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let run = Run { port: target.port, protocol, clients, seconds: plan.seconds, proxy_pid: target.pid };
        let outcome: Outcome = blocking(move || run.execute()).await??;
        check_alive(servers)?;
        // Let the run's connections close before the next one starts.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let other = match &outcome {
            Ok(sample) => sample.other.other_pct,
            // A failure is kept as it is: retrying must not hide it.
            Err(_) => return Ok((outcome, attempts)),
        };
        let better = match &best {
            Some(Ok(kept)) => other < kept.other.other_pct,
            _ => true,
        };
        if better {
            best = Some(outcome);
        }
        if other <= plan.max_other_load || attempts > plan.retries || *budget == 0 {
            break;
        }
        *budget -= 1;
        println!("          (other processes took {other:.0}% of the machine during that run: repeating it in 3 s)");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let outcome = best.ok_or_else(|| anyhow::anyhow!("no attempt was kept"))?;
    Ok((outcome, attempts))
}

fn print_progress(done: usize, total: usize, target: TargetId, protocol: Protocol, clients: u32, outcome: &Outcome) {
    let what = format!("[{done:>3}/{total}] -M {:<8} -c {clients:<3} {:<36}", protocol.name(), report::label(target));
    match outcome {
        Ok(s) => println!(
            "{what} {:>9.0} tps  avg {:>6.3} ms  p99 {:>6.3} ms{}",
            s.tps,
            s.latency_avg_ms,
            s.latency_p99_ms,
            s.proxy_cpu_us_per_query.map(|c| format!("  proxy CPU {c:.1} µs/query")).unwrap_or_default()
                + &format!("  other load {:.0}%", s.other.other_pct)
        ),
        Err(e) => println!("{what} FAILED: {e}"),
    }
}

/// Fails if a proxy died (a crash must not look like a slow run).
fn check_alive(servers: &Servers) -> Result<()> {
    for pgvane in &servers.pgvanes {
        if !pgvane.is_running() {
            bail!("pgvane exited during the bench; log:\n{}", tail(&pgvane.log(), 40));
        }
    }
    for target in &servers.targets {
        if let Some(pid) = target.pid {
            if !alive(pid) {
                bail!("{} (pid {pid}) exited during the bench", report::label(target.id));
            }
        }
    }
    Ok(())
}

/// Whether process `pid` exists and is not a zombie (an exited child not yet reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s != "Z")))
        .unwrap_or(false)
}

/// Runs blocking work (pgbench) off the runtime's worker.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.context("a bench thread panicked")
}
