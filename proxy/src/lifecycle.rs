//! The plugin lifecycle: where a `[[plugins]]` set comes from (files, OCI artifacts), loading
//! it away from the threads that serve clients, and the record of failed loads the admin
//! console shows. The watcher that reloads when a `watch = true` plugin file changes lives
//! with the reload, in `shared`.
//!
//! Loading is all or nothing and never touches the set in force: the shared state switches
//! to the new chain only once every plugin has loaded.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use thiserror::Error;

use crate::config::Config;
use crate::oci::{self, OciError, Reference};
use crate::policy::{Chain, Loadable, Origin, PluginSettings, PolicyError};

/// Why a plugin set could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// A plugin's file could not be read.
    #[error("plugin \"{plugin}\": cannot read {}: {error}", path.display())]
    Read {
        /// Plugin name.
        plugin: String,
        /// Its file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A plugin's OCI artifact could not be fetched, or did not match its digest.
    #[error("plugin \"{plugin}\": {error}")]
    Fetch {
        /// Plugin name.
        plugin: String,
        /// Why.
        error: OciError,
    },
    /// A plugin did not compile, link or initialise.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A plugin whose component was read did not compile, link or initialise: the error,
    /// with the component's digest.
    #[error("{error}")]
    Component {
        /// Why.
        error: PolicyError,
        /// `sha256:` of the component.
        digest: String,
    },
}

impl LoadError {
    /// The plugin that failed, when one did.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            LoadError::Read { plugin, .. } | LoadError::Fetch { plugin, .. } => Some(plugin),
            LoadError::Policy(PolicyError::Load { plugin, .. }) => Some(plugin),
            LoadError::Component { error: PolicyError::Load { plugin, .. }, .. } => Some(plugin),
            LoadError::Policy(PolicyError::Engine(_)) | LoadError::Component { error: PolicyError::Engine(_), .. } => {
                None
            }
        }
    }

    /// The digest of the component that failed, when it was read.
    pub fn digest(&self) -> Option<&str> {
        match self {
            LoadError::Component { digest, .. } => Some(digest),
            _ => None,
        }
    }
}

/// The `source` column of a plugin: its `oci://` reference or its file.
pub fn source_of(config: &Config, settings: &PluginSettings) -> String {
    match (&settings.source, &settings.path) {
        (Some(source), _) => source.clone(),
        (None, Some(path)) => config.dir().join(path).display().to_string(),
        (None, None) => String::new(),
    }
}

/// Loads `config`'s plugin chain: reads or fetches every component, compiles it and runs its
/// `init`. The first failure stops the load.
pub async fn load(config: &Config) -> Result<Chain, LoadError> {
    let mut loadables = Vec::with_capacity(config.plugins.len());
    for settings in &config.plugins {
        loadables.push(loadable(config, settings).await?);
    }
    let databases: Vec<String> = config.databases.keys().cloned().collect();
    let digests: Vec<(String, String)> =
        loadables.iter().map(|l| (l.settings.name.clone(), l.origin.digest.clone())).collect();
    Chain::load(loadables, &databases, config.plugin_cache_dir().as_deref()).await.map_err(|error| {
        let digest = match &error {
            PolicyError::Load { plugin, .. } => digests.iter().find(|(name, _)| name == plugin).map(|(_, d)| d.clone()),
            PolicyError::Engine(_) => None,
        };
        match digest {
            Some(digest) => LoadError::Component { error, digest },
            None => LoadError::Policy(error),
        }
    })
}

/// [`load`] on a blocking-pool thread: compiling a component takes a while and must not hold
/// up a thread that serves clients (a reload under load).
pub async fn load_off_the_serving_threads(config: Arc<Config>) -> Result<Chain, LoadError> {
    let runtime = tokio::runtime::Handle::current();
    match tokio::task::spawn_blocking(move || runtime.block_on(load(&config))).await {
        Ok(result) => result,
        Err(e) => Err(LoadError::Policy(PolicyError::Engine(format!("plugin loading task failed: {e}")))),
    }
}

/// One `[[plugins]]` entry's component, read or fetched, with its origin.
pub async fn loadable(config: &Config, settings: &PluginSettings) -> Result<Loadable, LoadError> {
    let plugin = settings.name.clone();
    let wasm = match (&settings.source, &settings.path) {
        (Some(source), _) => {
            let fetch_error = |error| LoadError::Fetch { plugin: plugin.clone(), error };
            let reference = Reference::parse(source).map_err(fetch_error)?;
            let access = oci::Access::for_registry(&config.oci, &reference.registry);
            let cache = oci::Cache::new(config.dir().join(&config.oci.cache_dir));
            let artifact = oci::fetch(&reference, &access, Some(&cache)).await.map_err(fetch_error)?;
            tracing::info!(
                plugin,
                source,
                manifest = artifact.manifest_digest,
                from_cache = artifact.from_cache,
                "plugin artifact fetched"
            );
            artifact.wasm
        }
        (None, Some(path)) => {
            let path = config.dir().join(path);
            tokio::fs::read(&path).await.map_err(|error| LoadError::Read { plugin: plugin.clone(), path, error })?
        }
        // Config validation requires one of them.
        (None, None) => {
            return Err(LoadError::Policy(PolicyError::Load { plugin, reason: "neither path nor source".into() }))
        }
    };
    let origin =
        Origin { source: source_of(config, settings), digest: oci::sha256_digest(&wasm), loaded_at: SystemTime::now() };
    Ok(Loadable { settings: settings.clone(), origin, wasm })
}

/// The last failed load of a plugin.
#[derive(Debug, Clone)]
pub struct Failure {
    /// When.
    pub at: SystemTime,
    /// Its source, as configured in the file that failed to load.
    pub source: String,
    /// The error.
    pub error: String,
}

/// Failed loads by plugin name, since that plugin last loaded.
#[derive(Debug, Default)]
pub struct Failures(Mutex<BTreeMap<String, Failure>>);

impl Failures {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Failure>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a failed load of `config`'s plugins (nothing when no plugin is to blame).
    pub fn record(&self, config: &Config, error: &LoadError) {
        let Some(name) = error.plugin() else { return };
        let source = config.plugins.iter().find(|p| p.name == name).map(|p| source_of(config, p)).unwrap_or_default();
        // On one line (wasmtime's messages can span several), as a console column should be.
        let error = error.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        self.lock().insert(name.to_owned(), Failure { at: SystemTime::now(), source, error });
    }

    /// A whole set loaded: every earlier failure is over.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The failures, by plugin name.
    pub fn snapshot(&self) -> BTreeMap<String, Failure> {
        self.lock().clone()
    }
}
