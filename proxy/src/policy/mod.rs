//! The policy host: plugins are WebAssembly components of the `pgvane:policy` world (wit/),
//! run in wasmtime with fuel, memory and time limits, as an ordered chain consulted for every
//! Query and Parse.
//!
//! Chain semantics: rewrites compose in chain order (each plugin sees the SQL as the previous
//! ones left it), the first route wins, a reject ends the chain. A plugin error (trap, limit
//! hit, invalid verdict) is handled by that plugin's `on_error`: `pass` skips it, `reject`
//! refuses the statement with an error naming the plugin.
//!
//! Components are compiled when a chain loads, or read back from the compiled-component cache
//! (`plugin_cache_dir`, [`cache`]) when an earlier load or `pgvane plugin compile` left them there.

// Without the plugin host (the fuzz targets' build), only the settings and the domain types.
#![cfg_attr(not(feature = "plugin-host"), allow(dead_code, unused_imports))]

#[cfg(feature = "plugin-host")]
pub mod cache;
#[cfg(feature = "plugin-host")]
mod plugin;

#[cfg(feature = "plugin-host")]
use std::sync::atomic::Ordering::Relaxed;
#[cfg(feature = "plugin-host")]
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::protocol::messages::ErrorResponse;

#[cfg(feature = "plugin-host")]
pub use plugin::{check_component, LogLimiter, Plugin, PluginStats};

/// The one place the WIT world becomes Rust.
#[cfg(feature = "plugin-host")]
mod bindings {
    // Exports are called with `call_async`: WASI (which Rust's std imports) is the async
    // implementation, which must not block a tokio worker thread.
    wasmtime::component::bindgen!({ path: "../wit", world: "policy", exports: { default: async } });
}

#[cfg(feature = "plugin-host")]
use bindings::pgvane::policy::types as wit;

/// The WIT world a plugin implements.
pub const WORLD: &str = "pgvane:policy/policy@0.1.0";

/// Granularity of the wall-clock deadline.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// What to do when a plugin fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail open: the plugin is skipped for this statement.
    Pass,
    /// Fail closed: the statement is refused.
    Reject,
}

/// The largest `memory_limit_mb` of a plugin: a 32-bit WebAssembly memory cannot be larger.
pub const MAX_PLUGIN_MEMORY_MB: usize = 4096;
/// The largest `max_instances` of a plugin.
pub const MAX_PLUGIN_INSTANCES: u32 = 256;

/// A `[[plugins]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSettings {
    /// Name in logs, errors and the admin console.
    pub name: String,
    /// The component file, relative to the config file (or `source`).
    pub path: Option<std::path::PathBuf>,
    /// An `oci://` reference to the component (or `path`).
    pub source: Option<String>,
    /// Reload when the `path` file changes.
    #[serde(default)]
    pub watch: bool,
    /// Fuel per call (about one unit per WebAssembly instruction).
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// Memory an instance may use.
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: usize,
    /// Wall-clock deadline per call.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// What a plugin error means for the statement.
    #[serde(default = "default_on_error")]
    pub on_error: OnError,
    /// Instances kept at most (warm plus busy): calls beyond it wait for a free one. Each
    /// reserves a slot of the chain's pooling allocator.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// `host.log` records kept per second; more are dropped and counted
    /// (`pgvane_plugin_log_records_dropped_total`).
    #[serde(default = "default_log_records_per_second")]
    pub log_records_per_second: u64,
    /// Handed to the plugin's `init` as JSON.
    #[serde(default)]
    pub config: toml::Table,
}

/// What a plugin's verdict did, as the `verdict` label of `pgvane_plugin_verdicts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictKind {
    /// `pass`.
    Pass,
    /// `route`.
    Route,
    /// `rewrite`.
    Rewrite,
    /// `route-and-rewrite`.
    RouteAndRewrite,
    /// `reject`.
    Reject,
}

impl VerdictKind {
    /// Every kind, in label order.
    pub const ALL: [VerdictKind; 5] = [
        VerdictKind::Pass,
        VerdictKind::Route,
        VerdictKind::Rewrite,
        VerdictKind::RouteAndRewrite,
        VerdictKind::Reject,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Pass => "pass",
            VerdictKind::Route => "route",
            VerdictKind::Rewrite => "rewrite",
            VerdictKind::RouteAndRewrite => "route_and_rewrite",
            VerdictKind::Reject => "reject",
        }
    }
}

/// Why a plugin call failed, as the `cause` label of `pgvane_plugin_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCause {
    /// A trap (a panic, an unreachable, a failed instantiation).
    Trap,
    /// Out of fuel.
    Fuel,
    /// A memory growth past `memory_limit_mb`.
    Memory,
    /// The wall-clock deadline (`timeout_ms`).
    Timeout,
    /// A verdict the host refused (an unknown database, a bad SQLSTATE, a NUL in the SQL).
    InvalidVerdict,
}

impl ErrorCause {
    /// Every cause, in label order.
    pub const ALL: [ErrorCause; 5] =
        [ErrorCause::Trap, ErrorCause::Fuel, ErrorCause::Memory, ErrorCause::Timeout, ErrorCause::InvalidVerdict];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCause::Trap => "trap",
            ErrorCause::Fuel => "fuel",
            ErrorCause::Memory => "memory",
            ErrorCause::Timeout => "timeout",
            ErrorCause::InvalidVerdict => "invalid_verdict",
        }
    }
}

fn default_fuel() -> u64 {
    5_000_000
}
/// Fuel a call gets per byte of its statement, beyond `fuel`: reading a statement costs in
/// proportion to its length, and bulk statements of several MiB must not run out.
pub const FUEL_PER_SQL_BYTE: u64 = 200;
/// A call's deadline grows by 1 ms per this many bytes of its statement, beyond `timeout_ms`.
pub const SQL_BYTES_PER_EXTRA_MS: u64 = 16 * 1024;

impl PluginSettings {
    /// Fuel and deadline (ms) of a call judging a statement of `sql_len` bytes.
    pub fn allowance(&self, sql_len: usize) -> (u64, u64) {
        let len = sql_len as u64;
        (
            self.fuel.saturating_add(len.saturating_mul(FUEL_PER_SQL_BYTE)),
            self.timeout_ms.saturating_add(len / SQL_BYTES_PER_EXTRA_MS),
        )
    }
}

fn default_memory_limit_mb() -> usize {
    16
}
fn default_timeout_ms() -> u64 {
    10
}
fn default_on_error() -> OnError {
    OnError::Pass
}
fn default_max_instances() -> u32 {
    8
}
fn default_log_records_per_second() -> u64 {
    100
}

/// Why a plugin could not be compiled or initialised.
#[derive(Debug, Error)]
pub enum PolicyError {
    /// The wasmtime engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    /// A plugin did not compile, link or initialise.
    #[error("plugin \"{plugin}\": {reason}")]
    Load {
        /// Plugin name.
        plugin: String,
        /// Why.
        reason: String,
    },
}

/// Why one plugin call failed.
#[derive(Debug, Error)]
pub enum PluginError {
    /// A trap, out of fuel, deadline or memory.
    #[error("{0}")]
    Trap(String),
    /// `init` refused the configuration.
    #[error("init refused its config: {0}")]
    InitRefused(String),
    /// The verdict is not valid.
    #[error("invalid verdict: {0}")]
    InvalidVerdict(String),
}

/// What one plugin instance may take from the pool: a Rust component built for wasm32-wasip2 has
/// 3 core instances, 1 memory and 2 tables (the module, and wit-bindgen's two shims); the limits
/// leave room for other toolchains (e.g. a WASI preview1 adapter brings a memory of its own).
const CORE_INSTANCES_PER_INSTANCE: u32 = 16;
const MEMORIES_PER_INSTANCE: u32 = 2;
const TABLES_PER_INSTANCE: u32 = 4;
/// Unmapped bytes after each linear memory: accesses up to this offset past the bounds-checked
/// index fault instead of needing a check of their own.
const MEMORY_GUARD_BYTES: u64 = 2 << 20;
/// The stack of an async call (guest frames plus the host functions it calls), and how much of it
/// the guest may use: wasmtime's defaults.
const ASYNC_STACK_BYTES: usize = 2 << 20;
const MAX_WASM_STACK_BYTES: usize = 512 << 10;

/// An engine for one chain, with its epoch ticker, sized from the chain's settings.
///
/// Instances come from wasmtime's pooling allocator: slots reserved once, when the engine is
/// built, and reused, so (re)instantiating is a few page-table updates rather than mmaps, and a
/// warm instance keeps its fiber stack between calls. The pool holds `max_instances` instances
/// per plugin. Each linear-memory slot reserves (not commits) the largest `memory_limit_mb` of
/// the chain plus a guard of [`MEMORY_GUARD_BYTES`]: with the defaults (four plugins, 8 instances,
/// 16 MiB) that is 64 memory slots of 18 MiB = 1.1 GiB of address space, plus 32 fiber stacks of
/// 2 MiB; docs/plugins.md has the formula. The price of slots smaller than wasmtime's default
/// 4 GiB is an explicit bounds check on each memory access of the guest (measured: see
/// docs/plugins.md).
#[cfg(feature = "plugin-host")]
fn engine(settings: &[PluginSettings]) -> Result<wasmtime::Engine, PolicyError> {
    const MIB: usize = 1024 * 1024;
    // No settings: `pgvane plugin inspect` compiling a component with no chain around it
    // (one slot, the largest memory a plugin may have; nothing is instantiated).
    let instances = settings.iter().map(|s| s.max_instances).fold(0u32, u32::saturating_add).max(1);
    let max_memory_mb = settings.iter().map(|s| s.memory_limit_mb).max().unwrap_or(MAX_PLUGIN_MEMORY_MB);
    let max_memory_bytes = max_memory_mb.saturating_mul(MIB);
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .max_core_instances_per_component(CORE_INSTANCES_PER_INSTANCE)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_INSTANCE))
        .max_memories_per_component(MEMORIES_PER_INSTANCE)
        .total_memories(instances.saturating_mul(MEMORIES_PER_INSTANCE))
        .max_tables_per_component(TABLES_PER_INSTANCE)
        .total_tables(instances.saturating_mul(TABLES_PER_INSTANCE))
        // One per instance: a store keeps the stack of its last call for the next one.
        .total_stacks(instances)
        .max_memory_size(max_memory_bytes);
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .consume_fuel(true)
        .epoch_interruption(true)
        .allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool))
        .memory_reservation(max_memory_bytes as u64)
        .memory_reservation_for_growth(0)
        .memory_guard_size(MEMORY_GUARD_BYTES)
        .async_stack_size(ASYNC_STACK_BYTES)
        .max_wasm_stack(MAX_WASM_STACK_BYTES);
    let engine = wasmtime::Engine::new(&config).map_err(|e| PolicyError::Engine(format!("{e:#}")))?;
    // The ticker ends when the chain (and with it every user of the engine) is gone.
    let ticker = engine.weak();
    std::thread::Builder::new()
        .name("pgvane-epoch".into())
        .spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map_err(|e| PolicyError::Engine(e.to_string()))?;
    Ok(engine)
}

/// `pgvane plugin compile`: components compiled into the cache for the engine a chain of the
/// given `[[plugins]]` gets, so that the chain's next load reads them instead of compiling.
#[cfg(feature = "plugin-host")]
pub struct Precompiler {
    engine: wasmtime::Engine,
    cache: cache::CompiledCache,
}

/// Why `pgvane plugin compile` could not fill the cache.
#[cfg(feature = "plugin-host")]
#[derive(Debug, Error)]
pub enum PrecompileError {
    /// The engine could not be set up, or a component did not compile.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The cache directory cannot be made or is refused.
    #[error("plugin_cache_dir: {0}")]
    Cache(#[from] cache::CacheError),
}

#[cfg(feature = "plugin-host")]
impl Precompiler {
    /// For the chain `settings` (in chain order, as in the file: the engine depends on the
    /// largest `memory_limit_mb` of them), into the cache at `dir`.
    pub fn new(settings: &[PluginSettings], dir: &std::path::Path) -> Result<Precompiler, PrecompileError> {
        Ok(Precompiler { engine: engine(settings)?, cache: cache::CompiledCache::open(dir)? })
    }

    /// Compiles `wasm` into the cache, unless a sound entry is there already: its entry, and
    /// what was done.
    pub fn compile(&self, name: &str, wasm: &[u8]) -> Result<(std::path::PathBuf, Precompiled), PrecompileError> {
        let loaded = self.cache.component(&self.engine, wasm).map_err(|e| PolicyError::Load {
            plugin: name.to_owned(),
            reason: format!("not a valid component: {e:#}"),
        })?;
        let done = match loaded.outcome {
            cache::Outcome::Hit => Precompiled::AlreadyThere,
            cache::Outcome::Compiled { not_stored: Some(error), .. } => return Err(error.into()),
            cache::Outcome::Compiled { refused: None, not_stored: None } => Precompiled::Compiled,
            cache::Outcome::Compiled { refused: Some(refused), not_stored: None } => Precompiled::Replaced(refused),
        };
        Ok((loaded.file, done))
    }
}

/// What [`Precompiler::compile`] did.
#[cfg(feature = "plugin-host")]
#[derive(Debug)]
pub enum Precompiled {
    /// A sound entry was there: nothing compiled.
    AlreadyThere,
    /// Compiled into a new entry.
    Compiled,
    /// Compiled, and the entry that was there replaced: why it was refused.
    Replaced(cache::CacheError),
}

/// Where a statement should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A `[databases]` entry.
    Database(String),
    /// The primary of the client's database.
    Primary,
    /// A replica of the client's database.
    Replica,
}

/// What pgvane tells the chain about a statement.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// User.
    pub user: &'a str,
    /// Database the client connected to.
    pub database: &'a str,
    /// application_name from startup.
    pub application_name: &'a str,
    /// Client IP address.
    pub client_addr: String,
    /// The client's pid (BackendKeyData).
    pub session_id: u32,
    /// SQL text.
    pub sql: &'a str,
    /// Inside a transaction block.
    pub in_transaction: bool,
    /// `None` for a simple Query, `Some(statement name)` for a Parse.
    pub parse: Option<&'a str>,
}

/// The chain's decision about a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run it: rewritten if `sql` is set, on `route` if set.
    Run {
        /// First route any plugin gave.
        route: Option<Route>,
        /// The SQL after all rewrites, if any plugin rewrote it.
        sql: Option<String>,
    },
    /// Refuse it with this error.
    Reject(ErrorResponse),
}

/// Where a loaded plugin's component came from, for the admin console.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The file or the `oci://` reference, as configured.
    pub source: String,
    /// `sha256:` of the component's bytes.
    pub digest: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

/// A plugin to load: its settings, where it came from, and the component's bytes.
#[derive(Debug)]
pub struct Loadable {
    /// Its `[[plugins]]` entry.
    pub settings: PluginSettings,
    /// Its origin.
    pub origin: Origin,
    /// The component.
    pub wasm: Vec<u8>,
}

/// The ordered plugins.
#[cfg(feature = "plugin-host")]
#[derive(Debug)]
pub struct Chain {
    plugins: Vec<Plugin>,
    /// Told apart from every other chain this process made (see [`Chain::generation`]).
    generation: u64,
}

/// The generation the next chain gets.
#[cfg(feature = "plugin-host")]
static NEXT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[cfg(feature = "plugin-host")]
fn next_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Relaxed)
}

#[cfg(feature = "plugin-host")]
impl Default for Chain {
    /// A chain without plugins.
    fn default() -> Self {
        Chain { plugins: Vec::new(), generation: next_generation() }
    }
}

#[cfg(feature = "plugin-host")]
impl Chain {
    /// Compiles and initialises every plugin, in order; all or nothing. With `cache_dir`
    /// (`plugin_cache_dir`), compiled components are read from and stored in that cache; a
    /// directory that is refused is logged and the plugins are compiled without it.
    pub async fn load(
        loadables: Vec<Loadable>,
        databases: &[String],
        cache_dir: Option<&std::path::Path>,
    ) -> Result<Chain, PolicyError> {
        if loadables.is_empty() {
            return Ok(Chain::default());
        }
        let settings: Vec<PluginSettings> = loadables.iter().map(|l| l.settings.clone()).collect();
        let engine = engine(&settings)?;
        let cache = cache_dir.and_then(cache::open);
        let databases: Arc<[String]> = databases.into();
        let mut plugins = Vec::new();
        for l in loadables {
            plugins
                .push(Plugin::load(&engine, cache.as_ref(), l.settings, l.origin, &l.wasm, databases.clone()).await?);
        }
        Ok(Chain { plugins, generation: next_generation() })
    }

    /// A number no other chain of this process has: a verdict taken by a chain of another
    /// generation was taken by a policy no longer in force (a swap came since).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True when there are no plugins (the common fast path).
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// The plugins, in order.
    pub fn plugins(&self) -> &[Plugin] {
        &self.plugins
    }

    /// Runs the chain for one statement. `known_database` says whether a `[databases]` entry
    /// exists (a route to an unknown one is a plugin error).
    pub async fn decide(&self, request: &Request<'_>, known_database: impl Fn(&str) -> bool) -> Decision {
        let mut route = None;
        // Built once per statement; only `sql` changes along the chain.
        let mut ctx = wit::Context {
            user: request.user.to_owned(),
            database: request.database.to_owned(),
            application_name: request.application_name.to_owned(),
            client_addr: request.client_addr.clone(),
            session_id: request.session_id,
            sql: request.sql.to_owned(),
            in_transaction: request.in_transaction,
            message: match request.parse {
                None => wit::Message::SimpleQuery,
                Some(name) => wit::Message::Parse(name.to_owned()),
            },
        };
        let mut rewritten = false;
        for plugin in &self.plugins {
            let verdict = plugin.decide(&ctx).await.and_then(|v| validate(v, &known_database));
            let (new_route, new_sql) = match verdict {
                Ok(Checked::Run(r, s)) => {
                    plugin.stats.verdict(match (&r, &s) {
                        (None, None) => VerdictKind::Pass,
                        (Some(_), None) => VerdictKind::Route,
                        (None, Some(_)) => VerdictKind::Rewrite,
                        (Some(_), Some(_)) => VerdictKind::RouteAndRewrite,
                    });
                    (r, s)
                }
                Ok(Checked::Reject(error)) => {
                    plugin.stats.rejects.fetch_add(1, Relaxed);
                    plugin.stats.verdict(VerdictKind::Reject);
                    return Decision::Reject(error);
                }
                Err(e) => {
                    // The call's own failures were counted by the plugin; a verdict refused
                    // here is counted now.
                    if matches!(e, PluginError::InvalidVerdict(_)) {
                        plugin.stats.error(ErrorCause::InvalidVerdict);
                    }
                    tracing::warn!(plugin = %plugin.settings.name, error = %e, on_error = ?plugin.settings.on_error, "plugin error");
                    match plugin.settings.on_error {
                        OnError::Pass => continue,
                        OnError::Reject => {
                            return Decision::Reject(ErrorResponse::error(
                                "58000",
                                format!("policy plugin \"{}\" failed: {e}", plugin.settings.name),
                            ))
                        }
                    }
                }
            };
            if route.is_none() {
                route = new_route;
            }
            if let Some(sql) = new_sql {
                ctx.sql = sql;
                rewritten = true;
            }
        }
        Decision::Run { route, sql: rewritten.then_some(ctx.sql) }
    }
}

#[cfg(feature = "plugin-host")]
enum Checked {
    Run(Option<Route>, Option<String>),
    Reject(ErrorResponse),
}

/// Never trust what a guest returns.
#[cfg(feature = "plugin-host")]
fn validate(verdict: wit::Verdict, known_database: &impl Fn(&str) -> bool) -> Result<Checked, PluginError> {
    let route = |r: wit::Route| match r {
        wit::Route::Database(name) if known_database(&name) => Ok(Route::Database(name)),
        wit::Route::Database(name) => Err(PluginError::InvalidVerdict(format!("route to unknown database \"{name}\""))),
        wit::Route::Primary => Ok(Route::Primary),
        wit::Route::Replica => Ok(Route::Replica),
    };
    let sql = |s: String| {
        if s.contains('\0') {
            Err(PluginError::InvalidVerdict("rewritten SQL contains a NUL character".into()))
        } else {
            Ok(s)
        }
    };
    Ok(match verdict {
        wit::Verdict::Pass => Checked::Run(None, None),
        wit::Verdict::Route(r) => Checked::Run(Some(route(r)?), None),
        wit::Verdict::Rewrite(s) => Checked::Run(None, Some(sql(s)?)),
        wit::Verdict::RouteAndRewrite(rr) => Checked::Run(Some(route(rr.route)?), Some(sql(rr.sql)?)),
        wit::Verdict::Reject(r) => {
            let valid =
                r.sqlstate.len() == 5 && r.sqlstate.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
            if !valid {
                return Err(PluginError::InvalidVerdict(format!("invalid SQLSTATE {:?}", r.sqlstate)));
            }
            let mut error = ErrorResponse::error(&r.sqlstate, r.message.replace('\0', ""));
            if let Some(detail) = r.detail {
                error = error.with_detail(detail.replace('\0', ""));
            }
            if let Some(hint) = r.hint {
                error = error.with_hint(hint.replace('\0', ""));
            }
            Checked::Reject(error)
        }
    })
}
