//! The `pgvane` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pgvane::config::{Config, LogFormat};
use pgvane::lifecycle::LoadError;
use pgvane::listener::Listener;
use pgvane::shared::{ReloadError, Shared};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// A PostgreSQL proxy whose routing and rewrite decisions are made by sandboxed WebAssembly plugins.
///
/// Without a subcommand, runs the proxy with the given configuration.
#[derive(Debug, Parser)]
#[command(name = "pgvane", version, about, long_about)]
struct Cli {
    /// The configuration file (TOML; every key is described in docs/config.md).
    #[arg(short, long, default_value = "pgvane.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration file (the auth file it names, and its plugins: compiled and
    /// initialised with their config) and exit: 0 when valid,
    /// 1 with a message naming the file, the key and the problem otherwise.
    Check {
        /// The configuration file [default: the one given before `check`, pgvane.toml].
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Publish, fetch and examine plugins as Wasm OCI artifacts (docs/plugins-oci.md).
    ///
    /// Registry credentials come from PGVANE_REGISTRY_USERNAME and PGVANE_REGISTRY_PASSWORD.
    /// Registries on this machine (loopback) are spoken to in plain HTTP, others in HTTPS
    /// unless --insecure.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Publish a component as <registry>/<repository>:<tag> and print the manifest digest
    /// (pin it in pgvane.toml: source = "oci://<registry>/<repository>:<tag>@<digest>").
    Push {
        /// The component (.wasm).
        file: PathBuf,
        /// Where: <registry>/<repository>:<tag> (oci:// optional; the registry host is required).
        reference: String,
        /// Plain HTTP to a registry that is not on this machine.
        #[arg(long)]
        insecure: bool,
    },
    /// Fetch a component (checking its digests) into a file.
    Pull {
        /// <registry>/<repository>:<tag>[@sha256:<digest>] (oci:// optional).
        reference: String,
        /// The file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Plain HTTP to a registry that is not on this machine.
        #[arg(long)]
        insecure: bool,
    },
    /// Show a component's WIT world (imports, exports, whether pgvane can load it), size and
    /// digest; for a reference, also its manifest.
    Inspect {
        /// A .wasm file, or a reference as for pull.
        target: String,
        /// Plain HTTP to a registry that is not on this machine.
        #[arg(long)]
        insecure: bool,
    },
    /// Compile components into the compiled-component cache (`plugin_cache_dir` of the
    /// configuration, docs/plugins.md), so that the next start, `check` or RELOAD reads them
    /// instead of compiling: run it when building a container image. Compiled for the engine the
    /// configuration's chain gets (its settings change the code). Prints each component's entry.
    Compile {
        /// Components (.wasm) [default: every [[plugins]] entry of the configuration, files and
        /// oci:// sources alike].
        files: Vec<PathBuf>,
        /// The configuration file [default: the one given before `plugin`, pgvane.toml].
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run a plugin offline over a file of queries (one per line, or a PostgreSQL log) and print
    /// its verdict on each (pass, route, rewrite, reject). With --expect, compare them with an
    /// expectation file (this command's saved output) and exit 1 when any differs. The input and
    /// output formats are described in docs/plugins.md ("Testing a plugin offline").
    Test(TestArgs),
}

#[derive(Debug, clap::Args)]
struct TestArgs {
    /// The component: a .wasm file, or a reference as for pull.
    plugin: String,
    /// The plugin's configuration, as `[plugins.config]` would give it: JSON text, or a file
    /// holding JSON.
    #[arg(long, default_value = "{}")]
    config: String,
    /// The queries: one per line (`[user@database] SQL`, `-- pgvane: key=value` lines for
    /// what follows), or a PostgreSQL log with `statement:` / `execute` lines.
    #[arg(long)]
    queries: PathBuf,
    /// Expected verdicts: `<n><TAB><verdict>` lines, as this command prints them.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// The `[databases]` entries the plugin sees (host.databases()) and may route to,
    /// comma-separated. Without it any name is accepted and the list is empty.
    #[arg(long, value_delimiter = ',')]
    databases: Vec<String>,
    /// The user of queries that do not name one.
    #[arg(long, default_value = "postgres")]
    user: String,
    /// The database of queries that do not name one.
    #[arg(long, default_value = "postgres")]
    database: String,
    /// Fuel per call, as the `fuel` key [default: the key's default].
    #[arg(long)]
    fuel: Option<u64>,
    /// Memory per instance, as `memory_limit_mb` [default: the key's default].
    #[arg(long)]
    memory_limit_mb: Option<usize>,
    /// Wall-clock deadline per call, as `timeout_ms` [default: 1000, generous offline].
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Plain HTTP to a registry that is not on this machine.
    #[arg(long)]
    insecure: bool,
}

/// `pgvane plugin test`: `Ok(false)` when a verdict differs from its expectation.
fn plugin_test(args: TestArgs) -> anyhow::Result<bool> {
    use pgvane::plugin_test::{escape, parse_expectations, parse_queries, verdict, Sender};
    use pgvane::policy::{Chain, Loadable, OnError, Origin, PluginSettings};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let path = std::path::Path::new(&args.plugin);
    let wasm = if path.exists() {
        pgvane::oci::read_file(path)?
    } else {
        let reference = pgvane::oci::Reference::parse(&args.plugin)
            .with_context(|| format!("{} is neither a file nor an OCI reference", args.plugin))?;
        let access = pgvane::oci::Access { insecure: args.insecure, ..pgvane::oci::Access::from_env() };
        runtime.block_on(pgvane::oci::pull(&reference, &access))?.wasm
    };
    let config_json = match args.config.trim_start().starts_with('{') {
        true => args.config.clone(),
        false => std::fs::read_to_string(&args.config).with_context(|| format!("cannot read {}", args.config))?,
    };
    let config: toml::Table = serde_json::from_str(&config_json).context("--config is not a JSON object")?;
    // The config key defaults, through the same deserializer as pgvane.toml.
    let mut settings: PluginSettings = toml::from_str("name = \"plugin\"").context("plugin defaults")?;
    settings.name = path.file_stem().map_or("plugin".into(), |s| s.to_string_lossy().into_owned());
    settings.path = Some(path.to_path_buf());
    settings.config = config;
    settings.on_error = OnError::Reject; // an error shows as a verdict instead of vanishing
    settings.max_instances = 1;
    settings.timeout_ms = args.timeout_ms;
    settings.fuel = args.fuel.unwrap_or(settings.fuel);
    settings.memory_limit_mb = args.memory_limit_mb.unwrap_or(settings.memory_limit_mb);
    let origin = Origin {
        source: args.plugin.clone(),
        digest: pgvane::oci::sha256_digest(&wasm),
        loaded_at: std::time::SystemTime::now(),
    };
    let chain = runtime
        .block_on(Chain::load(vec![Loadable { settings, origin, wasm }], &args.databases, None))
        .context("the plugin did not load")?;

    let text =
        std::fs::read_to_string(&args.queries).with_context(|| format!("cannot read {}", args.queries.display()))?;
    let defaults = Sender { user: args.user.clone(), database: args.database.clone(), ..Sender::default() };
    let queries = parse_queries(&args.queries.display().to_string(), &text, &defaults).map_err(anyhow::Error::msg)?;
    let expected = match &args.expect {
        Some(file) => Some(
            parse_expectations(
                &std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?,
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
        ),
        None => None,
    };
    let known = |name: &str| args.databases.is_empty() || args.databases.iter().any(|d| d == name);
    let mut differ = Vec::new();
    for (i, query) in queries.iter().enumerate() {
        let n = i + 1;
        let decision = runtime.block_on(chain.decide(&query.request(n as u32), known));
        let got = verdict(&decision);
        println!("{n}\t{got}\t{}", escape(&query.sql));
        if let Some(expected) = &expected {
            match expected.get(&n) {
                Some(want) if *want == got => {}
                want => differ.push(format!(
                    "{n} ({}): expected {}, got {got}",
                    query.at,
                    want.map_or("no expectation".to_owned(), |w| format!("{w:?}"))
                )),
            }
        }
    }
    if let Some(expected) = &expected {
        for n in expected.keys().filter(|n| **n == 0 || **n > queries.len()) {
            differ.push(format!("{n}: expected a verdict, but there are {} queries", queries.len()));
        }
        for line in &differ {
            eprintln!("differs: {line}");
        }
        eprintln!(
            "{} queries, {} verdict(s) differ from {}",
            queries.len(),
            differ.len(),
            args.expect.as_ref().map_or(String::new(), |p| p.display().to_string())
        );
    }
    Ok(differ.is_empty())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check { config: path }) => match check(path.as_ref().unwrap_or(&cli.config)) {
            Ok((chain, config)) => {
                println!(
                    "{}: configuration is valid ({} database(s), {} plugin(s))",
                    path.as_ref().unwrap_or(&cli.config).display(),
                    config.databases.len(),
                    chain.plugins().len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pgvane: invalid configuration: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Plugin(command)) => match plugin_command(command, &cli.config) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE, // a plugin test with differing verdicts
            Err(e) => {
                eprintln!("pgvane: {e:#}");
                ExitCode::FAILURE
            }
        },
        None => match run(&cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pgvane: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `pgvane plugin …`: `Ok(false)` when `plugin test` found verdicts that differ.
/// `default_config`: the `--config` given before `plugin`.
fn plugin_command(command: PluginCommand, default_config: &std::path::Path) -> anyhow::Result<bool> {
    use pgvane::oci::{self, Access, Reference};
    let access = |insecure: bool| Access { insecure, ..Access::from_env() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match command {
        PluginCommand::Test(args) => return plugin_test(args),
        PluginCommand::Compile { files, config } => {
            plugin_compile(&runtime, config.as_deref().unwrap_or(default_config), &files)?
        }
        PluginCommand::Push { file, reference, insecure } => {
            let reference = Reference::parse(&reference)?;
            let wasm = oci::read_file(&file)?;
            let title = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let digest = runtime.block_on(oci::push(wasm, &title, &reference, &access(insecure)))?;
            eprintln!("pushed {} to {reference}", file.display());
            println!("{digest}");
        }
        PluginCommand::Pull { reference, output, insecure } => {
            let reference = Reference::parse(&reference)?;
            let artifact = runtime.block_on(oci::pull(&reference, &access(insecure)))?;
            std::fs::write(&output, &artifact.wasm).with_context(|| format!("cannot write {}", output.display()))?;
            eprintln!(
                "pulled {} ({} bytes) into {}",
                reference.pinned(&artifact.manifest_digest),
                artifact.wasm.len(),
                output.display()
            );
            println!("{}", artifact.manifest_digest);
        }
        PluginCommand::Inspect { target, insecure } => {
            let path = std::path::Path::new(&target);
            let wasm = if path.exists() {
                oci::read_file(path)?
            } else {
                let reference = Reference::parse(&target)
                    .with_context(|| format!("{target} is neither a file nor an OCI reference"))?;
                let artifact = runtime.block_on(oci::pull(&reference, &access(insecure)))?;
                println!("reference: {}", reference.pinned(&artifact.manifest_digest));
                println!("manifest digest: {}", artifact.manifest_digest);
                println!("config media type: {}", artifact.manifest.config.media_type);
                for layer in &artifact.manifest.layers {
                    println!("layer: {} {} ({} bytes)", layer.media_type, layer.digest, layer.size);
                }
                artifact.wasm
            };
            let inspection =
                oci::Inspection::of(&wasm).map_err(|e| anyhow::anyhow!("not a WebAssembly component: {e}"))?;
            println!("size: {} bytes", inspection.size);
            println!("digest: {}", inspection.digest);
            match pgvane::policy::check_component(&wasm) {
                Ok(()) => println!("world: {} (pgvane can load it)", pgvane::policy::WORLD),
                Err(e) => println!("world: not {}: {e}", pgvane::policy::WORLD),
            }
            println!("imports:");
            for name in &inspection.imports {
                println!("  {name}");
            }
            println!("exports:");
            for name in &inspection.exports {
                println!("  {name}");
            }
        }
    }
    Ok(true)
}

/// `pgvane plugin compile`: each component (the configuration's plugins when `files` is empty)
/// compiled into `plugin_cache_dir` for the configuration's chain.
fn plugin_compile(runtime: &tokio::runtime::Runtime, path: &std::path::Path, files: &[PathBuf]) -> anyhow::Result<()> {
    use pgvane::policy::{Precompiled, Precompiler};
    init_logging(LogFormat::Text, "pgvane=warn");
    let config = Config::load(path)?;
    let dir = config.plugin_cache_dir().with_context(|| {
        format!("{}: set plugin_cache_dir in [pgvane]: it says where compiled components are kept", path.display())
    })?;
    anyhow::ensure!(
        !config.plugins.is_empty(),
        "{}: no [[plugins]]: components are compiled for the chain they will run in, whose settings change the code",
        path.display()
    );
    let precompiler = Precompiler::new(&config.plugins, &dir)?;
    let mut components = Vec::new();
    for file in files {
        components.push((file.display().to_string(), pgvane::oci::read_file(file)?));
    }
    if files.is_empty() {
        for settings in &config.plugins {
            let loadable = runtime.block_on(pgvane::lifecycle::loadable(&config, settings))?;
            components.push((format!("{} ({})", settings.name, loadable.origin.source), loadable.wasm));
        }
    }
    for (name, wasm) in components {
        let (entry, precompiled) = precompiler.compile(&name, &wasm)?;
        let what = match precompiled {
            Precompiled::AlreadyThere => "already compiled".to_owned(),
            Precompiled::Compiled => "compiled".to_owned(),
            Precompiled::Replaced(refused) => format!("compiled, replacing an entry that was refused ({refused})"),
        };
        println!("{name}: {what}: {}", entry.display());
    }
    Ok(())
}

/// Loads the configuration and its plugins, as a start would.
fn check(path: &std::path::Path) -> Result<(pgvane::policy::Chain, Config), ReloadError> {
    // Warnings (a plugin_cache_dir that is refused) on stderr; RUST_LOG=pgvane=info tells how
    // each plugin was compiled or read from the cache.
    init_logging(LogFormat::Text, "pgvane=warn");
    let config = Config::load(path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LoadError::Policy(pgvane::policy::PolicyError::Engine(e.to_string())))?;
    let chain = runtime.block_on(pgvane::lifecycle::load(&config))?;
    Ok((chain, config))
}

/// Logs to stderr as `log_format` asks: text, or one JSON object per line with the fields of
/// the current span (a session's conn, peer, user, database) and of its parents.
/// `default_filter` applies without RUST_LOG.
fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logger = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logger.init(),
        LogFormat::Json => logger.json().with_current_span(true).with_span_list(false).init(),
    }
}

fn run(config_path: &std::path::Path) -> anyhow::Result<()> {
    // The format is read before anything else can log; a file that does not load is
    // reported below, in text.
    let config = Config::load(config_path);
    init_logging(config.as_ref().map_or(LogFormat::Text, |c| c.settings.log_format), "pgvane=info");
    let config = config?;
    let runtime = match config.settings.worker_threads {
        // One thread: no work stealing and no wake-ups across threads, the least CPU per query.
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build()?,
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build()?,
    };
    runtime.block_on(async {
        let policy = pgvane::lifecycle::load(&config).await?;
        let metrics_addr = config.settings.metrics_addr.clone();
        let listener = Listener::bind(config, policy).await.context("cannot listen")?;
        let addr = listener.local_addr()?;
        let shared = listener.shared();
        if let Some(metrics_addr) = metrics_addr {
            let metrics = tokio::net::TcpListener::bind(&metrics_addr)
                .await
                .with_context(|| format!("cannot listen on metrics_addr {metrics_addr}"))?;
            let metrics_addr = metrics.local_addr()?;
            tokio::spawn(pgvane::admin::exporter::serve(metrics, shared.clone()));
            tracing::info!(%metrics_addr, "serving /metrics, /health and /ready");
            println!("pgvane metrics on {metrics_addr}");
        }
        tokio::spawn(pgvane::shared::stats_period(Arc::downgrade(&shared)));
        // Bound: clients connecting from now on are queued by the kernel until accepted.
        shared.metrics.set_listening(true);
        // Installed before the listening line, so a SIGHUP from then on reloads instead of
        // killing the process (the default action).
        let hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        tokio::spawn(reload_on_sighup(hangup, shared.clone()));
        let signals = pgvane::shutdown::Signals::install().context("cannot handle shutdown signals")?;
        tracing::info!(%addr, "pgvane listening");
        // A machine-readable line for scripts and the test harness.
        println!("pgvane listening on {addr}");
        if let Some(path) = listener.unix_socket_path() {
            tracing::info!(path = %path.display(), "pgvane listening on a unix-domain socket");
            println!("pgvane unix socket {}", path.display());
        }
        pgvane::shutdown::serve(listener, signals).await;
        tracing::info!("pgvane stopped");
        anyhow::Ok(())
    })
}

/// Reloads the configuration on every SIGHUP, like RELOAD on the admin console. A bad
/// file is logged and the configuration in force stays.
async fn reload_on_sighup(mut hangup: Signal, shared: Arc<Shared>) {
    while hangup.recv().await.is_some() {
        match shared.reload().await {
            Ok(outcome) => tracing::info!(
                added = ?outcome.added,
                removed = ?outcome.removed,
                changed = ?outcome.changed,
                reconnecting = ?outcome.reconnecting,
                restart_needed = ?outcome.restart_needed,
                "SIGHUP: configuration reloaded"
            ),
            Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded; the old one stays in force"),
        }
    }
}
