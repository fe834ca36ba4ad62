//! Medians, ratios against the targets of the issue, and the markdown report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::pgbench::{Outcome, Sample};
use crate::pgbouncer;
use crate::{Kind, Plan, PoolMode, Protocol, TargetId};

/// pgvane/relay TPS the performance issue asks for, at 10 clients and fewer (a pooler cannot
/// keep up with a relay that gives every client a server connection of its own beyond that).
const TARGET_VS_RELAY: f64 = 0.95;
const TARGET_VS_RELAY_MAX_CLIENTS: u32 = 10;
/// pgvane/PgBouncer TPS it asks for at every client count.
const TARGET_VS_PGBOUNCER: f64 = 1.0;
/// pgvane's CPU per query ≤ PgBouncer's, at this many clients and more.
const TARGET_CPU_MIN_CLIENTS: u32 = 10;

/// One pgbench run.
pub struct Measurement {
    pub target: TargetId,
    pub protocol: Protocol,
    pub clients: u32,
    pub outcome: Outcome,
    /// 1, or more when other work on the machine disturbed the first attempts.
    pub attempts: u32,
}

/// How a target is named in the report.
pub fn label(id: TargetId) -> String {
    match (id.kind, id.mode) {
        (Kind::Direct, _) => "PostgreSQL direct".to_owned(),
        (Kind::Relay, _) => "HAProxy TCP relay".to_owned(),
        (Kind::PgBouncer, Some(mode)) => format!("PgBouncer ({})", mode.name()),
        (Kind::Pgvane, Some(mode)) => format!("pgvane ({})", mode.name()),
        (Kind::PgvanePlugin(plugin), Some(mode)) => format!("pgvane + {} ({})", plugin.name(), mode.name()),
        (Kind::PgvaneMetrics, Some(mode)) => format!("pgvane + /metrics ({})", mode.name()),
        (Kind::PgBouncerUnix, Some(mode)) => format!("PgBouncer ({}, server on unix socket)", mode.name()),
        (Kind::PgvaneUnix, Some(mode)) => format!("pgvane ({}, server on unix socket)", mode.name()),
        (kind, None) => format!("{kind:?}"),
    }
}

/// Facts about the run and the machine, for the report's header.
pub struct Meta {
    date: String,
    command: String,
    elapsed: Duration,
    machine: Vec<(&'static str, String)>,
    profiles: Vec<PathBuf>,
}

impl Meta {
    pub fn collect(
        pgvane: &Path,
        workspace: &Path,
        command: String,
        elapsed: Duration,
        load_before: String,
        profiles: Vec<PathBuf>,
    ) -> Meta {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                let kib: f64 =
                    s.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
                Some(format!("{:.1} GiB", kib / 1024.0 / 1024.0))
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let pg_bin = std::env::var("PG_BIN_DIR").unwrap_or_else(|_| pgvane_tests::DEFAULT_PG_BIN_DIR.to_owned());
        let commit = revision(pgvane, workspace);
        let machine = vec![
            ("CPU", format!("{} × {cpu}", first_line("nproc", &[]))),
            ("memory", memory),
            ("kernel", first_line("uname", &["-srm"])),
            ("PostgreSQL", first_line(&format!("{pg_bin}/postgres"), &["--version"])),
            ("pgbench", first_line(pgvane_tests::PGBENCH, &["--version"])),
            ("PgBouncer", format!("{} (Debian package)", pgbouncer::version())),
            (
                "pgvane",
                format!(
                    "{}, {commit} ({})",
                    first_line(&pgvane.display().to_string(), &["--version"]),
                    pgvane.display()
                ),
            ),
            ("scheduling priority", format!("nice {} (every process the bench starts inherits it)", nice())),
            ("load average (1, 5, 15 min)", format!("{load_before} before the bench, {} after", load_average())),
        ];
        Meta { date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]), command, elapsed, machine, profiles }
    }
}

/// Which pgvane source was measured: `$PGVANE_BENCH_REVISION` if set; for a binary built in this
/// workspace its HEAD commit (and whether proxy/ had uncommitted changes); else unknown.
fn revision(pgvane: &Path, workspace: &Path) -> String {
    if let Ok(revision) = std::env::var("PGVANE_BENCH_REVISION") {
        return revision;
    }
    let in_workspace =
        pgvane.canonicalize().ok().zip(workspace.canonicalize().ok()).is_some_and(|(b, w)| b.starts_with(w));
    if !in_workspace {
        return "unknown (built outside this workspace; set PGVANE_BENCH_REVISION)".to_owned();
    }
    let git = workspace.display().to_string();
    let head = first_line("git", &["-C", &git, "rev-parse", "--short", "HEAD"]);
    let dirty = first_line("git", &["-C", &git, "status", "--porcelain", "--", "proxy", "Cargo.toml", "Cargo.lock"]);
    if dirty.is_empty() || dirty == "?" {
        format!("commit {head}")
    } else {
        format!("commit {head} + uncommitted changes")
    }
}

/// This process's nice value (field 19 of `/proc/self/stat`).
fn nice() -> String {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().nth(19 - 3)?.to_owned()))
        .unwrap_or_else(|| "?".to_owned())
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`): other work on the machine during the
/// bench shows here.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// The first line a command prints, or "?".
fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_owned())
        .unwrap_or_else(|| "?".to_owned())
}

/// The medians of one target in one configuration.
struct Stats {
    tps: f64,
    latency_avg_ms: f64,
    latency_p99_ms: f64,
    cpu_us: Option<f64>,
    tps_runs: Vec<f64>,
    other_pct: f64,
}

/// What one target did in one configuration.
enum Cell {
    Measured(Stats),
    /// At least one run failed: a proxy that fails pgbench does not get a number.
    Failed {
        failed: usize,
        runs: usize,
        message: String,
    },
    NotRun,
}

impl Cell {
    fn stats(&self) -> Option<&Stats> {
        match self {
            Cell::Measured(s) => Some(s),
            _ => None,
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The report.
pub struct Report<'a> {
    pub meta: &'a Meta,
    pub plan: &'a Plan,
    pub measurements: &'a [Measurement],
}

impl Report<'_> {
    fn cell(&self, target: TargetId, protocol: Protocol, clients: u32) -> Cell {
        let runs: Vec<&Outcome> = self
            .measurements
            .iter()
            .filter(|m| m.target == target && m.protocol == protocol && m.clients == clients)
            .map(|m| &m.outcome)
            .collect();
        if runs.is_empty() {
            return Cell::NotRun;
        }
        let failures: Vec<&String> = runs.iter().filter_map(|o| o.as_ref().err()).collect();
        if let Some(first) = failures.first() {
            return Cell::Failed { failed: failures.len(), runs: runs.len(), message: (*first).clone() };
        }
        let samples: Vec<&Sample> = runs.iter().filter_map(|o| o.as_ref().ok()).collect();
        let of = |f: fn(&Sample) -> f64| median(samples.iter().map(|s| f(s)).collect());
        let cpu: Vec<f64> = samples.iter().filter_map(|s| s.proxy_cpu_us_per_query).collect();
        Cell::Measured(Stats {
            tps: of(|s| s.tps),
            latency_avg_ms: of(|s| s.latency_avg_ms),
            latency_p99_ms: of(|s| s.latency_p99_ms),
            cpu_us: (!cpu.is_empty()).then(|| median(cpu)),
            tps_runs: samples.iter().map(|s| s.tps).collect(),
            other_pct: of(|s| s.other.other_pct),
        })
    }

    fn direct(&self, protocol: Protocol, clients: u32) -> Cell {
        self.cell(TargetId { kind: Kind::Direct, mode: None }, protocol, clients)
    }

    fn relay(&self, protocol: Protocol, clients: u32) -> Cell {
        self.cell(TargetId { kind: Kind::Relay, mode: None }, protocol, clients)
    }

    fn proxy(&self, kind: Kind, mode: PoolMode, protocol: Protocol, clients: u32) -> Cell {
        self.cell(TargetId { kind, mode: Some(mode) }, protocol, clients)
    }

    pub fn render(&self) -> String {
        let mut md = String::new();
        let plan = self.plan;
        let _ = writeln!(md, "# pgvane benchmark: pgvane vs PostgreSQL direct vs PgBouncer\n");
        let _ = writeln!(
            md,
            "Measured {} with `{}` ({:.0} min in all). pgbench `-S` (select-only), every target in the same run.\n",
            self.meta.date,
            self.meta.command,
            self.meta.elapsed.as_secs_f64() / 60.0
        );
        self.render_headline(&mut md);
        for &mode in &plan.modes {
            self.render_mode(&mut md, mode);
        }
        self.render_plugins(&mut md);
        self.render_metrics(&mut md);
        self.render_failures(&mut md);
        self.render_setup(&mut md);
        self.render_details(&mut md);
        if !self.plan.skipped_plugins.is_empty() {
            let _ = writeln!(md, "## Not measured\n");
            for (plugin, why) in &self.plan.skipped_plugins {
                let _ = writeln!(md, "- pgvane with the {} plugin: {why}", plugin.name());
            }
            let _ = writeln!(md);
        }
        if !self.meta.profiles.is_empty() {
            let _ = writeln!(md, "## Profiles\n");
            for path in &self.meta.profiles {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let _ =
                    writeln!(md, "- [`{name}`]({name}): `perf record -g` on the proxy during pgbench -M simple -c 10");
            }
            let _ = writeln!(md);
        }
        render_how_to_read(&mut md, plan.repeats);
        md
    }

    /// How many of the targets were met, per pool mode.
    fn render_headline(&self, md: &mut String) {
        let _ = writeln!(md, "## Targets\n");
        let _ = writeln!(
            md,
            "From the performance issue: pgvane/relay ≥ {TARGET_VS_RELAY} at {TARGET_VS_RELAY_MAX_CLIENTS} clients \
             and fewer; pgvane/PgBouncer ≥ {TARGET_VS_PGBOUNCER:.1} at every client count (where PgBouncer fails, \
             it does not count); pgvane's CPU time per query ≤ PgBouncer's at {TARGET_CPU_MIN_CLIENTS} clients \
             and more. ✓ met, ✗ missed.\n"
        );
        const NAMES: [&str; 3] = ["pgvane/relay", "pgvane/PgBouncer", "CPU µs/query, pgvane vs PgBouncer"];
        let _ = writeln!(md, "| pool mode | {} | {} | {} |", NAMES[0], NAMES[1], NAMES[2]);
        let _ = writeln!(md, "|---|---|---|---|");
        let mut missed_lines = Vec::new();
        for &mode in &self.plan.modes {
            let mut tallies = [(0, 0), (0, 0), (0, 0)];
            let mut missed: [Vec<String>; 3] = Default::default();
            for &protocol in &self.plan.protocols {
                for &clients in &self.plan.clients {
                    let checks = self.checks(mode, protocol, clients);
                    for (i, check) in checks.iter().enumerate() {
                        if let Some((ok, value)) = check {
                            tallies[i].1 += 1;
                            if *ok {
                                tallies[i].0 += 1;
                            } else {
                                missed[i].push(format!("{value} ({}, {clients})", protocol.name()));
                            }
                        }
                    }
                }
            }
            let fmt = |(met, of): (i32, i32)| if of == 0 { "—".to_owned() } else { format!("{met} of {of} met") };
            let _ =
                writeln!(md, "| {} | {} | {} | {} |", mode.name(), fmt(tallies[0]), fmt(tallies[1]), fmt(tallies[2]));
            for (name, values) in NAMES.iter().zip(&missed) {
                if !values.is_empty() {
                    missed_lines.push(format!("- {} mode, {name}: {}", mode.name(), values.join(", ")));
                }
            }
        }
        if !missed_lines.is_empty() {
            let _ = writeln!(md, "\nMissed (value, then -M and clients):\n");
            for line in missed_lines {
                let _ = writeln!(md, "{line}");
            }
        }
        let _ = writeln!(md);
    }

    /// The three checks of one configuration: (met, what was measured), `None` when not
    /// applicable (a target failed or was not run).
    fn checks(&self, mode: PoolMode, protocol: Protocol, clients: u32) -> [Option<(bool, String)>; 3] {
        let relay = self.relay(protocol, clients);
        let bouncer = self.proxy(Kind::PgBouncer, mode, protocol, clients);
        let pgvane = self.proxy(Kind::Pgvane, mode, protocol, clients);
        let Some(v) = pgvane.stats() else {
            // pgvane failing is a miss of every target that applies.
            let failed = matches!(pgvane, Cell::Failed { .. });
            let miss = || failed.then(|| (false, "pgvane failed".to_owned()));
            return [miss(), None, None];
        };
        let vs_relay = relay.stats().filter(|_| clients <= TARGET_VS_RELAY_MAX_CLIENTS).map(|r| {
            let ratio = v.tps / r.tps;
            (ratio >= TARGET_VS_RELAY, format!("{ratio:.2}"))
        });
        let vs_bouncer = bouncer.stats().map(|b| {
            let r = v.tps / b.tps;
            (r >= TARGET_VS_PGBOUNCER, format!("{r:.2}"))
        });
        let cpu = match (bouncer.stats().and_then(|b| b.cpu_us), v.cpu_us) {
            (Some(b), Some(p)) if clients >= TARGET_CPU_MIN_CLIENTS => Some((p <= b, format!("{p:.1} vs {b:.1}"))),
            _ => None,
        };
        [vs_relay, vs_bouncer, cpu]
    }

    fn render_mode(&self, md: &mut String, mode: PoolMode) {
        let size = self.plan.pool_size(mode);
        let _ = writeln!(md, "## pool_mode = {} (pool size {size})\n", mode.name());
        let _ = writeln!(
            md,
            "| -M | clients | direct TPS | relay TPS | PgBouncer TPS | pgvane TPS | pgvane/relay | pgvane/PgBouncer | \
             pgvane/direct | PgBouncer/relay | CPU µs/query relay | CPU µs/query PgBouncer | CPU µs/query pgvane |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &protocol in &self.plan.protocols {
            for &clients in &self.plan.clients {
                let direct = self.direct(protocol, clients);
                let relay = self.relay(protocol, clients);
                let bouncer = self.proxy(Kind::PgBouncer, mode, protocol, clients);
                let pgvane = self.proxy(Kind::Pgvane, mode, protocol, clients);
                let checks = self.checks(mode, protocol, clients);
                let ratio = |a: &Cell, b: &Cell, check: &Option<(bool, String)>| match (a.stats(), b.stats()) {
                    (Some(a), Some(b)) => format!("{:.2}{}", a.tps / b.tps, mark(check)),
                    _ => "—".to_owned(),
                };
                let cpu = |c: &Cell, check: &Option<(bool, String)>| match c.stats().and_then(|s| s.cpu_us) {
                    Some(us) => format!("{us:.1}{}", mark(check)),
                    None => "—".to_owned(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {clients} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    protocol.name(),
                    tps(&direct),
                    tps(&relay),
                    tps(&bouncer),
                    tps(&pgvane),
                    ratio(&pgvane, &relay, &checks[0]),
                    ratio(&pgvane, &bouncer, &checks[1]),
                    ratio(&pgvane, &direct, &None),
                    ratio(&bouncer, &relay, &None),
                    cpu(&relay, &None),
                    cpu(&bouncer, &None),
                    cpu(&pgvane, &checks[2]),
                );
            }
        }
        let _ = writeln!(md);
        let _ = writeln!(md, "Latency, ms: average / p99.\n");
        let _ = writeln!(md, "| -M | clients | direct | relay | PgBouncer | pgvane |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        for &protocol in &self.plan.protocols {
            for &clients in &self.plan.clients {
                let _ = writeln!(
                    md,
                    "| {} | {clients} | {} | {} | {} | {} |",
                    protocol.name(),
                    latency(&self.direct(protocol, clients)),
                    latency(&self.relay(protocol, clients)),
                    latency(&self.proxy(Kind::PgBouncer, mode, protocol, clients)),
                    latency(&self.proxy(Kind::Pgvane, mode, protocol, clients)),
                );
            }
        }
        let _ = writeln!(md);
    }

    /// pgvane with each plugin against pgvane without (transaction mode).
    fn render_plugins(&self, md: &mut String) {
        if self.plan.plugins.is_empty() {
            return;
        }
        let mode = PoolMode::Transaction;
        let _ = writeln!(md, "## Policy plugins (pool_mode = transaction)\n");
        let _ = writeln!(
            md,
            "pgvane with one plugin in its chain, same settings otherwise (plugin defaults: fuel 5000000, \
             16 MB, 10 ms, on_error pass). Ratios are to pgvane without a plugin in the same run.\n"
        );
        for (plugin, _) in &self.plan.plugins {
            let _ = writeln!(md, "- {}: {}", plugin.name(), plugin.setup());
        }
        let _ = writeln!(md);
        let mut header = "| -M | clients | pgvane TPS |".to_owned();
        let mut rule = "|---|---:|---:|".to_owned();
        for (plugin, _) in &self.plan.plugins {
            let name = plugin.name();
            let _ = write!(header, " + {name} TPS | / pgvane | / direct | CPU µs/query ({name} vs none) | p99 ms |");
            rule.push_str("---:|---:|---:|---:|---:|");
        }
        let _ = writeln!(md, "{header}\n{rule}");
        for &protocol in &self.plan.protocols {
            for &clients in &self.plan.clients {
                let direct = self.direct(protocol, clients);
                let pgvane = self.proxy(Kind::Pgvane, mode, protocol, clients);
                let mut row = format!("| {} | {clients} | {} |", protocol.name(), tps(&pgvane));
                for &(plugin, _) in &self.plan.plugins {
                    let with = self.proxy(Kind::PgvanePlugin(plugin), mode, protocol, clients);
                    let ratio = |base: &Cell| match (with.stats(), base.stats()) {
                        (Some(w), Some(b)) => format!("{:.2}", w.tps / b.tps),
                        _ => "—".to_owned(),
                    };
                    let cpu = match (with.stats().and_then(|s| s.cpu_us), pgvane.stats().and_then(|s| s.cpu_us)) {
                        (Some(w), Some(b)) => format!("{w:.1} vs {b:.1}"),
                        _ => "—".to_owned(),
                    };
                    let p99 = with.stats().map_or_else(|| "—".to_owned(), |s| format!("{:.3}", s.latency_p99_ms));
                    let _ = write!(row, " {} | {} | {} | {cpu} | {p99} |", tps(&with), ratio(&pgvane), ratio(&direct));
                }
                let _ = writeln!(md, "{row}");
            }
        }
        let _ = writeln!(md);
    }

    /// pgvane with `/metrics` on (metrics_addr set, scraped every second) against pgvane without
    /// metrics_addr, in transaction mode.
    fn render_metrics(&self, md: &mut String) {
        if !self.plan.metrics {
            return;
        }
        let mode = PoolMode::Transaction;
        let _ = writeln!(md, "## Metrics on vs off (transaction mode)\n");
        let _ = writeln!(
            md,
            "pgvane with `metrics_addr` set and `/metrics` fetched every second during the runs, against \
             pgvane without `metrics_addr` (its counters are kept either way). Target: on / off ≥ 0.98 at \
             10 clients.\n"
        );
        let _ = writeln!(md, "| -M | clients | off TPS | on TPS | on / off | CPU µs/query (on vs off) |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        for &protocol in &self.plan.protocols {
            for &clients in &self.plan.clients {
                let off = self.proxy(Kind::Pgvane, mode, protocol, clients);
                let on = self.proxy(Kind::PgvaneMetrics, mode, protocol, clients);
                let ratio = match (on.stats(), off.stats()) {
                    (Some(a), Some(b)) => format!("{:.3}", a.tps / b.tps),
                    _ => "—".to_owned(),
                };
                let cpu = match (on.stats().and_then(|s| s.cpu_us), off.stats().and_then(|s| s.cpu_us)) {
                    (Some(a), Some(b)) => format!("{a:.1} vs {b:.1}"),
                    _ => "—".to_owned(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {clients} | {} | {} | {ratio} | {cpu} |",
                    protocol.name(),
                    tps(&off),
                    tps(&on)
                );
            }
        }
        let _ = writeln!(md);
    }

    /// Every failing (target, configuration) with pgbench's error.
    fn render_failures(&self, md: &mut String) {
        let mut lines = Vec::new();
        for &protocol in &self.plan.protocols {
            for &clients in &self.plan.clients {
                for target in self.plan.targets() {
                    if let Cell::Failed { failed, runs, message } = self.cell(target, protocol, clients) {
                        lines.push(format!(
                            "- {}, -M {}, {clients} clients: {failed} of {runs} runs failed: `{}`",
                            label(target),
                            protocol.name(),
                            message.replace('`', "'")
                        ));
                    }
                }
            }
        }
        if !lines.is_empty() {
            let _ = writeln!(md, "## Failures\n");
            let _ = writeln!(
                md,
                "A run fails when pgbench exits non-zero, aborts a client or counts a failed transaction; a \
                 target with a failed run gets no number for that configuration.\n"
            );
            for line in lines {
                let _ = writeln!(md, "{line}");
            }
            let _ = writeln!(md);
        }
    }

    fn render_setup(&self, md: &mut String) {
        let plan = self.plan;
        let _ = writeln!(md, "## Machine and setup\n");
        let _ = writeln!(md, "| | |\n|---|---|");
        for (key, value) in &self.meta.machine {
            let _ = writeln!(md, "| {key} | {value} |");
        }
        let _ = writeln!(md, "| other work during the runs | {} |", self.noise_summary());
        let sizes: Vec<String> =
            plan.modes.iter().map(|&m| format!("{} in {} mode", plan.pool_size(m), m.name())).collect();
        let _ = writeln!(
            md,
            "\n- One PostgreSQL 15 cluster on loopback (the test harness's: fsync, synchronous_commit and \
             full_page_writes off; shared_buffers 1GB, max_connections 1000), `pgbench -i -s {scale}` (whole \
             database in shared buffers).\n\
             - Each run: `pgbench -S -n -T {secs} -c <clients> -j min(<clients>,2) -M <protocol> --log \
             --sampling-rate=<r>` as user `app` over TCP, `sslmode=disable`. TPS and average latency are \
             pgbench's (without connection time); p99 is the nearest-rank 99th percentile of the \
             per-transaction log (every transaction at 1 client, a 10% sample beyond).\n\
             - PgBouncer and pgvane: `pool_mode` as in each section's title, pool size {sizes} (session mode \
             needs one server connection per client), max_client_conn 1000, `auth_type = scram-sha-256`, \
             the auth file holding `app`'s SCRAM verifier copied from `pg_authid` (no plain password, no \
             PBKDF2 in either proxy), `server_reset_query = DISCARD ALL`. pgvane is the release build with \
             `RUST_LOG=pgvane=warn`, `worker_threads = {threads}` ({threads_meaning}) and no policy \
             plugin; PgBouncer (one thread) runs with log_connections, \
             log_disconnections and log_stats off, as user postgres.\n\
             - Order: for each (-M, clients), {repeats} round(s) over all targets, the order rotated each \
             round (A B C, B C A, …), after one unmeasured 2 s warm-up run per target. Every number is the \
             median over the rounds.\n\
             - Proxy CPU per query: utime + stime of the proxy process (all threads, from \
             `/proc/<pid>/stat`, 10 ms ticks) across the pgbench run, divided by the transactions it \
             processed. Each `-S` transaction is one `SELECT`.\n",
            scale = plan.scale,
            threads = plan.pgvane_threads,
            threads_meaning = match plan.pgvane_threads {
                0 => "one thread per core, pgvane's default",
                1 => "one thread, as PgBouncer",
                _ => "threads",
            },
            secs = plan.seconds,
            sizes = sizes.join(", "),
            repeats = plan.repeats,
        );
    }

    /// How much other work there was on the machine, and how many runs were repeated for it.
    fn noise_summary(&self) -> String {
        let loads: Vec<f64> =
            self.measurements.iter().filter_map(|m| m.outcome.as_ref().ok()).map(|s| s.other.other_pct).collect();
        let steal: Vec<f64> =
            self.measurements.iter().filter_map(|m| m.outcome.as_ref().ok()).map(|s| s.other.steal_pct).collect();
        if loads.is_empty() {
            return "no successful run".to_owned();
        }
        let max = loads.iter().copied().fold(0.0, f64::max);
        let above = loads.iter().filter(|&&l| l > self.plan.max_other_load).count();
        let repeated = self.measurements.iter().filter(|m| m.attempts > 1).count();
        format!(
            "processes the bench did not start took a median {:.1}% (max {max:.0}%) of the machine's CPU \
             during a run, steal time a median {:.1}%; {repeated} of {} runs were repeated because other work took \
             more than {:.0}% (at most {} times each, a quarter of the runs in all), {above} kept above it",
            median(loads.clone()),
            median(steal),
            self.measurements.len(),
            self.plan.max_other_load,
            self.plan.retries,
        )
    }

    fn render_details(&self, md: &mut String) {
        let _ = writeln!(md, "## Every configuration\n");
        let _ = writeln!(
            md,
            "| target | -M | clients | TPS (median) | TPS per round | avg ms | p99 ms | proxy CPU µs/query | other load % |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---|---:|---:|---:|---:|");
        let targets = self.plan.targets();
        for &protocol in &self.plan.protocols {
            for &clients in &self.plan.clients {
                for &target in &targets {
                    let cell = self.cell(target, protocol, clients);
                    let (runs, avg, p99, cpu, other) = match &cell {
                        Cell::Measured(s) => (
                            s.tps_runs.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(", "),
                            format!("{:.3}", s.latency_avg_ms),
                            format!("{:.3}", s.latency_p99_ms),
                            s.cpu_us.map_or_else(|| "—".to_owned(), |c| format!("{c:.1}")),
                            format!("{:.0}", s.other_pct),
                        ),
                        _ => ("—".to_owned(), "—".to_owned(), "—".to_owned(), "—".to_owned(), "—".to_owned()),
                    };
                    let _ = writeln!(
                        md,
                        "| {} | {} | {clients} | {} | {runs} | {avg} | {p99} | {cpu} | {other} |",
                        label(target),
                        protocol.name(),
                        tps(&cell)
                    );
                }
            }
        }
        let _ = writeln!(md);
    }
}

fn mark(check: &Option<(bool, String)>) -> &'static str {
    match check {
        Some((true, _)) => " ✓",
        Some((false, _)) => " ✗",
        None => "",
    }
}

fn tps(cell: &Cell) -> String {
    match cell {
        Cell::Measured(s) => format!("{:.0}", s.tps),
        Cell::Failed { .. } => "fails".to_owned(),
        Cell::NotRun => "—".to_owned(),
    }
}

fn latency(cell: &Cell) -> String {
    match cell {
        Cell::Measured(s) => format!("{:.3} / {:.3}", s.latency_avg_ms, s.latency_p99_ms),
        Cell::Failed { .. } => "fails".to_owned(),
        Cell::NotRun => "—".to_owned(),
    }
}

fn render_how_to_read(md: &mut String, repeats: u32) {
    let _ = writeln!(
        md,
        "## How to read this\n\n\
         - **TPS** is transactions (here: single `SELECT`s by primary key) per second over the run; higher is \
         better. **pgvane/direct** is the share of PostgreSQL's own throughput left with pgvane in the path \
         (1.00 = no cost); **pgvane/relay** against HAProxy relaying the bytes in TCP mode on one thread, with no \
         protocol work and no pooling (each client has a server connection of its own), the floor no proxy beats; \
         **pgvane/PgBouncer** above 1 means pgvane served more queries per second than \
         PgBouncer in the same configuration.\n\
         - **avg / p99 latency** are per transaction as the client sees it, in ms; with a proxy each query \
         makes two extra loopback hops.\n\
         - **CPU µs/query** is the CPU time the proxy process itself burned per query: the cost of proxying, \
         independent of how busy the machine was. On this 2-core machine pgbench, PostgreSQL's backends and \
         the proxy share the cores, so at 10 and 50 clients every µs a proxy spends is taken from PostgreSQL; \
         at 1 client the cores are mostly idle and latency (round trips) dominates.\n\
         - **other load %** is the CPU that processes the bench did not start took during a run, as a share \
         of the whole machine; runs where it passed the limit were repeated (see Machine and setup). High values \
         mean the numbers of that configuration are less trustworthy.\n\
         - At 1 client every query crosses three processes (pgbench, proxy, backend) one after the other, so \
         throughput is bound by wake-up latency, not CPU. In this VM, waking a process on the other vCPU is \
         expensive, and where the scheduler happens to place the three processes moves a run's TPS by up to \
         2× (see TPS per round).\n\
         - PgBouncer is single-threaded; pgvane runs a multi-threaded tokio runtime.\n\
         - `-M prepared` in transaction mode needs the pooler to carry prepared statements between server \
         connections; Debian's PgBouncer 1.18 cannot, which shows as failed runs rather than numbers.\n\
         - The ratios are of medians of {repeats} interleaved run(s) per target; differences of a few percent are within \
         the noise of a shared 2-core VM. Compare ratios, not absolute TPS, across machines or days.\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Plugin;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    fn sample(tps: f64) -> Outcome {
        Ok(Sample {
            tps,
            latency_avg_ms: 1.0,
            latency_p99_ms: 2.0,
            transactions: 100,
            proxy_cpu_us_per_query: None,
            other: Default::default(),
        })
    }

    #[test]
    fn one_failed_run_fails_the_cell_and_ratios_need_both_sides() {
        let plan = Plan {
            seconds: 1,
            repeats: 2,
            clients: vec![10],
            protocols: vec![Protocol::Prepared],
            modes: vec![PoolMode::Transaction],
            pool_size: 20,
            pgvane_threads: 1,
            scale: 1,
            max_other_load: 10.0,
            retries: 2,
            plugins: Vec::new(),
            skipped_plugins: vec![(Plugin::RwSplit, "--no-plugins".to_owned())],
            metrics: false,
            server_socket: crate::server_socket::ServerSocket::Tcp,
        };
        let relay = TargetId { kind: Kind::Relay, mode: None };
        let bouncer = TargetId { kind: Kind::PgBouncer, mode: Some(PoolMode::Transaction) };
        let pgvane = TargetId { kind: Kind::Pgvane, mode: Some(PoolMode::Transaction) };
        let m =
            |target, outcome| Measurement { target, protocol: Protocol::Prepared, clients: 10, outcome, attempts: 1 };
        let measurements = vec![
            m(relay, sample(100.0)),
            m(relay, sample(200.0)),
            m(bouncer, sample(50.0)),
            m(bouncer, Err("prepared statement \"P_0\" already exists".to_owned())),
            m(pgvane, sample(90.0)),
            m(pgvane, sample(80.0)),
        ];
        let meta = Meta {
            date: String::new(),
            command: String::new(),
            elapsed: Duration::ZERO,
            machine: Vec::new(),
            profiles: Vec::new(),
        };
        let report = Report { meta: &meta, plan: &plan, measurements: &measurements };
        assert!(matches!(report.cell(bouncer, Protocol::Prepared, 10), Cell::Failed { failed: 1, runs: 2, .. }));
        let [vs_relay, vs_bouncer, cpu] = report.checks(PoolMode::Transaction, Protocol::Prepared, 10);
        // 85 / 150.
        assert_eq!(vs_relay, Some((false, "0.57".to_owned())));
        assert_eq!(vs_bouncer, None);
        assert_eq!(cpu, None);
        let md = report.render();
        assert!(md.contains("| prepared | 10 | — | 150 | fails | 85 | 0.57 ✗ | — | — |"), "{md}");
        assert!(md.contains("1 of 2 runs failed"), "{md}");
        assert!(md.contains("- pgvane with the rw-split plugin: --no-plugins"), "{md}");
    }
}
