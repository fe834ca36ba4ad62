//! The compiled-component cache (`plugin_cache_dir`) as the chain uses it: opening the directory,
//! compiling through it, and saying in the log what it did.
//!
//! The cache itself lives in the `pgvane-compiled-cache` crate: loading a compiled artifact is
//! `unsafe` in wasmtime and this crate forbids `unsafe`, so that crate holds the one call, with
//! the checks that make it sound (its documentation lists them). Nothing here can reach around
//! them.

use std::path::Path;
use std::time::Instant;

pub use pgvane_compiled_cache::{CacheError, CompiledCache, Loaded, Outcome};
use wasmtime::component::Component;
use wasmtime::Engine;

/// The cache in `dir`, or none (logged at WARN) when the directory cannot be made or is refused
/// (writable by another user): a cache is a shortcut, never a reason not to load.
pub fn open(dir: &Path) -> Option<CompiledCache> {
    match CompiledCache::open(dir) {
        Ok(cache) => Some(cache),
        Err(error) => {
            tracing::warn!(%error, "plugin_cache_dir not used: plugins are compiled at every load");
            None
        }
    }
}

/// `wasm` compiled for `engine`: through `cache` when there is one (read from it, or compiled
/// and stored in it), compiled otherwise. Logs which, and how long it took.
pub fn compile(
    engine: &Engine,
    cache: Option<&CompiledCache>,
    plugin: &str,
    wasm: &[u8],
) -> wasmtime::Result<Component> {
    let started = Instant::now();
    let elapsed_ms = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let Some(cache) = cache else {
        let component = Component::from_binary(engine, wasm)?;
        tracing::info!(plugin, elapsed_ms = elapsed_ms(), "plugin compiled (without the compiled-component cache)");
        return Ok(component);
    };
    let Loaded { component, file, outcome } = cache.component(engine, wasm)?;
    let file = file.display();
    match outcome {
        Outcome::Hit => {
            tracing::info!(plugin, %file, elapsed_ms = elapsed_ms(), "plugin loaded from the compiled-component cache")
        }
        Outcome::Compiled { refused, not_stored } => {
            if let Some(error) = refused {
                tracing::warn!(plugin, %error, "compiled-component cache entry refused: compiling the plugin again");
            }
            match not_stored {
                None => tracing::info!(
                    plugin,
                    %file,
                    elapsed_ms = elapsed_ms(),
                    "plugin compiled and stored in the compiled-component cache"
                ),
                Some(error) => tracing::warn!(
                    plugin,
                    %error,
                    elapsed_ms = elapsed_ms(),
                    "plugin compiled, but its compiled-component cache entry could not be written"
                ),
            }
        }
    }
    Ok(component)
}
