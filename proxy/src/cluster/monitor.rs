//! The background task keeping one cluster's topology current.
//!
//! Every `health_check_period_ms` (every `polling_frequency_ms` while no writer is known) it
//! checks the nodes that are due, all at once, each on its own monitor connection: role
//! (`pg_is_in_recovery()`) and WAL position, or the answer to the `role_query` when the
//! entry has one. A writer that stepped down while still up has pgvane's sessions on it
//! ended ([`fence`](super::fence)). Then it runs the `topology_query`, if any, on the
//! writer and adds the nodes it names. A round can also be started early: by a client
//! waiting for a writer, a credential arriving, a RELOAD, or the request path reporting the
//! writer lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::config::{Config, NodeAddr};
use crate::pool::Pools;

use super::probe::{Login, Probe};
use super::{fence, Cluster};

/// Runs until the cluster is stopped (RELOAD removed it). `pools` are pgvane's server
/// connections, some of which may have to be ended on a writer that stepped down.
pub(super) async fn run(cluster: Arc<Cluster>, pools: Arc<Pools>) {
    let mut probes: HashMap<NodeAddr, Probe> = HashMap::new();
    let mut warned_no_login = false;
    tracing::info!(database = %cluster.database, "cluster monitor started");
    while !cluster.is_stopped() {
        let config = cluster.config();
        let Some(db) = config.databases.get(&cluster.database) else { break };
        let settings = &config.settings;
        match cluster.login(&config, db) {
            Some(login) => {
                warned_no_login = false;
                round(&cluster, &config, &login, &mut probes, &pools).await;
            }
            None if !warned_no_login => {
                warned_no_login = true;
                tracing::info!(
                    database = %cluster.database,
                    "cluster monitor waits for a credential: no `user` in the entry, no `monitor_user`, no client yet"
                );
            }
            None => {}
        }
        let pause = match cluster.writer() {
            Some(_) => settings.health_check_period_ms,
            None => settings.polling_frequency_ms,
        };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(pause)) => {}
            () = cluster.wake.notified() => {}
        }
    }
    tracing::info!(database = %cluster.database, "cluster monitor stopped");
}

/// How long one check may take: a check is one short query on loopback or a LAN, but a
/// node that swallows packets must not hold up the round for long.
fn check_timeout(config: &Config) -> Duration {
    let s = &config.settings;
    Duration::from_millis(s.server_connect_timeout_ms.min(s.health_check_period_ms.max(1_000)))
}

/// Checks every due node at once and feeds the results to the topology.
async fn round(
    cluster: &Cluster,
    config: &Config,
    login: &Login,
    probes: &mut HashMap<NodeAddr, Probe>,
    pools: &Pools,
) {
    let timeout = check_timeout(config);
    let due = cluster.topology().due(Instant::now());
    let role_query = config.databases.get(&cluster.database).and_then(|db| db.role_query.clone());
    let mut checks = JoinSet::new();
    for addr in due {
        let mut probe = probes.remove(&addr).unwrap_or_default();
        let login = login.clone();
        let role_query = role_query.clone();
        checks.spawn(async move {
            let observation = probe.check(&addr, &login, timeout, role_query.as_deref()).await;
            (addr, probe, observation)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = checks.join_next().await {
        match joined {
            Ok((addr, probe, observation)) => {
                probes.insert(addr.clone(), probe);
                results.push((addr, observation));
            }
            Err(e) => tracing::error!(database = %cluster.database, error = %e, "a node check panicked"),
        }
    }
    let failed_delay = Duration::from_millis(config.settings.server_failed_delay_ms);
    let outcome = cluster.observe(&results, failed_delay);
    if let Some(node) = &outcome.stepped_down {
        let probe = probes.entry(node.clone()).or_default();
        fence::end_sessions(&cluster.database, pools, node, probe, login, timeout).await;
    }
    if let Some(s) = outcome.switchover {
        tracing::info!(
            database = %cluster.database,
            from = %s.from,
            to = %s.to,
            duration_ms = s.duration.as_millis() as u64,
            "switchover: new writer found"
        );
    }
    if let Some(query) = config.databases.get(&cluster.database).and_then(|db| db.topology_query.clone()) {
        discover(cluster, &query, login, timeout, probes).await;
    }
    let topology = cluster.topology();
    probes.retain(|addr, _| topology.nodes().iter().any(|n| &n.addr == addr));
}

/// Runs the `topology_query` on the writer and adds the nodes it returns. A failing query
/// or a row that is not (host, port) is logged and skipped: the known nodes stay in use.
async fn discover(
    cluster: &Cluster,
    query: &str,
    login: &Login,
    timeout: Duration,
    probes: &mut HashMap<NodeAddr, Probe>,
) {
    let Some(writer) = cluster.writer() else { return };
    let probe = probes.entry(writer.clone()).or_default();
    let rows = match probe.query(&writer, login, timeout, query).await {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(database = %cluster.database, node = %writer, %error, "topology_query failed");
            return;
        }
    };
    for row in rows {
        match topology_row(&row) {
            Ok(addr) => {
                if cluster.topology().discover(addr.clone()) {
                    tracing::info!(database = %cluster.database, node = %addr, "topology_query: new node");
                    cluster.wake.notify_one();
                }
            }
            Err(problem) => {
                tracing::warn!(database = %cluster.database, ?row, problem, "topology_query: row skipped")
            }
        }
    }
}

/// A `topology_query` row: (host, port), or (host) for port 5432.
fn topology_row(row: &[Option<String>]) -> Result<NodeAddr, String> {
    let host = match row.first() {
        Some(Some(host)) if !host.trim().is_empty() => host.trim(),
        _ => return Err("the first column (host) is empty or NULL".into()),
    };
    match row.get(1) {
        None | Some(None) => NodeAddr::parse(host, 5432),
        Some(Some(port)) => match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(NodeAddr { host: host.to_owned(), port: p }),
            _ => Err(format!("the second column (port) is not a port number: {port:?}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_rows_are_host_and_port() {
        let row = |cells: &[Option<&str>]| cells.iter().map(|c| c.map(str::to_owned)).collect::<Vec<_>>();
        assert_eq!(topology_row(&row(&[Some("db3"), Some("5433")])).unwrap().to_string(), "db3:5433");
        assert_eq!(topology_row(&row(&[Some("db3:6000")])).unwrap().to_string(), "db3:6000");
        assert_eq!(topology_row(&row(&[Some("db3"), None])).unwrap().to_string(), "db3:5432");
        assert!(topology_row(&row(&[None, Some("5432")])).unwrap_err().contains("host"));
        assert!(topology_row(&row(&[Some("db3"), Some("x")])).unwrap_err().contains("port"));
        assert!(topology_row(&row(&[])).is_err());
    }
}
