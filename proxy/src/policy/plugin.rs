//! One loaded plugin: its compiled component, its warm instances and its limits.
//!
//! The component is compiled once at load (or read from the compiled-component cache, see
//! `super::cache`); instances come from a pre-instantiated
//! `PolicyPre`, live in the chain's pooling allocator (at most `max_instances` of them, see
//! `super::engine`) and are reused between calls, each keeping its fiber stack. Every call gets
//! fresh fuel, a wall-clock deadline (epochs) and runs under the store's memory cap; an instance
//! that trapped is thrown away, never reused.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::pgvane::policy::host::{self, Level};
use super::bindings::pgvane::policy::types as wit;
use super::bindings::{Policy, PolicyPre};
use super::cache::{self, CompiledCache};
use super::{ErrorCause, Origin, PluginError, PluginSettings, PolicyError, VerdictKind, EPOCH_TICK};
use crate::metrics::{Histogram, FUEL_BUCKETS, PLUGIN_LATENCY_BUCKETS_US};

/// Instantiation and `init` get this many times a call's fuel…
const INIT_FUEL_FACTOR: u64 = 50;
/// …and this wall-clock deadline.
const INIT_TIMEOUT_MS: u64 = 1000;

/// What a plugin's store holds: WASI with nothing granted, the memory cap, and what the host
/// imports need.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limits,
    plugin: Arc<str>,
    databases: Arc<[String]>,
    log: Arc<LogLimiter>,
}

/// The plugin's `host.log` records allowed per second (`log_records_per_second`), shared by
/// all its instances; records over it are dropped and counted.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u64,
    /// The second (since the epoch) `in_window` counts.
    window: AtomicU64,
    in_window: AtomicU64,
    /// Records dropped since the plugin loaded.
    pub dropped: AtomicU64,
}

impl LogLimiter {
    /// A limiter of `per_second` records a second.
    pub fn new(per_second: u64) -> Self {
        LogLimiter { per_second, window: AtomicU64::new(0), in_window: AtomicU64::new(0), dropped: AtomicU64::new(0) }
    }

    /// True when a record at second `now` may be logged; counts a dropped one otherwise.
    /// Approximate at a second's boundary under contention, which is fine for a log limit.
    pub fn admit(&self, now: u64) -> bool {
        if self.window.swap(now, Relaxed) != now {
            self.in_window.store(0, Relaxed);
        }
        if self.in_window.fetch_add(1, Relaxed) < self.per_second {
            true
        } else {
            self.dropped.fetch_add(1, Relaxed);
            false
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wit::Host for PluginState {}

/// The store's memory cap (`memory_limit_mb`), and the largest size a linear memory of the
/// instance has been allowed to reach (its initial size included), for
/// `PluginStats::memory_peak_bytes`.
struct Limits {
    cap: StoreLimits,
    peak_memory: usize,
    /// A memory growth was refused since the call was armed: a trap then is the memory cap's.
    refused_growth: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.cap.memory_growing(current, desired, maximum);
        if !matches!(allowed, Ok(true)) {
            self.refused_growth = true;
        }
        let allowed = allowed?;
        if allowed {
            self.peak_memory = self.peak_memory.max(desired);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.cap.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.cap.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.cap.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.cap.instances()
    }

    fn tables(&self) -> usize {
        self.cap.tables()
    }

    fn memories(&self) -> usize {
        self.cap.memories()
    }
}

impl host::Host for PluginState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if !self.log.admit(now) {
            return;
        }
        let message: String = message.chars().take(1024).collect();
        let fields = fields.iter().take(16).map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join(" ");
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, %fields, "{message}"),
            Level::Debug => tracing::debug!(plugin, %fields, "{message}"),
            Level::Info => tracing::info!(plugin, %fields, "{message}"),
            Level::Warn => tracing::warn!(plugin, %fields, "{message}"),
            Level::Error => tracing::error!(plugin, %fields, "{message}"),
        }
    }

    fn databases(&mut self) -> Vec<String> {
        self.databases.to_vec()
    }
}

/// A ready instance.
struct Warm {
    store: Store<PluginState>,
    policy: Policy,
}

/// Counters for SHOW PLUGINS and `/metrics`, since the plugin loaded.
#[derive(Debug)]
pub struct PluginStats {
    /// `decide` calls.
    pub calls: AtomicU64,
    /// Verdicts that rejected.
    pub rejects: AtomicU64,
    /// Traps, limits hit and invalid verdicts.
    pub errors: AtomicU64,
    /// Fuel consumed by `decide` calls.
    pub fuel_used: AtomicU64,
    /// The largest linear memory any instance has had, in bytes (at instantiation, `init` or a
    /// call): what `memory_limit_mb` must leave room for.
    pub memory_peak_bytes: AtomicU64,
    /// Verdicts, by [`VerdictKind`].
    verdicts: [AtomicU64; VerdictKind::ALL.len()],
    /// Failed calls, by [`ErrorCause`].
    causes: [AtomicU64; ErrorCause::ALL.len()],
    /// How long `decide` took, waits for an instance included (µs).
    pub latency: Histogram,
    /// Fuel burnt per `decide` call.
    pub fuel: Histogram,
    /// Calls that found every instance busy and waited for one.
    pub instance_waits: AtomicU64,
    /// `host.log` records: the limiter and its count of dropped ones.
    pub log: Arc<LogLimiter>,
}

impl PluginStats {
    fn new(log_records_per_second: u64) -> Self {
        PluginStats {
            calls: AtomicU64::new(0),
            rejects: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            fuel_used: AtomicU64::new(0),
            memory_peak_bytes: AtomicU64::new(0),
            verdicts: Default::default(),
            causes: Default::default(),
            latency: Histogram::new(PLUGIN_LATENCY_BUCKETS_US),
            fuel: Histogram::new(FUEL_BUCKETS),
            instance_waits: AtomicU64::new(0),
            log: Arc::new(LogLimiter::new(log_records_per_second)),
        }
    }

    /// Counts a verdict the chain accepted.
    pub fn verdict(&self, kind: VerdictKind) {
        if let Some(c) = self.verdicts.get(kind as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Verdicts of `kind`.
    pub fn verdicts(&self, kind: VerdictKind) -> u64 {
        self.verdicts.get(kind as usize).map_or(0, |c| c.load(Relaxed))
    }

    /// Counts a failed call (the `errors` total too).
    pub fn error(&self, cause: ErrorCause) {
        self.errors.fetch_add(1, Relaxed);
        if let Some(c) = self.causes.get(cause as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Failed calls of `cause`.
    pub fn errors_by(&self, cause: ErrorCause) -> u64 {
        self.causes.get(cause as usize).map_or(0, |c| c.load(Relaxed))
    }
}

/// A loaded plugin.
pub struct Plugin {
    /// Its settings from pgvane.toml.
    pub settings: PluginSettings,
    /// Counters.
    pub stats: PluginStats,
    /// Where its component came from.
    pub origin: Origin,
    /// Its config as JSON, handed to `init`.
    config_json: String,
    engine: Engine,
    pre: PolicyPre<PluginState>,
    databases: Arc<[String]>,
    warm: Mutex<Vec<Warm>>,
    /// One permit per instance the plugin may have (`max_instances`): a call holds one, so
    /// warm plus busy instances never outnumber the pool slots reserved for the plugin.
    permits: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.settings.name).finish_non_exhaustive()
    }
}

impl Plugin {
    /// Compiles `wasm` (through `cache` when there is one), links it against the host, and makes
    /// its `max_instances` instances, each with `init` run on the config (which refuses a bad one).
    pub async fn load(
        engine: &Engine,
        cache: Option<&CompiledCache>,
        settings: PluginSettings,
        origin: Origin,
        wasm: &[u8],
        databases: Arc<[String]>,
    ) -> Result<Plugin, PolicyError> {
        let name = settings.name.clone();
        let component = cache::compile(engine, cache, &name, wasm).map_err(|e| not_valid(&name, e))?;
        let pre = link(engine, &name, &component)?;
        let config_json = serde_json::to_string(&settings.config).map_err(|e| PolicyError::Load {
            plugin: name.clone(),
            reason: format!("config cannot be turned into JSON: {e}"),
        })?;
        let log_records_per_second = settings.log_records_per_second;
        let settings_instances = usize::try_from(settings.max_instances).unwrap_or(usize::MAX).max(1);
        let plugin = Plugin {
            settings,
            stats: PluginStats::new(log_records_per_second),
            origin,
            config_json,
            engine: engine.clone(),
            pre,
            databases,
            warm: Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(settings_instances),
        };
        // Every instance the plugin may use is made now, off the statements' path: a call never
        // waits for an instantiation and `init` (milliseconds for a Python or JavaScript plugin).
        for _ in 0..settings_instances {
            let warm = plugin
                .instantiate()
                .await
                .map_err(|e| PolicyError::Load { plugin: name.clone(), reason: e.to_string() })?;
            plugin.warm().push(warm);
        }
        Ok(plugin)
    }

    /// Instances ready for a call right now (not busy in one).
    pub fn warm_instances(&self) -> usize {
        self.warm().len()
    }

    fn warm(&self) -> MutexGuard<'_, Vec<Warm>> {
        self.warm.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh instance with `init` done, under the plugin's limits.
    async fn instantiate(&self) -> Result<Warm, PluginError> {
        let cap = StoreLimitsBuilder::new()
            .memory_size(self.settings.memory_limit_mb.saturating_mul(1024 * 1024))
            .instances(16)
            .trap_on_grow_failure(true)
            .build();
        let limits = Limits { cap, peak_memory: 0, refused_growth: false };
        let state = PluginState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits,
            plugin: Arc::from(self.settings.name.as_str()),
            databases: self.databases.clone(),
            log: self.stats.log.clone(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        // Instantiation and init (compiling patterns, reading config) get a budget of their
        // own: they run once per instance, off the statement's path, and cost more than a call.
        self.arm(&mut store, self.settings.fuel.saturating_mul(INIT_FUEL_FACTOR), INIT_TIMEOUT_MS)?;
        let policy = self.pre.instantiate_async(&mut store).await.map_err(|e| PluginError::Trap(format!("{e:#}")))?;
        policy
            .call_init(&mut store, &self.config_json)
            .await
            .map_err(|e| PluginError::Trap(format!("{e:#}")))?
            .map_err(PluginError::InitRefused)?;
        self.note_memory(&store);
        Ok(Warm { store, policy })
    }

    fn note_memory(&self, store: &Store<PluginState>) {
        let peak = u64::try_from(store.data().limits.peak_memory).unwrap_or(u64::MAX);
        self.stats.memory_peak_bytes.fetch_max(peak, Relaxed);
    }

    /// Fresh fuel and deadline for one call.
    fn arm(&self, store: &mut Store<PluginState>, fuel: u64, timeout_ms: u64) -> Result<(), PluginError> {
        store.set_fuel(fuel).map_err(|e| PluginError::Trap(format!("{e:#}")))?;
        let ticks = timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64).max(1);
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        store.data_mut().limits.refused_growth = false;
        Ok(())
    }

    /// Calls `decide` on a warm instance (a new one if none is free).
    /// A failed call is counted by its cause; a verdict is counted by the chain, which may
    /// still find it invalid.
    pub async fn decide(&self, ctx: &wit::Context) -> Result<wit::Verdict, PluginError> {
        self.stats.calls.fetch_add(1, Relaxed);
        let started = Instant::now();
        let result = self.decide_inner(ctx).await;
        self.stats.latency.observe_duration(started.elapsed());
        result.map_err(|(cause, e)| {
            self.stats.error(cause);
            e
        })
    }

    async fn decide_inner(&self, ctx: &wit::Context) -> Result<wit::Verdict, (ErrorCause, PluginError)> {
        let trap = |e: PluginError| (ErrorCause::Trap, e);
        let _permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                self.stats.instance_waits.fetch_add(1, Relaxed);
                // Never closed; the error cannot happen but is not a reason to panic.
                self.permits
                    .acquire()
                    .await
                    .map_err(|_| trap(PluginError::Trap("the plugin is shutting down".to_owned())))?
            }
        };
        let warm = self.warm().pop();
        let mut warm = match warm {
            Some(warm) => warm,
            None => self.instantiate().await.map_err(trap)?,
        };
        let (fuel, timeout_ms) = self.settings.allowance(ctx.sql.len());
        self.arm(&mut warm.store, fuel, timeout_ms).map_err(trap)?;
        let started = Instant::now();
        let outcome = warm.policy.call_decide(&mut warm.store, ctx).await;
        let fuel_left = warm.store.get_fuel().unwrap_or(0);
        let burnt = fuel.saturating_sub(fuel_left);
        self.stats.fuel_used.fetch_add(burnt, Relaxed);
        self.stats.fuel.observe(burnt);
        self.note_memory(&warm.store);
        match outcome {
            Ok(verdict) => {
                tracing::trace!(plugin = %self.settings.name, elapsed = ?started.elapsed(), fuel = fuel - fuel_left, "plugin call");
                self.warm().push(warm);
                Ok(verdict)
            }
            // The instance is dropped: after a trap its state cannot be trusted. Its
            // replacement is made now, by the call that trapped, so that no later statement
            // waits for one (a failed replacement is retried by the next call without a warm
            // instance).
            Err(e) => {
                let refused_growth = warm.store.data().limits.refused_growth;
                let (cause, reason) = trap_reason(&e, fuel_left, refused_growth);
                drop(warm);
                match self.instantiate().await {
                    Ok(fresh) => self.warm().push(fresh),
                    Err(e) => {
                        tracing::warn!(plugin = %self.settings.name, error = %e, "could not replace a trapped instance")
                    }
                }
                Err((cause, PluginError::Trap(reason)))
            }
        }
    }
}

/// The error of a component that does not compile.
fn not_valid(name: &str, e: wasmtime::Error) -> PolicyError {
    PolicyError::Load { plugin: name.to_owned(), reason: format!("not a valid component: {e:#}") }
}

/// Links `component` against the host: it must be a component of the `pgvane:policy` world.
fn link(engine: &Engine, name: &str, component: &Component) -> Result<PolicyPre<PluginState>, PolicyError> {
    let failed = |what: &str, e: wasmtime::Error| PolicyError::Load {
        plugin: name.to_owned(),
        reason: format!("{what}: {e:#}"),
    };
    let mut linker: Linker<PluginState> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| failed("linking WASI", e))?;
    Policy::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state).map_err(|e| failed("linking", e))?;
    let pre = linker.instantiate_pre(component).map_err(|e| failed("it does not fit the pgvane:policy world", e))?;
    PolicyPre::new(pre).map_err(|e| failed("it does not export the pgvane:policy world", e))
}

/// Checks that `wasm` compiles and fits the `pgvane:policy` world, without running it
/// (`pgvane plugin inspect`).
pub fn check_component(wasm: &[u8]) -> Result<(), PolicyError> {
    let engine = super::engine(&[])?;
    let component = Component::from_binary(&engine, wasm).map_err(|e| not_valid("inspected", e))?;
    link(&engine, "inspected", &component).map(drop)
}

/// A trap's cause, and in words an operator can act on.
fn trap_reason(e: &wasmtime::Error, fuel_left: u64, refused_growth: bool) -> (ErrorCause, String) {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => (ErrorCause::Fuel, "ran out of fuel".to_owned()),
        Some(wasmtime::Trap::Interrupt) => (ErrorCause::Timeout, "exceeded its time limit (timeout_ms)".to_owned()),
        Some(trap) if fuel_left == 0 => (ErrorCause::Fuel, format!("ran out of fuel ({trap})")),
        _ if refused_growth => (ErrorCause::Memory, format!("exceeded its memory limit (memory_limit_mb): {e:#}")),
        _ => (ErrorCause::Trap, format!("trapped: {e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::LogLimiter;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn log_records_over_the_rate_are_dropped_and_counted() {
        let limiter = LogLimiter::new(2);
        let admitted = (0..5).filter(|_| limiter.admit(100)).count();
        assert_eq!((admitted, limiter.dropped.load(Relaxed)), (2, 3));
        assert!(limiter.admit(101), "a new second, a new allowance");
        assert_eq!(limiter.dropped.load(Relaxed), 3);
    }
}
