//! `--server-socket`: how the proxies reach PostgreSQL. `tcp` (the default): 127.0.0.1, as
//! before. `unix`: every PgBouncer and pgvane connects to PostgreSQL's unix-domain socket
//! (`host=/dir` in PgBouncer's `[databases]`, `host = "/dir"` in pgvane's). `both`: the proxies
//! on TCP as usual, plus a PgBouncer and a pgvane per pool mode on the unix-domain socket, and a
//! section comparing the two legs. pgbench always reaches the proxies (and PostgreSQL, for
//! "direct") over TCP, so only the server leg changes.

use std::fmt::Write as _;

use clap::ValueEnum;
use pgvane_tests::PgCluster;

use crate::pgbench::Sample;
use crate::report::Measurement;
use crate::{Kind, Plan, PoolMode, Protocol, TargetId};

/// `--server-socket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerSocket {
    Tcp,
    Unix,
    Both,
}

impl ServerSocket {
    /// The server's `host` for the proxies of the main columns.
    pub fn main_host(self, cluster: &PgCluster) -> String {
        match self {
            ServerSocket::Tcp | ServerSocket::Both => cluster.host().to_owned(),
            ServerSocket::Unix => unix_host(cluster),
        }
    }

    /// Whether a PgBouncer and a pgvane on the unix-domain socket run beside the TCP ones.
    pub fn both(self) -> bool {
        self == ServerSocket::Both
    }
}

/// The server's `host` for a proxy on PostgreSQL's unix-domain socket: its directory.
pub fn unix_host(cluster: &PgCluster) -> String {
    cluster.socket_dir().display().to_string()
}

/// The extra targets of `both`, per pool mode.
pub fn extra_targets(plan: &Plan) -> Vec<TargetId> {
    if !plan.server_socket.both() {
        return Vec::new();
    }
    let kinds = [Kind::PgBouncerUnix, Kind::PgvaneUnix];
    plan.modes.iter().flat_map(|&mode| kinds.map(|kind| TargetId { kind, mode: Some(mode) })).collect()
}

/// Median TPS and proxy CPU µs per query of one cell, or why there is none.
fn cell(
    measurements: &[Measurement],
    kind: Kind,
    mode: PoolMode,
    protocol: Protocol,
    clients: u32,
) -> Option<(f64, Option<f64>)> {
    let target = TargetId { kind, mode: Some(mode) };
    let runs: Vec<&Measurement> =
        measurements.iter().filter(|m| m.target == target && m.protocol == protocol && m.clients == clients).collect();
    let samples: Vec<&Sample> = runs.iter().filter_map(|m| m.outcome.as_ref().ok()).collect();
    if samples.is_empty() || samples.len() < runs.len() {
        return None; // not run, or a run failed: no number
    }
    let cpu: Vec<f64> = samples.iter().filter_map(|s| s.proxy_cpu_us_per_query).collect();
    Some((median(samples.iter().map(|s| s.tps).collect()), (!cpu.is_empty()).then(|| median(cpu))))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The report's section on the server leg (nothing with `tcp`).
pub fn render(plan: &Plan, measurements: &[Measurement]) -> String {
    let mut md = String::new();
    match plan.server_socket {
        ServerSocket::Tcp => return md,
        ServerSocket::Unix => {
            let _ = writeln!(
                md,
                "## Server leg on a unix-domain socket\n\n`--server-socket unix`: every PgBouncer and pgvane above \
                 reached PostgreSQL over its unix-domain socket (PgBouncer `host=<dir>`, pgvane `host = \"<dir>\"`); \
                 pgbench reached the proxies, and PostgreSQL for \"direct\", over TCP.\n"
            );
            return md;
        }
        ServerSocket::Both => {}
    }
    let _ = writeln!(
        md,
        "## Server leg: TCP vs unix-domain socket\n\n`--server-socket both`: each proxy twice, with the same pool \
         mode and size, once reaching PostgreSQL over TCP (127.0.0.1) and once over its unix-domain socket; pgbench \
         reaches every proxy over TCP. Medians of TPS; CPU is the proxy process's user + system time per query.\n"
    );
    let show = |v: Option<f64>, digits: usize| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.digits$}"));
    let ratio = |a: Option<f64>, b: Option<f64>| show(a.zip(b).map(|(a, b)| a / b), 2);
    for &mode in &plan.modes {
        let _ = writeln!(md, "### {} mode\n", mode.name());
        let _ = writeln!(
            md,
            "| -M | clients | PgBouncer TCP | PgBouncer unix | unix / TCP | pgvane TCP | pgvane unix | unix / TCP | \
             pgvane / PgBouncer (unix) | CPU µs/query PgBouncer TCP / unix | CPU µs/query pgvane TCP / unix |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &protocol in &plan.protocols {
            for &clients in &plan.clients {
                let get = |kind| cell(measurements, kind, mode, protocol, clients);
                let (bt, bu, pt, pu) =
                    (get(Kind::PgBouncer), get(Kind::PgBouncerUnix), get(Kind::Pgvane), get(Kind::PgvaneUnix));
                let tps = |c: Option<(f64, Option<f64>)>| c.map(|(tps, _)| tps);
                let cpu = |c: Option<(f64, Option<f64>)>| c.and_then(|(_, cpu)| cpu);
                let _ = writeln!(
                    md,
                    "| {} | {clients} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} |",
                    protocol.name(),
                    show(tps(bt), 0),
                    show(tps(bu), 0),
                    ratio(tps(bu), tps(bt)),
                    show(tps(pt), 0),
                    show(tps(pu), 0),
                    ratio(tps(pu), tps(pt)),
                    ratio(tps(pu), tps(bu)),
                    show(cpu(bt), 1),
                    show(cpu(bu), 1),
                    show(cpu(pt), 1),
                    show(cpu(pu), 1),
                );
            }
        }
        let _ = writeln!(md);
    }
    md
}
