//! The configuration file: serde structs, defaults and validation, in one place.
//!
//! `Config::load` reads the TOML file, refuses unknown keys, checks every value and loads the
//! auth file, so a `Config` that exists is a valid one. Every key is documented in
//! `docs/config.md`; the defaults below are the single source of truth for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::auth::userlist::{Userlist, UserlistError};
use crate::oci::OciSettings;
use crate::policy::{PluginSettings, MAX_PLUGIN_INSTANCES, MAX_PLUGIN_MEMORY_MB};
use crate::tls::{ClientTls, ClientTlsMode, ServerTls, ServerTlsMode, TlsError, TlsFiles};

/// A configuration problem, naming the file and, where there is one, the key.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message, with line, column and key.
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key, e.g. `databases.app.port`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A TLS certificate, key or CA file is unusable.
    #[error("{path}: key `{key}`: {source}")]
    Tls {
        /// The config file.
        path: PathBuf,
        /// The `[pgvane]` key naming the file (or the side's mode).
        key: String,
        /// Why.
        #[source]
        source: TlsError,
    },
    /// The auth file named by `pgvane.auth_file` is unreadable or malformed.
    #[error("{path}: key `pgvane.auth_file`: {auth_file}: {source}")]
    AuthFile {
        /// The config file.
        path: PathBuf,
        /// The auth file.
        auth_file: PathBuf,
        /// Why.
        #[source]
        source: AuthFileError,
    },
}

/// Why the auth file could not be loaded.
#[derive(Debug, Error)]
pub enum AuthFileError {
    /// Unreadable.
    #[error("cannot read: {0}")]
    Read(#[from] std::io::Error),
    /// Malformed.
    #[error(transparent)]
    Parse(#[from] UserlistError),
}

/// How server connections are shared between clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A client keeps one server connection for its whole session.
    Session,
    /// A client holds a server connection for one transaction.
    Transaction,
    /// A client holds a server connection for one statement.
    Statement,
}

/// What pgvane does with a client's fastpath function call (FunctionCall message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FunctionCalls {
    /// Forwarded to the server (libpq's large-object functions use them).
    Allow,
    /// Refused with 42501: a plugin cannot judge a call by function OID.
    Reject,
}

impl Settings {
    /// Whether fastpath function calls are allowed with `plugins` plugins loaded.
    pub fn function_calls_allowed(&self, plugins: usize) -> bool {
        match self.function_calls {
            Some(rule) => rule == FunctionCalls::Allow,
            None => plugins == 0,
        }
    }
}

impl PoolMode {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum AuthType {
    /// No password asked.
    #[serde(rename = "trust")]
    Trust,
    /// MD5 challenge (SCRAM is used instead for users whose secret is a SCRAM verifier).
    #[serde(rename = "md5")]
    Md5,
    /// SCRAM-SHA-256.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// A TLS client certificate whose CommonName is the user name (needs
    /// `client_tls_sslmode = "verify-ca"` or `"verify-full"`).
    #[serde(rename = "cert")]
    Cert,
}

/// The `[pgvane]` table. It serializes back to TOML values for the admin console's SHOW
/// CONFIG, which lists every key from it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address to listen on.
    pub listen_addr: String,
    /// Port to listen on; 0 picks a free one (printed at startup).
    pub listen_port: u16,
    /// Set SO_REUSEPORT on the listening socket, so several pgvane processes can listen on
    /// one port (a rolling restart: the new one starts while the old one drains).
    pub so_reuseport: bool,
    /// Directory of the unix-domain socket clients may connect to besides TCP, as
    /// `<dir>/.s.PGSQL.<listen_port>` (PgBouncer's key); empty: no unix-domain socket.
    pub unix_socket_dir: String,
    /// Permissions of that socket file, in octal (PgBouncer's key): who may connect.
    pub unix_socket_mode: String,
    /// This instance's id among its peers (1–16383), encoded into the cancel keys it hands
    /// out; 0: peering off. See `[peers]`.
    pub peer_id: u16,
    /// How long a graceful shutdown (SIGTERM, SIGINT, SHUTDOWN) waits for clients to finish
    /// their transactions (sessions in session mode) before it disconnects the rest.
    pub shutdown_timeout_ms: u64,
    /// Pool mode.
    pub pool_mode: PoolMode,
    /// Server connections per (database, user) pool.
    pub default_pool_size: usize,
    /// Most client connections at once, counted from accept (logins in progress included).
    pub max_client_conn: usize,
    /// Most connections still logging in; beyond it the oldest of them is dropped.
    pub max_pending_logins: usize,
    /// Threads running sessions: 0 = one per CPU core, 1 = everything on one thread.
    pub worker_threads: usize,
    /// Client authentication method.
    pub auth_type: AuthType,
    /// PgBouncer-format user list, relative to the config file.
    #[serde(serialize_with = "none_as_empty")]
    pub auth_file: Option<PathBuf>,
    /// Users allowed on the admin console.
    pub admin_users: Vec<String>,
    /// Largest message accepted from a client.
    pub max_packet_size_bytes: usize,
    /// What pgvane holds of large client messages over all clients at once; a client whose
    /// message does not fit waits (it is not read from) until there is room.
    pub client_message_budget_bytes: usize,
    /// Longest statement text (Query or Parse) the policy chain judges; a longer one is
    /// refused with 54000 before any plugin runs. Only with plugins loaded.
    pub policy_max_sql_bytes: usize,
    /// Fastpath function calls (FunctionCall messages): allowed or refused with 42501. Unset:
    /// refused when the chain has plugins (they cannot see the call), allowed otherwise.
    #[serde(serialize_with = "none_as_empty")]
    pub function_calls: Option<FunctionCalls>,
    /// How long a client waits for a server connection before it gets an error.
    pub query_wait_timeout_ms: u64,
    /// How long a client may take to log in.
    pub client_login_timeout_ms: u64,
    /// A client idle inside a transaction longer than this is disconnected; 0: never.
    pub idle_transaction_timeout_ms: u64,
    /// Idle server connections older than this (since last use) are closed.
    pub server_idle_timeout_ms: u64,
    /// Server connections older than this are closed when next idle.
    pub server_lifetime_ms: u64,
    /// Timeout for connecting and logging in to a server.
    pub server_connect_timeout_ms: u64,
    /// Run on a server connection before another client gets it (session mode); empty for none.
    pub server_reset_query: String,
    /// Also run `server_reset_query` whenever a client gives a server connection back in the
    /// transaction and statement modes (PgBouncer's key): for session state pgvane cannot see
    /// being made, such as a function that changes settings.
    pub server_reset_query_always: bool,
    /// Prepared statements kept per server connection in transaction and statement modes.
    pub max_prepared_statements: usize,
    /// Named prepared statements a client may hold at once; one more is refused with 53400.
    pub max_client_prepared_statements: usize,
    /// Clusters: how often the monitor checks every node's role, health and lag.
    pub health_check_period_ms: u64,
    /// Clusters: a node that failed a check is not checked (nor used) again for this long.
    pub server_failed_delay_ms: u64,
    /// Clusters: replicas further behind the primary than this get no reads.
    pub max_replica_lag_ms: u64,
    /// Clusters: replicas further behind the primary than this many bytes of WAL get no
    /// reads; 0: no limit in bytes.
    pub max_replica_lag_bytes: u64,
    /// Clusters: how often every node is polled while the writer is unknown.
    pub polling_frequency_ms: u64,
    /// Clusters: how long statements for a primary wait for a writer before they fail.
    pub switchover_timeout_ms: u64,
    /// Clusters: the auth-file user the monitor logs in as when the database entry has no
    /// `user` (its secret must be a plain password or an md5 hash).
    #[serde(serialize_with = "none_as_empty")]
    pub monitor_user: Option<String>,
    /// TLS between clients and pgvane.
    pub client_tls_sslmode: ClientTlsMode,
    /// pgvane's certificate chain for clients (PEM).
    #[serde(serialize_with = "none_as_empty")]
    pub client_tls_cert_file: Option<PathBuf>,
    /// The private key of `client_tls_cert_file` (PEM).
    #[serde(serialize_with = "none_as_empty")]
    pub client_tls_key_file: Option<PathBuf>,
    /// CA certificates client certificates must chain to (PEM).
    #[serde(serialize_with = "none_as_empty")]
    pub client_tls_ca_file: Option<PathBuf>,
    /// TLS between pgvane and the servers.
    pub server_tls_sslmode: ServerTlsMode,
    /// CA certificates server certificates must chain to (PEM), for `verify-ca`/`verify-full`.
    #[serde(serialize_with = "none_as_empty")]
    pub server_tls_ca_file: Option<PathBuf>,
    /// Client certificate pgvane presents to servers (PEM).
    #[serde(serialize_with = "none_as_empty")]
    pub server_tls_cert_file: Option<PathBuf>,
    /// The private key of `server_tls_cert_file` (PEM).
    #[serde(serialize_with = "none_as_empty")]
    pub server_tls_key_file: Option<PathBuf>,
    /// Answer a server's request for a clear-text password over a connection without TLS.
    pub server_allow_cleartext_password: bool,
    /// `ip:port` serving `/metrics` (Prometheus), `/health` and `/ready`; unset: none.
    #[serde(serialize_with = "none_as_empty")]
    pub metrics_addr: Option<String>,
    /// Where compiled plugin components are kept between loads, relative to this file; unset:
    /// every load compiles (docs/plugins.md, "The compiled-component cache").
    #[serde(serialize_with = "none_as_empty")]
    pub plugin_cache_dir: Option<PathBuf>,
    /// Log lines as human-readable text or as one JSON object per line.
    pub log_format: LogFormat,
    /// Log every client login (as PgBouncer's `log_connections`).
    pub log_connections: bool,
    /// Log every client disconnection, with its reason and age (`log_disconnections`).
    pub log_disconnections: bool,
    /// Log a one-line summary per database every `stats_period_ms` (`log_stats`).
    pub log_stats: bool,
    /// The period of SHOW STATS_AVERAGES and of the `log_stats` line.
    pub stats_period_ms: u64,
}

/// How log lines are written (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable text, fields as `key=value`.
    Text,
    /// One JSON object per line: timestamp, level, message, fields and the session's span.
    Json,
}

/// Keys of `[pgvane]` that RELOAD cannot change: they take effect at the next start.
pub const RESTART_KEYS: &[&str] = &[
    "listen_addr",
    "listen_port",
    "so_reuseport",
    "unix_socket_dir",
    "unix_socket_mode",
    "peer_id",
    "worker_threads",
    "metrics_addr",
    "log_format",
    "client_message_budget_bytes",
];

/// The largest `peer_id` (PgBouncer's limit).
pub const MAX_PEER_ID: u16 = 16383;

/// The longest path of a unix-domain socket (Linux's `sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH_BYTES: usize = 107;

/// Parses `unix_socket_mode`: permission bits in octal, with or without a leading `0` or `0o`.
pub fn parse_socket_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = u32::from_str_radix(digits, 8).ok()?;
    (!digits.is_empty() && !digits.starts_with('+') && mode <= 0o777).then_some(mode)
}

/// A `[peers.<id>]` table: where another pgvane of the group listens, for the cancel
/// requests meant for its clients.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Host name or IP address of the peer's listening socket (its own, not the load
    /// balancer's), or the directory of its unix-domain socket (starts with `/`).
    pub host: String,
    /// Its port.
    #[serde(default = "default_listen_port")]
    pub port: u16,
}

fn default_listen_port() -> u16 {
    6432
}

/// Serializes an unset optional key as an empty string, so it still has a row in SHOW CONFIG
/// (TOML has no null).
fn none_as_empty<S: serde::Serializer, T: Serialize>(value: &Option<T>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => v.serialize(serializer),
        None => serializer.serialize_str(""),
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen_addr: "127.0.0.1".into(),
            listen_port: 6432,
            so_reuseport: false,
            unix_socket_dir: String::new(),
            unix_socket_mode: "0777".into(),
            peer_id: 0,
            shutdown_timeout_ms: 30_000,
            pool_mode: PoolMode::Session,
            default_pool_size: 20,
            max_client_conn: 1000,
            max_pending_logins: 100,
            worker_threads: 0,
            auth_type: AuthType::ScramSha256,
            auth_file: None,
            admin_users: Vec::new(),
            max_packet_size_bytes: 1 << 30,
            client_message_budget_bytes: 256 << 20,
            policy_max_sql_bytes: 16 << 20,
            function_calls: None,
            query_wait_timeout_ms: 120_000,
            client_login_timeout_ms: 60_000,
            idle_transaction_timeout_ms: 0,
            server_idle_timeout_ms: 600_000,
            server_lifetime_ms: 3_600_000,
            server_connect_timeout_ms: 15_000,
            server_reset_query: "DISCARD ALL".into(),
            server_reset_query_always: false,
            max_prepared_statements: 200,
            max_client_prepared_statements: 10_000,
            health_check_period_ms: 1_000,
            server_failed_delay_ms: 5_000,
            max_replica_lag_ms: 5_000,
            max_replica_lag_bytes: 0,
            polling_frequency_ms: 100,
            switchover_timeout_ms: 30_000,
            monitor_user: None,
            client_tls_sslmode: ClientTlsMode::Disable,
            client_tls_cert_file: None,
            client_tls_key_file: None,
            client_tls_ca_file: None,
            server_tls_sslmode: ServerTlsMode::Prefer,
            server_tls_ca_file: None,
            server_tls_cert_file: None,
            server_tls_key_file: None,
            server_allow_cleartext_password: false,
            metrics_addr: None,
            plugin_cache_dir: None,
            log_format: LogFormat::Text,
            log_connections: true,
            log_disconnections: true,
            log_stats: true,
            stats_period_ms: 60_000,
        }
    }
}

impl Settings {
    /// `query_wait_timeout_ms` as a Duration.
    pub fn query_wait_timeout(&self) -> Duration {
        Duration::from_millis(self.query_wait_timeout_ms)
    }

    /// `client_login_timeout_ms` as a Duration.
    pub fn client_login_timeout(&self) -> Duration {
        Duration::from_millis(self.client_login_timeout_ms)
    }

    /// `idle_transaction_timeout_ms` as a Duration, `None` when off.
    pub fn idle_transaction_timeout(&self) -> Option<Duration> {
        (self.idle_transaction_timeout_ms > 0).then(|| Duration::from_millis(self.idle_transaction_timeout_ms))
    }

    /// `shutdown_timeout_ms` as a Duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    /// `server_connect_timeout_ms` as a Duration.
    pub fn server_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.server_connect_timeout_ms)
    }

    /// `server_idle_timeout_ms` as a Duration.
    pub fn server_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.server_idle_timeout_ms)
    }

    /// `stats_period_ms` as a Duration.
    pub fn stats_period(&self) -> Duration {
        Duration::from_millis(self.stats_period_ms)
    }

    /// `server_lifetime_ms` as a Duration.
    pub fn server_lifetime(&self) -> Duration {
        Duration::from_millis(self.server_lifetime_ms)
    }
}

/// A `[databases.<name>]` table: where clients connecting to `<name>` are sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Server host name or address, or a directory holding the server's unix-domain socket
    /// `.s.PGSQL.<port>` when it starts with `/` (as in libpq). For a cluster given as
    /// `hosts`, validation sets it (and `port`) to the first of them.
    #[serde(default)]
    pub host: String,
    /// Server port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database name on the server; defaults to the table's key.
    pub dbname: Option<String>,
    /// Log in to the server as this user instead of the client's.
    pub user: Option<String>,
    /// Password for `user`.
    pub password: Option<String>,
    /// Overrides `default_pool_size` for this database.
    pub pool_size: Option<usize>,
    /// The servers of a cluster, `"host:port"` or `"host"` (port 5432); instead of `host`/`port`.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Where statements no policy routes run, in a cluster.
    #[serde(default)]
    pub default_route: DefaultRoute,
    /// Run on a cluster's primary: rows of (host, port) of more nodes to use.
    pub topology_query: Option<String>,
    /// Run on each node of a cluster at every health check instead of `pg_is_in_recovery()`:
    /// one row whose first column is `writer`, `replica` or `none`.
    pub role_query: Option<String>,
    /// The cluster's configured nodes (`hosts`, or `host`/`port` with a `topology_query`);
    /// empty for a plain database. Filled in by validation.
    #[serde(skip)]
    pub nodes: Vec<NodeAddr>,
}

impl DatabaseConfig {
    /// True for a cluster: nodes whose roles pgvane discovers, health-checks and routes to.
    pub fn is_cluster(&self) -> bool {
        !self.nodes.is_empty()
    }
}

/// Where a cluster's statements run when no policy routes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultRoute {
    /// The current writer.
    #[default]
    Primary,
    /// A healthy replica that is not lagging, else the writer.
    Replica,
}

/// One server of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeAddr {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl NodeAddr {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`; a missing port is `default_port`.
    pub fn parse(text: &str, default_port: u16) -> Result<NodeAddr, String> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or("an IPv6 address needs its closing `]`")?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':').ok_or("expected `:port` after `]`")?)),
            }
        } else {
            match text.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(format!("`{text}`: write an IPv6 address in brackets, `[{text}]`"))
                }
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{text}`: the host is empty"));
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("`{text}`: the port must be between 1 and 65535")),
            },
        };
        Ok(NodeAddr { host: host.to_owned(), port })
    }
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn default_port() -> u16 {
    5432
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    pgvane: Settings,
    #[serde(default)]
    databases: BTreeMap<String, DatabaseConfig>,
    #[serde(default)]
    plugins: Vec<PluginSettings>,
    #[serde(default)]
    oci: OciSettings,
    #[serde(default)]
    peers: BTreeMap<String, PeerConfig>,
}

/// A loaded, validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// `[pgvane]`.
    pub settings: Settings,
    /// `[databases.*]`, by the name clients use.
    pub databases: BTreeMap<String, DatabaseConfig>,
    /// The auth file's users, when `auth_file` is set.
    pub userlist: Option<Userlist>,
    /// `[[plugins]]`, in chain order (paths as written; resolve with [`Config::dir`]).
    pub plugins: Vec<PluginSettings>,
    /// `[oci]`: the cache of pulled plugins and registry settings.
    pub oci: OciSettings,
    /// TLS towards clients, certificates loaded.
    pub client_tls: ClientTls,
    /// TLS towards servers, certificates loaded.
    pub server_tls: ServerTls,
    /// `[peers.<id>]`: the other instances of the group, by peer id (this one's own id may
    /// be listed too, so every instance can share one table).
    pub peers: BTreeMap<u16, PeerConfig>,
}

impl Config {
    /// Reads, parses and validates `path` (and the auth file it names).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(path, &text)
    }

    /// Parses and validates `text` as if read from `path` (relative paths resolve against its folder).
    pub fn from_toml(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut file: File = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string().trim_end().to_owned() })?;
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message: message.to_owned(),
        };
        let s = &file.pgvane;
        if s.policy_max_sql_bytes == 0 {
            return Err(invalid("pgvane.policy_max_sql_bytes", "must be at least 1"));
        }
        if s.max_prepared_statements == 0 {
            return Err(invalid("pgvane.max_prepared_statements", "must be at least 1"));
        }
        if s.metrics_addr.as_deref().is_some_and(|a| a.parse::<std::net::SocketAddr>().is_err()) {
            return Err(invalid(
                "pgvane.metrics_addr",
                "must be an IP address and a port, e.g. \"127.0.0.1:9127\" or \"[::]:9127\"",
            ));
        }
        if s.stats_period_ms == 0 {
            return Err(invalid("pgvane.stats_period_ms", "must be greater than 0"));
        }
        if s.listen_addr.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid("pgvane.listen_addr", "must be an IP address, e.g. \"127.0.0.1\" or \"0.0.0.0\""));
        }
        if parse_socket_mode(&s.unix_socket_mode).is_none() {
            return Err(invalid(
                "pgvane.unix_socket_mode",
                "must be file permissions in octal, e.g. \"0777\" or \"0770\"",
            ));
        }
        if !s.unix_socket_dir.is_empty() {
            if !crate::endpoint::is_socket_dir(&s.unix_socket_dir) {
                return Err(invalid(
                    "pgvane.unix_socket_dir",
                    "must be an absolute path (or empty for no unix-domain socket)",
                ));
            }
            // The longest name the socket can get: a five-digit port.
            let longest = crate::endpoint::socket_path(Path::new(&s.unix_socket_dir), u16::MAX);
            if longest.as_os_str().len() > MAX_SOCKET_PATH_BYTES {
                return Err(invalid(
                    "pgvane.unix_socket_dir",
                    &format!("is too long: a unix-domain socket's path has at most {MAX_SOCKET_PATH_BYTES} bytes"),
                ));
            }
        }
        for (key, value) in [
            ("pgvane.default_pool_size", s.default_pool_size),
            ("pgvane.max_client_conn", s.max_client_conn),
            ("pgvane.max_pending_logins", s.max_pending_logins),
            ("pgvane.max_client_prepared_statements", s.max_client_prepared_statements),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if s.max_packet_size_bytes < 1024 {
            return Err(invalid("pgvane.max_packet_size_bytes", "must be at least 1024"));
        }
        if s.client_message_budget_bytes < 1 << 20 {
            return Err(invalid("pgvane.client_message_budget_bytes", "must be at least 1048576 (1 MiB)"));
        }
        if s.server_connect_timeout_ms == 0 || s.client_login_timeout_ms == 0 {
            let key = if s.server_connect_timeout_ms == 0 {
                "pgvane.server_connect_timeout_ms"
            } else {
                "pgvane.client_login_timeout_ms"
            };
            return Err(invalid(key, "must be greater than 0"));
        }
        if !matches!(s.auth_type, AuthType::Trust | AuthType::Cert) && s.auth_file.is_none() {
            return Err(invalid("pgvane.auth_file", "required unless auth_type = \"trust\" or \"cert\""));
        }
        if s.plugin_cache_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(invalid("pgvane.plugin_cache_dir", "must not be empty (leave it out for no cache)"));
        }
        let (client_tls, server_tls) = load_tls(path, s)?;
        if file.databases.is_empty() {
            return Err(invalid("databases", "define at least one [databases.<name>] table"));
        }
        for (key, value) in [
            ("pgvane.health_check_period_ms", s.health_check_period_ms),
            ("pgvane.polling_frequency_ms", s.polling_frequency_ms),
            ("pgvane.switchover_timeout_ms", s.switchover_timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        // Which keys a `[databases]` table spells out (serde fills defaults in): `hosts`
        // excludes `host` and `port`, even when they are written with their default value.
        let written: toml::Table = toml::from_str(text).unwrap_or_default();
        for (name, db) in file.databases.iter_mut() {
            let key = |field: &str| format!("databases.{name}.{field}");
            let has = |field: &str| {
                written.get("databases").and_then(|d| d.get(name.as_str())).is_some_and(|t| t.get(field).is_some())
            };
            cluster_nodes(name, db, has("host"), has("port"))
                .map_err(|(field, message)| invalid(&key(field), &message))?;
            if db.host.is_empty() {
                return Err(invalid(&key("host"), "must not be empty"));
            }
            if db.port == 0 {
                return Err(invalid(&key("port"), "must be between 1 and 65535"));
            }
            if db.password.is_some() && db.user.is_none() {
                return Err(invalid(&key("password"), "is only used together with `user`"));
            }
            if db.pool_size == Some(0) {
                return Err(invalid(&key("pool_size"), "must be at least 1"));
            }
            if name == crate::ADMIN_DATABASE {
                return Err(invalid(&format!("databases.{name}"), "this name is reserved for the admin console"));
            }
        }
        let userlist = match &s.auth_file {
            None => None,
            Some(auth_file) => {
                let auth_file = resolve(path, auth_file);
                let load = || -> Result<Userlist, AuthFileError> {
                    let mut userlist = Userlist::parse(&std::fs::read_to_string(&auth_file)?)?;
                    // Once per load (PBKDF2 per plain password): logins then derive nothing.
                    if s.auth_type == AuthType::ScramSha256 {
                        userlist.derive_scram_verifiers();
                    }
                    Ok(userlist)
                };
                Some(load().map_err(|source| ConfigError::AuthFile {
                    path: path.to_owned(),
                    auth_file: auth_file.clone(),
                    source,
                })?)
            }
        };
        if let Some(user) = &file.pgvane.monitor_user {
            use crate::auth::userlist::Secret;
            match userlist.as_ref().and_then(|u| u.get(user)) {
                Some(Secret::Plain(_) | Secret::Md5(_)) => {}
                Some(Secret::Scram(_)) => {
                    return Err(invalid("pgvane.monitor_user", &format!("the auth file holds only a SCRAM verifier for \"{user}\": the monitor needs a plain password or an md5 hash")));
                }
                None => return Err(invalid("pgvane.monitor_user", &format!("\"{user}\" is not in the auth file"))),
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, plugin) in file.plugins.iter().enumerate() {
            let key = |field: &str| format!("plugins[{i}].{field}");
            if plugin.name.is_empty() || !names.insert(plugin.name.as_str()) {
                return Err(invalid(&key("name"), "must be non-empty and unique among [[plugins]]"));
            }
            for (field, value) in [
                ("fuel", plugin.fuel),
                ("memory_limit_mb", plugin.memory_limit_mb as u64),
                ("timeout_ms", plugin.timeout_ms),
                ("max_instances", u64::from(plugin.max_instances)),
            ] {
                if value == 0 {
                    return Err(invalid(&key(field), "must be greater than 0"));
                }
            }
            // Bounds that keep the pooling allocator's address-space reservation sane
            // (docs/plugins.md): memory slots are reserved, per instance, for the largest limit.
            if plugin.memory_limit_mb > MAX_PLUGIN_MEMORY_MB {
                return Err(invalid(&key("memory_limit_mb"), &format!("must be at most {MAX_PLUGIN_MEMORY_MB}")));
            }
            if plugin.max_instances > MAX_PLUGIN_INSTANCES {
                return Err(invalid(&key("max_instances"), &format!("must be at most {MAX_PLUGIN_INSTANCES}")));
            }
            match (&plugin.path, &plugin.source) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(invalid(&key("path"), "give exactly one of `path` (a file) and `source` (oci://…)"))
                }
                (None, Some(source)) => {
                    if !source.starts_with(crate::oci::SCHEME) {
                        return Err(invalid(
                            &key("source"),
                            "must be an oci://<registry>/<repository>:<tag>[@sha256:<digest>] reference",
                        ));
                    }
                    crate::oci::Reference::parse(source).map_err(|e| invalid(&key("source"), &e.to_string()))?;
                    if plugin.watch {
                        return Err(invalid(
                            &key("watch"),
                            "watches a `path` file; an oci:// source changes by editing its reference and RELOAD",
                        ));
                    }
                }
                (Some(_), None) => {}
            }
        }
        if let Some(key) = file.oci.zero_limit() {
            return Err(invalid(key, "must be greater than 0"));
        }
        for registry in file.oci.registries.keys() {
            if registry.is_empty() || registry.contains('/') {
                return Err(invalid(
                    &format!("oci.registries.\"{registry}\""),
                    "must be a registry host or host:port, as in references",
                ));
            }
        }
        let mut peers = BTreeMap::new();
        for (id, peer) in &file.peers {
            let key = format!("peers.{id}");
            let number = id.parse::<u16>().ok().filter(|n| (1..=MAX_PEER_ID).contains(n));
            let Some(number) = number else {
                return Err(invalid(&key, &format!("a peer id must be a number from 1 to {MAX_PEER_ID}")));
            };
            if peer.host.is_empty() {
                return Err(invalid(&format!("{key}.host"), "must not be empty"));
            }
            if peer.port == 0 {
                return Err(invalid(&format!("{key}.port"), "must be between 1 and 65535"));
            }
            if peers.insert(number, peer.clone()).is_some() {
                return Err(invalid(&key, "the same peer id is listed twice"));
            }
        }
        if file.pgvane.peer_id > MAX_PEER_ID {
            return Err(invalid("pgvane.peer_id", &format!("must be at most {MAX_PEER_ID} (0: peering off)")));
        }
        if file.pgvane.peer_id == 0 && !peers.is_empty() {
            return Err(invalid("pgvane.peer_id", "must be set (1 to 16383) when [peers] lists other instances"));
        }
        if file.pgvane.shutdown_timeout_ms == 0 {
            return Err(invalid("pgvane.shutdown_timeout_ms", "must be greater than 0"));
        }
        Ok(Config {
            path: path.to_owned(),
            settings: file.pgvane,
            peers,
            databases: file.databases,
            userlist,
            plugins: file.plugins,
            oci: file.oci,
            client_tls,
            server_tls,
        })
    }

    /// The folder relative paths in the file are resolved against.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// `plugin_cache_dir`, resolved against [`Config::dir`]; `None` when unset.
    pub fn plugin_cache_dir(&self) -> Option<PathBuf> {
        self.settings.plugin_cache_dir.as_ref().map(|dir| self.dir().join(dir))
    }

    /// The server-side name of database `name`.
    pub fn server_dbname<'a>(&self, name: &'a str, db: &'a DatabaseConfig) -> &'a str {
        db.dbname.as_deref().unwrap_or(name)
    }

    /// Pool size for database `db`.
    pub fn pool_size(&self, db: &DatabaseConfig) -> usize {
        db.pool_size.unwrap_or(self.settings.default_pool_size)
    }
}

/// Checks the cluster keys of database `name` and fills in `db.nodes` (and, for `hosts`,
/// `host`/`port` with the first node). `has_host`/`has_port`: the table spells them out.
/// The error names the offending key (without the `databases.<name>.` prefix).
fn cluster_nodes(
    name: &str,
    db: &mut DatabaseConfig,
    has_host: bool,
    has_port: bool,
) -> Result<(), (&'static str, String)> {
    if !db.hosts.is_empty() {
        if has_host || has_port {
            let field = if has_host { "host" } else { "port" };
            return Err((field, "cannot be combined with `hosts` (write each node as \"host:port\")".into()));
        }
        let mut nodes = Vec::new();
        for text in &db.hosts {
            let node = NodeAddr::parse(text, default_port()).map_err(|m| ("hosts", m))?;
            if nodes.contains(&node) {
                return Err(("hosts", format!("`{node}` is listed twice")));
            }
            nodes.push(node);
        }
        if let Some(first) = nodes.first() {
            db.host.clone_from(&first.host);
            db.port = first.port;
        }
        db.nodes = nodes;
    } else if !has_host {
        return Err(("host", format!("required (or `hosts` for a cluster) in [databases.{name}]")));
    } else if db.topology_query.is_some() && !db.host.is_empty() {
        db.nodes = vec![NodeAddr { host: db.host.clone(), port: db.port }];
    }
    if db.topology_query.as_deref().is_some_and(|q| q.trim().is_empty()) {
        return Err(("topology_query", "must not be empty".into()));
    }
    if db.role_query.as_deref().is_some_and(|q| q.trim().is_empty()) {
        return Err(("role_query", "must not be empty".into()));
    }
    if db.role_query.is_some() && db.nodes.is_empty() {
        return Err(("role_query", "only applies to a cluster (`hosts` or `topology_query`)".into()));
    }
    if db.default_route != DefaultRoute::Primary && db.nodes.is_empty() {
        return Err(("default_route", "only applies to a cluster (`hosts` or `topology_query`)".into()));
    }
    Ok(())
}

/// Checks the `client_tls_*` and `server_tls_*` keys and reads the files they name.
fn load_tls(path: &Path, s: &Settings) -> Result<(ClientTls, ServerTls), ConfigError> {
    let invalid = |key: &str, message: &str| ConfigError::Invalid {
        path: path.to_owned(),
        key: format!("pgvane.{key}"),
        message: message.to_owned(),
    };
    let client_mode = s.client_tls_sslmode;
    if client_mode != ClientTlsMode::Disable {
        for (key, value) in
            [("client_tls_cert_file", &s.client_tls_cert_file), ("client_tls_key_file", &s.client_tls_key_file)]
        {
            if value.is_none() {
                return Err(invalid(key, "required unless client_tls_sslmode = \"disable\""));
            }
        }
    }
    if client_mode.verifies_client() && s.client_tls_ca_file.is_none() {
        return Err(invalid(
            "client_tls_ca_file",
            "required with client_tls_sslmode = \"verify-ca\" or \"verify-full\"",
        ));
    }
    if s.auth_type == AuthType::Cert && !client_mode.verifies_client() {
        return Err(invalid(
            "auth_type",
            "\"cert\" needs client_tls_sslmode = \"verify-ca\" or \"verify-full\" (clients must present certificates)",
        ));
    }
    if matches!(s.server_tls_sslmode, ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull)
        && s.server_tls_ca_file.is_none()
    {
        return Err(invalid(
            "server_tls_ca_file",
            "required with server_tls_sslmode = \"verify-ca\" or \"verify-full\"",
        ));
    }
    if s.server_tls_cert_file.is_some() != s.server_tls_key_file.is_some() {
        return Err(invalid("server_tls_key_file", "server_tls_cert_file and server_tls_key_file go together"));
    }
    let files = |cert: &Option<PathBuf>, key: &Option<PathBuf>, ca: &Option<PathBuf>| TlsFiles {
        cert: cert.as_deref().map(|p| resolve(path, p)),
        key: key.as_deref().map(|p| resolve(path, p)),
        ca: ca.as_deref().map(|p| resolve(path, p)),
    };
    // Names the key whose file failed, from the file named in the error.
    let tls_error = |side: &str, files: &TlsFiles, source: TlsError| {
        let key = match &source {
            TlsError::File { path: failed, .. } if Some(failed) == files.ca.as_ref() => format!("{side}_tls_ca_file"),
            TlsError::File { path: failed, .. } if Some(failed) == files.key.as_ref() => format!("{side}_tls_key_file"),
            TlsError::File { .. } | TlsError::Rustls(_) => format!("{side}_tls_cert_file"),
            _ => format!("{side}_tls_sslmode"),
        };
        ConfigError::Tls { path: path.to_owned(), key: format!("pgvane.{key}"), source }
    };
    let client_files = files(&s.client_tls_cert_file, &s.client_tls_key_file, &s.client_tls_ca_file);
    let client = ClientTls::load(client_mode, &client_files).map_err(|e| tls_error("client", &client_files, e))?;
    let server_files = files(&s.server_tls_cert_file, &s.server_tls_key_file, &s.server_tls_ca_file);
    let server =
        ServerTls::load(s.server_tls_sslmode, &server_files).map_err(|e| tls_error("server", &server_files, e))?;
    Ok((client, server))
}

/// A path from the config file, relative to the file's folder.
fn resolve(config_path: &Path, p: &Path) -> PathBuf {
    match config_path.parent() {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(Path::new("/nonexistent/pgvane.toml"), text)
    }

    const MINIMAL: &str = "[pgvane]\nauth_type = \"trust\"\n[databases.app]\nhost = \"127.0.0.1\"\n";

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.settings.listen_port, 6432);
        assert_eq!(c.settings.default_pool_size, 20);
        assert_eq!(c.settings.server_reset_query, "DISCARD ALL");
        let db = &c.databases["app"];
        assert_eq!((db.port, c.server_dbname("app", db)), (5432, "app"));
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = load(&format!("{MINIMAL}bogus = 1\n")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/pgvane.toml") && err.contains("bogus"), "{err}");
        let err = load("[pgvane]\nlisten_prot = 1\n").unwrap_err().to_string();
        assert!(err.contains("listen_prot"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let err = load(&MINIMAL.replace("[databases.app]", "default_pool_size = 0\n[databases.app]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`pgvane.default_pool_size`"), "{err}");
        let err = load("[pgvane]\n[databases.app]\nhost = \"h\"\n").unwrap_err().to_string();
        assert!(err.contains("`pgvane.auth_file`"), "{err}");
        let err = load(&format!("{MINIMAL}password = \"x\"\n")).unwrap_err().to_string();
        assert!(err.contains("`databases.app.password`"), "{err}");
        let err = load("[pgvane]\nauth_type = \"trust\"\n").unwrap_err().to_string();
        assert!(err.contains("`databases`"), "{err}");
        let err = load(&MINIMAL.replace("trust", "kerberos")).unwrap_err().to_string();
        assert!(err.contains("kerberos"), "{err}");
    }

    #[test]
    fn plugin_pool_bounds_are_checked() {
        let plugin = |keys: &str| format!("{MINIMAL}\n[[plugins]]\nname = \"p\"\npath = \"p.wasm\"\n{keys}\n");
        let config = load(&plugin("")).unwrap();
        assert_eq!((config.plugins[0].max_instances, config.plugins[0].memory_limit_mb), (8, 16));
        for (keys, key) in [
            ("max_instances = 0", "`plugins[0].max_instances`"),
            ("max_instances = 257", "`plugins[0].max_instances`"),
            ("memory_limit_mb = 4097", "`plugins[0].memory_limit_mb`"),
        ] {
            let err = load(&plugin(keys)).unwrap_err().to_string();
            assert!(err.contains(key), "{keys}: {err}");
        }
        load(&plugin("max_instances = 256\nmemory_limit_mb = 4096")).unwrap();
    }

    #[test]
    fn peers_need_a_peer_id_and_valid_ids() {
        let base = "[pgvane]\nauth_type = \"trust\"\n{}\n[databases.app]\nhost = \"h\"\n{}";
        let with = |settings: &str, peers: &str| load(&base.replacen("{}", settings, 1).replacen("{}", peers, 1));
        let c =
            with("peer_id = 2\nso_reuseport = true", "[peers.1]\nhost = \"a\"\n[peers.2]\nhost = \"b\"\nport = 7000\n")
                .unwrap();
        assert_eq!(c.peers[&1], PeerConfig { host: "a".into(), port: 6432 });
        assert_eq!(c.peers[&2].port, 7000);
        assert!(c.settings.so_reuseport && c.settings.peer_id == 2);
        for (settings, peers, key) in [
            ("", "[peers.1]\nhost = \"a\"\n", "pgvane.peer_id"),
            ("peer_id = 16384", "", "pgvane.peer_id"),
            ("peer_id = 1", "[peers.0]\nhost = \"a\"\n", "peers.0"),
            ("peer_id = 1", "[peers.x]\nhost = \"a\"\n", "peers.x"),
            ("peer_id = 1", "[peers.2]\nhost = \"\"\n", "peers.2.host"),
            ("shutdown_timeout_ms = 0", "", "pgvane.shutdown_timeout_ms"),
        ] {
            let err = with(settings, peers).unwrap_err().to_string();
            assert!(err.contains(key), "{settings} {peers}: {err}");
        }
    }

    #[test]
    fn unix_socket_keys_are_checked() {
        let c = load(MINIMAL).unwrap();
        assert_eq!((c.settings.unix_socket_dir.as_str(), c.settings.unix_socket_mode.as_str()), ("", "0777"));
        assert_eq!(parse_socket_mode("0777"), Some(0o777));
        assert_eq!(parse_socket_mode("770"), Some(0o770));
        assert_eq!(parse_socket_mode("0o700"), Some(0o700));
        for bad in ["", "0o", "0778", "1777", "rwx", "+777", "-1"] {
            assert_eq!(parse_socket_mode(bad), None, "{bad:?}");
        }
        let with = |line: &str| load(&MINIMAL.replace("[pgvane]\n", &format!("[pgvane]\n{line}\n")));
        let ok = with("unix_socket_dir = \"/run/pgvane\"\nunix_socket_mode = \"0700\"").unwrap();
        assert_eq!(ok.settings.unix_socket_dir, "/run/pgvane");
        let too_long = format!("unix_socket_dir = \"/{}\"", "d".repeat(100));
        for (line, key) in [
            ("unix_socket_mode = \"0999\"", "pgvane.unix_socket_mode"),
            ("unix_socket_dir = \"run\"", "pgvane.unix_socket_dir"),
            (too_long.as_str(), "pgvane.unix_socket_dir"),
        ] {
            let err = with(line).unwrap_err().to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
    }

    #[test]
    fn settings_serialize_every_key() {
        let table = toml::Table::try_from(Settings::default()).unwrap();
        assert_eq!(table["auth_file"].as_str(), Some(""));
        assert_eq!(table["pool_mode"].as_str(), Some("session"));
        assert_eq!(table["auth_type"].as_str(), Some("scram-sha-256"));
        assert_eq!(table["default_pool_size"].as_integer(), Some(20));
        for key in RESTART_KEYS {
            assert!(table.contains_key(*key), "{key}");
        }
    }

    #[test]
    fn clusters_are_lists_of_nodes_with_their_keys_checked() {
        let cluster =
            "[pgvane]\nauth_type = \"trust\"\n[databases.app]\nhosts = [\"10.0.0.1:5433\", \"db2\", \"[::1]:6000\"]\n";
        let c = load(cluster).unwrap();
        let db = &c.databases["app"];
        let nodes: Vec<String> = db.nodes.iter().map(ToString::to_string).collect();
        assert_eq!(nodes, ["10.0.0.1:5433", "db2:5432", "[::1]:6000"]);
        assert_eq!((db.host.as_str(), db.port, db.default_route), ("10.0.0.1", 5433, DefaultRoute::Primary));
        assert!(db.is_cluster() && !load(MINIMAL).unwrap().databases["app"].is_cluster());
        let replica = load(&format!("{cluster}default_route = \"replica\"\n")).unwrap();
        assert_eq!(replica.databases["app"].default_route, DefaultRoute::Replica);
        // A single host with a topology query is a cluster seeded by that host.
        let seeded = load(&format!("{MINIMAL}topology_query = \"select host, port from nodes\"\n")).unwrap();
        assert_eq!(seeded.databases["app"].nodes, [NodeAddr { host: "127.0.0.1".into(), port: 5432 }]);
        let roles = load(&format!("{cluster}role_query = \"select role from node_role\"\n")).unwrap();
        assert_eq!(roles.databases["app"].role_query.as_deref(), Some("select role from node_role"));
        assert_eq!(c.databases["app"].role_query, None, "the default: pg_is_in_recovery()");
        let s = &seeded.settings;
        assert_eq!((s.polling_frequency_ms, s.health_check_period_ms, s.monitor_user.as_deref()), (100, 1000, None));

        for (text, key, says) in [
            (format!("{cluster}host = \"h\"\n"), "databases.app.host", "cannot be combined with `hosts`"),
            (format!("{cluster}port = 5432\n"), "databases.app.port", "cannot be combined with `hosts`"),
            (cluster.replace("db2", "db2:0"), "databases.app.hosts", "between 1 and 65535"),
            (cluster.replace("db2", "10.0.0.1:5433"), "databases.app.hosts", "listed twice"),
            (cluster.replace("db2", "::1"), "databases.app.hosts", "in brackets"),
            (cluster.replace("hosts = ", "dbname = \"x\"\n#"), "databases.app.host", "required (or `hosts`"),
            (format!("{MINIMAL}default_route = \"replica\"\n"), "databases.app.default_route", "only applies"),
            (format!("{cluster}topology_query = \" \"\n"), "databases.app.topology_query", "must not be empty"),
            (format!("{cluster}role_query = \"\"\n"), "databases.app.role_query", "must not be empty"),
            (format!("{MINIMAL}role_query = \"select 'writer'\"\n"), "databases.app.role_query", "only applies"),
            (
                cluster.replace("[databases", "polling_frequency_ms = 0\n[databases"),
                "pgvane.polling_frequency_ms",
                "greater than 0",
            ),
            (cluster.replace("[databases", "monitor_user = \"mon\"\n[databases"), "pgvane.monitor_user", "auth file"),
        ] {
            let err = load(&text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")) && err.contains(says), "{text}\n=> {err}");
        }
        let err = load(&format!("{cluster}default_route = \"anywhere\"\n")).unwrap_err().to_string();
        assert!(err.contains("anywhere") && err.contains("default_route"), "{err}");
    }

    #[test]
    fn missing_auth_file_names_both_files() {
        let text = "[pgvane]\nauth_file = \"users.txt\"\n[databases.app]\nhost = \"h\"\n";
        let err = load(text).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/users.txt") && err.contains("auth_file"), "{err}");
    }

    #[test]
    fn a_plugin_has_a_path_or_an_oci_source() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let ok = load(&format!(
            "{MINIMAL}[[plugins]]\nname = \"a\"\npath = \"a.wasm\"\nwatch = true\n\
             [[plugins]]\nname = \"b\"\nsource = \"oci://127.0.0.1:5000/p/b:v1@{digest}\"\n\
             [oci]\ncache_dir = \"/var/cache/pgvane\"\n[oci.registries.\"127.0.0.1:5000\"]\n\
             username = \"u\"\npassword = \"hunter2\"\n"
        ))
        .unwrap();
        assert_eq!(ok.plugins.len(), 2);
        assert!(!format!("{ok:?}").contains("hunter2"), "the password must not show in Debug output");
        for (entry, key, why) in [
            ("path = \"a.wasm\"\nsource = \"oci://h.io/a:v1\"", "plugins[0].path", "exactly one"),
            ("fuel = 1", "plugins[0].path", "exactly one"),
            ("source = \"h.io/a:v1\"", "plugins[0].source", "oci://"),
            ("source = \"oci://acme/a:v1\"", "plugins[0].source", "no registry host"),
            ("source = \"oci://h.io/a:v1\"\nwatch = true", "plugins[0].watch", "RELOAD"),
        ] {
            let err = load(&format!("{MINIMAL}[[plugins]]\nname = \"a\"\n{entry}\n")).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(why), "{entry}: {err}");
        }
    }

    /// Writes a self-signed certificate and its key into a temp dir; returns (dir, cert, key).
    fn cert_files() -> (tempfile_dir::Dir, String, String) {
        let dir = tempfile_dir::Dir::new();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let cert_path = dir.path.join("c.crt");
        let key_path = dir.path.join("c.key");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (dir, cert_path.display().to_string(), key_path.display().to_string())
    }

    /// A temp dir removed on drop (the proxy crate has no tempfile dependency).
    mod tempfile_dir {
        pub struct Dir {
            pub path: std::path::PathBuf,
        }
        impl Dir {
            pub fn new() -> Dir {
                let path = std::env::temp_dir().join(format!("pgvane-config-test-{}", rand::random::<u64>()));
                std::fs::create_dir_all(&path).unwrap();
                Dir { path }
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }

    #[test]
    fn tls_defaults_are_pgbouncers() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.settings.client_tls_sslmode, ClientTlsMode::Disable);
        assert_eq!(c.settings.server_tls_sslmode, ServerTlsMode::Prefer);
        assert!(c.client_tls.acceptor().is_none());
        assert!(c.server_tls.enabled());
        let table = toml::Table::try_from(Settings::default()).unwrap();
        assert_eq!(table["client_tls_sslmode"].as_str(), Some("disable"));
        assert_eq!(table["server_tls_sslmode"].as_str(), Some("prefer"));
        assert_eq!(table["client_tls_cert_file"].as_str(), Some(""));
    }

    #[test]
    fn tls_keys_are_validated_and_files_read() {
        let with = |lines: &str| MINIMAL.replace("[databases.app]", &format!("{lines}\n[databases.app]"));
        let err = load(&with("client_tls_sslmode = \"require\"")).unwrap_err().to_string();
        assert!(err.contains("`pgvane.client_tls_cert_file`"), "{err}");
        let err = load(&with("client_tls_sslmode = \"sometimes\"")).unwrap_err().to_string();
        assert!(err.contains("sometimes"), "{err}");
        let err = load(&with("server_tls_sslmode = \"verify-full\"")).unwrap_err().to_string();
        assert!(err.contains("`pgvane.server_tls_ca_file`"), "{err}");
        let err = load(&with("auth_type = \"cert\"").replace("auth_type = \"trust\"\n", "")).unwrap_err().to_string();
        assert!(err.contains("`pgvane.auth_type`"), "{err}");

        let (_dir, cert, key) = cert_files();
        let good = format!(
            "client_tls_sslmode = \"require\"\nclient_tls_cert_file = \"{cert}\"\nclient_tls_key_file = \"{key}\""
        );
        let c = load(&with(&good)).unwrap();
        assert!(c.client_tls.acceptor().is_some());
        assert!(c.client_tls.channel_binding().is_some(), "rcgen signs with ECDSA-SHA256: binding defined");

        // A key that is not one, and a missing certificate, name the key and the file.
        let err = load(&with(&good.replace(&key, &cert))).unwrap_err().to_string();
        assert!(err.contains("`pgvane.client_tls_key_file`") && err.contains(&cert), "{err}");
        let err = load(&with(&good.replace(&cert, "/nonexistent/x.crt"))).unwrap_err().to_string();
        assert!(err.contains("`pgvane.client_tls_cert_file`") && err.contains("/nonexistent/x.crt"), "{err}");
        // A certificate that does not match the key.
        let (_other_dir, other_cert, _) = cert_files();
        let err = load(&with(&good.replace(&cert, &other_cert))).unwrap_err().to_string();
        assert!(err.contains("`pgvane.client_tls_cert_file`"), "{err}");

        let server = format!("server_tls_sslmode = \"verify-ca\"\nserver_tls_ca_file = \"{cert}\"");
        assert!(load(&with(&server)).unwrap().server_tls.enabled());
        let err = load(&with(&format!("{server}\nserver_tls_cert_file = \"{cert}\""))).unwrap_err().to_string();
        assert!(err.contains("`pgvane.server_tls_key_file`"), "{err}");
    }
}
