//! `metrics_addr`: `/metrics` in the Prometheus text format (0.0.4), `/health` and `/ready`,
//! served by the proxy's own runtime.
//!
//! Nothing is registered per series: a [`Collector`] walks the shared state at scrape time
//! (pools, plugins, clusters, the process counters) and encodes what it finds with
//! prometheus-client. The query path only bumps atomics (`pool::PoolStats`,
//! `policy::PluginStats`, `metrics::ProcessMetrics`). docs/metrics.md lists every metric.
//!
//! Labels are bounded by the configuration: database, user, plugin, digest, node; never SQL
//! text nor a client's address.

use std::collections::BTreeMap;
use std::fmt::Error as FmtError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::clients::ClientState;
use crate::cluster::topology::{Health, Writer};
use crate::metrics::{AuthFailure, HistogramSnapshot};
use crate::policy::{ErrorCause, VerdictKind};
use crate::pool::{HistogramsSnapshot, ServerState};
use crate::shared::Shared;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Largest request head read.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A client that has not sent its request by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests answered at once; more connections wait to be accepted.
const MAX_CONNECTIONS: usize = 16;

type Labels = Vec<(&'static str, String)>;

/// Encodes everything at scrape time.
#[derive(Debug)]
struct SharedCollector(Arc<Shared>);

/// The `/metrics` body for `shared`.
pub fn render(shared: &Arc<Shared>) -> Result<String, FmtError> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SharedCollector(shared.clone())));
    let mut body = String::with_capacity(16 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut body, &registry)?;
    Ok(body)
}

/// One metric family: its rows of (labels, value).
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), FmtError> {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), FmtError> {
    family(encoder, name, help, MetricType::Counter, rows.into_iter().map(|(l, v)| (l, ConstCounter::new(v))))
}

fn seconds_counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, u64)>,
) -> Result<(), FmtError> {
    let rows = rows.into_iter().map(|(l, us)| (l, ConstCounter::new(us as f64 / 1e6)));
    family(encoder, name, help, MetricType::Counter, rows)
}

fn gauges<N: prometheus_client::encoding::EncodeGaugeValue + Send + Sync + std::fmt::Debug>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels, N)>,
) -> Result<(), FmtError> {
    family(encoder, name, help, MetricType::Gauge, rows.into_iter().map(|(l, v)| (l, ConstGauge::new(v))))
}

/// A histogram family; the recorded unit divided by `divisor` is the exposed one.
fn histograms<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    divisor: f64,
    rows: impl IntoIterator<Item = (Labels, &'a HistogramSnapshot)>,
) -> Result<(), FmtError> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        metric.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            h.sum as f64 / divisor,
            h.count,
            &h.scaled_buckets(divisor),
            None,
        )?;
    }
    Ok(())
}

fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect()
}

/// One (database, user)'s pools (a cluster has one per node), added up.
#[derive(Debug, Default)]
struct PoolRow {
    cl_active: u64,
    cl_waiting: u64,
    maxwait: Duration,
    sv_active: u64,
    sv_idle: u64,
    sv_tested: u64,
    sv_login: u64,
    histograms: HistogramsSnapshot,
}

impl Collector for SharedCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), FmtError> {
        let shared = &self.0;
        process(shared, &mut encoder)?;
        pools(shared, &mut encoder)?;
        plugins(shared, &mut encoder)?;
        clusters(shared, &mut encoder)
    }
}

fn process(shared: &Shared, e: &mut DescriptorEncoder) -> Result<(), FmtError> {
    let m = &shared.metrics;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    gauges(
        e,
        "pgvane_build_info",
        "pgvane's version, the commit it was built from and the WIT world it loads plugins of (always 1)",
        [(labels([("version", crate::VERSION), ("commit", crate::COMMIT), ("wit", crate::policy::WORLD)]), 1u64)],
    )?;
    gauges(
        e,
        "pgvane_ready",
        "1 when /ready answers 200: listening and not draining",
        [(Vec::new(), u64::from(m.is_ready()))],
    )?;
    counters(e, "pgvane_client_connections", "Client connections accepted", [(Vec::new(), load(&m.connections))])?;
    counters(
        e,
        "pgvane_client_logins",
        "Clients that logged in (admin console included)",
        [(Vec::new(), load(&m.logins))],
    )?;
    counters(
        e,
        "pgvane_auth_failures",
        "Client logins refused, by reason",
        AuthFailure::ALL.map(|r| (labels([("reason", r.as_str())]), m.auth_failures(r))),
    )?;
    counters(
        e,
        "pgvane_tls_handshakes",
        "Client TLS handshakes, by result",
        [
            (labels([("result", "ok")]), load(&m.tls_handshakes_ok)),
            (labels([("result", "failed")]), load(&m.tls_handshakes_failed)),
        ],
    )?;
    counters(
        e,
        "pgvane_reloads",
        "Configuration reloads (RELOAD, SIGHUP, a watched plugin file), by result",
        [(labels([("result", "ok")]), load(&m.reloads_ok)), (labels([("result", "failed")]), load(&m.reloads_failed))],
    )?;
    gauges(e, "pgvane_clients", "Client connections, by state", {
        let clients = shared.clients.snapshot();
        [ClientState::Login, ClientState::Idle, ClientState::Active, ClientState::Waiting]
            .map(|state| (labels([("state", state.as_str())]), clients.iter().filter(|c| c.state == state).count()))
    })
}

fn pools(shared: &Shared, e: &mut DescriptorEncoder) -> Result<(), FmtError> {
    let clients = shared.clients.snapshot();
    let now = Instant::now();
    let mut rows: BTreeMap<(String, String), PoolRow> = BTreeMap::new();
    for pool in shared.pools.list() {
        let key = (pool.database.clone(), pool.user.clone());
        let fresh = !rows.contains_key(&key);
        let row = rows.entry(key).or_default();
        if fresh {
            // Clients belong to (database, user), not to a node: counted once.
            for c in clients.iter().filter(|c| c.database == pool.database && c.user == pool.user) {
                match c.state {
                    ClientState::Active | ClientState::Idle => row.cl_active += 1,
                    ClientState::Waiting => {
                        row.cl_waiting += 1;
                        row.maxwait = row.maxwait.max(now.duration_since(c.state_since));
                    }
                    _ => {}
                }
            }
        }
        for server in pool.servers() {
            match server.state {
                ServerState::Active => row.sv_active += 1,
                ServerState::Idle => row.sv_idle += 1,
                ServerState::Tested => row.sv_tested += 1,
                ServerState::Login => row.sv_login += 1,
            }
        }
        row.histograms.add(&pool.stats.histograms());
    }
    let pool_labels = |(database, user): &(String, String)| labels([("database", database), ("user", user)]);
    let gauge = |e: &mut DescriptorEncoder, name: &str, help: &str, value: fn(&PoolRow) -> u64| {
        gauges(e, name, help, rows.iter().map(|(key, row)| (pool_labels(key), value(row))))
    };
    gauge(
        e,
        "pgvane_pools_client_active_connections",
        "Clients linked to the pool and able to run queries (cl_active)",
        |r| r.cl_active,
    )?;
    gauge(e, "pgvane_pools_client_waiting_connections", "Clients waiting for a server connection (cl_waiting)", |r| {
        r.cl_waiting
    })?;
    gauge(e, "pgvane_pools_server_active_connections", "Server connections linked to a client (sv_active)", |r| {
        r.sv_active
    })?;
    gauge(e, "pgvane_pools_server_idle_connections", "Server connections idle and usable at once (sv_idle)", |r| {
        r.sv_idle
    })?;
    gauge(
        e,
        "pgvane_pools_server_testing_connections",
        "Server connections being reset before reuse (sv_tested)",
        |r| r.sv_tested,
    )?;
    gauge(e, "pgvane_pools_server_login_connections", "Server connections logging in (sv_login)", |r| r.sv_login)?;
    gauges(
        e,
        "pgvane_pools_client_maxwait_seconds",
        "How long the oldest waiting client has waited (maxwait)",
        rows.iter().map(|(key, row)| (pool_labels(key), row.maxwait.as_secs_f64())),
    )?;
    histograms(
        e,
        "pgvane_pools_query_duration_seconds",
        "Query durations: Query message (or extended batch) to ReadyForQuery",
        1e6,
        rows.iter().map(|(key, row)| (pool_labels(key), &row.histograms.query)),
    )?;
    histograms(
        e,
        "pgvane_pools_transaction_duration_seconds",
        "Transaction durations, implicit ones included",
        1e6,
        rows.iter().map(|(key, row)| (pool_labels(key), &row.histograms.xact)),
    )?;
    histograms(
        e,
        "pgvane_pools_client_wait_seconds",
        "Waits for a server connection at each assignment (0 when an idle one was free)",
        1e6,
        rows.iter().map(|(key, row)| (pool_labels(key), &row.histograms.wait)),
    )?;

    let totals = shared.pools.totals_by_database();
    let db = |database: &String| labels([("database", database)]);
    let per_db = |value: fn(&crate::pool::StatsSnapshot) -> u64| totals.iter().map(move |(d, s)| (db(d), value(s)));
    counters(
        e,
        "pgvane_stats_server_assignments",
        "Server connections assigned to clients (total_server_assignment_count)",
        per_db(|s| s.server_assignment_count),
    )?;
    counters(
        e,
        "pgvane_stats_sql_transactions_pooled",
        "Transactions pooled, implicit ones included (total_xact_count)",
        per_db(|s| s.xact_count),
    )?;
    counters(e, "pgvane_stats_queries_pooled", "Queries pooled (total_query_count)", per_db(|s| s.query_count))?;
    counters(
        e,
        "pgvane_stats_received_bytes",
        "Bytes received from clients (total_received)",
        per_db(|s| s.received_bytes),
    )?;
    counters(e, "pgvane_stats_sent_bytes", "Bytes sent to clients (total_sent)", per_db(|s| s.sent_bytes))?;
    seconds_counters(
        e,
        "pgvane_stats_server_in_transaction_seconds",
        "Time spent in transactions (total_xact_time)",
        per_db(|s| s.xact_time_us),
    )?;
    seconds_counters(
        e,
        "pgvane_stats_queries_duration_seconds",
        "Time spent in queries (total_query_time)",
        per_db(|s| s.query_time_us),
    )?;
    seconds_counters(
        e,
        "pgvane_stats_client_wait_seconds",
        "Time clients waited for a server connection (total_wait_time)",
        per_db(|s| s.wait_time_us),
    )
}

fn plugins(shared: &Shared, e: &mut DescriptorEncoder) -> Result<(), FmtError> {
    use std::sync::atomic::Ordering::Relaxed;
    let chain = shared.policy();
    let plugins = chain.plugins();
    let name = |p: &crate::policy::Plugin| labels([("plugin", &p.settings.name)]);
    gauges(
        e,
        "pgvane_plugin_loaded",
        "The plugins in force, with the digest of their component (always 1)",
        plugins.iter().map(|p| (labels([("plugin", &p.settings.name), ("digest", &p.origin.digest)]), 1u64)),
    )?;
    counters(
        e,
        "pgvane_plugin_calls",
        "decide calls since the plugin loaded",
        plugins.iter().map(|p| (name(p), p.stats.calls.load(Relaxed))),
    )?;
    counters(
        e,
        "pgvane_plugin_verdicts",
        "Verdicts the chain accepted, by kind",
        plugins.iter().flat_map(|p| {
            VerdictKind::ALL
                .map(|k| (labels([("plugin", &p.settings.name), ("verdict", k.as_str())]), p.stats.verdicts(k)))
        }),
    )?;
    counters(
        e,
        "pgvane_plugin_errors",
        "Failed calls, by cause (handled by the plugin's on_error)",
        plugins.iter().flat_map(|p| {
            ErrorCause::ALL
                .map(|c| (labels([("plugin", &p.settings.name), ("cause", c.as_str())]), p.stats.errors_by(c)))
        }),
    )?;
    let latencies: Vec<(Labels, HistogramSnapshot)> =
        plugins.iter().map(|p| (name(p), p.stats.latency.snapshot())).collect();
    histograms(
        e,
        "pgvane_plugin_decide_duration_seconds",
        "How long a decide call took, waits for an instance included",
        1e6,
        latencies.iter().map(|(l, h)| (l.clone(), h)),
    )?;
    let fuel: Vec<(Labels, HistogramSnapshot)> = plugins.iter().map(|p| (name(p), p.stats.fuel.snapshot())).collect();
    histograms(
        e,
        "pgvane_plugin_fuel_per_call",
        "Fuel one decide call burnt",
        1.0,
        fuel.iter().map(|(l, h)| (l.clone(), h)),
    )?;
    counters(
        e,
        "pgvane_plugin_fuel_consumed",
        "Fuel burnt by decide calls",
        plugins.iter().map(|p| (name(p), p.stats.fuel_used.load(Relaxed))),
    )?;
    counters(
        e,
        "pgvane_plugin_instance_waits",
        "Calls that found every instance busy (max_instances) and waited for one",
        plugins.iter().map(|p| (name(p), p.stats.instance_waits.load(Relaxed))),
    )?;
    gauges(
        e,
        "pgvane_plugin_warm_instances",
        "Instances ready for a call",
        plugins.iter().map(|p| (name(p), p.warm_instances())),
    )?;
    gauges(
        e,
        "pgvane_plugin_memory_peak_bytes",
        "The largest linear memory an instance has had",
        plugins.iter().map(|p| (name(p), p.stats.memory_peak_bytes.load(Relaxed))),
    )?;
    counters(
        e,
        "pgvane_plugin_log_records_dropped",
        "host.log records dropped over log_records_per_second",
        plugins.iter().map(|p| (name(p), p.stats.log.dropped.load(Relaxed))),
    )?;
    let loads = shared.metrics.plugin_loads();
    let load_labels = |(plugin, digest): &(String, String)| labels([("plugin", plugin), ("digest", digest)]);
    counters(
        e,
        "pgvane_plugin_loads",
        "Plugin loads that succeeded (start and reloads), by component digest",
        loads.iter().filter(|(_, c)| c.ok > 0).map(|(k, c)| (load_labels(k), c.ok)),
    )?;
    counters(
        e,
        "pgvane_plugin_load_failures",
        "Plugin loads that failed, by component digest (empty when it could not be read)",
        loads.iter().filter(|(_, c)| c.failed > 0).map(|(k, c)| (load_labels(k), c.failed)),
    )
}

fn clusters(shared: &Shared, e: &mut DescriptorEncoder) -> Result<(), FmtError> {
    let clusters = shared.clusters.list();
    let reports: Vec<_> =
        clusters.iter().map(|c| (c.report(), c.switchovers.load(std::sync::atomic::Ordering::Relaxed))).collect();
    let node_labels =
        |db: &str, node: &crate::config::NodeAddr| labels([("database", db), ("node", &node.to_string())]);
    gauges(
        e,
        "pgvane_cluster_node_role",
        "A cluster node's role at the last check (1 for its current role)",
        reports.iter().flat_map(|(r, _)| {
            r.nodes.iter().map(|n| {
                let mut l = node_labels(&r.database, &n.addr);
                l.push(("role", n.role.as_str().to_owned()));
                (l, 1u64)
            })
        }),
    )?;
    gauges(
        e,
        "pgvane_cluster_node_up",
        "1 when the node answered its last health check",
        reports.iter().flat_map(|(r, _)| {
            r.nodes.iter().map(|n| (node_labels(&r.database, &n.addr), u64::from(n.health == Health::Up)))
        }),
    )?;
    gauges(
        e,
        "pgvane_cluster_node_replica_lag_seconds",
        "A replica's lag behind the writer in time, at the last check that measured it",
        reports.iter().flat_map(|(r, _)| {
            r.nodes.iter().filter_map(|n| n.lag.map(|lag| (node_labels(&r.database, &n.addr), lag.time.as_secs_f64())))
        }),
    )?;
    gauges(
        e,
        "pgvane_cluster_node_replica_lag_bytes",
        "A replica's lag behind the writer in bytes of WAL, at the last check that measured it",
        reports.iter().flat_map(|(r, _)| {
            r.nodes.iter().filter_map(|n| n.lag.map(|lag| (node_labels(&r.database, &n.addr), lag.bytes)))
        }),
    )?;
    gauges(
        e,
        "pgvane_cluster_writer_known",
        "1 when the cluster has a writer; 0 while statements for the primary wait",
        reports
            .iter()
            .map(|(r, _)| (labels([("database", &r.database)]), u64::from(matches!(r.writer, Writer::Known(_))))),
    )?;
    counters(
        e,
        "pgvane_cluster_switchovers",
        "Switchovers (a new writer found after the last was lost)",
        reports.iter().map(|(r, n)| (labels([("database", &r.database)]), *n)),
    )?;
    gauges(
        e,
        "pgvane_cluster_last_switchover_duration_seconds",
        "How long the last switchover left the cluster without a writer",
        reports.iter().filter_map(|(r, _)| {
            r.last_switchover.as_ref().map(|s| (labels([("database", &r.database)]), s.duration.as_secs_f64()))
        }),
    )
}

/// Serves `/metrics`, `/health` and `/ready` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Never closed, so this always yields a permit.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    answer(stream, shared).await;
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Health,
    Ready,
    NotFound,
    MethodNotAllowed,
}

/// The route of a request head (`GET /path?query HTTP/1.1`).
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    if method != b"GET" && method != b"HEAD" {
        return Route::MethodNotAllowed;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    match path {
        b"/metrics" => Route::Metrics,
        b"/health" | b"/healthz" => Route::Health,
        b"/ready" | b"/readyz" => Route::Ready,
        _ => Route::NotFound,
    }
}

/// Reads one request and answers it (one request per connection: `Connection: close`).
async fn answer(mut stream: TcpStream, shared: Arc<Shared>) {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
            }
        }
        true
    })
    .await;
    if !matches!(read, Ok(true)) {
        return;
    }
    let is_head = head.starts_with(b"HEAD ");
    let (status, content_type, body) = match route(&head) {
        Route::Metrics => match render(&shared) {
            Ok(body) => ("200 OK", CONTENT_TYPE, body),
            Err(_) => ("500 Internal Server Error", "text/plain", "cannot encode the metrics\n".to_owned()),
        },
        Route::Health => ("200 OK", "text/plain", "ok\n".to_owned()),
        Route::Ready if shared.metrics.is_ready() => ("200 OK", "text/plain", "ready\n".to_owned()),
        Route::Ready => (
            "503 Service Unavailable",
            "text/plain",
            if shared.metrics.is_draining() { "draining\n" } else { "not listening yet\n" }.to_owned(),
        ),
        Route::NotFound => ("404 Not Found", "text/plain", "try /metrics, /health or /ready\n".to_owned()),
        Route::MethodNotAllowed => ("405 Method Not Allowed", "text/plain", "GET only\n".to_owned()),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !is_head {
        response.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_route_by_method_and_path() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"HEAD /health HTTP/1.1\r\n\r\n"), Route::Health);
        assert_eq!(route(b"GET /ready HTTP/1.1\r\n\r\n"), Route::Ready);
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(route(b""), Route::MethodNotAllowed);
    }

    fn shared() -> Arc<Shared> {
        let toml = "[pgvane]\nauth_type = \"trust\"\n[databases.app]\nhost = \"127.0.0.1\"\n";
        let config = crate::config::Config::from_toml(std::path::Path::new("/nonexistent/pgvane.toml"), toml).unwrap();
        Arc::new(Shared::new(config, crate::policy::Chain::default(), |_| {}))
    }

    /// The value of the series `series` (name and labels as exposed) in `body`.
    fn value(body: &str, series: &str) -> Option<f64> {
        body.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn the_exposition_has_the_process_counters_and_readiness() {
        let shared = shared();
        let body = render(&shared).unwrap();
        assert_eq!(value(&body, "pgvane_ready"), Some(0.0), "not listening yet:\n{body}");
        assert!(body.contains("# TYPE pgvane_auth_failures_total counter"), "{body}");
        assert!(body.contains("pgvane_build_info{version=\""), "{body}");
        shared.metrics.set_listening(true);
        shared.metrics.auth_failed(AuthFailure::Password);
        shared.metrics.reloaded(false);
        let body = render(&shared).unwrap();
        assert_eq!(value(&body, "pgvane_ready"), Some(1.0));
        assert_eq!(value(&body, "pgvane_auth_failures_total{reason=\"password\"}"), Some(1.0));
        assert_eq!(value(&body, "pgvane_reloads_total{result=\"failed\"}"), Some(1.0));
        shared.metrics.start_draining();
        assert_eq!(value(&render(&shared).unwrap(), "pgvane_ready"), Some(0.0), "draining");
    }

    #[test]
    fn pool_counters_and_histograms_are_exposed_per_database_and_user() {
        let shared = shared();
        let config = shared.config();
        let db = &config.databases["app"];
        let pool = shared.pools.get_or_create("app", "alice", || {
            (
                crate::pool::server_target(&config, "app", db, "alice"),
                crate::pool::PoolSettings::from_config(&config, db),
                crate::pool::ServerCredential::None,
            )
        });
        pool.stats.record_xact(Duration::from_millis(3));
        pool.stats.record_query(Duration::from_micros(300));
        pool.stats.record_query(Duration::from_secs(20));
        let body = render(&shared).unwrap();
        let labels = "{database=\"app\",user=\"alice\"}";
        assert_eq!(value(&body, "pgvane_stats_sql_transactions_pooled_total{database=\"app\"}"), Some(1.0), "{body}");
        assert_eq!(value(&body, "pgvane_stats_queries_pooled_total{database=\"app\"}"), Some(2.0));
        assert_eq!(value(&body, &format!("pgvane_pools_query_duration_seconds_count{labels}")), Some(2.0));
        let bucket = "pgvane_pools_query_duration_seconds_bucket{database=\"app\",user=\"alice\",le=\"0.0005\"}";
        assert_eq!(value(&body, bucket), Some(1.0), "{body}");
        let inf = "pgvane_pools_query_duration_seconds_bucket{database=\"app\",user=\"alice\",le=\"+Inf\"}";
        assert_eq!(value(&body, inf), Some(2.0));
        assert_eq!(value(&body, &format!("pgvane_pools_server_idle_connections{labels}")), Some(0.0));
    }
}
